import json
import math
import re
import warnings
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from mnist_fusion.metrics import FusionMetrics, fusion_confusion_matrix, fusion_metrics
from mnist_fusion.metrics.functional import STATISTICS
from mnist_fusion.models import FusionOutput

MAIN = ["digit_accuracy", "sum_accuracy", "sum_r2", "sum_mae", "consistency"]
PER_CLASS = [f"digit_accuracy_{digit}" for digit in range(10)]
NAMES = MAIN + PER_CLASS

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]


class TwoImageOutput(NamedTuple):
    """A two-image output: FusionOutput's fields plus the second image's digit logits."""

    digit_logits: torch.Tensor
    sum: torch.Tensor | None = None
    sum_logits: torch.Tensor | None = None
    second_digit_logits: torch.Tensor | None = None


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
    scores = rng.normal(size=(n, 19)).astype(np.float32)
    scores[right, total[right]] += 4.0
    return {
        "logits": logits,
        "raw": raw,
        "scores": scores,
        "digit": digit,
        "side": side,
        "sum": total,
    }


def make_two_image_case(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    case = make_case(n, seed)
    second = rng.integers(0, 10, n)
    second_logits = rng.normal(size=(n, 10)).astype(np.float32)
    right = rng.random(n) < 0.7
    second_logits[right, second[right]] += 5.0
    total = case["digit"] + second
    raw = (total + rng.uniform(-1.5, 1.5, n)).astype(np.float32)
    return {
        **case,
        "second_digit": second,
        "second_logits": second_logits,
        "sum": total,
        "raw": raw,
    }


def as_torch(case, *, scores: bool = False):
    if scores:
        output = FusionOutput(
            torch.from_numpy(case["logits"]), sum_logits=torch.from_numpy(case["scores"])
        )
    else:
        output = FusionOutput(torch.from_numpy(case["logits"]), sum=torch.from_numpy(case["raw"]))
    batch = {name: torch.from_numpy(case[name]) for name in ("digit", "side", "sum")}
    return output, batch


def as_torch_two_image(case):
    output = TwoImageOutput(
        torch.from_numpy(case["logits"]),
        sum=torch.from_numpy(case["raw"]),
        second_digit_logits=torch.from_numpy(case["second_logits"]),
    )
    batch = {name: torch.from_numpy(case[name]) for name in ("digit", "second_digit", "sum")}
    return output, batch


def slice_case(case, start, stop):
    return {name: value[start:stop] for name, value in case.items()}


def numpy_confusion(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return matrix


def r2_numpy(point: np.ndarray, target: np.ndarray) -> float:
    ss_res = np.sum((point - target) ** 2)
    ss_tot = np.sum((target - target.mean()) ** 2)
    return float(1 - ss_res / ss_tot) if len(target) > 1 and ss_tot > 0 else math.nan


def per_class_numpy(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    values = {}
    for digit in range(10):
        has_digit = true == digit
        accuracy = np.mean(predicted[has_digit] == digit) if has_digit.any() else math.nan
        values[f"digit_accuracy_{digit}"] = float(accuracy)
    return values


def numpy_reference(case, max_sum: int = 18, *, scores: bool = False) -> dict[str, float]:
    digit_pred = case["logits"].argmax(axis=1)
    if scores:
        sum_pred = case["scores"].argmax(axis=1)
        point = sum_pred.astype(np.float64)
    else:
        point = case["raw"].astype(np.float64)
        sum_pred = np.clip(np.rint(point), 0, max_sum).astype(np.int64)
    target = case["sum"].astype(np.float64)
    return {
        "digit_accuracy": float(np.mean(digit_pred == case["digit"])),
        "sum_accuracy": float(np.mean(sum_pred == case["sum"])),
        "sum_r2": r2_numpy(point, target),
        "sum_mae": float(np.mean(np.abs(point - target))),
        "consistency": float(np.mean(sum_pred == digit_pred + case["side"])),
        **per_class_numpy(case["digit"], digit_pred),
    }


def numpy_two_image_reference(case) -> dict[str, float]:
    first = case["logits"].argmax(axis=1)
    second = case["second_logits"].argmax(axis=1)
    true = np.concatenate([case["digit"], case["second_digit"]])
    predicted = np.concatenate([first, second])
    point = case["raw"].astype(np.float64)
    sum_pred = np.clip(np.rint(point), 0, 18).astype(np.int64)
    target = case["sum"].astype(np.float64)
    return {
        "digit_accuracy": float(np.mean(predicted == true)),
        "sum_accuracy": float(np.mean(sum_pred == case["sum"])),
        "sum_r2": r2_numpy(point, target),
        "sum_mae": float(np.mean(np.abs(point - target))),
        "consistency": float(np.mean(sum_pred == first + second)),
        **per_class_numpy(true, predicted),
    }


def as_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: value.item() for name, value in values.items()}


def compute_quietly(metric: FusionMetrics) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return as_floats(metric.compute())


def assert_matches(values: dict[str, float], expected: dict[str, float]) -> None:
    assert sorted(values) == sorted(NAMES)
    for name in NAMES:
        assert values[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12, nan_ok=True), name


@pytest.mark.parametrize("n", [2, 3, 17, 64])
def test_values_match_numpy(n):
    case = make_case(n, seed=n)
    metric = FusionMetrics()

    metric.update(*as_torch(case))

    assert_matches(compute_quietly(metric), numpy_reference(case))


@pytest.mark.parametrize("n", [2, 5, 64])
def test_scores_values_match_numpy(n):
    case = make_case(n, seed=n)
    metric = FusionMetrics()

    metric.update(*as_torch(case, scores=True))

    assert_matches(compute_quietly(metric), numpy_reference(case, scores=True))


@pytest.mark.parametrize("n", [2, 9, 64])
def test_two_image_values_match_numpy(n):
    case = make_two_image_case(n, seed=n)
    metric = FusionMetrics()

    metric.update(*as_torch_two_image(case))

    assert_matches(compute_quietly(metric), numpy_two_image_reference(case))


def test_two_image_consistency_uses_second_digit():
    # Sums that equal digit + second digit but not digit + anything a side could add.
    logits = torch.eye(10)[[2, 7]] * 5
    second = torch.eye(10)[[9, 0]] * 5
    output = TwoImageOutput(logits, sum=torch.tensor([11.0, 7.0]), second_digit_logits=second)
    batch = {
        "digit": torch.tensor([2, 7]),
        "second_digit": torch.tensor([9, 0]),
        "sum": torch.tensor([11, 7]),
    }

    values = as_floats(fusion_metrics(output, batch))

    assert values["consistency"] == 1.0


def test_single_sample_values():
    case = make_case(1, seed=5)
    metric = FusionMetrics()
    metric.update(*as_torch(case))

    with pytest.warns(UserWarning, match=r"sum_r2 is undefined for 1 sample"):
        values = as_floats(metric.compute())

    expected = numpy_reference(case)
    assert math.isnan(values["sum_r2"])
    for name in NAMES:
        assert values[name] == pytest.approx(expected[name], nan_ok=True), name


def test_case_exercises_every_branch():
    # Guards the reference tests: the random case must hit clipping, hits and misses.
    case = make_case(64, seed=64)
    expected = numpy_reference(case)
    with_scores = numpy_reference(case, scores=True)

    assert (case["raw"] < 0).any()
    assert (case["raw"] > 18).any()
    for name in ("digit_accuracy", "sum_accuracy", "consistency"):
        assert 0.0 < expected[name] < 1.0, name
        assert 0.0 < with_scores[name] < 1.0, name


@pytest.mark.parametrize(("n", "batch_size"), [(65, 64), (21, 10), (7, 3), (1, 1)])
def test_epoch_in_batches_equals_one_shot(n, batch_size):
    case = make_case(n, seed=n)
    accumulated = FusionMetrics()
    one_shot = FusionMetrics()

    for start in range(0, n, batch_size):
        accumulated.update(*as_torch(slice_case(case, start, start + batch_size)))
    one_shot.update(*as_torch(case))

    assert n % batch_size in (0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n=1 has an undefined R2
        values, whole = as_floats(accumulated.compute()), as_floats(one_shot.compute())
    assert_matches(values, whole)
    assert_matches(values, numpy_reference(case))


@pytest.mark.parametrize("n", [1, 2, 17, 64])
def test_functional_equals_metric(n):
    case = make_case(n, seed=n)
    metric = FusionMetrics()
    metric.update(*as_torch(case))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        functional = as_floats(fusion_metrics(*as_torch(case)))
        accumulated = as_floats(metric.compute())

    assert_matches(functional, accumulated)


@pytest.mark.parametrize("n", [1, 13, 64])
def test_confusion_matrix_matches_numpy(n):
    case = make_case(n, seed=n)
    metric = FusionMetrics()
    metric.update(*as_torch(case))

    expected = numpy_confusion(case["digit"], case["logits"].argmax(axis=1))

    np.testing.assert_array_equal(metric.confusion_matrix().numpy(), expected)


def test_functional_confusion_matrix_matches_numpy():
    case = make_case(40, seed=4)

    matrix = fusion_confusion_matrix(*as_torch(case))

    expected = numpy_confusion(case["digit"], case["logits"].argmax(axis=1))
    np.testing.assert_array_equal(matrix.numpy(), expected)


def test_two_image_confusion_counts_both():
    case = make_two_image_case(30, seed=2)
    metric = FusionMetrics()
    metric.update(*as_torch_two_image(case))

    expected = numpy_confusion(case["digit"], case["logits"].argmax(axis=1))
    expected += numpy_confusion(case["second_digit"], case["second_logits"].argmax(axis=1))

    np.testing.assert_array_equal(metric.confusion_matrix().numpy(), expected)


def test_absent_class_accuracy_nan():
    output = FusionOutput(torch.eye(10)[[1, 2, 2]], sum=torch.tensor([1.0, 2.0, 3.0]))
    batch = {"digit": torch.tensor([1, 2, 3]), "side": torch.tensor([0, 0, 0])}
    batch["sum"] = torch.tensor([1, 2, 3])

    values = as_floats(fusion_metrics(output, batch))

    assert math.isnan(values["digit_accuracy_0"])
    assert values["digit_accuracy_3"] == 0.0


def test_compute_is_flat_and_json():
    metric = FusionMetrics()
    metric.update(*as_torch(make_case(20, seed=1)))

    values = metric.compute()

    assert all(value.ndim == 0 for value in values.values())
    assert json.loads(json.dumps(as_floats(values))).keys() == values.keys()


@pytest.mark.parametrize("device", DEVICES)
def test_metric_follows_input_device(device):
    case = make_case(30, seed=6)
    output, batch = as_torch(case)
    output = FusionOutput(*(None if t is None else t.to(device) for t in output))
    batch = {name: value.to(device) for name, value in batch.items()}
    metric = FusionMetrics()

    metric.update(output, batch)
    values = metric.compute()

    assert values["digit_accuracy"].device.type == device
    assert metric.confusion_matrix().device.type == device
    assert_matches(compute_quietly(metric), numpy_reference(case))


def test_reset_forgets_updates():
    first, second = make_case(30, seed=1), make_case(12, seed=2)
    metric = FusionMetrics()
    metric.update(*as_torch(first))

    metric.reset()
    metric.update(*as_torch(second))

    assert_matches(compute_quietly(metric), numpy_reference(second))
    assert metric.count.item() == 12


def test_max_sum_clips_prediction():
    output = FusionOutput(torch.eye(10)[[8, 9]], sum=torch.tensor([30.0, 13.0]))
    batch = {
        "digit": torch.tensor([8, 9]),
        "side": torch.tensor([3, 3]),
        "sum": torch.tensor([11, 12]),
    }
    metric = FusionMetrics(max_sum=12)

    metric.update(output, batch)

    # 30 clips to 12 and misses 11; 13 clips to 12 and hits.
    assert compute_quietly(metric)["sum_accuracy"] == 0.5


@pytest.mark.parametrize("constant", [0, 7, 18])
def test_r2_zero_variance_is_nan(constant):
    n = 50
    output = FusionOutput(torch.zeros(n, 10), sum=torch.linspace(0, 18, n))
    total = torch.full((n,), constant)
    batch = {"digit": torch.full((n,), min(constant, 9)), "side": total - min(constant, 9)}
    batch["sum"] = total
    metric = FusionMetrics()
    metric.update(output, batch)

    with pytest.warns(UserWarning, match=r"sum_r2 is undefined for 50 sample\(s\).*returning NaN"):
        r2 = metric.compute()["sum_r2"].item()

    assert math.isnan(r2)


def test_r2_zero_variance_over_batches():
    metric = FusionMetrics()
    for _ in range(3):
        output = FusionOutput(torch.zeros(4, 10), sum=torch.tensor([1.0, 2.0, 3.0, 4.0]))
        batch = {"digit": torch.zeros(4, dtype=torch.int64), "side": torch.full((4,), 9)}
        metric.update(output, {**batch, "sum": torch.full((4,), 9)})

    with pytest.warns(UserWarning, match="sum_r2 is undefined"):
        assert math.isnan(metric.compute()["sum_r2"].item())


def test_r2_single_sample_is_nan():
    metric = FusionMetrics()
    batch = {"digit": torch.tensor([4]), "side": torch.tensor([3]), "sum": torch.tensor([7])}
    metric.update(FusionOutput(torch.zeros(1, 10), sum=torch.tensor([2.0])), batch)

    with pytest.warns(UserWarning, match=r"undefined for 1 sample\(s\)"):
        assert math.isnan(metric.compute()["sum_r2"].item())


def test_r2_warning_names_caller():
    batch = {"digit": torch.tensor([4]), "side": torch.tensor([3]), "sum": torch.tensor([7])}
    output = FusionOutput(torch.zeros(1, 10), sum=torch.tensor([2.0]))

    with pytest.warns(UserWarning, match="sum_r2 is undefined") as caught:
        fusion_metrics(output, batch)

    assert caught[0].filename == __file__


def test_r2_perfect_prediction_is_one():
    total = torch.tensor([0, 5, 18, 9])
    output = FusionOutput(torch.zeros(4, 10), sum=total.float())
    batch = {"digit": torch.tensor([0, 5, 9, 9]), "side": torch.tensor([0, 0, 9, 0])}
    metric = FusionMetrics()
    metric.update(output, {**batch, "sum": total})

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


def test_sum_scores_width_rejected():
    output, batch = as_torch(make_case(4), scores=True)
    narrow = output._replace(sum_logits=output.sum_logits[:, :10])

    with pytest.raises(
        ValueError, match=re.escape("`sum_logits` of shape [4, 19] (max_sum=18), but got [4, 10]")
    ):
        FusionMetrics().update(narrow, batch)


def test_second_logits_size_rejected():
    output, batch = as_torch_two_image(make_two_image_case(4))
    short = output._replace(second_digit_logits=output.second_digit_logits[:3])

    with pytest.raises(
        ValueError, match=re.escape("second digit logits of shape [4, 10], but got [3, 10]")
    ):
        FusionMetrics().update(short, batch)


def test_digit_logits_classes_rejected():
    output, batch = as_torch(make_case(4))
    narrow = output._replace(digit_logits=output.digit_logits[:, :7])

    with pytest.raises(
        ValueError, match=re.escape("digit logits of shape [N, 10], but got [4, 7]; set")
    ):
        FusionMetrics().update(narrow, batch)


@pytest.mark.parametrize("name", ["digit", "sum", "side"])
def test_float_targets_rejected(name):
    output, batch = as_torch(make_case(4))
    batch[name] = batch[name].float()

    with pytest.raises(ValueError, match=rf"integer `{name}` values, but got dtype torch\.float32"):
        FusionMetrics().update(output, batch)


def test_integer_logits_rejected():
    output, batch = as_torch(make_case(4))

    with pytest.raises(
        ValueError, match=r"floating-point digit logits, but got dtype torch\.int64"
    ):
        FusionMetrics().update(output._replace(digit_logits=torch.zeros(4, 10).long()), batch)


def test_integer_sum_prediction_rejected():
    output, batch = as_torch(make_case(4))

    with pytest.raises(
        ValueError, match=r"floating-point `sum prediction`, but got dtype torch\.int64"
    ):
        FusionMetrics().update(output._replace(sum=output.sum.long()), batch)


@pytest.mark.parametrize(
    ("name", "bad", "bounds"),
    [
        ("digit", 10, "[0, 9]"),
        ("digit", -1, "[0, 9]"),
        ("sum", 19, "[0, 18]"),
        ("sum", -2, "[0, 18]"),
        ("side", 10, "[0, 9]"),
    ],
)
def test_out_of_range_target_rejected(name, bad, bounds):
    output, batch = as_torch(make_case(4))
    batch[name] = batch[name].clone()
    batch[name][2] = bad

    with pytest.raises(
        ValueError, match=re.escape(f"Invalid `{name}` value {bad}: expected values in {bounds}")
    ):
        FusionMetrics().update(output, batch)


def test_second_digit_out_of_range_rejected():
    output, batch = as_torch_two_image(make_two_image_case(4))
    batch["second_digit"] = torch.tensor([0, 1, 12, 3])

    with pytest.raises(
        ValueError, match=re.escape("Invalid `second_digit` value 12: expected values in [0, 9]")
    ):
        FusionMetrics().update(output, batch)


def test_missing_sum_prediction():
    output, batch = as_torch(make_case(4))

    with pytest.raises(ValueError, match="contains neither `sum` nor `sum_logits`"):
        FusionMetrics().update(FusionOutput(output.digit_logits), batch)


def test_missing_side_rejected():
    output, batch = as_torch(make_case(4))
    del batch["side"]

    with pytest.raises(ValueError, match=r"Missing `side`: the batch contains \['digit', 'sum'\]"):
        FusionMetrics().update(output, batch)


def test_second_digit_without_logits_rejected():
    output, batch = as_torch(make_case(4))
    batch["second_digit"] = batch["digit"]

    with pytest.raises(
        ValueError, match="has `second_digit` but the output has no `second_digit_logits`"
    ):
        FusionMetrics().update(output, batch)


def test_second_logits_without_digit_rejected():
    output, batch = as_torch_two_image(make_two_image_case(4))
    del batch["second_digit"]

    with pytest.raises(
        ValueError, match="has `second_digit_logits` but the batch has no `second_digit`"
    ):
        FusionMetrics().update(output, batch)


def test_states_reduce_by_sum():
    metric = FusionMetrics()

    assert sorted(metric._reductions) == sorted(STATISTICS)
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
    assert torch.equal(left.confusion_matrix(), whole.confusion_matrix())


def test_state_dtypes():
    metric = FusionMetrics()

    assert metric.count.dtype == torch.int64
    assert metric.confusion.dtype == torch.int64
    assert metric.squared_error.dtype == torch.float64


def test_metric_flags():
    assert FusionMetrics.full_state_update is False
    assert FusionMetrics.is_differentiable is False
    assert FusionMetrics.higher_is_better is None
