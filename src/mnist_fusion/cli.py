"""The ``mnist-fusion`` command line: prepare-data, train and evaluate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mnist_fusion import __version__, checkpoint
from mnist_fusion._io import atomic_write_bytes
from mnist_fusion.data import BatchLoader, MNISTSum, prepare_mnist
from mnist_fusion.losses import FusionLoss
from mnist_fusion.models import FusionModel, FusionModelConfig
from mnist_fusion.training import TRAINING_STATE_NAME, evaluate, fit, resolve_device

logger = logging.getLogger("mnist_fusion")

METRIC_NAMES = ("digit_accuracy", "sum_accuracy", "sum_r2", "sum_mae", "consistency")

# The default recipe, measured in docs/benchmarks.md: small CNN, AdamW with a one-cycle
# schedule over batched tensor-resident data.
DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 0.01
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_SUM_WEIGHT = 0.05
EVAL_BATCH_SIZE = 1000


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(args.run(args) or 0)
    # FloatingPointError is how fit reports a NaN or infinite loss.
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
        RuntimeError,
        OSError,
        FloatingPointError,
    ) as error:
        print(f"mnist-fusion {args.command}: error: {error}", file=sys.stderr)
        return 1


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-fusion", description="Train and evaluate MNIST-sum fusion models."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare-data", help="put the verified MNIST IDX files in place")
    prepare.add_argument("--root", type=Path, required=True, help="folder to hold MNIST/raw")
    prepare.set_defaults(run=_run_prepare)

    train = commands.add_parser("train", help="train on the training split, test on the test split")
    train.add_argument("--root", type=Path, required=True, help="folder that holds MNIST/raw")
    train.add_argument(
        "--out", type=Path, required=True, help="folder for model.pt and metrics.json"
    )
    train.add_argument(
        "--epochs", type=_positive_int, default=DEFAULT_EPOCHS, help="epochs to train"
    )
    train.add_argument(
        "--seed", type=int, default=0, help="seed of weights, shuffling and side inputs"
    )
    train.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE)
    train.add_argument("--lr", type=float, default=DEFAULT_LR, help="peak one-cycle learning rate")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    train.add_argument(
        "--resume", action="store_true", help="continue from OUT/training_state.pt if present"
    )
    train.set_defaults(run=_run_train)

    evaluate_parser = commands.add_parser(
        "evaluate", help="evaluate a checkpoint on the test split"
    )
    evaluate_parser.add_argument(
        "--root", type=Path, required=True, help="folder that holds MNIST/raw"
    )
    evaluate_parser.add_argument("--checkpoint", type=Path, required=True, help="model.pt to load")
    evaluate_parser.add_argument("--metrics-out", type=Path, help="write the metrics as JSON here")
    evaluate_parser.add_argument(
        "--seed", type=int, help="seed of the test side inputs (default: the one in the checkpoint)"
    )
    evaluate_parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    evaluate_parser.set_defaults(run=_run_evaluate)
    return parser


def _run_prepare(args: argparse.Namespace) -> int:
    raw = prepare_mnist(args.root)
    print(f"MNIST IDX files verified in {raw}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    train_data = MNISTSum(args.root, train=True, seed=args.seed).as_tensors()
    test_data = MNISTSum(args.root, train=False, seed=args.seed).as_tensors()
    train_loader = BatchLoader(train_data, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    test_loader = BatchLoader(test_data, batch_size=EVAL_BATCH_SIZE)

    model = FusionModel(FusionModelConfig()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=DEFAULT_WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * len(train_loader)
    )
    if args.resume:
        _check_resume_schedule(args.out / TRAINING_STATE_NAME, scheduler.total_steps, args)
    logger.info(
        "Training %d parameters on %d images for %d epochs on %s",
        sum(p.numel() for p in model.parameters()), len(train_data), args.epochs, device,
    )  # fmt: skip

    history = fit(
        model,
        train_loader,
        epochs=args.epochs,
        optimizer=optimizer,
        loss_fn=FusionLoss(sum_weight=DEFAULT_SUM_WEIGHT),
        scheduler=scheduler,
        eval_loader=test_loader,
        device=device,
        checkpoint_dir=args.out,
        resume=args.resume,
    )

    checkpoint.save(model, args.out / "model.pt", metadata={"seed": args.seed})
    metrics = {name: history[-1][f"test_{name}"] for name in METRIC_NAMES}
    summary = {
        **metrics,
        "epochs": args.epochs,
        "seed": args.seed,
        "train_seconds": sum(record["train_seconds"] for record in history),
        "test_count": int(history[-1]["test_count"]),
        "device": str(device),
        "torch_version": torch.__version__,
    }
    _write_json(args.out / "metrics.json", summary)
    _write_json(args.out / "history.json", {"epochs": history})
    print(format_table(metrics, title=f"test set, {summary['test_count']} images"))
    print(f"train_seconds: {summary['train_seconds']:.1f}  wrote {args.out / 'model.pt'}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model = checkpoint.load(args.checkpoint)
    seed = (
        args.seed
        if args.seed is not None
        else checkpoint.load_metadata(args.checkpoint).get("seed")
    )
    if seed is None:
        raise ValueError(
            f"{args.checkpoint} stores no seed, so the test side inputs are unknown; pass --seed."
        )

    test_data = MNISTSum(args.root, train=False, seed=seed).as_tensors()
    started = time.perf_counter()
    values = evaluate(model, BatchLoader(test_data, batch_size=EVAL_BATCH_SIZE), device=device)
    metrics = {name: values[name] for name in METRIC_NAMES}
    logger.info(
        "Evaluated %d images in %.1f s", int(values["count"]), time.perf_counter() - started
    )

    if args.metrics_out is not None:
        _write_json(args.metrics_out, {**metrics, "seed": seed, "test_count": int(values["count"])})
    print(format_table(metrics, title=f"test set, {int(values['count'])} images"))
    return 0


def _check_resume_schedule(state_path: Path, total_steps: int, args: argparse.Namespace) -> None:
    # OneCycleLR fixes its length when it is built, and a resumed scheduler takes the
    # saved length, so another --epochs or --batch-size would fail mid-run with
    # "Tried to step N times".
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        saved = state["scheduler"]["total_steps"]
    except Exception:
        return  # No usable state: fit starts afresh or reports the damaged file.
    if saved != total_steps:
        raise ValueError(
            f"{state_path} continues a run of {saved} one-cycle steps, but --epochs "
            f"{args.epochs} with --batch-size {args.batch_size} gives {total_steps}; resume "
            "with the first run's --epochs and --batch-size, or train into a new --out folder."
        )


def format_table(metrics: Mapping[str, float], *, title: str) -> str:
    """Format metrics as a two-column text table."""
    width = max(len(name) for name in metrics)
    lines = [title, "-" * (width + 10)]
    lines += [f"{name:<{width}}  {value:>8.4f}" for name, value in metrics.items()]
    return "\n".join(lines)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
