import math
import re
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from mnist_fusion.losses import SUM_LOSSES, FusionLoss, LossOutput
from mnist_fusion.models import FusionOutput


class TwoImageOutput(NamedTuple):
    """A two-image output: FusionOutput's fields plus the second image's digit logits."""

    digit_logits: torch.Tensor
    sum: torch.Tensor | None = None
    sum_logits: torch.Tensor | None = None
    second_digit_logits: torch.Tensor | None = None


class RecordingBatch(dict):
    """A batch dict that records every key read from it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def make_case(n: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=generator) * 3
    digit = torch.randint(0, 10, (n,), generator=generator)
    side = torch.randint(0, 10, (n,), generator=generator)
    prediction = torch.rand(n, generator=generator) * 20 - 1
    output = FusionOutput(logits, sum=prediction)
    return output, {"digit": digit, "sum": digit + side, "side": side}


def make_scores_case(n: int, seed: int = 0):
    output, batch = make_case(n, seed)
    generator = torch.Generator().manual_seed(seed + 1000)
    scores = torch.randn(n, 19, generator=generator) * 2
    return FusionOutput(output.digit_logits, sum_logits=scores), batch


def mean_squared_error(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean of squared differences, in plain float64 Python arithmetic."""
    pairs = zip(prediction.double().tolist(), target.double().tolist(), strict=True)
    squares = [(p - t) ** 2 for p, t in pairs]
    return sum(squares) / len(squares)


def huber(prediction: torch.Tensor, target: torch.Tensor, delta: float) -> float:
    """Mean Huber loss, written out piecewise in plain Python."""
    values = []
    for p, t in zip(prediction.double().tolist(), target.double().tolist(), strict=True):
        error = abs(p - t)
        values.append(0.5 * error**2 if error <= delta else delta * (error - 0.5 * delta))
    return sum(values) / len(values)


def nll_numpy(scores: torch.Tensor, target: torch.Tensor) -> float:
    """Mean NLL of softmax(scores) at the targets, in numpy float64."""
    values = scores.double().numpy()
    shifted = values - values.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(values)), target.numpy()].mean())


def exact_sum_log_probs(digit_logits: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """What an exact head gives: the digit log-probabilities shifted by the side input."""
    n, classes = digit_logits.shape
    log_probs = torch.full((n, classes + 9), -math.inf)
    columns = torch.arange(classes)[None, :] + side[:, None]
    return log_probs.scatter(1, columns, F.log_softmax(digit_logits, dim=-1))


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_loss_matches_independent_terms(n):
    output, batch = make_case(n, seed=n)

    loss = FusionLoss()(output, batch)

    expected_digit = nll_numpy(output.digit_logits, batch["digit"])
    expected_sum = mean_squared_error(output.sum, batch["sum"])
    assert loss.digit.item() == pytest.approx(expected_digit, rel=1e-5)
    assert loss.sum.item() == pytest.approx(expected_sum, rel=1e-5)
    assert loss.total.item() == pytest.approx(expected_digit + expected_sum, rel=1e-5)


@pytest.mark.parametrize("n", [1, 5, 64])
@pytest.mark.parametrize("delta", [0.5, 1.0, 3.0])
def test_huber_matches_piecewise(n, delta):
    output, batch = make_case(n, seed=n)

    loss = FusionLoss(sum_loss="huber", huber_delta=delta)(output, batch)

    assert loss.sum.item() == pytest.approx(huber(output.sum, batch["sum"], delta), rel=1e-5)


def test_huber_case_has_both_pieces():
    # Guards the Huber test: its errors must fall on both sides of each delta.
    output, batch = make_case(64, seed=64)
    errors = (output.sum - batch["sum"]).abs()

    for delta in (0.5, 1.0, 3.0):
        assert (errors < delta).any(), delta
        assert (errors > delta).any(), delta


@pytest.mark.parametrize("n", [1, 3, 64])
def test_cross_entropy_matches_numpy(n):
    output, batch = make_scores_case(n, seed=n)

    loss = FusionLoss(sum_loss="cross_entropy")(output, batch)

    assert loss.sum.item() == pytest.approx(nll_numpy(output.sum_logits, batch["sum"]), rel=1e-5)


@pytest.mark.parametrize("n", [1, 6, 64])
def test_cross_entropy_of_exact_head_is_its_nll(n):
    output, batch = make_case(n, seed=n)
    log_probs = exact_sum_log_probs(output.digit_logits, batch["side"])
    exact = FusionOutput(output.digit_logits, sum_logits=log_probs)
    # The exact head's probability of the true sum is that of the true digit.
    probs = np.exp(output.digit_logits.double().numpy())
    probs /= probs.sum(axis=1, keepdims=True)
    expected = float(-np.log(probs[np.arange(n), batch["digit"].numpy()]).mean())

    loss = FusionLoss(sum_loss="cross_entropy")(exact, batch)

    assert loss.sum.item() == pytest.approx(expected, rel=1e-5)


def test_exact_head_gradient_finite():
    output, batch = make_case(8)
    logits = output.digit_logits.clone().requires_grad_(True)
    exact = FusionOutput(logits, sum_logits=exact_sum_log_probs(logits, batch["side"]))

    FusionLoss(sum_loss="cross_entropy")(exact, batch).total.backward()

    assert torch.isfinite(logits.grad).all()


def test_auto_regression_is_mse():
    output, batch = make_case(9)

    auto = FusionLoss(sum_loss="auto")(output, batch)

    assert auto.sum.item() == pytest.approx(mean_squared_error(output.sum, batch["sum"]), rel=1e-5)


def test_auto_scores_is_cross_entropy():
    output, batch = make_scores_case(9)

    auto = FusionLoss(sum_loss="auto")(output, batch)

    assert auto.sum.item() == pytest.approx(nll_numpy(output.sum_logits, batch["sum"]), rel=1e-5)


def test_auto_prefers_scores_over_regression():
    scores, batch = make_scores_case(9)
    both = scores._replace(sum=torch.zeros(9))

    auto = FusionLoss(sum_loss="auto")(both, batch)

    assert auto.sum.item() == pytest.approx(nll_numpy(scores.sum_logits, batch["sum"]), rel=1e-5)


@pytest.mark.parametrize(("kind", "expected"), [("mse", "mse"), ("huber", "huber")])
def test_resolved_sum_loss_fixed(kind, expected):
    scores, _ = make_scores_case(2)

    assert FusionLoss(sum_loss=kind).resolved_sum_loss(scores) == expected


@pytest.mark.parametrize(("digit_weight", "sum_weight"), [(1.0, 0.05), (0.3, 2.5), (0.0, 1.0)])
def test_loss_weights(digit_weight, sum_weight):
    output, batch = make_case(9)
    plain = FusionLoss()(output, batch)

    loss = FusionLoss(digit_weight=digit_weight, sum_weight=sum_weight)(output, batch)

    expected = digit_weight * plain.digit.item() + sum_weight * plain.sum.item()
    assert loss.total.item() == pytest.approx(expected, rel=1e-6)


def test_loss_terms_unweighted():
    output, batch = make_case(9)

    plain = FusionLoss()(output, batch)
    weighted = FusionLoss(digit_weight=0.3, sum_weight=2.5)(output, batch)

    assert weighted.digit.item() == plain.digit.item()
    assert weighted.sum.item() == plain.sum.item()


def test_sum_only_reads_no_digit():
    output, batch = make_case(5)
    batch = RecordingBatch(sum=batch["sum"])

    loss = FusionLoss(digit_weight=0.0)(output, batch)

    assert batch.read == {"sum"}
    assert loss.digit.item() == 0.0
    assert loss.total.item() == pytest.approx(mean_squared_error(output.sum, batch["sum"]))


def test_missing_digit_names_sum_only_option():
    output, batch = make_case(3)
    del batch["digit"]

    with pytest.raises(
        ValueError, match="Missing `digit` target.*For sum-only supervision pass digit_weight=0"
    ):
        FusionLoss()(output, batch)


def test_missing_sum_target():
    output, batch = make_case(3)
    del batch["sum"]

    with pytest.raises(
        ValueError, match=r"Missing `sum` target: the batch contains \['digit', 'side'\]"
    ):
        FusionLoss()(output, batch)


@pytest.mark.parametrize("n", [1, 4, 33])
def test_two_image_digit_term_averages_both(n):
    output, batch = make_case(n, seed=n)
    generator = torch.Generator().manual_seed(n + 7)
    second_logits = torch.randn(n, 10, generator=generator) * 3
    second_digit = torch.randint(0, 10, (n,), generator=generator)
    two = TwoImageOutput(output.digit_logits, sum=output.sum, second_digit_logits=second_logits)
    batch = {"digit": batch["digit"], "second_digit": second_digit, "sum": batch["sum"]}

    loss = FusionLoss()(two, batch)

    both = nll_numpy(
        torch.cat([output.digit_logits, second_logits]), torch.cat([batch["digit"], second_digit])
    )
    assert loss.digit.item() == pytest.approx(both, rel=1e-5)


def smoothed_nll_numpy(scores: torch.Tensor, target: torch.Tensor, eps: float) -> float:
    """Mean cross-entropy against (1 - eps) one-hot plus eps / C on every class, in numpy."""
    values = scores.double().numpy()
    shifted = values - values.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    classes = values.shape[1]
    soft = np.full(values.shape, eps / classes)
    soft[np.arange(len(values)), target.numpy()] += 1 - eps
    return float(-(soft * log_probs).sum(axis=1).mean())


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("n", [1, 7, 64])
def test_digit_label_smoothing_matches_soft_targets(n, eps):
    output, batch = make_case(n, seed=n)

    loss = FusionLoss(digit_label_smoothing=eps)(output, batch)

    assert loss.digit.item() == pytest.approx(
        smoothed_nll_numpy(output.digit_logits, batch["digit"], eps), rel=1e-5
    )
    assert loss.sum.item() == pytest.approx(FusionLoss()(output, batch).sum.item(), rel=1e-6)


def test_digit_label_smoothing_leaves_sum_scores_unsmoothed():
    output, batch = make_scores_case(16)

    plain = FusionLoss(sum_loss="cross_entropy")(output, batch)
    smoothed = FusionLoss(sum_loss="cross_entropy", digit_label_smoothing=0.2)(output, batch)

    assert smoothed.sum.item() == plain.sum.item()
    assert smoothed.digit.item() != pytest.approx(plain.digit.item())


def test_digit_label_smoothing_covers_both_images():
    output, batch = make_case(9, seed=3)
    generator = torch.Generator().manual_seed(11)
    second_logits = torch.randn(9, 10, generator=generator) * 3
    second_digit = torch.randint(0, 10, (9,), generator=generator)
    two = TwoImageOutput(output.digit_logits, sum=output.sum, second_digit_logits=second_logits)
    batch = {"digit": batch["digit"], "second_digit": second_digit, "sum": batch["sum"]}

    loss = FusionLoss(digit_label_smoothing=0.1)(two, batch)

    both = smoothed_nll_numpy(
        torch.cat([output.digit_logits, second_logits]),
        torch.cat([batch["digit"], second_digit]),
        0.1,
    )
    assert loss.digit.item() == pytest.approx(both, rel=1e-5)


def test_smoothed_digit_loss_is_smallest_below_certainty():
    # Against a smoothed target the best logits are finite: pushing the true class's
    # logit ever higher first lowers the loss, then raises it again.
    loss_fn = FusionLoss(digit_label_smoothing=0.1, sum_weight=0.0)
    batch = {"digit": torch.tensor([3]), "sum": torch.tensor([3])}
    losses = []
    for margin in (0.0, 2.0, 4.0, 8.0, 16.0):
        logits = torch.zeros(1, 10)
        logits[0, 3] = margin
        losses.append(loss_fn(FusionOutput(logits, sum=torch.tensor([3.0])), batch).digit.item())
    best = losses.index(min(losses))
    assert 0 < best < len(losses) - 1


def test_uncertainty_total_matches_formula():
    output, batch = make_case(12)
    plain = FusionLoss()(output, batch)
    loss_fn = FusionLoss(digit_weight=0.7, sum_weight=0.5, uncertainty_weighting=True)
    with torch.no_grad():
        loss_fn.log_variances.copy_(torch.tensor([0.3, -0.7]))

    loss = loss_fn(output, batch)

    digit, total_sum = plain.digit.item(), plain.sum.item()
    expected = 0.7 * (math.exp(-0.3) * digit + 0.3) + 0.5 * (math.exp(0.7) * total_sum - 0.7)
    assert loss.total.item() == pytest.approx(expected, rel=1e-5)


def test_uncertainty_starts_at_plain_total():
    output, batch = make_case(12)

    learned = FusionLoss(uncertainty_weighting=True)(output, batch)
    plain = FusionLoss()(output, batch)

    assert learned.total.item() == pytest.approx(plain.total.item(), rel=1e-6)


def test_uncertainty_optimum_at_log_loss():
    # d/ds (exp(-s) * L + s) = 0 at s = log L, the learned log-variance's optimum.
    output, batch = make_case(12)
    plain = FusionLoss()(output, batch)
    loss_fn = FusionLoss(uncertainty_weighting=True)
    with torch.no_grad():
        loss_fn.log_variances.copy_(torch.stack([plain.digit, plain.sum]).log())

    loss_fn(output, batch).total.backward()

    torch.testing.assert_close(loss_fn.log_variances.grad, torch.zeros(2), atol=1e-5, rtol=0)


def test_uncertainty_parameters_on_module():
    loss_fn = FusionLoss(uncertainty_weighting=True)

    parameters = list(loss_fn.parameters())

    assert len(parameters) == 1
    assert parameters[0].shape == (2,)


def test_plain_loss_has_no_parameters():
    assert list(FusionLoss().parameters()) == []


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


def test_one_hot_sum_target_rejected():
    output, batch = make_scores_case(4)
    batch["sum"] = F.one_hot(batch["sum"], 19)

    with pytest.raises(
        ValueError, match=re.escape("scores [N, C] and sum target [N], but got [4, 19] and [4, 19]")
    ):
        FusionLoss(sum_loss="cross_entropy")(output, batch)


def test_flat_sum_scores_rejected():
    output, batch = make_case(4)
    flat = FusionOutput(output.digit_logits, sum_logits=output.sum)

    with pytest.raises(
        ValueError, match=re.escape("scores [N, C] and sum target [N], but got [4] and [4]")
    ):
        FusionLoss(sum_loss="cross_entropy")(flat, batch)


def test_whole_float_digit_target_cast():
    output, batch = make_case(6)
    as_int = FusionLoss()(output, batch)
    batch["digit"] = batch["digit"].float()

    as_float = FusionLoss()(output, batch)

    assert as_float.digit.item() == as_int.digit.item()


@pytest.mark.parametrize("bad", [2.5, math.nan, math.inf])
def test_fractional_digit_target_rejected(bad):
    output, batch = make_case(4)
    batch["digit"] = torch.tensor([1.0, bad, 3.0, 4.0])

    with pytest.raises(
        ValueError,
        match=rf"Invalid digit target value {re.escape(repr(bad))}: class indices must be whole",
    ):
        FusionLoss()(output, batch)


def test_fractional_sum_target_rejected():
    output, batch = make_scores_case(3)
    batch["sum"] = torch.tensor([4.0, 7.25, 0.0])

    with pytest.raises(
        ValueError, match=r"Invalid sum target value 7\.25: class indices must be whole numbers"
    ):
        FusionLoss(sum_loss="cross_entropy")(output, batch)


def test_whole_float_sum_target_cast():
    output, batch = make_scores_case(5)
    as_int = FusionLoss(sum_loss="cross_entropy")(output, batch)
    batch["sum"] = batch["sum"].double()

    as_float = FusionLoss(sum_loss="cross_entropy")(output, batch)

    assert as_float.sum.item() == as_int.sum.item()


def test_bool_digit_target_rejected():
    output, batch = make_case(2)
    batch["digit"] = torch.tensor([True, False])

    with pytest.raises(ValueError, match=r"integer digit target, but got dtype torch\.bool"):
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

    with pytest.raises(ValueError, match=re.escape(f"digit target {bad} is outside [0, 9]")):
        FusionLoss()(output, batch)


@pytest.mark.parametrize("bad", [19, -1])
def test_sum_target_out_of_range(bad):
    output, batch = make_scores_case(3)
    batch["sum"] = torch.tensor([0, bad, 18])

    with pytest.raises(ValueError, match=re.escape(f"sum target {bad} is outside [0, 18]")):
        FusionLoss(sum_loss="cross_entropy")(output, batch)


def test_missing_sum_prediction():
    output, batch = make_case(3)

    with pytest.raises(ValueError, match="needs a regression output, but `output.sum` is None"):
        FusionLoss()(FusionOutput(output.digit_logits), batch)


def test_missing_sum_scores():
    output, batch = make_case(3)

    with pytest.raises(
        ValueError, match=r"`sum_loss='cross_entropy'` needs sum scores, but `output\.sum_logits`"
    ):
        FusionLoss(sum_loss="cross_entropy")(output, batch)


def test_invalid_sum_loss():
    with pytest.raises(
        ValueError, match=re.escape(f"`sum_loss`='mae'; expected one of {list(SUM_LOSSES)}")
    ):
        FusionLoss(sum_loss="mae")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"digit_weight": -1.0}, "`digit_weight` >= 0, but got -1.0"),
        ({"sum_weight": -0.5}, "`sum_weight` >= 0, but got -0.5"),
        ({"sum_weight": math.nan}, "`sum_weight` >= 0, but got nan"),
        ({"digit_weight": 0.0, "sum_weight": 0.0}, "Both `digit_weight` and `sum_weight` are 0"),
        ({"huber_delta": 0.0}, "`huber_delta` > 0, but got 0.0"),
        ({"huber_delta": -1.0}, "`huber_delta` > 0, but got -1.0"),
        ({"digit_label_smoothing": -0.1}, "`digit_label_smoothing` in [0, 1), but got -0.1"),
        ({"digit_label_smoothing": 1.0}, "`digit_label_smoothing` in [0, 1), but got 1.0"),
        ({"digit_label_smoothing": math.nan}, "`digit_label_smoothing` in [0, 1), but got nan"),
    ],
)
def test_invalid_options(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FusionLoss(**kwargs)
