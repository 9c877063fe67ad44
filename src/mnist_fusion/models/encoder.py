"""A configurable CNN that maps an image to digit logits and a feature vector."""

from __future__ import annotations

import torch
from torch import nn

from mnist_fusion.models.encoder_config import ConvEncoderConfig

__all__ = ["ConvEncoder", "ConvEncoderConfig"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
_STAGE_POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class ConvEncoder(nn.Module):
    """CNN image encoder with a split between features and the digit classifier.

    ``forward_features`` runs the convolution stages and the final pooling, and
    ``forward_head`` maps those features to digit logits. ``forward`` returns both, so a
    fusion head can read either.

    Args:
        config: Layer sizes and options.

    Attributes:
        num_features: Width of the feature vector, for sizing a fusion head.
        feature_shape: ``(channels, height, width)`` of the last feature map.

    Examples:
        >>> encoder = ConvEncoder(ConvEncoderConfig())
        >>> logits, features = encoder(torch.zeros(2, 1, 28, 28))
        >>> tuple(logits.shape), tuple(features.shape) == (2, encoder.num_features)
        ((2, 10), True)
    """

    def __init__(self, config: ConvEncoderConfig) -> None:
        super().__init__()
        self.config = config

        size = config.feature_map_size
        self.feature_shape = (config.channels[-1], size, size)
        spatial = 1 if config.pool == "avg" else size * size
        self.num_features = config.channels[-1] * spatial

        self.features = nn.Sequential(*_trunk(config))
        self.dropout = nn.Dropout(config.dropout)
        if config.digit_head == "conv":
            self.classifier: nn.Module = nn.Conv2d(
                config.channels[-1],
                config.num_classes,
                config.kernel_size,
                padding=config.kernel_size // 2,
            )
        else:
            self.classifier = nn.Linear(self.num_features, config.num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Map images ``[N, C, H, W]`` to features ``[N, num_features]``.

        Args:
            images: Normalised images of the configured shape.

        Returns:
            The features, one row per image.

        Examples:
            >>> encoder = ConvEncoder(ConvEncoderConfig(pool="avg"))
            >>> encoder.forward_features(torch.zeros(3, 1, 28, 28)).shape
            torch.Size([3, 64])
        """
        return self.features(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Map features ``[N, num_features]`` to digit logits ``[N, num_classes]``.

        Args:
            features: The output of :meth:`forward_features`.

        Returns:
            Unnormalised digit scores.

        Examples:
            >>> encoder = ConvEncoder(ConvEncoderConfig())
            >>> encoder.forward_head(torch.zeros(3, encoder.num_features)).shape
            torch.Size([3, 10])
        """
        features = self.dropout(features)  # (N, F)
        if self.config.digit_head == "linear":
            return self.classifier(features)  # (N, classes)

        feature_map = features.view(-1, *self.feature_shape)  # (N, C, H, W)
        class_map = self.classifier(feature_map)  # (N, classes, H, W)
        return class_map.mean(dim=(2, 3))  # (N, classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.forward_features(images)  # (N, F)
        return self.forward_head(features), features  # (N, classes), (N, F)


def _trunk(config: ConvEncoderConfig) -> list[nn.Module]:
    layers: list[nn.Module] = []
    in_channels = config.in_channels
    for out_channels, convs, pooling in zip(
        config.channels, config.stage_convs, config.stage_pools, strict=True
    ):
        for _ in range(convs):
            layers += _conv_block(in_channels, out_channels, config)
            in_channels = out_channels
        if pooling != "none":
            layers.append(_STAGE_POOLS[pooling](2))

    if config.pool == "avg":
        layers.append(nn.AdaptiveAvgPool2d(1))
    layers.append(nn.Flatten())
    return layers


def _conv_block(in_channels: int, out_channels: int, config: ConvEncoderConfig) -> list[nn.Module]:
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        config.kernel_size,
        padding=config.kernel_size // 2,
        bias=config.norm == "none",  # A norm layer's shift makes a convolution bias redundant.
    )
    block: list[nn.Module] = [conv]
    if config.norm == "batch":
        block.append(nn.BatchNorm2d(out_channels))
    elif config.norm == "group":
        block.append(nn.GroupNorm(config.num_groups, out_channels))
    block.append(_ACTIVATIONS[config.activation]())
    return block
