"""Fusion metrics as plain functions of one batch, and the helpers the Metric class shares.

:class:`~mnist_fusion.metrics.FusionMetrics` adds up the statistics of
``fusion_statistics`` over an epoch and turns them into values with
``fusion_compute``; :func:`fusion_metrics` does both for a single batch, so the two
paths give the same numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch

from mnist_fusion.metrics._validate import check_update
from mnist_fusion.models.fusion import FusionOutput, predicted_digit, predicted_sum

__all__ = [
    "STATISTICS",
    "fusion_compute",
    "fusion_confusion_matrix",
    "fusion_metrics",
    "fusion_statistics",
]

STATISTICS = (
    "count",
    "confusion",
    "sum_correct",
    "consistent",
    "abs_error",
    "squared_error",
    "target_total",
    "target_squared_total",
)
"""Names of the additive statistics that :func:`fusion_statistics` returns."""


def fusion_metrics(
    output: FusionOutput,
    batch: Mapping[str, torch.Tensor],
    *,
    num_classes: int = 10,
    max_sum: int = 18,
) -> dict[str, torch.Tensor]:
    """Return the values of :class:`~mnist_fusion.metrics.FusionMetrics` for one batch.

    Args:
        output: The model's output.
        batch: Targets ``digit`` and ``sum``, plus ``side`` (one image) or
            ``second_digit`` (two images).
        num_classes: Number of digit classes.
        max_sum: Largest possible sum.

    Returns:
        A flat dict of 0-d float64 tensors; the keys are described on
        :class:`~mnist_fusion.metrics.FusionMetrics`.

    Raises:
        ValueError: For mismatched batch sizes, non-integer targets, or a digit, sum or
            side value outside its range.

    Examples:
        >>> output = FusionOutput(torch.eye(10)[[3, 5]], sum=torch.tensor([4.2, 9.0]))
        >>> batch = {"digit": torch.tensor([3, 6]), "sum": torch.tensor([4, 10]),
        ...          "side": torch.tensor([1, 4])}
        >>> values = fusion_metrics(output, batch)
        >>> float(values["digit_accuracy"]), float(values["consistency"])
        (0.5, 1.0)
    """
    statistics = fusion_statistics(output, batch, num_classes=num_classes, max_sum=max_sum)
    return fusion_compute(statistics, stacklevel=3)


def fusion_confusion_matrix(
    output: FusionOutput,
    batch: Mapping[str, torch.Tensor],
    *,
    num_classes: int = 10,
    max_sum: int = 18,
) -> torch.Tensor:
    """Return the digit confusion matrix of one batch: rows true digit, columns predicted.

    Args:
        output: The model's output.
        batch: Targets, as for :func:`fusion_metrics`.
        num_classes: Number of digit classes.
        max_sum: Largest possible sum, for checking the sum targets.

    Returns:
        An int64 tensor ``[num_classes, num_classes]``; a two-image batch counts both
        images.

    Raises:
        ValueError: As :func:`fusion_metrics`.

    Examples:
        >>> output = FusionOutput(torch.eye(10)[[3, 5]], sum=torch.tensor([4.0, 9.0]))
        >>> batch = {"digit": torch.tensor([3, 6]), "sum": torch.tensor([4, 10]),
        ...          "side": torch.tensor([1, 4])}
        >>> matrix = fusion_confusion_matrix(output, batch)
        >>> int(matrix[3, 3]), int(matrix[6, 5]), int(matrix.sum())
        (1, 1, 2)
    """
    statistics = fusion_statistics(output, batch, num_classes=num_classes, max_sum=max_sum)
    return statistics["confusion"]


def fusion_statistics(
    output: FusionOutput,
    batch: Mapping[str, torch.Tensor],
    *,
    num_classes: int,
    max_sum: int,
) -> dict[str, torch.Tensor]:
    """Check one batch and return its additive statistics, named as in :data:`STATISTICS`.

    Every statistic is a sum over samples, so the statistics of an epoch are the sums
    of its batches' statistics, on one process or across many. The tensors lie on the
    device of ``output.digit_logits``.

    The point prediction of the sum is the argmax of ``sum_logits`` when the output
    has them, else the regression ``sum``. Accuracy and consistency compare that
    value rounded to an integer and clipped to ``[0, max_sum]``; R2 and MAE use it
    unrounded (for ``sum_logits``, the argmax itself).

    Raises:
        ValueError: As :func:`fusion_metrics`.
    """
    two_image = check_update(output, batch, num_classes=num_classes, max_sum=max_sum)
    device = output.digit_logits.device
    named_side = not two_image and isinstance(batch["side"], Mapping)
    if two_image:
        names: tuple[str, ...] = ("digit", "second_digit", "sum")
    else:
        names = ("digit", "sum") if named_side else ("digit", "side", "sum")
    target = {name: batch[name].to(device) for name in names}

    digit_pred = predicted_digit(output)
    confusion = _confusion(target["digit"], digit_pred, num_classes)
    if two_image:
        second_pred = output.second_digit_logits.argmax(dim=-1)
        confusion = confusion + _confusion(target["second_digit"], second_pred, num_classes)
        expected_sum = digit_pred + second_pred
    elif named_side:
        # The target may be any function of the named inputs; what they add to the
        # digit is the true sum minus the true digit.
        expected_sum = digit_pred + (target["sum"] - target["digit"])
    else:
        expected_sum = digit_pred + target["side"]

    sum_pred = predicted_sum(output, max_sum)
    point = _sum_point(output, sum_pred)
    true_sum = target["sum"].to(torch.float64)
    return {
        "count": torch.tensor(len(sum_pred), dtype=torch.int64, device=device),
        "confusion": confusion,
        "sum_correct": (sum_pred == target["sum"]).sum(),
        "consistent": (sum_pred == expected_sum).sum(),
        "abs_error": (point - true_sum).abs().sum(),
        "squared_error": (point - true_sum).square().sum(),
        "target_total": true_sum.sum(),
        "target_squared_total": true_sum.square().sum(),
    }


def fusion_compute(
    statistics: Mapping[str, torch.Tensor], *, stacklevel: int = 2
) -> dict[str, torch.Tensor]:
    """Turn summed statistics into the flat dict of metric values.

    Args:
        statistics: The sums of :func:`fusion_statistics` over any number of batches.
        stacklevel: Frames between the caller to blame and the R2 warning's call to
            :func:`fusion_compute`, counted as in ``warnings.warn``.

    Returns:
        ``digit_accuracy``, ``sum_accuracy``, ``sum_r2``, ``sum_mae``, ``consistency``
        and ``digit_accuracy_0`` to ``digit_accuracy_{C-1}``: 0-d float64 tensors. A
        class that no sample has gets NaN accuracy.
    """
    count = statistics["count"].to(torch.float64)
    confusion = statistics["confusion"].to(torch.float64)
    values = {
        "digit_accuracy": confusion.trace() / confusion.sum(),
        "sum_accuracy": statistics["sum_correct"] / count,
        "sum_r2": _r2(statistics, count, stacklevel + 1),
        "sum_mae": statistics["abs_error"] / count,
        "consistency": statistics["consistent"] / count,
    }
    per_class = confusion.diagonal() / confusion.sum(dim=1)
    for digit, accuracy in enumerate(per_class.unbind()):
        values[f"digit_accuracy_{digit}"] = accuracy
    return values


def _confusion(target: torch.Tensor, prediction: torch.Tensor, num_classes: int) -> torch.Tensor:
    codes = target.to(torch.int64) * num_classes + prediction
    return torch.bincount(codes, minlength=num_classes**2).reshape(num_classes, num_classes)


def _sum_point(output: FusionOutput, sum_pred: torch.Tensor) -> torch.Tensor:
    if output.sum_logits is not None:
        return sum_pred.to(torch.float64)
    return output.sum.detach().to(torch.float64)


def _r2(
    statistics: Mapping[str, torch.Tensor], count: torch.Tensor, stacklevel: int
) -> torch.Tensor:
    total = statistics["target_total"]
    total_variation = statistics["target_squared_total"] - total.square() / count
    # The relative threshold absorbs the rounding of sum(y^2) - (sum y)^2 / n.
    if count < 2 or total_variation <= 1e-12 * count:
        warnings.warn(
            f"sum_r2 is undefined for {int(count)} sample(s) whose targets have zero "
            "variance or fewer than two values; returning NaN.",
            UserWarning,
            stacklevel=stacklevel,
        )
        return torch.tensor(math.nan, dtype=torch.float64, device=count.device)
    return 1.0 - statistics["squared_error"] / total_variation
