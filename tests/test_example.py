"""Run examples/mnist_sum.py end to end on the tiny synthetic MNIST files."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from conftest import import_example

from mnist_fusion import checkpoint
from mnist_fusion.data import read_idx
from mnist_fusion.models import FusionModel

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist_sum.py"
MAX_LINES = 80


def _import_example() -> ModuleType:
    return import_example(EXAMPLE, "mnist_sum_example")


def test_example_is_short() -> None:
    lines = EXAMPLE.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"{EXAMPLE.name} has {len(lines)} lines"


def test_example_import_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = _import_example()
    assert callable(module.main)
    assert list(tmp_path.iterdir()) == []


def test_example_defaults() -> None:
    args = _import_example().parse_args([])
    assert args.root == "data"
    assert args.out == "runs/example"
    assert args.epochs == 5
    assert args.seed == 0
    assert args.device == "auto"
    assert args.no_prepare is False


def test_example_trains_on_tiny_mnist(
    tiny_mnist_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--root", str(tiny_mnist_root), "--out", str(tmp_path), "--epochs", "1", "--no-prepare"]
    metrics = _import_example().main(argv)

    test_labels = read_idx(tiny_mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", ndim=1)
    assert metrics["count"] == len(test_labels)
    for name in ("digit_accuracy", "sum_accuracy", "consistency"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["sum_mae"] >= 0.0

    model_path = tmp_path / "model.pt"
    assert isinstance(checkpoint.load(model_path), FusionModel)
    assert checkpoint.load_metadata(model_path) == {"seed": 0}

    printed = capsys.readouterr().out
    assert "digit_accuracy" in printed
    assert "sum_r2" in printed
