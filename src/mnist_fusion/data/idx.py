"""Read and write IDX files, the format of the official MNIST files.

An IDX file starts with a 4-byte magic number: two zero bytes, a dtype byte and the number
of dimensions. One big-endian uint32 per dimension follows, then the data in C order. This
module handles the uint8 dtype (``0x08``) only, which is what MNIST uses: labels are
``0x00000801`` (1 dimension) and images ``0x00000803`` (3 dimensions).
"""

from __future__ import annotations

import math
import os
import struct
import sys
from pathlib import Path

import numpy as np
import torch

from mnist_fusion._io import atomic_write_bytes

_UINT8_DTYPE_CODE = 0x08
_MAGIC_SIZE = 4
_DIM_SIZE = 4
_MAX_DIM_SIZE = 2**32 - 1

# numpy 1.x supports at most 32 dimensions (numpy 2 allows 64), and MNIST needs only 3.
_MAX_NDIM = 32


class IDXFormatError(ValueError):
    """Raised when bytes are not a valid uint8 IDX file."""


def parse_idx(data: bytes, *, name: str, ndim: int | None = None) -> torch.Tensor:
    """Parse the bytes of a uint8 IDX file into a tensor.

    Args:
        data: The complete file content.
        name: Name of the source, used in error messages (usually the file path).
        ndim: Expected number of dimensions, for example 1 for labels or 3 for images.
            ``None`` accepts any number.

    Returns:
        A writable ``torch.uint8`` tensor with the shape stored in the header. It owns a copy
        of the data, so ``data`` can be released.

    Raises:
        IDXFormatError: If the header is too short, the magic number is not a uint8 IDX
            magic number, the number of dimensions differs from ``ndim``, or the data is
            shorter or longer than the shape needs.
        ValueError: If ``ndim`` is not ``None`` or an int from 1 to 32.

    Examples:
        >>> parse_idx(b"\\x00\\x00\\x08\\x01\\x00\\x00\\x00\\x02\\x07\\x03", name="labels")
        tensor([7, 3], dtype=torch.uint8)
    """
    _check_ndim_argument(ndim)
    file_ndim = _parse_magic(data, name=name, ndim=ndim)
    shape = _parse_shape(data, name=name, ndim=file_ndim)
    offset = _MAGIC_SIZE + _DIM_SIZE * file_ndim
    _check_data_size(len(data) - offset, shape, name=name)

    # The shape was checked against the data size, so this reshape cannot fail.
    array = np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy()
    return torch.from_numpy(array)


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> torch.Tensor:
    """Read a uint8 IDX file into a tensor.

    Args:
        path: The IDX file, uncompressed.
        ndim: Expected number of dimensions, for example 1 for labels or 3 for images.
            ``None`` accepts any number.

    Returns:
        A writable ``torch.uint8`` tensor with the shape stored in the file.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        IDXFormatError: If the file is not a valid uint8 IDX file with ``ndim`` dimensions.
            The message names ``path`` and the defect.
        ValueError: If ``ndim`` is not ``None`` or an int from 1 to 32.

    Examples:
        >>> images = read_idx("data/MNIST/raw/t10k-images-idx3-ubyte", ndim=3)  # doctest: +SKIP
        >>> images.shape  # doctest: +SKIP
        torch.Size([10000, 28, 28])
    """
    data = Path(path).read_bytes()
    return parse_idx(data, name=os.fspath(path), ndim=ndim)


def encode_idx(array: torch.Tensor | np.ndarray) -> bytes:
    """Encode a uint8 tensor or array as the bytes of an IDX file.

    Args:
        array: A ``torch.uint8`` tensor or ``numpy.uint8`` array with 1 to 32 dimensions,
            each at most 2**32 - 1 long.

    Returns:
        The header followed by the data in C order.

    Raises:
        TypeError: If ``array`` is not a tensor or array, or its dtype is not uint8.
        ValueError: If the number of dimensions or a dimension size does not fit the format.

    Examples:
        >>> encode_idx(torch.tensor([7, 3], dtype=torch.uint8))
        b'\\x00\\x00\\x08\\x01\\x00\\x00\\x00\\x02\\x07\\x03'
    """
    values = _as_uint8_array(array)
    _check_encodable_shape(values.shape)

    header = bytes([0, 0, _UINT8_DTYPE_CODE, values.ndim])
    header += struct.pack(f">{values.ndim}I", *values.shape)
    return header + values.tobytes(order="C")


def write_idx(path: str | os.PathLike[str], array: torch.Tensor | np.ndarray) -> None:
    """Write a uint8 tensor or array to an IDX file atomically.

    The file is written under a temporary name in the same folder and renamed onto ``path``
    when complete, so ``path`` never contains a partial file.

    Args:
        path: Destination file. Its folder must exist.
        array: A ``torch.uint8`` tensor or ``numpy.uint8`` array with 1 to 32 dimensions.

    Raises:
        TypeError: If ``array`` is not a tensor or array, or its dtype is not uint8.
        ValueError: If the number of dimensions or a dimension size does not fit the format.
        FileNotFoundError: If the folder of ``path`` does not exist.

    Examples:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> write_idx(target, torch.tensor([7, 3], dtype=torch.uint8))
        >>> read_idx(target, ndim=1)
        tensor([7, 3], dtype=torch.uint8)
    """
    atomic_write_bytes(path, encode_idx(array))


def _check_ndim_argument(ndim: int | None) -> None:
    if ndim is None:
        return

    if isinstance(ndim, bool) or not isinstance(ndim, int) or not 1 <= ndim <= _MAX_NDIM:
        raise ValueError(
            f"ndim must be None or an int from 1 to {_MAX_NDIM}, got {ndim!r}; "
            "use 1 for labels and 3 for images"
        )


def _parse_magic(data: bytes, *, name: str, ndim: int | None) -> int:
    if len(data) < _MAGIC_SIZE:
        raise IDXFormatError(
            f"{name!r} is not a valid IDX file: header is shorter than the 4-byte magic "
            f"number (found {len(data)} bytes); the file is truncated or not an IDX file"
        )

    magic = int.from_bytes(data[:_MAGIC_SIZE], "big")
    file_ndim = data[3]
    is_uint8_idx = data[0] == 0 and data[1] == 0 and data[2] == _UINT8_DTYPE_CODE
    if not is_uint8_idx or not 1 <= file_ndim <= _MAX_NDIM:
        raise IDXFormatError(
            f"{name!r} is not a valid uint8 IDX file: wrong magic number 0x{magic:08X}, "
            f"expected {_expected_magic_text(ndim)} (two zero bytes, dtype byte 0x08 = uint8, "
            f"then 1 to {_MAX_NDIM} dimensions); check that the file is uncompressed MNIST data"
        )

    if ndim is not None and file_ndim != ndim:
        raise IDXFormatError(
            f"{name!r} has {file_ndim} dimensions (magic 0x{magic:08X}) but {ndim} were "
            f"expected (magic 0x{_magic_for(ndim):08X}); check that this is the right file, "
            "labels have 1 dimension and images 3"
        )

    return file_ndim


def _parse_shape(data: bytes, *, name: str, ndim: int) -> tuple[int, ...]:
    header_size = _MAGIC_SIZE + _DIM_SIZE * ndim
    if len(data) < header_size:
        raise IDXFormatError(
            f"{name!r} is truncated: header is shorter than {ndim} dimensions need "
            f"(expected {header_size} bytes, found {len(data)})"
        )

    shape = struct.unpack(f">{ndim}I", data[_MAGIC_SIZE:header_size])

    # An empty file may declare absurd dimensions next to a zero, which no tensor can
    # represent because its strides would overflow int64.
    if math.prod(max(size, 1) for size in shape) > sys.maxsize:
        raise IDXFormatError(
            f"{name!r} declares shape {shape}, which is too large for a tensor; "
            "the header is corrupt"
        )

    return shape


def _check_data_size(found: int, shape: tuple[int, ...], *, name: str) -> None:
    expected = math.prod(shape)
    if found < expected:
        raise IDXFormatError(
            f"{name!r} is truncated: expected {expected} bytes of data for shape {shape}, "
            f"found {found}; download or copy the file again"
        )

    if found > expected:
        raise IDXFormatError(
            f"{name!r} has {found - expected} trailing bytes: expected {expected} bytes of "
            f"data for shape {shape}, found {found}; the file is corrupt or not uint8 IDX"
        )


def _expected_magic_text(ndim: int | None) -> str:
    if ndim is not None:
        return f"0x{_magic_for(ndim):08X}"

    return "0x00000801 for labels or 0x00000803 for images"


def _magic_for(ndim: int) -> int:
    return (_UINT8_DTYPE_CODE << 8) | ndim


def _as_uint8_array(array: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        if array.dtype != torch.uint8:
            raise TypeError(
                f"IDX writing supports only uint8 data, got a tensor of dtype {array.dtype}; "
                "convert it with tensor.to(torch.uint8) after checking its range"
            )
        return array.detach().cpu().contiguous().numpy()

    if isinstance(array, np.ndarray):
        if array.dtype != np.uint8:
            raise TypeError(
                f"IDX writing supports only uint8 data, got an array of dtype {array.dtype}; "
                "convert it with array.astype(numpy.uint8) after checking its range"
            )
        return array

    raise TypeError(
        f"expected a torch.Tensor or numpy.ndarray of dtype uint8, got {type(array).__name__}"
    )


def _check_encodable_shape(shape: tuple[int, ...]) -> None:
    if not 1 <= len(shape) <= _MAX_NDIM:
        raise ValueError(
            f"IDX files need 1 to {_MAX_NDIM} dimensions, got shape {tuple(shape)} with "
            f"{len(shape)}; reshape the data, for example with reshape(-1) for a scalar"
        )

    if any(size > _MAX_DIM_SIZE for size in shape):
        raise ValueError(
            f"IDX dimensions are uint32, so each must be at most {_MAX_DIM_SIZE}, "
            f"got shape {tuple(shape)}; split the data into several files"
        )
