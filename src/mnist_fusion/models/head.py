"""The fusion head: combine the encoder's output with the side input and predict the sum."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mnist_fusion.models._checks import check_choice
from mnist_fusion.models.side_encoding import SIDE_ENCODINGS, SideEncoding
from mnist_fusion.models.sum_heads import shift_log_probs

__all__ = ["FUSE_CHOICES", "COMBINE_CHOICES", "SUM_HEADS", "FusionHead", "FusionHeadConfig"]

FUSE_CHOICES = ("probs", "logits", "features")
"""Inputs that a learned head can read from the encoder (``FusionHeadConfig.fuse``)."""

COMBINE_CHOICES = ("concat", "film")
"""Ways a learned head joins its input with the side code (``FusionHeadConfig.combine``)."""

SUM_HEADS = ("regression", "classification", "exact")
"""The sum heads (``FusionHeadConfig.sum_head``)."""


@dataclass(frozen=True)
class FusionHeadConfig:
    """Shape of a :class:`FusionHead`.

    Attributes:
        num_side_values: Number of side values; they must lie in ``[0, num_side_values)``.
            Fixed here, never inferred from a batch.
        fuse: What a learned head reads from the encoder: ``"probs"`` (digit
            probabilities at ``temperature``), ``"logits"`` or ``"features"``.
        temperature: Softmax temperature for ``fuse="probs"``. Below 1 it sharpens the
            probabilities, so that an uncertain digit (say 0.6 / 0.4 between 4 and 9)
            does not drag a regression sum to the mean of the candidates. The softmax keeps
            a gradient path to the encoder at any temperature.
        hidden: Width of the hidden layer of the MLP.
        sum_head: ``"regression"``: one real value per sample, ``[N]``.
            ``"classification"``: scores over the sums ``0 .. max_sum``, ``[N, max_sum + 1]``.
            ``"exact"``: no parameters; the log-probabilities of digit plus side, the
            digit distribution shifted by the side value, ``[N, max_sum + 1]``.
        side_encoding: Code of the side input: ``"one_hot"`` (width ``num_side_values``)
            or ``"embedding"`` (a learned vector of width ``side_dim``).
        side_dim: Width of ``side_encoding="embedding"``.
        combine: ``"concat"``: the head reads ``[fused, side code]``. ``"film"``: the
            side code scales and shifts the fused vector, ``fused * (1 + gamma) + beta``,
            and the head reads the result.

    Raises:
        ValueError: For an unknown choice, a size below 1, a temperature that is not
            positive, or an option that the exact head cannot honour.

    Examples:
        >>> FusionHeadConfig(sum_head="exact").num_sums(num_classes=10)
        19
        >>> FusionHeadConfig(combine="flim")
        Traceback (most recent call last):
        ...
        ValueError: Invalid `combine`='flim'; expected one of ['concat', 'film'].
    """

    num_side_values: int = 10
    fuse: str = "probs"
    temperature: float = 0.1
    hidden: int = 64
    sum_head: str = "regression"
    side_encoding: str = "one_hot"
    side_dim: int = 16
    combine: str = "concat"

    def __post_init__(self) -> None:
        check_choice("fuse", self.fuse, FUSE_CHOICES)
        check_choice("sum_head", self.sum_head, SUM_HEADS)
        check_choice("side_encoding", self.side_encoding, SIDE_ENCODINGS)
        check_choice("combine", self.combine, COMBINE_CHOICES)
        if self.num_side_values < 1:
            raise ValueError(f"Expected `num_side_values` >= 1, got {self.num_side_values!r}.")
        if not self.temperature > 0:
            raise ValueError(f"Expected `temperature` > 0, got {self.temperature!r}.")
        for name in ("hidden", "side_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected `{name}` >= 1, got {getattr(self, name)!r}.")
        if self.sum_head == "exact":
            self._check_exact()

    def num_sums(self, *, num_classes: int) -> int:
        """Number of possible sums of a digit and a side value: ``max_sum + 1``.

        Args:
            num_classes: Number of digit classes of the encoder.

        Returns:
            ``num_classes + num_side_values - 1``.

        Examples:
            >>> FusionHeadConfig(num_side_values=4).num_sums(num_classes=10)
            13
        """
        return num_classes + self.num_side_values - 1

    def _check_exact(self) -> None:
        # The exact head reads only the digit distribution and the side value. An option
        # that it would ignore must not look as if it had been applied.
        for name, default in (
            ("fuse", "probs"),
            ("combine", "concat"),
            ("side_encoding", "one_hot"),
        ):
            if getattr(self, name) != default:
                raise ValueError(
                    f"`sum_head`='exact' reads the digit probabilities and the side value "
                    f"only, so `{name}`={getattr(self, name)!r} has no effect; leave `{name}` "
                    f"at {default!r} or choose a learned sum head."
                )


class FusionHead(nn.Module):
    """Predict the sum from the encoder's output and the side input.

    The learned heads (``"regression"``, ``"classification"``) read a fused vector: the
    digit probabilities, the logits or the features. With ``combine="concat"`` their
    input is ``[fused, side code]``; with ``combine="film"`` it is the fused vector
    scaled and shifted per side value. Their output is a linear map of the input plus a
    one-hidden-layer MLP of it: the linear part can express "expected digit plus side"
    exactly, and the MLP corrects what a linear map cannot. The FiLM layer starts at the
    identity (zero scale and shift), so training begins from the plain fused vector.

    The ``"exact"`` head has no parameters: it returns ``log_softmax(digit_logits)``
    shifted by the side value, the exact law of digit plus side under the classifier.

    Args:
        config: Head options.
        num_classes: Number of digit classes of the encoder.
        num_features: Width of the encoder's features.

    Examples:
        >>> head = FusionHead(FusionHeadConfig(), num_classes=10, num_features=32)
        >>> head(torch.zeros(4, 10), torch.zeros(4, 32), torch.tensor([0, 3, 9, 1])).shape
        torch.Size([4])
        >>> exact = FusionHead(FusionHeadConfig(sum_head="exact"), num_classes=10, num_features=32)
        >>> exact(torch.zeros(4, 10), torch.zeros(4, 32), torch.tensor([0, 3, 9, 1])).shape
        torch.Size([4, 19])
    """

    def __init__(self, config: FusionHeadConfig, *, num_classes: int, num_features: int) -> None:
        super().__init__()
        self.config = config
        self.num_sums = config.num_sums(num_classes=num_classes)
        if config.sum_head == "exact":
            return

        self.side = SideEncoding(config.side_encoding, config.num_side_values, dim=config.side_dim)
        fused_width = num_features if config.fuse == "features" else num_classes
        if config.combine == "film":
            in_width = fused_width
            self.film = nn.Linear(self.side.width, 2 * fused_width)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        else:
            in_width = fused_width + self.side.width

        out_width = 1 if config.sum_head == "regression" else self.num_sums
        self.linear = nn.Linear(in_width, out_width)
        self.mlp = nn.Sequential(
            nn.Linear(in_width, config.hidden), nn.ReLU(), nn.Linear(config.hidden, out_width)
        )

    def forward(
        self, digit_logits: torch.Tensor, features: torch.Tensor, side: torch.Tensor
    ) -> torch.Tensor:
        """Return the sum prediction: ``[N]`` for regression, else ``[N, num_sums]``.

        Args:
            digit_logits: The encoder's digit logits ``[N, num_classes]``.
            features: The encoder's features ``[N, num_features]``.
            side: Integer side values ``[N]``.

        Returns:
            The regression value, the sum logits, or the exact sum log-probabilities.
        """
        if self.config.sum_head == "exact":
            log_probs = digit_logits.log_softmax(dim=-1)  # (N, classes)
            return shift_log_probs(log_probs, side, self.config.num_side_values)  # (N, K)

        fused = self._fused(digit_logits, features)  # (N, W)
        side_code = self.side(side).to(fused.dtype)  # (N, S)
        if self.config.combine == "film":
            gamma, beta = self.film(side_code).chunk(2, dim=-1)  # (N, W), (N, W)
            inputs = fused * (1 + gamma) + beta  # (N, W)
        else:
            inputs = torch.cat([fused, side_code], dim=-1)  # (N, W + S)

        output = self.linear(inputs) + self.mlp(inputs)  # (N, 1) or (N, K)
        if self.config.sum_head == "regression":
            return output.squeeze(-1)  # (N,)
        return output  # (N, K)

    def _fused(self, digit_logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if self.config.fuse == "probs":
            return (digit_logits / self.config.temperature).softmax(dim=-1)  # (N, classes)
        if self.config.fuse == "logits":
            return digit_logits  # (N, classes)
        return features  # (N, F)
