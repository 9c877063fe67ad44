"""Data-path throughput: bare torchvision MNIST, the per-item FusionDataset, the batched path.

All three read the same training split in one process, one after the other, so their
ratios are comparable even on a busy machine. Run from the repository root:

    python benchmarks/bench_data.py --root data --out benchmarks/results/data.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets

from mnist_fusion.data import BatchLoader, FusionDataset, MNISTSum, RandomDigits, default_transform


def images_per_second(loader, limit: int) -> float:
    """Iterate ``loader`` until ``limit`` images have passed and return the rate."""
    seen = 0
    started = time.perf_counter()
    for batch in loader:
        images = batch[0] if isinstance(batch, list | tuple) else batch["image"]
        seen += len(images)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - started)


def measure(root: Path, *, batch_size: int, limit: int, repeats: int) -> dict[str, float]:
    """Measure each path ``repeats`` times, interleaved, and keep the best rate of each."""
    bare = datasets.MNIST(str(root), train=True, transform=default_transform())
    fused = FusionDataset(bare, RandomDigits(len(bare), seed=0))
    tensors = MNISTSum(root, train=True, seed=0).as_tensors()
    loaders = {
        "torchvision_dataloader": lambda: DataLoader(bare, batch_size=batch_size, shuffle=True),
        "fusion_dataset_dataloader": lambda: DataLoader(fused, batch_size=batch_size, shuffle=True),
        "batched_tensor_path": lambda: BatchLoader(tensors, batch_size=batch_size, shuffle=True),
    }

    best = dict.fromkeys(loaders, 0.0)
    for _ in range(repeats):
        for name, make in loaders.items():
            best[name] = max(best[name], images_per_second(make(), limit))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--limit", type=int, default=20_000, help="images read per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    torch.manual_seed(0)
    rates = measure(args.root, batch_size=args.batch_size, limit=args.limit, repeats=args.repeats)
    base = rates["torchvision_dataloader"]
    result = {
        "images_per_second": rates,
        "wrapper_overhead": base / rates["fusion_dataset_dataloader"] - 1,
        "batched_speedup_over_per_item": rates["batched_tensor_path"]
        / rates["fusion_dataset_dataloader"],
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
