"""Training loss of a fusion model: a digit term and a sum term, with shape checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mnist_fusion.models.fusion import FusionOutput

__all__ = ["SUM_LOSSES", "FusionLoss", "LossOutput"]

SUM_LOSSES = ("mse", "huber", "cross_entropy", "auto")
"""Accepted values of ``FusionLoss(sum_loss=...)``."""


class LossOutput(NamedTuple):
    """The total and the unweighted terms of :class:`FusionLoss`.

    Attributes:
        total: The value to backpropagate: the weighted sum of the two terms, or their
            uncertainty-weighted sum.
        digit: Mean negative log-likelihood of the true digit; 0 when ``digit_weight``
            is 0, because the term is then not computed.
        sum: The sum term chosen by ``sum_loss``.

    Examples:
        >>> loss = LossOutput(torch.tensor(2.5), digit=torch.tensor(2.0), sum=torch.tensor(1.0))
        >>> loss.total.item(), loss._fields
        (2.5, ('total', 'digit', 'sum'))
    """

    total: torch.Tensor
    digit: torch.Tensor
    sum: torch.Tensor


class FusionLoss(nn.Module):
    """Digit NLL on log-probabilities plus a weighted sum loss.

    The digit term applies ``log_softmax`` to ``digit_logits``, so it is never negative.
    With ``digit_label_smoothing=eps`` its target puts ``1 - eps`` on the true digit and
    spreads ``eps`` evenly over all classes, as ``nn.CrossEntropyLoss(label_smoothing=eps)``
    does; the sum term is never smoothed.
    When the output has ``second_digit_logits`` and the batch ``second_digit``
    (two-image addition), the digit term averages over both images. With
    ``digit_weight=0`` the loss never reads ``batch["digit"]``, so sum-only
    supervision needs no digit labels.

    The sum term is chosen by ``sum_loss``:

    - ``"mse"``: mean squared error of the regression output ``sum``;
    - ``"huber"``: Huber loss of ``sum`` with threshold ``huber_delta``;
    - ``"cross_entropy"``: ``log_softmax`` of ``sum_logits``, then the NLL of the true
      sum. For log-probabilities (as an exact head gives) ``log_softmax`` changes
      nothing, so this is the NLL of that distribution;
    - ``"auto"``: ``"cross_entropy"`` when the output has ``sum_logits``, else ``"mse"``.

    With ``uncertainty_weighting=True`` the module has two learnable log-variances
    ``s = (s_digit, s_sum)``, initialised to 0, and the total is
    ``sum_i w_i * (exp(-s_i) * L_i + s_i)`` (Kendall, Gal and Cipolla, CVPR 2018). The
    paper writes the Gaussian regression term as ``(exp(-s) * L + s) / 2``; that factor
    1/2 scales the whole term, so ``sum_weight=0.5`` gives the paper's form exactly.
    The optimizer must include ``loss_fn.parameters()``; :func:`mnist_fusion.training.fit`
    adds them to the optimizer when they are missing.

    Every prediction must have exactly its target's shape: an ``[N, 1]`` sum against an
    ``[N]`` target raises instead of broadcasting to ``[N, N]``. Integer targets may come
    as floats with whole values; a fractional value raises instead of being truncated.

    Args:
        digit_weight: Weight of the digit term.
        sum_weight: Weight of the sum term.
        sum_loss: One of :data:`SUM_LOSSES`.
        huber_delta: Threshold of the Huber loss, where it turns from quadratic to
            linear; used by ``sum_loss="huber"`` only.
        uncertainty_weighting: Learn the weighting of the two terms.
        digit_label_smoothing: Share of the digit target spread over all classes, in
            ``[0, 1)``.

    Raises:
        ValueError: For an unknown ``sum_loss``, a negative weight, a ``huber_delta``
            that is not positive, both weights 0, or a ``digit_label_smoothing``
            outside ``[0, 1)``.

    Examples:
        >>> loss_fn = FusionLoss(sum_weight=0.5)
        >>> output = FusionOutput(torch.zeros(2, 10), sum=torch.tensor([3.0, 5.0]))
        >>> batch = {"digit": torch.tensor([1, 2]), "sum": torch.tensor([3, 7])}
        >>> loss = loss_fn(output, batch)
        >>> round(loss.sum.item(), 4), round(loss.total.item(), 4)
        (2.0, 3.3026)
        >>> scores = FusionOutput(torch.zeros(2, 10), sum_logits=torch.zeros(2, 19))
        >>> round(FusionLoss(sum_loss="auto")(scores, batch).sum.item(), 4)
        2.9444
    """

    log_variances: nn.Parameter | None

    def __init__(
        self,
        digit_weight: float = 1.0,
        sum_weight: float = 1.0,
        sum_loss: str = "mse",
        *,
        huber_delta: float = 1.0,
        uncertainty_weighting: bool = False,
        digit_label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        _check_options(digit_weight, sum_weight, sum_loss, huber_delta)
        # Written as a negation so that NaN is rejected too.
        if not 0 <= digit_label_smoothing < 1:
            raise ValueError(
                f"Expected `digit_label_smoothing` in [0, 1), but got {digit_label_smoothing!r}."
            )
        self.digit_weight = digit_weight
        self.sum_weight = sum_weight
        self.sum_loss = sum_loss
        self.huber_delta = huber_delta
        self.uncertainty_weighting = uncertainty_weighting
        self.digit_label_smoothing = digit_label_smoothing
        if uncertainty_weighting:
            self.log_variances = nn.Parameter(torch.zeros(2))
        else:
            self.register_parameter("log_variances", None)

    def forward(self, output: FusionOutput, batch: Mapping[str, torch.Tensor]) -> LossOutput:
        """Return the total loss and its two terms for one batch.

        Args:
            output: The model's output.
            batch: Targets: ``sum``, and ``digit`` unless ``digit_weight`` is 0 (plus
                ``second_digit`` for a two-image output).

        Returns:
            The total and the unweighted terms, each a 0-d tensor.

        Raises:
            ValueError: If a target is missing, has another shape than its prediction, a
                fractional or out-of-range value, or the output lacks the prediction
                that ``sum_loss`` needs.
        """
        if "sum" not in batch:
            raise ValueError(f"Missing `sum` target: the batch contains {sorted(batch)}.")
        sum_term = self._sum_term(output, batch["sum"])
        if self.digit_weight == 0:
            digit_term = torch.zeros((), dtype=sum_term.dtype, device=sum_term.device)
        else:
            digit_term = _digit_term(output, batch, self.digit_label_smoothing)
        return LossOutput(total=self._total(digit_term, sum_term), digit=digit_term, sum=sum_term)

    def resolved_sum_loss(self, output: FusionOutput) -> str:
        """Return the sum loss used for ``output``: ``sum_loss`` with ``"auto"`` resolved.

        Examples:
            >>> FusionLoss(sum_loss="auto").resolved_sum_loss(FusionOutput(torch.zeros(1, 10)))
            'mse'
        """
        if self.sum_loss != "auto":
            return self.sum_loss
        return "cross_entropy" if output.sum_logits is not None else "mse"

    def _sum_term(self, output: FusionOutput, target: torch.Tensor) -> torch.Tensor:
        kind = self.resolved_sum_loss(output)
        if kind == "cross_entropy":
            return _sum_cross_entropy(output.sum_logits, target, self.sum_loss)
        prediction = _regression_output(output, self.sum_loss)
        _check_same_shape("sum prediction", prediction, "sum target", target)
        target = target.to(prediction.dtype)
        if kind == "huber":
            return F.huber_loss(prediction, target, delta=self.huber_delta)
        return F.mse_loss(prediction, target)

    def _total(self, digit_term: torch.Tensor, sum_term: torch.Tensor) -> torch.Tensor:
        if self.log_variances is None:
            return self.digit_weight * digit_term + self.sum_weight * sum_term
        s_digit, s_sum = self.log_variances.to(sum_term.dtype).unbind()
        total = self.sum_weight * (torch.exp(-s_sum) * sum_term + s_sum)
        if self.digit_weight != 0:
            total = total + self.digit_weight * (torch.exp(-s_digit) * digit_term + s_digit)
        return total

    def extra_repr(self) -> str:
        return (
            f"digit_weight={self.digit_weight}, sum_weight={self.sum_weight}, "
            f"sum_loss={self.sum_loss!r}, huber_delta={self.huber_delta}, "
            f"uncertainty_weighting={self.uncertainty_weighting}, "
            f"digit_label_smoothing={self.digit_label_smoothing}"
        )


def _check_options(
    digit_weight: float, sum_weight: float, sum_loss: str, huber_delta: float
) -> None:
    if sum_loss not in SUM_LOSSES:
        raise ValueError(f"Invalid `sum_loss`={sum_loss!r}; expected one of {list(SUM_LOSSES)}.")
    for name, weight in (("digit_weight", digit_weight), ("sum_weight", sum_weight)):
        # Written as a negation so that a NaN weight is rejected too.
        if not weight >= 0:
            raise ValueError(f"Expected `{name}` >= 0, but got {weight!r}.")
    if digit_weight == 0 and sum_weight == 0:
        raise ValueError(
            "Both `digit_weight` and `sum_weight` are 0, so the loss would train nothing; "
            "give at least one term a positive weight."
        )
    if not huber_delta > 0:
        raise ValueError(f"Expected `huber_delta` > 0, but got {huber_delta!r}.")


def _digit_term(
    output: FusionOutput, batch: Mapping[str, torch.Tensor], smoothing: float
) -> torch.Tensor:
    pairs = [("digit", output.digit_logits)]
    second_logits = getattr(output, "second_digit_logits", None)
    if second_logits is not None and "second_digit" in batch:
        pairs.append(("second_digit", second_logits))

    terms, count = [], 0
    for name, logits in pairs:
        if name not in batch:
            raise ValueError(
                f"Missing `{name}` target: the batch contains {sorted(batch)}. For sum-only "
                "supervision pass digit_weight=0."
            )
        target = _class_target(f"{name} target", batch[name], logits)
        terms.append(F.cross_entropy(logits, target, reduction="sum", label_smoothing=smoothing))
        count += target.numel()
    # Dividing the summed NLL by the number of images weights both images alike.
    return torch.stack(terms).sum() / max(count, 1)


def _sum_cross_entropy(
    sum_logits: torch.Tensor | None, target: torch.Tensor, sum_loss: str
) -> torch.Tensor:
    if sum_logits is None:
        raise ValueError(
            f"`sum_loss={sum_loss!r}` needs sum scores, but `output.sum_logits` is None; "
            "use sum_loss='mse' or 'huber' for a regression output."
        )
    target = _class_target("sum target", target, sum_logits)
    return F.nll_loss(F.log_softmax(sum_logits, dim=-1), target)


def _regression_output(output: FusionOutput, sum_loss: str) -> torch.Tensor:
    if output.sum is None:
        raise ValueError(
            f"`sum_loss={sum_loss!r}` needs a regression output, but `output.sum` is None; "
            "use sum_loss='cross_entropy' or 'auto' for sum scores."
        )
    return output.sum


def _class_target(name: str, target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Check a class-index target against its ``[N, C]`` scores and return it as int64."""
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"Expected scores [N, C] and {name} [N], but got {list(logits.shape)} and "
            f"{list(target.shape)}."
        )
    if target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"Expected an integer {name}, but got dtype {target.dtype}.")
    if torch.compiler.is_compiling() or target.numel() == 0:
        return target.to(torch.int64)

    if target.is_floating_point():
        # NaN differs from its rounding, so this catches NaN as well as fractions.
        not_whole = (target != target.round()) | target.isinf()
        if not_whole.any():
            raise ValueError(
                f"Invalid {name} value {target[not_whole][0].item()!r}: class indices must "
                "be whole numbers, and casting it to an integer would truncate it."
            )
    # On CUDA an out-of-range class index trips a device-side assert, which leaves the
    # CUDA context unusable for the rest of the process. This check raises first.
    classes = logits.shape[1]
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"The {name} {bad} is outside [0, {classes - 1}], the classes of the scores "
            f"[N, {classes}]."
        )
    return target.to(torch.int64)


def _check_same_shape(
    name: str, prediction: torch.Tensor, target_name: str, target: torch.Tensor
) -> None:
    if prediction.shape != target.shape:
        raise ValueError(
            f"Shape mismatch: {name} has shape {list(prediction.shape)} but {target_name} has "
            f"shape {list(target.shape)}; they must match exactly (no broadcasting)."
        )
