"""Data-path throughput: bare torchvision MNIST, the per-item FusionDataset, the batched path.

The three read the same training split in one process, interleaved, so that their
ratios stay comparable on a busy machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

import torch
from torch.utils.data import DataLoader
from torchvision import datasets

from mnist_fusion.data import BatchLoader, FusionDataset, MNISTSum, RandomDigits, default_transform

BARE = "torchvision_dataloader"
PER_ITEM = "fusion_dataset_dataloader"
BATCHED = "batched_tensor_path"


def images_per_second(loader: Iterable[object], limit: int) -> float:
    """Iterate ``loader`` until at least ``limit`` images have passed; return the rate.

    The clock includes starting the iteration, as a training epoch does.
    """
    seen = 0
    started = time.perf_counter()
    for batch in loader:
        images = batch["image"] if isinstance(batch, dict) else batch[0]
        seen += len(images)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - started)


def loaders(root: os.PathLike[str], batch_size: int) -> dict[str, Callable[[], Iterable[object]]]:
    """Return a factory of a shuffling loader for each path, over the training split.

    The DataLoaders run in the main process (``num_workers=0``), like ``BatchLoader``.
    """
    bare = datasets.MNIST(str(root), train=True, transform=default_transform())
    fused = FusionDataset(bare, RandomDigits(len(bare), seed=0))
    tensors = MNISTSum(root, train=True, seed=0).as_tensors()
    return {
        BARE: lambda: DataLoader(bare, batch_size=batch_size, shuffle=True),
        PER_ITEM: lambda: DataLoader(fused, batch_size=batch_size, shuffle=True),
        BATCHED: lambda: BatchLoader(tensors, batch_size=batch_size, shuffle=True),
    }


def measure(
    root: os.PathLike[str], *, batch_size: int, limit: int, repeats: int, threads: int | None
) -> dict[str, object]:
    """Measure each path ``repeats`` times, interleaved; keep every rate and the best.

    The best rate is the one least disturbed by other work on the machine. With
    ``threads`` set, torch runs that many intra-op threads during the measurement.
    On a busy 2-core machine the batched path once ran about 50 times slower with 2
    threads than with 1, because each parallel operation waited until the scheduler
    ran its second thread. The per-item paths barely changed, because their per-image
    operations are too small for torch to split across threads.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        factories = loaders(root, batch_size)
        rates: dict[str, list[float]] = {name: [] for name in factories}
        for _ in range(repeats):
            for name, make in factories.items():
                rates[name].append(images_per_second(make(), limit))
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    best = {name: max(values) for name, values in rates.items()}
    return {
        "torch_threads": used,
        "batch_size": batch_size,
        "images_per_measurement": limit,
        "repeats": repeats,
        "images_per_second": best,
        "all_images_per_second": rates,
    }
