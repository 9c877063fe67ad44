import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_fusion.losses import FusionLoss
from mnist_fusion.models import (
    ConvEncoderConfig,
    FusionHeadConfig,
    FusionModel,
    FusionModelConfig,
    FusionOutput,
    predicted_digit,
    predicted_sum,
)

SMALL = ConvEncoderConfig(channels=(4, 8))


def small_model(**head) -> FusionModel:
    return FusionModel(FusionModelConfig(encoder=SMALL, head=FusionHeadConfig(**head)))


def make_batch(n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    digit = torch.randint(0, 10, (n,), generator=generator)
    side = torch.randint(0, 10, (n,), generator=generator)
    return {
        "image": torch.randn(n, 1, 28, 28, generator=generator),
        "side": side,
        "digit": digit,
        "sum": digit + side,
    }


def set_constant_sum(model: FusionModel, value: float) -> None:
    """Make the head output ``value`` for every input."""
    with torch.no_grad():
        model.head.linear.weight.zero_()
        model.head.linear.bias.fill_(value)
        model.head.mlp[-1].weight.zero_()
        model.head.mlp[-1].bias.zero_()


@pytest.mark.parametrize("n", [1, 5])
def test_forward_shapes(n):
    batch = make_batch(n)

    out = small_model()(batch["image"], batch["side"])

    assert isinstance(out, FusionOutput)
    assert out.digit_logits.shape == (n, 10)
    assert out.sum.shape == (n,)
    assert out.sum_logits is None


def test_forward_three_channel_config():
    config = FusionModelConfig(encoder=ConvEncoderConfig(in_channels=3, image_size=32))
    model = FusionModel(config)

    out = model(torch.randn(2, 3, 32, 32), torch.tensor([0, 9]))

    assert out.digit_logits.shape == (2, 10)
    assert out.sum.shape == (2,)


def test_predict_dtype_and_shape():
    batch = make_batch(6)

    digit, total = small_model().predict(batch["image"], batch["side"])

    assert digit.dtype == torch.int64
    assert total.dtype == torch.int64
    assert digit.shape == (6,)
    assert total.shape == (6,)


def test_predict_digit_is_eval_argmax():
    model = small_model()
    batch = make_batch(6)

    digit, _ = model.predict(batch["image"], batch["side"])

    model.eval()
    with torch.no_grad():
        expected = model(batch["image"], batch["side"]).digit_logits.argmax(dim=1)
    assert torch.equal(digit, expected)


@pytest.mark.parametrize("training", [True, False])
def test_predict_restores_mode(training):
    model = small_model()
    model.train(training)
    batch = make_batch(4)

    model.predict(batch["image"], batch["side"])

    assert model.training is training
    assert all(m.training is training for m in model.modules())


def test_predict_runs_in_eval_mode():
    model = small_model().train()
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    batch = make_batch(4)

    model.predict(batch["image"], batch["side"])

    assert modes == [False]


def test_predict_no_gradient():
    batch = make_batch(3)

    digit, total = small_model().predict(batch["image"], batch["side"])

    assert not digit.requires_grad
    assert not total.requires_grad


@pytest.mark.parametrize(
    ("value", "expected"), [(100.0, 18), (-50.0, 0), (7.4, 7), (7.6, 8), (18.4, 18)]
)
def test_predict_sum_rounded_and_clipped(value, expected):
    model = small_model()
    set_constant_sum(model, value)
    batch = make_batch(3)

    _, total = model.predict(batch["image"], batch["side"])

    assert total.tolist() == [expected] * 3


def test_predict_clip_follows_num_side_values():
    model = small_model(num_side_values=4)
    set_constant_sum(model, 100.0)

    _, total = model.predict(torch.randn(2, 1, 28, 28), torch.tensor([0, 3]))

    assert total.tolist() == [12, 12]


def test_max_sum_of_config():
    assert FusionModelConfig().max_sum == 18
    assert FusionModelConfig(head=FusionHeadConfig(num_side_values=5)).max_sum == 13
    assert FusionModelConfig(encoder=ConvEncoderConfig(num_classes=3)).max_sum == 11


def test_predicted_sum_from_sum_logits():
    logits = torch.zeros(3, 19)
    logits[torch.arange(3), torch.tensor([0, 18, 7])] = 1.0
    output = FusionOutput(torch.zeros(3, 10), sum_logits=logits)

    assert predicted_sum(output, 18).tolist() == [0, 18, 7]


def test_predicted_sum_without_sum():
    with pytest.raises(ValueError, match="neither `sum` nor `sum_logits`"):
        predicted_sum(FusionOutput(torch.zeros(2, 10)), 18)


def test_predicted_digit_argmax():
    output = FusionOutput(torch.eye(10)[[4, 0, 9]])

    assert predicted_digit(output).tolist() == [4, 0, 9]


@pytest.mark.parametrize(
    ("shape", "actual"),
    [
        ((2, 28, 28), "[2, 28, 28]"),
        ((2, 3, 28, 28), "[2, 3, 28, 28]"),
        ((2, 1, 32, 32), "[2, 1, 32, 32]"),
        ((2, 1, 28, 27), "[2, 1, 28, 27]"),
    ],
)
def test_wrong_image_shape(shape, actual):
    expected = re.escape(f"Expected images of shape [N, 1, 28, 28], but got {actual}")

    with pytest.raises(ValueError, match=expected):
        small_model()(torch.zeros(shape), torch.tensor([1, 2]))


def test_integer_image_rejected():
    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)

    with pytest.raises(ValueError, match=r"floating-point images, but got dtype torch\.uint8"):
        small_model()(images, torch.tensor([1, 2]))


@pytest.mark.parametrize(("side", "actual"), [([[1], [2]], "[2, 1]"), ([1, 2, 3], "[3]")])
def test_wrong_side_shape(side, actual):
    expected = re.escape(f"Expected side of shape [2] to match the images, but got {actual}")

    with pytest.raises(ValueError, match=expected):
        small_model()(torch.zeros(2, 1, 28, 28), torch.tensor(side))


@pytest.mark.parametrize(
    ("side", "dtype"), [([1.0, 2.0], "torch.float32"), ([True, False], "torch.bool")]
)
def test_non_integer_side(side, dtype):
    with pytest.raises(ValueError, match=rf"integer side tensor, but got dtype {dtype}"):
        small_model()(torch.zeros(2, 1, 28, 28), torch.tensor(side))


@pytest.mark.parametrize("bad", [10, -1])
def test_side_value_out_of_range(bad):
    expected = re.escape(f"Side value {bad} is outside [0, 9]")

    with pytest.raises(ValueError, match=expected):
        small_model()(torch.zeros(2, 1, 28, 28), torch.tensor([3, bad]))


def test_side_range_follows_config():
    model = small_model(num_side_values=4)

    with pytest.raises(ValueError, match=re.escape("Side value 4 is outside [0, 3]")):
        model(torch.zeros(2, 1, 28, 28), torch.tensor([0, 4]))


def test_int32_side_matches_int64():
    model = small_model().eval()
    batch = make_batch(4)

    out32 = model(batch["image"], batch["side"].to(torch.int32))
    out64 = model(batch["image"], batch["side"])

    torch.testing.assert_close(out32.sum, out64.sum)


@pytest.mark.parametrize("fuse", ["probs", "logits", "features"])
def test_sum_loss_trains_encoder(fuse):
    model = small_model(fuse=fuse)
    batch = make_batch(16)

    output = model(batch["image"], batch["side"])
    FusionLoss()(output, batch).sum.backward()

    conv_weights = [p for name, p in model.encoder.features.named_parameters() if p.ndim == 4]
    assert len(conv_weights) == 2
    for weight in conv_weights:
        assert weight.grad is not None
        assert weight.grad.abs().sum() > 0


def test_argmax_head_gives_no_gradient():
    # The reference experiment's head: it read argmax of the digit logits.
    model = small_model()
    batch = make_batch(16)
    argmax_head = nn.Linear(20, 1)

    logits, _ = model.encoder(batch["image"])
    digit = logits.argmax(dim=1)
    inputs = torch.cat([F.one_hot(digit, 10), F.one_hot(batch["side"], 10)], dim=1).float()
    prediction = argmax_head(inputs).squeeze(-1)
    F.mse_loss(prediction, batch["sum"].float()).backward()

    assert not digit.requires_grad
    assert argmax_head.weight.grad is not None
    assert all(p.grad is None for p in model.encoder.parameters())


def test_config_json_round_trip():
    config = FusionModelConfig(
        encoder=ConvEncoderConfig(channels=(4, 8), pool="avg", activation="gelu"),
        head=FusionHeadConfig(fuse="features", hidden=16, temperature=0.5),
    )

    rebuilt = FusionModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))

    assert rebuilt == config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"encoder": {}}, "'head'"),
        ({"encoder": {"widht": 3}, "head": {}}, "widht"),
        ("not a dict", "not a dict"),
    ],
)
def test_config_from_dict_rejects(data, message):
    with pytest.raises(ValueError, match=rf"Invalid model configuration.*{message}"):
        FusionModelConfig.from_dict(data)


def test_config_from_dict_invalid_value():
    data = FusionModelConfig().to_dict()
    data["encoder"]["norm"] = "bacth"

    with pytest.raises(ValueError, match=r"`norm`='bacth'"):
        FusionModelConfig.from_dict(data)
