"""Tests of the two-image addition dataset."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchvision import datasets

from mnist_fusion.data import TwoImageAddition, default_transform


def _labelled(count: int, offset: int = 0) -> TensorDataset:
    # Each image contains its own index, so a test can read back which item it came from.
    images = (torch.arange(count, dtype=torch.float32) + offset).view(-1, 1, 1, 1)
    return TensorDataset(images, (torch.arange(count) + offset) % 10)


def test_sum_is_sum_of_partner_labels():
    first, second = _labelled(50), _labelled(60, offset=3)
    pairs = TwoImageAddition(first, second, seed=4)
    for index in range(len(pairs)):
        sample = pairs[index]
        partner = int(sample["second_index"])
        assert int(sample["image"].item()) == index
        assert int(sample["second_image"].item()) == partner + 3
        assert int(sample["sum"]) == int(first[index][1]) + int(second[partner][1])


def test_partners_are_distinct_and_seeded():
    first = _labelled(40)
    pairs = TwoImageAddition(first, first, seed=1)
    partners = [int(pairs[i]["second_index"]) for i in range(len(pairs))]
    assert len(set(partners)) == len(partners)
    assert partners == [int(p) for p in TwoImageAddition(first, first, seed=1).partners]
    assert partners != [int(p) for p in TwoImageAddition(first, first, seed=2).partners]


def test_pairing_ignores_global_rng():
    first = _labelled(30)
    torch.manual_seed(0)
    before = TwoImageAddition(first, first, seed=9).partners
    torch.manual_seed(123)
    torch.rand(100)
    after = TwoImageAddition(first, first, seed=9).partners
    assert torch.equal(before, after)


def test_shuffled_workers_keep_pairs(tiny_mnist_root):
    mnist = datasets.MNIST(str(tiny_mnist_root), train=False, transform=default_transform())
    pairs = TwoImageAddition(mnist, mnist, seed=5)
    loader = DataLoader(pairs, batch_size=32, shuffle=True, num_workers=2)
    seen = 0
    for batch in loader:
        for index, partner, total in zip(
            batch["index"].tolist(),
            batch["second_index"].tolist(),
            batch["sum"].tolist(),
            strict=True,
        ):
            assert total == int(mnist.targets[index]) + int(mnist.targets[partner])
            seen += 1
    assert seen == len(mnist)


def test_second_shorter_than_first_raises():
    with pytest.raises(ValueError, match="`second` has 5 items but `first` has 6"):
        TwoImageAddition(_labelled(6), _labelled(5), seed=0)


def test_non_integer_seed_raises():
    with pytest.raises(ValueError, match="`seed` to be an integer, but got 1.5"):
        TwoImageAddition(_labelled(3), _labelled(3), seed=1.5)


def test_index_out_of_range_raises():
    pairs = TwoImageAddition(_labelled(3), _labelled(3), seed=0)
    with pytest.raises(IndexError, match="Index 3 is out of range for a dataset of length 3"):
        pairs[3]
