"""Epoch metrics of a fusion model as a torchmetrics ``Metric``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torchmetrics import Metric

from mnist_fusion.metrics.functional import STATISTICS, fusion_compute, fusion_statistics
from mnist_fusion.models.fusion import FusionOutput

__all__ = ["FusionMetrics"]


class FusionMetrics(Metric):
    """Digit and sum accuracy, sum R2 and MAE, and consistency over an epoch.

    Every state is a sum registered with ``dist_reduce_fx="sum"``, so values synced
    across processes (as ``compute()`` does under DDP) equal the values of one process
    that saw all the samples. The states follow the device of the inputs: an update
    with CUDA tensors moves the metric to that device.

    ``compute()`` returns a flat dict of 0-d float64 tensors, which Lightning's
    ``log_dict`` accepts and ``json.dumps`` writes after ``.item()``:

    - ``digit_accuracy``: fraction of images whose most likely digit is right (micro
      average, unlike torchmetrics' ``MulticlassAccuracy`` whose default is macro).
      A two-image batch counts both images.
    - ``digit_accuracy_0`` ... ``digit_accuracy_{C-1}``: the same per true digit; NaN
      for a digit that no image showed.
    - ``sum_accuracy``: fraction whose predicted sum equals the true sum. The
      prediction is the argmax of ``sum_logits`` when the output has them, else the
      regression ``sum`` rounded to the nearest integer and clipped to
      ``[0, max_sum]``.
    - ``sum_r2``: ``1 - SS_res / SS_tot`` of the unrounded sum prediction (for
      ``sum_logits``, the argmax). NaN, with a ``UserWarning``, when fewer than two
      samples were seen or the targets have zero variance.
    - ``sum_mae``: mean absolute error of the same prediction.
    - ``consistency``: fraction whose predicted sum equals the predicted digit plus the
      side input, or, for a two-image batch, plus the second predicted digit.

    :meth:`confusion_matrix` returns the ``[C, C]`` digit confusion matrix.

    Args:
        max_sum: Largest possible sum, for clipping the rounded prediction.
        num_classes: Number of digit classes.
        **kwargs: Passed to ``torchmetrics.Metric``.

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
        >>> values["sum_r2"], values["sum_mae"], values["digit_accuracy_3"]
        (0.942, 0.6, 1.0)
        >>> int(metrics.confusion_matrix()[6, 5])
        1
    """

    is_differentiable = False
    # The values point both ways: accuracies are better high, sum_mae is better low.
    higher_is_better = None
    full_state_update = False

    count: torch.Tensor
    confusion: torch.Tensor
    sum_correct: torch.Tensor
    consistent: torch.Tensor
    abs_error: torch.Tensor
    squared_error: torch.Tensor
    target_total: torch.Tensor
    target_squared_total: torch.Tensor

    def __init__(self, max_sum: int = 18, *, num_classes: int = 10, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.max_sum = max_sum
        self.num_classes = num_classes
        for name in ("count", "sum_correct", "consistent"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state(
            "confusion",
            default=torch.zeros(num_classes, num_classes, dtype=torch.int64),
            dist_reduce_fx="sum",
        )
        # Float64 keeps SS_tot = sum(y^2) - (sum y)^2 / n accurate over large epochs.
        for name in ("abs_error", "squared_error", "target_total", "target_squared_total"):
            self.add_state(
                name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(self, output: FusionOutput, batch: Mapping[str, torch.Tensor]) -> None:  # type: ignore[override]
        """Add one batch of model outputs and its targets.

        Args:
            output: The model's output.
            batch: Targets ``digit`` and ``sum``, plus ``side`` (one image) or
                ``second_digit`` (two images).

        Raises:
            ValueError: For mismatched batch sizes, non-integer targets, or a digit, sum
                or side value outside its range.
        """
        statistics = fusion_statistics(
            output, batch, num_classes=self.num_classes, max_sum=self.max_sum
        )
        device = output.digit_logits.device
        if self.count.device != device:
            self.to(device)
        for name in STATISTICS:
            setattr(self, name, getattr(self, name) + statistics[name])

    def compute(self) -> dict[str, torch.Tensor]:
        """Return the epoch's values as a flat dict of 0-d float64 tensors."""
        # Frames up to the caller: fusion_compute, this method, torchmetrics' wrapper.
        return fusion_compute(self._statistics(), stacklevel=4)

    def confusion_matrix(self) -> torch.Tensor:
        """Return the digit confusion matrix, rows true digit and columns predicted.

        Synced across processes like :meth:`compute`.

        Returns:
            An int64 tensor ``[num_classes, num_classes]``.
        """
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self._to_sync,
            should_unsync=self._should_unsync,
        ):
            return self.confusion.clone()

    def _statistics(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in STATISTICS}
