import logging
import math
import re
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mnist_fusion.data import BatchLoader, MNISTSum, TensorFusionDataset
from mnist_fusion.losses import FusionLoss, LossOutput
from mnist_fusion.metrics import FusionMetrics
from mnist_fusion.models import (
    ConvEncoder,
    ConvEncoderConfig,
    FusionHeadConfig,
    FusionModel,
    FusionModelConfig,
    FusionOutput,
)
from mnist_fusion.training import TRAINING_STATE_NAME, evaluate, fit, resolve_device

CONFIG = FusionModelConfig(encoder=ConvEncoderConfig(channels=(8, 16)))
DROPOUT_CONFIG = FusionModelConfig(encoder=ConvEncoderConfig(channels=(8, 16), dropout=0.2))

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]


@pytest.fixture(scope="module")
def train_data(tiny_mnist_root) -> TensorFusionDataset:
    return MNISTSum(tiny_mnist_root, train=True, seed=0).as_tensors()


@pytest.fixture(scope="module")
def test_data(tiny_mnist_root) -> TensorFusionDataset:
    return MNISTSum(tiny_mnist_root, train=False, seed=0).as_tensors()


@pytest.fixture
def deterministic():
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def subset(data: TensorFusionDataset, n: int) -> TensorFusionDataset:
    return TensorFusionDataset(data.images[:n], data.labels[:n], data.side[:n])


def new_model(config: FusionModelConfig = CONFIG, seed: int = 0) -> FusionModel:
    torch.manual_seed(seed)
    return FusionModel(config)


class NaNOnCall(nn.Module):
    """FusionLoss whose total becomes NaN on the given call, counting from 1."""

    def __init__(self, call: int) -> None:
        super().__init__()
        self.call = call
        self.calls = 0
        self.inner = FusionLoss()

    def forward(self, output, batch) -> LossOutput:
        self.calls += 1
        loss = self.inner(output, batch)
        if self.calls == self.call:
            return loss._replace(total=loss.total * math.nan)
        return loss


@pytest.mark.parametrize("device", DEVICES)
def test_fit_beats_chance(train_data, test_data, device):
    model = new_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = BatchLoader(train_data, batch_size=64, shuffle=True, seed=0)

    history = fit(
        model,
        loader,
        epochs=2,
        optimizer=optimizer,
        loss_fn=FusionLoss(sum_weight=0.05),
        device=device,
        progress=False,
    )
    values = evaluate(model, BatchLoader(test_data, batch_size=100), device=device, progress=False)

    assert len(history) == 2
    assert history[-1]["loss"] < history[0]["loss"]
    assert values["digit_accuracy"] > 0.9
    assert next(model.parameters()).device.type == device


def test_history_weighted_by_batch_size(train_data):
    data = subset(train_data, 21)
    loader = BatchLoader(data, batch_size=10)
    model = new_model()
    loss_fn = FusionLoss(sum_weight=0.5)

    history = fit(
        model,
        loader,
        epochs=1,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        loss_fn=loss_fn,
        device="cpu",
        progress=False,
    )

    # lr=0 keeps the weights, and train-mode BatchNorm normalises each batch by its own
    # statistics, so recomputing each batch's loss reproduces what fit saw.
    sizes, terms = [], []
    model.train()
    with torch.no_grad():
        for batch in loader:
            loss = loss_fn(model(batch["image"], batch["side"]), batch)
            sizes.append(len(batch["digit"]))
            terms.append((loss.total.item(), loss.digit.item(), loss.sum.item()))
    weighted = [0.0, 0.0, 0.0]
    for size, values in zip(sizes, terms, strict=True):
        for k in range(3):
            weighted[k] += size * values[k] / sum(sizes)
    unweighted = sum(values[0] for values in terms) / len(terms)

    assert sizes == [10, 10, 1]
    assert history[0]["loss"] == pytest.approx(weighted[0], rel=1e-6)
    assert history[0]["digit_loss"] == pytest.approx(weighted[1], rel=1e-6)
    assert history[0]["sum_loss"] == pytest.approx(weighted[2], rel=1e-6)
    assert history[0]["loss"] != pytest.approx(unweighted, rel=1e-6)


def test_history_record_keys(train_data, test_data):
    model = new_model()

    history = fit(
        model,
        BatchLoader(subset(train_data, 40), batch_size=20),
        epochs=2,
        optimizer=torch.optim.SGD(model.parameters(), lr=1e-3),
        eval_loader=BatchLoader(subset(test_data, 30), batch_size=30),
        device="cpu",
        progress=False,
    )

    expected = {"epoch", "loss", "digit_loss", "sum_loss", "train_seconds", "test_count"}
    expected |= {
        f"test_{name}"
        for name in ("digit_accuracy", "sum_accuracy", "sum_r2", "sum_mae", "consistency")
    }
    expected |= {f"test_digit_accuracy_{digit}" for digit in range(10)}
    assert [record["epoch"] for record in history] == [1.0, 2.0]
    assert set(history[0]) == expected
    assert history[1]["test_count"] == 30.0


def test_evaluate_twice_identical(test_data):
    model = new_model()
    loader = BatchLoader(test_data, batch_size=64)

    first = evaluate(model, loader, device="cpu", progress=False)
    second = evaluate(model, loader, device="cpu", progress=False)

    assert first == second


def test_evaluate_counts_every_item(test_data):
    assert len(test_data) % 7 != 0

    values = evaluate(
        new_model(), BatchLoader(test_data, batch_size=7), device="cpu", progress=False
    )

    assert values["count"] == len(test_data)


def test_evaluate_resets_given_metrics(test_data):
    model = new_model()
    loader = BatchLoader(test_data, batch_size=50)
    stale = FusionMetrics()
    for batch in BatchLoader(subset(test_data, 40), batch_size=40):
        stale.update(model.eval()(batch["image"], batch["side"]), batch)

    reused = evaluate(model, loader, metrics=stale, device="cpu", progress=False)
    fresh = evaluate(model, loader, device="cpu", progress=False)

    assert reused == fresh


def test_evaluate_matches_predict(test_data):
    model = new_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    fit(
        model,
        BatchLoader(subset(test_data, 100), batch_size=50),
        epochs=1,
        optimizer=optimizer,
        device="cpu",
        progress=False,
    )
    everything = test_data.batch(torch.arange(len(test_data)))

    values = evaluate(model, BatchLoader(test_data, batch_size=64), device="cpu", progress=False)

    digit, total = model.predict(everything["image"], everything["side"])
    assert values["digit_accuracy"] == pytest.approx(
        (digit == everything["digit"]).double().mean().item()
    )
    assert values["sum_accuracy"] == pytest.approx(
        (total == everything["sum"]).double().mean().item()
    )
    assert values["consistency"] == pytest.approx(
        (total == digit + everything["side"]).double().mean().item()
    )


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_restores_mode(test_data, training):
    model = new_model().train(training)

    evaluate(model, BatchLoader(subset(test_data, 20), batch_size=10), device="cpu", progress=False)

    assert model.training is training


def test_nan_loss_names_epoch_and_batch(train_data, tmp_path):
    loader = BatchLoader(subset(train_data, 50), batch_size=10)
    model = new_model()
    saved = {}

    def remember_state(epoch, record):
        saved[epoch] = (tmp_path / TRAINING_STATE_NAME).read_bytes()

    with pytest.raises(
        FloatingPointError, match=r"Loss is nan at epoch 2, batch 3; training stopped"
    ):
        fit(
            model,
            loader,
            epochs=3,
            optimizer=torch.optim.SGD(model.parameters(), lr=1e-3),
            loss_fn=NaNOnCall(5 + 3),
            checkpoint_dir=tmp_path,
            callbacks=[remember_state],
            device="cpu",
            progress=False,
        )

    state_path = tmp_path / TRAINING_STATE_NAME
    assert list(saved) == [1]
    assert state_path.read_bytes() == saved[1]
    assert torch.load(state_path, weights_only=True)["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_checkpoint_resumes(train_data, tmp_path):
    loader = BatchLoader(subset(train_data, 50), batch_size=10)
    model = new_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with pytest.raises(FloatingPointError):
        fit(
            model,
            loader,
            epochs=2,
            optimizer=optimizer,
            loss_fn=NaNOnCall(7),
            checkpoint_dir=tmp_path,
            device="cpu",
            progress=False,
        )

    resumed = new_model(seed=1)
    history = fit(
        resumed,
        loader,
        epochs=2,
        optimizer=torch.optim.SGD(resumed.parameters(), lr=1e-3),
        checkpoint_dir=tmp_path,
        resume=True,
        device="cpu",
        progress=False,
    )

    assert [record["epoch"] for record in history] == [1.0, 2.0]


def test_huge_learning_rate_stops(train_data):
    model = new_model()

    with pytest.raises(
        FloatingPointError,
        match=r"Loss is (nan|inf) at epoch 1, batch \d+; .*Lower the learning rate",
    ):
        fit(
            model,
            BatchLoader(subset(train_data, 200), batch_size=20),
            epochs=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=1e30),
            device="cpu",
            progress=False,
        )


def train_run(data, checkpoint_dir, *, epochs, resume=False, seed=0):
    model = new_model(DROPOUT_CONFIG, seed=seed)
    loader = BatchLoader(data, batch_size=32, shuffle=True, seed=7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=1e-2, total_steps=2 * len(loader)
    )
    history = fit(
        model,
        loader,
        epochs=epochs,
        optimizer=optimizer,
        scheduler=scheduler,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        device="cpu",
        progress=False,
    )
    return model, optimizer, history


def without_time(history):
    return [{k: v for k, v in record.items() if k != "train_seconds"} for record in history]


def test_resume_bitwise_equal(train_data, tmp_path, deterministic):
    data = subset(train_data, 200)
    straight, straight_optimizer, straight_history = train_run(data, tmp_path / "a", epochs=2)

    train_run(data, tmp_path / "b", epochs=1)
    resumed, resumed_optimizer, resumed_history = train_run(
        data, tmp_path / "b", epochs=2, resume=True, seed=99
    )

    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    first_state = straight_optimizer.state_dict()["state"]
    second_state = resumed_optimizer.state_dict()["state"]
    for index, slots in first_state.items():
        for slot, value in slots.items():
            assert torch.equal(value, second_state[index][slot]), (index, slot)
    assert without_time(resumed_history) == without_time(straight_history)


def test_resume_after_last_epoch_trains_nothing(train_data, tmp_path):
    data = subset(train_data, 64)
    model, _, history = train_run(data, tmp_path, epochs=2)
    calls = []

    again = new_model(DROPOUT_CONFIG, seed=5)
    optimizer = torch.optim.SGD(again.parameters(), lr=1.0)
    replay = fit(
        again,
        BatchLoader(data, batch_size=32),
        epochs=2,
        optimizer=optimizer,
        checkpoint_dir=tmp_path,
        resume=True,
        callbacks=[lambda epoch, record: calls.append(epoch)],
        device="cpu",
        progress=False,
    )

    assert replay == history
    assert calls == []
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


def test_resume_without_state_starts_fresh(train_data, tmp_path):
    model = new_model()

    history = fit(
        model,
        BatchLoader(subset(train_data, 20), batch_size=10),
        epochs=1,
        optimizer=torch.optim.SGD(model.parameters(), lr=1e-3),
        checkpoint_dir=tmp_path,
        resume=True,
        device="cpu",
        progress=False,
    )

    assert len(history) == 1
    assert (tmp_path / TRAINING_STATE_NAME).is_file()


@pytest.mark.parametrize("content", [b"garbage", b""], ids=["garbage", "empty"])
def test_resume_damaged_state(train_data, tmp_path, content):
    state_path = tmp_path / TRAINING_STATE_NAME
    state_path.write_bytes(content)
    model = new_model()

    with pytest.raises(
        ValueError,
        match=rf"{re.escape(repr(str(state_path)))} is not a readable training checkpoint",
    ):
        fit(
            model,
            BatchLoader(subset(train_data, 20), batch_size=10),
            epochs=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=1e-3),
            checkpoint_dir=tmp_path,
            resume=True,
            device="cpu",
            progress=False,
        )


def test_resume_model_of_other_config(train_data, tmp_path):
    loader = BatchLoader(subset(train_data, 20), batch_size=10)
    first = new_model()
    fit(first, loader, epochs=1, optimizer=torch.optim.SGD(first.parameters(), lr=1e-3),
        checkpoint_dir=tmp_path, device="cpu", progress=False)  # fmt: skip
    other = new_model(FusionModelConfig(encoder=ConvEncoderConfig(channels=(8, 16, 32))))
    state_before = (tmp_path / TRAINING_STATE_NAME).read_bytes()

    with pytest.raises(ValueError, match="saved from a model of another configuration") as info:
        fit(other, loader, epochs=2, optimizer=torch.optim.SGD(other.parameters(), lr=1e-3),
            checkpoint_dir=tmp_path, resume=True, device="cpu", progress=False)  # fmt: skip

    assert "build the model as in the first run" in str(info.value)
    assert (tmp_path / TRAINING_STATE_NAME).read_bytes() == state_before


def test_resume_other_torch_file(train_data, tmp_path):
    state_path = tmp_path / TRAINING_STATE_NAME
    torch.save({"format": "something else"}, state_path)
    model = new_model()

    with pytest.raises(ValueError, match="is not an mnist_fusion training checkpoint; delete it"):
        fit(
            model,
            BatchLoader(subset(train_data, 20), batch_size=10),
            epochs=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=1e-3),
            checkpoint_dir=tmp_path,
            resume=True,
            device="cpu",
            progress=False,
        )


def test_callbacks_once_per_epoch(train_data):
    model = new_model()
    calls = []

    history = fit(
        model,
        BatchLoader(subset(train_data, 20), batch_size=10),
        epochs=3,
        optimizer=torch.optim.SGD(model.parameters(), lr=1e-3),
        callbacks=[lambda epoch, record: calls.append((epoch, record))],
        device="cpu",
        progress=False,
    )

    assert [epoch for epoch, _ in calls] == [1, 2, 3]
    assert [record for _, record in calls] == history


@pytest.mark.parametrize(("interval", "steps_per_epoch"), [("step", 3), ("epoch", 1)])
def test_scheduler_interval(train_data, interval, steps_per_epoch):
    model = new_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    fit(
        model,
        BatchLoader(subset(train_data, 25), batch_size=10),
        epochs=2,
        optimizer=optimizer,
        scheduler=scheduler,
        scheduler_interval=interval,
        device="cpu",
        progress=False,
    )

    assert scheduler.last_epoch == 2 * steps_per_epoch
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** (2 * steps_per_epoch))


def test_grad_clip_bounds_step(train_data):
    model = new_model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])

    fit(
        model,
        BatchLoader(subset(train_data, 10), batch_size=10),
        epochs=1,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        grad_clip=1e-3,
        device="cpu",
        progress=False,
    )

    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() <= 1e-3 * (1 + 1e-4)
    assert (after - before).norm().item() > 0


def test_invalid_scheduler_interval(train_data):
    model = new_model()

    with pytest.raises(
        ValueError, match=r"`scheduler_interval`='batch'; expected 'step' or 'epoch'"
    ):
        fit(
            model,
            [],
            epochs=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            scheduler_interval="batch",
        )


@pytest.mark.parametrize("epochs", [0, -1, 1.5, True])
def test_invalid_epochs(epochs):
    model = new_model()

    with pytest.raises(
        ValueError, match=rf"`epochs` to be a positive integer, but got {re.escape(repr(epochs))}"
    ):
        fit(model, [], epochs=epochs, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_resume_needs_checkpoint_dir():
    model = new_model()

    with pytest.raises(ValueError, match=r"`resume=True` needs `checkpoint_dir`"):
        fit(model, [], epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), resume=True)


def test_auto_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_device_with_cuda():
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_device_without_cuda(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    with pytest.raises(
        ValueError, match=rf"Device '{device}' was requested, but CUDA is not available"
    ):
        resolve_device(device)


@pytest.mark.parametrize("device", ["tpu", "CPU", "mps", ""])
def test_unknown_device(device):
    with pytest.raises(
        ValueError,
        match=re.escape(f"Invalid device {device!r}; expected one of ['auto', 'cpu', 'cuda']"),
    ):
        resolve_device(device)


def test_device_object_passes_through():
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


class TwoImageOutput(NamedTuple):
    """A two-image output: FusionOutput's fields plus the second image's digit logits."""

    digit_logits: torch.Tensor
    sum: torch.Tensor | None = None
    sum_logits: torch.Tensor | None = None
    second_digit_logits: torch.Tensor | None = None


class ExactSumModel(nn.Module):
    """A FusionModel whose sum scores are its digit log-probabilities shifted by the side."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = new_model()
        self.config = self.inner.config

    def forward(self, image, side):
        digit_logits = self.inner(image, side).digit_logits
        log_probs = torch.full((len(side), 19), -math.inf, dtype=digit_logits.dtype)
        columns = torch.arange(10)[None, :] + side[:, None]
        log_probs = log_probs.scatter(1, columns, F.log_softmax(digit_logits, dim=-1))
        return FusionOutput(digit_logits, sum_logits=log_probs)


class TwoImageModel(nn.Module):
    """Reads both images with one encoder; the sum is the sum of expected digits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.config = CONFIG
        self.encoder = ConvEncoder(CONFIG.encoder)

    def forward(self, image, side=None, *, second_image):
        first, _ = self.encoder(image)
        second, _ = self.encoder(second_image)
        digits = torch.arange(10, dtype=first.dtype)
        total = first.softmax(-1) @ digits + second.softmax(-1) @ digits
        return TwoImageOutput(first, sum=total, second_digit_logits=second)


def two_image_batches(data: TensorFusionDataset, batch_size: int, *, with_digits=True):
    """Pair image i with image i + 1 (cyclically), in batches, as dict batches."""
    whole = data.batch(torch.arange(len(data)))
    partner = torch.roll(torch.arange(len(data)), -1)
    batches = []
    for start in range(0, len(data), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(data)))
        batch = {
            "image": whole["image"][rows],
            "second_image": whole["image"][partner[rows]],
            "sum": whole["digit"][rows] + whole["digit"][partner[rows]],
        }
        if with_digits:
            batch["digit"] = whole["digit"][rows]
            batch["second_digit"] = whole["digit"][partner[rows]]
        batches.append(batch)
    return batches


def r2_numpy(point: np.ndarray, target: np.ndarray) -> float:
    ss_res = np.sum((point - target) ** 2)
    return float(1 - ss_res / np.sum((target - target.mean()) ** 2))


@pytest.mark.parametrize(
    ("loader_kwargs", "message"),
    [
        ({"shuffle": True}, "The evaluation DataLoader shuffles;.*build it with shuffle=False"),
        ({"drop_last": True}, "DataLoader drops its last incomplete batch.*drop_last=False"),
    ],
    ids=["shuffle", "drop_last"],
)
def test_evaluate_rejects_data_loader(test_data, loader_kwargs, message):
    loader = DataLoader(subset(test_data, 20), batch_size=8, **loader_kwargs)

    with pytest.raises(ValueError, match=message):
        evaluate(new_model(), loader, device="cpu", progress=False)


@pytest.mark.parametrize(
    ("loader_kwargs", "message"),
    [
        ({"shuffle": True}, "The evaluation BatchLoader shuffles;.*shuffle=False"),
        ({"drop_last": True}, "BatchLoader drops its last incomplete batch.*drop_last=False"),
    ],
    ids=["shuffle", "drop_last"],
)
def test_evaluate_rejects_batch_loader(test_data, loader_kwargs, message):
    loader = BatchLoader(subset(test_data, 20), batch_size=8, **loader_kwargs)

    with pytest.raises(ValueError, match=message):
        evaluate(new_model(), loader, device="cpu", progress=False)


def test_fit_rejects_shuffled_eval_before_training(train_data, test_data):
    model = new_model()
    calls = []

    with pytest.raises(ValueError, match="The evaluation BatchLoader shuffles"):
        fit(
            model,
            BatchLoader(subset(train_data, 20), batch_size=10),
            epochs=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=1e-3),
            eval_loader=BatchLoader(subset(test_data, 20), batch_size=10, shuffle=True),
            callbacks=[lambda epoch, record: calls.append(epoch)],
            device="cpu",
            progress=False,
        )

    assert calls == []


def test_evaluate_data_loader_equals_batch_loader(test_data):
    model = new_model()
    data = subset(test_data, 53)

    from_torch = evaluate(model, DataLoader(data, batch_size=10), device="cpu", progress=False)
    from_batches = evaluate(model, BatchLoader(data, batch_size=10), device="cpu", progress=False)

    assert from_torch == from_batches


@pytest.mark.parametrize("batch_size", [1, 7, 300])
def test_evaluate_matches_numpy(test_data, batch_size):
    data = subset(test_data, 43) if batch_size == 1 else test_data
    model = new_model().eval()
    everything = data.batch(torch.arange(len(data)))
    with torch.no_grad():
        output = model(everything["image"], everything["side"])
    point = output.sum.double().numpy()
    target = everything["sum"].double().numpy()

    values = evaluate(model, BatchLoader(data, batch_size=batch_size), device="cpu", progress=False)

    assert values["sum_mae"] == pytest.approx(float(np.mean(np.abs(point - target))), rel=1e-5)
    assert values["sum_r2"] == pytest.approx(r2_numpy(point, target), rel=1e-5)
    assert values["count"] == len(data)


def test_evaluate_moves_metrics_with_model(test_data):
    metrics = FusionMetrics()
    model = new_model()

    evaluate(
        model, BatchLoader(subset(test_data, 10), batch_size=10), metrics=metrics, device="cpu"
    )

    assert metrics.count.device == next(model.parameters()).device


def test_fit_logs_each_epoch(train_data, caplog):
    model = new_model()

    with caplog.at_level(logging.INFO, logger="mnist_fusion.training"):
        fit(
            model,
            BatchLoader(subset(train_data, 20), batch_size=10),
            epochs=2,
            optimizer=torch.optim.SGD(model.parameters(), lr=1e-3),
            device="cpu",
            progress=False,
        )

    messages = [record.getMessage() for record in caplog.records]
    assert [m.split(" loss=")[0] for m in messages if m.startswith("epoch")] == [
        "epoch 1/2",
        "epoch 2/2",
    ]


def test_fit_adds_loss_parameters(train_data):
    model = new_model()
    loss_fn = FusionLoss(sum_weight=0.05, uncertainty_weighting=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    fit(
        model,
        BatchLoader(subset(train_data, 40), batch_size=20),
        epochs=1,
        optimizer=optimizer,
        loss_fn=loss_fn,
        device="cpu",
        progress=False,
    )

    assert optimizer.param_groups[-1]["params"] == [loss_fn.log_variances]
    assert (loss_fn.log_variances.detach() != 0).all()


def test_fit_keeps_given_loss_parameters(train_data):
    model = new_model()
    loss_fn = FusionLoss(uncertainty_weighting=True)
    optimizer = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=1e-2)

    fit(
        model,
        BatchLoader(subset(train_data, 20), batch_size=20),
        epochs=1,
        optimizer=optimizer,
        loss_fn=loss_fn,
        device="cpu",
        progress=False,
    )

    assert len(optimizer.param_groups) == 1


def test_fit_loss_parameters_with_scheduler(train_data):
    model = new_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)

    with pytest.raises(
        ValueError,
        match=re.escape("has 1 trainable parameter(s) that the optimizer lacks, and a scheduler"),
    ):
        fit(
            model,
            BatchLoader(subset(train_data, 20), batch_size=10),
            epochs=1,
            optimizer=optimizer,
            scheduler=scheduler,
            loss_fn=FusionLoss(uncertainty_weighting=True),
            device="cpu",
            progress=False,
        )


def options_run(data, checkpoint_dir, loss_fn, *, epochs, resume=False):
    model = new_model()
    return fit(
        model,
        BatchLoader(subset(data, 20), batch_size=10),
        epochs=epochs,
        optimizer=torch.optim.SGD(model.parameters(), lr=1e-3),
        loss_fn=loss_fn,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        device="cpu",
        progress=False,
    )


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        ({"digit_label_smoothing": 0.1}, {}, "digit_label_smoothing=0.1 (now 0.0)"),
        ({"sum_weight": 0.01}, {"sum_weight": 0.5}, "sum_weight=0.01 (now 0.5)"),
        ({"sum_loss": "mse"}, {"sum_loss": "huber"}, "sum_loss='mse' (now 'huber')"),
    ],
)
def test_resume_with_other_loss_options(train_data, tmp_path, first, second, message):
    options_run(train_data, tmp_path, FusionLoss(**first), epochs=1)
    state_before = (tmp_path / TRAINING_STATE_NAME).read_bytes()

    with pytest.raises(ValueError, match=re.escape(message)) as info:
        options_run(train_data, tmp_path, FusionLoss(**second), epochs=2, resume=True)

    assert "build the loss as in the first run" in str(info.value)
    assert (tmp_path / TRAINING_STATE_NAME).read_bytes() == state_before


def test_resume_state_without_loss_options(train_data, tmp_path):
    # States written before the loss options were saved resume with any options.
    options_run(train_data, tmp_path, FusionLoss(sum_weight=0.01), epochs=1)
    state_path = tmp_path / TRAINING_STATE_NAME
    state = torch.load(state_path, weights_only=True)
    del state["loss_options"]
    torch.save(state, state_path)

    history = options_run(train_data, tmp_path, FusionLoss(sum_weight=0.5), epochs=2, resume=True)

    assert len(history) == 2


def uncertainty_run(data, checkpoint_dir, *, epochs, resume=False):
    model = new_model(seed=3)
    loss_fn = FusionLoss(sum_weight=0.05, uncertainty_weighting=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    fit(
        model,
        BatchLoader(data, batch_size=16, shuffle=True, seed=2),
        epochs=epochs,
        optimizer=optimizer,
        loss_fn=loss_fn,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        device="cpu",
        progress=False,
    )
    return model, loss_fn


def test_resume_restores_loss_parameters(train_data, tmp_path, deterministic):
    data = subset(train_data, 48)
    straight, straight_loss = uncertainty_run(data, tmp_path / "a", epochs=2)

    uncertainty_run(data, tmp_path / "b", epochs=1)
    resumed, resumed_loss = uncertainty_run(data, tmp_path / "b", epochs=2, resume=True)

    assert torch.equal(straight_loss.log_variances, resumed_loss.log_variances)
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_resume_with_other_loss_rejected(train_data, tmp_path):
    data = subset(train_data, 20)
    uncertainty_run(data, tmp_path, epochs=1)
    model = new_model()

    with pytest.raises(
        ValueError,
        match=re.escape(
            "contains ['log_variances'], but `loss_fn` has []; build the loss as in the first run"
        ),
    ):
        fit(
            model,
            BatchLoader(data, batch_size=10),
            epochs=2,
            optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
            checkpoint_dir=tmp_path,
            resume=True,
            device="cpu",
            progress=False,
        )


def test_fit_exact_head_uses_cross_entropy(train_data, test_data):
    model = ExactSumModel()
    batch = test_data.batch(torch.arange(8))
    output = model(batch["image"], batch["side"])
    expected = F.nll_loss(output.sum_logits, batch["sum"]).item()

    history = fit(
        model,
        BatchLoader(subset(train_data, 300), batch_size=50, shuffle=True, seed=0),
        epochs=1,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        device="cpu",
        progress=False,
    )
    values = evaluate(model, BatchLoader(test_data, batch_size=100), device="cpu", progress=False)

    assert FusionLoss(sum_loss="auto")(output, batch).sum.item() == pytest.approx(expected)
    assert history[0]["sum_loss"] > 0
    assert values["consistency"] == 1.0


def test_two_image_sum_only_training(train_data):
    data = subset(train_data, 200)
    model = TwoImageModel()
    loss_fn = FusionLoss(digit_weight=0.0)

    history = fit(
        model,
        two_image_batches(data, 25, with_digits=False),
        epochs=2,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        loss_fn=loss_fn,
        device="cpu",
        progress=False,
    )

    assert [record["digit_loss"] for record in history] == [0.0, 0.0]
    assert history[1]["sum_loss"] < history[0]["sum_loss"]


def test_evaluate_two_image_matches_numpy(test_data):
    data = subset(test_data, 61)
    model = TwoImageModel().eval()
    whole = two_image_batches(data, len(data))[0]
    with torch.no_grad():
        output = model(whole["image"], second_image=whole["second_image"])
    first = output.digit_logits.argmax(-1).numpy()
    second = output.second_digit_logits.argmax(-1).numpy()
    sum_pred = output.sum.round().clamp(0, 18).long().numpy()
    true = np.concatenate([whole["digit"].numpy(), whole["second_digit"].numpy()])

    values = evaluate(model, two_image_batches(data, 10), device="cpu", progress=False)

    assert values["consistency"] == pytest.approx(float(np.mean(sum_pred == first + second)))
    assert values["digit_accuracy"] == pytest.approx(
        float(np.mean(np.concatenate([first, second]) == true))
    )
    assert values["sum_accuracy"] == pytest.approx(float(np.mean(sum_pred == whole["sum"].numpy())))


def test_exact_adder_learns_digits_from_sums(train_data, test_data):
    torch.manual_seed(0)
    config = FusionModelConfig(
        encoder=ConvEncoderConfig(channels=(8, 16)), head=FusionHeadConfig(sum_head="exact")
    )
    model = FusionModel(config)

    history = fit(
        model,
        two_image_batches(subset(train_data, 600), 50, with_digits=False),
        epochs=2,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        loss_fn=FusionLoss(digit_weight=0.0, sum_loss="auto"),
        device="cpu",
        progress=False,
    )
    values = evaluate(model, two_image_batches(test_data, 100), device="cpu", progress=False)

    assert history[1]["sum_loss"] < history[0]["sum_loss"]
    # Chance is 0.1; the digits are learned from the sums alone.
    assert values["digit_accuracy"] > 0.3
