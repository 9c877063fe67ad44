"""Run examples/two_image_addition.py on the tiny synthetic MNIST files."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import import_example

from mnist_fusion import checkpoint
from mnist_fusion.data import MNISTSum, TwoImageAddition

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "two_image_addition.py"
CHANCE = 0.1


def _import_example() -> ModuleType:
    return import_example(EXAMPLE, "two_image_example")


def test_import_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    module = _import_example()

    assert callable(module.main)
    assert list(tmp_path.iterdir()) == []


def test_defaults() -> None:
    args = _import_example().parse_args([])

    assert args.root == "data"
    assert args.epochs == 5
    assert args.batch_size == 128
    assert args.encoder == "wide"
    assert args.limit is None


def test_pair_batches_match_dataset(tiny_mnist_root: Path) -> None:
    # The per-item path: torchvision's MNIST with its transform, paired by the dataset.
    data = MNISTSum(tiny_mnist_root, train=False, seed=0)
    pairs = TwoImageAddition(data.images, data.images, seed=3)
    order = torch.tensor([5, 0, 17])

    batch = next(_import_example().pair_batches(data.as_tensors(), pairs.partners, order, 8))

    for row, index in enumerate(order.tolist()):
        sample = pairs[index]
        assert torch.equal(batch["image"][row], sample["image"])
        assert torch.equal(batch["second_image"][row], sample["second_image"])
        assert int(batch["sum"][row]) == int(sample["sum"])


def test_sums_alone_teach_digits(tiny_mnist_root: Path, tmp_path: Path) -> None:
    argv = [
        "--root", str(tiny_mnist_root), "--out", str(tmp_path), "--epochs", "2",
        "--encoder", "small", "--batch-size", "32", "--limit", "400",
    ]  # fmt: skip

    metrics = _import_example().main(argv)

    assert metrics["digit_accuracy"] > 5 * CHANCE
    assert metrics["sum_accuracy"] > 2 * CHANCE
    assert metrics["test_pairs"] == 300
    assert checkpoint.load(tmp_path / "model.pt").config.head.sum_head == "exact"
