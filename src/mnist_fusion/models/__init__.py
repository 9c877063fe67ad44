"""Models: the image encoder, the fusion head, and the full model with their configs."""

from mnist_fusion.models.complexity import ModelComplexity, model_complexity
from mnist_fusion.models.encoder import ConvEncoder
from mnist_fusion.models.encoder_config import ENCODER_PRESETS, ConvEncoderConfig
from mnist_fusion.models.fusion import (
    FusionModel,
    FusionModelConfig,
    FusionOutput,
    predicted_digit,
    predicted_sum,
)
from mnist_fusion.models.head import (
    COMBINE_CHOICES,
    FUSE_CHOICES,
    SUM_HEADS,
    FusionHead,
    FusionHeadConfig,
)
from mnist_fusion.models.side_encoding import SIDE_ENCODINGS, SideEncoding
from mnist_fusion.models.sum_heads import convolve_log_probs, expected_sum, shift_log_probs

__all__ = [
    "COMBINE_CHOICES",
    "ENCODER_PRESETS",
    "FUSE_CHOICES",
    "SIDE_ENCODINGS",
    "SUM_HEADS",
    "ConvEncoder",
    "ConvEncoderConfig",
    "FusionHead",
    "FusionHeadConfig",
    "FusionModel",
    "FusionModelConfig",
    "FusionOutput",
    "ModelComplexity",
    "SideEncoding",
    "convolve_log_probs",
    "expected_sum",
    "model_complexity",
    "predicted_digit",
    "predicted_sum",
    "shift_log_probs",
]
