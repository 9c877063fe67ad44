"""Hypothesis strategies and a ready-made check for property-testing your own pairing.

Import this module from tests only: it needs ``hypothesis``
(``pip install mnist-fusion[testing]``).

Example test a user can paste::

    from hypothesis import given
    from mnist_fusion.testing import check_pairing, fused_datasets

    @given(fused_datasets())
    def test_pairing_is_aligned(fused):
        check_pairing(fused)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mnist_fusion.data.pairing import FusionDataset

__all__ = ["check_pairing", "fused_datasets", "image_datasets", "side_inputs"]


@st.composite
def image_datasets(
    draw: st.DrawFn,
    *,
    min_size: int = 0,
    max_size: int = 16,
    channels: int = 1,
    image_size: int = 4,
    num_classes: int = 10,
) -> TensorDataset:
    """Draw a ``TensorDataset`` of small random float images and integer labels.

    Args:
        draw: Supplied by hypothesis; callers pass only the keyword arguments.
        min_size: Minimum number of items.
        max_size: Maximum number of items.
        channels: Image channels.
        image_size: Height and width of each image.
        num_classes: Labels are drawn from ``[0, num_classes)``.

    Returns:
        A strategy of ``TensorDataset(images [N, C, H, W], labels [N])``.

    Examples:
        >>> from hypothesis import given
        >>> @given(image_datasets(min_size=1, max_size=3))
        ... def test(images):
        ...     assert images[0][0].shape == (1, 4, 4)
        >>> test()
    """
    length = draw(st.integers(min_size, max_size))
    seed = draw(st.integers(0, 2**32 - 1))
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(length, channels, image_size, image_size, generator=generator)
    labels = torch.randint(0, num_classes, (length,), generator=generator)
    return TensorDataset(images, labels)


def side_inputs(length: int, *, low: int = 0, high: int = 9) -> st.SearchStrategy[torch.Tensor]:
    """Strategy for a 1-D int64 tensor of ``length`` side inputs in ``[low, high]``.

    Args:
        length: Number of side inputs.
        low: Smallest value.
        high: Largest value.

    Returns:
        A strategy of int64 tensors of shape ``[length]``.

    Examples:
        >>> from hypothesis import given
        >>> @given(side_inputs(3, high=1))
        ... def test(side):
        ...     assert side.shape == (3,) and side.max() <= 1
        >>> test()
    """
    values = st.lists(st.integers(low, high), min_size=length, max_size=length)
    return values.map(lambda items: torch.tensor(items, dtype=torch.int64))


@st.composite
def fused_datasets(
    draw: st.DrawFn, *, min_size: int = 0, max_size: int = 16, low: int = 0, high: int = 9
) -> FusionDataset:
    """Draw a :class:`FusionDataset` over :func:`image_datasets` and :func:`side_inputs`.

    Args:
        draw: Supplied by hypothesis; callers pass only the keyword arguments.
        min_size: Minimum number of items.
        max_size: Maximum number of items.
        low: Smallest side value.
        high: Largest side value.

    Returns:
        A strategy of fused datasets with the default ``digit`` and ``sum`` targets.

    Examples:
        >>> from hypothesis import given
        >>> @given(fused_datasets(min_size=1, max_size=4))
        ... def test(fused):
        ...     assert int(fused[0]["sum"]) == int(fused[0]["digit"] + fused[0]["side"])
        >>> test()
    """
    images = draw(image_datasets(min_size=min_size, max_size=max_size))
    side = draw(side_inputs(len(images), low=low, high=high))
    return FusionDataset(images, side)


def check_pairing(
    fused: FusionDataset,
    *,
    images: Dataset | None = None,
    side: Dataset | None = None,
    expected_targets: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    batch_size: int = 4,
) -> None:
    """Check that a fused dataset keeps each image with its side input and targets.

    Checks, for every index: the image and side equal ``images[i]`` and ``side[i]``
    (default: the datasets ``fused`` wraps, with its transforms); each target equals
    its target function of the label and the side; two reads are equal; and one epoch
    of a shuffled DataLoader yields the same multiset of (index, side, targets).

    Args:
        fused: The dataset under test.
        images: Independent source of ``(image, label)`` pairs to compare against.
        side: Independent source of side inputs to compare against.
        expected_targets: Optional mapping of target name to a callable
            ``(label, side) -> value`` written independently of the dataset's own.
        num_workers: DataLoader workers for the shuffled-epoch check.
        batch_size: Batch size of that DataLoader.

    Raises:
        AssertionError: Naming the index and the field that disagree.

    Examples:
        >>> fused = FusionDataset(
        ...     TensorDataset(torch.zeros(3, 1, 2, 2), torch.tensor([1, 2, 3])),
        ...     torch.tensor([4, 5, 6]))
        >>> check_pairing(fused, expected_targets={"sum": lambda label, side: label + side})
    """
    images = fused.images if images is None else images
    side = fused.side if side is None else side
    targets = expected_targets or {}

    for index in range(len(fused)):
        sample = fused[index]
        image, label = images[index]
        if fused.transform is not None:
            image = fused.transform(image)
        _expect(torch.equal(sample["image"], torch.as_tensor(image)), index, "image")
        _expect(int(sample["side"]) == int(side[index]), index, "side")
        for name, target_fn in targets.items():
            expected = torch.as_tensor(
                target_fn(torch.as_tensor(label), torch.as_tensor(side[index]))
            )
            _expect(torch.equal(sample[name], expected.to(sample[name].dtype)), index, name)
        _expect(_samples_equal(sample, fused[index]), index, "a second read")

    _check_shuffled_epoch(fused, num_workers=num_workers, batch_size=batch_size)


def _check_shuffled_epoch(fused: FusionDataset, *, num_workers: int, batch_size: int) -> None:
    if len(fused) == 0:
        return
    names = [name for name in fused[0] if name != "image"]
    expected = Counter(tuple(int(fused[i][name]) for name in names) for i in range(len(fused)))

    loader = DataLoader(fused, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    seen: Counter[tuple[int, ...]] = Counter()
    for batch in loader:
        columns = [batch[name].tolist() for name in names]
        seen.update(tuple(row) for row in zip(*columns, strict=True))
    if seen != expected:
        raise AssertionError(
            f"One shuffled epoch yielded a different multiset of {names} than the dataset: "
            f"missing {dict(expected - seen)}, extra {dict(seen - expected)}."
        )


def _samples_equal(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(
        torch.equal(torch.as_tensor(first[k]), torch.as_tensor(second[k])) for k in first
    )


def _expect(condition: bool, index: int, field: str) -> None:
    if not condition:
        raise AssertionError(f"Pairing broken at index {index}: {field} does not match.")
