import builtins
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_mnist

from mnist_fusion import plots
from mnist_fusion.cli import CONFUSION_NAME, CURVES_NAME, _digit_confusion, main
from mnist_fusion.data import BatchLoader, MNISTSum
from mnist_fusion.models import FusionModel
from mnist_fusion.plots import confusion_matrix, plot_confusion, plot_history
from mnist_fusion.training import evaluate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

HISTORY = [
    {"epoch": 1.0, "loss": 0.9, "test_digit_accuracy": 0.80, "test_sum_accuracy": 0.60},
    {"epoch": 2.0, "loss": 0.5, "test_digit_accuracy": 0.90, "test_sum_accuracy": 0.75},
    {"epoch": 3.0, "loss": 0.3, "test_digit_accuracy": 0.95, "test_sum_accuracy": 0.85},
]
CONFUSION = np.diag(np.full(10, 9)) + 1


def read_png(path: Path) -> np.ndarray:
    image = pytest.importorskip("matplotlib.image")
    return image.imread(path)


@pytest.fixture
def matplotlib():
    return pytest.importorskip("matplotlib")


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Make every import of matplotlib fail, as on an install without the plots extra."""
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)


# confusion_matrix


def test_confusion_matrix_counts_pairs():
    targets = torch.tensor([0, 0, 1, 2, 2, 2])
    predictions = torch.tensor([0, 1, 1, 2, 0, 2])

    counts = confusion_matrix(targets, predictions, num_classes=3)

    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_confusion_matrix_total_is_count():
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 10, (500,), generator=generator)
    predictions = torch.randint(0, 10, (500,), generator=generator)

    counts = confusion_matrix(targets, predictions)

    assert counts.shape == (10, 10)
    assert counts.dtype == torch.int64
    assert int(counts.sum()) == 500
    assert int(counts.trace()) == int((targets == predictions).sum())


@pytest.mark.parametrize(
    ("targets", "predictions", "error", "message"),
    [
        (torch.tensor([0, 10]), torch.tensor([0, 1]), ValueError, r"targets must be classes 0 "),
        (torch.tensor([0, 1]), torch.tensor([-1, 1]), ValueError, r"predictions .* got -1"),
        (torch.tensor([0, 1]), torch.tensor([0]), ValueError, r"one length, got 2 and 1"),
        (torch.tensor([[0]]), torch.tensor([[0]]), ValueError, r"targets must be 1-D"),
        (torch.tensor([0.0]), torch.tensor([0]), TypeError, r"integer tensor, got dtype"),
        ([0, 1], torch.tensor([0, 1]), TypeError, r"targets must be a torch\.Tensor, got list"),
    ],
    ids=["target-10", "prediction-negative", "lengths", "2-d", "float", "list"],
)
def test_confusion_matrix_rejects(targets, predictions, error, message):
    with pytest.raises(error, match=message):
        confusion_matrix(targets, predictions)


# plot_history


def test_plot_history_writes_png(matplotlib, tmp_path):
    path = plot_history(HISTORY, tmp_path / "curves.png")

    assert path == tmp_path / "curves.png"
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_history_two_panels(matplotlib, tmp_path):
    # Two panels side by side make the figure twice as wide as it is tall, one panel not.
    both = read_png(plot_history(HISTORY, tmp_path / "both.png"))
    loss_only = [{"epoch": r["epoch"], "loss": r["loss"]} for r in HISTORY]
    single = read_png(plot_history(loss_only, tmp_path / "loss.png"))

    assert both.shape[1] == 2 * single.shape[1]
    assert both.shape[0] == single.shape[0]


def test_plot_history_draws_something(matplotlib, tmp_path):
    pixels = read_png(plot_history(HISTORY, tmp_path / "curves.png"))

    assert pixels[..., :3].std() > 0.05


def test_plot_history_from_history_json(matplotlib, tmp_path):
    history_json = tmp_path / "history.json"
    history_json.write_text(json.dumps({"epochs": HISTORY}))

    path = plot_history(json.loads(history_json.read_text())["epochs"], tmp_path / "c.png")

    assert path.is_file()


def test_plot_history_leaves_no_temporary(matplotlib, tmp_path):
    plot_history(HISTORY, tmp_path / "curves.png")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]


def test_plot_history_failed_save_keeps_file(matplotlib, tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    path.write_bytes(b"previous")

    def failing_replace(source, destination):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        plot_history(HISTORY, path)

    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]


@pytest.mark.parametrize(
    ("history", "error", "message"),
    [
        ([], ValueError, r"history is empty"),
        ({"epochs": HISTORY}, TypeError, r"got a mapping; pass history\['epochs'\]"),
        ("history.json", TypeError, r"sequence of per-epoch records, got str"),
        ([1.0], TypeError, r"history\[0\] must be a mapping"),
        ([{"epoch": 1}], ValueError, r"history\[0\] has no 'loss'; found keys \['epoch'\]"),
        ([{"epoch": 1, "loss": "0.5"}], TypeError, r"history\[0\]\['loss'\] must be a real"),
        (
            [HISTORY[0], {"epoch": 2, "loss": 0.4}],
            ValueError,
            r"history\[1\] has no test accuracy but other records do",
        ),
        (
            [{"epoch": 1, "loss": 0.4, "test_digit_accuracy": 0.5}],
            ValueError,
            r"history\[0\] has no 'test_sum_accuracy'",
        ),
    ],
    ids=["empty", "mapping", "string", "number", "no-loss", "string-loss", "mixed", "one-acc"],
)
def test_plot_history_rejects(tmp_path, history, error, message):
    # Checked before matplotlib is imported, so these run without it.
    with pytest.raises(error, match=message):
        plot_history(history, tmp_path / "curves.png")

    assert not (tmp_path / "curves.png").exists()


def test_plot_history_missing_folder(matplotlib, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"folder .*absent' does not exist"):
        plot_history(HISTORY, tmp_path / "absent" / "curves.png")


# plot_confusion


@pytest.mark.parametrize(
    "confusion",
    [CONFUSION, torch.from_numpy(CONFUSION), CONFUSION.tolist(), CONFUSION.astype(np.float32)],
    ids=["array", "tensor", "lists", "float"],
)
def test_plot_confusion_accepts(matplotlib, tmp_path, confusion):
    path = plot_confusion(confusion, tmp_path / "confusion.png")

    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_confusion_draws_something(matplotlib, tmp_path):
    pixels = read_png(plot_confusion(CONFUSION, tmp_path / "confusion.png"))

    assert pixels[..., :3].std() > 0.05


def test_plot_confusion_empty_rows(matplotlib, tmp_path):
    # A class with no samples has a zero row, which has no shares to colour.
    counts = CONFUSION.copy()
    counts[3] = 0

    assert plot_confusion(counts, tmp_path / "confusion.png").is_file()


@pytest.mark.parametrize(
    ("confusion", "message"),
    [
        (np.ones((10, 9)), r"square 2-D matrix of counts \[K, K\], got shape \(10, 9\)"),
        (np.ones(10), r"got shape \(10,\)"),
        (np.zeros((0, 0)), r"got shape \(0, 0\)"),
        (np.full((2, 2), -1), r"whole non-negative counts, got -1 at row 0, column 0"),
        (np.array([[1.0, 0.5], [0.0, 1.0]]), r"got 0\.5 at row 0, column 1"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), r"got nan at row 0, column 1"),
        (np.zeros((10, 10)), r"counts no samples"),
        (np.array([["a"]]), r"real counts, got dtype <U1"),
        (np.ones((2, 2), dtype=bool), r"real counts, got dtype bool"),
    ],
    ids=["not-square", "1-d", "empty", "negative", "fraction", "nan", "zero", "text", "bool"],
)
def test_plot_confusion_rejects(tmp_path, confusion, message):
    with pytest.raises(ValueError, match=message):
        plot_confusion(confusion, tmp_path / "confusion.png")

    assert not (tmp_path / "confusion.png").exists()


# Without matplotlib


def test_require_matplotlib_message(no_matplotlib):
    with pytest.raises(ImportError, match=re.escape("pip install mnist-fusion[plots]")):
        plots.require_matplotlib()


def test_plot_history_without_matplotlib(no_matplotlib, tmp_path):
    with pytest.raises(ImportError, match=r"plotting needs matplotlib, which is not installed"):
        plot_history(HISTORY, tmp_path / "curves.png")


# mnist-fusion train --plots


@pytest.fixture(scope="module")
def plot_root(tmp_path_factory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("plot_mnist"), train=160, test=40)


def train_args(root: Path, out: Path) -> list[str]:
    return ["train", "--root", str(root), "--out", str(out), "--epochs", "2", "--device", "cpu"]


def test_train_plots_writes_pngs(matplotlib, plot_root, tmp_path):
    out = tmp_path / "out"

    code = main([*train_args(plot_root, out), "--plots"])

    assert code == 0
    for name in (CURVES_NAME, CONFUSION_NAME):
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE), name


def test_train_plots_without_matplotlib(plot_root, tmp_path, no_matplotlib, capsys):
    out = tmp_path / "out"

    code = main([*train_args(plot_root, out), "--plots"])

    assert code == 1
    assert "pip install mnist-fusion[plots]" in capsys.readouterr().err
    # The check runs before training, so no time is spent on a run whose plots would fail.
    assert not (out / "model.pt").exists()


def test_digit_confusion_matches_accuracy(plot_root):
    torch.manual_seed(0)
    model = FusionModel()
    loader = BatchLoader(MNISTSum(plot_root, train=False, seed=0).as_tensors(), batch_size=16)

    counts = _digit_confusion(model, loader, torch.device("cpu"))
    metrics = evaluate(model, loader, device="cpu", progress=False)

    assert int(counts.sum()) == 40
    assert counts.trace().item() / 40 == pytest.approx(metrics["digit_accuracy"], abs=1e-12)
