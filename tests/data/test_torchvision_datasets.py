"""FusionDataset over more torchvision datasets, each reading IDX files this test writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import datasets, transforms

from mnist_fusion.data import FusionDataset, RandomDigits, write_idx
from mnist_fusion.testing import check_pairing

COUNT = 40


def _write_split(raw: Path, images_name: str, labels_name: str, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (COUNT,), generator=generator).to(torch.uint8)
    images = torch.randint(0, 256, (COUNT, 28, 28), generator=generator).to(torch.uint8)
    write_idx(raw / images_name, images)
    write_idx(raw / labels_name, labels)
    return labels


def _write_mnist_layout(root: Path, folder: str) -> torch.Tensor:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    _write_split(raw, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", seed=2)
    return _write_split(raw, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", seed=1)


def _write_emnist_digits(root: Path) -> torch.Tensor:
    raw = root / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    _write_split(
        raw, "emnist-digits-test-images-idx3-ubyte", "emnist-digits-test-labels-idx1-ubyte", 2
    )
    return _write_split(
        raw, "emnist-digits-train-images-idx3-ubyte", "emnist-digits-train-labels-idx1-ubyte", 1
    )


@pytest.mark.parametrize("name", ["KMNIST", "FashionMNIST", "MNIST"])
def test_mnist_layout_dataset_pairs(tmp_path, name):
    labels = _write_mnist_layout(tmp_path, name)
    base = getattr(datasets, name)(str(tmp_path), train=True, transform=transforms.ToTensor())
    fused = FusionDataset(base, RandomDigits(len(base), seed=5))

    assert len(fused) == COUNT
    for index in range(COUNT):
        sample = fused[index]
        assert int(sample["digit"]) == int(labels[index])
        assert int(sample["sum"]) == int(labels[index]) + int(fused.side[index])
    check_pairing(fused, expected_targets={"sum": lambda label, side: label + side})


def test_emnist_digits_pairs(tmp_path):
    labels = _write_emnist_digits(tmp_path)
    base = datasets.EMNIST(
        str(tmp_path), split="digits", train=True, transform=transforms.ToTensor()
    )
    fused = FusionDataset(base, RandomDigits(len(base), seed=6))

    assert len(fused) == COUNT
    for index in range(COUNT):
        assert int(fused[index]["digit"]) == int(labels[index])
    check_pairing(fused, num_workers=2, batch_size=8)
