"""Run the whole mnist_fusion benchmark in one process and write results JSON and markdown.

Every figure in one file comes from one run on one machine, so ratios between them
hold even when other work slows the machine down. From the repository root:

    python benchmarks/run.py --root data --out benchmarks/results [--quick]

The results are rewritten after each section, marked incomplete until the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import accuracy
import datapath
import memory
import report
import speed
import torch
from accel import Accelerator, make_accelerator
from recipes import DEFAULT, RECIPES, Recipe, parameter_count

import mnist_fusion
from mnist_fusion.data import MNISTSum, TensorFusionDataset
from mnist_fusion.training import resolve_device

SECTIONS = ("data", "speed", "memory", "accuracy")
TARGET_ACCURACY = 0.99


@dataclass(frozen=True)
class Settings:
    """Sizes of the measurements: full ones, or tiny ones that only check the harness."""

    evals_per_epoch: int = 8
    test_images: int | None = None
    throughput_warmup: int = 5
    throughput_steps: int = 40
    latency_warmup: int = 2
    latency_repeats: int = 7
    latency_batches: tuple[int, ...] = (1, 1000)
    data_images: int = 20_000
    data_repeats: int = 3
    budget_seconds: float | None = None
    recipes: tuple[str, ...] = tuple(recipe.name for recipe in RECIPES)
    memory_subset: tuple[int, int] | None = None

    def chosen_recipes(self) -> list[Recipe]:
        return [recipe for recipe in RECIPES if recipe.name in self.recipes]


QUICK = Settings(
    evals_per_epoch=40, test_images=500, throughput_warmup=1, throughput_steps=3,
    latency_warmup=0, latency_repeats=2, latency_batches=(1, 100), data_images=3000,
    data_repeats=1, budget_seconds=3.0, memory_subset=(2000, 500),
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder that contains MNIST/raw")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="results", help="write OUT/NAME.json and OUT/NAME.md")

    parser.add_argument(
        "--budget-seconds",
        type=float,
        help="training-clock cap of every recipe (default: each own)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the harness")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--recipes",
        nargs="+",
        choices=[recipe.name for recipe in RECIPES],
        help="recipes of the speed and accuracy sections (default: all)",
    )

    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: on CUDA)"
    )
    parser.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, help="(default: on CUDA)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="wrap each model in torch.compile; compiling counts as training time",
    )

    parser.add_argument("--memory-timeout", type=float, default=900.0, help="seconds")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads of this process (default: torch's; 1 suits a busy machine)",
    )
    parser.add_argument(
        "--data-threads",
        type=int,
        default=1,
        help="torch intra-op threads while the data paths are measured (default: 1)",
    )
    return parser.parse_args(argv)


def machine(accel: Accelerator) -> dict[str, Any]:
    """Describe the machine, the software and the exact command of this run."""
    info = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_worktree": "modified" if _git("status", "--porcelain") else "clean",
        "source_sha256": _source_digest(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": _load_average(),
    }
    if accel.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(accel.device)
        info["cuda"] = torch.version.cuda
    return {**info, **accel.describe()}


def _load_average() -> str:
    """Return the 1, 5 and 15 minute load averages, which show how busy the machine was."""
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def _source_digest() -> str:
    """Return the first 16 hex digits of a SHA-256 over the imported mnist_fusion sources.

    Other edits may be in the worktree but not in git yet, so the commit alone is not enough.
    """
    package = Path(mnist_fusion.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def load_splits(root: Path, test_images: int | None) -> tuple[TensorFusionDataset, ...]:
    """Return the training split and the test split (its first ``test_images``) as tensors."""
    train = MNISTSum(root, train=True, seed=0).as_tensors()
    test = MNISTSum(root, train=False, seed=0).as_tensors()
    if test_images is not None:
        test = TensorFusionDataset(
            test.images[:test_images], test.labels[:test_images], test.side[:test_images]
        )
    return train, test


def run_speed(train, test, accel: Accelerator, settings: Settings) -> dict[str, Any]:
    results = {}
    for recipe in settings.chosen_recipes():
        log(f"speed: {recipe.name}")
        training = speed.training_throughput(
            recipe, train, accel,
            warmup=settings.throughput_warmup, steps=settings.throughput_steps,
        )  # fmt: skip
        latency = [
            speed.inference_latency(
                recipe, test, accel, batch_size=min(size, len(test)),
                warmup=settings.latency_warmup, repeats=settings.latency_repeats,
            )
            for size in settings.latency_batches
        ]  # fmt: skip
        count = parameter_count(recipe.build_model())
        results[recipe.name] = {"parameters": count, "training": training, "latency": latency}
    return results


def run_accuracy(train, test, accel: Accelerator, settings: Settings) -> dict[str, Any]:
    results = {}
    for recipe in settings.chosen_recipes():
        budget = settings.budget_seconds or recipe.budget_seconds
        log(f"accuracy: {recipe.name}, budget {budget:.0f} s")
        run = accuracy.run_to_target(
            recipe, train, test, accel, target=TARGET_ACCURACY, budget_seconds=budget,
            evals_per_epoch=settings.evals_per_epoch,
            # The default recipe runs all its epochs, for the accuracy after each one.
            stop_at_target=recipe is not DEFAULT,
        )  # fmt: skip
        results[recipe.name] = run.to_dict()
        log(f"  reached={run.reached} at {run.seconds_to_target} s, {run.stopped_by}")
    return results


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else Settings()
    if args.budget_seconds is not None:
        settings = replace(settings, budget_seconds=args.budget_seconds)
    if args.recipes is not None:
        settings = replace(settings, recipes=tuple(args.recipes))
    device = resolve_device(args.device)
    accel = make_accelerator(
        device, bf16=args.bf16, channels_last=args.channels_last, compile=args.compile
    )
    started = time.perf_counter()
    results: dict[str, Any] = {
        "complete": False,
        "machine": machine(accel),
        "options": {"quick": args.quick, "sections": " ".join(args.sections), **asdict(settings)},
    }

    def save() -> tuple[Path, Path]:
        results["wall_seconds"] = time.perf_counter() - started
        results["machine"]["load_average_now"] = _load_average()
        results["targets"] = report.targets(results)
        return report.write_results(results, args.out, args.name)

    train, test = load_splits(args.root, settings.test_images)
    steps = [
        ("data", "data_path", lambda: datapath.measure(
            args.root, batch_size=DEFAULT.batch_size,
            limit=settings.data_images, repeats=settings.data_repeats,
            threads=args.data_threads,
        )),
        ("speed", "speed", lambda: run_speed(train, test, accel, settings)),
        ("memory", "memory", lambda: memory.peak_train_memory(
            args.root, epochs=1, timeout=args.memory_timeout, subset=settings.memory_subset
        )),
        ("accuracy", "time_to_accuracy", lambda: run_accuracy(train, test, accel, settings)),
    ]  # fmt: skip
    for section, key, measure in steps:
        if section in args.sections:
            log(f"section {section}")
            results[key] = measure()
            save()

    results["complete"] = True
    json_path, md_path = save()
    print(md_path.read_text())
    log(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
