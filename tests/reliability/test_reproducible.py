"""Two ``mnist-fusion train`` processes with one seed on the CPU give identical results.

Both runs are separate real processes with the same environment, so they share the torch
build and the thread count. docs/reliability.md lists what this guarantee depends on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clirun import (
    TRAIN_ARGS,
    history_without_time,
    reference_run,
    run_cli,
    small_root,
    weights_differ,
    without_time,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    basetemp = tmp_path_factory.getbasetemp()
    second = tmp_path_factory.mktemp("second-run") / "out"
    result = run_cli("train", "--root", small_root(basetemp), "--out", second, *TRAIN_ARGS)
    assert result.returncode == 0, result.stderr
    return reference_run(basetemp), second


def test_same_seed_same_metrics(runs):
    first, second = (json.loads((out / "metrics.json").read_text()) for out in runs)

    assert without_time(first) == without_time(second)


def test_same_seed_same_history(runs):
    first, second = runs

    assert history_without_time(first / "history.json") == history_without_time(
        second / "history.json"
    )


def test_same_seed_same_weights(runs):
    assert weights_differ(*(out / "model.pt" for out in runs)) == []


def test_metrics_record_run_conditions(runs):
    # A comparison of two runs needs the conditions that the guarantee depends on.
    metrics = json.loads((runs[0] / "metrics.json").read_text())

    assert metrics["device"] == "cpu"
    assert metrics["torch_version"]
    assert metrics["torch_threads"] >= 1
    assert metrics["seed"] == 3


def test_plots_only_on_request(runs):
    # The runs here have no --plots flag, so they must not write the PNG files.
    assert sorted(path.suffix for path in runs[0].iterdir()) == [".json", ".json", ".pt", ".pt"]
