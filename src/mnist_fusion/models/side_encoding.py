"""Codes of the integer side input that a fusion head reads: one-hot or a learned embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnist_fusion.models._checks import check_choice

__all__ = ["SIDE_ENCODINGS", "SideEncoding"]

SIDE_ENCODINGS = ("one_hot", "embedding")
"""Names accepted by :class:`SideEncoding` and ``FusionHeadConfig.side_encoding``."""


class SideEncoding(nn.Module):
    """Turn integer side values ``[N]`` into float codes ``[N, width]``.

    ``"one_hot"`` has no parameters and a width of ``num_values``. ``"embedding"`` learns
    a ``dim``-wide vector per value, so a head can share what it learns between values.

    Args:
        kind: ``"one_hot"`` or ``"embedding"``.
        num_values: Side values lie in ``[0, num_values)``.
        dim: Width of an embedding; unused by ``"one_hot"``.

    Raises:
        ValueError: For another ``kind``, or a ``num_values`` or ``dim`` below 1.

    Examples:
        >>> SideEncoding("one_hot", 4)(torch.tensor([2, 0]))
        tensor([[0., 0., 1., 0.],
                [1., 0., 0., 0.]])
        >>> SideEncoding("embedding", 10, dim=3).width
        3
    """

    def __init__(self, kind: str, num_values: int, *, dim: int = 16) -> None:
        super().__init__()
        check_choice("side_encoding", kind, SIDE_ENCODINGS)
        for name, value in (("num_values", num_values), ("dim", dim)):
            if value < 1:
                raise ValueError(f"Expected `{name}` >= 1 for the side encoding, got {value!r}.")
        self.kind = kind
        self.num_values = num_values
        self.width = num_values if kind == "one_hot" else dim
        if kind == "embedding":
            self.embedding = nn.Embedding(num_values, dim)

    def forward(self, side: torch.Tensor) -> torch.Tensor:
        # one_hot and embedding accept only int64, but the model admits any integer dtype.
        side = side.long()  # (N,)
        if self.kind == "embedding":
            return self.embedding(side)  # (N, dim)
        return F.one_hot(side, self.num_values).float()  # (N, num_values)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_values={self.num_values}, width={self.width}"
