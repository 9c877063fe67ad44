import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEST, TINY_TRAIN, write_tiny_mnist
from hypothesis import given
from hypothesis import strategies as st
from torchvision import transforms

from mnist_fusion.data import (
    MNIST_MEAN,
    MNIST_STD,
    IDXFormatError,
    MNISTSum,
    RandomDigits,
    read_idx,
    side_seed,
    write_idx,
)

SEEDS = st.integers(-(2**62), 2**62 - 1)
FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def raw_dir(root: Path) -> Path:
    return root / "MNIST" / "raw"


def idx_labels(root: Path, prefix: str) -> torch.Tensor:
    return read_idx(raw_dir(root) / f"{prefix}-labels-idx1-ubyte", ndim=1).to(torch.int64)


@pytest.fixture
def own_root(tmp_path: Path) -> Path:
    """A tiny MNIST root that a test may damage."""
    return write_tiny_mnist(tmp_path, train=40, test=20)


@pytest.fixture(scope="module")
def train(tiny_mnist_root) -> MNISTSum:
    return MNISTSum(tiny_mnist_root, train=True, seed=0)


@pytest.fixture(scope="module")
def held_out(tiny_mnist_root) -> MNISTSum:
    return MNISTSum(tiny_mnist_root, train=False, seed=0)


# Lengths and contents


def test_train_length_is_idx_count(tiny_mnist_root, train):
    assert len(train) == len(idx_labels(tiny_mnist_root, "train")) == TINY_TRAIN


def test_test_length_is_idx_count(tiny_mnist_root, held_out):
    assert len(held_out) == len(idx_labels(tiny_mnist_root, "t10k")) == TINY_TEST


def test_digits_are_idx_labels(tiny_mnist_root, held_out):
    digits = torch.tensor([held_out[i]["digit"] for i in range(len(held_out))])

    assert torch.equal(digits, idx_labels(tiny_mnist_root, "t10k"))


def test_sum_is_label_plus_side(tiny_mnist_root, held_out):
    labels = idx_labels(tiny_mnist_root, "t10k")
    side = RandomDigits(len(labels), seed=side_seed(0, train=False)).values

    sums = torch.tensor([held_out[i]["sum"] for i in range(len(held_out))])

    assert torch.equal(sums, labels + side)


def test_side_is_seeded_stream(train):
    expected = RandomDigits(TINY_TRAIN, seed=side_seed(0, train=True)).values

    side = torch.tensor([train[i]["side"] for i in range(len(train))])

    assert torch.equal(side, expected)


def test_default_image_normalised(tiny_mnist_root, held_out):
    pixels = read_idx(raw_dir(tiny_mnist_root) / "t10k-images-idx3-ubyte", ndim=3)

    image = held_out[5]["image"]

    expected = (pixels[5].to(torch.float32) / 255 - MNIST_MEAN) / MNIST_STD
    torch.testing.assert_close(image, expected.unsqueeze(0), rtol=0, atol=1e-6)


def test_custom_transform_applied(tiny_mnist_root):
    data = MNISTSum(tiny_mnist_root, train=False, seed=0, transform=transforms.PILToTensor())
    pixels = read_idx(raw_dir(tiny_mnist_root) / "t10k-images-idx3-ubyte", ndim=3)

    assert torch.equal(data[7]["image"], pixels[7].unsqueeze(0))


def test_same_seed_same_pairing(tiny_mnist_root, train):
    again = MNISTSum(tiny_mnist_root, train=True, seed=0)

    assert torch.equal(again.side.values, train.side.values)


def test_other_seed_other_pairing(tiny_mnist_root, train):
    other = MNISTSum(tiny_mnist_root, train=True, seed=1)

    assert not torch.equal(other.side.values, train.side.values)


def test_repr(tiny_mnist_root, held_out):
    expected = f"MNISTSum(root={str(tiny_mnist_root)!r}, split=test, seed=0)"

    assert repr(held_out) == expected


# Train and test streams


def test_train_and_test_streams_differ(train, held_out):
    count = len(held_out)

    assert not torch.equal(train.side.values[:count], held_out.side.values)


def test_train_and_test_seeds_differ():
    assert side_seed(0, train=True) != side_seed(0, train=False)


@given(first=SEEDS, second=SEEDS)
def test_train_and_test_seeds_never_meet(first, second):
    assert side_seed(first, train=True) != side_seed(second, train=False)


@given(first=SEEDS, second=SEEDS, train=st.booleans())
def test_side_seed_one_to_one(first, second, train):
    if first == second:
        return

    assert side_seed(first, train=train) != side_seed(second, train=train)


@given(seed=SEEDS, train=st.booleans())
def test_side_seed_is_valid_stream_seed(seed, train):
    digits = RandomDigits(4, seed=side_seed(seed, train=train))

    assert len(digits) == 4


@pytest.mark.parametrize("seed", [1.5, "1", True, None])
def test_side_seed_non_integer(seed):
    with pytest.raises(
        ValueError, match=rf"`seed` to be an integer, but got {re.escape(repr(seed))}"
    ):
        side_seed(seed, train=True)


@pytest.mark.parametrize("seed", [2**62, -(2**62) - 1])
def test_side_seed_out_of_range(seed):
    pattern = rf"`seed` in \[-4611686018427387904, 4611686018427387903\], but got {seed}"
    with pytest.raises(ValueError, match=pattern):
        side_seed(seed, train=False)


@pytest.mark.parametrize("train", ["test", 1, None])
def test_side_seed_train_not_bool(train):
    with pytest.raises(TypeError, match=rf"`train` to be True or False, but got {train!r}"):
        side_seed(0, train=train)


def test_non_integer_seed_named(tiny_mnist_root):
    # The message names the seed given, not the doubled seed of the split.
    with pytest.raises(ValueError, match=r"`seed` to be an integer, but got 1\.5\."):
        MNISTSum(tiny_mnist_root, train=True, seed=1.5)


def test_train_not_bool(tiny_mnist_root):
    with pytest.raises(TypeError, match=r"`train` to be True or False, but got 'False'"):
        MNISTSum(tiny_mnist_root, train="False", seed=0)


# Roots and files


@pytest.mark.parametrize("suffix", ["", "MNIST", "MNIST/raw"])
def test_root_forms_accepted(tiny_mnist_root, held_out, suffix):
    data = MNISTSum(tiny_mnist_root / suffix, train=False, seed=0)

    assert len(data) == len(held_out)
    assert torch.equal(data[3]["image"], held_out[3]["image"])


def test_root_as_string(tiny_mnist_root):
    assert len(MNISTSum(str(tiny_mnist_root), train=False, seed=0)) == TINY_TEST


def test_missing_files(tmp_path):
    raw = re.escape(str(tmp_path / "MNIST" / "raw"))

    with pytest.raises(FileNotFoundError, match=rf"{raw}.*mnist-fusion prepare-data --root"):
        MNISTSum(tmp_path, train=True, seed=0)


@pytest.mark.parametrize("suffix", ["MNIST", "MNIST/raw"])
def test_missing_files_named_from_subfolder(tmp_path, suffix):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    raw = re.escape(str(tmp_path / "MNIST" / "raw"))

    with pytest.raises(
        FileNotFoundError, match=rf"{raw}.*prepare-data --root {re.escape(str(tmp_path))}"
    ):
        MNISTSum(tmp_path / suffix, train=False, seed=0)


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("train", [True, False])
def test_one_missing_file_named(own_root, name, train):
    # torchvision needs all four files, whichever split is opened.
    (raw_dir(own_root) / name).unlink()

    with pytest.raises(FileNotFoundError, match=rf"missing from .*: {name}\. Run `mnist-fusion"):
        MNISTSum(own_root, train=train, seed=0)


def test_truncated_images(own_root):
    path = raw_dir(own_root) / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])

    with pytest.raises(IDXFormatError, match=re.escape(str(path))):
        MNISTSum(own_root, train=False, seed=0)


def test_wrong_magic(own_root):
    path = raw_dir(own_root) / "train-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[2] = 0x0C
    path.write_bytes(bytes(data))

    with pytest.raises(IDXFormatError, match=rf"{re.escape(str(path))}.*magic number"):
        MNISTSum(own_root, train=True, seed=0)


def test_label_count_mismatch(own_root):
    path = raw_dir(own_root) / "t10k-labels-idx1-ubyte"
    write_idx(path, torch.zeros(19, dtype=torch.uint8))

    with pytest.raises(IDXFormatError, match=r"contains 20 images but .* contains 19 labels"):
        MNISTSum(own_root, train=False, seed=0)


def test_label_above_nine(own_root):
    path = raw_dir(own_root) / "t10k-labels-idx1-ubyte"
    write_idx(path, torch.full((20,), 12, dtype=torch.uint8))

    with pytest.raises(IDXFormatError, match=r"digit labels 0-9, but found 12"):
        MNISTSum(own_root, train=False, seed=0)


def test_wrong_image_size(own_root):
    path = raw_dir(own_root) / "t10k-images-idx3-ubyte"
    write_idx(path, torch.zeros(20, 14, 14, dtype=torch.uint8))

    with pytest.raises(IDXFormatError, match=r"28x28 images, but the header says 14x14"):
        MNISTSum(own_root, train=False, seed=0)


def test_other_split_damage_ignored(own_root):
    # Only the opened split is read, so a damaged test file does not block training data.
    shutil.copy(
        raw_dir(own_root) / "train-labels-idx1-ubyte", raw_dir(own_root) / "t10k-labels-idx1-ubyte"
    )

    assert len(MNISTSum(own_root, train=True, seed=0)) == 40


# as_tensors


def test_as_tensors_custom_transform(tiny_mnist_root):
    data = MNISTSum(tiny_mnist_root, train=False, seed=0, transform=transforms.ToTensor())

    with pytest.raises(
        ValueError, match=r"as_tensors\(\) applies only the default normalisation.*custom transform"
    ):
        data.as_tensors()


def test_as_tensors_length(held_out):
    assert len(held_out.as_tensors()) == len(held_out)


def test_as_tensors_pairs_same_side(held_out):
    batch = held_out.as_tensors().batch(torch.arange(len(held_out)))

    assert torch.equal(batch["side"], held_out.side.values)
