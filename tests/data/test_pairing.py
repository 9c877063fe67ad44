import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset
from torchvision import datasets

from mnist_fusion.data import (
    TARGETS,
    FusionDataset,
    RandomDigits,
    SideTensor,
    default_transform,
    read_idx,
    write_idx,
)

SAMPLE_KEYS = ["digit", "image", "index", "side", "sum"]


def marked_images(count: int) -> torch.Tensor:
    """Make images whose pixels all equal their index, so a sample shows where it came from."""
    return torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1).expand(count, 1, 2, 2)


def labelled_images(labels: list[int]) -> TensorDataset:
    return TensorDataset(marked_images(len(labels)).clone(), torch.tensor(labels))


class CountingTransform:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        return image


class Returns(Dataset):
    """A base dataset whose items are whatever it was given."""

    def __init__(self, item: object, length: int = 3) -> None:
        self.item = item
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> object:
        return self.item


@pytest.fixture
def images() -> TensorDataset:
    return labelled_images([7, 1, 2, 3, 9])


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fashion")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(42)
    for prefix, count in (("train", 40), ("t10k", 20)):
        pixels = torch.randint(0, 256, (count, 28, 28), generator=generator, dtype=torch.uint8)
        labels = torch.randint(0, 10, (count,), generator=generator, dtype=torch.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", pixels)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def read_labels(raw: Path, prefix: str = "train") -> torch.Tensor:
    return read_idx(raw / f"{prefix}-labels-idx1-ubyte", ndim=1).to(torch.int64)


def assert_samples_equal(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(torch.as_tensor(first[key]), torch.as_tensor(second[key])), key


# Construction


@pytest.mark.parametrize(
    ("side", "dtype"),
    [
        (torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), "torch.float32"),
        ([0.5, 1, 2, 3, 4], "torch.float32"),
        (np.array([1.0, 2.0, 3.0, 4.0, 5.0]), "torch.float64"),
    ],
)
def test_float_side_rejected(images, side, dtype):
    with pytest.raises(ValueError, match=rf"integer side inputs, but got dtype {dtype}"):
        FusionDataset(images, side)


def test_length_mismatch(images):
    with pytest.raises(ValueError, match=r"images has 5 items, side has 4"):
        FusionDataset(images, [1, 2, 3, 4])


def test_length_mismatch_side_dataset(images):
    with pytest.raises(ValueError, match=r"images has 5 items, side has 6"):
        FusionDataset(images, RandomDigits(6, seed=0))


@pytest.mark.parametrize("names", [["nope"], ["sum", "nope", "other"]])
def test_unknown_target_names(images, names):
    unknown = [name for name in names if name not in TARGETS]
    pattern = rf"{re.escape(repr(unknown))}; valid names are \['digit', 'sum'\]"
    with pytest.raises(ValueError, match=pattern):
        FusionDataset(images, [0] * 5, targets=names)


def test_target_name_string(images):
    with pytest.raises(TypeError, match=r"sequence of names, but got the string 'sum'"):
        FusionDataset(images, [0] * 5, targets="sum")


@pytest.mark.parametrize("name", ["image", "side", "index"])
def test_reserved_target_name(images, name):
    with pytest.raises(ValueError, match=rf"\['{name}'\] are reserved"):
        FusionDataset(images, [0] * 5, targets={name: TARGETS["sum"]})


def test_non_callable_target(images):
    with pytest.raises(TypeError, match=r"callable\(label, side\), but \['twice'\] are not"):
        FusionDataset(images, [0] * 5, targets={"sum": TARGETS["sum"], "twice": 2})


# One sample


def test_sample_keys(images):
    sample = FusionDataset(images, [2, 0, 5, 9, 4])[0]

    assert sorted(sample) == SAMPLE_KEYS


@pytest.mark.parametrize("key", ["side", "digit", "sum", "index"])
def test_sample_fields_python_ints(images, key):
    value = FusionDataset(images, [2, 0, 5, 9, 4])[1][key]

    assert type(value) is int


def test_collated_fields_int64(images):
    batch = next(iter(DataLoader(FusionDataset(images, [2, 0, 5, 9, 4]), batch_size=5)))

    for key in ("side", "digit", "sum", "index"):
        assert batch[key].dtype == torch.int64, key
        assert batch[key].shape == (5,), key


def test_sample_values(images):
    fused = FusionDataset(images, [2, 0, 5, 9, 4])

    sums = [int(fused[i]["sum"]) for i in range(5)]

    assert sums == [9, 1, 7, 12, 13]


def test_sample_image_is_base_image(images):
    fused = FusionDataset(images, [2, 0, 5, 9, 4])

    assert torch.equal(fused[3]["image"], images[3][0])


def test_negative_index(images):
    fused = FusionDataset(images, [2, 0, 5, 9, 4])

    assert_samples_equal(fused[-1], fused[4])
    assert_samples_equal(fused[-5], fused[0])


def test_negative_index_field(images):
    assert int(FusionDataset(images, [2, 0, 5, 9, 4])[-2]["index"]) == 3


def test_index_past_end(images):
    with pytest.raises(IndexError, match=r"Index 5 is out of range.*-5 to 4"):
        FusionDataset(images, [0] * 5)[5]


def test_non_integer_index(images):
    with pytest.raises(TypeError, match=r"integer index, but got 1\.0"):
        FusionDataset(images, [0] * 5)[1.0]


def test_two_reads_equal(images):
    fused = FusionDataset(images, RandomDigits(5, seed=1))

    assert_samples_equal(fused[2], fused[2])


def test_written_sample_leaves_base(images):
    fused = FusionDataset(images, [2, 0, 5, 9, 4])
    sample = fused[0]

    sample["image"].add_(100)
    sample["digit"] += 100

    assert int(images[0][1]) == 7
    assert int(fused[0]["digit"]) == 7
    assert int(fused[0]["side"]) == 2
    assert torch.equal(fused[0]["image"], images[0][0])


@pytest.mark.parametrize(
    ("item", "returned"),
    [
        (torch.zeros(2), "Tensor"),
        (7, "int"),
        ((torch.zeros(2), 1, 2), "tuple of length 3"),
        ({"image": 0, "label": 1}, "dict"),
    ],
)
def test_base_returns_non_pair(item, returned):
    pattern = rf"\(image, label\) pair at index 0, but it returned {returned}\."
    with pytest.raises(TypeError, match=pattern):
        FusionDataset(Returns(item), [0, 0, 0])[0]


def test_base_returns_list_pair():
    sample = FusionDataset(Returns([torch.zeros(2), 4]), [1, 1, 1])[0]

    assert int(sample["sum"]) == 5


@pytest.mark.parametrize("label", [1.0, torch.tensor([3]), torch.tensor(2.5), "3", True])
def test_label_not_integer_scalar(label):
    pattern = rf"label at index 1 to be an integer scalar, but got {re.escape(repr(label))}"
    with pytest.raises(ValueError, match=pattern):
        FusionDataset(Returns((torch.zeros(2), label)), [0, 0, 0])[1]


def test_side_dataset_not_integer():
    side = TensorDataset(torch.tensor([1.5, 2.5]))

    with pytest.raises(ValueError, match=r"side input at index 0 to be an integer scalar"):
        FusionDataset(labelled_images([1, 2]), side)[0]


def test_empty_datasets_pair():
    fused = FusionDataset(labelled_images([]), [])

    assert len(fused) == 0


def test_repr(images):
    fused = FusionDataset(images, SideTensor([0] * 5))

    expected = (
        "FusionDataset(length=5, images=TensorDataset, side=SideTensor(length=5), "
        "targets=['digit', 'sum'])"
    )
    assert repr(fused) == expected


# Targets and transforms


def test_custom_targets(images):
    targets = {"difference": lambda label, side: label - side, "product": torch.mul}

    sample = FusionDataset(images, [2, 0, 5, 9, 4], targets=targets)[3]

    assert sorted(sample) == ["difference", "image", "index", "product", "side"]
    assert int(sample["difference"]) == 3 - 9
    assert int(sample["product"]) == 3 * 9


def test_target_subset(images):
    sample = FusionDataset(images, [2, 0, 5, 9, 4], targets=["sum"])[0]

    assert sorted(sample) == ["image", "index", "side", "sum"]


def test_no_targets(images):
    sample = FusionDataset(images, [2, 0, 5, 9, 4], targets=[])[0]

    assert sorted(sample) == ["image", "index", "side"]


def test_targets_mapping_copied(images):
    targets = {"sum": TARGETS["sum"]}
    fused = FusionDataset(images, [2, 0, 5, 9, 4], targets=targets)

    targets["digit"] = TARGETS["digit"]

    assert sorted(fused[0]) == ["image", "index", "side", "sum"]


def test_transform_applied(images):
    fused = FusionDataset(images, [2, 0, 5, 9, 4], transform=lambda image: image * 2 + 1)

    assert torch.equal(fused[3]["image"], images[3][0] * 2 + 1)


def test_target_transform_feeds_targets(images):
    fused = FusionDataset(images, [2, 0, 5, 9, 4], target_transform=lambda label: label + 1)

    sample = fused[3]

    assert int(sample["digit"]) == 4
    assert int(sample["sum"]) == 4 + 9


def test_base_transform_runs_once_per_item(tiny_mnist_root):
    counter = CountingTransform()
    mnist = datasets.MNIST(tiny_mnist_root, train=False, transform=counter)
    fused = FusionDataset(mnist, RandomDigits(len(mnist), seed=0))

    for index in range(len(fused)):
        fused[index]

    assert counter.calls == len(fused)


def test_own_transform_runs_once_per_item(images):
    counter = CountingTransform()
    fused = FusionDataset(images, [0] * 5, transform=counter)

    for index in range(5):
        fused[index]

    assert counter.calls == 5


# Real base datasets


def mnist_base(root: Path) -> Dataset:
    return datasets.MNIST(root, train=True, transform=default_transform())


def fashion_base(root: Path) -> Dataset:
    return datasets.FashionMNIST(root, train=False, transform=default_transform())


def test_mnist_images_match_base(tiny_mnist_root):
    base = mnist_base(tiny_mnist_root)
    fused = FusionDataset(mnist_base(tiny_mnist_root), RandomDigits(len(base), seed=2))

    for index in range(0, len(base), 37):
        assert torch.equal(fused[index]["image"], base[index][0])


def test_mnist_pairs_idx_labels(tiny_mnist_root):
    labels = read_labels(tiny_mnist_root / "MNIST" / "raw")
    side = RandomDigits(len(labels), seed=2).values
    fused = FusionDataset(
        datasets.MNIST(tiny_mnist_root, train=True), RandomDigits(len(labels), seed=2)
    )

    digits = torch.tensor([fused[i]["digit"] for i in range(len(fused))])
    sums = torch.tensor([fused[i]["sum"] for i in range(len(fused))])

    assert torch.equal(digits, labels)
    assert torch.equal(sums, labels + side)


def test_fashion_mnist_pairs_idx_labels(fashion_root):
    labels = read_labels(fashion_root / "FashionMNIST" / "raw", prefix="t10k")
    side = torch.arange(len(labels)) % 7
    fused = FusionDataset(fashion_base(fashion_root), side)

    sums = torch.tensor([fused[i]["sum"] for i in range(len(fused))])

    assert torch.equal(sums, labels + side)


def test_fashion_mnist_images_match_base(fashion_root):
    base = fashion_base(fashion_root)
    fused = FusionDataset(fashion_base(fashion_root), [0] * len(base))

    for index in range(len(base)):
        assert torch.equal(fused[index]["image"], base[index][0])


def test_subset_pairs_subset_items():
    base = labelled_images([5, 6, 7, 8, 9, 0])
    subset = Subset(base, [4, 0, 2])
    fused = FusionDataset(subset, [1, 2, 3])

    assert [int(fused[i]["image"][0, 0, 0]) for i in range(3)] == [4, 0, 2]
    assert [int(fused[i]["sum"]) for i in range(3)] == [9 + 1, 5 + 2, 7 + 3]


def test_concat_pairs_across_parts():
    concat = ConcatDataset([labelled_images([1, 2]), labelled_images([3, 4, 5])])
    fused = FusionDataset(concat, [10, 20, 30, 40, 50])

    assert [int(fused[i]["sum"]) for i in range(5)] == [11, 22, 33, 44, 55]
    assert int(fused[-1]["digit"]) == 5


def test_concat_of_real_datasets(tiny_mnist_root, fashion_root):
    concat = ConcatDataset([mnist_base(tiny_mnist_root), fashion_base(fashion_root)])
    labels = torch.cat(
        [
            read_labels(tiny_mnist_root / "MNIST" / "raw"),
            read_labels(fashion_root / "FashionMNIST" / "raw", prefix="t10k"),
        ]
    )
    side = RandomDigits(len(concat), seed=4)
    fused = FusionDataset(concat, side)

    for index in [0, 1199, 1200, 1219, -1]:
        assert int(fused[index]["sum"]) == int(labels[index] + side.values[index])


# The fault this library fixes: pairing survives shuffling and workers


def test_shuffled_workers_keep_pairs(tiny_mnist_root):
    labels = read_labels(tiny_mnist_root / "MNIST" / "raw")
    side = RandomDigits(len(labels), seed=11).values_at(torch.arange(len(labels)))
    fused = FusionDataset(mnist_base(tiny_mnist_root), RandomDigits(len(labels), seed=11))
    loader = DataLoader(
        fused,
        batch_size=64,
        shuffle=True,
        num_workers=2,
        generator=torch.Generator().manual_seed(0),
    )

    seen = Counter()
    for batch in loader:
        index = batch["index"]
        assert torch.equal(batch["side"], side[index])
        assert torch.equal(batch["digit"], labels[index])
        assert torch.equal(batch["sum"], labels[index] + side[index])
        rows = zip(index.tolist(), batch["side"].tolist(), batch["sum"].tolist(), strict=True)
        seen.update(rows)

    expected = Counter((i, int(side[i]), int(labels[i] + side[i])) for i in range(len(labels)))
    assert seen == expected


def test_shuffled_order_is_not_identity():
    loader = DataLoader(
        FusionDataset(labelled_images([0] * 300), [0] * 300),
        batch_size=300,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )

    # Without a real shuffle, the pairing test above would prove nothing.
    assert not torch.equal(next(iter(loader))["index"], torch.arange(300))


def test_zipped_loaders_misalign():
    labels = torch.arange(200) % 10
    side = RandomDigits(200, seed=1).values
    shuffled = DataLoader(
        TensorDataset(torch.arange(200), labels),
        batch_size=20,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    unshuffled = DataLoader(TensorDataset(side, side), batch_size=20)

    # The fault the fused dataset replaces: sums built apart from the shuffled images.
    wrong = 0
    for (index, label), (batch_side, _) in zip(shuffled, unshuffled, strict=True):
        wrong += int((label + batch_side != labels[index] + side[index]).sum())

    assert wrong > 100


# Properties


@given(data=st.data(), labels=st.lists(st.integers(0, 9), max_size=40))
def test_pairing_properties(data, labels):
    base = labelled_images(labels)
    chosen = data.draw(st.lists(st.integers(0, max(len(labels) - 1, 0)), max_size=30))
    chosen = chosen if labels else []
    side = data.draw(st.lists(st.integers(-20, 20), min_size=len(chosen), max_size=len(chosen)))
    subset = Subset(base, chosen)
    fused = FusionDataset(subset, side)

    assert len(fused) == len(subset)
    for position, base_index in enumerate(chosen):
        sample = fused[position]
        assert int(sample["image"][0, 0, 0]) == base_index
        assert int(sample["sum"]) == labels[base_index] + side[position]
        assert_samples_equal(sample, fused[position])


@given(data=st.data(), labels=st.lists(st.integers(0, 9), min_size=1, max_size=40))
def test_pairing_any_index(data, labels):
    seed = data.draw(st.integers(0, 2**32))
    position = data.draw(st.integers(-len(labels), len(labels) - 1))
    fused = FusionDataset(labelled_images(labels), RandomDigits(len(labels), seed=seed))

    sample = fused[position]

    expected_side = RandomDigits(0, seed=seed).values_at(torch.tensor([position % len(labels)]))
    assert int(sample["sum"]) == labels[position] + int(expected_side[0])
