import math
import re

import pytest
import torch
import torch.nn.functional as F

from mnist_fusion.models import FusionHead, FusionHeadConfig

FUSE = ["probs", "logits", "features"]
LEARNED = [
    {"fuse": fuse, "combine": combine, "side_encoding": side, "sum_head": sum_head}
    for fuse in FUSE
    for combine in ["concat", "film"]
    for side in ["one_hot", "embedding"]
    for sum_head in ["regression", "classification"]
]


def learned_id(options: dict) -> str:
    return "-".join(options.values())


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
        (
            {"sum_head": "softmax"},
            "`sum_head`='softmax'; expected one of ['regression', 'classification', 'exact']",
        ),
        (
            {"side_encoding": "onehot"},
            "`side_encoding`='onehot'; expected one of ['one_hot', 'embedding']",
        ),
        ({"combine": "add"}, "`combine`='add'; expected one of ['concat', 'film', 'attention']"),
        ({"side_dim": 0}, "`side_dim` >= 1, got 0"),
        (
            {"sum_head": "exact", "fuse": "features"},
            "`sum_head`='exact' reads the digit probabilities and the side value only, "
            "so `fuse`='features' has no effect",
        ),
        (
            {"sum_head": "exact", "combine": "film"},
            "so `combine`='film' has no effect; leave `combine` at 'concat'",
        ),
        (
            {"sum_head": "exact", "side_encoding": "embedding"},
            "so `side_encoding`='embedding' has no effect",
        ),
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


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter away from its initial value, zeros included."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)


@pytest.mark.parametrize("options", LEARNED, ids=learned_id)
def test_learned_head_shape(options):
    head = FusionHead(FusionHeadConfig(**options), num_classes=10, num_features=32)

    out = head(*make_inputs(n=5))

    expected = (5,) if options["sum_head"] == "regression" else (5, 19)
    assert out.shape == expected


@pytest.mark.parametrize("options", LEARNED, ids=learned_id)
def test_learned_head_gradient_reaches_encoder_output(options):
    head = FusionHead(FusionHeadConfig(**options), num_classes=10, num_features=32)
    logits, features, side = make_inputs()
    logits.requires_grad_(True)
    features.requires_grad_(True)

    head(logits, features, side).square().sum().backward()

    fused = features if options["fuse"] == "features" else logits
    assert fused.grad.abs().sum() > 0


def test_classification_width_follows_side_values():
    config = FusionHeadConfig(sum_head="classification", num_side_values=4)
    head = FusionHead(config, num_classes=10, num_features=32)

    assert head.linear.out_features == 13
    assert head.mlp[-1].out_features == 13


def test_classification_matches_manual():
    config = FusionHeadConfig(sum_head="classification", fuse="logits")
    head = FusionHead(config, num_classes=10, num_features=32)
    logits, features, side = make_inputs()

    inputs = torch.cat([logits, F.one_hot(side, 10).float()], dim=1)
    expected = head.linear(inputs) + head.mlp(inputs)

    torch.testing.assert_close(head(logits, features, side), expected)


def test_film_matches_manual():
    config = FusionHeadConfig(combine="film", fuse="logits", num_side_values=10)
    head = FusionHead(config, num_classes=10, num_features=32)
    perturb(head)
    logits, features, side = make_inputs()

    code = F.one_hot(side, 10).float()
    film = code @ head.film.weight.T + head.film.bias
    gamma, beta = film[:, :10], film[:, 10:]
    inputs = logits * (1 + gamma) + beta
    expected = (head.linear(inputs) + head.mlp(inputs)).squeeze(-1)

    torch.testing.assert_close(head(logits, features, side), expected)


def test_film_starts_at_identity():
    head = FusionHead(FusionHeadConfig(combine="film"), num_classes=10, num_features=32)
    logits, features, side = make_inputs()

    probs = torch.softmax(logits / 0.1, dim=-1)
    expected = (head.linear(probs) + head.mlp(probs)).squeeze(-1)

    torch.testing.assert_close(head(logits, features, side), expected)


def test_film_input_width():
    config = FusionHeadConfig(combine="film", fuse="features")
    head = FusionHead(config, num_classes=10, num_features=32)

    assert head.film.in_features == 10
    assert head.film.out_features == 64
    assert head.linear.in_features == 32


def test_film_side_changes_output():
    head = FusionHead(FusionHeadConfig(combine="film"), num_classes=10, num_features=32)
    perturb(head)
    logits, features, _ = make_inputs(n=2)

    low = head(logits, features, torch.tensor([0, 0]))
    high = head(logits, features, torch.tensor([9, 9]))

    assert not torch.allclose(low, high)


def test_embedding_side_code():
    config = FusionHeadConfig(side_encoding="embedding", side_dim=5, fuse="logits")
    head = FusionHead(config, num_classes=10, num_features=32)
    logits, features, side = make_inputs()

    inputs = torch.cat([logits, head.sides["side"].embedding.weight[side]], dim=1)
    expected = (head.linear(inputs) + head.mlp(inputs)).squeeze(-1)

    assert head.sides["side"].embedding.weight.shape == (10, 5)
    torch.testing.assert_close(head(logits, features, side), expected)


def reference_exact(logits: torch.Tensor, side: torch.Tensor, num_side_values: int):
    """P(sum = k) by explicit loops over the digit and the side value."""
    probs = torch.softmax(logits.double(), dim=-1)
    n, classes = probs.shape
    table = torch.zeros(n, classes + num_side_values - 1, dtype=torch.float64)
    for row in range(n):
        for digit in range(classes):
            for value in range(num_side_values):
                if value == int(side[row]):
                    table[row, digit + value] += probs[row, digit]
    return table


@pytest.mark.parametrize("num_side_values", [10, 4])
def test_exact_head_matches_loops(num_side_values):
    config = FusionHeadConfig(sum_head="exact", num_side_values=num_side_values)
    head = FusionHead(config, num_classes=10, num_features=32)
    logits, features, side = make_inputs(n=8)
    side = side % num_side_values

    out = head(logits, features, side)

    torch.testing.assert_close(out.exp().double(), reference_exact(logits, side, num_side_values))


def test_exact_head_has_no_parameters():
    head = FusionHead(FusionHeadConfig(sum_head="exact"), num_classes=10, num_features=32)

    assert list(head.parameters()) == []


def test_exact_head_ignores_features():
    head = FusionHead(FusionHeadConfig(sum_head="exact"), num_classes=10, num_features=32)
    logits, features, side = make_inputs()

    torch.testing.assert_close(head(logits, features, side), head(logits, features * 0, side))


def test_exact_head_impossible_sums():
    head = FusionHead(FusionHeadConfig(sum_head="exact"), num_classes=10, num_features=32)
    logits, features, _ = make_inputs(n=1)

    out = head(logits, features, torch.tensor([3]))

    assert torch.isneginf(out[0, :3]).all()
    assert torch.isneginf(out[0, 13:]).all()
    assert torch.isfinite(out[0, 3:13]).all()
