"""Peak resident memory of a real ``mnist-fusion train`` process on the CPU."""

from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mnist_fusion
from mnist_fusion.data import read_idx, write_idx

GNU_TIME = "/usr/bin/time"
_MAX_RSS = re.compile(r"Maximum resident set size \(kbytes\):\s*(\d+)")


def train_command(root: os.PathLike[str], out: os.PathLike[str], epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "mnist_fusion.cli", "train",
        "--root", str(root), "--out", str(out), "--epochs", str(epochs), "--device", "cpu",
    ]  # fmt: skip


def write_subset(root: os.PathLike[str], dest: Path, *, train: int, test: int) -> Path:
    """Copy the first ``train`` and ``test`` images of each MNIST split under ``dest``."""
    source, raw = Path(root) / "MNIST" / "raw", dest / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
            name = f"{prefix}-{kind}-ubyte"
            write_idx(raw / name, read_idx(source / name, ndim=ndim)[:count])
    return dest


def peak_train_memory(
    root: os.PathLike[str], *, epochs: int, timeout: float, subset: tuple[int, int] | None = None
) -> dict[str, object]:
    """Run ``mnist-fusion train`` in a child process and return its peak resident memory.

    With ``subset=(train, test)`` the process trains on the first images of each split
    only, which checks the harness but not the memory of a real run.

    GNU time reports the peak of the training process alone. Without it, the fallback
    is ``getrusage(RUSAGE_CHILDREN)``, the peak over every child this process has waited
    for, which is an upper bound if an earlier child was larger.

    Raises:
        RuntimeError: If the training process fails, with the end of its output.
    """
    with tempfile.TemporaryDirectory(prefix="bench-train-") as out:
        if subset is not None:
            root = write_subset(root, Path(out) / "data", train=subset[0], test=subset[1])
        command = train_command(root, Path(out) / "run", epochs)
        use_time = shutil.which(GNU_TIME) is not None
        if use_time:
            command = [GNU_TIME, "-v", *command]
        started = time.perf_counter()
        done = subprocess.run(
            command, env=_child_env(), capture_output=True, text=True, timeout=timeout
        )
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"`{shlex.join(command)}` failed with exit code {done.returncode}; "
            f"the end of its output:\n{done.stderr[-2000:]}"
        )
    if use_time:
        found = _MAX_RSS.search(done.stderr)
        if found is None:
            raise RuntimeError(f"{GNU_TIME} -v printed no 'Maximum resident set size' line.")
        kilobytes, method = int(found.group(1)), f"{GNU_TIME} -v"
    else:
        # Linux reports ru_maxrss in kilobytes.
        kilobytes = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        method = "getrusage(RUSAGE_CHILDREN)"
    return {
        "command": shlex.join(command),
        "subset": list(subset) if subset else None,
        "method": method,
        "peak_rss_bytes": kilobytes * 1024,
        "wall_seconds": seconds,
    }


def _child_env() -> dict[str, str]:
    """Return the environment, with this process's mnist_fusion first on the import path."""
    source = str(Path(mnist_fusion.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    return env
