"""Pair an image dataset with a side input inside one dataset, so no shuffle can split them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mnist_fusion.data.side import (
    RandomDigits,
    RandomUniform,
    SideTensor,
    _check_index,
    as_side_dataset,
)
from mnist_fusion.models.side_spec import check_side_name

__all__ = ["FusionDataset", "TARGETS", "TargetFn"]

SideValues = torch.Tensor | Mapping[str, torch.Tensor]
"""The side input of a sample or a batch: one tensor, or ``{name: tensor}``."""

TargetFn = Callable[[torch.Tensor, Any], torch.Tensor]
"""A target as a function of the label and the side input (a tensor or a mapping)."""

SideSource = Dataset | torch.Tensor | Sequence[int] | Sequence[float]


def _digit(label: torch.Tensor, side: SideValues) -> torch.Tensor:
    return label


def _sum(label: torch.Tensor, side: SideValues) -> torch.Tensor:
    if isinstance(side, Mapping):
        return label + sum(side.values())  # type: ignore[return-value]
    return label + side


TARGETS: dict[str, TargetFn] = {"digit": _digit, "sum": _sum}
"""Named target functions of ``(label, side)``; ``FusionDataset(targets=...)`` picks from them.

``"sum"`` adds the label and the side input, or every named side input of a mapping.
"""

_RESERVED = {"image", "side", "index", "missing"}


def _resolve_targets(targets: Sequence[str] | Mapping[str, TargetFn] | None) -> dict[str, TargetFn]:
    if targets is None:
        return dict(TARGETS)
    if isinstance(targets, str):
        # A string is a sequence of one-letter names, which would fail with a puzzling message.
        raise TypeError(
            f"Expected `targets` to be a sequence of names, but got the string {targets!r}; "
            f"pass [{targets!r}]."
        )
    if isinstance(targets, Mapping):
        resolved = dict(targets)
        not_callable = sorted(name for name, fn in resolved.items() if not callable(fn))
        if not_callable:
            raise TypeError(
                f"Expected each target in the mapping to be a callable(label, side), but "
                f"{not_callable} are not."
            )
    else:
        unknown = [name for name in targets if name not in TARGETS]
        if unknown:
            raise ValueError(
                f"Unknown target name(s) {unknown!r}; valid names are {sorted(TARGETS)}, "
                "or pass a mapping of name to callable(label, side)."
            )
        resolved = {name: TARGETS[name] for name in targets}

    reserved = _RESERVED & resolved.keys()
    if reserved:
        raise ValueError(f"Target names {sorted(reserved)} are reserved for the sample fields.")
    return resolved


class FusionDataset(Dataset[dict[str, torch.Tensor]]):
    """One sample per index: an image, its side inputs, and targets derived from them.

    ``fused[i]`` reads ``images[i]`` and every side input at ``i`` in the same call, so a
    shuffled DataLoader moves an image and its side inputs and targets together. Samples
    are plain dicts, which ``torch.utils.data.default_collate`` batches into tensors.
    With one side input, ``side``, ``index`` and the built-in targets are Python ints,
    as torchvision returns its labels, and batches hold them as int64 tensors. With
    named side inputs, ``side`` is a dict of 0-d tensors (int64, or float32 for real
    values). Custom target functions receive tensors in both cases.

    Args:
        images: Map-style dataset whose items are ``(image, label)`` pairs. Its own
            transform runs once per item, when this dataset reads it.
        side: Map-style dataset of integer side inputs (such as :class:`RandomDigits`),
            or a 1-D integer tensor or sequence; or a mapping of name to such a source
            for several side inputs. In a mapping, floating-point tensors and datasets
            of floats (such as :class:`RandomUniform`) are continuous side inputs.
        targets: Target names from :data:`TARGETS` (default: ``digit`` and ``sum``), or a
            mapping of name to ``callable(label, side) -> tensor``, where ``side`` is
            the sample's side tensor or its dict of named side tensors.
        transform: Optional callable applied to the image after the base dataset's own.
        target_transform: Optional callable applied to the label before targets are built.

    Raises:
        ValueError: If a length differs from the images' (naming the side input), the
            mapping is empty, or a target name is unknown or reserved.
        TypeError: If ``targets`` is a string or maps a name to a non-callable, or a
            side input name is not a string.

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> images = TensorDataset(torch.zeros(4, 1, 28, 28), torch.tensor([7, 1, 2, 3]))
        >>> fused = FusionDataset(images, torch.tensor([2, 0, 5, 9]))
        >>> sample = fused[0]
        >>> sorted(sample)
        ['digit', 'image', 'index', 'side', 'sum']
        >>> int(sample["sum"])
        9
        >>> named = FusionDataset(images, {"a": torch.tensor([2, 0, 5, 9]),
        ...                                "b": torch.tensor([1, 1, 1, 1])})
        >>> int(named[0]["sum"]), sorted(named[0]["side"])
        (10, ['a', 'b'])
    """

    def __init__(
        self,
        images: Dataset,
        side: SideSource | Mapping[str, SideSource],
        *,
        targets: Sequence[str] | Mapping[str, TargetFn] | None = None,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.images = images
        self.side: Dataset | dict[str, Dataset] = _as_side_sources(side)
        self.targets = _resolve_targets(targets)
        self.transform = transform
        self.target_transform = target_transform

        sources = self.side if isinstance(self.side, dict) else {"side": self.side}
        for name, source in sources.items():
            _check_same_length(images, source, name if isinstance(self.side, dict) else None)

        # The library's own side inputs are tensors fixed at construction; reading them
        # from Python lists keeps the per-item cost to a list lookup.
        self._side_values = {name: _cached_values(source) for name, source in sources.items()}

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _check_index(index, len(self))
        image, label = _unpack_item(self.images[index], index)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        label = _as_int(label, "label", index)

        if isinstance(self.side, dict):
            return self._named_sample(image, label, index)

        cached = self._side_values["side"]
        side = _as_int(
            cached[index] if cached is not None else self.side[index], "side input", index
        )
        # Python ints, as torchvision returns labels: default_collate batches them into
        # int64 tensors, and building four 0-d tensors per item cost more than the
        # DataLoader itself (docs/benchmarks.md). Custom targets still get tensors.
        sample: dict[str, Any] = {"image": image, "side": side, "index": index}
        tensors = None
        for name, target_fn in self.targets.items():
            if target_fn is _digit:
                sample[name] = label
            elif target_fn is _sum:
                sample[name] = label + side
            else:
                tensors = tensors or (_new_int64(label), _new_int64(side))
                sample[name] = target_fn(*tensors)
        return sample

    def _named_sample(self, image: Any, label: int, index: int) -> dict[str, Any]:
        assert isinstance(self.side, dict)
        side = {}
        for name, source in self.side.items():
            cached = self._side_values[name]
            value = cached[index] if cached is not None else source[index]
            side[name] = _as_side_scalar(value, name, index)

        label_tensor = torch.tensor(label)
        sample = {"image": image, "side": side, "index": torch.tensor(index)}
        for target_name, target_fn in self.targets.items():
            sample[target_name] = target_fn(label_tensor, side)
        return sample

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(length={len(self)}, images={type(self.images).__name__}, "
            f"side={self.side!r}, targets={list(self.targets)})"
        )


def _as_side_sources(side: SideSource | Mapping[str, SideSource]) -> Dataset | dict[str, Dataset]:
    if not isinstance(side, Mapping):
        return as_side_dataset(side)
    if not side:
        raise ValueError("Expected at least one side input in the mapping, got none.")
    sources = {}
    for name, source in side.items():
        check_side_name(name)
        sources[name] = as_side_dataset(source, continuous=True)
    return sources


def _check_same_length(images: Dataset, side: Dataset, name: str | None) -> None:
    if len(images) != len(side):  # type: ignore[arg-type]
        which = "side" if name is None else f"side input {name!r}"
        raise ValueError(
            f"Cannot pair datasets of different lengths: images has {len(images)} "  # type: ignore[arg-type]
            f"items, {which} has {len(side)}. Build the side input with the image "  # type: ignore[arg-type]
            "dataset's length."
        )


def _cached_values(source: Dataset) -> list[int] | list[float] | None:
    if isinstance(source, RandomDigits | RandomUniform | SideTensor):
        return source.values.tolist()
    return None


def _as_side_scalar(value: object, name: str, index: int) -> torch.Tensor:
    """Return a named side value as a new 0-d tensor: int64 or, for real values, float32."""
    if isinstance(value, float | np.floating) or (
        isinstance(value, torch.Tensor) and value.is_floating_point()
    ):
        tensor = torch.as_tensor(value, dtype=torch.float32)
        if tensor.ndim != 0:
            raise ValueError(
                f"Expected side input {name!r} at index {index} to be a scalar, but got "
                f"shape {list(tensor.shape)}."
            )
        return tensor.clone()
    return torch.tensor(_as_int(value, f"side input {name!r}", index))


def _unpack_item(item: object, index: int) -> tuple[Any, Any]:
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise TypeError(
            f"Expected the image dataset to return an (image, label) pair at index {index}, "
            f"but it returned {type(item).__name__}"
            + (f" of length {len(item)}" if isinstance(item, tuple | list) else "")
            + "."
        )
    return item[0], item[1]


def _as_int(value: object, name: str, index: int) -> int:
    """Return ``value`` as a Python int, or raise if it is not an integer scalar."""
    if type(value) is int:
        return value

    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        tensor = None
    is_integer_scalar = (
        tensor is not None
        and tensor.ndim == 0
        and not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)
    )
    if tensor is None or not is_integer_scalar:
        raise ValueError(
            f"Expected the {name} at index {index} to be an integer scalar, but got {value!r}."
        )
    return int(tensor)


def _new_int64(value: int) -> torch.Tensor:
    """Return a new int64 0-d tensor containing the Python int ``value``."""
    # torch.full skips the parsing of a nested sequence that torch.tensor does, which
    # made it about 2.7 times faster per call on torch 2.14 (CPU, one thread).
    return torch.full((), value, dtype=torch.int64)


def _as_int64(value: object, name: str, index: int) -> torch.Tensor:
    """Return ``value`` as a new int64 0-d tensor, or raise if it is not an integer scalar."""
    return torch.tensor(_as_int(value, name, index))
