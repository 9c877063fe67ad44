"""Pair an image dataset with a side input inside one dataset, so no shuffle can split them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from mnist_fusion.data.side import RandomDigits, SideTensor, _check_index, as_side_dataset

__all__ = ["FusionDataset", "TARGETS", "TargetFn"]

TargetFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _digit(label: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    return label


def _sum(label: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    return label + side


TARGETS: dict[str, TargetFn] = {"digit": _digit, "sum": _sum}
"""Named target functions of ``(label, side)``; ``FusionDataset(targets=...)`` picks from them."""


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

    reserved = {"image", "side", "index"} & resolved.keys()
    if reserved:
        raise ValueError(f"Target names {sorted(reserved)} are reserved for the sample fields.")
    return resolved


class FusionDataset(Dataset[dict[str, torch.Tensor]]):
    """One sample per index: an image, its side input, and targets derived from both.

    ``fused[i]`` reads ``images[i]`` and ``side[i]`` in the same call, so a shuffled
    DataLoader moves an image and its side input and targets together. Samples are plain
    dicts of tensors, which ``torch.utils.data.default_collate`` batches.

    Args:
        images: Map-style dataset whose items are ``(image, label)`` pairs. Its own
            transform runs once per item, when this dataset reads it.
        side: Map-style dataset of integer side inputs (such as :class:`RandomDigits`),
            or a 1-D integer tensor or sequence.
        targets: Target names from :data:`TARGETS` (default: ``digit`` and ``sum``), or a
            mapping of name to ``callable(label, side) -> tensor``.
        transform: Optional callable applied to the image after the base dataset's own.
        target_transform: Optional callable applied to the label before targets are built.

    Raises:
        ValueError: If the lengths differ or a target name is unknown or reserved.
        TypeError: If ``targets`` is a string or maps a name to a non-callable.

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> images = TensorDataset(torch.zeros(4, 1, 28, 28), torch.tensor([7, 1, 2, 3]))
        >>> fused = FusionDataset(images, torch.tensor([2, 0, 5, 9]))
        >>> sample = fused[0]
        >>> sorted(sample)
        ['digit', 'image', 'index', 'side', 'sum']
        >>> int(sample["sum"])
        9
    """

    def __init__(
        self,
        images: Dataset,
        side: Dataset | torch.Tensor | Sequence[int],
        *,
        targets: Sequence[str] | Mapping[str, TargetFn] | None = None,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        side = as_side_dataset(side)
        if len(images) != len(side):  # type: ignore[arg-type]
            raise ValueError(
                f"Cannot pair datasets of different lengths: images has {len(images)} "  # type: ignore[arg-type]
                f"items, side has {len(side)}. Build the side input with the image "  # type: ignore[arg-type]
                "dataset's length."
            )

        self.images = images
        self.side = side
        self.targets = _resolve_targets(targets)
        self.transform = transform
        self.target_transform = target_transform

        # The library's own side inputs are int64 tensors fixed at construction; reading
        # them from a Python list keeps the per-item cost to a list lookup.
        known = isinstance(side, RandomDigits | SideTensor)
        self._side_values: list[int] | None = side.values.tolist() if known else None

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = _check_index(index, len(self))
        image, label = _unpack_item(self.images[index], index)
        side = self._side_values[index] if self._side_values is not None else self.side[index]

        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)

        label = _as_int(label, "label", index)
        side = _as_int(side, "side input", index)
        # Fresh tensors, so writing to a sample never changes the base dataset.
        label_tensor = torch.tensor(label)
        side_tensor = torch.tensor(side)
        sample = {"image": image, "side": side_tensor, "index": torch.tensor(index)}
        for name, target_fn in self.targets.items():
            if target_fn is _digit:
                sample[name] = label_tensor
            elif target_fn is _sum:
                sample[name] = torch.tensor(label + side)
            else:
                sample[name] = target_fn(label_tensor, side_tensor)
        return sample

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(length={len(self)}, images={type(self.images).__name__}, "
            f"side={self.side!r}, targets={list(self.targets)})"
        )


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


def _as_int64(value: object, name: str, index: int) -> torch.Tensor:
    """Return ``value`` as a new int64 0-d tensor, or raise if it is not an integer scalar."""
    return torch.tensor(_as_int(value, name, index))
