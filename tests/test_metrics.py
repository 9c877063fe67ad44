import math
import re
import warnings

import numpy as np
import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from mnist_fusion.metrics import FusionMetrics
from mnist_fusion.models import FusionOutput

NAMES = ["digit_accuracy", "sum_accuracy", "sum_r2", "sum_mae", "consistency"]


def make_case(n: int, seed: int = 0):
    """Random outputs near their targets, with some sums outside [0, 18] to be clipped."""
    rng = np.random.default_rng(seed)
    digit = rng.integers(0, 10, n)
    side = rng.integers(0, 10, n)
    total = digit + side
    logits = rng.normal(size=(n, 10)).astype(np.float32)
    right = rng.random(n) < 0.6
    logits[right, digit[right]] += 5.0
    raw = (total + rng.uniform(-1.5, 1.5, n)).astype(np.float32)
    raw[rng.random(n) < 0.1] = -3.0
    raw[rng.random(n) < 0.1] = 21.0
    return {"logits": logits, "raw": raw, "digit": digit, "side": side, "sum": total}


def as_torch(case):
    output = FusionOutput(torch.from_numpy(case["logits"]), sum=torch.from_numpy(case["raw"]))
    batch = {name: torch.from_numpy(case[name]) for name in ("digit", "side", "sum")}
    return output, batch


def slice_case(case, start, stop):
    return {name: value[start:stop] for name, value in case.items()}


def numpy_reference(case, max_sum: int = 18) -> dict[str, float]:
    digit_pred = case["logits"].argmax(axis=1)
    sum_pred = np.clip(np.rint(case["raw"].astype(np.float64)), 0, max_sum).astype(np.int64)
    raw = case["raw"].astype(np.float64)
    target = case["sum"].astype(np.float64)
    ss_res = np.sum((raw - target) ** 2)
    ss_tot = np.sum((target - target.mean()) ** 2)
    return {
        "digit_accuracy": float(np.mean(digit_pred == case["digit"])),
        "sum_accuracy": float(np.mean(sum_pred == case["sum"])),
        "sum_r2": float(1 - ss_res / ss_tot) if len(target) > 1 and ss_tot > 0 else math.nan,
        "sum_mae": float(np.mean(np.abs(raw - target))),
        "consistency": float(np.mean(sum_pred == digit_pred + case["side"])),
    }


def compute_quietly(metric: FusionMetrics) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return {name: value.item() for name, value in metric.compute().items()}


def assert_matches(values: dict[str, float], expected: dict[str, float]) -> None:
    assert sorted(values) == sorted(NAMES)
    for name in NAMES:
        assert values[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("n", [2, 3, 17, 64])
def test_values_match_numpy(n):
    case = make_case(n, seed=n)
    metric = FusionMetrics()

    metric.update(*as_torch(case))

    assert_matches(compute_quietly(metric), numpy_reference(case))


def test_single_sample_values():
    case = make_case(1, seed=5)
    metric = FusionMetrics()
    metric.update(*as_torch(case))

    with pytest.warns(UserWarning, match=r"sum_r2 is undefined for 1 sample"):
        values = {name: value.item() for name, value in metric.compute().items()}

    expected = numpy_reference(case)
    assert math.isnan(values["sum_r2"])
    for name in ("digit_accuracy", "sum_accuracy", "sum_mae", "consistency"):
        assert values[name] == pytest.approx(expected[name]), name


def test_case_exercises_every_branch():
    # Guards the reference test: its random case must hit clipping, hits and misses.
    case = make_case(64, seed=64)
    expected = numpy_reference(case)

    assert (case["raw"] < 0).any()
    assert (case["raw"] > 18).any()
    for name in ("digit_accuracy", "sum_accuracy", "consistency"):
        assert 0.0 < expected[name] < 1.0, name


@pytest.mark.parametrize(("n", "batch_size"), [(65, 64), (21, 10), (7, 3)])
def test_epoch_in_batches_equals_one_shot(n, batch_size):
    case = make_case(n, seed=n)
    accumulated = FusionMetrics()
    one_shot = FusionMetrics()

    for start in range(0, n, batch_size):
        accumulated.update(*as_torch(slice_case(case, start, start + batch_size)))
    one_shot.update(*as_torch(case))

    assert n % batch_size == 1
    assert_matches(compute_quietly(accumulated), compute_quietly(one_shot))
    assert_matches(compute_quietly(accumulated), numpy_reference(case))


def test_reset_forgets_updates():
    first, second = make_case(30, seed=1), make_case(12, seed=2)
    metric = FusionMetrics()
    metric.update(*as_torch(first))

    metric.reset()
    metric.update(*as_torch(second))

    assert_matches(compute_quietly(metric), numpy_reference(second))
    assert metric.count.item() == 12


def test_max_sum_clips_prediction():
    output = FusionOutput(torch.eye(10)[[2, 3]], sum=torch.tensor([30.0, 13.0]))
    batch = {
        "digit": torch.tensor([2, 3]),
        "side": torch.tensor([9, 9]),
        "sum": torch.tensor([11, 12]),
    }
    metric = FusionMetrics(max_sum=11)

    metric.update(output, batch)

    assert compute_quietly(metric)["sum_accuracy"] == 0.5


@pytest.mark.parametrize("constant", [0, 7, 18])
def test_r2_zero_variance_is_nan(constant):
    n = 50
    output = FusionOutput(torch.zeros(n, 10), sum=torch.linspace(0, 18, n))
    total = torch.full((n,), constant)
    batch = {"digit": torch.zeros(n, dtype=torch.int64), "side": total, "sum": total}
    metric = FusionMetrics()
    metric.update(output, batch)

    with pytest.warns(UserWarning, match=r"sum_r2 is undefined for 50 sample\(s\).*returning NaN"):
        r2 = metric.compute()["sum_r2"].item()

    assert math.isnan(r2)


def test_r2_zero_variance_over_batches():
    metric = FusionMetrics()
    for _ in range(3):
        output = FusionOutput(torch.zeros(4, 10), sum=torch.tensor([1.0, 2.0, 3.0, 4.0]))
        total = torch.full((4,), 9)
        metric.update(
            output, {"digit": torch.zeros(4, dtype=torch.int64), "side": total, "sum": total}
        )

    with pytest.warns(UserWarning, match="sum_r2 is undefined"):
        assert math.isnan(metric.compute()["sum_r2"].item())


def test_r2_single_sample_is_nan():
    metric = FusionMetrics()
    batch = {"digit": torch.tensor([4]), "side": torch.tensor([3]), "sum": torch.tensor([7])}
    metric.update(FusionOutput(torch.zeros(1, 10), sum=torch.tensor([2.0])), batch)

    with pytest.warns(UserWarning, match=r"undefined for 1 sample\(s\)"):
        assert math.isnan(metric.compute()["sum_r2"].item())


def test_r2_perfect_prediction_is_one():
    total = torch.tensor([0, 5, 18, 9])
    output = FusionOutput(torch.zeros(4, 10), sum=total.float())
    metric = FusionMetrics()
    metric.update(output, {"digit": torch.zeros(4, dtype=torch.int64), "side": total, "sum": total})

    assert compute_quietly(metric)["sum_r2"] == 1.0


@pytest.mark.parametrize(
    ("name", "batch_key", "tensor", "shape"),
    [
        ("digit", "digit", torch.zeros(3, dtype=torch.int64), "[3]"),
        ("sum", "sum", torch.zeros(5, dtype=torch.int64), "[5]"),
        ("side", "side", torch.zeros(4, 1, dtype=torch.int64), "[4, 1]"),
    ],
)
def test_mismatched_batch_rejected(name, batch_key, tensor, shape):
    output, batch = as_torch(make_case(4))
    batch[batch_key] = tensor

    with pytest.raises(
        ValueError,
        match=re.escape(f"`{name}` of shape [4] to match the digit logits, but got {shape}"),
    ):
        FusionMetrics().update(output, batch)


def test_column_sum_prediction_rejected():
    output, batch = as_torch(make_case(4))
    column = FusionOutput(output.digit_logits, sum=output.sum[:, None])

    with pytest.raises(
        ValueError,
        match=re.escape("`sum prediction` of shape [4] to match the digit logits, but got [4, 1]"),
    ):
        FusionMetrics().update(column, batch)


@pytest.mark.parametrize("name", ["digit", "sum", "side"])
def test_float_targets_rejected(name):
    output, batch = as_torch(make_case(4))
    batch[name] = batch[name].float()

    with pytest.raises(ValueError, match=rf"integer `{name}` values, but got dtype torch\.float32"):
        FusionMetrics().update(output, batch)


def test_missing_sum_prediction():
    output, batch = as_torch(make_case(4))

    with pytest.raises(ValueError, match="needs a regression output, but `output.sum` is None"):
        FusionMetrics().update(FusionOutput(output.digit_logits), batch)


def test_states_reduce_by_sum():
    metric = FusionMetrics()

    assert len(metric._reductions) == 8
    for name, reduction in metric._reductions.items():
        assert reduction is dim_zero_sum, name


def test_merged_states_equal_one_process():
    # merge_state applies each state's dist_reduce_fx, as a distributed sync does.
    case = make_case(40, seed=3)
    left, right, whole = FusionMetrics(), FusionMetrics(), FusionMetrics()
    left.update(*as_torch(slice_case(case, 0, 17)))
    right.update(*as_torch(slice_case(case, 17, 40)))
    whole.update(*as_torch(case))

    left.merge_state(right)

    assert_matches(compute_quietly(left), compute_quietly(whole))


def test_state_dtypes():
    metric = FusionMetrics()

    assert metric.count.dtype == torch.int64
    assert metric.squared_error.dtype == torch.float64
    assert metric.full_state_update is False
