"""Models: the image encoder, the fusion head, and the full model with their configs."""

from mnist_fusion.models.encoder import ConvEncoder, ConvEncoderConfig
from mnist_fusion.models.fusion import (
    FusionModel,
    FusionModelConfig,
    FusionOutput,
    predicted_digit,
    predicted_sum,
)
from mnist_fusion.models.head import FusionHead, FusionHeadConfig

__all__ = [
    "ConvEncoder",
    "ConvEncoderConfig",
    "FusionHead",
    "FusionHeadConfig",
    "FusionModel",
    "FusionModelConfig",
    "FusionOutput",
    "predicted_digit",
    "predicted_sum",
]
