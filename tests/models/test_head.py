import math
import re

import pytest
import torch
import torch.nn.functional as F

from mnist_fusion.models import FusionHead, FusionHeadConfig

FUSE = ["probs", "logits", "features"]


def make_inputs(n: int = 6, num_features: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=generator)
    features = torch.randn(n, num_features, generator=generator)
    side = torch.randint(0, 10, (n,), generator=generator)
    return logits, features, side


@pytest.mark.parametrize("fuse", FUSE)
def test_head_output_shape(fuse):
    head = FusionHead(FusionHeadConfig(fuse=fuse), num_classes=10, num_features=32)

    out = head(*make_inputs(n=6))

    assert out.shape == (6,)


@pytest.mark.parametrize(("fuse", "width"), [("probs", 10), ("logits", 10), ("features", 32)])
def test_head_input_width(fuse, width):
    head = FusionHead(
        FusionHeadConfig(fuse=fuse, num_side_values=7), num_classes=10, num_features=32
    )

    assert head.linear.in_features == width + 7
    assert head.mlp[0].in_features == width + 7


def test_probs_input_matches_manual():
    config = FusionHeadConfig(fuse="probs", temperature=0.5)
    head = FusionHead(config, num_classes=10, num_features=32)
    logits, features, side = make_inputs()

    inputs = torch.cat([torch.softmax(logits / 0.5, dim=-1), F.one_hot(side, 10).float()], dim=1)
    expected = (head.linear(inputs) + head.mlp(inputs)).squeeze(-1)

    torch.testing.assert_close(head(logits, features, side), expected)


def test_linear_part_expresses_digit_plus_side():
    head = FusionHead(FusionHeadConfig(fuse="probs"), num_classes=10, num_features=32)
    with torch.no_grad():
        head.linear.weight.copy_(torch.cat([torch.arange(10.0), torch.arange(10.0)])[None])
        head.linear.bias.zero_()
        head.mlp[-1].weight.zero_()
        head.mlp[-1].bias.zero_()
    digits = torch.tensor([0, 3, 9, 4, 7])
    side = torch.tensor([9, 2, 9, 0, 5])
    confident_logits = F.one_hot(digits, 10).float() * 20

    out = head(confident_logits, torch.zeros(5, 32), side)

    torch.testing.assert_close(out, (digits + side).float())


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_narrow_integer_side_accepted(dtype):
    head = FusionHead(FusionHeadConfig(), num_classes=10, num_features=32)
    logits, features, side = make_inputs()

    out = head(logits, features, side.to(dtype))

    torch.testing.assert_close(out, head(logits, features, side))


def test_side_changes_output():
    head = FusionHead(FusionHeadConfig(), num_classes=10, num_features=32)
    logits, features, _ = make_inputs(n=2)

    low = head(logits, features, torch.tensor([0, 0]))
    high = head(logits, features, torch.tensor([9, 9]))

    assert not torch.allclose(low, high)


@pytest.mark.parametrize("fuse", FUSE)
def test_head_gradient_reaches_fused_input(fuse):
    head = FusionHead(FusionHeadConfig(fuse=fuse), num_classes=10, num_features=32)
    logits, features, side = make_inputs()
    logits.requires_grad_(True)
    features.requires_grad_(True)

    head(logits, features, side).sum().backward()

    fused = features if fuse == "features" else logits
    assert fused.grad is not None
    assert fused.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fuse": "argmax"}, "`fuse`='argmax'; expected one of ['probs', 'logits', 'features']"),
        ({"sum_head": "softmax"}, "`sum_head`='softmax'; expected one of ['regression']"),
        ({"num_side_values": 0}, "`num_side_values` >= 1, got 0"),
        ({"temperature": 0.0}, "`temperature` > 0, got 0.0"),
        ({"temperature": -1.0}, "`temperature` > 0, got -1.0"),
        ({"temperature": math.nan}, "`temperature` > 0, got nan"),
        ({"hidden": 0}, "`hidden` >= 1, got 0"),
    ],
)
def test_head_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FusionHeadConfig(**kwargs)
