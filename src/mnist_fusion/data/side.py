"""Side inputs: map-style datasets whose value at an index never depends on access order."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from numbers import Integral
from typing import cast

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["RandomDigits", "RandomUniform", "SideTensor", "as_side_dataset"]

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_SEED_MIN = -(2**63)
_SEED_MAX = 2**63 - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Apply the SplitMix64 finaliser elementwise to a uint64 array (wraps modulo 2**64)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_indices(seed: int, indices: np.ndarray) -> np.ndarray:
    """Map ``(seed, index)`` pairs to well-mixed uint64 values.

    The seed is mixed first, so seeds that differ by one give unrelated streams. It is
    reduced modulo 2**64, which is one-to-one on the signed 64-bit range that
    :class:`RandomDigits` admits.
    """
    key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    with np.errstate(over="ignore"):
        return _splitmix64(indices.astype(np.uint64) ^ key)


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"Expected `{name}` to be an integer, but got {value!r}.")
    return int(value)


def _check_seed(seed: object, *, low: int = _SEED_MIN, high: int = _SEED_MAX) -> int:
    seed = _check_int("seed", seed)
    if not low <= seed <= high:
        # The hash keeps 64 bits of the seed, so a wider range would map two seeds to one
        # stream.
        raise ValueError(f"Expected `seed` in [{low}, {high}], but got {seed!r}.")
    return seed


class _SeededValues(Dataset[torch.Tensor]):
    """Values computed once from ``(seed, index)`` and read from the ``values`` tensor."""

    values: torch.Tensor
    seed: int
    low: float
    high: float

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> torch.Tensor:
        # A copy, not a view of the cache: writing to it must not change later reads.
        return self.values[_check_index(index, len(self))].clone()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(length={len(self)}, seed={self.seed}, "
            f"low={self.low}, high={self.high})"
        )


class RandomDigits(_SeededValues):
    """Uniform random integers in ``[low, high]``, one per index.

    The value at index ``i`` is a pure function of ``(seed, i)``: a SplitMix64 hash of
    the pair, reduced modulo ``high - low + 1``. Shuffling, DataLoader workers, epochs
    and the global RNG state cannot change it, and two instances with the same seed agree
    on every index they share, whatever their lengths. Distinct seeds give distinct
    streams. The modulo bias is below 1e-17 for ranges this small.

    Args:
        length: Number of values.
        seed: Integer that selects the stream, a signed 64-bit value.
        low: Smallest value (inclusive).
        high: Largest value (inclusive).

    Raises:
        ValueError: If ``length`` is negative, ``seed`` is not an integer in
            ``[-2**63, 2**63 - 1]``, or ``low > high``.

    Examples:
        >>> side = RandomDigits(5, seed=0)
        >>> len(side), side[0].dtype
        (5, torch.int64)
        >>> bool(torch.equal(side[3], RandomDigits(100, seed=0)[3]))
        True
    """

    def __init__(self, length: int, *, seed: int, low: int = 0, high: int = 9) -> None:
        length = _check_int("length", length)
        seed = _check_seed(seed)
        low = _check_int("low", low)
        high = _check_int("high", high)
        if length < 0:
            raise ValueError(f"Expected `length` >= 0, but got {length!r}.")
        if low > high:
            raise ValueError(f"Expected `low` <= `high`, but got low={low!r}, high={high!r}.")

        self.seed = seed
        self.low = low
        self.high = high

        # Computed once for speed; `values_at` is the definition and gives the same numbers.
        self.values = self.values_at(torch.arange(length))

    def values_at(self, indices: torch.Tensor) -> torch.Tensor:
        """Compute the values at ``indices`` from the hash, without the cache.

        Indices may exceed the length: the stream is defined for every index >= 0.

        Raises:
            TypeError: If ``indices`` are not integers.
            ValueError: If an index is negative.
        """
        indices = torch.as_tensor(indices)
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"Expected integer indices, but got dtype {indices.dtype}.")
        if indices.numel() and int(indices.min()) < 0:
            # Negative indices count from the end, and the stream has no end.
            raise ValueError(
                f"Expected indices >= 0, but got {int(indices.min())}; use "
                "`side[i]` for indices counted from the end."
            )
        hashed = hash_indices(self.seed, indices.cpu().numpy().astype(np.int64))
        span = np.uint64(self.high - self.low + 1)
        return torch.from_numpy((hashed % span).astype(np.int64)) + self.low


class RandomUniform(_SeededValues):
    """Uniform random floats in ``[low, high)``, one per index: a continuous side input.

    Like :class:`RandomDigits`, the value at index ``i`` is a pure function of
    ``(seed, i)``: the top 24 bits of the SplitMix64 hash of the pair, as a float32 in
    ``[0, 1)`` with every step of ``2**-24`` equally likely, then scaled to the range.
    Order of access, workers and the global RNG cannot change it.

    Args:
        length: Number of values.
        seed: Integer that selects the stream, a signed 64-bit value.
        low: Smallest value (inclusive).
        high: Bound above every value (exclusive).

    Raises:
        ValueError: If ``length`` is negative, ``seed`` is not a 64-bit integer, or the
            range is empty or not finite.

    Examples:
        >>> side = RandomUniform(4, seed=0)
        >>> side[0].dtype, bool(((side.values >= 0) & (side.values < 1)).all())
        (torch.float32, True)
    """

    def __init__(self, length: int, *, seed: int, low: float = 0.0, high: float = 1.0) -> None:
        length = _check_int("length", length)
        seed = _check_seed(seed)
        if length < 0:
            raise ValueError(f"Expected `length` >= 0, but got {length!r}.")
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(f"Expected finite `low` < `high`, but got low={low!r}, high={high!r}.")

        self.seed = seed
        self.low = float(low)
        self.high = float(high)
        hashed = hash_indices(seed, np.arange(length, dtype=np.int64))
        unit = (hashed >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)
        values = torch.from_numpy(unit) * (self.high - self.low) + self.low
        # Rounding of the scaled value can reach `high` for a narrow range; keep it below.
        below_high = torch.nextafter(torch.tensor(self.high), torch.tensor(-np.inf))
        self.values = values.clamp(max=float(below_high))


class SideTensor(Dataset[torch.Tensor]):
    """Side inputs given as a tensor or a sequence, one value per index.

    Integer values are stored as int64. Floating-point values, a continuous side input,
    are admitted only with ``continuous=True`` and stored as float32, so that a float
    tensor of labels is never taken for a side input by mistake.

    Args:
        values: 1-D tensor or sequence of numbers.
        continuous: Admit floating-point values.

    Raises:
        ValueError: If the values are floating point without ``continuous=True``,
            complex or boolean, or not one-dimensional.

    Examples:
        >>> SideTensor([3, 1, 4])[2]
        tensor(4)
    """

    def __init__(
        self, values: torch.Tensor | Sequence[int] | Sequence[float], *, continuous: bool = False
    ) -> None:
        tensor = torch.as_tensor(values)
        if not isinstance(values, torch.Tensor | np.ndarray) and tensor.numel() == 0:
            # An empty sequence has no dtype of its own, and torch would make it float.
            tensor = tensor.to(torch.float32 if continuous else torch.int64)
        floating = tensor.is_floating_point()
        if (floating and not continuous) or tensor.is_complex() or tensor.dtype == torch.bool:
            raise ValueError(
                f"Expected integer side inputs, but got dtype {tensor.dtype}; "
                "cast them to an integer dtype (`.long()` for a tensor) if they hold whole "
                "numbers, or pass continuous=True for real values."
            )
        if tensor.ndim != 1:
            raise ValueError(
                f"Expected a 1-D tensor of side inputs, but got shape {tuple(tensor.shape)}."
            )
        self.values = tensor.to(torch.float32 if floating else torch.int64)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.values[_check_index(index, len(self))].clone()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(length={len(self)})"


def as_side_dataset(
    side: Dataset | torch.Tensor | Sequence[int], *, continuous: bool = False
) -> Dataset:
    """Wrap a tensor, array or sequence in :class:`SideTensor`; pass datasets through."""
    if isinstance(side, torch.Tensor | np.ndarray | list | tuple):
        return SideTensor(side, continuous=continuous)
    # Any other object with __len__ and __getitem__ (a range, say) is read as a dataset.
    return cast(Dataset, side)


def _check_index(index: object, length: int) -> int:
    """Normalise a possibly negative index and raise IndexError outside ``[-length, length)``."""
    is_bool = isinstance(index, bool | np.bool_) or (
        isinstance(index, torch.Tensor) and index.dtype == torch.bool
    )
    try:
        if is_bool:
            # operator.index accepts bools as 0 and 1, which would read a real item.
            raise TypeError
        # Accepts ints, numpy integers and one-element integer tensors.
        position = operator.index(index)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"Expected an integer index, but got {index!r}; read items one at a time "
            "(slices and masks are not supported)."
        ) from None

    if not -length <= position < length:
        valid = f"valid indices are {-length} to {length - 1}" if length else "it is empty"
        raise IndexError(
            f"Index {position} is out of range for a dataset of length {length}; {valid}."
        )
    return position % length
