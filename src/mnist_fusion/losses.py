"""Training loss of a fusion model: a digit term and a sum term, with shape checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mnist_fusion.models.fusion import FusionOutput

__all__ = ["FusionLoss", "LossOutput"]

_SUM_LOSSES = ("mse",)


class LossOutput(NamedTuple):
    """The weighted total and the unweighted terms of :class:`FusionLoss`.

    Attributes:
        total: ``digit_weight * digit + sum_weight * sum``, the value to backpropagate.
        digit: Mean negative log-likelihood of the true digit.
        sum: Mean squared error of the sum prediction.
    """

    total: torch.Tensor
    digit: torch.Tensor
    sum: torch.Tensor


class FusionLoss(nn.Module):
    """Digit NLL on log-probabilities plus a weighted sum regression loss.

    The digit term applies ``log_softmax`` to the logits, so it is never negative. Every
    prediction must have exactly its target's shape: an ``[N, 1]`` sum against an ``[N]``
    target raises instead of broadcasting to ``[N, N]``.

    Args:
        digit_weight: Weight of the digit term.
        sum_weight: Weight of the sum term.
        sum_loss: ``"mse"``.

    Raises:
        ValueError: For an unknown ``sum_loss`` or a negative weight.

    Examples:
        >>> loss_fn = FusionLoss(sum_weight=0.5)
        >>> output = FusionOutput(torch.zeros(2, 10), sum=torch.tensor([3.0, 5.0]))
        >>> batch = {"digit": torch.tensor([1, 2]), "sum": torch.tensor([3, 7])}
        >>> loss = loss_fn(output, batch)
        >>> round(loss.sum.item(), 4), round(loss.total.item(), 4)
        (2.0, 3.3026)
    """

    def __init__(
        self, digit_weight: float = 1.0, sum_weight: float = 1.0, sum_loss: str = "mse"
    ) -> None:
        super().__init__()
        if sum_loss not in _SUM_LOSSES:
            raise ValueError(
                f"Invalid `sum_loss`={sum_loss!r}; expected one of {list(_SUM_LOSSES)}."
            )
        for name, weight in (("digit_weight", digit_weight), ("sum_weight", sum_weight)):
            # Written as a negation so that a NaN weight is rejected too.
            if not weight >= 0:
                raise ValueError(f"Expected `{name}` >= 0, but got {weight!r}.")
        self.digit_weight = digit_weight
        self.sum_weight = sum_weight
        self.sum_loss = sum_loss

    def forward(self, output: FusionOutput, batch: Mapping[str, torch.Tensor]) -> LossOutput:
        digit_target = batch["digit"]
        sum_target = batch["sum"]
        _check_targets(output.digit_logits, digit_target)

        log_probs = F.log_softmax(output.digit_logits, dim=-1)
        digit_loss = F.nll_loss(log_probs, digit_target.to(torch.int64))

        if output.sum is None:
            raise ValueError(
                "`sum_loss='mse'` needs a regression output, but `output.sum` is None."
            )
        _check_same_shape("sum prediction", output.sum, "sum target", sum_target)
        sum_loss = F.mse_loss(output.sum, sum_target.to(output.sum.dtype))

        total = self.digit_weight * digit_loss + self.sum_weight * sum_loss
        return LossOutput(total=total, digit=digit_loss, sum=sum_loss)

    def extra_repr(self) -> str:
        return (
            f"digit_weight={self.digit_weight}, sum_weight={self.sum_weight}, "
            f"sum_loss={self.sum_loss!r}"
        )


def _check_targets(digit_logits: torch.Tensor, digit_target: torch.Tensor) -> None:
    if digit_logits.ndim != 2 or digit_target.shape != digit_logits.shape[:1]:
        raise ValueError(
            f"Expected digit logits [N, C] and digit target [N], but got "
            f"{list(digit_logits.shape)} and {list(digit_target.shape)}."
        )
    if digit_target.is_floating_point():
        raise ValueError(
            f"Expected an integer digit target, but got dtype {digit_target.dtype}; "
            "a float class index would be truncated."
        )
    if torch.compiler.is_compiling() or digit_target.numel() == 0:
        return

    # On CUDA an out-of-range class index trips a device-side assert, which leaves the
    # CUDA context unusable for the rest of the process. This check raises first.
    classes = digit_logits.shape[1]
    low, high = int(digit_target.min()), int(digit_target.max())
    if low < 0 or high >= classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"Digit target {bad} is outside [0, {classes - 1}], the classes of the "
            f"digit logits [N, {classes}]."
        )


def _check_same_shape(
    name: str, prediction: torch.Tensor, target_name: str, target: torch.Tensor
) -> None:
    if prediction.shape != target.shape:
        raise ValueError(
            f"Shape mismatch: {name} has shape {list(prediction.shape)} but {target_name} has "
            f"shape {list(target.shape)}; they must match exactly (no broadcasting)."
        )
