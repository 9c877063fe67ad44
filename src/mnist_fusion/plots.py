"""Training plots: learning curves from a training history, and a digit confusion matrix.

matplotlib is an optional dependency (``pip install mnist-fusion[plots]``). It is imported
only when a plot is drawn, and figures are drawn on the Agg canvas directly, so plotting
never selects a pyplot backend, never opens a window and keeps no global figure state.
PNG files are written atomically, like every other file this package writes.
"""

from __future__ import annotations

import io
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnist_fusion._io import atomic_write_bytes

__all__ = ["confusion_matrix", "plot_confusion", "plot_history", "require_matplotlib"]

_INSTALL_HINT = "pip install mnist-fusion[plots]"
_DPI = 120

# Record keys drawn on the accuracy panel, as fit names them, with their legend labels.
_ACCURACY_KEYS = {"test_digit_accuracy": "digit accuracy", "test_sum_accuracy": "sum accuracy"}


def require_matplotlib() -> None:
    """Check that matplotlib can be imported, before any slow work whose plots need it.

    Raises:
        ImportError: If matplotlib is missing. The message names the install command.

    Examples:
        >>> require_matplotlib()  # doctest: +SKIP
    """
    _matplotlib()


def confusion_matrix(
    targets: torch.Tensor, predictions: torch.Tensor, *, num_classes: int = 10
) -> torch.Tensor:
    """Count each (true class, predicted class) pair.

    Args:
        targets: Integer tensor ``[N]`` of true classes in ``[0, num_classes)``.
        predictions: Integer tensor ``[N]`` of predicted classes in ``[0, num_classes)``.
        num_classes: Number of classes.

    Returns:
        An int64 tensor ``[num_classes, num_classes]`` whose row ``i``, column ``j`` counts
        the samples of class ``i`` predicted as ``j``.

    Raises:
        TypeError: If an input is not an integer tensor.
        ValueError: If the inputs are not 1-D of one length, ``num_classes`` is not
            positive, or a class is outside ``[0, num_classes)``.

    Examples:
        >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), num_classes=2)
        tensor([[1, 0],
                [1, 1]])
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")

    for name, tensor in (("targets", targets), ("predictions", predictions)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor, got {type(tensor).__name__}; "
                "convert it with torch.as_tensor"
            )
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got dtype {tensor.dtype}")
        if tensor.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(tensor.shape)}")

    if len(targets) != len(predictions):
        raise ValueError(
            f"targets and predictions must have one length, got {len(targets)} and "
            f"{len(predictions)}"
        )

    targets = targets.to(torch.int64).cpu()
    predictions = predictions.to(torch.int64).cpu()
    for name, tensor in (("targets", targets), ("predictions", predictions)):
        outside = (tensor < 0) | (tensor >= num_classes)
        if outside.any():
            raise ValueError(
                f"{name} must be classes 0 to {num_classes - 1}, got {int(tensor[outside][0])}"
            )

    counts = torch.bincount(targets * num_classes + predictions, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def plot_history(history: Sequence[Mapping[str, float]], path: str | os.PathLike[str]) -> Path:
    """Draw the training loss and the test digit and sum accuracy per epoch as a PNG.

    The left panel shows the training loss. The right panel shows
    ``test_digit_accuracy`` and ``test_sum_accuracy``, and is left out when the history has
    no test metrics (``fit`` without an ``eval_loader``).

    Args:
        history: Per-epoch records as :func:`mnist_fusion.training.fit` returns them, or the
            ``"epochs"`` list of a ``history.json`` written by ``mnist-fusion train``. Each
            record needs ``epoch`` and ``loss``; the accuracy keys must be in every record
            or in none.
        path: Destination PNG file; its folder must exist.

    Returns:
        The path written.

    Raises:
        ImportError: If matplotlib is missing. The message names the install command.
        TypeError: If ``history`` is not a sequence of mappings, or a value is not a real
            number.
        ValueError: If ``history`` is empty, or a record lacks a key needed above.
        FileNotFoundError: If the folder of ``path`` does not exist.

    Examples:
        >>> history = [
        ...     {"epoch": 1, "loss": 0.9, "test_digit_accuracy": 0.8, "test_sum_accuracy": 0.7},
        ...     {"epoch": 2, "loss": 0.4, "test_digit_accuracy": 0.9, "test_sum_accuracy": 0.8},
        ... ]
        >>> plot_history(history, "training_curves.png")  # doctest: +SKIP
        PosixPath('training_curves.png')
    """
    epochs, columns = _history_columns(history)
    has_accuracy = all(key in columns for key in _ACCURACY_KEYS)
    figure_class, canvas_class = _matplotlib()

    panels = 2 if has_accuracy else 1
    figure = figure_class(figsize=(5 * panels, 4), dpi=_DPI)
    canvas_class(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]

    loss_axes = axes[0]
    loss_axes.plot(epochs, columns["loss"], marker="o", label="training loss")
    loss_axes.set_title("Training loss")
    loss_axes.set_ylabel("loss")

    if has_accuracy:
        accuracy_axes = axes[1]
        for key, label in _ACCURACY_KEYS.items():
            accuracy_axes.plot(epochs, columns[key], marker="o", label=label)
        accuracy_axes.set_title("Test accuracy")
        accuracy_axes.set_ylabel("accuracy")
        accuracy_axes.set_ylim(0.0, 1.0)
        accuracy_axes.legend(loc="lower right")

    for panel in axes:
        panel.set_xlabel("epoch")
        panel.xaxis.get_major_locator().set_params(integer=True)
        panel.grid(alpha=0.3)

    figure.tight_layout()
    return _save_png(figure, Path(path))


def plot_confusion(confusion: Any, path: str | os.PathLike[str]) -> Path:
    """Draw a confusion matrix as a PNG: counts in the cells, colours by share of each row.

    Each cell is coloured by its share of its row, the fraction of that true class given
    each prediction, so rare and frequent classes are drawn on one scale. The title gives
    the overall accuracy, the trace over the total count.

    Args:
        confusion: Counts ``[K, K]`` (a tensor, numpy array or nested lists) whose row ``i``,
            column ``j`` counts samples of class ``i`` predicted as ``j``, such as
            :func:`confusion_matrix` returns.
        path: Destination PNG file; its folder must exist.

    Returns:
        The path written.

    Raises:
        ImportError: If matplotlib is missing. The message names the install command.
        ValueError: If ``confusion`` is not square and 2-D, has a count that is negative or
            not a whole number, or counts no samples at all.
        FileNotFoundError: If the folder of ``path`` does not exist.

    Examples:
        >>> counts = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
        >>> plot_confusion(counts, "confusion_matrix.png")  # doctest: +SKIP
        PosixPath('confusion_matrix.png')
    """
    counts = _confusion_counts(confusion)
    figure_class, canvas_class = _matplotlib()
    size = counts.shape[0]
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)

    figure = figure_class(figsize=(6, 5.4), dpi=_DPI)
    canvas_class(figure)
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="share of the true class")

    for row in range(size):
        for column in range(size):
            # Dark cells get white text so that every count stays readable.
            color = "white" if shares[row, column] > 0.5 else "black"
            label = str(counts[row, column])
            axes.text(column, row, label, ha="center", va="center", color=color, fontsize=8)

    total = counts.sum()
    axes.set_title(f"Confusion matrix: {total} samples, accuracy {np.trace(counts) / total:.4f}")
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("true digit")
    axes.set_xticks(range(size))
    axes.set_yticks(range(size))
    figure.tight_layout()
    return _save_png(figure, Path(path))


def _matplotlib() -> tuple[type, type]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            f"plotting needs matplotlib, which is not installed; install it with "
            f"`{_INSTALL_HINT}` (or `pip install matplotlib`)"
        ) from error
    return Figure, FigureCanvasAgg


def _history_columns(
    history: Sequence[Mapping[str, float]],
) -> tuple[list[float], dict[str, list[float]]]:
    if isinstance(history, Mapping):
        hint = "; pass history['epochs']" if "epochs" in history else ""
        raise TypeError(f"history must be a sequence of per-epoch records, got a mapping{hint}")
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise TypeError(
            f"history must be a sequence of per-epoch records, got {type(history).__name__}"
        )
    if not history:
        raise ValueError("history is empty; train for at least one epoch before plotting")

    for index, record in enumerate(history):
        if not isinstance(record, Mapping):
            raise TypeError(
                f"history[{index}] must be a mapping of names to numbers, got "
                f"{type(record).__name__}"
            )

    has_accuracy = [any(key in record for key in _ACCURACY_KEYS) for record in history]
    if any(has_accuracy) and not all(has_accuracy):
        raise ValueError(
            f"history[{has_accuracy.index(False)}] has no test accuracy but other records do; "
            "the accuracy keys must be in every record or in none"
        )

    keys = ["epoch", "loss"] + (list(_ACCURACY_KEYS) if has_accuracy[0] else [])
    columns = {key: [_number(history, index, key) for index in range(len(history))] for key in keys}
    return columns.pop("epoch"), columns


def _number(history: Sequence[Mapping[str, float]], index: int, key: str) -> float:
    record = history[index]
    if key not in record:
        raise ValueError(f"history[{index}] has no {key!r}; found keys {sorted(record)}")

    value = record[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"history[{index}][{key!r}] must be a real number, got {type(value).__name__} {value!r}"
        )
    return float(value)


def _confusion_counts(confusion: Any) -> np.ndarray:
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.detach().cpu().numpy()
    values = np.asarray(confusion)

    if values.ndim != 2 or values.shape[0] != values.shape[1] or values.shape[0] == 0:
        raise ValueError(
            f"confusion must be a square 2-D matrix of counts [K, K], got shape {values.shape}"
        )
    is_real = np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)
    if not is_real:
        raise ValueError(f"confusion must hold real counts, got dtype {values.dtype}")

    whole = np.isfinite(values) & (values >= 0) & (values == np.round(values))
    if not whole.all():
        row, column = np.argwhere(~whole)[0]
        raise ValueError(
            f"confusion must hold whole non-negative counts, got {values[row, column].item()!r} at "
            f"row {row}, column {column}"
        )
    if values.sum() == 0:
        raise ValueError("confusion counts no samples, so there is nothing to plot")

    return values.astype(np.int64)


def _save_png(figure: Any, path: Path) -> Path:
    # savefig to memory first, so the file appears only complete (atomic_write_bytes).
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path
