"""Held-out combinations: keep chosen (digit, side value) pairs out of the training data.

A model that learns the sum as a lookup table of the (digit, side value) pairs it saw
fails on pairs it never saw, while a model that adds generalises to them. Splitting a
dataset by its pairs, and scoring the held-out pairs apart from the seen ones, measures
which of the two a model learned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral

import torch
from torch.utils.data import Dataset, Subset

from mnist_fusion.data.batched import TensorFusionDataset
from mnist_fusion.data.pairing import FusionDataset
from mnist_fusion.data.side import _check_int

__all__ = ["TensorSubset", "combination_columns", "held_out_pairs", "split_by_combinations"]

Pair = tuple[int, int]

_DEFAULT_SIDE_NAME = "side"


class TensorSubset(Subset):
    """A :class:`~torch.utils.data.Subset` of a :class:`TensorFusionDataset` that batches.

    ``batch(indices)`` builds the batch of the subset's items at ``indices`` with one
    call of the base dataset's ``batch``, so a :class:`BatchLoader` iterates over the
    subset as fast as over the base. The ``index`` field of a batch contains the base
    dataset's indices, which identify the samples.

    Args:
        dataset: The base dataset.
        indices: Indices of the subset's items in ``dataset``.

    Examples:
        >>> images = torch.zeros(4, 28, 28, dtype=torch.uint8)
        >>> data = TensorFusionDataset(images, torch.arange(4), torch.ones(4, dtype=torch.int64))
        >>> subset = TensorSubset(data, [3, 1])
        >>> subset.batch(torch.tensor([0, 1]))["index"].tolist()
        [3, 1]
    """

    dataset: TensorFusionDataset

    def __init__(self, dataset: TensorFusionDataset, indices: Sequence[int]) -> None:
        super().__init__(dataset, indices)
        self._index_tensor = torch.as_tensor(list(indices), dtype=torch.int64)

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Build the batch of the subset's items at ``indices`` (positions in the subset).

        Raises:
            IndexError: If a position is outside ``[-len(self), len(self))``.
        """
        length = len(self)
        indices = torch.as_tensor(indices, dtype=torch.int64)
        if indices.numel() and (int(indices.min()) < -length or int(indices.max()) >= length):
            bad = int(indices.min()) if int(indices.min()) < -length else int(indices.max())
            raise IndexError(
                f"Index {bad} is out of range for a subset of length {length}; valid "
                f"indices are {-length} to {length - 1}."
            )
        return self.dataset.batch(self._index_tensor[indices])


def split_by_combinations(
    dataset: Dataset,
    held_out: Iterable[Pair],
    *,
    side_name: str | None = None,
    num_digits: int | None = None,
    num_side_values: int | None = None,
) -> tuple[Subset, Subset]:
    """Split ``dataset`` into the samples whose (digit, side value) pair is held out and the rest.

    The labels and side values are read without loading images wherever the dataset
    allows it (see :func:`combination_columns`). The split is deterministic: both
    subsets list their indices in increasing order.

    Args:
        dataset: A :class:`FusionDataset`, a :class:`TensorFusionDataset`, a ``Subset``
            of either, or any dataset whose items are dicts with ``digit`` and ``side``.
        held_out: The (digit, side value) pairs to keep out of ``seen``, non-negative
            integers. A pair that no sample has is allowed and selects nothing.
        side_name: The side input that forms the pairs, for datasets with several named
            side inputs; None selects the only one.
        num_digits: Number of digit classes; when given, every held-out digit must be
            below it, which catches pairs written as (side value, digit).
        num_side_values: Number of side values; when given, every held-out side value
            must be below it.

    Returns:
        ``(seen, unseen)``: subsets with the samples whose pair is not in ``held_out``
        and those whose pair is. For a :class:`TensorFusionDataset` both are
        :class:`TensorSubset`, which :class:`BatchLoader` iterates over.

    Raises:
        ValueError: If ``held_out`` is empty or contains a pair that is not two
            non-negative integers or lies outside ``num_digits`` or ``num_side_values``,
            or if ``side_name`` is unknown, needed but missing, or names a continuous
            input.
        TypeError: If a generic dataset's items are not dicts with ``digit`` and ``side``.

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> images = TensorDataset(torch.zeros(6, 1, 28, 28), torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> fused = FusionDataset(images, torch.tensor([0, 1, 0, 1, 0, 1]))
        >>> seen, unseen = split_by_combinations(fused, {(1, 1), (2, 0)}, num_digits=10)
        >>> list(seen.indices), list(unseen.indices)
        ([0, 1, 2, 5], [3, 4])
        >>> split_by_combinations(fused, {(12, 1)}, num_digits=10)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: The held-out pair (12, 1) has digit 12, but digits are 0 to 9; ...
    """
    pairs = _check_held_out(held_out, num_digits, num_side_values)
    digits, side = combination_columns(dataset, side_name=side_name)

    unseen_mask = torch.zeros(len(digits), dtype=torch.bool)
    for digit, value in pairs:
        unseen_mask |= (digits == digit) & (side == value)
    seen_indices = (~unseen_mask).nonzero().flatten().tolist()
    unseen_indices = unseen_mask.nonzero().flatten().tolist()
    return _subset(dataset, seen_indices), _subset(dataset, unseen_indices)


def combination_columns(
    dataset: Dataset, *, side_name: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the digit labels and side values of every sample, as int64 tensors ``[N]``.

    The columns are read without loading images where the dataset allows it. A
    :class:`TensorFusionDataset` gives its tensors. A :class:`FusionDataset` gives the
    ``targets`` attribute of its image dataset (torchvision's MNIST has one) unless a
    ``target_transform`` is set, and the ``values`` of its side dataset
    (:class:`RandomDigits`, :class:`SideTensor`). A ``Subset`` is read from its base.
    Anything else is read item by item, once.

    Args:
        dataset: The dataset to read.
        side_name: The side input to read, for datasets with several named side inputs;
            None selects the only one.

    Raises:
        ValueError: If ``side_name`` is unknown, needed but missing, or names a
            continuous input.
        TypeError: If a generic dataset's items are not dicts with ``digit`` and ``side``.

    Examples:
        >>> images = torch.zeros(3, 28, 28, dtype=torch.uint8)
        >>> data = TensorFusionDataset(images, torch.tensor([7, 1, 2]), torch.tensor([4, 0, 9]))
        >>> [column.tolist() for column in combination_columns(data)]
        [[7, 1, 2], [4, 0, 9]]
    """
    if isinstance(dataset, Subset):
        digits, side = combination_columns(dataset.dataset, side_name=side_name)
        positions = torch.as_tensor(list(dataset.indices), dtype=torch.int64)
        return digits[positions], side[positions]
    if isinstance(dataset, TensorFusionDataset):
        return dataset.labels.to(torch.int64), _select_side(dataset.side, side_name)
    if isinstance(dataset, FusionDataset):
        return _fusion_columns(dataset, side_name)
    return _read_items(dataset, side_name)


def held_out_pairs(
    num_digits: int = 10, num_side_values: int = 10, fraction: float = 0.1, *, seed: int = 0
) -> tuple[Pair, ...]:
    """Choose (digit, side value) pairs to hold out, so that no digit or side value is lost.

    Cells of the ``num_digits`` x ``num_side_values`` grid are visited in an order drawn
    from a generator seeded with ``seed``. A cell is held out when its digit and its side
    value each keep at least one other cell in training, until
    ``round(fraction * num_digits * num_side_values)`` cells are held out. So every digit
    and every side value still occurs in the training pairs. The pairs depend on the
    arguments only, not on the global RNG.

    Args:
        num_digits: Number of digit classes; digits are ``0 .. num_digits - 1``.
        num_side_values: Number of side values; they are ``0 .. num_side_values - 1``.
        fraction: Fraction of the grid's pairs to hold out, in ``(0, 1)``.
        seed: Seed of the order in which cells are tried.

    Returns:
        The held-out pairs ``(digit, side value)``, sorted.

    Raises:
        ValueError: If a size is below 1, ``fraction`` is outside ``(0, 1)``, or the
            number of pairs it requests is 0 or more than the grid can give up while
            keeping every digit and side value.

    Examples:
        >>> pairs = held_out_pairs(10, 10, 0.1, seed=0)
        >>> len(pairs), len({digit for digit, _ in pairs}) <= 10
        (10, True)
        >>> pairs == held_out_pairs(10, 10, 0.1, seed=0)
        True
    """
    num_digits = _check_size("num_digits", num_digits)
    num_side_values = _check_size("num_side_values", num_side_values)
    count = _held_out_count(num_digits, num_side_values, fraction)

    generator = torch.Generator().manual_seed(_check_int("seed", seed))
    order = torch.randperm(num_digits * num_side_values, generator=generator).tolist()
    digit_left = [num_side_values] * num_digits
    side_left = [num_digits] * num_side_values
    chosen: list[Pair] = []
    for cell in order:
        digit, value = divmod(cell, num_side_values)
        if digit_left[digit] > 1 and side_left[value] > 1:
            digit_left[digit] -= 1
            side_left[value] -= 1
            chosen.append((digit, value))
            if len(chosen) == count:
                break
    # The count is capped so that the greedy pass always reaches it (see _held_out_count).
    assert len(chosen) == count
    return tuple(sorted(chosen))


def _held_out_count(num_digits: int, num_side_values: int, fraction: float) -> int:
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise ValueError(f"Expected `fraction` to be a number in (0, 1), got {fraction!r}.")
    if not 0 < fraction < 1:
        raise ValueError(f"Expected `fraction` in (0, 1), got {fraction!r}.")
    cells = num_digits * num_side_values
    count = round(fraction * cells)

    # The greedy pass stops early only when every kept cell is the last of its row or of
    # its column. Such a set is a union of at least two stars, so it covers the
    # num_digits + num_side_values rows and columns with at most their number minus 2
    # cells. A grid with a single row or column can give up no cell at all.
    if min(num_digits, num_side_values) == 1:
        limit = 0
    else:
        limit = cells - (num_digits + num_side_values - 2)
    if limit == 0:
        raise ValueError(
            f"A grid of {num_digits} digit(s) by {num_side_values} side value(s) has no pair "
            "to hold out while every digit and side value keeps a pair in training; use at "
            "least two digits and two side values."
        )
    if count < 1 or count > limit:
        raise ValueError(
            f"`fraction`={fraction!r} requests {count} of the {cells} pairs, but between 1 "
            f"and {limit} can be held out while every digit and side value keeps a pair in "
            f"training; choose a fraction between {1 / cells:.3g} and {limit / cells:.3g}."
        )
    return count


def _check_size(name: str, value: object) -> int:
    size = _check_int(name, value)
    if size < 1:
        raise ValueError(f"Expected `{name}` >= 1, got {size!r}.")
    return size


def _check_held_out(
    held_out: Iterable[Pair], num_digits: int | None, num_side_values: int | None
) -> list[Pair]:
    if isinstance(held_out, str | bytes) or not isinstance(held_out, Iterable):
        raise ValueError(
            f"Expected `held_out` to be a collection of (digit, side value) pairs, got "
            f"{held_out!r}."
        )
    pairs = [_check_pair(pair) for pair in held_out]
    if not pairs:
        raise ValueError(
            "Expected at least one (digit, side value) pair in `held_out`, got none; "
            "to train on every pair, use the dataset itself."
        )

    limits = (
        ("digit", None if num_digits is None else _check_size("num_digits", num_digits)),
        (
            "side value",
            None if num_side_values is None else _check_size("num_side_values", num_side_values),
        ),
    )
    for pair in pairs:
        for (label, limit), value in zip(limits, pair, strict=True):
            if value < 0 or (limit is not None and value >= limit):
                valid = f"0 to {limit - 1}" if limit is not None else "0 or more"
                raise ValueError(
                    f"The held-out pair {pair} has {label} {value}, but {label}s are "
                    f"{valid}; pairs are (digit, side value). Remove the pair or fix it."
                )
    return pairs


def _check_pair(pair: object) -> Pair:
    if isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2:
        digit, value = pair
        if _is_integer(digit) and _is_integer(value):
            return int(digit), int(value)
    raise ValueError(
        f"Expected each held-out pair to be two integers (digit, side value), got {pair!r}."
    )


def _is_integer(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not (value.is_floating_point() or value.dtype == torch.bool)
    return isinstance(value, Integral) and not isinstance(value, bool)


def _fusion_columns(
    dataset: FusionDataset, side_name: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(dataset.side, Mapping):
        name = _resolve_name(list(dataset.side), side_name)
        side = _dataset_values(dataset.side[name], len(dataset))
    else:
        name = _resolve_name([_DEFAULT_SIDE_NAME], side_name)
        side = _dataset_values(dataset.side, len(dataset))
    _check_integer_column(f"side input {name!r}", side)

    labels = None if dataset.target_transform is not None else _image_labels(dataset.images)
    if labels is None or labels.shape != (len(dataset),):
        labels = torch.tensor([int(dataset[index]["digit"]) for index in range(len(dataset))])
    return labels.to(torch.int64), side.to(torch.int64)


def _image_labels(images: Dataset) -> torch.Tensor | None:
    """Return the labels of an image dataset from its ``targets``, or None if it has none."""
    if isinstance(images, Subset):
        labels = _image_labels(images.dataset)
        if labels is None:
            return None
        return labels[torch.as_tensor(list(images.indices), dtype=torch.int64)]
    targets = getattr(images, "targets", None)
    if targets is None:
        return None
    labels = torch.as_tensor(targets)
    if labels.ndim != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        return None
    return labels


def _dataset_values(side: Dataset, length: int) -> torch.Tensor:
    values = getattr(side, "values", None)
    if isinstance(values, torch.Tensor) and values.shape == (length,):
        return values
    if length == 0:
        return torch.zeros(0, dtype=torch.int64)
    return torch.stack([torch.as_tensor(side[index]) for index in range(length)])


def _select_side(
    side: torch.Tensor | Mapping[str, torch.Tensor], side_name: str | None
) -> torch.Tensor:
    if isinstance(side, Mapping):
        name = _resolve_name(list(side), side_name)
        column = side[name]
    else:
        name = _resolve_name([_DEFAULT_SIDE_NAME], side_name)
        column = side
    _check_integer_column(f"side input {name!r}", column)
    return column.to(torch.int64)


def _read_items(dataset: Dataset, side_name: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    digits, values = [], []
    for index in range(len(dataset)):  # type: ignore[arg-type]
        sample = dataset[index]
        if not isinstance(sample, Mapping) or "digit" not in sample or "side" not in sample:
            found = sorted(sample) if isinstance(sample, Mapping) else type(sample).__name__
            raise TypeError(
                f"Expected dict samples with `digit` and `side` at index {index}, got "
                f"{found}; wrap the data in FusionDataset."
            )
        side = sample["side"]
        if isinstance(side, Mapping):
            side = side[_resolve_name(list(side), side_name)]
        else:
            _resolve_name([_DEFAULT_SIDE_NAME], side_name)
        digits.append(torch.as_tensor(sample["digit"]))
        values.append(torch.as_tensor(side))

    if not digits:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    side_column = torch.stack(values)
    _check_integer_column(f"side input {side_name or _DEFAULT_SIDE_NAME!r}", side_column)
    return torch.stack(digits).to(torch.int64), side_column.to(torch.int64)


def _resolve_name(names: list[str], side_name: str | None) -> str:
    if side_name is None:
        if len(names) != 1:
            raise ValueError(
                f"The dataset has the side inputs {names}; choose the one that forms the "
                "pairs with `side_name=`."
            )
        return names[0]
    if side_name not in names:
        raise ValueError(
            f"Unknown side input {side_name!r}; the dataset has {names}. Pass one of them "
            "as `side_name`."
        )
    return side_name


def _check_integer_column(label: str, column: torch.Tensor) -> None:
    if column.is_floating_point() or column.is_complex() or column.dtype == torch.bool:
        raise ValueError(
            f"Expected integer values for {label}, but got dtype {column.dtype}; pairs are "
            "formed with a categorical side input, so choose one with `side_name=`."
        )
    if column.ndim != 1:
        raise ValueError(f"Expected one value per sample for {label}, got {list(column.shape)}.")


def _subset(dataset: Dataset, indices: list[int]) -> Subset:
    if isinstance(dataset, TensorFusionDataset):
        return TensorSubset(dataset, indices)
    return Subset(dataset, indices)
