"""MNIST-sum in one call: torchvision MNIST paired with seeded random digits."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision import datasets, transforms

from mnist_fusion.data.batched import MNIST_MEAN, MNIST_STD, TensorFusionDataset
from mnist_fusion.data.idx import IDXFormatError, read_idx
from mnist_fusion.data.pairing import FusionDataset
from mnist_fusion.data.prepare import MNIST_MD5, prepare_mnist, resolve_mnist_root
from mnist_fusion.data.side import RandomDigits, _check_seed

__all__ = ["MNISTSum", "side_seed", "default_transform"]


def side_seed(seed: int, *, train: bool) -> int:
    """Return the seed of a split's side inputs: even for training, odd for test.

    Train and test pairings therefore never share a stream, whatever seeds are chosen.

    Args:
        seed: The experiment's seed.
        train: Whether the seed is for the training split.

    Returns:
        ``2 * seed`` for training, ``2 * seed + 1`` for test.

    Raises:
        ValueError: If ``seed`` is not an integer in ``[-2**62, 2**62 - 1]``, the range
            whose split seeds stay within the 64-bit seeds of :class:`RandomDigits`.
        TypeError: If ``train`` is not a bool.

    Examples:
        >>> side_seed(3, train=True), side_seed(3, train=False)
        (6, 7)
    """
    seed = _check_seed(seed, low=-(2**62), high=2**62 - 1)
    if not isinstance(train, bool):
        # A truthy string such as "test" would silently select the training split.
        raise TypeError(f"Expected `train` to be True or False, but got {train!r}.")
    return 2 * seed + (0 if train else 1)


def default_transform() -> Callable[[Any], Any]:
    """Return ``ToTensor`` followed by normalisation with the MNIST training statistics.

    Examples:
        >>> from PIL import Image
        >>> image = default_transform()(Image.new("L", (28, 28)))
        >>> image.shape, round(image.min().item(), 4)
        (torch.Size([1, 28, 28]), -0.4242)
    """
    return transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
    )


class MNISTSum(FusionDataset):
    """One MNIST split paired with a random digit 0-9 per image; targets digit and sum.

    The side input at index ``i`` is ``RandomDigits(seed=side_seed(seed, train=train))[i]``,
    so a split's pairing is fixed by ``seed`` alone.

    Args:
        root: Folder that contains ``MNIST/raw`` (``ROOT/MNIST`` and ``ROOT/MNIST/raw`` are
            accepted too).
        train: Use the 60,000 training images, else the 10,000 test images.
        seed: Integer that fixes the side inputs.
        transform: Image transform; defaults to :func:`default_transform`.
        download: Run :func:`~mnist_fusion.data.prepare_mnist` first.

    Raises:
        FileNotFoundError: If one of the four IDX files is missing and ``download`` is
            false.
        IDXFormatError: If a file of the split is damaged, or its images and labels do not
            match.
        ValueError: If ``seed`` is not an integer (see :func:`side_seed`).
        TypeError: If ``train`` is not a bool.

    Examples:
        >>> test = MNISTSum("data", train=False, seed=0)  # doctest: +SKIP
        >>> len(test), sorted(test[0])  # doctest: +SKIP
        (10000, ['digit', 'image', 'index', 'side', 'sum'])
    """

    images: datasets.MNIST
    side: RandomDigits

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        train: bool,
        seed: int,
        transform: Callable[[Any], Any] | None = None,
        download: bool = False,
    ) -> None:
        # Checked first, so a bad seed fails before any file is read.
        stream_seed = side_seed(seed, train=train)
        root = resolve_mnist_root(root)
        if download:
            prepare_mnist(root)

        self.root = Path(root)
        self.train = train
        self.seed = seed
        self.custom_transform = transform is not None
        images = _open_mnist(self.root, train=train, transform=transform or default_transform())
        super().__init__(images, RandomDigits(len(images), seed=stream_seed))

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
    # torchvision needs all four files, whichever split is opened.
    missing = [name for name in MNIST_MD5 if not (raw / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"MNIST IDX files missing from {raw}: {', '.join(missing)}. Run "
            f"`mnist-fusion prepare-data --root {root}` or pass download=True."
        )

    prefix = "train" if train else "t10k"
    image_file = raw / f"{prefix}-images-idx3-ubyte"
    label_file = raw / f"{prefix}-labels-idx1-ubyte"
    try:
        mnist = datasets.MNIST(str(root), train=train, transform=transform, download=False)
    except (RuntimeError, AssertionError, ValueError, KeyError):
        # torchvision reports a damaged file as a failed assert or reshape, so the checked
        # reader runs to name the file and the defect.
        images, labels = read_idx(image_file, ndim=3), read_idx(label_file, ndim=1)
        _check_split(images, labels, image_file=image_file, label_file=label_file)
        for path, data in ((image_file, images), (label_file, labels)):
            if len(data) == 0:
                # A valid IDX file may declare zero items, which torchvision cannot reshape.
                raise IDXFormatError(
                    f"{path} declares zero items; replace it with the full file "
                    f"(`mnist-fusion prepare-data --root {root}` restores it)."
                ) from None
        raise

    _check_split(mnist.data, mnist.targets, image_file=image_file, label_file=label_file)
    return mnist


def _check_split(
    images: torch.Tensor, labels: torch.Tensor, *, image_file: Path, label_file: Path
) -> None:
    # torchvision accepts these defects and fails later, at some index or in training.
    if len(images) != len(labels):
        raise IDXFormatError(
            f"{image_file} contains {len(images)} images but {label_file} contains {len(labels)} "
            "labels; the two files of a split must have the same count."
        )
    if tuple(images.shape[1:]) != (28, 28):
        raise IDXFormatError(
            f"{image_file}: expected 28x28 images, but the header says "
            f"{images.shape[1]}x{images.shape[2]}."
        )
    if len(labels) and int(labels.max()) > 9:
        raise IDXFormatError(
            f"{label_file}: expected digit labels 0-9, but found {int(labels.max())}."
        )
