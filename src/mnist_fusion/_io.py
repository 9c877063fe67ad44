"""Atomic file writes shared by the data and checkpoint code."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows has no fcntl, so temporary files are not locked there.
    fcntl = None  # type: ignore[assignment]

# NamedTemporaryFile creates files with mode 0600. The finished file gets the mode that
# open() gives under the common umask 022, so other users can read prepared data.
_FINAL_MODE = 0o644

# EDQUOT (disk quota exceeded) is missing from errno on some platforms.
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file that replaces ``path`` only if the block completes.

    The data goes to a hidden ``.NAME.*.tmp`` file in the same folder, is flushed and
    fsynced, and is then renamed onto ``path`` with :func:`os.replace`. Readers therefore see
    either the old file or the complete new one. On any exception the temporary file is
    removed and ``path`` is left as it was. A process killed by a signal cannot remove its
    temporary file, so :func:`remove_stale_temporaries` removes it later. On POSIX the writer
    keeps an exclusive ``flock`` on the temporary file until the rename, so that cleanup can
    tell such leftovers from files still being written.

    Args:
        path: Final file name. Its folder must exist.

    Yields:
        The temporary file, opened for binary writing.

    Raises:
        FileNotFoundError: If the folder of ``path`` does not exist.
        OSError: If the temporary file cannot be created, synced or renamed. The message
            names ``path`` and the cause, and the subclass follows the errno (for example
            PermissionError for EACCES).

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
        with _naming_path(path):
            tmp = _open_locked_temporary(path)
        with tmp:
            tmp_name = tmp.name
            yield tmp
            with _naming_path(path):
                tmp.flush()
                os.fsync(tmp.fileno())
                os.chmod(tmp_name, _FINAL_MODE)
                if fcntl is not None:
                    # Renamed while the lock is held, so that a concurrent
                    # remove_stale_temporaries never takes this file for a leftover.
                    os.replace(tmp_name, path)
                    tmp_name = None

        if tmp_name is not None:
            # Windows cannot rename a file that is still open.
            with _naming_path(path):
                os.replace(tmp_name, path)
            tmp_name = None
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
        OSError: If the data cannot be written, for example because the disk is full. The
            message names ``path`` and the cause, and ``path`` keeps its previous content.

    Examples:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "hello.bin"
        >>> atomic_write_bytes(target, b"hello")
        >>> target.read_bytes()
        b'hello'
    """
    with atomic_writer(path) as f, _naming_path(Path(path)):
        f.write(data)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that killed writers of ``path`` left behind.

    :func:`atomic_writer` removes its temporary file on any exception, but a process killed
    by a signal or a power cut leaves a hidden ``.NAME.*.tmp`` file beside ``path``. Such a
    file is removed only if it can be locked, which proves that no running writer holds it,
    so calling this while another process writes ``path`` is safe. Nothing is removed where
    ``flock`` is unavailable (Windows) or unsupported by the file system.

    Args:
        path: The final file name whose leftovers to remove. Its folder need not exist.

    Returns:
        The temporary files removed.

    Examples:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> (folder / ".model.pt.k1ll3d.tmp").write_bytes(b"partial")
        7
        >>> [p.name for p in remove_stale_temporaries(folder / "model.pt")]
        ['.model.pt.k1ll3d.tmp']
    """
    path = Path(path)
    if fcntl is None or not path.parent.is_dir():
        return []

    pattern = f".{glob.escape(path.name)}.*.tmp"
    return [
        candidate
        for candidate in sorted(path.parent.glob(pattern))
        if _remove_if_unlocked(candidate)
    ]


def _open_locked_temporary(path: Path) -> BinaryIO:
    while True:
        tmp = tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        )
        if not _lock_temporary(tmp) or os.fstat(tmp.fileno()).st_nlink > 0:
            return tmp

        # remove_stale_temporaries deleted the file between its creation and the lock, so
        # writing to it would be lost: start again under a new name.
        tmp.close()


def _lock_temporary(tmp: BinaryIO) -> bool:
    if fcntl is None:
        return False

    try:
        fcntl.flock(tmp.fileno(), fcntl.LOCK_EX)
    except OSError as error:
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            # Without lock support remove_stale_temporaries cannot lock the file either,
            # so it never removes it, and writing unlocked is safe.
            return False
        tmp.close()
        os.unlink(tmp.name)
        raise
    return True


def _remove_if_unlocked(candidate: Path) -> bool:
    try:
        fd = os.open(candidate, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False  # Already removed, a symlink, or unreadable: leave it.

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(candidate)
    except OSError:
        # BlockingIOError means a live writer holds the file. Other errors mean the file
        # cannot be proven stale or was removed by another cleanup meanwhile.
        return False
    finally:
        os.close(fd)
    return True


@contextlib.contextmanager
def _naming_path(path: Path) -> Iterator[None]:
    # Errors from the temporary file name a hidden .NAME.*.tmp path, which means nothing to
    # the user, so they are raised again naming the file that could not be written.
    try:
        yield
    except OSError as error:
        if error.errno is None:
            raise
        raise OSError(error.errno, _write_failure_message(path, error)) from error


def _write_failure_message(path: Path, error: OSError) -> str:
    message = (
        f"cannot write {str(path)!r}: {error.strerror or error}; "
        f"any earlier {path.name} there is unchanged"
    )
    if error.errno in _NO_SPACE:
        return message + ". Free disk space or write to another folder."
    if error.errno in _NOT_WRITABLE:
        return message + ". Make the folder writable or write to another folder."
    return message + "."


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
