"""Held-out combinations: split_by_combinations, combination_columns and held_out_pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from mnist_fusion.data import (
    BatchLoader,
    FusionDataset,
    MNISTSum,
    RandomDigits,
    RandomUniform,
    TensorFusionDataset,
    TensorSubset,
    combination_columns,
    held_out_pairs,
    split_by_combinations,
)
from mnist_fusion.testing import fused_datasets, held_out_sets


def labelled(labels: list[int] | torch.Tensor) -> TensorDataset:
    labels = torch.as_tensor(labels)
    return TensorDataset(torch.zeros(len(labels), 1, 2, 2), labels)


class LabelledImages(Dataset):
    """Images with a ``targets`` attribute whose items must never be read."""

    def __init__(self, labels: torch.Tensor) -> None:
        self.targets = labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raise AssertionError(f"item {index} was read, but the labels come from `targets`")


def pairs_of(dataset: Dataset, indices: list[int]) -> list[tuple[int, int]]:
    return [(int(dataset[i]["digit"]), int(dataset[i]["side"])) for i in indices]


def tensor_data(labels: torch.Tensor, side: torch.Tensor | dict) -> TensorFusionDataset:
    images = torch.zeros(len(labels), 28, 28, dtype=torch.uint8)
    return TensorFusionDataset(images, labels, side)


@st.composite
def datasets_and_held_out(draw: st.DrawFn) -> tuple[FusionDataset, frozenset]:
    """Draw a non-empty fused dataset and pairs within its ranges of digits and sides."""
    fused = draw(fused_datasets(min_size=1, max_size=24, high=4))
    digits, side = combination_columns(fused)
    held_out = draw(
        held_out_sets(num_digits=int(digits.max()) + 1, num_side_values=int(side.max()) + 1)
    )
    return fused, held_out


@given(datasets_and_held_out())
def test_split_partitions_dataset(case):
    fused, held_out = case
    seen, unseen = split_by_combinations(fused, held_out)
    assert sorted([*seen.indices, *unseen.indices]) == list(range(len(fused)))
    assert set(seen.indices).isdisjoint(unseen.indices)
    assert list(seen.indices) == sorted(seen.indices)
    assert list(unseen.indices) == sorted(unseen.indices)


@given(datasets_and_held_out())
def test_split_unseen_is_held_out(case):
    fused, held_out = case
    seen, unseen = split_by_combinations(fused, held_out)
    assert all(pair in held_out for pair in pairs_of(fused, list(unseen.indices)))
    assert not any(pair in held_out for pair in pairs_of(fused, list(seen.indices)))


@given(datasets_and_held_out())
def test_split_tensor_dataset_agrees(case):
    fused, held_out = case
    digits, side = combination_columns(fused)
    tensors = tensor_data(digits, side)
    seen, unseen = split_by_combinations(tensors, held_out)
    fused_seen, fused_unseen = split_by_combinations(fused, held_out)
    assert isinstance(seen, TensorSubset)
    assert list(seen.indices) == list(fused_seen.indices)
    assert list(unseen.indices) == list(fused_unseen.indices)


def test_split_through_dataloader_workers():
    labels = torch.arange(40) % 10
    fused = FusionDataset(labelled(labels), RandomDigits(40, seed=3))
    held_out = held_out_pairs(10, 10, 0.3, seed=1)
    _, unseen = split_by_combinations(fused, held_out)
    assert len(unseen) > 0

    loader = DataLoader(unseen, batch_size=3, shuffle=True, num_workers=2)
    batches = list(loader)
    indices = [i for batch in batches for i in batch["index"].tolist()]
    pairs = [
        pair
        for batch in batches
        for pair in zip(batch["digit"].tolist(), batch["side"].tolist(), strict=True)
    ]
    assert sorted(indices) == list(unseen.indices)
    assert all(pair in held_out for pair in pairs)


def test_split_tensor_subset_batch_loader():
    labels = torch.arange(50) % 10
    data = tensor_data(labels, RandomDigits(50, seed=0).values)
    held_out = held_out_pairs(10, 10, 0.2, seed=0)
    seen, unseen = split_by_combinations(data, held_out)

    loader = BatchLoader(seen, batch_size=8, shuffle=True, seed=0)
    indices = [i for batch in loader for i in batch["index"].tolist()]
    assert sorted(indices) == list(seen.indices)
    for batch in BatchLoader(unseen, batch_size=4):
        pairs = zip(batch["digit"].tolist(), batch["side"].tolist(), strict=True)
        assert all(pair in held_out for pair in pairs)
        assert torch.equal(batch["sum"], batch["digit"] + batch["side"])


def test_tensor_subset_rejects_out_of_range():
    data = tensor_data(torch.arange(4), torch.zeros(4, dtype=torch.int64))
    subset = TensorSubset(data, [2, 3])
    assert subset.batch(torch.tensor([-1]))["index"].tolist() == [3]
    with pytest.raises(IndexError, match="Index 2 is out of range for a subset of length 2"):
        subset.batch(torch.tensor([0, 2]))


def test_split_all_pairs_held_out():
    fused = FusionDataset(labelled([0, 1, 1, 0]), torch.tensor([0, 0, 1, 1]))
    seen, unseen = split_by_combinations(fused, {(0, 0), (0, 1), (1, 0), (1, 1)})
    assert len(seen) == 0
    assert list(unseen.indices) == [0, 1, 2, 3]


def test_split_pair_absent_from_data():
    fused = FusionDataset(labelled([0, 2]), torch.tensor([0, 2]))
    seen, unseen = split_by_combinations(fused, {(1, 1)})
    assert list(seen.indices) == [0, 1]
    assert len(unseen) == 0


def test_split_accepts_tensor_integers():
    fused = FusionDataset(labelled([0, 1]), torch.tensor([1, 1]))
    _, unseen = split_by_combinations(fused, [(torch.tensor(1), torch.tensor(1))])
    assert list(unseen.indices) == [1]


@pytest.mark.parametrize(
    ("held_out", "match"),
    [
        (set(), "at least one"),
        ([], "at least one"),
        ([(1,)], r"two integers .* got \(1,\)"),
        ([(1, 2, 3)], r"got \(1, 2, 3\)"),
        ([(1.0, 2)], r"got \(1.0, 2\)"),
        ([(True, 1)], r"got \(True, 1\)"),
        (["12"], "got '12'"),
        (5, "collection of .* got 5"),
        ("12", "collection of"),
        ([(10, 0)], r"\(10, 0\) has digit 10, but digits are 0 to 9"),
        ([(-1, 0)], "digit -1, but digits are 0 to 9"),
        ([(0, 10)], r"side value 10, but side values are 0 to 4"),
        ([(0, -2)], r"side value -2, but side values are 0 to 4"),
    ],
)
def test_split_rejects_held_out(held_out, match):
    fused = FusionDataset(labelled(torch.arange(10)), torch.arange(10) % 5)
    with pytest.raises(ValueError, match=match):
        split_by_combinations(fused, held_out, num_digits=10, num_side_values=5)


def test_split_without_bounds():
    fused = FusionDataset(labelled(torch.arange(10)), torch.arange(10) % 5)
    assert len(split_by_combinations(fused, {(12, 40)})[1]) == 0
    with pytest.raises(ValueError, match="digit -1, but digits are 0 or more"):
        split_by_combinations(fused, {(-1, 0)})
    with pytest.raises(ValueError, match="`num_digits` >= 1, got 0"):
        split_by_combinations(fused, {(1, 0)}, num_digits=0)


def test_split_empty_dataset():
    fused = FusionDataset(labelled(torch.zeros(0, dtype=torch.int64)), torch.zeros(0).long())
    seen, unseen = split_by_combinations(fused, {(0, 0)})
    assert len(seen) == 0
    assert len(unseen) == 0


def test_columns_read_targets_not_items():
    labels = torch.tensor([3, 1, 4, 1, 5])
    fused = FusionDataset(LabelledImages(labels), RandomDigits(5, seed=2))
    digits, side = combination_columns(fused)
    assert torch.equal(digits, labels)
    assert torch.equal(side, RandomDigits(5, seed=2).values)
    _, unseen = split_by_combinations(fused, {(3, int(side[0]))})
    assert 0 in unseen.indices


def test_columns_of_image_subset_use_targets():
    labels = torch.tensor([3, 1, 4, 1, 5])
    images = Subset(LabelledImages(labels), [4, 0])
    digits, _ = combination_columns(FusionDataset(images, torch.tensor([0, 1])))
    assert digits.tolist() == [5, 3]


def test_columns_follow_target_transform():
    fused = FusionDataset(
        labelled([0, 1, 2]), torch.tensor([5, 5, 5]), target_transform=lambda label: 9 - label
    )
    digits, _ = combination_columns(fused)
    assert digits.tolist() == [9, 8, 7]


def test_columns_of_subset():
    fused = FusionDataset(labelled([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7]))
    digits, side = combination_columns(Subset(fused, [3, 1]))
    assert digits.tolist() == [3, 1]
    assert side.tolist() == [7, 5]
    _, unseen = split_by_combinations(Subset(fused, [3, 1]), {(1, 5)})
    assert list(unseen.indices) == [1]


def test_columns_of_generic_dataset():
    samples = [{"digit": torch.tensor(d), "side": torch.tensor(s)} for d, s in [(1, 2), (3, 4)]]
    digits, side = combination_columns(samples)
    assert digits.tolist() == [1, 3]
    assert side.tolist() == [2, 4]


def test_columns_reject_generic_items():
    with pytest.raises(TypeError, match="dict samples with `digit` and `side` at index 0"):
        combination_columns([(torch.zeros(1), 1)])


def test_columns_of_mnist_sum_match_items(tiny_mnist_root: Path):
    per_item = MNISTSum(tiny_mnist_root, train=False, seed=0)
    digits, side = combination_columns(per_item)
    first = [per_item[i] for i in range(20)]
    assert digits[:20].tolist() == [int(sample["digit"]) for sample in first]
    assert side[:20].tolist() == [int(sample["side"]) for sample in first]

    tensor_digits, tensor_side = combination_columns(per_item.as_tensors())
    assert torch.equal(tensor_digits, digits)
    assert torch.equal(tensor_side, side)


def named_fusion(length: int = 30) -> FusionDataset:
    sides = {"a": RandomDigits(length, seed=1), "b": RandomDigits(length, seed=2, high=4)}
    return FusionDataset(labelled(torch.arange(length) % 10), sides)


def test_split_named_side_input():
    fused = named_fusion()
    held_out = {(0, 1), (3, 2), (7, 4)}
    seen, unseen = split_by_combinations(fused, held_out, side_name="b")
    unseen_pairs = [(int(fused[i]["digit"]), int(fused[i]["side"]["b"])) for i in unseen.indices]
    seen_pairs = [(int(fused[i]["digit"]), int(fused[i]["side"]["b"])) for i in seen.indices]
    assert all(pair in held_out for pair in unseen_pairs)
    assert not any(pair in held_out for pair in seen_pairs)
    assert len(seen) + len(unseen) == len(fused)


def test_split_named_tensor_dataset_agrees():
    fused = named_fusion()
    side = {name: source.values for name, source in fused.side.items()}
    data = tensor_data(torch.arange(30) % 10, side)
    for name in ("a", "b"):
        held_out = {(1, 1), (2, 3)}
        _, fused_unseen = split_by_combinations(fused, held_out, side_name=name)
        _, unseen = split_by_combinations(data, held_out, side_name=name)
        assert list(unseen.indices) == list(fused_unseen.indices)


@pytest.mark.parametrize(
    ("side_name", "match"),
    [
        (None, r"side inputs \['a', 'b'\]; choose the one .* `side_name=`"),
        ("c", r"Unknown side input 'c'; the dataset has \['a', 'b'\]"),
    ],
)
def test_split_rejects_side_name(side_name, match):
    with pytest.raises(ValueError, match=match):
        split_by_combinations(named_fusion(), {(0, 0)}, side_name=side_name)


def test_split_rejects_side_name_for_single_input():
    fused = FusionDataset(labelled([0, 1]), torch.tensor([0, 1]))
    assert len(split_by_combinations(fused, {(0, 0)}, side_name="side")[1]) == 1
    with pytest.raises(ValueError, match=r"Unknown side input 'a'; the dataset has \['side'\]"):
        split_by_combinations(fused, {(0, 0)}, side_name="a")


def test_split_rejects_continuous_input():
    fused = FusionDataset(
        labelled([0, 1, 2]), {"a": torch.tensor([0, 1, 2]), "x": RandomUniform(3, seed=0)}
    )
    with pytest.raises(ValueError, match="integer values for side input 'x'"):
        split_by_combinations(fused, {(0, 0)}, side_name="x")
    data = tensor_data(torch.tensor([0, 1, 2]), {"a": torch.arange(3), "x": torch.rand(3)})
    with pytest.raises(ValueError, match="integer values for side input 'x'"):
        split_by_combinations(data, {(0, 0)}, side_name="x")


@given(
    num_digits=st.integers(2, 12),
    num_side_values=st.integers(2, 12),
    fraction=st.floats(0.01, 0.6),
    seed=st.integers(0, 2**31),
)
def test_held_out_pairs_keep_every_value(num_digits, num_side_values, fraction, seed):
    cells = num_digits * num_side_values
    limit = cells - (num_digits + num_side_values - 2)
    if not 1 <= round(fraction * cells) <= limit:
        with pytest.raises(ValueError, match=f"between 1 and {limit} can be held out"):
            held_out_pairs(num_digits, num_side_values, fraction, seed=seed)
        return
    pairs = held_out_pairs(num_digits, num_side_values, fraction, seed=seed)
    grid = {(d, s) for d in range(num_digits) for s in range(num_side_values)}
    training_pairs = grid - set(pairs)
    assert len(pairs) == round(fraction * cells)
    assert len(set(pairs)) == len(pairs)
    assert set(pairs) <= grid
    assert {d for d, _ in training_pairs} == set(range(num_digits))
    assert {s for _, s in training_pairs} == set(range(num_side_values))
    assert list(pairs) == sorted(pairs)


def test_held_out_pairs_reach_the_limit():
    # 100 cells minus the 18 that the worst-case greedy end state keeps.
    for seed in range(20):
        pairs = held_out_pairs(10, 10, 0.82, seed=seed)
        assert len(pairs) == 82


def test_held_out_pairs_are_reproducible():
    first = held_out_pairs(10, 10, 0.1, seed=5)
    torch.manual_seed(123)
    assert held_out_pairs(10, 10, 0.1, seed=5) == first
    assert held_out_pairs(10, 10, 0.1, seed=6) != first


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ((10, 10, 0.0), r"`fraction` in \(0, 1\), got 0.0"),
        ((10, 10, 1.0), r"`fraction` in \(0, 1\)"),
        ((10, 10, True), "number in"),
        ((10, 10, 0.001), "requests 0 of the 100 pairs"),
        ((10, 10, 0.9), "requests 90 of the 100 pairs, but between 1 and 82"),
        ((1, 10, 0.5), "has no pair to hold out"),
        ((0, 10, 0.5), "`num_digits` >= 1, got 0"),
        ((10, 2.5, 0.5), "`num_side_values` to be an integer"),
    ],
)
def test_held_out_pairs_reject(arguments, match):
    with pytest.raises(ValueError, match=match):
        held_out_pairs(*arguments)


def test_held_out_pairs_split_keeps_values_in_training():
    labels = torch.arange(2000) % 10
    data = tensor_data(labels, RandomDigits(2000, seed=4).values)
    seen, _ = split_by_combinations(data, held_out_pairs(10, 10, 0.5, seed=2))
    digits, side = combination_columns(seen)
    assert set(digits.tolist()) == set(range(10))
    assert set(side.tolist()) == set(range(10))


@pytest.mark.parametrize(("num_digits", "num_side_values"), [(1, 1), (1, 5), (4, 1)])
def test_held_out_pairs_single_row_grid(num_digits, num_side_values):
    with pytest.raises(ValueError, match="has no pair to hold out"):
        held_out_pairs(num_digits, num_side_values, 0.5)
