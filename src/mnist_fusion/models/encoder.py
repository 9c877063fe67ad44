"""A configurable CNN that maps an image to digit logits and a feature vector."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ConvEncoder", "ConvEncoderConfig"]

_NORMS = ("batch", "none")
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
_POOLS = ("flatten", "avg")


@dataclass(frozen=True)
class ConvEncoderConfig:
    """Shape of a :class:`ConvEncoder`.

    Each stage is ``convs_per_stage`` convolutions (kernel ``kernel_size``, same padding)
    with normalisation and activation, followed by a 2x2 max-pool.

    Attributes:
        in_channels: Channels of the input image.
        image_size: Height and width of the (square) input image.
        channels: Output channels of each stage.
        convs_per_stage: Convolutions in each stage.
        kernel_size: Odd convolution kernel size.
        norm: ``"batch"`` for BatchNorm2d after each convolution, or ``"none"``.
        activation: One of ``"relu"``, ``"gelu"``, ``"silu"``.
        dropout: Dropout probability before the digit classifier.
        pool: ``"flatten"`` keeps the last feature map's spatial layout; ``"avg"``
            averages it to one vector per channel.
        num_classes: Number of digit classes.
    """

    in_channels: int = 1
    image_size: int = 28
    channels: tuple[int, ...] = (16, 32, 64)
    convs_per_stage: int = 1
    kernel_size: int = 3
    norm: str = "batch"
    activation: str = "relu"
    dropout: float = 0.0
    pool: str = "flatten"
    num_classes: int = 10

    def __post_init__(self) -> None:
        # Configs arrive from JSON too, where tuples become lists.
        object.__setattr__(self, "channels", tuple(self.channels))
        _check_choice("norm", self.norm, _NORMS)
        _check_choice("activation", self.activation, tuple(_ACTIVATIONS))
        _check_choice("pool", self.pool, _POOLS)
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"Expected positive `channels`, but got {self.channels!r}.")
        # With zero convolutions a stage would keep its input width, and num_features
        # would no longer describe the features.
        for name in ("in_channels", "convs_per_stage", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected `{name}` >= 1, but got {getattr(self, name)!r}.")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"Expected an odd positive `kernel_size`, got {self.kernel_size!r}.")
        if self.image_size < 2 ** len(self.channels):
            raise ValueError(
                f"`image_size`={self.image_size} is too small for {len(self.channels)} stages "
                f"of 2x2 pooling; use at least {2 ** len(self.channels)} or fewer stages."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Expected `dropout` in [0, 1), but got {self.dropout!r}.")


class ConvEncoder(nn.Module):
    """CNN image encoder with a split between features and the digit classifier.

    Args:
        config: Layer sizes and options.

    Examples:
        >>> encoder = ConvEncoder(ConvEncoderConfig())
        >>> logits, features = encoder(torch.zeros(2, 1, 28, 28))
        >>> tuple(logits.shape), tuple(features.shape) == (2, encoder.num_features)
        ((2, 10), True)
    """

    def __init__(self, config: ConvEncoderConfig) -> None:
        super().__init__()
        self.config = config

        layers: list[nn.Module] = []
        in_channels = config.in_channels
        for out_channels in config.channels:
            for _ in range(config.convs_per_stage):
                layers += _conv_block(in_channels, out_channels, config)
                in_channels = out_channels
            layers.append(nn.MaxPool2d(2))
        if config.pool == "avg":
            layers.append(nn.AdaptiveAvgPool2d(1))
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)

        side = config.image_size // 2 ** len(config.channels)
        spatial = 1 if config.pool == "avg" else side * side
        self.num_features = config.channels[-1] * spatial
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(self.num_features, config.num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Map images ``[N, C, H, W]`` to features ``[N, num_features]``."""
        return self.features(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Map features ``[N, num_features]`` to digit logits ``[N, num_classes]``."""
        return self.classifier(self.dropout(features))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.forward_features(images)  # (N, F)
        return self.forward_head(features), features  # (N, classes), (N, F)


def _conv_block(in_channels: int, out_channels: int, config: ConvEncoderConfig) -> list[nn.Module]:
    use_norm = config.norm == "batch"
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        config.kernel_size,
        padding=config.kernel_size // 2,
        bias=not use_norm,  # BatchNorm's shift makes a convolution bias redundant.
    )
    block: list[nn.Module] = [conv]
    if use_norm:
        block.append(nn.BatchNorm2d(out_channels))
    block.append(_ACTIVATIONS[config.activation]())
    return block


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Invalid `{name}`={value!r}; expected one of {list(choices)}.")
