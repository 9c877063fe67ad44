"""Epoch metrics of a fusion model as a torchmetrics ``Metric``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch
from torchmetrics import Metric

from mnist_fusion.models.fusion import FusionOutput, predicted_digit, predicted_sum

__all__ = ["FusionMetrics"]


class FusionMetrics(Metric):
    """Digit accuracy, sum accuracy, sum R2, sum MAE and consistency over an epoch.

    Every state is a sum with ``dist_reduce_fx="sum"``, so values synced across
    processes equal the values of one process that saw all the samples.

    - ``digit_accuracy``: fraction of samples whose most likely digit is right (micro
      average, unlike torchmetrics' ``MulticlassAccuracy`` whose default is macro).
    - ``sum_accuracy``: fraction whose predicted sum, rounded to the nearest integer
      and clipped to ``[0, max_sum]``, equals the true sum.
    - ``sum_r2``: ``1 - SS_res / SS_tot`` of the raw sum prediction. NaN, with a
      warning, when fewer than two samples were seen or the targets have zero variance.
    - ``sum_mae``: mean absolute error of the raw sum prediction.
    - ``consistency``: fraction whose predicted sum equals predicted digit plus side.

    Args:
        max_sum: Largest possible sum, for clipping the rounded prediction.

    Examples:
        >>> metrics = FusionMetrics()
        >>> logits = torch.eye(10)[[3, 5]]
        >>> output = FusionOutput(logits, sum=torch.tensor([4.2, 9.0]))
        >>> batch = {"digit": torch.tensor([3, 6]), "sum": torch.tensor([4, 10]),
        ...          "side": torch.tensor([1, 4])}
        >>> metrics.update(output, batch)
        >>> values = {k: round(v.item(), 3) for k, v in metrics.compute().items()}
        >>> values["digit_accuracy"], values["sum_accuracy"], values["consistency"]
        (0.5, 0.5, 1.0)
        >>> values["sum_r2"], values["sum_mae"]
        (0.942, 0.6)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    count: torch.Tensor
    digit_correct: torch.Tensor
    sum_correct: torch.Tensor
    consistent: torch.Tensor
    abs_error: torch.Tensor
    squared_error: torch.Tensor
    target_total: torch.Tensor
    target_squared_total: torch.Tensor

    def __init__(self, max_sum: int = 18, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.max_sum = max_sum
        for name in ("count", "digit_correct", "sum_correct", "consistent"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        # Float64 keeps SS_tot = sum(y^2) - (sum y)^2 / n accurate over large epochs.
        for name in ("abs_error", "squared_error", "target_total", "target_squared_total"):
            self.add_state(
                name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(self, output: FusionOutput, batch: Mapping[str, torch.Tensor]) -> None:  # type: ignore[override]
        """Add one batch of model outputs and its targets."""
        digit, total, side = batch["digit"], batch["sum"], batch["side"]
        if output.sum is None:
            raise ValueError("FusionMetrics needs a regression output, but `output.sum` is None.")
        _check_batch(output, digit, total, side)

        digit_pred = predicted_digit(output)
        sum_pred = predicted_sum(output, self.max_sum)
        raw = output.sum.detach().to(torch.float64)
        target = total.to(torch.float64)

        self.count += digit.numel()
        self.digit_correct += (digit_pred == digit).sum()
        self.sum_correct += (sum_pred == total).sum()
        self.consistent += (sum_pred == digit_pred + side).sum()
        self.abs_error += (raw - target).abs().sum()
        self.squared_error += (raw - target).square().sum()
        self.target_total += target.sum()
        self.target_squared_total += target.square().sum()

    def compute(self) -> dict[str, torch.Tensor]:
        """Return the epoch's values as a flat dict of 0-d float tensors."""
        count = self.count.to(torch.float64)
        return {
            "digit_accuracy": self.digit_correct / count,
            "sum_accuracy": self.sum_correct / count,
            "sum_r2": self._r2(count),
            "sum_mae": self.abs_error / count,
            "consistency": self.consistent / count,
        }

    def _r2(self, count: torch.Tensor) -> torch.Tensor:
        total_variation = self.target_squared_total - self.target_total.square() / count
        if count < 2 or total_variation <= 1e-12 * count:
            warnings.warn(
                f"sum_r2 is undefined for {int(count)} sample(s) whose targets have zero "
                "variance or fewer than two values; returning NaN.",
                UserWarning,
                stacklevel=3,
            )
            return torch.tensor(math.nan, dtype=torch.float64, device=count.device)
        return 1.0 - self.squared_error / total_variation


def _check_batch(
    output: FusionOutput, digit: torch.Tensor, total: torch.Tensor, side: torch.Tensor
) -> None:
    size = output.digit_logits.shape[0]
    shapes = {"sum prediction": output.sum, "digit": digit, "sum": total, "side": side}
    for name, tensor in shapes.items():
        if tensor is not None and tensor.shape != (size,):
            raise ValueError(
                f"Expected `{name}` of shape [{size}] to match the digit logits, "
                f"but got {list(tensor.shape)}."
            )
    for name, tensor in (("digit", digit), ("sum", total), ("side", side)):
        if tensor.is_floating_point():
            raise ValueError(f"Expected integer `{name}` values, but got dtype {tensor.dtype}.")
