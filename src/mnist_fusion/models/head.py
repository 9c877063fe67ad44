"""The fusion head: combine the encoder's output with the side inputs and predict the sum."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mnist_fusion.models.head_config import (
    COMBINE_CHOICES,
    DEFAULT_SIDE_NAME,
    FUSE_CHOICES,
    SUM_HEADS,
    FusionHeadConfig,
)
from mnist_fusion.models.side_encoding import SideEncoding
from mnist_fusion.models.sum_heads import add_side_log_probs

__all__ = ["FUSE_CHOICES", "COMBINE_CHOICES", "SUM_HEADS", "FusionHead", "FusionHeadConfig"]

SideInputs = torch.Tensor | Mapping[str, torch.Tensor]
"""One side tensor ``[N]``, or named side tensors ``{name: [N]}``."""


class FusionHead(nn.Module):
    """Predict the sum from the encoder's output and the side inputs.

    The learned heads (``"regression"``, ``"classification"``) read a fused vector: the
    digit probabilities, the logits or the features. With ``combine="concat"`` their
    input is ``[fused, side codes]``; with ``combine="film"`` it is the fused vector
    scaled and shifted by the side codes; with ``combine="attention"`` it is a weighted
    average of the projected fused vector and side codes. Their output is a linear map
    of the input plus a one-hidden-layer MLP of it: the linear part can express
    "expected digit plus side" exactly, and the MLP corrects what a linear map cannot.
    The FiLM layer starts at the identity (zero scale and shift), so training begins
    from the plain fused vector.

    The ``"exact"`` head has no parameters: it returns ``log_softmax(digit_logits)``
    shifted by each side value, the exact law of the digit plus the side inputs under
    the classifier. It alone accepts missing side inputs, which it averages over their
    priors; the learned heads raise ValueError for them.

    Args:
        config: Head options.
        num_classes: Number of digit classes of the encoder.
        num_features: Width of the encoder's features.

    Raises:
        ValueError: If the exact head is given a ``max_sum`` other than the one its
            inputs reach.

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
        self.specs = config.side_specs()
        self.num_sums = config.num_sums(num_classes=num_classes)
        if config.sum_head == "exact":
            self._check_exact_range(num_classes)
            return

        self.sides = nn.ModuleDict(
            {name: SideEncoding.from_spec(spec) for name, spec in self.specs.items()}
        )
        side_width = sum(spec.width for spec in self.specs.values())
        fused_width = num_features if config.fuse == "features" else num_classes
        in_width = self._build_combine(fused_width, side_width)

        out_width = 1 if config.sum_head == "regression" else self.num_sums
        self.linear = nn.Linear(in_width, out_width)
        self.mlp = nn.Sequential(
            nn.Linear(in_width, config.hidden), nn.ReLU(), nn.Linear(config.hidden, out_width)
        )
        # Files of 0.1.0 stored the one embedding as "side.embedding.weight".
        self._register_load_state_dict_pre_hook(_rename_single_side_keys)

    def _build_combine(self, fused_width: int, side_width: int) -> int:
        combine = self.config.combine
        if combine == "film":
            self.film = nn.Linear(side_width, 2 * fused_width)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
            return fused_width
        if combine == "attention":
            hidden = self.config.hidden
            widths = [fused_width, *(spec.width for spec in self.specs.values())]
            self.projections = nn.ModuleList(nn.Linear(width, hidden) for width in widths)
            self.attention_score = nn.Linear(hidden, 1)
            return hidden
        return fused_width + side_width

    def forward(
        self,
        digit_logits: torch.Tensor,
        features: torch.Tensor,
        side: SideInputs,
        missing: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Return the sum prediction: ``[N]`` for regression, else ``[N, num_sums]``.

        Args:
            digit_logits: The encoder's digit logits ``[N, num_classes]``.
            features: The encoder's features ``[N, num_features]``.
            side: Side values ``[N]`` for a single input, or ``{name: [N]}``.
            missing: Boolean masks ``{name: [N]}``, True where that input is missing;
                exact head only.

        Returns:
            The regression value, the sum logits, or the exact sum log-probabilities.
        """
        return self.forward_with_weights(digit_logits, features, side, missing)[0]

    def forward_with_weights(
        self,
        digit_logits: torch.Tensor,
        features: torch.Tensor,
        side: SideInputs,
        missing: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the prediction of :meth:`forward` and the attention weights.

        Returns:
            ``(prediction, weights)``. The weights ``[N, 1 + number of side inputs]``,
            the fused vector's first, are set for ``combine="attention"`` only.
        """
        side = self.as_mapping(side)
        if self.config.sum_head == "exact":
            log_probs = digit_logits.log_softmax(dim=-1)  # (N, classes)
            return add_side_log_probs(log_probs, side, self.specs, missing), None  # (N, K)
        self._reject_missing(missing)

        fused = self._fused(digit_logits, features)  # (N, W)
        codes = [self.sides[name](side[name]).to(fused.dtype) for name in self.specs]  # (N, S_i)
        weights = None
        if self.config.combine == "film":
            gamma, beta = self.film(torch.cat(codes, dim=-1)).chunk(2, dim=-1)  # (N, W) x 2
            inputs = fused * (1 + gamma) + beta  # (N, W)
        elif self.config.combine == "attention":
            inputs, weights = self._attend([fused, *codes])  # (N, hidden), (N, T)
        else:
            inputs = torch.cat([fused, *codes], dim=-1)  # (N, W + sum S_i)

        output = self.linear(inputs) + self.mlp(inputs)  # (N, 1) or (N, K)
        if self.config.sum_head == "regression":
            return output.squeeze(-1), weights  # (N,)
        return output, weights  # (N, K)

    def as_mapping(self, side: SideInputs) -> Mapping[str, torch.Tensor]:
        """Return ``side`` as ``{name: tensor}``; a lone tensor is the one declared input.

        Raises:
            ValueError: If a lone tensor is given but several inputs are declared.
        """
        if isinstance(side, Mapping):
            return side
        if len(self.specs) != 1:
            raise ValueError(
                f"Got one side tensor, but the head declares {len(self.specs)} side inputs "
                f"{list(self.specs)}; pass a mapping of name to tensor."
            )
        return {next(iter(self.specs)): side}

    def _attend(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.stack(
            [project(x) for project, x in zip(self.projections, inputs, strict=True)], dim=1
        )  # (N, T, hidden)
        scores = self.attention_score(torch.tanh(tokens)).squeeze(-1)  # (N, T)
        weights = scores.softmax(dim=-1)  # (N, T)
        return (weights[..., None] * tokens).sum(dim=1), weights  # (N, hidden), (N, T)

    def _reject_missing(self, missing: Mapping[str, torch.Tensor] | None) -> None:
        if not missing:
            return
        any_missing = [name for name, mask in missing.items() if bool(mask.any())]
        if any_missing:
            raise ValueError(
                f"The {self.config.sum_head!r} sum head cannot predict without its side "
                f"input(s) {any_missing}: it has no distribution over their values. Use "
                "sum_head='exact', which averages a missing categorical input over its prior."
            )

    def _fused(self, digit_logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if self.config.fuse == "probs":
            return (digit_logits / self.config.temperature).softmax(dim=-1)  # (N, classes)
        if self.config.fuse == "logits":
            return digit_logits  # (N, classes)
        return features  # (N, F)

    def _check_exact_range(self, num_classes: int) -> None:
        reached = self.config.reached_max_sum(num_classes=num_classes)
        if self.num_sums != reached + 1:
            raise ValueError(
                f"`sum_head`='exact' gives the law of the digit plus the side inputs, whose "
                f"largest value is {reached}, but `max_sum`={self.config.max_sum!r}; leave "
                "`max_sum` unset for the exact head."
            )

    def extra_repr(self) -> str:
        return f"sum_head={self.config.sum_head!r}, side_inputs={list(self.specs)}"


def _rename_single_side_keys(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    old = f"{prefix}side.embedding.weight"
    if old in state_dict:
        state_dict[f"{prefix}sides.{DEFAULT_SIDE_NAME}.embedding.weight"] = state_dict.pop(old)
