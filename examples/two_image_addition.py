"""Learn MNIST digits from the sums of image pairs alone, with the exact sum head.

Each training sample is two MNIST images and the sum of their digits; the digit labels
are never used for training. The model runs one encoder on both images and convolves
the two digit distributions into the exact distribution of the sum, so the sum's
cross-entropy trains the digit classifier. The script reports the sum accuracy on pairs
of test images and the digit accuracy of the classifier on the test images::

    python examples/two_image_addition.py --root data --epochs 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from mnist_fusion import checkpoint
from mnist_fusion.data import MNISTSum, TensorFusionDataset, TwoImageAddition
from mnist_fusion.models import (
    ConvEncoderConfig,
    FusionHeadConfig,
    FusionModel,
    FusionModelConfig,
    model_complexity,
    predicted_digit,
    predicted_sum,
)
from mnist_fusion.training import resolve_device

Batch = dict[str, torch.Tensor]
EVAL_BATCH_SIZE = 1000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data", help="folder that contains MNIST/raw")
    parser.add_argument("--out", help="folder for model.pt (default: do not save)")
    parser.add_argument("--epochs", type=int, default=5, help="number of training epochs")
    parser.add_argument("--batch-size", type=int, default=128, help="pairs per batch")
    parser.add_argument("--lr", type=float, default=0.01, help="peak one-cycle learning rate")
    parser.add_argument("--encoder", default="wide", help="encoder preset: small, wide, reference")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, pairing, shuffle")
    parser.add_argument("--limit", type=int, help="train on the first LIMIT pairs only")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return parser.parse_args(argv)


def pair_batches(
    data: TensorFusionDataset, partners: torch.Tensor, order: torch.Tensor, batch_size: int
) -> Iterator[Batch]:
    """Yield batches of pairs ``(order[i], partners[order[i]])``, built with tensor indexing."""
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        first, second = data.batch(indices), data.batch(partners[indices])
        yield {
            "image": first["image"],
            "second_image": second["image"],
            "sum": first["digit"] + second["digit"],
            "digit": first["digit"],
            "second_digit": second["digit"],
        }


def train_epoch(
    model: FusionModel,
    data: TensorFusionDataset,
    partners: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    args: argparse.Namespace,
    device: torch.device,
) -> float:
    """Train one epoch on the sums alone; return the mean loss."""
    model.train()
    order = torch.randperm(len(partners), generator=generator)
    total, count = 0.0, 0
    for batch in pair_batches(data, partners, order, args.batch_size):
        image, second = batch["image"].to(device), batch["second_image"].to(device)
        output = model(image, second_image=second)
        # The exact head returns log-probabilities, so this is the sum's log-likelihood.
        loss = F.cross_entropy(output.sum_logits, batch["sum"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(image)
        count += len(image)
    return total / count


@torch.no_grad()
def evaluate_pairs(
    model: FusionModel, data: TensorFusionDataset, partners: torch.Tensor, device: torch.device
) -> dict[str, float]:
    """Return the sum accuracy on the pairs and the digit accuracy on both images."""
    model.eval()
    sum_correct = digit_correct = count = 0
    for batch in pair_batches(data, partners, torch.arange(len(partners)), EVAL_BATCH_SIZE):
        batch = {name: value.to(device) for name, value in batch.items()}
        output = model(batch["image"], second_image=batch["second_image"])
        first_digit = predicted_digit(output)
        second_digit = output.second_digit_logits.argmax(dim=-1)
        sum_correct += int((predicted_sum(output, model.config.max_sum) == batch["sum"]).sum())
        digit_correct += int((first_digit == batch["digit"]).sum())
        digit_correct += int((second_digit == batch["second_digit"]).sum())
        count += len(first_digit)
    return {"sum_accuracy": sum_correct / count, "digit_accuracy": digit_correct / (2 * count)}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the experiment with command-line arguments ``argv`` and return the test metrics."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)

    train = MNISTSum(args.root, train=True, seed=args.seed).as_tensors()
    test = MNISTSum(args.root, train=False, seed=args.seed).as_tensors()
    train_partners = TwoImageAddition(train, train, seed=args.seed).partners[: args.limit]
    test_partners = TwoImageAddition(test, test, seed=args.seed).partners

    config = FusionModelConfig(
        encoder=ConvEncoderConfig.preset(args.encoder), head=FusionHeadConfig(sum_head="exact")
    )
    model = FusionModel(config).to(device)
    print("model:", model_complexity(model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * -(-len(train_partners) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(args.seed)

    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        loss = train_epoch(
            model, train, train_partners, optimizer, scheduler, generator, args, device
        )
        seconds = time.perf_counter() - started
        print(f"epoch {epoch}/{args.epochs} sum_loss={loss:.4f} elapsed={seconds:.0f}s", flush=True)

    train_seconds = time.perf_counter() - started
    metrics = evaluate_pairs(model, test, test_partners, device)
    metrics["train_seconds"] = train_seconds
    metrics["test_pairs"] = float(len(test_partners))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        checkpoint.save(model, Path(args.out) / "model.pt", metadata={"seed": args.seed})
    for name, value in metrics.items():
        print(f"{name:<15} {value:.4f}")
    return metrics


if __name__ == "__main__":
    main()
