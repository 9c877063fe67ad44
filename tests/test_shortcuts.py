"""Shortcut checks: side sensitivity, the held-out-pair check and their example script."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import import_example
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from mnist_fusion.data import (
    BatchLoader,
    FusionDataset,
    RandomDigits,
    TensorFusionDataset,
    held_out_pairs,
    split_by_combinations,
)
from mnist_fusion.metrics import (
    SideSensitivity,
    counterfactual_side,
    evaluate_side_sensitivity,
    side_sensitivity,
)
from mnist_fusion.models import FusionHeadConfig, FusionModel, FusionModelConfig, SideSpec
from mnist_fusion.testing import check_held_out_accuracy, check_side_sensitivity

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shortcut_checks.py"
MAX_EXAMPLE_LINES = 130


class SideBlindModel(FusionModel):
    """A model that reads 0 in place of the side input ``blind``, whatever it is given."""

    def __init__(self, config: FusionModelConfig, blind: str = "side") -> None:
        super().__init__(config)
        self.blind = blind

    def forward(self, image, side=None, **options):
        if isinstance(side, Mapping):
            side = {**side, self.blind: torch.zeros_like(side[self.blind])}
        elif side is not None:
            side = torch.zeros_like(side)
        return super().forward(image, side, **options)


class PairLookupModel(FusionModel):
    """An exact-head model whose sum is wrong whenever the side value is 9."""

    def forward(self, image, side=None, **options):
        output = super().forward(image, side, **options)
        wrong = (side == 9).unsqueeze(-1)
        return output._replace(
            sum_logits=torch.where(wrong, output.sum_logits.roll(1, -1), output.sum_logits)
        )


def exact_config(**head) -> FusionModelConfig:
    return FusionModelConfig(head=FusionHeadConfig(sum_head="exact", **head))


def image_batch(count: int, side, *, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(count, 1, 28, 28, generator=generator), "side": side}


def random_side(count: int, high: int = 10, *, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, high, (count,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def exact_model() -> FusionModel:
    torch.manual_seed(0)
    return FusionModel(exact_config())


@pytest.fixture(scope="module")
def regression_model() -> FusionModel:
    torch.manual_seed(0)
    return FusionModel()


def test_metric_counts_exact_moves():
    metric = SideSensitivity()
    metric.update(torch.tensor([3, 5, 18]), torch.tensor([5, 5, 17]), torch.tensor([2, 1, -1]))
    assert int(metric.moved) == 2
    assert int(metric.total) == 3
    assert metric.compute().dtype == torch.float64
    assert metric.compute().item() == pytest.approx(2 / 3)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_metric_is_nan_before_update():
    metric = SideSensitivity()
    assert torch.isnan(metric.compute())
    metric.update(torch.tensor([1]), torch.tensor([2]), torch.tensor([1]))
    metric.reset()
    assert torch.isnan(metric.compute())


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 18), st.integers(0, 18), st.integers(-9, 9)), max_size=40
    ),
    cut=st.integers(0, 40),
)
def test_metric_batches_match_functional(rows, cut):
    columns = [torch.tensor([row[i] for row in rows], dtype=torch.int64) for i in range(3)]
    metric = SideSensitivity()
    for part in (slice(0, cut), slice(cut, None)):
        metric.update(*(column[part] for column in columns))
    expected = side_sensitivity(*columns)
    if not rows:
        assert torch.isnan(metric.compute())
        assert torch.isnan(expected)
        return
    moved = sum(1 for before, after, delta in rows if after - before == delta)
    assert metric.compute().item() == expected.item()
    assert expected.item() == pytest.approx(moved / len(rows))


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        (
            (torch.tensor([1.0]), torch.tensor([1]), torch.tensor([1])),
            "integer values for `sum_pred`",
        ),
        (
            (torch.tensor([1]), torch.tensor([[1]]), torch.tensor([1])),
            r"`counterfactual_sum_pred` of shape \[N\]",
        ),
        (
            (torch.tensor([1, 2]), torch.tensor([1]), torch.tensor([1])),
            "three tensors of one shape",
        ),
        (
            (torch.tensor([1]), torch.tensor([1]), torch.tensor([True])),
            "integer values for `delta`",
        ),
    ],
)
def test_metric_rejects_inputs(arguments, match):
    with pytest.raises(ValueError, match=match):
        side_sensitivity(*arguments)
    with pytest.raises(ValueError, match=match):
        SideSensitivity().update(*arguments)


def test_metric_rejects_non_tensor():
    with pytest.raises(TypeError, match="`sum_pred` to be a tensor, but got list"):
        side_sensitivity([1], torch.tensor([1]), torch.tensor([1]))
    with pytest.raises(TypeError, match="side input 'x' to be a tensor"):
        counterfactual_side([1], SideSpec.categorical(10), name="x")


# Each rank's (sum_pred, counterfactual_sum_pred, delta): 1 of 2 rows move on rank 0,
# 3 of 3 on rank 1.
SYNC_ROWS = {
    0: ([1, 2], [2, 2], [1, 1]),
    1: ([0, 4, 9], [3, 7, 12], [3, 3, 3]),
}


def sync_worker(rank: int, store: str, out: str) -> None:
    """Update a metric with this rank's rows in a 2-process gloo group; write its value."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        metric = SideSensitivity()
        metric.update(*(torch.tensor(column) for column in SYNC_ROWS[rank]))
        Path(out, f"rank{rank}.json").write_text(json.dumps(metric.compute().item()))
    finally:
        dist.destroy_process_group()


def test_metric_syncs_across_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if Path("/sys/class/net/lo").exists():
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # Keep gloo's connections on loopback.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    store = tmp_path / "store"
    mp.start_processes(
        sync_worker, args=(str(store), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == pytest.approx(4 / 5)


@given(cardinality=st.integers(2, 20), seed=st.integers(0, 2**31), count=st.integers(0, 50))
def test_counterfactual_differs_and_fits(cardinality, seed, count):
    side = random_side(count, cardinality, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    changed = counterfactual_side(side, SideSpec.categorical(cardinality), generator)
    assert changed.dtype == torch.int64
    assert changed.shape == side.shape
    assert bool((changed != side).all())
    assert bool(((changed >= 0) & (changed < cardinality)).all())


def test_counterfactual_is_uniform_over_other_values():
    side = torch.full((9000,), 4)
    changed = counterfactual_side(side, SideSpec.categorical(10), torch.Generator().manual_seed(0))
    counts = Counter(changed.tolist())
    assert sorted(counts) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    # 1000 expected per value; the binomial standard deviation is about 30.
    assert all(850 < count < 1150 for count in counts.values())


def test_counterfactual_is_reproducible():
    side = random_side(100)
    spec = SideSpec.categorical(10)
    first = counterfactual_side(side, spec, torch.Generator().manual_seed(7))
    second = counterfactual_side(side, spec, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    ("side", "spec", "match"),
    [
        (torch.tensor([0.5]), SideSpec.continuous(0.0, 1.0), "Side input 'x' is continuous"),
        (torch.tensor([0]), SideSpec.categorical(1), "'x' has a single category"),
        (torch.tensor([10]), SideSpec.categorical(10), "'x' has value 10, outside its spec"),
        (torch.tensor([-1]), SideSpec.categorical(10), "'x' has value -1"),
        (torch.tensor([1.0]), SideSpec.categorical(10), "integer values for side input 'x'"),
        (torch.tensor([[1]]), SideSpec.categorical(10), r"of shape \[N\]"),
    ],
)
def test_counterfactual_rejects(side, spec, match):
    with pytest.raises(ValueError, match=match):
        counterfactual_side(side, spec, name="x")


def test_exact_head_has_full_sensitivity(exact_model):
    batches = [image_batch(64, random_side(64, seed=seed), seed=seed) for seed in range(3)]
    assert evaluate_side_sensitivity(exact_model, batches) == {"side": 1.0}


def test_side_blind_model_has_zero_sensitivity():
    torch.manual_seed(0)
    for config in (FusionModelConfig(), exact_config()):
        blind = SideBlindModel(config)
        fractions = evaluate_side_sensitivity(blind, [image_batch(64, random_side(64))])
        assert fractions == {"side": 0.0}


def test_sensitivity_is_reproducible(regression_model):
    batches = [image_batch(64, random_side(64, seed=seed), seed=seed) for seed in range(2)]
    first = evaluate_side_sensitivity(regression_model, batches)
    second = evaluate_side_sensitivity(regression_model, batches)
    other = evaluate_side_sensitivity(
        regression_model, batches, generator=torch.Generator().manual_seed(1)
    )
    assert first == second
    assert 0.0 <= first["side"] <= 1.0
    assert 0.0 <= other["side"] <= 1.0


def test_sensitivity_restores_training_mode(regression_model):
    regression_model.train()
    evaluate_side_sensitivity(regression_model, [image_batch(4, random_side(4))])
    assert regression_model.training


def test_sensitivity_over_batch_loader(exact_model):
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
    data = TensorFusionDataset(images, torch.arange(50) % 10, RandomDigits(50, seed=0).values)
    loader = BatchLoader(data, batch_size=16, shuffle=True, seed=0)
    assert evaluate_side_sensitivity(exact_model, loader) == {"side": 1.0}


def named_config(**head) -> FusionModelConfig:
    sides = {"a": SideSpec.categorical(10), "b": SideSpec.categorical(5)}
    return FusionModelConfig(head=FusionHeadConfig(side_inputs=sides, **head))


def named_batch(count: int, seed: int = 0) -> dict:
    side = {"a": random_side(count, 10, seed=seed), "b": random_side(count, 5, seed=seed + 1)}
    return image_batch(count, side, seed=seed)


def test_sensitivity_per_named_input():
    torch.manual_seed(0)
    exact = FusionModel(named_config(sum_head="exact"))
    assert evaluate_side_sensitivity(exact, [named_batch(32)]) == {"a": 1.0, "b": 1.0}

    blind_to_b = SideBlindModel(named_config(sum_head="exact"), blind="b")
    fractions = evaluate_side_sensitivity(blind_to_b, [named_batch(32)])
    assert fractions == {"a": 1.0, "b": 0.0}
    assert evaluate_side_sensitivity(blind_to_b, [named_batch(32)], names=["b"]) == {"b": 0.0}


def test_sensitivity_over_named_fusion_dataset():
    torch.manual_seed(0)
    count = 24
    images = TensorDataset(torch.randn(count, 1, 28, 28), torch.arange(count) % 10)
    sides = {"a": RandomDigits(count, seed=1), "b": RandomDigits(count, seed=2, high=4)}
    loader = DataLoader(FusionDataset(images, sides), batch_size=10)
    exact = FusionModel(named_config(sum_head="exact"))
    assert evaluate_side_sensitivity(exact, loader) == {"a": 1.0, "b": 1.0}


def test_sensitivity_rejects_continuous_input():
    sides = {"a": SideSpec.categorical(10), "x": SideSpec.continuous(0.0, 1.0)}
    config = FusionModelConfig(head=FusionHeadConfig(side_inputs=sides, max_sum=18))
    model = FusionModel(config)
    batch = image_batch(8, {"a": random_side(8), "x": torch.rand(8)})
    with pytest.raises(ValueError, match="Side input 'x' is continuous"):
        evaluate_side_sensitivity(model, [batch])
    fractions = evaluate_side_sensitivity(model, [batch], names=["a"])
    assert list(fractions) == ["a"]


@pytest.mark.parametrize(
    ("names", "error", "match"),
    [
        (["c"], ValueError, r"Unknown side input\(s\) \['c'\]; the model declares \['a', 'b'\]"),
        ([], ValueError, "at least one side input"),
        ("a", TypeError, "got the string 'a'"),
    ],
)
def test_sensitivity_rejects_names(names, error, match):
    model = FusionModel(named_config(sum_head="exact"))
    with pytest.raises(error, match=match):
        evaluate_side_sensitivity(model, [named_batch(4)], names=names)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_sensitivity_rejects_batches(exact_model):
    with pytest.raises(ValueError, match="yielded no sample"):
        evaluate_side_sensitivity(exact_model, [])
    with pytest.raises(TypeError, match="dict batches with `image` and `side`"):
        evaluate_side_sensitivity(exact_model, [(torch.zeros(1, 1, 28, 28), torch.tensor([1]))])
    with pytest.raises(TypeError, match=r"got \['image'\]"):
        evaluate_side_sensitivity(exact_model, [{"image": torch.zeros(1, 1, 28, 28)}])


def test_check_side_sensitivity_passes_exact(exact_model):
    batch = image_batch(32, random_side(32))
    assert check_side_sensitivity(exact_model, [batch], min_fraction=1.0) == {"side": 1.0}


def test_check_side_sensitivity_fails_blind_model():
    blind = SideBlindModel(exact_config())
    with pytest.raises(AssertionError, match=r"below 0.9 for 'side': 0.0000"):
        check_side_sensitivity(blind, [image_batch(16, random_side(16))])
    assert check_side_sensitivity(blind, [image_batch(16, random_side(16))], min_fraction=0.0)


@pytest.mark.parametrize("min_fraction", [-0.1, 1.5, True, "0.9"])
def test_check_side_sensitivity_rejects_threshold(exact_model, min_fraction):
    with pytest.raises(ValueError, match="`min_fraction` to be a number in"):
        check_side_sensitivity(
            exact_model, [image_batch(2, random_side(2))], min_fraction=min_fraction
        )


def labelled_batches(model: FusionModel, side: torch.Tensor) -> list[dict]:
    """One batch whose digit labels are the model's own predictions."""
    batch = image_batch(len(side), side)
    digit, _ = model.predict(batch["image"], side)
    return [{**batch, "digit": digit, "sum": digit + side}]


def test_check_held_out_accuracy_passes_exact(exact_model):
    seen = labelled_batches(exact_model, random_side(40, 9))
    unseen = labelled_batches(exact_model, torch.full((40,), 9))
    assert check_held_out_accuracy(exact_model, seen, unseen, max_drop=0.0) == (1.0, 1.0)


def test_check_held_out_accuracy_fails_lookup_model():
    torch.manual_seed(0)
    lookup = PairLookupModel(exact_config())
    seen = labelled_batches(lookup, random_side(40, 9))
    unseen = labelled_batches(lookup, torch.full((40,), 9))
    with pytest.raises(AssertionError, match="held-out .* pairs is 0.0000, 1.0000 below"):
        check_held_out_accuracy(lookup, seen, unseen)
    assert check_held_out_accuracy(lookup, seen, unseen, max_drop=1.0) == (1.0, 0.0)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
@pytest.mark.filterwarnings("ignore:sum_r2 is undefined")
def test_check_held_out_accuracy_rejects_empty(exact_model):
    seen = labelled_batches(exact_model, random_side(8))
    with pytest.raises(ValueError, match="unseen batches yielded no sample"):
        check_held_out_accuracy(exact_model, seen, [])
    with pytest.raises(ValueError, match="`max_drop` to be a number in"):
        check_held_out_accuracy(exact_model, seen, seen, max_drop=2)


def test_check_held_out_accuracy_on_split(exact_model):
    images = torch.randint(0, 256, (200, 28, 28), dtype=torch.uint8)
    side = RandomDigits(200, seed=0).values
    probe = TensorFusionDataset(images, torch.zeros(200, dtype=torch.int64), side)
    # Label each image with the model's own digit, so every sum is right by construction.
    labels = torch.cat(
        [exact_model.predict(b["image"], b["side"])[0] for b in BatchLoader(probe, batch_size=50)]
    )
    data = TensorFusionDataset(images, labels, side)
    seen, unseen = split_by_combinations(data, held_out_pairs(10, 10, 0.3, seed=0))
    assert len(unseen) > 0
    result = check_held_out_accuracy(
        exact_model,
        BatchLoader(seen, batch_size=64),
        BatchLoader(unseen, batch_size=64),
        max_drop=0.0,
    )
    assert result == (1.0, 1.0)


def test_example_is_short():
    lines = EXAMPLE.read_text().splitlines()
    assert len(lines) <= MAX_EXAMPLE_LINES, f"{EXAMPLE.name} has {len(lines)} lines"


def test_example_import_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    module = import_example(EXAMPLE, "shortcut_checks_example")
    assert callable(module.main)
    assert list(tmp_path.iterdir()) == []


def test_example_runs_on_tiny_mnist(tiny_mnist_root: Path, tmp_path: Path):
    module = import_example(EXAMPLE, "shortcut_checks_example")
    argv = ["--root", str(tiny_mnist_root), "--out", str(tmp_path), "--epochs", "1"]
    rows = module.main(argv)

    assert list(rows) == ["regression", "classification", "exact"]
    for row in rows.values():
        assert all(0.0 <= value <= 1.0 for value in row.values())
    assert rows["exact"]["side_sensitivity"] == 1.0

    summary = json.loads((tmp_path / "shortcuts.json").read_text())
    assert summary["rows"] == rows
    assert [tuple(pair) for pair in summary["held_out"]] == list(
        held_out_pairs(10, 10, 0.1, seed=0)
    )
    counts = summary["counts"]
    assert counts["test_seen"] + counts["test_unseen"] == 300
    table = (tmp_path / "shortcuts.md").read_text().splitlines()
    assert len(table) == 2 + len(rows)
    assert table[-1].startswith("| exact |")


def test_sensitivity_leaves_out_missing_rows():
    specs = {"a": SideSpec.categorical(10), "b": SideSpec.categorical(10)}
    model = FusionModel(
        FusionModelConfig(head=FusionHeadConfig(side_inputs=specs, sum_head="exact"))
    )
    missing_b = torch.arange(16) >= 8
    side = {"a": torch.arange(16) % 10, "b": torch.where(missing_b, -5, 3)}
    batch = {"image": torch.randn(16, 1, 28, 28), "side": side, "missing": {"b": missing_b}}

    # Changing b where it is missing cannot move a prediction, so those rows are not counted.
    assert evaluate_side_sensitivity(model, [batch]) == {"a": 1.0, "b": 1.0}


def test_sensitivity_input_always_missing():
    model = FusionModel(FusionModelConfig(head=FusionHeadConfig(sum_head="exact")))
    batch = {
        "image": torch.randn(4, 1, 28, 28),
        "side": torch.tensor([1, 2, 3, 4]),
        "missing": torch.ones(4, dtype=torch.bool),
    }
    with pytest.raises(
        ValueError, match=re.escape("no sample in which side input(s) ['side'] are present")
    ):
        evaluate_side_sensitivity(model, [batch])
