"""Hypothesis strategies and ready-made checks for property-testing your own pairing and models.

Import this module from tests only: it needs ``hypothesis``
(``pip install mnist-fusion[testing]``).

Example test a user can paste::

    from hypothesis import given
    from mnist_fusion.testing import check_pairing, fused_datasets

    @given(fused_datasets())
    def test_pairing_is_aligned(fused):
        check_pairing(fused)

The shortcut checks, :func:`check_side_sensitivity` and :func:`check_held_out_accuracy`,
test a trained model: whether its predicted sum follows its side input, and whether it
keeps its sum accuracy on (digit, side value) pairs that it never saw in training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mnist_fusion.data.pairing import FusionDataset
from mnist_fusion.metrics.shortcuts import evaluate_side_sensitivity
from mnist_fusion.models.fusion import FusionModel
from mnist_fusion.training import evaluate

__all__ = [
    "check_held_out_accuracy",
    "check_pairing",
    "check_side_sensitivity",
    "fused_datasets",
    "held_out_sets",
    "image_datasets",
    "side_inputs",
]


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
    draw: st.DrawFn,
    *,
    min_size: int = 0,
    max_size: int = 16,
    low: int = 0,
    high: int = 9,
    names: Sequence[str] | None = None,
) -> FusionDataset:
    """Draw a :class:`FusionDataset` over :func:`image_datasets` and :func:`side_inputs`.

    Args:
        draw: Supplied by hypothesis; callers pass only the keyword arguments.
        min_size: Minimum number of items.
        max_size: Maximum number of items.
        low: Smallest side value.
        high: Largest side value.
        names: Names of several side inputs, each drawn independently; None gives one
            unnamed side input.

    Returns:
        A strategy of fused datasets with the default ``digit`` and ``sum`` targets.

    Examples:
        >>> from hypothesis import given
        >>> @given(fused_datasets(min_size=1, max_size=4))
        ... def test(fused):
        ...     assert int(fused[0]["sum"]) == int(fused[0]["digit"] + fused[0]["side"])
        >>> test()
        >>> @given(fused_datasets(min_size=1, max_size=4, names=["a", "b"]))
        ... def test_named(fused):
        ...     side = fused[0]["side"]
        ...     assert int(fused[0]["sum"]) == int(fused[0]["digit"] + side["a"] + side["b"])
        >>> test_named()
    """
    if isinstance(names, str) or (names is not None and len(set(names)) != len(names)):
        raise ValueError(f"Expected `names` to be a sequence of distinct names, got {names!r}.")
    images = draw(image_datasets(min_size=min_size, max_size=max_size))
    if names is None:
        return FusionDataset(images, draw(side_inputs(len(images), low=low, high=high)))
    side = {name: draw(side_inputs(len(images), low=low, high=high)) for name in names}
    return FusionDataset(images, side)


def check_pairing(
    fused: FusionDataset,
    *,
    images: Dataset | None = None,
    side: Dataset | Mapping[str, Dataset] | None = None,
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
        side: Independent source of side inputs to compare against: a dataset, or a
            mapping of name to dataset for named side inputs.
        expected_targets: Optional mapping of target name to a callable
            ``(label, side) -> value`` written independently of the dataset's own;
            ``side`` is a dict of tensors for named side inputs.
        num_workers: DataLoader workers for the shuffled-epoch check.
        batch_size: Batch size of that DataLoader.

    Floating-point targets (of continuous side inputs) are compared with
    ``torch.isclose`` at its default tolerances, because an independent formula may
    add the same terms in another order; everything else must be equal.

    Raises:
        AssertionError: Naming the index and the field that disagree.
        TypeError: If ``fused`` is not a :class:`FusionDataset`.

    Examples:
        >>> fused = FusionDataset(
        ...     TensorDataset(torch.zeros(3, 1, 2, 2), torch.tensor([1, 2, 3])),
        ...     torch.tensor([4, 5, 6]))
        >>> check_pairing(fused, expected_targets={"sum": lambda label, side: label + side})
    """
    if not isinstance(fused, FusionDataset):
        raise TypeError(
            f"check_pairing checks a FusionDataset, but got {type(fused).__name__}; a "
            "TensorFusionDataset builds its samples from its own tensors, so compare its "
            "batch() with them instead."
        )
    images = fused.images if images is None else images
    side = fused.side if side is None else side
    targets = expected_targets or {}

    for index in range(len(fused)):
        sample = fused[index]
        image, label = images[index]
        if fused.transform is not None:
            image = fused.transform(image)
        _expect(torch.equal(sample["image"], torch.as_tensor(image)), index, "image")
        side_value = _side_at(side, index)
        _expect(_values_equal(sample["side"], side_value), index, "side")
        for name, target_fn in targets.items():
            expected = torch.as_tensor(target_fn(torch.as_tensor(label), side_value))
            _expect(_target_matches(sample[name], expected), index, name)
        _expect(_samples_equal(sample, fused[index]), index, "a second read")

    _check_shuffled_epoch(fused, num_workers=num_workers, batch_size=batch_size)


def _check_shuffled_epoch(fused: FusionDataset, *, num_workers: int, batch_size: int) -> None:
    if len(fused) == 0:
        return
    names = list(_flat_fields(fused[0]))
    expected = Counter(tuple(_flat_fields(fused[i]).values()) for i in range(len(fused)))

    loader = DataLoader(fused, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    seen: Counter[tuple[float, ...]] = Counter()
    for batch in loader:
        columns = [column.tolist() for column in _flat_columns(batch).values()]
        seen.update(tuple(row) for row in zip(*columns, strict=True))
    if seen != expected:
        raise AssertionError(
            f"One shuffled epoch yielded a different multiset of {names} than the dataset: "
            f"missing {dict(expected - seen)}, extra {dict(seen - expected)}."
        )


def _target_matches(value: Any, expected: torch.Tensor) -> bool:
    value = torch.as_tensor(value)
    expected = expected.to(value.dtype)
    if value.is_floating_point():
        return value.shape == expected.shape and bool(torch.isclose(value, expected).all())
    return torch.equal(value, expected)


def _side_at(side: Dataset | Mapping[str, Dataset], index: int) -> Any:
    if isinstance(side, Mapping):
        return {name: torch.as_tensor(source[index]) for name, source in side.items()}
    return torch.as_tensor(side[index])


def _values_equal(first: Any, second: Any) -> bool:
    """Compare tensors, or dicts of tensors key by key, by value and not by dtype."""
    if isinstance(first, Mapping) or isinstance(second, Mapping):
        return (
            isinstance(first, Mapping)
            and isinstance(second, Mapping)
            and first.keys() == second.keys()
            and all(_values_equal(first[key], second[key]) for key in first)
        )
    first, second = torch.as_tensor(first), torch.as_tensor(second)
    return first.shape == second.shape and bool((first == second).all())


def _flat_fields(sample: Mapping[str, Any]) -> dict[str, float]:
    """Return the scalar fields of a sample, named side inputs as ``side.NAME``."""
    return {name: torch.as_tensor(value).item() for name, value in _flat_columns(sample).items()}


def _flat_columns(sample: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    columns = {}
    for name, value in sample.items():
        if name == "image":
            continue
        if isinstance(value, Mapping):
            columns.update({f"{name}.{key}": part for key, part in value.items()})
        else:
            columns[name] = value
    return columns


def _samples_equal(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    return first.keys() == second.keys() and all(
        _values_equal(first[key], second[key]) for key in first
    )


def _expect(condition: bool, index: int, field: str) -> None:
    if not condition:
        raise AssertionError(f"Pairing broken at index {index}: {field} does not match.")


@st.composite
def held_out_sets(
    draw: st.DrawFn,
    *,
    num_digits: int = 10,
    num_side_values: int = 10,
    min_size: int = 1,
    max_size: int | None = None,
) -> frozenset[tuple[int, int]]:
    """Draw a set of (digit, side value) pairs to hold out, for ``split_by_combinations``.

    Args:
        draw: Supplied by hypothesis; callers pass only the keyword arguments.
        num_digits: Digits are drawn from ``[0, num_digits)``.
        num_side_values: Side values are drawn from ``[0, num_side_values)``.
        min_size: Minimum number of pairs.
        max_size: Maximum number of pairs; None allows every pair of the grid.

    Returns:
        A strategy of frozensets of pairs. Unlike :func:`~mnist_fusion.data.held_out_pairs`,
        a drawn set may leave out a digit or a side value entirely.

    Examples:
        >>> from hypothesis import given
        >>> @given(held_out_sets(num_digits=2, num_side_values=3, max_size=4))
        ... def test(pairs):
        ...     assert 1 <= len(pairs) <= 4 and all(d < 2 and s < 3 for d, s in pairs)
        >>> test()
    """
    pair = st.tuples(st.integers(0, num_digits - 1), st.integers(0, num_side_values - 1))
    return draw(st.frozensets(pair, min_size=min_size, max_size=max_size))


def check_side_sensitivity(
    model: FusionModel,
    batches: Iterable[Mapping[str, Any]],
    *,
    min_fraction: float = 0.9,
    names: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Check that the model's predicted sum follows a change of each side input.

    Computes :func:`~mnist_fusion.metrics.evaluate_side_sensitivity`: for each checked
    input, the fraction of samples whose predicted sum moves by exactly the change when
    that input alone is replaced by another valid value. A model that ignores the input
    scores near 0; the exact sum head scores 1.0 by construction. The check applies to
    models whose target is the digit plus the side inputs.

    Args:
        model: The trained model.
        batches: Iterable of dict batches with ``image`` and ``side``, such as a
            ``BatchLoader`` over test data.
        min_fraction: Smallest fraction that passes, in ``[0, 1]``.
        names: Side inputs to check; None checks every declared input, which must then
            all be categorical.
        generator: CPU generator for the changed values; None uses a new one seeded
            with 0, so a rerun on the same batches gives the same fractions.

    Returns:
        ``{name: fraction}`` of every checked input (``{"side": ...}`` for one input).

    Raises:
        AssertionError: If a fraction is below ``min_fraction``, naming the input.
        ValueError: If ``min_fraction`` is outside ``[0, 1]``, or as
            :func:`~mnist_fusion.metrics.evaluate_side_sensitivity` raises.

    Examples:
        >>> from mnist_fusion.models import FusionHeadConfig, FusionModelConfig
        >>> exact = FusionModel(FusionModelConfig(head=FusionHeadConfig(sum_head="exact")))
        >>> batch = {"image": torch.randn(6, 1, 28, 28), "side": torch.arange(6)}
        >>> check_side_sensitivity(exact, [batch], min_fraction=1.0)
        {'side': 1.0}
    """
    _check_fraction("min_fraction", min_fraction)
    fractions = evaluate_side_sensitivity(model, batches, names=names, generator=generator)
    failing = {name: value for name, value in fractions.items() if value < min_fraction}
    if failing:
        described = ", ".join(f"{name!r}: {value:.4f}" for name, value in failing.items())
        raise AssertionError(
            f"Side sensitivity below {min_fraction} for {described}: the predicted sum "
            "does not follow a change of that side input, so the model may ignore it "
            "and predict the sum from the image alone."
        )
    return fractions


def check_held_out_accuracy(
    model: FusionModel,
    seen: Iterable[Mapping[str, Any]],
    unseen: Iterable[Mapping[str, Any]],
    *,
    max_drop: float = 0.01,
) -> tuple[float, float]:
    """Check that the sum accuracy on held-out (digit, side value) pairs keeps up with seen ones.

    Build the two loaders from :func:`~mnist_fusion.data.split_by_combinations` of test
    data, with the pairs that the model's training data left out. A model that learned
    a lookup table of the seen pairs loses accuracy on the held-out ones, while one that
    adds keeps it.

    Args:
        model: The model, trained without the held-out pairs.
        seen: Batches of test samples whose pair occurred in training. The loaders must
            neither shuffle nor drop their last batch, as
            :func:`~mnist_fusion.training.evaluate` requires.
        unseen: Batches of test samples whose pair was held out.
        max_drop: Largest accepted ``seen - unseen`` accuracy, in ``[0, 1]``.

    Returns:
        ``(seen_accuracy, unseen_accuracy)``.

    Raises:
        AssertionError: If the unseen accuracy is more than ``max_drop`` below the seen.
        ValueError: If ``max_drop`` is outside ``[0, 1]`` or a loader yields no sample.

    Examples:
        >>> from mnist_fusion.models import FusionHeadConfig, FusionModelConfig
        >>> exact = FusionModel(FusionModelConfig(head=FusionHeadConfig(sum_head="exact")))
        >>> image = torch.randn(4, 1, 28, 28)
        >>> digit, _ = exact.predict(image, torch.zeros(4, dtype=torch.int64))
        >>> def batch(side):
        ...     return {"image": image, "side": side, "digit": digit, "sum": digit + side}
        >>> seen, unseen = [batch(torch.arange(4))], [batch(torch.arange(6, 10))]
        >>> check_held_out_accuracy(exact, seen, unseen)
        (1.0, 1.0)
    """
    _check_fraction("max_drop", max_drop)
    device = next(model.parameters()).device
    accuracies = []
    for label, batches in (("seen", seen), ("unseen", unseen)):
        values = evaluate(model, batches, device=device, progress=False)
        if values["count"] == 0:
            raise ValueError(
                f"The {label} batches yielded no sample, so their sum accuracy is undefined; "
                "check that the test data contains the held-out pairs."
            )
        accuracies.append(values["sum_accuracy"])

    seen_accuracy, unseen_accuracy = accuracies
    if seen_accuracy - unseen_accuracy > max_drop:
        raise AssertionError(
            f"Sum accuracy on held-out (digit, side value) pairs is {unseen_accuracy:.4f}, "
            f"{seen_accuracy - unseen_accuracy:.4f} below the {seen_accuracy:.4f} of seen "
            f"pairs (accepted drop: {max_drop}): the model may have memorised the pairs "
            "it saw instead of adding the digit and the side input."
        )
    return seen_accuracy, unseen_accuracy


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"Expected `{name}` to be a number in [0, 1], got {value!r}.")
