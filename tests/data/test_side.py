import multiprocessing
import random
import re
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, get_worker_info

from mnist_fusion.data import RandomDigits, SideTensor

MASK64 = 2**64 - 1
INT64 = st.integers(-(2**63), 2**63 - 1)

# Upper 0.001 quantiles of the chi-square distribution.
CHI2_9_DOF_P001 = 27.877
CHI2_99_DOF_P001 = 148.23


def splitmix64(x: int) -> int:
    """SplitMix64 in plain Python integers, independent of the numpy code under test."""
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def reference_value(seed: int, index: int, low: int = 0, high: int = 9) -> int:
    key = splitmix64(seed & MASK64)
    return low + splitmix64(index ^ key) % (high - low + 1)


def chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


class LazyDigits(Dataset):
    """Builds its RandomDigits on first read, so each worker computes the values itself."""

    def __init__(self, length: int, seed: int) -> None:
        self.length = length
        self.seed = seed
        self.digits: RandomDigits | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.digits is None:
            self.digits = RandomDigits(self.length, seed=self.seed)
        worker = get_worker_info()
        return {
            "index": torch.tensor(index),
            "side": self.digits[index],
            "worker": torch.tensor(-1 if worker is None else worker.id),
        }


def values_in_child(length: int, seed: int) -> list[int]:
    return RandomDigits(length, seed=seed).values.tolist()


# The stream itself


@pytest.mark.parametrize("seed", [0, 1, 12345, -1, -(2**63), 2**63 - 1])
def test_stream_matches_splitmix64(seed):
    digits = RandomDigits(300, seed=seed)

    expected = [reference_value(seed, i) for i in range(300)]

    assert digits.values.tolist() == expected


def test_stream_matches_splitmix64_custom_range():
    digits = RandomDigits(200, seed=9, low=-3, high=4)

    expected = [reference_value(9, i, low=-3, high=4) for i in range(200)]

    assert digits.values.tolist() == expected


@given(seed=INT64, short=st.integers(0, 60), extra=st.integers(1, 200))
def test_value_independent_of_length(seed, short, extra):
    short_digits = RandomDigits(short, seed=seed)
    long_digits = RandomDigits(short + extra, seed=seed)

    assert torch.equal(short_digits.values, long_digits.values[:short])


@given(seed=INT64, indices=st.lists(st.integers(0, 2**40), max_size=20))
def test_values_at_matches_reference(seed, indices):
    digits = RandomDigits(0, seed=seed)

    values = digits.values_at(torch.tensor(indices, dtype=torch.int64))

    assert values.tolist() == [reference_value(seed, i) for i in indices]


def test_values_at_equals_cache():
    digits = RandomDigits(1000, seed=4)

    assert torch.equal(digits.values_at(torch.arange(1000)), digits.values)


def test_getitem_equals_values_at():
    digits = RandomDigits(50, seed=4)

    items = torch.stack([digits[i] for i in range(50)])

    assert torch.equal(items, digits.values_at(torch.arange(50)))


def test_construction_ignores_global_rng():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    first = RandomDigits(500, seed=21).values.clone()

    torch.manual_seed(987654)
    np.random.seed(987654)
    random.seed(987654)
    torch.rand(17)
    second = RandomDigits(500, seed=21).values

    assert torch.equal(first, second)


def test_reads_ignore_global_rng():
    digits = RandomDigits(100, seed=2)
    before = [int(digits[i]) for i in range(100)]

    torch.manual_seed(5)
    torch.randn(100)
    after = [int(digits[i]) for i in range(100)]

    assert before == after


def test_construction_leaves_global_rng():
    state = torch.get_rng_state()

    RandomDigits(1000, seed=3)

    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(("low", "high"), [(0, 9), (-3, 4), (5, 5), (100, 1000)])
def test_values_within_bounds(low, high):
    values = RandomDigits(2000, seed=8, low=low, high=high).values

    assert int(values.min()) >= low
    assert int(values.max()) <= high


def test_every_digit_occurs():
    values = RandomDigits(1000, seed=8).values

    assert set(values.tolist()) == set(range(10))


def test_item_is_int64_scalar():
    item = RandomDigits(5, seed=0)[2]

    assert item.dtype == torch.int64
    assert item.ndim == 0


def test_values_are_int64():
    assert RandomDigits(5, seed=0).values.dtype == torch.int64


def test_chi_square_uniform():
    values = RandomDigits(100_000, seed=2024).values.numpy()

    counts = np.bincount(values, minlength=10)

    assert chi_square(counts) < CHI2_9_DOF_P001


def test_chi_square_neighbour_pairs():
    values = RandomDigits(200_001, seed=77).values.numpy()

    # Pairs (i, i + 1) with i even differ in one index bit, so they test the mixing.
    pairs = values[:-1:2] * 10 + values[1::2]
    counts = np.bincount(pairs, minlength=100)

    assert chi_square(counts) < CHI2_99_DOF_P001


def test_chi_square_neighbour_seeds():
    first = RandomDigits(100_000, seed=500).values.numpy()
    second = RandomDigits(100_000, seed=501).values.numpy()

    counts = np.bincount(first * 10 + second, minlength=100)

    assert chi_square(counts) < CHI2_99_DOF_P001


def test_seeds_give_distinct_streams():
    streams = {tuple(RandomDigits(64, seed=seed).values.tolist()) for seed in range(200)}

    assert len(streams) == 200


@given(first=INT64, second=INT64)
def test_distinct_seeds_differ(first, second):
    if first == second:
        return
    a = RandomDigits(64, seed=first).values
    b = RandomDigits(64, seed=second).values

    assert not torch.equal(a, b)


def test_numpy_integer_seed_accepted():
    assert torch.equal(RandomDigits(20, seed=np.int64(6)).values, RandomDigits(20, seed=6).values)


def test_zero_length():
    digits = RandomDigits(0, seed=1)

    assert len(digits) == 0


def test_repr():
    assert repr(RandomDigits(5, seed=3)) == "RandomDigits(length=5, seed=3, low=0, high=9)"


# Indexing


def test_negative_index():
    digits = RandomDigits(10, seed=5)

    assert torch.equal(digits[-1], digits[9])
    assert torch.equal(digits[-10], digits[0])


@pytest.mark.parametrize("index", [np.int64(3), torch.tensor(3)])
def test_integer_like_index(index):
    digits = RandomDigits(10, seed=5)

    assert torch.equal(digits[index], digits[3])


@pytest.mark.parametrize("index", [10, 11, 10**6])
def test_index_past_end(index):
    with pytest.raises(IndexError, match=rf"Index {index} is out of range.*valid .* -10 to 9"):
        RandomDigits(10, seed=5)[index]


@pytest.mark.parametrize("index", [-11, -100])
def test_negative_index_past_start(index):
    with pytest.raises(IndexError, match=rf"Index {index} is out of range.*-10 to 9"):
        RandomDigits(10, seed=5)[index]


def test_index_into_empty():
    with pytest.raises(IndexError, match=r"Index 0 .* length 0; it is empty"):
        RandomDigits(0, seed=5)[0]


@pytest.mark.parametrize("index", [1.5, True, slice(0, 2), "1", torch.tensor(1.0)])
def test_non_integer_index(index):
    with pytest.raises(TypeError, match=rf"integer index, but got {re.escape(repr(index))}"):
        RandomDigits(10, seed=5)[index]


def test_written_item_leaves_dataset():
    digits = RandomDigits(10, seed=5)
    expected = int(digits[0])

    digits[0].add_(100)

    assert int(digits[0]) == expected


def test_two_reads_equal():
    digits = RandomDigits(10, seed=5)

    assert torch.equal(digits[7], digits[7])


# Bad arguments


def test_low_above_high():
    with pytest.raises(ValueError, match=r"`low` <= `high`, but got low=5, high=4"):
        RandomDigits(10, seed=0, low=5, high=4)


@pytest.mark.parametrize("seed", [1.5, "1", True, None, 2.0])
def test_non_integer_seed(seed):
    pattern = rf"`seed` to be an integer, but got {re.escape(repr(seed))}"
    with pytest.raises(ValueError, match=pattern):
        RandomDigits(10, seed=seed)


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 2**64, 2**64 - 1])
def test_seed_outside_64_bits(seed):
    # Each equals a valid seed modulo 2**64, so it would repeat that seed's stream.
    pattern = rf"`seed` in \[-9223372036854775808, 9223372036854775807\], but got {seed}"
    with pytest.raises(ValueError, match=pattern):
        RandomDigits(10, seed=seed)


def test_negative_length():
    with pytest.raises(ValueError, match=r"`length` >= 0, but got -1"):
        RandomDigits(-1, seed=0)


@pytest.mark.parametrize("name", ["length", "low", "high"])
def test_non_integer_argument(name):
    arguments = {"length": 10, "low": 0, "high": 9, name: 2.5}
    length = arguments.pop("length")

    with pytest.raises(ValueError, match=rf"`{name}` to be an integer, but got 2\.5"):
        RandomDigits(length, seed=0, **arguments)


def test_values_at_negative_index():
    with pytest.raises(ValueError, match=r"indices >= 0, but got -2"):
        RandomDigits(10, seed=0).values_at(torch.tensor([3, -2]))


def test_values_at_float_indices():
    with pytest.raises(TypeError, match=r"integer indices, but got dtype torch.float32"):
        RandomDigits(10, seed=0).values_at(torch.tensor([1.0]))


# Processes


@pytest.mark.parametrize("persistent", [False, True])
def test_workers_agree_with_main(persistent):
    length, seed = 300, 13
    expected = RandomDigits(length, seed=seed).values
    loader = DataLoader(
        LazyDigits(length, seed),
        batch_size=16,
        shuffle=True,
        num_workers=2,
        persistent_workers=persistent,
        generator=torch.Generator().manual_seed(0),
    )

    for _ in range(2):
        batches = list(loader)
        index = torch.cat([batch["index"] for batch in batches])
        side = torch.cat([batch["side"] for batch in batches])
        workers = torch.cat([batch["worker"] for batch in batches])

        assert set(workers.tolist()) == {0, 1}
        assert sorted(index.tolist()) == list(range(length))
        assert torch.equal(side, expected[index])


def test_shuffled_reads_keep_values():
    digits = RandomDigits(200, seed=1)
    order = torch.randperm(200, generator=torch.Generator().manual_seed(3))

    shuffled = Counter((int(i), int(digits[int(i)])) for i in order)

    assert shuffled == Counter((i, int(v)) for i, v in enumerate(digits.values))


def test_spawned_process_agrees():
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        child = pool.apply(values_in_child, (500, 31))

    assert child == RandomDigits(500, seed=31).values.tolist()


# SideTensor


def test_side_tensor_from_list():
    side = SideTensor([3, 1, 4])

    assert side.values.tolist() == [3, 1, 4]
    assert side.values.dtype == torch.int64


def test_side_tensor_item_int64_scalar():
    item = SideTensor(torch.tensor([3, 1, 4], dtype=torch.int32))[1]

    assert item.dtype == torch.int64
    assert item.ndim == 0


def test_side_tensor_negative_index():
    side = SideTensor([3, 1, 4])

    assert int(side[-1]) == 4


def test_side_tensor_index_past_end():
    with pytest.raises(IndexError, match=r"Index 3 is out of range.*-3 to 2"):
        SideTensor([3, 1, 4])[3]


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        (torch.tensor([1.0, 2.0]), "torch.float32"),
        ([1.5, 2.0], "torch.float32"),
        (np.array([1.0, 2.0]), "torch.float64"),
        (torch.tensor([True, False]), "torch.bool"),
        (torch.tensor([1 + 1j]), "torch.complex64"),
    ],
)
def test_side_tensor_rejects_non_integers(values, dtype):
    with pytest.raises(ValueError, match=rf"side inputs, but got dtype {dtype}"):
        SideTensor(values)


def test_side_tensor_rejects_2d():
    with pytest.raises(ValueError, match=r"1-D tensor of side inputs, but got shape \(2, 2\)"):
        SideTensor(torch.zeros(2, 2, dtype=torch.int64))


def test_side_tensor_written_item_leaves_values():
    side = SideTensor([3, 1, 4])

    side[0].add_(10)

    assert int(side[0]) == 3


def test_side_tensor_repr():
    assert repr(SideTensor([3, 1, 4])) == "SideTensor(length=3)"


def test_side_tensor_empty_list():
    side = SideTensor([])

    assert len(side) == 0
    assert side.values.dtype == torch.int64
