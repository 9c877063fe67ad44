import json
import re
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_fusion.models import ENCODER_PRESETS, ConvEncoder, ConvEncoderConfig, FusionModelConfig
from mnist_fusion.models.encoder import RandomShift


def pooled_side(config: ConvEncoderConfig) -> int:
    """Side of the last feature map.

    Each 2x2 pooling step floors the side to half, and each stride-2 convolution
    (padding 1, kernel 3) rounds it up.
    """
    pools = config.stage_pool
    if isinstance(pools, str):
        pools = (pools,) * len(config.channels)
    side = config.image_size
    for pooling in pools:
        if pooling == "stride":
            side = (side - 1) // 2 + 1
        elif pooling != "none":
            side //= 2
    return side


def config_id(config: ConvEncoderConfig) -> str:
    return (
        f"{config.in_channels}x{config.image_size}-{config.norm}-{config.pool}-{config.digit_head}"
        f"-{config.stage_pool}-{config.pool_placement}"
    )


CONFIGS = [
    ConvEncoderConfig(),
    ConvEncoderConfig(in_channels=3, image_size=32),
    ConvEncoderConfig(in_channels=3, image_size=32, pool="avg"),
    ConvEncoderConfig(image_size=30, channels=(4, 8), convs_per_stage=2, kernel_size=5),
    ConvEncoderConfig(channels=(8,), norm="none", activation="gelu", dropout=0.5),
    ConvEncoderConfig(image_size=8, channels=(4, 4, 4), activation="silu", num_classes=3),
    ConvEncoderConfig(in_channels=3, image_size=32, norm="group", num_groups=4, stage_pool="avg"),
    ConvEncoderConfig(
        channels=(8, 8, 16), convs_per_stage=(1, 2, 3), stage_pool=("max", "none", "avg")
    ),
    ConvEncoderConfig(in_channels=3, image_size=32, channels=(8, 16), digit_head="conv"),
    ConvEncoderConfig(image_size=20, channels=(4, 8), stage_pool="none", digit_head="conv"),
    ConvEncoderConfig(channels=(4, 8, 8), stage_pool="stride"),
    ConvEncoderConfig(channels=(4, 8), stage_pool=("max", "stride"), pool_placement="after_conv"),
    ConvEncoderConfig(channels=(4, 8), convs_per_stage=2, pool_placement="after_conv"),
    ConvEncoderConfig(channels=(4, 8), channels_last=False, train_shift=3),
]


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_encoder_output_shapes(config):
    encoder = ConvEncoder(config)
    images = torch.randn(5, config.in_channels, config.image_size, config.image_size)

    logits, features = encoder(images)

    side = pooled_side(config)
    spatial = 1 if config.pool == "avg" else side * side
    assert logits.shape == (5, config.num_classes)
    assert features.shape == (5, config.channels[-1] * spatial)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
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
        ("norm", "bacth", "['batch', 'group', 'none']"),
        ("activation", "tanh", "['relu', 'gelu', 'silu']"),
        ("pool", "max", "['flatten', 'avg']"),
        ("stage_pool", "min", "['max', 'avg', 'stride', 'none']"),
        ("stage_pool", ("max", "mean", "max"), "['max', 'avg', 'stride', 'none']"),
        ("digit_head", "mlp", "['linear', 'conv']"),
    ],
)
def test_invalid_option_lists_choices(option, value, choices):
    bad = value if isinstance(value, str) else value[1]
    with pytest.raises(
        ValueError, match=re.escape(f"`{option}`='{bad}'; expected one of {choices}")
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


@pytest.mark.parametrize("name", ["in_channels", "convs_per_stage", "num_classes", "num_groups"])
def test_zero_count_rejected(name):
    with pytest.raises(ValueError, match=rf"`{name}` >= 1, but got 0\b"):
        ConvEncoderConfig(**{name: 0})


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_dropout_out_of_range(dropout):
    with pytest.raises(ValueError, match=re.escape(f"`dropout` in [0, 1), but got {dropout!r}")):
        ConvEncoderConfig(dropout=dropout)


def conv_params(widths: list[int], kernel: int, bias: bool) -> int:
    """Weights (and biases) of a chain of convolutions through ``widths``."""
    pairs = zip(widths[:-1], widths[1:], strict=True)
    return sum(c_in * c_out * kernel * kernel + (c_out if bias else 0) for c_in, c_out in pairs)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_small_preset_is_model_default():
    assert FusionModelConfig().encoder == ConvEncoderConfig.small()


def test_small_preset_options():
    config = ConvEncoderConfig.small()

    assert config.pool_placement == "after_conv"
    assert config.train_shift == 1
    assert config.channels_last


def test_small_preset_parameter_count():
    convs = conv_params([1, 16, 32, 64, 128], 3, bias=False)
    norms = 2 * (16 + 32 + 64 + 128)
    classifier = 128 * 1 * 1 * 10 + 10

    assert count(ConvEncoder(ConvEncoderConfig.small())) == convs + norms + classifier == 98682


def test_saved_config_without_new_fields_loads_old_order():
    data = asdict(ConvEncoderConfig())
    for name in ("pool_placement", "channels_last", "train_shift"):
        del data[name]

    config = ConvEncoderConfig(**data)

    assert config.pool_placement == "after_activation"
    assert config.train_shift == 0


def test_default_encoder_parameter_count():
    convs = conv_params([1, 16, 32, 64], 3, bias=False)
    norms = 2 * (16 + 32 + 64)
    classifier = 64 * 3 * 3 * 10 + 10

    assert count(ConvEncoder(ConvEncoderConfig())) == convs + norms + classifier == 29178


def test_wide_preset_parameter_count():
    convs = conv_params([1, 32, 64, 128], 3, bias=False)
    norms = 2 * (32 + 64 + 128)
    classifier = 128 * 3 * 3 * 10 + 10

    assert count(ConvEncoder(ConvEncoderConfig.wide())) == convs + norms + classifier


def test_reference_preset_parameter_count():
    expected = conv_params([1, 32, 64, 128, 256, 512, 1024, 10], 3, bias=True)

    assert count(ConvEncoder(ConvEncoderConfig.reference())) == expected == 6_379_786


def test_reference_preset_layers():
    encoder = ConvEncoder(ConvEncoderConfig.reference())

    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in encoder.modules() if isinstance(m, nn.MaxPool2d)]
    norms = [m for m in encoder.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]

    assert [conv.out_channels for conv in convs] == [32, 64, 128, 256, 512, 1024, 10]
    assert all(conv.kernel_size == (3, 3) for conv in convs)
    assert len(pools) == 2
    assert norms == []


def test_reference_pools_follow_second_and_fourth_conv():
    encoder = ConvEncoder(ConvEncoderConfig.reference())

    kinds = [type(m) for m in encoder.features if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]

    conv, pool = nn.Conv2d, nn.MaxPool2d
    assert kinds == [conv, conv, pool, conv, conv, pool, conv, conv]


def test_conv_head_averages_class_map():
    encoder = ConvEncoder(ConvEncoderConfig(channels=(4, 8), digit_head="conv")).eval()
    images = torch.randn(3, 1, 28, 28)

    logits, features = encoder(images)

    feature_map = features.view(3, 8, 7, 7)
    weight, bias = encoder.classifier.weight, encoder.classifier.bias
    class_map = F.conv2d(feature_map, weight, bias, padding=1)
    torch.testing.assert_close(logits, class_map.mean(dim=(2, 3)))


def test_conv_head_features_are_flat_map():
    encoder = ConvEncoder(ConvEncoderConfig.reference())

    assert encoder.num_features == 1024 * 7 * 7
    assert encoder.feature_shape == (1024, 7, 7)


def test_conv_head_needs_flatten():
    with pytest.raises(
        ValueError, match=r"`digit_head`='conv' needs `pool`='flatten'.*got `pool`='avg'"
    ):
        ConvEncoderConfig(digit_head="conv", pool="avg")


@pytest.mark.parametrize("name", ENCODER_PRESETS)
def test_preset_by_name(name):
    assert ConvEncoderConfig.preset(name) == getattr(ConvEncoderConfig, name)()


def test_unknown_preset():
    with pytest.raises(
        ValueError,
        match=re.escape("`preset`='tiny'; expected one of ['small', 'wide', 'reference']"),
    ):
        ConvEncoderConfig.preset("tiny")


@pytest.mark.parametrize("name", ENCODER_PRESETS)
def test_preset_json_round_trip(name):
    config = ConvEncoderConfig.preset(name)

    rebuilt = ConvEncoderConfig(**json.loads(json.dumps(asdict(config))))

    assert rebuilt == config


def test_group_norm_layers():
    encoder = ConvEncoder(ConvEncoderConfig(norm="group", num_groups=4))

    norms = [m for m in encoder.modules() if isinstance(m, nn.GroupNorm)]
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]

    assert [norm.num_groups for norm in norms] == [4, 4, 4]
    assert [norm.num_channels for norm in norms] == [16, 32, 64]
    assert all(conv.bias is None for conv in convs)


def test_group_norm_independent_of_batch():
    encoder = ConvEncoder(ConvEncoderConfig(norm="group", num_groups=4)).train()
    images = torch.randn(6, 1, 28, 28)

    whole, _ = encoder(images)
    single, _ = encoder(images[:1])

    torch.testing.assert_close(whole[:1], single)


def test_group_norm_groups_must_divide():
    with pytest.raises(
        ValueError, match=r"`num_groups`=8 does not divide the 12 channels of stage 2"
    ):
        ConvEncoderConfig(channels=(16, 12), norm="group")


def test_num_groups_unused_without_group_norm():
    encoder = ConvEncoder(ConvEncoderConfig(channels=(12,), num_groups=5))

    assert count(encoder) > 0


@pytest.mark.parametrize(("pooling", "kind"), [("max", nn.MaxPool2d), ("avg", nn.AvgPool2d)])
def test_stage_pool_kind(pooling, kind):
    encoder = ConvEncoder(ConvEncoderConfig(stage_pool=pooling))

    pools = [m for m in encoder.modules() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]

    assert [type(m) for m in pools] == [kind] * 3


def test_stage_pool_avg_values():
    encoder = ConvEncoder(ConvEncoderConfig(channels=(4,), norm="none", stage_pool="avg"))
    images = torch.randn(2, 1, 28, 28)

    activation = F.relu(encoder.features[0](images))  # (2, 4, 28, 28)
    expected = activation.view(2, 4, 14, 2, 14, 2).mean(dim=(3, 5)).flatten(1)

    torch.testing.assert_close(encoder.forward_features(images), expected)


def test_stage_pool_none_keeps_size():
    config = ConvEncoderConfig(channels=(4, 8), stage_pool=("none", "max"))

    assert ConvEncoder(config).feature_shape == (8, 14, 14)


def test_convs_per_stage_tuple():
    encoder = ConvEncoder(ConvEncoderConfig(channels=(4, 8, 8), convs_per_stage=(1, 3, 2)))

    widths = [m.out_channels for m in encoder.modules() if isinstance(m, nn.Conv2d)]

    assert widths == [4, 8, 8, 8, 8, 8]


@pytest.mark.parametrize(
    ("name", "value"), [("convs_per_stage", (1, 2)), ("stage_pool", ("max", "max", "max", "max"))]
)
def test_per_stage_length_mismatch(name, value):
    with pytest.raises(
        ValueError, match=re.escape(f"`{name}` to give one entry per stage (3), but got {value!r}")
    ):
        ConvEncoderConfig(**{name: value})


def test_convs_per_stage_zero_entry():
    with pytest.raises(ValueError, match=r"`convs_per_stage` >= 1, but got \(1, 0, 1\)"):
        ConvEncoderConfig(convs_per_stage=(1, 0, 1))


def test_image_size_counts_pooled_stages_only():
    config = ConvEncoderConfig(image_size=4, stage_pool=("max", "none", "max"))

    assert ConvEncoder(config).feature_shape == (64, 1, 1)


def test_lists_become_tuples():
    config = ConvEncoderConfig(convs_per_stage=[1, 1, 2], stage_pool=["max", "avg", "none"])

    assert config.convs_per_stage == (1, 1, 2)
    assert config.stage_pool == ("max", "avg", "none")


def test_three_channel_32_forward():
    encoder = ConvEncoder(ConvEncoderConfig(in_channels=3, image_size=32))

    logits, features = encoder(torch.randn(2, 3, 32, 32))

    assert logits.shape == (2, 10)
    assert features.shape == (2, 64 * 4 * 4)


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy ``source``'s parameters and buffers into ``target``, in declaration order."""
    with torch.no_grad():
        pairs = zip(target.state_dict().values(), source.state_dict().values(), strict=True)
        for mine, theirs in pairs:
            mine.copy_(theirs)


def test_pool_placement_same_function_without_norm():
    first = ConvEncoder(ConvEncoderConfig(channels=(4, 8), norm="none"))
    second = ConvEncoder(
        ConvEncoderConfig(channels=(4, 8), norm="none", pool_placement="after_conv")
    )
    copy_weights(first, second)
    images = torch.randn(3, 1, 28, 28)

    torch.testing.assert_close(second(images)[0], first(images)[0])
    torch.testing.assert_close(second(images)[1], first(images)[1])


def test_pool_placement_after_conv_order():
    encoder = ConvEncoder(ConvEncoderConfig(channels=(4,), pool_placement="after_conv"))

    kinds = [type(layer) for layer in encoder.features]

    assert kinds[:4] == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU]


def test_pool_placement_keeps_state_dict_keys():
    old = ConvEncoder(ConvEncoderConfig())
    new = ConvEncoder(ConvEncoderConfig(pool_placement="after_activation", train_shift=2))

    assert old.state_dict().keys() == new.state_dict().keys()


def test_pool_placement_invalid():
    with pytest.raises(ValueError, match=r"Invalid `pool_placement`='before'; expected one of"):
        ConvEncoderConfig(pool_placement="before")


def test_stride_stage_uses_strided_conv():
    encoder = ConvEncoder(ConvEncoderConfig(channels=(4, 8), stage_pool="stride"))

    convs = [layer for layer in encoder.features if isinstance(layer, nn.Conv2d)]

    assert [conv.stride for conv in convs] == [(2, 2), (2, 2)]
    assert not any(isinstance(layer, nn.MaxPool2d) for layer in encoder.features)
    assert encoder.feature_shape == (8, 7, 7)


def test_stride_rounds_odd_sizes_up():
    config = ConvEncoderConfig(channels=(4, 4, 4), stage_pool="stride")

    assert config.feature_map_size == 4


def test_channels_last_weights():
    encoder = ConvEncoder(ConvEncoderConfig(channels=(4, 8)))
    contiguous = ConvEncoder(ConvEncoderConfig(channels=(4, 8), channels_last=False))

    # The second convolution's: with one input channel both layouts look alike.
    weight = encoder.features[4].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not contiguous.features[4].weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_same_function():
    first = ConvEncoder(ConvEncoderConfig(channels=(4, 8), channels_last=False)).eval()
    second = ConvEncoder(ConvEncoderConfig(channels=(4, 8))).eval()
    copy_weights(first, second)
    images = torch.randn(3, 1, 28, 28)

    torch.testing.assert_close(second(images)[0], first(images)[0])


def test_random_shift_identity_in_eval():
    shift = RandomShift(2).eval()
    images = torch.randn(4, 1, 28, 28)

    assert torch.equal(shift(images), images)


def test_random_shift_zero_is_identity():
    images = torch.randn(4, 1, 28, 28)

    assert torch.equal(RandomShift(0).train()(images), images)


def shifted(images: torch.Tensor, dy: int, dx: int, max_shift: int) -> torch.Tensor:
    """Translate ``images`` by ``(dy, dx)``, repeating the edge pixels, by plain slicing."""
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    height, width = images.shape[-2:]
    top, left = max_shift - dy, max_shift - dx
    return padded[..., top : top + height, left : left + width]


def test_random_shift_moves_each_image_within_bound():
    torch.manual_seed(0)
    images = torch.randn(16, 2, 10, 12)

    moved = RandomShift(2).train()(images)

    offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    for index in range(len(images)):
        matches = [
            offset
            for offset in offsets
            if torch.equal(moved[index], shifted(images[index : index + 1], *offset, 2)[0])
        ]
        assert matches, f"image {index} is not a translation by at most 2 pixels"


def test_random_shift_varies_between_images():
    torch.manual_seed(0)
    images = torch.randn(1, 1, 12, 12).expand(32, 1, 12, 12)

    moved = RandomShift(2).train()(images)

    distinct = {tuple(image.flatten().tolist()) for image in moved}
    assert len(distinct) > 1


def test_random_shift_reproducible_with_seed():
    images = torch.randn(8, 1, 28, 28)
    shift = RandomShift(3).train()

    torch.manual_seed(5)
    first = shift(images)
    torch.manual_seed(5)
    second = shift(images)

    assert torch.equal(first, second)


def test_encoder_shifts_only_in_training():
    encoder = ConvEncoder(ConvEncoderConfig(channels=(4,), train_shift=2))
    images = torch.randn(4, 1, 28, 28)

    encoder.eval()
    first, second = encoder.forward_features(images), encoder.forward_features(images)
    encoder.train()
    torch.manual_seed(0)
    shifted_first = encoder.forward_features(images)
    shifted_second = encoder.forward_features(images)

    assert torch.equal(first, second)
    assert not torch.equal(shifted_first, shifted_second)
    assert encoder.shift.max_shift == 2


@pytest.mark.parametrize("value", [-1, 28])
def test_train_shift_out_of_range(value):
    with pytest.raises(ValueError, match=rf"`train_shift` in \[0, 28\) pixels, but got {value}"):
        ConvEncoderConfig(train_shift=value)


# Batches of one image


def norm_input_sizes(config: ConvEncoderConfig) -> list[int]:
    """Record the height of every BatchNorm input in one training forward pass."""
    encoder = ConvEncoder(config).train()
    sizes: list[int] = []
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(lambda _, inputs, __: sizes.append(inputs[0].shape[-1]))
    size = config.image_size
    encoder(torch.zeros(2, config.in_channels, size, size))
    return sizes


@pytest.mark.parametrize(
    "config",
    [
        ConvEncoderConfig(),
        ConvEncoderConfig.small(),
        ConvEncoderConfig.wide(),
        ConvEncoderConfig(channels=(8, 8, 8, 8)),
        ConvEncoderConfig(channels=(8, 8, 8, 8), pool_placement="after_conv"),
        ConvEncoderConfig(channels=(8, 8, 8, 8), stage_pool="stride"),
        ConvEncoderConfig(channels=(8, 8), convs_per_stage=(1, 2), pool_placement="after_conv"),
        ConvEncoderConfig(channels=(8, 8, 8, 8), stage_pool=("max", "max", "none", "max")),
        ConvEncoderConfig(image_size=8, channels=(8, 8, 8), pool_placement="after_conv"),
        ConvEncoderConfig(image_size=8, channels=(8, 8, 8, 8), stage_pool=("max",) * 3 + ("none",)),
        ConvEncoderConfig(image_size=8, channels=(8, 8, 8), stage_pool="stride"),
        ConvEncoderConfig(image_size=8, channels=(8, 8, 8)),
    ],
)
def test_needs_two_images_matches_norm_inputs(config):
    encoder = ConvEncoder(config)

    assert encoder.needs_two_images == (min(norm_input_sizes(config)) == 1)


def test_small_preset_rejects_single_training_image():
    encoder = ConvEncoder(ConvEncoderConfig.small()).train()

    with pytest.raises(ValueError, match="training batch of 1 image cannot pass"):
        encoder(torch.zeros(1, 1, 28, 28))


def test_small_preset_single_image_in_eval_mode():
    encoder = ConvEncoder(ConvEncoderConfig.small()).eval()

    logits, _ = encoder(torch.zeros(1, 1, 28, 28))

    assert logits.shape == (1, 10)


def test_group_norm_trains_on_single_image():
    config = ConvEncoderConfig(
        channels=(16, 32, 64, 128), norm="group", pool_placement="after_conv"
    )
    encoder = ConvEncoder(config).train()

    logits, _ = encoder(torch.zeros(1, 1, 28, 28))

    assert not encoder.needs_two_images
    assert logits.shape == (1, 10)
