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
from mnist_fusion.models.side_spec import (
    CATEGORICAL_ENCODINGS,
    CONTINUOUS_ENCODINGS,
    SIDE_KINDS,
    SideSpec,
)
from mnist_fusion.models.sum_heads import (
    add_side_log_probs,
    convolve_log_probs,
    expected_sum,
    shift_log_probs,
)

__all__ = [
    "CATEGORICAL_ENCODINGS",
    "COMBINE_CHOICES",
    "CONTINUOUS_ENCODINGS",
    "ENCODER_PRESETS",
    "FUSE_CHOICES",
    "SIDE_ENCODINGS",
    "SIDE_KINDS",
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
    "SideSpec",
    "add_side_log_probs",
    "convolve_log_probs",
    "expected_sum",
    "model_complexity",
    "predicted_digit",
    "predicted_sum",
    "shift_log_probs",
]
