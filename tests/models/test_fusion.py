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
    expected_sum,
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


HEADS = ["regression", "classification", "exact"]
COMBINATIONS = [
    {"fuse": fuse, "combine": combine, "side_encoding": side, "sum_head": sum_head}
    for fuse in ["probs", "logits", "features"]
    for combine in ["concat", "film"]
    for side in ["one_hot", "embedding"]
    for sum_head in ["regression", "classification"]
] + [{"sum_head": "exact"}]

# Recorded from the default model of mnist_fusion 0.1.0: torch.manual_seed(0), then
# FusionModel(), eval mode, images torch.randn(4, 1, 28, 28) from a generator seeded 1.
# That model's encoder is ConvEncoderConfig()'s field defaults, which saved
# configurations rely on, so the tests build it from them.
DEFAULT_SUMS = [0.2019759565591812, 0.224339097738266, 0.34639930725097656, 0.17389577627182007]
DEFAULT_KEYS = [
    "encoder.features.0.weight",
    *[f"encoder.features.1.{name}" for name in ("weight", "bias", "running_mean", "running_var")],
    "encoder.features.1.num_batches_tracked",
    "encoder.features.4.weight",
    *[f"encoder.features.5.{name}" for name in ("weight", "bias", "running_mean", "running_var")],
    "encoder.features.5.num_batches_tracked",
    "encoder.features.8.weight",
    *[f"encoder.features.9.{name}" for name in ("weight", "bias", "running_mean", "running_var")],
    "encoder.features.9.num_batches_tracked",
    "encoder.classifier.weight",
    "encoder.classifier.bias",
    "head.linear.weight",
    "head.linear.bias",
    "head.mlp.0.weight",
    "head.mlp.0.bias",
    "head.mlp.2.weight",
    "head.mlp.2.bias",
]


def options_id(options: dict) -> str:
    return "-".join(options.values())


def sum_only_loss(output: FusionOutput, target: torch.Tensor) -> torch.Tensor:
    if output.sum_logits is not None:
        return F.cross_entropy(output.sum_logits, target)
    return F.mse_loss(output.sum, target.float())


def test_default_parameter_count():
    model = FusionModel(FusionModelConfig())

    assert sum(p.numel() for p in model.parameters()) == 100112


def test_default_state_keys():
    config = FusionModelConfig(encoder=ConvEncoderConfig())
    assert list(FusionModel(config).state_dict()) == DEFAULT_KEYS


def test_default_outputs_fixed_seed():
    torch.manual_seed(0)
    model = FusionModel(FusionModelConfig(encoder=ConvEncoderConfig())).eval()
    images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        out = model(images, torch.tensor([0, 3, 7, 9]))

    torch.testing.assert_close(out.sum, torch.tensor(DEFAULT_SUMS), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sum_head", HEADS)
def test_predict_int64_every_head(sum_head):
    batch = make_batch(6)

    digit, total = small_model(sum_head=sum_head).predict(batch["image"], batch["side"])

    assert digit.dtype == torch.int64
    assert total.dtype == torch.int64
    assert total.shape == (6,)


@pytest.mark.parametrize("sum_head", ["classification", "exact"])
def test_sum_logits_output(sum_head):
    batch = make_batch(5)

    out = small_model(sum_head=sum_head)(batch["image"], batch["side"])

    assert out.sum_logits.shape == (5, 19)
    torch.testing.assert_close(out.sum, expected_sum(out.sum_logits))
    assert out.second_digit_logits is None


def test_exact_sum_logits_normalised():
    batch = make_batch(5)

    out = small_model(sum_head="exact")(batch["image"], batch["side"])

    torch.testing.assert_close(out.sum_logits.logsumexp(-1), torch.zeros(5))


def test_classification_predicts_argmax():
    model = small_model(sum_head="classification").eval()
    batch = make_batch(8)

    _, total = model.predict(batch["image"], batch["side"])

    with torch.no_grad():
        expected = model(batch["image"], batch["side"]).sum_logits.argmax(-1)
    assert torch.equal(total, expected)


def test_exact_consistency():
    torch.manual_seed(3)
    model = small_model(sum_head="exact")
    batch = make_batch(64, seed=4)

    digit, total = model.predict(batch["image"] * 3, batch["side"])

    assert torch.equal(total, digit + batch["side"])


def test_exact_consistency_with_tied_logits():
    model = small_model(sum_head="exact")
    with torch.no_grad():
        model.encoder.classifier.weight.zero_()
        model.encoder.classifier.bias.zero_()
    batch = make_batch(6)

    digit, total = model.predict(batch["image"], batch["side"])

    assert digit.tolist() == [0] * 6
    assert torch.equal(total, batch["side"])


def test_exact_head_side_range_follows_config():
    model = small_model(sum_head="exact", num_side_values=4)

    out = model(torch.randn(2, 1, 28, 28), torch.tensor([0, 3]))

    assert out.sum_logits.shape == (2, 13)


@pytest.mark.parametrize("options", COMBINATIONS, ids=options_id)
def test_sum_loss_alone_trains_encoder(options):
    model = small_model(**options)
    batch = make_batch(16)

    output = model(batch["image"], batch["side"])
    sum_only_loss(output, batch["sum"]).backward()

    first_conv = model.encoder.features[0].weight
    classifier = model.encoder.classifier.weight
    assert first_conv.grad.abs().sum() > 0
    if options.get("fuse") != "features":
        assert classifier.grad.abs().sum() > 0


def test_pair_sum_loss_trains_encoder():
    model = small_model(sum_head="exact")
    batch = make_batch(16)

    output = model(batch["image"], second_image=batch["image"].flip(0))
    F.cross_entropy(output.sum_logits, batch["digit"] + batch["digit"].flip(0)).backward()

    assert model.encoder.features[0].weight.grad.abs().sum() > 0
    assert model.encoder.classifier.weight.grad.abs().sum() > 0


def test_pair_outputs():
    model = small_model(sum_head="exact").eval()
    first, second = make_batch(5, seed=1)["image"], make_batch(5, seed=2)["image"]

    out = model(first, second_image=second)

    with torch.no_grad():
        first_logits, _ = model.encoder(first)
        second_logits, _ = model.encoder(second)
    torch.testing.assert_close(out.digit_logits, first_logits)
    torch.testing.assert_close(out.second_digit_logits, second_logits)


def test_pair_sum_is_convolution():
    model = small_model(sum_head="exact").eval()
    first, second = make_batch(3, seed=1)["image"], make_batch(3, seed=2)["image"]

    out = model(first, second_image=second)

    p, q = out.digit_logits.softmax(-1).double(), out.second_digit_logits.softmax(-1).double()
    expected = torch.zeros(3, 19, dtype=torch.float64)
    for row in range(3):
        for a in range(10):
            for b in range(10):
                expected[row, a + b] += p[row, a] * q[row, b]
    torch.testing.assert_close(out.sum_logits.exp().double(), expected)


def test_pair_width_ignores_side_values():
    model = small_model(sum_head="exact", num_side_values=4)
    images = torch.randn(2, 1, 28, 28)

    out = model(images, second_image=images)

    assert out.sum_logits.shape == (2, 19)


def test_pair_predict():
    model = small_model(sum_head="exact")
    batch = make_batch(4)

    digit, total = model.predict(batch["image"], second_image=batch["image"])

    model.eval()
    with torch.no_grad():
        out = model(batch["image"], second_image=batch["image"])
    assert digit.dtype == torch.int64
    assert torch.equal(digit, out.digit_logits.argmax(-1))
    assert torch.equal(total, out.sum_logits.argmax(-1))


def test_pair_needs_exact_head():
    images = torch.zeros(2, 1, 28, 28)

    with pytest.raises(
        ValueError, match=r"Two-image addition needs sum_head='exact'.*sum_head='regression'"
    ):
        small_model()(images, second_image=images)


def test_pair_rejects_side():
    images = torch.zeros(2, 1, 28, 28)

    with pytest.raises(ValueError, match=r"Got both `side` and `second_image`"):
        small_model(sum_head="exact")(images, torch.tensor([1, 2]), second_image=images)


def test_missing_side():
    with pytest.raises(
        ValueError, match=r"Expected a `side` tensor \[N\] of integers, but got None"
    ):
        small_model()(torch.zeros(2, 1, 28, 28))


def test_pair_shape_mismatch():
    expected = re.escape(
        "Expected `second_image` of shape [2, 1, 28, 28] to match the first images, "
        "but got [3, 1, 28, 28]"
    )

    with pytest.raises(ValueError, match=expected):
        small_model(sum_head="exact")(
            torch.zeros(2, 1, 28, 28), second_image=torch.zeros(3, 1, 28, 28)
        )


def test_pair_dtype_mismatch():
    second = torch.zeros(2, 1, 28, 28, dtype=torch.float64)

    with pytest.raises(
        ValueError, match=r"`second_image` of dtype torch.float32.*got torch.float64"
    ):
        small_model(sum_head="exact")(torch.zeros(2, 1, 28, 28), second_image=second)


def test_pair_checks_first_image():
    images = torch.zeros(2, 1, 32, 32)

    with pytest.raises(ValueError, match=re.escape("shape [N, 1, 28, 28], but got [2, 1, 32, 32]")):
        small_model(sum_head="exact")(images, second_image=images)


def test_complex_side_rejected():
    side = torch.tensor([1, 2], dtype=torch.complex64)

    with pytest.raises(ValueError, match=r"integer side tensor, but got dtype torch.complex64"):
        small_model()(torch.zeros(2, 1, 28, 28), side)


@pytest.mark.parametrize("sum_head", HEADS)
def test_config_json_round_trip_every_head(sum_head):
    config = FusionModelConfig(
        encoder=ConvEncoderConfig.reference(), head=FusionHeadConfig(sum_head=sum_head)
    )

    rebuilt = FusionModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))

    assert rebuilt == config


def test_config_from_earlier_dict():
    # The dict that mnist_fusion 0.1.0 wrote, before the newer fields existed.
    data = {
        "encoder": {
            "in_channels": 1,
            "image_size": 28,
            "channels": [16, 32, 64],
            "convs_per_stage": 1,
            "kernel_size": 3,
            "norm": "batch",
            "activation": "relu",
            "dropout": 0.0,
            "pool": "flatten",
            "num_classes": 10,
        },
        "head": {
            "num_side_values": 10,
            "fuse": "probs",
            "temperature": 0.1,
            "hidden": 64,
            "sum_head": "regression",
        },
    }

    # It loads as the 0.1.0 network, which is not the current default encoder.
    assert FusionModelConfig.from_dict(data) == FusionModelConfig(encoder=ConvEncoderConfig())
