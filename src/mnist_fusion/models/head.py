"""The fusion head: combine the encoder's output with the side input and predict the sum."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FusionHead", "FusionHeadConfig"]

_FUSE = ("probs", "logits", "features")
_SUM_HEADS = ("regression",)


@dataclass(frozen=True)
class FusionHeadConfig:
    """Shape of a :class:`FusionHead`.

    Attributes:
        num_side_values: Width of the side input's one-hot code; side values must lie in
            ``[0, num_side_values)``. Fixed here, never inferred from a batch.
        fuse: What the head reads from the encoder: ``"probs"`` (digit probabilities at
            ``temperature``), ``"logits"`` or ``"features"``.
        temperature: Softmax temperature for ``fuse="probs"``. Below 1 it sharpens the
            probabilities, so that an uncertain digit (say 0.6 / 0.4 between 4 and 9)
            does not drag a regression sum to the mean of the candidates; the softmax
            keeps a gradient path to the encoder at any temperature.
        hidden: Width of the hidden layer of the MLP.
        sum_head: ``"regression"``: one real value per sample, ``[N]``.
    """

    num_side_values: int = 10
    fuse: str = "probs"
    temperature: float = 0.1
    hidden: int = 64
    sum_head: str = "regression"

    def __post_init__(self) -> None:
        if self.fuse not in _FUSE:
            raise ValueError(f"Invalid `fuse`={self.fuse!r}; expected one of {list(_FUSE)}.")
        if self.sum_head not in _SUM_HEADS:
            raise ValueError(
                f"Invalid `sum_head`={self.sum_head!r}; expected one of {list(_SUM_HEADS)}."
            )
        if self.num_side_values < 1:
            raise ValueError(f"Expected `num_side_values` >= 1, got {self.num_side_values!r}.")
        if not self.temperature > 0:
            raise ValueError(f"Expected `temperature` > 0, got {self.temperature!r}.")
        if self.hidden < 1:
            raise ValueError(f"Expected `hidden` >= 1, got {self.hidden!r}.")


class FusionHead(nn.Module):
    """Predict the sum from the encoder's output and a one-hot side input.

    The input is ``[fused, one_hot(side)]``; the output is a linear map of it plus a
    one-hidden-layer MLP of it. The linear part can express "expected digit plus side"
    exactly, and the MLP corrects what a linear map cannot.

    Args:
        config: Head options.
        num_classes: Number of digit classes of the encoder.
        num_features: Width of the encoder's features.

    Examples:
        >>> head = FusionHead(FusionHeadConfig(), num_classes=10, num_features=32)
        >>> head(torch.zeros(4, 10), torch.zeros(4, 32), torch.tensor([0, 3, 9, 1])).shape
        torch.Size([4])
    """

    def __init__(self, config: FusionHeadConfig, *, num_classes: int, num_features: int) -> None:
        super().__init__()
        self.config = config

        fused_width = num_features if config.fuse == "features" else num_classes
        in_width = fused_width + config.num_side_values
        self.linear = nn.Linear(in_width, 1)
        self.mlp = nn.Sequential(
            nn.Linear(in_width, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 1)
        )

    def forward(
        self, digit_logits: torch.Tensor, features: torch.Tensor, side: torch.Tensor
    ) -> torch.Tensor:
        if self.config.fuse == "probs":
            fused = (digit_logits / self.config.temperature).softmax(dim=-1)  # (N, classes)
        elif self.config.fuse == "logits":
            fused = digit_logits  # (N, classes)
        else:
            fused = features  # (N, F)

        # one_hot accepts only int64, but the model admits any integer side dtype.
        side_code = F.one_hot(side.long(), self.config.num_side_values)  # (N, S)
        side_code = side_code.to(fused.dtype)
        inputs = torch.cat([fused, side_code], dim=-1)  # (N, fused + S)
        return (self.linear(inputs) + self.mlp(inputs)).squeeze(-1)  # (N,)
