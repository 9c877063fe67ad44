"""Codes of a side input that a fusion head reads: one-hot, embedding, linear or Fourier."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mnist_fusion.models._checks import check_choice
from mnist_fusion.models.side_spec import SideSpec

__all__ = ["SIDE_ENCODINGS", "SideEncoding"]

SIDE_ENCODINGS = ("one_hot", "embedding")
"""Encodings of the single integer side input (``FusionHeadConfig.side_encoding``)."""


class SideEncoding(nn.Module):
    """Turn side values ``[N]`` into float codes ``[N, width]``.

    For integer values: ``"one_hot"`` has no parameters and a width of ``num_values``;
    ``"embedding"`` learns a ``dim``-wide vector per value, so a head can share what it
    learns between values. For real values in ``[low, high)``, which are first scaled to
    ``u`` in ``[0, 1)``: ``"linear"`` is a learned ``dim``-wide projection of ``u``;
    ``"fourier"`` has no parameters and returns ``sin(pi * k * u)`` and ``cos(pi * k * u)``
    for ``k = 1 .. dim / 2``, which lets a small head fit a value that varies faster
    than linearly in ``u``.

    Args:
        kind: ``"one_hot"`` or ``"embedding"``; :meth:`from_spec` admits all four.
        num_values: Integer side values lie in ``[0, num_values)``.
        dim: Width of an embedding; unused by ``"one_hot"``.

    Raises:
        ValueError: For another ``kind``, or a ``num_values`` or ``dim`` below 1.

    Examples:
        >>> SideEncoding("one_hot", 4)(torch.tensor([2, 0]))
        tensor([[0., 0., 1., 0.],
                [1., 0., 0., 0.]])
        >>> SideEncoding("embedding", 10, dim=3).width
        3
        >>> spec = SideSpec.continuous(0.0, 2.0, encoding="fourier", dim=2)
        >>> fourier = SideEncoding.from_spec(spec)
        >>> fourier(torch.tensor([0.0, 1.0])).round(decimals=4).abs()
        tensor([[0., 1.],
                [1., 0.]])
    """

    def __init__(self, kind: str, num_values: int, *, dim: int = 16) -> None:
        super().__init__()
        check_choice("side_encoding", kind, SIDE_ENCODINGS)
        for name, value in (("num_values", num_values), ("dim", dim)):
            if value < 1:
                raise ValueError(f"Expected `{name}` >= 1 for the side encoding, got {value!r}.")
        self._build(SideSpec.categorical(num_values, encoding=kind, dim=dim))

    @classmethod
    def from_spec(cls, spec: SideSpec) -> SideEncoding:
        """Return the encoding that ``spec`` declares, for either kind of input."""
        encoding = cls.__new__(cls)
        nn.Module.__init__(encoding)
        encoding._build(spec)
        return encoding

    def _build(self, spec: SideSpec) -> None:
        self.spec = spec
        self.kind = spec.encoding
        self.num_values = spec.cardinality
        self.width = spec.width
        if self.kind == "embedding":
            assert spec.cardinality is not None
            self.embedding = nn.Embedding(spec.cardinality, spec.dim)
        elif self.kind == "linear":
            self.linear = nn.Linear(1, spec.dim)
        elif self.kind == "fourier":
            frequencies = math.pi * torch.arange(1, spec.dim // 2 + 1, dtype=torch.float32)
            # Not saved in the state dict: the spec defines the frequencies.
            self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, side: torch.Tensor) -> torch.Tensor:
        if self.kind in ("one_hot", "embedding"):
            # one_hot and embedding accept only int64, but the model admits any integer dtype.
            side = side.long()  # (N,)
            if self.kind == "embedding":
                return self.embedding(side)  # (N, dim)
            assert self.num_values is not None
            return F.one_hot(side, self.num_values).float()  # (N, num_values)

        assert self.spec.low is not None and self.spec.high is not None
        scaled = (side.float() - self.spec.low) / (self.spec.high - self.spec.low)  # (N,)
        if self.kind == "linear":
            return self.linear(scaled[:, None])  # (N, dim)
        frequencies: torch.Tensor = self.frequencies  # type: ignore[assignment]
        angles = scaled[:, None] * frequencies  # (N, dim / 2)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (N, dim)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, spec={self.spec.describe()}, width={self.width}"
