import os
import re
import stat
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchvision.datasets.mnist import read_image_file, read_label_file

from mnist_fusion._io import atomic_write_bytes
from mnist_fusion.data.idx import IDXFormatError, encode_idx, parse_idx, read_idx, write_idx


def idx_bytes(shape: tuple[int, ...], payload: bytes, *, dtype_code: int = 0x08) -> bytes:
    """Build IDX bytes by hand, independently of the module under test."""
    header = bytes([0, 0, dtype_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    return header + payload


def write_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_write_idx_images_matches_hand_built_bytes(tmp_path):
    images = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4)
    path = tmp_path / "images-idx3-ubyte"

    write_idx(path, images)

    assert path.read_bytes() == idx_bytes((2, 3, 4), bytes(range(24)))


def test_round_trip_tensor_and_array(tmp_path):
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    labels = np.array([0, 9, 3, 255], dtype=np.uint8)

    write_idx(tmp_path / "images", images)
    write_idx(tmp_path / "labels", labels)

    assert torch.equal(read_idx(tmp_path / "images", ndim=3), images)
    assert torch.equal(read_idx(tmp_path / "labels", ndim=1), torch.from_numpy(labels))


def test_round_trip_non_contiguous_tensor(tmp_path):
    base = torch.randint(0, 256, (4, 6), dtype=torch.uint8)
    transposed = base.t()

    write_idx(tmp_path / "t", transposed)

    assert torch.equal(read_idx(tmp_path / "t"), transposed)


def test_round_trip_empty_dataset(tmp_path):
    empty = torch.zeros((0, 28, 28), dtype=torch.uint8)

    write_idx(tmp_path / "empty", empty)

    result = read_idx(tmp_path / "empty", ndim=3)
    assert result.shape == (0, 28, 28)
    assert (tmp_path / "empty").read_bytes() == idx_bytes((0, 28, 28), b"")


def test_read_idx_result_is_writable_copy(tmp_path):
    path = write_file(tmp_path, "labels", idx_bytes((3,), b"\x01\x02\x03"))

    labels = read_idx(path, ndim=1)
    labels[0] = 200

    assert labels.dtype == torch.uint8
    assert labels.tolist() == [200, 2, 3]
    assert path.read_bytes() == idx_bytes((3,), b"\x01\x02\x03")


def test_parse_idx_labels():
    labels = parse_idx(idx_bytes((2,), b"\x07\x03"), name="labels", ndim=1)

    assert labels.tolist() == [7, 3]
    assert labels.dtype == torch.uint8


def test_torchvision_reads_written_files(tmp_path):
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    labels = torch.tensor([4, 0, 9], dtype=torch.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)

    assert torch.equal(read_image_file(str(tmp_path / "train-images-idx3-ubyte")), images)
    assert read_label_file(str(tmp_path / "train-labels-idx1-ubyte")).tolist() == [4, 0, 9]


DEFECTS = [
    pytest.param(
        b"", r"header is shorter than the 4-byte magic number \(found 0 bytes\)", id="empty"
    ),
    pytest.param(
        b"\x00\x00\x08",
        r"header is shorter than the 4-byte magic number \(found 3 bytes\)",
        id="short-magic",
    ),
    pytest.param(
        b"\x00\x00\x08\x03" + struct.pack(">II", 1, 28),
        r"truncated: header is shorter than 3 dimensions need \(expected 16 bytes, found 12\)",
        id="short-dims",
    ),
    pytest.param(
        b"\x1f\x8b\x08\x08" + b"\x00" * 20,
        r"wrong magic number 0x1F8B0808, expected 0x00000801 for labels or 0x00000803 for images",
        id="gzip-magic",
    ),
    pytest.param(
        idx_bytes((1,), b"\x00\x00\x00\x00", dtype_code=0x0C),
        r"wrong magic number 0x00000C01",
        id="int32-dtype",
    ),
    pytest.param(
        b"\x00\x00\x08\x00",
        r"wrong magic number 0x00000800.*then 1 to 32 dimensions",
        id="zero-ndim",
    ),
    pytest.param(
        idx_bytes((1, 28, 28), b"\x00" * 700),
        r"truncated: expected 784 bytes of data for shape \(1, 28, 28\), found 700",
        id="truncated",
    ),
    pytest.param(
        idx_bytes((2,), b"\x01\x02\x03\x04\x05"),
        r"has 3 trailing bytes: expected 2 bytes of data for shape \(2,\), found 5",
        id="trailing",
    ),
    pytest.param(
        idx_bytes((0, 2**32 - 1, 2**32 - 1, 2**32 - 1), b""),
        r"declares shape \(0, 4294967295, 4294967295, 4294967295\), which is too large",
        id="absurd-empty-shape",
    ),
]


@pytest.mark.parametrize(("data", "defect"), DEFECTS)
def test_read_idx_defect_names_file_and_defect(tmp_path, data, defect):
    path = write_file(tmp_path, "broken-idx3-ubyte", data)

    with pytest.raises(IDXFormatError, match=re.escape(repr(str(path))) + ".*" + defect):
        read_idx(path)


def test_read_idx_wrong_ndim(tmp_path):
    path = write_file(tmp_path, "train-labels-idx1-ubyte", idx_bytes((2,), b"\x01\x02"))

    expected = (
        re.escape(repr(str(path)))
        + r" has 1 dimensions \(magic 0x00000801\) but 3 were expected \(magic 0x00000803\)"
    )
    with pytest.raises(IDXFormatError, match=expected):
        read_idx(path, ndim=3)


def test_wrong_magic_names_expected_magic(tmp_path):
    path = write_file(tmp_path, "labels", b"\x00\x00\x0d\x01" + b"\x00" * 8)

    with pytest.raises(
        IDXFormatError, match=r"wrong magic number 0x00000D01, expected 0x00000801 "
    ):
        read_idx(path, ndim=1)


def test_idx_format_error_is_value_error():
    with pytest.raises(ValueError, match="magic"):
        parse_idx(b"PK\x03\x04", name="archive.zip")


@pytest.mark.parametrize("ndim", [0, 33, 1.0, True, "3"])
def test_parse_idx_rejects_invalid_ndim_argument(ndim):
    with pytest.raises(ValueError, match=r"ndim must be None or an int from 1 to 32, got "):
        parse_idx(idx_bytes((1,), b"\x00"), name="x", ndim=ndim)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-idx1-ubyte"):
        read_idx(tmp_path / "missing-idx1-ubyte")


@given(st.binary(max_size=64))
def test_parse_idx_random_bytes(data):
    try:
        result = parse_idx(data, name="random")
    except IDXFormatError:
        return

    assert result.dtype == torch.uint8
    assert result.numel() == len(data) - 4 - 4 * result.dim()


@given(
    ndim=st.integers(min_value=0, max_value=255),
    dims=st.lists(st.sampled_from([0, 1, 2, 3, 2**32 - 1]), max_size=40),
    payload=st.binary(max_size=16),
)
def test_parse_idx_random_headers(ndim, dims, payload):
    # Random bytes rarely produce a valid magic number, so this builds one to reach the
    # shape and data-size checks.
    data = b"\x00\x00\x08" + bytes([ndim]) + b"".join(struct.pack(">I", d) for d in dims) + payload
    try:
        result = parse_idx(data, name="random")
    except IDXFormatError:
        return

    assert result.dim() == ndim
    assert list(result.shape) == dims[:ndim]


@given(
    st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=4).flatmap(
        lambda shape: st.binary(min_size=int(np.prod(shape)), max_size=int(np.prod(shape))).map(
            lambda payload: (tuple(shape), payload)
        )
    )
)
def test_encode_parse_round_trip(shape_and_payload):
    shape, payload = shape_and_payload
    array = np.frombuffer(payload, dtype=np.uint8).reshape(shape)

    encoded = encode_idx(array)

    assert encoded == idx_bytes(shape, payload)
    assert np.array_equal(parse_idx(encoded, name="round-trip").numpy(), array)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (torch.zeros(3, dtype=torch.float32), r"got a tensor of dtype torch\.float32"),
        (torch.zeros(3, dtype=torch.int64), r"got a tensor of dtype torch\.int64"),
        (np.zeros(3, dtype=np.int64), r"got an array of dtype int64"),
        ([1, 2, 3], r"expected a torch\.Tensor or numpy\.ndarray of dtype uint8, got list"),
    ],
)
def test_write_idx_rejects_non_uint8(tmp_path, value, message):
    with pytest.raises(TypeError, match=message):
        write_idx(tmp_path / "x", value)

    assert not (tmp_path / "x").exists()


def test_write_idx_rejects_scalar(tmp_path):
    with pytest.raises(
        ValueError, match=r"IDX files need 1 to 32 dimensions, got shape \(\) with 0"
    ):
        write_idx(tmp_path / "x", torch.tensor(5, dtype=torch.uint8))


def test_write_idx_missing_folder(tmp_path):
    target = tmp_path / "no-such-folder" / "labels"

    with pytest.raises(FileNotFoundError, match=r"folder .*no-such-folder' does not exist"):
        write_idx(target, torch.zeros(2, dtype=torch.uint8))


def test_write_idx_failing_rename_leaves_nothing(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)

    with pytest.raises(OSError, match="disk full"):
        write_idx(tmp_path / "labels", torch.zeros(4, dtype=torch.uint8))

    assert list(tmp_path.glob("*.tmp")) == []
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path / "labels").exists()


def test_write_idx_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "labels"
    write_idx(path, torch.tensor([1, 2], dtype=torch.uint8))
    previous = path.read_bytes()

    def failing_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)

    with pytest.raises(OSError, match="I/O error"):
        write_idx(path, torch.tensor([7, 7, 7], dtype=torch.uint8))

    assert path.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels"]


def test_atomic_write_bytes_sets_readable_mode(tmp_path):
    path = tmp_path / "data.bin"

    atomic_write_bytes(path, b"abc")

    assert path.read_bytes() == b"abc"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
