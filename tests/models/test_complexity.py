import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mnist_fusion.models import (
    ConvEncoderConfig,
    FusionHeadConfig,
    FusionModel,
    FusionModelConfig,
    ModelComplexity,
    model_complexity,
)


def default_macs() -> int:
    """Multiply-accumulates of the default model, layer by layer."""
    convs = (
        28 * 28 * 16 * (1 * 9)
        + 14 * 14 * 32 * (16 * 9)
        + 7 * 7 * 64 * (32 * 9)
        + 3 * 3 * 128 * (64 * 9)
    )
    classifier = 128 * 1 * 1 * 10
    head = 20 * 1 + 20 * 64 + 64 * 1
    return convs + classifier + head


def test_default_model():
    assert model_complexity(FusionModel()) == ModelComplexity(100112, default_macs())


@pytest.mark.parametrize(
    "config",
    [
        FusionModelConfig(),
        FusionModelConfig(encoder=ConvEncoderConfig(in_channels=3, image_size=32, norm="group")),
        FusionModelConfig(
            encoder=ConvEncoderConfig(channels=(8, 16), digit_head="conv"),
            head=FusionHeadConfig(sum_head="classification", combine="film"),
        ),
    ],
    ids=["default", "3x32-group", "conv-film"],
)
def test_macs_match_flop_counter(config):
    model = FusionModel(config).eval()
    encoder = config.encoder
    image = torch.zeros(1, encoder.in_channels, encoder.image_size, encoder.image_size)

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(image, torch.zeros(1, dtype=torch.int64))

    assert model_complexity(model).macs_per_image * 2 == counter.get_total_flops()


def test_reference_preset():
    model = FusionModel(FusionModelConfig(encoder=ConvEncoderConfig.reference()))

    complexity = model_complexity(model)

    assert complexity.parameters == 6_379_786 + 21 + 20 * 64 + 64 + 65
    assert complexity.macs_per_image > 300_000_000


def test_restores_mode_and_state():
    model = FusionModel().train()
    before = {name: value.clone() for name, value in model.state_dict().items()}

    model_complexity(model)

    assert model.training is True
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_removes_hooks():
    model = FusionModel()

    model_complexity(model)

    assert all(not module._forward_hooks for module in model.modules())


def test_rejects_other_module():
    with pytest.raises(TypeError, match="Expected a FusionModel, but got Linear"):
        model_complexity(torch.nn.Linear(2, 2))
