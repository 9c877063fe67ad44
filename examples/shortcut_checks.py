"""Train each sum head without some (digit, side) pairs and check it for shortcuts.

For the regression, classification and exact sum heads, the script trains the default
recipe on the MNIST training images whose (digit, side value) pair is not held out. It
reports the sum accuracy on the test images with held-out pairs and with seen pairs, and
the side sensitivity on the whole test set, and writes OUT/shortcuts.json and .md::

    python examples/shortcut_checks.py --root data --out runs/shortcuts --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Subset

from mnist_fusion import cli
from mnist_fusion.data import (
    BatchLoader,
    MNISTSum,
    TensorFusionDataset,
    held_out_pairs,
    split_by_combinations,
)
from mnist_fusion.losses import FusionLoss
from mnist_fusion.metrics import evaluate_side_sensitivity
from mnist_fusion.models import SUM_HEADS, FusionHeadConfig, FusionModel, FusionModelConfig
from mnist_fusion.training import evaluate, fit, resolve_device

COLUMNS = {
    "sum_accuracy_seen": "sum accuracy, seen pairs",
    "sum_accuracy_unseen": "sum accuracy, held-out pairs",
    "digit_accuracy_seen": "digit accuracy, seen pairs",
    "digit_accuracy_unseen": "digit accuracy, held-out pairs",
    "side_sensitivity": "side sensitivity",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data", help="folder that contains MNIST/raw")
    parser.add_argument("--out", default="runs/shortcuts", help="folder for the result files")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per sum head")
    parser.add_argument("--fraction", type=float, default=0.1, help="fraction of pairs held out")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data and pairs")
    parser.add_argument("--heads", nargs="+", default=list(SUM_HEADS), choices=SUM_HEADS)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return parser.parse_args(argv)


def train_head(sum_head: str, loader: BatchLoader, args: argparse.Namespace) -> FusionModel:
    """Train the default recipe with ``sum_head``; the sum loss follows the head."""
    torch.manual_seed(args.seed)
    model = FusionModel(FusionModelConfig(head=FusionHeadConfig(sum_head=sum_head)))
    lr, decay = cli.DEFAULT_LR, cli.DEFAULT_WEIGHT_DECAY
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=decay)
    scheduler = cli.default_scheduler(
        optimizer, max_lr=lr, epochs=args.epochs, steps_per_epoch=len(loader)
    )
    loss_fn = FusionLoss(
        sum_weight=cli.DEFAULT_SUM_WEIGHT,
        sum_loss="auto",
        digit_label_smoothing=cli.DEFAULT_DIGIT_LABEL_SMOOTHING,
    )
    fit(model, loader, epochs=args.epochs, optimizer=optimizer, loss_fn=loss_fn,
        scheduler=scheduler, device=resolve_device(args.device))  # fmt: skip
    return model


def score_head(
    model: FusionModel, test: TensorFusionDataset, seen: Subset, unseen: Subset, seed: int
) -> dict[str, float]:
    """Return the accuracies on seen and held-out test pairs, and the side sensitivity."""
    device = next(model.parameters()).device
    row = {}
    for part, data in (("seen", seen), ("unseen", unseen)):
        values = evaluate(model, BatchLoader(data, batch_size=cli.EVAL_BATCH_SIZE), device=device)
        row[f"sum_accuracy_{part}"] = values["sum_accuracy"]
        row[f"digit_accuracy_{part}"] = values["digit_accuracy"]
    whole = BatchLoader(test, batch_size=cli.EVAL_BATCH_SIZE)
    generator = torch.Generator().manual_seed(seed)
    row["side_sensitivity"] = evaluate_side_sensitivity(model, whole, generator=generator)["side"]
    return {name: row[name] for name in COLUMNS}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the checks with command-line arguments ``argv`` and return one row per head."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train = MNISTSum(args.root, train=True, seed=args.seed).as_tensors()
    test = MNISTSum(args.root, train=False, seed=args.seed).as_tensors()
    held_out = held_out_pairs(10, 10, args.fraction, seed=args.seed)
    train_seen, _ = split_by_combinations(train, held_out)
    seen, unseen = split_by_combinations(test, held_out)
    batch_size = cli.DEFAULT_BATCH_SIZE
    loader = BatchLoader(train_seen, batch_size=batch_size, shuffle=True, seed=args.seed)

    rows = {}
    for sum_head in args.heads:
        model = train_head(sum_head, loader, args)
        rows[sum_head] = score_head(model, test, seen, unseen, args.seed)
        print(sum_head, rows[sum_head], flush=True)

    lines = ["| sum head | " + " | ".join(COLUMNS.values()) + " |"]
    lines.append("| --- " * (len(COLUMNS) + 1) + "|")
    for head, row in rows.items():
        lines.append(f"| {head} | " + " | ".join(f"{row[c]:.4f}" for c in COLUMNS) + " |")
    summary = {
        "rows": rows, "held_out": held_out, "epochs": args.epochs, "seed": args.seed,
        "counts": {"train": len(train_seen), "test_seen": len(seen), "test_unseen": len(unseen)},
        "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(),
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shortcuts.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "shortcuts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
