"""MNIST-sum in one call: torchvision MNIST paired with seeded random digits."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchvision import datasets, transforms

from mnist_fusion.data.batched import MNIST_MEAN, MNIST_STD, TensorFusionDataset
from mnist_fusion.data.pairing import FusionDataset
from mnist_fusion.data.prepare import prepare_mnist, resolve_mnist_root
from mnist_fusion.data.side import RandomDigits

__all__ = ["MNISTSum", "side_seed", "default_transform"]


def side_seed(seed: int, *, train: bool) -> int:
    """Return the seed of a split's side inputs: even for training, odd for test.

    Train and test pairings therefore never share a stream, whatever seeds are chosen.
    """
    return 2 * seed + (0 if train else 1)


def default_transform() -> Callable[[Any], Any]:
    """Return ``ToTensor`` followed by normalisation with the MNIST training statistics."""
    return transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
    )


class MNISTSum(FusionDataset):
    """One MNIST split paired with a random digit 0-9 per image; targets digit and sum.

    The side input at index ``i`` is ``RandomDigits(seed=side_seed(seed, train=train))[i]``,
    so a split's pairing is fixed by ``seed`` alone.

    Args:
        root: Folder that holds ``MNIST/raw`` (``ROOT/MNIST`` and ``ROOT/MNIST/raw`` are
            accepted too).
        train: Use the 60,000 training images, else the 10,000 test images.
        seed: Integer that fixes the side inputs.
        transform: Image transform; defaults to :func:`default_transform`.
        download: Run :func:`~mnist_fusion.data.prepare_mnist` first.

    Raises:
        FileNotFoundError: If the IDX files are missing and ``download`` is false.

    Example:
        >>> test = MNISTSum("data", train=False, seed=0)  # doctest: +SKIP
        >>> len(test), sorted(test[0])  # doctest: +SKIP
        (10000, ['digit', 'image', 'index', 'side', 'sum'])
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        train: bool,
        seed: int,
        transform: Callable[[Any], Any] | None = None,
        download: bool = False,
    ) -> None:
        root = resolve_mnist_root(root)
        if download:
            prepare_mnist(root)

        self.root = Path(root)
        self.train = train
        self.seed = seed
        self.custom_transform = transform is not None
        images = _open_mnist(self.root, train=train, transform=transform or default_transform())
        super().__init__(images, RandomDigits(len(images), seed=side_seed(seed, train=train)))

    def as_tensors(self) -> TensorFusionDataset:
        """Return the same samples as a :class:`TensorFusionDataset` for batched loading.

        Raises:
            ValueError: If a custom transform was given, because the batched path
                applies only the default normalisation.
        """
        if self.custom_transform:
            raise ValueError(
                "as_tensors() applies only the default normalisation, but this dataset "
                "has a custom transform; use the per-item dataset with a DataLoader instead."
            )
        return TensorFusionDataset(self.images.data, self.images.targets, self.side.values)

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"{type(self).__name__}(root={str(self.root)!r}, split={split}, seed={self.seed})"


def _open_mnist(root: Path, *, train: bool, transform: Callable[[Any], Any]) -> datasets.MNIST:
    raw = root / "MNIST" / "raw"
    try:
        return datasets.MNIST(str(root), train=train, transform=transform, download=False)
    except RuntimeError as error:
        raise FileNotFoundError(
            f"MNIST IDX files not found in {raw}. Run `mnist-fusion prepare-data --root "
            f"{root}` or pass download=True."
        ) from error
