import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from mnist_fusion.losses import FusionLoss, LossOutput
from mnist_fusion.models import FusionOutput


def make_case(n: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=generator) * 3
    digit = torch.randint(0, 10, (n,), generator=generator)
    side = torch.randint(0, 10, (n,), generator=generator)
    prediction = torch.rand(n, generator=generator) * 20 - 1
    output = FusionOutput(logits, sum=prediction)
    return output, {"digit": digit, "sum": digit + side}


def mean_squared_error(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean of squared differences, in plain float64 Python arithmetic."""
    pairs = zip(prediction.double().tolist(), target.double().tolist(), strict=True)
    squares = [(p - t) ** 2 for p, t in pairs]
    return sum(squares) / len(squares)


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_loss_matches_independent_terms(n):
    output, batch = make_case(n, seed=n)

    loss = FusionLoss()(output, batch)

    expected_digit = F.cross_entropy(output.digit_logits, batch["digit"])
    expected_sum = mean_squared_error(output.sum, batch["sum"])
    torch.testing.assert_close(loss.digit, expected_digit)
    assert loss.sum.item() == pytest.approx(expected_sum, rel=1e-5)
    assert loss.total.item() == pytest.approx(expected_digit.item() + expected_sum, rel=1e-5)


@pytest.mark.parametrize(("digit_weight", "sum_weight"), [(1.0, 0.05), (0.3, 2.5), (0.0, 1.0)])
def test_loss_weights(digit_weight, sum_weight):
    output, batch = make_case(9)

    loss = FusionLoss(digit_weight=digit_weight, sum_weight=sum_weight)(output, batch)

    expected = digit_weight * loss.digit.item() + sum_weight * loss.sum.item()
    assert loss.total.item() == pytest.approx(expected, rel=1e-6)


def test_loss_terms_unweighted():
    output, batch = make_case(9)

    plain = FusionLoss()(output, batch)
    weighted = FusionLoss(digit_weight=0.3, sum_weight=2.5)(output, batch)

    assert weighted.digit.item() == plain.digit.item()
    assert weighted.sum.item() == plain.sum.item()


def test_loss_returns_named_tuple():
    output, batch = make_case(3)

    loss = FusionLoss()(output, batch)

    assert isinstance(loss, LossOutput)
    assert loss.total.ndim == 0


def test_loss_total_backpropagates():
    logits = torch.randn(4, 10, requires_grad=True)
    prediction = torch.randn(4, requires_grad=True)
    batch = {"digit": torch.tensor([0, 1, 2, 3]), "sum": torch.tensor([0, 5, 9, 18])}

    FusionLoss()(FusionOutput(logits, sum=prediction), batch).total.backward()

    assert logits.grad is not None
    assert prediction.grad is not None


@given(
    rows=st.lists(
        st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=10, max_size=10),
        min_size=1,
        max_size=8,
    ),
    data=st.data(),
)
def test_digit_loss_never_negative(rows, data):
    logits = torch.tensor(rows, dtype=torch.float32)
    digit = torch.tensor(
        data.draw(st.lists(st.integers(0, 9), min_size=len(rows), max_size=len(rows)))
    )
    output = FusionOutput(logits, sum=torch.zeros(len(rows)))

    loss = FusionLoss()(output, {"digit": digit, "sum": torch.zeros(len(rows), dtype=torch.int64)})

    assert loss.digit.item() >= 0.0
    assert math.isfinite(loss.digit.item())


def test_confident_correct_digit_loss_zero():
    digit = torch.tensor([3, 7])
    output = FusionOutput(F.one_hot(digit, 10).float() * 1e4, sum=torch.zeros(2))

    loss = FusionLoss()(output, {"digit": digit, "sum": torch.zeros(2, dtype=torch.int64)})

    assert loss.digit.item() == 0.0


def test_column_sum_prediction_rejected():
    output, batch = make_case(4)
    column = FusionOutput(output.digit_logits, sum=output.sum[:, None])

    with pytest.raises(
        ValueError, match=re.escape("has shape [4, 1] but sum target has shape [4]")
    ):
        FusionLoss()(column, batch)


def test_plain_mse_broadcasts_column():
    # What the reference experiment computed: [N, 1] against [N] broadcasts to [N, N].
    output, batch = make_case(4)
    column = output.sum[:, None]
    target = batch["sum"].float()

    with pytest.warns(UserWarning, match="different to the input size"):
        broadcast = F.mse_loss(column, target)

    every_pair = ((column - target[None, :]) ** 2).mean()
    torch.testing.assert_close(broadcast, every_pair)
    assert broadcast.item() != pytest.approx(mean_squared_error(output.sum, target))


def test_row_target_rejected():
    output, batch = make_case(4)
    batch["sum"] = batch["sum"][None, :]

    with pytest.raises(
        ValueError, match=re.escape("has shape [4] but sum target has shape [1, 4]")
    ):
        FusionLoss()(output, batch)


def test_float_digit_target_rejected():
    output, batch = make_case(4)
    batch["digit"] = batch["digit"].float()

    with pytest.raises(ValueError, match=r"integer digit target, but got dtype torch\.float32"):
        FusionLoss()(output, batch)


@pytest.mark.parametrize(
    ("logits_shape", "digit_shape", "shapes"),
    [
        ((4, 10), (3,), "[4, 10] and [3]"),
        ((4,), (4,), "[4] and [4]"),
        ((4, 10), (4, 1), "[4, 10] and [4, 1]"),
    ],
)
def test_digit_shape_mismatch(logits_shape, digit_shape, shapes):
    output = FusionOutput(torch.zeros(logits_shape), sum=torch.zeros(4))
    batch = {"digit": torch.zeros(digit_shape, dtype=torch.int64), "sum": torch.zeros(4)}

    with pytest.raises(ValueError, match=re.escape(f"digit target [N], but got {shapes}")):
        FusionLoss()(output, batch)


@pytest.mark.parametrize("bad", [10, -1])
def test_digit_target_out_of_range(bad):
    output, batch = make_case(3)
    batch["digit"] = torch.tensor([0, bad, 1])

    with pytest.raises(ValueError, match=re.escape(f"Digit target {bad} is outside [0, 9]")):
        FusionLoss()(output, batch)


def test_missing_sum_prediction():
    output, batch = make_case(3)

    with pytest.raises(ValueError, match="needs a regression output, but `output.sum` is None"):
        FusionLoss()(FusionOutput(output.digit_logits), batch)


def test_invalid_sum_loss():
    with pytest.raises(ValueError, match=re.escape("`sum_loss`='mae'; expected one of ['mse']")):
        FusionLoss(sum_loss="mae")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"digit_weight": -1.0}, "`digit_weight` >= 0, but got -1.0"),
        ({"sum_weight": -0.5}, "`sum_weight` >= 0, but got -0.5"),
        ({"sum_weight": math.nan}, "`sum_weight` >= 0, but got nan"),
    ],
)
def test_invalid_weight(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FusionLoss(**kwargs)
