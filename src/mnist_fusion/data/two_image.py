"""Two-image addition: each image paired with a second image, supervised by the sum only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from mnist_fusion.data.pairing import _as_int64, _unpack_item
from mnist_fusion.data.side import _check_index, _check_int

__all__ = ["TwoImageAddition"]


class TwoImageAddition(Dataset[dict[str, torch.Tensor]]):
    """Pair ``first[i]`` with ``second[permutation[i]]``; the sum of the labels is the target.

    This is the MNIST-addition task of neuro-symbolic learning: a model reads two images and
    learns from their sum alone. The permutation is drawn once from a private
    generator seeded with ``seed``, so the pairing never depends on the global RNG, the
    access order or DataLoader workers. When ``second`` is longer than ``first``, only the
    first ``len(first)`` entries of the permutation are used; it may not be shorter.

    Each sample holds ``image``, ``second_image``, ``sum`` and ``index``. The labels come
    as ``digit`` and ``second_digit`` for evaluation only: a sum-only training loss must
    not read them.

    Args:
        first: Map-style dataset of ``(image, label)`` pairs.
        second: Map-style dataset of ``(image, label)`` pairs; may be ``first`` itself.
        seed: Seed of the permutation.
        transform: Optional callable applied to both images after their own transforms.

    Raises:
        ValueError: If ``second`` is shorter than ``first`` or ``seed`` is not an integer.

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> images = TensorDataset(torch.zeros(4, 1, 2, 2), torch.tensor([1, 2, 3, 4]))
        >>> pairs = TwoImageAddition(images, images, seed=0)
        >>> sample = pairs[0]
        >>> int(sample["sum"]) == int(sample["digit"] + sample["second_digit"])
        True
    """

    def __init__(
        self,
        first: Dataset,
        second: Dataset,
        *,
        seed: int,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        seed = _check_int("seed", seed)
        if len(second) < len(first):  # type: ignore[arg-type]
            raise ValueError(
                f"`second` has {len(second)} items but `first` has {len(first)}; "  # type: ignore[arg-type]
                "each image needs a distinct partner, so pass a second dataset at least as long."
            )

        self.first = first
        self.second = second
        self.seed = seed
        self.transform = transform
        generator = torch.Generator().manual_seed(seed)
        self.partners = torch.randperm(len(second), generator=generator)[: len(first)]  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.first)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = _check_index(index, len(self))
        partner = int(self.partners[index])
        image, label = _unpack_item(self.first[index], index)
        second_image, second_label = _unpack_item(self.second[partner], partner)

        if self.transform is not None:
            image = self.transform(image)
            second_image = self.transform(second_image)

        label = _as_int64(label, "label", index)
        second_label = _as_int64(second_label, "label", partner)
        return {
            "image": image,
            "second_image": second_image,
            "sum": label + second_label,
            "digit": label,
            "second_digit": second_label,
            "index": torch.tensor(index),
            "second_index": torch.tensor(partner),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(length={len(self)}, seed={self.seed})"
