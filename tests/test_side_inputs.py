"""Training and evaluation with several, continuous and missing side inputs."""

import re

import pytest
import torch

from mnist_fusion.data import (
    BatchLoader,
    MNISTSum,
    RandomDigits,
    RandomUniform,
    TensorFusionDataset,
)
from mnist_fusion.losses import FusionLoss
from mnist_fusion.models import (
    ConvEncoderConfig,
    FusionHeadConfig,
    FusionModel,
    FusionModelConfig,
    SideSpec,
)
from mnist_fusion.training import evaluate, fit

ENCODER = ConvEncoderConfig(channels=(8, 16))


def continuous_sum(label, side):
    return label + 10 * side["x"]


@pytest.fixture(scope="module")
def tiny(tiny_mnist_root):
    train = MNISTSum(tiny_mnist_root, train=True, seed=0).as_tensors()
    test = MNISTSum(tiny_mnist_root, train=False, seed=0).as_tensors()
    return train, test


def named(data: TensorFusionDataset, seed: int, **kwargs) -> TensorFusionDataset:
    count = len(data)
    side = {
        "a": RandomDigits(count, seed=seed).values,
        "b": RandomDigits(count, seed=seed + 1, high=4).values,
    }
    return TensorFusionDataset(data.images, data.labels, side, **kwargs)


def with_uniform(data: TensorFusionDataset, seed: int) -> TensorFusionDataset:
    side = {"x": RandomUniform(len(data), seed=seed).values}
    return TensorFusionDataset(
        data.images,
        data.labels,
        side,
        targets={"digit": lambda label, side: label, "sum": continuous_sum},
    )


def train(model, data, epochs, **kwargs):
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loader = BatchLoader(data, batch_size=64, shuffle=True, seed=0)
    loss_fn = kwargs.pop("loss_fn", FusionLoss(sum_loss="auto", sum_weight=0.1))
    return fit(
        model,
        loader,
        epochs=epochs,
        optimizer=optimizer,
        loss_fn=loss_fn,
        device="cpu",
        progress=False,
        **kwargs,
    )


def new_model(**head) -> FusionModel:
    torch.manual_seed(0)
    return FusionModel(FusionModelConfig(encoder=ENCODER, head=FusionHeadConfig(**head)))


SPECS = {"a": SideSpec.categorical(10), "b": SideSpec.categorical(5, encoding="embedding", dim=4)}


def test_two_inputs_train_exact_head(tiny):
    train_data, test_data = (named(part, seed) for part, seed in zip(tiny, (0, 100), strict=True))
    model = new_model(side_inputs=SPECS, sum_head="exact")

    train(model, train_data, epochs=2)
    values = evaluate(model, BatchLoader(test_data, batch_size=100), device="cpu", progress=False)

    assert model.config.max_sum == 9 + 9 + 4
    assert values["digit_accuracy"] > 0.9
    # The exact head's sum is the predicted digit plus the true side values.
    assert values["consistency"] == 1.0
    assert values["sum_accuracy"] == values["digit_accuracy"]


def test_continuous_input_is_used(tiny):
    train_data, test_data = (
        with_uniform(part, seed) for part, seed in zip(tiny, (0, 100), strict=True)
    )
    model = new_model(side_inputs={"x": SideSpec.continuous(0.0, 1.0)}, max_sum=19)

    train(model, train_data, epochs=4, loss_fn=FusionLoss(sum_weight=0.1))
    model.eval()
    batch = test_data.batch(torch.arange(len(test_data)))
    with torch.no_grad():
        prediction = model(batch["image"], batch["side"]).sum
        shifted = {"x": (batch["side"]["x"] + 0.3).clamp(max=0.999)}
        moved = model(batch["image"], shifted).sum - prediction

    error = (prediction - batch["sum"]).abs().mean()
    expected_move = 10 * (shifted["x"] - batch["side"]["x"])
    assert error < 1.0, f"mean absolute error {error:.3f}"
    # A model that ignored x would move by 0; one that uses it moves by 10 times the change.
    assert (moved - expected_move).abs().mean() < 0.5 * expected_move.abs().mean()


def test_side_dropout_trains_exact_head(tiny):
    train_data, test_data = tiny
    model = new_model(sum_head="exact")

    train(model, train_data, epochs=2, side_dropout=0.5)
    model.eval()
    batch = test_data.batch(torch.arange(len(test_data)))
    missing = torch.ones(len(test_data), dtype=torch.bool)
    known_digit, known_sum = model.predict(batch["image"], batch["side"])
    unknown_digit, _ = model.predict(batch["image"], batch["side"], missing=missing)

    assert (known_digit == batch["digit"]).float().mean() > 0.9
    assert torch.equal(known_digit, unknown_digit)
    assert torch.equal(known_sum, known_digit + batch["side"])


def test_side_dropout_marks_rows_missing(tiny):
    train_data, _ = tiny
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = FusionLoss(sum_loss="auto")

        def forward(self, output, batch):
            seen.append(batch["missing"].float().mean().item())
            return self.inner(output, batch)

    train(new_model(sum_head="exact"), train_data, epochs=1, side_dropout=0.3, loss_fn=Recording())

    fraction = sum(seen) / len(seen)
    assert 0.25 < fraction < 0.35


def test_side_dropout_masks_each_named_input(tiny):
    train_data, _ = tiny
    data = named(train_data, 0)
    names = []

    class Recording(torch.nn.Module):
        def forward(self, output, batch):
            names.append(sorted(batch["missing"]))
            return FusionLoss(sum_loss="auto")(output, batch)

    train(
        new_model(side_inputs=SPECS, sum_head="exact"),
        data,
        epochs=1,
        side_dropout=0.2,
        loss_fn=Recording(),
    )

    assert names and all(entry == ["a", "b"] for entry in names)


@pytest.mark.parametrize("sum_head", ["regression", "classification"])
def test_side_dropout_rejects_learned_head(tiny, sum_head):
    with pytest.raises(ValueError, match=re.escape(f"the model has sum_head={sum_head!r}")):
        train(new_model(sum_head=sum_head), tiny[0], epochs=1, side_dropout=0.1)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 2, True])
def test_side_dropout_rejects_rate(tiny, rate):
    with pytest.raises(ValueError, match="`side_dropout` in \\[0, 1\\)"):
        train(new_model(sum_head="exact"), tiny[0], epochs=1, side_dropout=rate)
