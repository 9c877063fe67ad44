"""Test-only pause points for a real ``mnist-fusion`` process, so a test can kill it there.

A test copies this file into an empty folder as ``sitecustomize.py`` and puts that folder
first on the child's PYTHONPATH. Python imports ``sitecustomize`` at start-up, before the
command runs, so the command line stays the real one while this module wraps two functions:

- ``MNIST_FUSION_PAUSE=write:NAME:N:half`` pauses on the N-th atomic write of a file named
  NAME once half its bytes are in the hidden temporary file;
- ``MNIST_FUSION_PAUSE=write:NAME:N:full`` pauses once all bytes are written and fsynced,
  just before the rename onto NAME;
- ``MNIST_FUSION_PAUSE=batch:N`` pauses before the N-th training batch, counted over all
  epochs of shuffling loaders (evaluation loaders do not shuffle).

On reaching the point the process creates the file named by ``MNIST_FUSION_PAUSED`` and
waits for the test's SIGKILL. The kill therefore lands at a known point, never after a
guessed sleep. Imported under any other name, the module changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

PAUSE_VARIABLE = "MNIST_FUSION_PAUSE"
SIGNAL_VARIABLE = "MNIST_FUSION_PAUSED"

# A paused child whose test died would otherwise wait for ever.
_MAX_PAUSE_S = 300
_ABANDONED_EXIT_CODE = 99


def install() -> None:
    """Wrap the function that ``MNIST_FUSION_PAUSE`` names; do nothing if it is unset.

    Raises:
        ValueError: If ``MNIST_FUSION_PAUSE`` is set but not one of the forms above.
    """
    spec = os.environ.get(PAUSE_VARIABLE)
    if not spec:
        return

    kind, _, rest = spec.partition(":")
    if kind == "write":
        name, occurrence, stage = rest.split(":")
        if stage not in ("half", "full"):
            raise ValueError(f"{PAUSE_VARIABLE} stage must be half or full, got {stage!r}")
        _pause_in_write(name, int(occurrence), stage)
    elif kind == "batch":
        _pause_before_batch(int(rest))
    else:
        raise ValueError(f"{PAUSE_VARIABLE} must start with write: or batch:, got {spec!r}")


def _pause() -> None:
    Path(os.environ[SIGNAL_VARIABLE]).touch()
    threading.Event().wait(_MAX_PAUSE_S)
    os._exit(_ABANDONED_EXIT_CODE)


class _HalfThenPause:
    """A file proxy whose first write stores half the bytes, syncs them and pauses."""

    def __init__(self, file):
        self._file = file

    def write(self, data):
        self._file.write(data[: len(data) // 2])
        self._file.flush()
        os.fsync(self._file.fileno())
        _pause()

    def __getattr__(self, name):
        return getattr(self._file, name)


def _pause_in_write(name: str, occurrence: int, stage: str) -> None:
    from mnist_fusion import _io

    real_writer = _io.atomic_writer
    count = 0

    @contextlib.contextmanager
    def pausing_writer(path):
        nonlocal count
        with real_writer(path) as tmp:
            if Path(path).name == name:
                count += 1
            if Path(path).name != name or count != occurrence:
                yield tmp
            elif stage == "half":
                yield _HalfThenPause(tmp)
            else:
                yield tmp
                tmp.flush()
                os.fsync(tmp.fileno())
                _pause()

    # atomic_write_bytes looks atomic_writer up at each call, so this reaches every writer.
    _io.atomic_writer = pausing_writer


def _pause_before_batch(number: int) -> None:
    from mnist_fusion.data.batched import BatchLoader

    real_iter = BatchLoader.__iter__
    count = 0

    def pausing_iter(self):
        nonlocal count
        for batch in real_iter(self):
            if self.shuffle:
                count += 1
                if count == number:
                    _pause()
            yield batch

    BatchLoader.__iter__ = pausing_iter


if __name__ == "sitecustomize":
    install()
