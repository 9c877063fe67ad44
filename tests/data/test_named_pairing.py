"""FusionDataset and TensorFusionDataset with a mapping of named side inputs."""

import re
from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset
from torchvision import datasets

from mnist_fusion.data import (
    BatchLoader,
    FusionDataset,
    RandomDigits,
    RandomUniform,
    SideTensor,
    TensorFusionDataset,
    default_transform,
    read_idx,
)


def labelled_images(labels: list[int]) -> TensorDataset:
    count = len(labels)
    marked = torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1).expand(count, 1, 2, 2)
    return TensorDataset(marked.clone(), torch.tensor(labels, dtype=torch.int64))


def test_named_sample_fields():
    fused = FusionDataset(labelled_images([3, 4]), {"a": [1, 2], "b": RandomDigits(2, seed=0)})

    sample = fused[1]

    assert sorted(sample["side"]) == ["a", "b"]
    assert sample["side"]["a"].dtype == torch.int64
    assert int(sample["sum"]) == 4 + 2 + int(RandomDigits(2, seed=0)[1])


def test_named_continuous_input():
    fused = FusionDataset(labelled_images([7]), {"x": torch.tensor([0.25], dtype=torch.float64)})

    sample = fused[0]

    assert sample["side"]["x"].dtype == torch.float32
    assert float(sample["sum"]) == pytest.approx(7.25)


def test_named_custom_target():
    targets = {
        "digit": lambda label, side: label,
        "sum": lambda label, side: label + 10 * side["x"],
    }
    fused = FusionDataset(labelled_images([2]), {"x": RandomUniform(1, seed=5)}, targets=targets)

    sample = fused[0]

    assert float(sample["sum"]) == pytest.approx(2 + 10 * float(RandomUniform(1, seed=5)[0]))


def test_named_length_mismatch_names_input():
    message = "side input 'b' has 3. Build the side input with the image dataset's length"
    with pytest.raises(ValueError, match=re.escape(message)):
        FusionDataset(labelled_images([1, 2]), {"a": [0, 1], "b": [0, 1, 2]})


def test_named_mapping_empty():
    with pytest.raises(ValueError, match="at least one side input"):
        FusionDataset(labelled_images([1]), {})


def test_named_mapping_bad_name():
    with pytest.raises(TypeError, match="names to be strings, got 3"):
        FusionDataset(labelled_images([1]), {3: [0]})


@pytest.mark.parametrize("name", ["", "a.b", "__class__", "parameters"])
def test_named_mapping_invalid_name(name):
    with pytest.raises(ValueError, match=re.escape(f"Invalid side input name {name!r}")):
        FusionDataset(labelled_images([1]), {name: [0]})
    with pytest.raises(ValueError, match=re.escape(f"Invalid side input name {name!r}")):
        TensorFusionDataset(
            torch.zeros(1, 2, 2, dtype=torch.uint8), torch.arange(1), {name: torch.arange(1)}
        )


def test_side_list_of_tensors_names_fix():
    with pytest.raises(TypeError, match="for several side inputs pass a mapping"):
        FusionDataset(labelled_images([1, 2]), [torch.tensor([0, 1]), torch.tensor([1, 0])])


def test_bool_side_rejected():
    with pytest.raises(
        ValueError, match="Expected integer or real side inputs, but got dtype torch.bool"
    ):
        FusionDataset(labelled_images([1]), {"a": torch.tensor([True])})


def test_random_uniform_values_at_matches_cache():
    side = RandomUniform(50, seed=9, low=-1.0, high=1.0)
    assert torch.equal(side.values_at(torch.arange(50)), side.values)
    assert torch.equal(
        side.values_at(torch.tensor([70]))[0], RandomUniform(80, seed=9, low=-1.0, high=1.0)[70]
    )


def test_batch_loader_rejects_per_item_dataset():
    with pytest.raises(TypeError, match="FusionDataset lacks; pass a TensorFusionDataset"):
        BatchLoader(FusionDataset(labelled_images([1]), [0]), batch_size=1)


def test_missing_is_reserved_target():
    with pytest.raises(ValueError, match=re.escape("['missing'] are reserved")):
        FusionDataset(labelled_images([1]), [0], targets={"missing": lambda label, side: label})


def test_single_side_still_rejects_floats():
    with pytest.raises(ValueError, match="continuous=True"):
        FusionDataset(labelled_images([1]), torch.tensor([0.5]))


def test_side_tensor_continuous():
    side = SideTensor([0.5, 0.25], continuous=True)
    assert side.values.dtype == torch.float32
    assert SideTensor([1, 2], continuous=True).values.dtype == torch.int64


def test_named_value_not_scalar():
    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return torch.tensor([0.1, 0.2])

    with pytest.raises(ValueError, match="side input 'x' at index 0 to be a scalar"):
        FusionDataset(labelled_images([1]), {"x": Pairs()})[0]


def test_named_workers_keep_pairs(tiny_mnist_root):
    raw = tiny_mnist_root / "MNIST" / "raw"
    labels = read_idx(raw / "train-labels-idx1-ubyte").long()
    base = datasets.MNIST(tiny_mnist_root, train=True, transform=default_transform())
    a, b = RandomDigits(len(labels), seed=1), RandomDigits(len(labels), seed=2)
    x = RandomUniform(len(labels), seed=3)
    fused = FusionDataset(base, {"a": a, "b": b, "x": x})
    loader = DataLoader(
        fused,
        batch_size=50,
        shuffle=True,
        num_workers=2,
        generator=torch.Generator().manual_seed(0),
    )

    seen = Counter()
    for batch in loader:
        index = batch["index"]
        assert torch.equal(batch["side"]["a"], a.values[index])
        assert torch.equal(batch["side"]["b"], b.values[index])
        assert torch.equal(batch["side"]["x"], x.values[index])
        assert torch.allclose(
            batch["sum"], labels[index] + a.values[index] + b.values[index] + x.values[index]
        )
        seen.update(index.tolist())

    assert seen == Counter(range(len(labels)))


@given(data=st.data(), labels=st.lists(st.integers(0, 9), min_size=1, max_size=30))
def test_named_pairing_properties(data, labels):
    names = data.draw(
        st.lists(st.text("abcxyz", min_size=1, max_size=3), min_size=1, max_size=4, unique=True)
    )
    columns = {
        name: data.draw(st.lists(st.integers(0, 9), min_size=len(labels), max_size=len(labels)))
        for name in names
    }
    fused = FusionDataset(labelled_images(labels), columns)
    position = data.draw(st.integers(-len(labels), len(labels) - 1))

    sample = fused[position]

    row = position % len(labels)
    assert int(sample["image"][0, 0, 0]) == row
    assert {name: int(value) for name, value in sample["side"].items()} == {
        name: column[row] for name, column in columns.items()
    }
    assert int(sample["sum"]) == labels[row] + sum(column[row] for column in columns.values())


def test_tensor_dataset_named_batch_matches_items():
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    labels = torch.arange(6)
    side = {
        "a": torch.tensor([0, 1, 2, 3, 4, 5]),
        "x": torch.linspace(0, 0.9, 6, dtype=torch.float64),
    }
    data = TensorFusionDataset(images, labels, side)

    batch = data.batch(torch.tensor([4, 1]))
    item = data[4]

    assert batch["side"]["x"].dtype == torch.float32
    assert torch.equal(batch["side"]["a"], torch.tensor([4, 1]))
    assert torch.allclose(
        batch["sum"], labels[[4, 1]] + side["a"][[4, 1]] + side["x"][[4, 1]].float()
    )
    assert torch.equal(item["side"]["a"], batch["side"]["a"][0])
    assert torch.equal(data.__getitems__([4, 1])[1]["side"]["x"], batch["side"]["x"][1])


def test_tensor_dataset_named_length_mismatch():
    with pytest.raises(ValueError, match=re.escape("lengths {'labels': 2, 'a': 2, 'b': 3}")):
        TensorFusionDataset(
            torch.zeros(2, 2, 2, dtype=torch.uint8),
            torch.arange(2),
            {"a": torch.arange(2), "b": torch.arange(3)},
        )


def test_tensor_dataset_single_rejects_float_side():
    with pytest.raises(TypeError, match="Expected integer side"):
        TensorFusionDataset(torch.zeros(2, 2, 2, dtype=torch.uint8), torch.arange(2), torch.rand(2))


def test_random_uniform_is_pure_function_of_index():
    long = RandomUniform(1000, seed=4, low=-2.0, high=3.0)
    short = RandomUniform(10, seed=4, low=-2.0, high=3.0)

    assert torch.equal(long.values[:10], short.values)
    assert bool((long.values >= -2.0).all())
    assert bool((long.values < 3.0).all())
    assert not torch.equal(long.values[:10], RandomUniform(10, seed=5, low=-2.0, high=3.0).values)


def test_random_uniform_is_roughly_uniform():
    values = RandomUniform(20_000, seed=0).values
    counts = torch.histc(values, bins=10, min=0.0, max=1.0)

    # Each tenth contains 2,000 values on average, and 5 binomial standard deviations
    # are about 212.
    assert bool(((counts - 2000).abs() < 212).all())


@pytest.mark.parametrize(("low", "high"), [(1.0, 1.0), (2.0, 1.0), (0.0, float("inf"))])
def test_random_uniform_rejects_range(low, high):
    with pytest.raises(ValueError, match="finite `low` < `high`"):
        RandomUniform(3, seed=0, low=low, high=high)


def test_random_uniform_stays_below_high():
    values = RandomUniform(5000, seed=1, low=1.0, high=1.0 + 1e-7).values
    assert bool((values < 1.0 + 1e-7).all())
