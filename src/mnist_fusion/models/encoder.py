"""A configurable CNN that maps an image to digit logits and a feature vector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnist_fusion.models.encoder_config import ConvEncoderConfig

__all__ = ["ConvEncoder", "ConvEncoderConfig", "RandomShift"]

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
        needs_two_images: Whether training needs at least 2 images a batch, because a
            BatchNorm layer runs on a 1x1 map (as in :meth:`ConvEncoderConfig.small`).

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

        self.shift = RandomShift(config.train_shift)
        self.features = nn.Sequential(*_trunk(config))
        # BatchNorm in training mode needs more than one value per channel, so a norm
        # that runs on a 1x1 map cannot train on a batch of one image. Maps only shrink,
        # so the last norm reads the smallest one: the final map, unless a pooling step
        # follows that norm.
        pooled_after_last_norm = (
            config.pool_placement == "after_activation" and config.stage_pools[-1] in _STAGE_POOLS
        )
        self.needs_two_images = (
            config.norm == "batch" and config.feature_map_size == 1 and not pooled_after_last_norm
        )
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
        if config.channels_last:
            # A convolution with a channels-last weight returns a channels-last output,
            # so the whole trunk follows without converting the input.
            self.to(memory_format=torch.channels_last)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Map images ``[N, C, H, W]`` to features ``[N, num_features]``.

        Args:
            images: Normalised images of the configured shape.

        Returns:
            The features, one row per image.

        Raises:
            ValueError: In training mode, for a batch of one image when
                ``needs_two_images`` is true.

        Examples:
            >>> encoder = ConvEncoder(ConvEncoderConfig(pool="avg"))
            >>> encoder.forward_features(torch.zeros(3, 1, 28, 28)).shape
            torch.Size([3, 64])
        """
        if self.training and self.needs_two_images and images.shape[0] == 1:
            raise ValueError(
                "A training batch of 1 image cannot pass this encoder's BatchNorm, because "
                "a stage normalises a 1x1 map, which leaves one value per channel. Train "
                "on batches of at least 2 images (drop_last=True, or a batch size that "
                "leaves no last batch of 1), or use norm='group'."
            )
        return self.features(self.shift(images))

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


class RandomShift(nn.Module):
    """Translate each image by its own random offset in training mode; pass it through in eval.

    Each image moves by up to ``max_shift`` pixels along each axis, offsets drawn
    uniformly from the global torch generator. The border that the move uncovers
    repeats the nearest edge pixels, which in MNIST are background. The whole batch
    moves in one gather: a few tensor operations per batch, none per image.

    Args:
        max_shift: Largest offset in pixels; 0 makes the module an identity.

    Examples:
        >>> shift = RandomShift(2).eval()
        >>> images = torch.randn(3, 1, 28, 28)
        >>> torch.equal(shift(images), images)
        True
    """

    def __init__(self, max_shift: int) -> None:
        super().__init__()
        self.max_shift = max_shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.training or self.max_shift == 0:
            return images

        n, c, h, w = images.shape
        s = self.max_shift
        padded = F.pad(images, (s, s, s, s), mode="replicate")  # (N, C, H + 2s, W + 2s)
        offsets = torch.randint(0, 2 * s + 1, (2, n, 1), device=images.device)  # (2, N, 1)
        rows = offsets[0] + torch.arange(h, device=images.device)  # (N, H)
        cols = offsets[1] + torch.arange(w, device=images.device)  # (N, W)
        batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
        channel = torch.arange(c, device=images.device).view(1, c, 1, 1)
        return padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]

    def extra_repr(self) -> str:
        return f"max_shift={self.max_shift}"


def _trunk(config: ConvEncoderConfig) -> list[nn.Module]:
    layers: list[nn.Module] = []
    in_channels = config.in_channels
    for out_channels, convs, pooling in zip(
        config.channels, config.stage_convs, config.stage_pools, strict=True
    ):
        for index in range(convs):
            pool = pooling if index == convs - 1 else "none"
            layers += _conv_block(in_channels, out_channels, config, pool)
            in_channels = out_channels

    if config.pool == "avg":
        layers.append(nn.AdaptiveAvgPool2d(1))
    layers.append(nn.Flatten())
    return layers


def _conv_block(
    in_channels: int, out_channels: int, config: ConvEncoderConfig, pooling: str
) -> list[nn.Module]:
    """Return a convolution, its norm and activation, and the 2x2 ``pooling`` step, if any."""
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        config.kernel_size,
        stride=2 if pooling == "stride" else 1,
        padding=config.kernel_size // 2,
        bias=config.norm == "none",  # A norm layer's shift makes a convolution bias redundant.
    )
    block: list[nn.Module] = [conv]
    pool = [_STAGE_POOLS[pooling](2)] if pooling in _STAGE_POOLS else []
    if config.pool_placement == "after_conv":
        block += pool
    if config.norm == "batch":
        block.append(nn.BatchNorm2d(out_channels))
    elif config.norm == "group":
        block.append(nn.GroupNorm(config.num_groups, out_channels))
    block.append(_ACTIVATIONS[config.activation]())
    if config.pool_placement == "after_activation":
        block += pool
    return block
