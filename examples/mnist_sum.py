"""Train and evaluate the MNIST-sum model with the public mnist_fusion API.

The model receives an MNIST image and a random digit 0-9, and predicts the image's digit and
the sum of both. The script prepares the verified MNIST files, trains the default model
on the 60,000 training images, evaluates it on the 10,000 test images after each epoch
and at the end, and writes OUT/model.pt::

    python examples/mnist_sum.py --root data --out runs/example --epochs 5
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from mnist_fusion import checkpoint
from mnist_fusion.data import BatchLoader, MNISTSum, prepare_mnist
from mnist_fusion.losses import FusionLoss
from mnist_fusion.models import FusionModel
from mnist_fusion.schedule import RestartingOneCycleLR, restart_cycle_steps
from mnist_fusion.training import evaluate, fit, resolve_device


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data", help="folder that contains MNIST/raw")
    parser.add_argument("--out", default="runs/example", help="folder for model.pt")
    parser.add_argument("--epochs", type=int, default=5, help="number of training epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, shuffle, side inputs")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--no-prepare",
        action="store_true",
        help="skip prepare_mnist because ROOT already contains the MNIST files",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the experiment with command-line arguments ``argv`` and return the test metrics."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    if not args.no_prepare:
        prepare_mnist(args.root)

    train = MNISTSum(args.root, train=True, seed=args.seed).as_tensors()
    test = MNISTSum(args.root, train=False, seed=args.seed).as_tensors()
    train_loader = BatchLoader(train, batch_size=128, shuffle=True, seed=args.seed)
    test_loader = BatchLoader(test, batch_size=1000)

    model = FusionModel().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=5e-4)
    cycles = restart_cycle_steps(epochs=args.epochs, steps_per_epoch=len(train_loader))
    scheduler = RestartingOneCycleLR(optimizer, max_lr=0.02, cycle_steps=cycles)
    fit(
        model,
        train_loader,
        epochs=args.epochs,
        optimizer=optimizer,
        loss_fn=FusionLoss(sum_weight=0.01, digit_label_smoothing=0.1),
        scheduler=scheduler,
        eval_loader=test_loader,
        device=device,
    )

    metrics = evaluate(model, test_loader, device=device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save(model, out / "model.pt", metadata={"seed": args.seed})
    for name, value in metrics.items():
        print(f"{name:<15} {value:.4f}")
    return metrics


if __name__ == "__main__":
    main()
