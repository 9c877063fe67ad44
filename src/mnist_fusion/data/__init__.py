"""Datasets and loaders: MNIST files, side inputs, and the datasets that pair them."""

from mnist_fusion.data.batched import MNIST_MEAN, MNIST_STD, BatchLoader, TensorFusionDataset
from mnist_fusion.data.idx import IDXFormatError, parse_idx, read_idx, write_idx
from mnist_fusion.data.mnist_sum import MNISTSum, default_transform, side_seed
from mnist_fusion.data.pairing import TARGETS, FusionDataset
from mnist_fusion.data.prepare import (
    MNIST_MD5,
    ChecksumError,
    MNISTUnavailableError,
    prepare_mnist,
    resolve_mnist_root,
    verify_mnist,
)
from mnist_fusion.data.side import RandomDigits, RandomUniform, SideTensor
from mnist_fusion.data.two_image import TwoImageAddition

__all__ = [
    "MNIST_MD5",
    "MNIST_MEAN",
    "MNIST_STD",
    "TARGETS",
    "BatchLoader",
    "ChecksumError",
    "FusionDataset",
    "IDXFormatError",
    "MNISTSum",
    "MNISTUnavailableError",
    "RandomDigits",
    "RandomUniform",
    "SideTensor",
    "TensorFusionDataset",
    "TwoImageAddition",
    "default_transform",
    "parse_idx",
    "prepare_mnist",
    "read_idx",
    "resolve_mnist_root",
    "side_seed",
    "verify_mnist",
    "write_idx",
]
