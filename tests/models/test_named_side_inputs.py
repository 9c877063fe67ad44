"""FusionModel with several named side inputs, continuous inputs and missing inputs."""

import itertools
import re

import pytest
import torch

from mnist_fusion import checkpoint
from mnist_fusion.models import (
    ConvEncoderConfig,
    FusionHead,
    FusionHeadConfig,
    FusionModel,
    FusionModelConfig,
    SideEncoding,
    SideSpec,
)

ENCODER = ConvEncoderConfig(channels=(4, 8))
TWO_DIGITS = {"a": SideSpec.categorical(10), "b": SideSpec.categorical(10)}
MIXED = {
    "a": SideSpec.categorical(4, encoding="embedding", dim=3),
    "x": SideSpec.continuous(0.0, 1.0, encoding="fourier", dim=6),
}


def model_with(side_inputs, seed=0, **head) -> FusionModel:
    torch.manual_seed(seed)
    config = FusionModelConfig(
        encoder=ENCODER, head=FusionHeadConfig(side_inputs=side_inputs, **head)
    )
    return FusionModel(config).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def two_digits(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randint(0, 10, (n,), generator=generator) for name in ("a", "b")}


@pytest.mark.parametrize("sum_head", ["classification", "exact"])
def test_width_from_target_range(sum_head):
    model = model_with(TWO_DIGITS, sum_head=sum_head)

    output = model(images(5), two_digits(5))

    assert model.config.max_sum == 27
    assert output.sum_logits.shape == (5, 28)


def test_declared_max_sum_sets_width():
    model = model_with(MIXED, sum_head="classification", max_sum=40)

    output = model(images(2), {"a": torch.tensor([0, 3]), "x": torch.tensor([0.1, 0.9])})

    assert output.sum_logits.shape == (2, 41)


def test_continuous_needs_declared_max_sum():
    with pytest.raises(ValueError, match=re.escape("['x'] are continuous")):
        FusionHeadConfig(side_inputs=MIXED)


def test_exact_rejects_continuous_input():
    with pytest.raises(ValueError, match=re.escape("but ['x'] are continuous")):
        FusionHeadConfig(side_inputs=MIXED, sum_head="exact", max_sum=12)


def test_exact_rejects_other_max_sum():
    config = FusionModelConfig(
        head=FusionHeadConfig(side_inputs=TWO_DIGITS, sum_head="exact", max_sum=30)
    )
    with pytest.raises(ValueError, match="largest value is 27, but `max_sum`=30"):
        FusionModel(config)


def test_single_fields_rejected_with_side_inputs():
    with pytest.raises(ValueError, match="`num_side_values`=4 describes the single side input"):
        FusionHeadConfig(side_inputs=TWO_DIGITS, num_side_values=4)


def test_exact_adds_every_input():
    model = model_with(TWO_DIGITS, sum_head="exact")
    side = two_digits(6)

    digit, total = model.predict(images(6), side)

    assert torch.equal(total, digit + side["a"] + side["b"])


@pytest.mark.parametrize("combine", ["concat", "film", "attention"])
@pytest.mark.parametrize("sum_head", ["regression", "classification"])
def test_learned_heads_read_every_input(combine, sum_head):
    model = model_with(MIXED, sum_head=sum_head, combine=combine, max_sum=14)
    side = {"a": torch.tensor([0, 1, 2, 3]), "x": torch.tensor([0.0, 0.25, 0.5, 0.75])}
    if combine == "film":
        # FiLM starts at the identity; give it weights so that the side codes matter.
        torch.nn.init.normal_(model.head.film.weight)

    base = model(images(4), side).sum
    moved_a = model(images(4), {**side, "a": side["a"].flip(0)}).sum
    moved_x = model(images(4), {**side, "x": side["x"] + 0.2}).sum

    assert not torch.allclose(base, moved_a)
    assert not torch.allclose(base, moved_x)


def test_attention_weights_are_distributions():
    model = model_with(MIXED, combine="attention", max_sum=14)
    side = {"a": torch.tensor([0, 3]), "x": torch.tensor([0.1, 0.7])}

    weights = model(images(2), side).fusion_weights

    assert weights.shape == (2, 3)
    assert bool((weights > 0).all())
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2))


def test_attention_weights_train():
    model = model_with(MIXED, combine="attention", max_sum=14).train()
    side = {"a": torch.tensor([0, 3]), "x": torch.tensor([0.1, 0.7])}

    model(images(2), side).sum.sum().backward()

    assert model.head.attention_score.weight.grad.abs().sum() > 0


def test_other_combines_have_no_weights():
    assert (
        model_with(MIXED, max_sum=14)(
            images(1), {"a": torch.tensor([1]), "x": torch.tensor([0.5])}
        ).fusion_weights
        is None
    )


@pytest.mark.parametrize(
    ("side", "message"),
    [
        ({"a": torch.tensor([1, 2])}, "Side input(s) ['b'] are missing from the mapping"),
        (
            {"a": torch.tensor([1, 2]), "b": torch.tensor([1, 2]), "c": torch.tensor([0, 0])},
            "Unknown side input(s) ['c']",
        ),
        (
            {"a": torch.tensor([1, 2]), "b": torch.tensor([1, 10])},
            "Side input 'b' has value 10, outside its spec categorical(10",
        ),
        (
            {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([1, 2])},
            "Expected integer values for side input 'a'",
        ),
        (torch.tensor([1, 2]), "Got one side tensor, but the head declares 2 side inputs"),
    ],
)
def test_bad_side_mapping(side, message):
    model = model_with(TWO_DIGITS, sum_head="exact")
    with pytest.raises(ValueError, match=re.escape(message)):
        model(images(2), side)


def test_continuous_value_outside_range():
    model = model_with(MIXED, max_sum=14)
    with pytest.raises(
        ValueError,
        match=re.escape("Side input 'x' has value 1.5, outside its spec continuous([0.0, 1.0)"),
    ):
        model(images(1), {"a": torch.tensor([1]), "x": torch.tensor([1.5])})


def test_checkpoint_keeps_specs(tmp_path):
    model = model_with(MIXED, sum_head="classification", combine="attention", max_sum=14)
    side = {"a": torch.tensor([0, 3]), "x": torch.tensor([0.1, 0.7])}

    loaded = checkpoint.load(checkpoint.save(model, tmp_path / "model.pt")).eval()

    assert loaded.config == model.config
    assert loaded.config.head.side_inputs["x"].encoding == "fourier"
    torch.testing.assert_close(
        loaded(images(2), side).sum_logits, model(images(2), side).sum_logits
    )


def test_checkpoint_rejects_other_inputs(tmp_path):
    loaded = checkpoint.load(
        checkpoint.save(model_with(TWO_DIGITS, sum_head="exact"), tmp_path / "m.pt")
    )

    with pytest.raises(ValueError, match=re.escape("Side input(s) ['b'] are missing")):
        loaded.predict(images(2), {"a": torch.tensor([1, 2]), "c": torch.tensor([1, 2])})
    with pytest.raises(ValueError, match="Got one side tensor"):
        loaded.predict(images(2), torch.tensor([1, 2]))


def test_single_embedding_of_earlier_files_loads():
    config = FusionModelConfig(encoder=ENCODER, head=FusionHeadConfig(side_encoding="embedding"))
    model = FusionModel(config)
    state = model.state_dict()
    # Files written by 0.1.0 kept the one embedding under this key.
    state["head.side.embedding.weight"] = state.pop("head.sides.side.embedding.weight")

    fresh = FusionModel(config)
    fresh.load_state_dict(state)

    assert torch.equal(
        fresh.head.sides["side"].embedding.weight, model.head.sides["side"].embedding.weight
    )


def brute_force_marginal(logits, side, specs, missing):
    """Average the exact sum law over every completion of the missing inputs."""
    max_sum = logits.shape[1] - 1 + sum(spec.max_value for spec in specs.values())
    head = FusionHead(
        FusionHeadConfig(side_inputs=specs, sum_head="exact"), num_classes=10, num_features=1
    )
    result = torch.zeros(len(logits), max_sum + 1)
    for row in range(len(logits)):
        names = [
            name
            for name in specs
            if bool(missing.get(name, torch.zeros(len(logits), dtype=torch.bool))[row])
        ]
        for values in itertools.product(*(range(specs[name].cardinality) for name in names)):
            weight = 1.0
            filled = {name: side[name][row : row + 1].clone() for name in specs}
            for name, value in zip(names, values, strict=True):
                filled[name] = torch.tensor([value])
                weight *= specs[name].log_prior()[value].exp().item()
            probs = head(logits[row : row + 1], torch.zeros(1, 1), filled).exp()
            result[row] += weight * probs[0]
    return result


def test_missing_marginalised_over_prior():
    specs = {"a": SideSpec.categorical(3, prior=(0.2, 0.3, 0.5)), "b": SideSpec.categorical(4)}
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(3))
    side = {"a": torch.tensor([2, 0, 1, 0]), "b": torch.tensor([3, 1, 0, 2])}
    missing = {
        "a": torch.tensor([True, False, True, False]),
        "b": torch.tensor([True, True, False, False]),
    }
    head = FusionHead(
        FusionHeadConfig(side_inputs=specs, sum_head="exact"), num_classes=10, num_features=1
    )

    marginal = head(logits, torch.zeros(4, 1), side, missing).exp()

    torch.testing.assert_close(marginal, brute_force_marginal(logits, side, specs, missing))
    torch.testing.assert_close(marginal.sum(dim=-1), torch.ones(4))


def test_missing_leaves_digit_unchanged():
    model = model_with(TWO_DIGITS, sum_head="exact")
    side = two_digits(5)
    missing = {"b": torch.tensor([True, False, True, False, True])}

    known = model(images(5), side)
    partial = model(
        images(5), {**side, "b": torch.where(missing["b"], -1, side["b"])}, missing=missing
    )

    assert torch.equal(known.digit_logits, partial.digit_logits)
    rows = ~missing["b"]
    torch.testing.assert_close(partial.sum_logits[rows], known.sum_logits[rows])
    assert not torch.allclose(partial.sum_logits[~rows], known.sum_logits[~rows])


def test_missing_gradients_stay_finite():
    model = model_with(TWO_DIGITS, sum_head="exact").train()
    side = two_digits(4)
    missing = {
        "a": torch.tensor([True, False, True, False]),
        "b": torch.tensor([False, False, True, True]),
    }

    output = model(images(4), side, missing=missing)
    target = side["a"] + side["b"]
    loss = -output.sum_logits.gather(1, target[:, None]).mean()
    loss.backward()

    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_single_input_missing_mask():
    model = FusionModel(
        FusionModelConfig(encoder=ENCODER, head=FusionHeadConfig(sum_head="exact"))
    ).eval()
    side = torch.tensor([3, 4])

    output = model(images(2), side, missing=torch.tensor([True, False]))

    # A uniform side value spreads the digit's law over ten sums.
    assert torch.isfinite(output.sum_logits[0]).sum() >= 10
    assert torch.isfinite(output.sum_logits[1]).sum() <= 10


@pytest.mark.parametrize("sum_head", ["regression", "classification"])
def test_learned_heads_reject_missing(sum_head):
    model = model_with(TWO_DIGITS, sum_head=sum_head)
    missing = {"a": torch.tensor([False, True])}

    with pytest.raises(
        ValueError, match=f"The '{sum_head}' sum head cannot predict without its side input"
    ):
        model(images(2), two_digits(2), missing=missing)


def test_learned_head_accepts_all_present_mask():
    model = model_with(TWO_DIGITS)
    side = two_digits(2)

    output = model(images(2), side, missing={"a": torch.tensor([False, False])})

    torch.testing.assert_close(output.sum, model(images(2), side).sum)


@pytest.mark.parametrize(
    ("missing", "error", "message"),
    [
        ({"c": torch.tensor([True, False])}, ValueError, "unknown side input(s) ['c']"),
        (
            {"a": torch.tensor([1, 0])},
            ValueError,
            "Expected a boolean mask for missing side input 'a'",
        ),
        ({"a": torch.tensor([True])}, ValueError, "mask of 'a' of shape [2]"),
        (torch.tensor([True, False]), ValueError, "Got one `missing` mask"),
        ([True, False], TypeError, "Expected `missing` to be a mapping"),
    ],
)
def test_bad_missing_masks(missing, error, message):
    model = model_with(TWO_DIGITS, sum_head="exact")
    with pytest.raises(error, match=re.escape(message)):
        model(images(2), two_digits(2), missing=missing)


def test_linear_encoding_scales_range():
    encoding = SideEncoding.from_spec(SideSpec.continuous(2.0, 4.0, encoding="linear", dim=1))
    torch.nn.init.ones_(encoding.linear.weight)
    torch.nn.init.zeros_(encoding.linear.bias)

    codes = encoding(torch.tensor([2.0, 3.0, 3.5]))

    torch.testing.assert_close(codes[:, 0], torch.tensor([0.0, 0.5, 0.75]))


def test_fourier_encoding_has_no_parameters():
    encoding = SideEncoding.from_spec(SideSpec.continuous(encoding="fourier", dim=8))
    codes = encoding(torch.tensor([0.0, 0.3]))

    assert list(encoding.parameters()) == []
    assert encoding.state_dict() == {}
    torch.testing.assert_close(codes[:, :4].square() + codes[:, 4:].square(), torch.ones(2, 4))
