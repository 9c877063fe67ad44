"""Training throughput and inference latency of a recipe's model, freshly initialised."""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from accel import Accelerator
from accuracy import train_step
from recipes import Recipe
from timing import median_seconds, synchronize

from mnist_fusion.data import BatchLoader, TensorFusionDataset


def training_throughput(
    recipe: Recipe,
    train_data: TensorFusionDataset,
    accel: Accelerator,
    *,
    warmup: int,
    steps: int,
    seed: int = 0,
) -> dict[str, float]:
    """Images per second over ``steps`` training steps of ``recipe`` after ``warmup`` ones.

    A step includes building its batch on the batched tensor path, as training does.
    """
    torch.manual_seed(seed)
    model = recipe.build_model()
    network = accel.prepare(model)
    optimizer = recipe.build_optimizer(model.parameters())
    loss_fn = recipe.loss()
    loader = BatchLoader(train_data, batch_size=recipe.batch_size, shuffle=True, seed=seed)
    # Drop the short last batch, so every timed step has the same size.
    batches = (b for b in _forever(loader) if len(b["index"]) == recipe.batch_size)
    network.train()

    for _ in range(warmup):
        train_step(network, accel, next(batches), loss_fn, optimizer)
    synchronize(accel.device)
    started = time.perf_counter()
    for _ in range(steps):
        train_step(network, accel, next(batches), loss_fn, optimizer)
    synchronize(accel.device)
    seconds = time.perf_counter() - started
    return {
        "batch_size": recipe.batch_size,
        "steps": steps,
        "seconds": seconds,
        "images_per_second": steps * recipe.batch_size / seconds,
    }


def inference_latency(
    recipe: Recipe,
    test_data: TensorFusionDataset,
    accel: Accelerator,
    *,
    batch_size: int,
    warmup: int,
    repeats: int,
    seed: int = 0,
) -> dict[str, object]:
    """Median seconds of one forward pass over ``batch_size`` test images, eval, no_grad."""
    torch.manual_seed(seed)
    network = accel.prepare(recipe.build_model())
    network.eval()
    batch = accel.batch(test_data.batch(torch.arange(batch_size)))

    @torch.no_grad()
    def forward() -> None:
        with accel.autocast():
            network(batch["image"], batch["side"])

    median, times = median_seconds(forward, device=accel.device, repeats=repeats, warmup=warmup)
    return {"batch_size": batch_size, "median_seconds": median, "seconds": times}


def _forever(loader: BatchLoader) -> Iterator[dict[str, torch.Tensor]]:
    """Cycle through ``loader``, with a new shuffle each pass."""
    while True:
        yield from loader
