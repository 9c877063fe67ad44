"""Atomic file writes shared by the data and checkpoint code."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# NamedTemporaryFile creates files with mode 0600. The finished file gets the mode that
# open() gives under the common umask 022, so other users can read prepared data.
_FINAL_MODE = 0o644


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file that replaces ``path`` only if the block completes.

    The data goes to a hidden ``.NAME.*.tmp`` file in the same folder, is flushed and
    fsynced, and is then renamed onto ``path`` with :func:`os.replace`. Readers therefore see
    either the old file or the complete new one. On any exception the temporary file is
    removed and ``path`` is left as it was.

    Args:
        path: Final file name. Its folder must exist.

    Yields:
        The temporary file, opened for binary writing.

    Raises:
        FileNotFoundError: If the folder of ``path`` does not exist.

    Examples:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "hello.bin"
        >>> with atomic_writer(target) as f:
        ...     _ = f.write(b"hello")
        >>> target.read_bytes()
        b'hello'
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist; "
            "create it first"
        )

    tmp_name = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as tmp:
            tmp_name = tmp.name
            yield tmp
            tmp.flush()
            os.fsync(tmp.fileno())

        os.chmod(tmp_name, _FINAL_MODE)
        os.replace(tmp_name, path)
    except BaseException:
        if tmp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        raise

    _fsync_folder(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`).

    Args:
        path: Final file name. Its folder must exist.
        data: The complete file content.

    Raises:
        FileNotFoundError: If the folder of ``path`` does not exist.

    Examples:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "hello.bin"
        >>> atomic_write_bytes(target, b"hello")
        >>> target.read_bytes()
        b'hello'
    """
    with atomic_writer(path) as f:
        f.write(data)


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder entry is on disk. Windows cannot open a
    # folder for fsync, so there this step is skipped.
    if os.name != "posix":
        return

    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
