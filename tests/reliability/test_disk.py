"""A full disk or an unwritable folder while ``mnist-fusion train`` writes its files.

Each failure must end the command with exit code 1 and a message that names the file and
the cause, and must leave the previous version of the file byte for byte as it was.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
import torch
from clirun import TRAIN_ARGS, hidden_files, small_root

from mnist_fusion._io import atomic_write_bytes
from mnist_fusion.cli import main
from mnist_fusion.training import TRAINING_STATE_NAME

NO_SPACE = os.strerror(errno.ENOSPC)
DENIED = os.strerror(errno.EACCES)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


class DiskFull:
    """Make the n-th temporary file for a name fail with ENOSPC after 4 KiB of data.

    ``before`` stores the bytes of the final file at the moment that write begins, which
    is what the failed write must leave in place.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str, occurrence: int) -> None:
        self.name = name
        self.occurrence = occurrence
        self.count = 0
        self.before: bytes | None = None
        self._real = tempfile.NamedTemporaryFile
        monkeypatch.setattr(tempfile, "NamedTemporaryFile", self._open)

    def _open(self, *args, **kwargs):
        tmp = self._real(*args, **kwargs)
        if not Path(tmp.name).name.startswith(f".{self.name}."):
            return tmp

        self.count += 1
        if self.count == self.occurrence:
            final = Path(tmp.name).parent / self.name
            self.before = final.read_bytes() if final.exists() else None
            real_write = tmp.write

            def write(data):
                real_write(data[:4096])
                raise OSError(errno.ENOSPC, NO_SPACE)

            tmp.write = write
        return tmp


def deny_writes_in(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make creating a file in ``folder`` fail as it does in a folder with mode 0o500."""
    real = tempfile.NamedTemporaryFile

    def denied(*args, dir=None, prefix="", suffix="", **kwargs):
        if dir is not None and Path(dir) == folder:
            raise PermissionError(errno.EACCES, DENIED, str(folder / f"{prefix}x{suffix}"))
        return real(*args, dir=dir, prefix=prefix, suffix=suffix, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", denied)


def train(root: Path, out: Path, *extra: str) -> int:
    return main(["train", "--root", str(root), "--out", str(out), *TRAIN_ARGS, *extra])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return small_root(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def completed(root, tmp_path_factory) -> Path:
    """The folder of a completed train run; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("completed") / "out"
    assert train(root, out) == 0
    return out


@pytest.fixture
def out(completed, tmp_path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(completed, copy)
    return copy


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_full_disk_during_state_write(root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    disk = DiskFull(monkeypatch, TRAINING_STATE_NAME, occurrence=2)

    code = train(root, out)

    assert code == 1
    error = capsys.readouterr().err
    assert f"cannot write {str(out / TRAINING_STATE_NAME)!r}: {NO_SPACE}" in error
    assert disk.before is not None
    assert (out / TRAINING_STATE_NAME).read_bytes() == disk.before
    assert hidden_files(out) == []

    # With space again, the kept state loads and the run continues from it.
    monkeypatch.undo()
    state = torch.load(out / TRAINING_STATE_NAME, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1
    assert train(root, out, "--resume") == 0


def test_full_disk_during_model_write(root, out, monkeypatch, capsys):
    before = file_bytes(out)
    DiskFull(monkeypatch, "model.pt", occurrence=1)

    # The state is complete, so this run trains nothing and only writes the outputs.
    code = train(root, out, "--resume")

    assert code == 1
    error = capsys.readouterr().err
    assert f"cannot write {str(out / 'model.pt')!r}: {NO_SPACE}" in error
    assert "Free disk space or write to another folder" in error
    assert file_bytes(out) == before


def test_unwritable_out_simulated(root, out, monkeypatch, capsys):
    # A mode-0o500 folder stops every user but root, so this test simulates one and runs
    # as any user. test_unwritable_out_real uses a real one when the user is not root.
    before = file_bytes(out)
    deny_writes_in(monkeypatch, out)

    code = train(root, out, "--resume")

    assert code == 1
    error = capsys.readouterr().err
    assert f"cannot write {str(out / 'model.pt')!r}: {DENIED}" in error
    assert "Make the folder writable or write to another folder" in error
    assert file_bytes(out) == before


@pytest.mark.skipif(IS_ROOT, reason="root ignores folder permissions")
@pytest.mark.skipif(os.name != "posix", reason="needs POSIX folder permissions")
def test_unwritable_out_real(root, out, capsys):
    before = file_bytes(out)
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        code = train(root, out, "--resume")
    finally:
        out.chmod(stat.S_IRWXU)

    assert code == 1
    error = capsys.readouterr().err
    assert f"cannot write {str(out / 'model.pt')!r}: {DENIED}" in error
    assert file_bytes(out) == before


def test_write_error_keeps_errno(tmp_path, monkeypatch):
    DiskFull(monkeypatch, "data.bin", occurrence=1)

    with pytest.raises(OSError) as caught:
        atomic_write_bytes(tmp_path / "data.bin", bytes(10_000))

    assert caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_write_error_keeps_subclass(tmp_path, monkeypatch):
    deny_writes_in(monkeypatch, tmp_path)

    with pytest.raises(PermissionError, match=r"cannot write .*data\.bin': Permission denied"):
        atomic_write_bytes(tmp_path / "data.bin", b"x")


def test_fresh_run_drops_earlier_state(root, out, capsys):
    # This run fails in its first epoch, before writing any state of its own. A later
    # --resume must then start afresh instead of continuing the completed earlier run.
    code = train(root, out, "--lr", "1e30")

    assert code == 1
    assert re.search(r"Loss is (nan|inf) at epoch 1", capsys.readouterr().err)
    assert not (out / TRAINING_STATE_NAME).exists()
