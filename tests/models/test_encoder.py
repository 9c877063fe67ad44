import re

import pytest
import torch
from torch import nn

from mnist_fusion.models import ConvEncoder, ConvEncoderConfig


def pooled_side(image_size: int, stages: int) -> int:
    """Side of the last feature map: each 2x2 max-pool floors the side to half."""
    side = image_size
    for _ in range(stages):
        side //= 2
    return side


CONFIGS = [
    ConvEncoderConfig(),
    ConvEncoderConfig(in_channels=3, image_size=32),
    ConvEncoderConfig(in_channels=3, image_size=32, pool="avg"),
    ConvEncoderConfig(image_size=30, channels=(4, 8), convs_per_stage=2, kernel_size=5),
    ConvEncoderConfig(channels=(8,), norm="none", activation="gelu", dropout=0.5),
    ConvEncoderConfig(image_size=8, channels=(4, 4, 4), activation="silu", num_classes=3),
]


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: f"{c.in_channels}x{c.image_size}-{c.pool}"
)
def test_encoder_output_shapes(config):
    encoder = ConvEncoder(config)
    images = torch.randn(5, config.in_channels, config.image_size, config.image_size)

    logits, features = encoder(images)

    side = pooled_side(config.image_size, len(config.channels))
    spatial = 1 if config.pool == "avg" else side * side
    assert logits.shape == (5, config.num_classes)
    assert features.shape == (5, config.channels[-1] * spatial)


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: f"{c.in_channels}x{c.image_size}-{c.pool}"
)
def test_num_features_matches_forward_features(config):
    encoder = ConvEncoder(config)
    images = torch.randn(2, config.in_channels, config.image_size, config.image_size)

    features = encoder.forward_features(images)

    assert features.shape[1] == encoder.num_features


def test_avg_pool_averages_last_map():
    config = ConvEncoderConfig(channels=(4, 8))
    flatten = ConvEncoder(config)
    avg = ConvEncoder(ConvEncoderConfig(channels=(4, 8), pool="avg"))
    avg.features.load_state_dict(flatten.features.state_dict())
    images = torch.randn(3, 1, 28, 28)

    flat = flatten.forward_features(images).view(3, 8, 7 * 7)

    torch.testing.assert_close(avg.forward_features(images), flat.mean(dim=-1))


def test_forward_is_features_then_head():
    encoder = ConvEncoder(ConvEncoderConfig(dropout=0.3)).eval()
    images = torch.randn(4, 1, 28, 28)

    logits, features = encoder(images)

    torch.testing.assert_close(logits, encoder.forward_head(encoder.forward_features(images)))
    torch.testing.assert_close(features, encoder.forward_features(images))


def test_norm_none_has_no_batchnorm():
    encoder = ConvEncoder(ConvEncoderConfig(norm="none"))

    norms = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]

    assert norms == []
    assert all(conv.bias is not None for conv in convs)


def test_activation_option_builds_that_layer():
    encoder = ConvEncoder(ConvEncoderConfig(activation="silu"))

    kinds = {type(m) for m in encoder.modules()}

    assert nn.SiLU in kinds
    assert nn.ReLU not in kinds


def test_channels_list_becomes_tuple():
    config = ConvEncoderConfig(channels=[8, 16])

    assert config.channels == (8, 16)


@pytest.mark.parametrize(
    ("option", "value", "choices"),
    [
        ("norm", "bacth", "['batch', 'none']"),
        ("activation", "tanh", "['relu', 'gelu', 'silu']"),
        ("pool", "max", "['flatten', 'avg']"),
    ],
)
def test_invalid_option_lists_choices(option, value, choices):
    with pytest.raises(
        ValueError, match=re.escape(f"`{option}`='{value}'; expected one of {choices}")
    ):
        ConvEncoderConfig(**{option: value})


def test_image_size_too_small():
    with pytest.raises(ValueError, match=r"`image_size`=4 is too small for 3 stages.*at least 8"):
        ConvEncoderConfig(image_size=4)


def test_image_size_smallest_accepted():
    encoder = ConvEncoder(ConvEncoderConfig(image_size=8))

    _, features = encoder(torch.randn(2, 1, 8, 8))

    assert features.shape == (2, 64)


@pytest.mark.parametrize("kernel_size", [0, 2, 4])
def test_even_kernel_rejected(kernel_size):
    with pytest.raises(ValueError, match=rf"odd positive `kernel_size`, got {kernel_size}\b"):
        ConvEncoderConfig(kernel_size=kernel_size)


@pytest.mark.parametrize("channels", [(), (16, 0), (-1,)])
def test_invalid_channels_rejected(channels):
    with pytest.raises(ValueError, match=re.escape(f"positive `channels`, but got {channels!r}")):
        ConvEncoderConfig(channels=channels)


@pytest.mark.parametrize("name", ["in_channels", "convs_per_stage", "num_classes"])
def test_zero_count_rejected(name):
    with pytest.raises(ValueError, match=rf"`{name}` >= 1, but got 0\b"):
        ConvEncoderConfig(**{name: 0})


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_dropout_out_of_range(dropout):
    with pytest.raises(ValueError, match=re.escape(f"`dropout` in [0, 1), but got {dropout!r}")):
        ConvEncoderConfig(dropout=dropout)
