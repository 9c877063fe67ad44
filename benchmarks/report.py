"""Targets from the measured values, the markdown table, and atomic writes of both files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from datapath import BARE, BATCHED, PER_ITEM

GIB = 2**30
PASS, FAIL, UNMEASURED = "PASS", "FAIL", "NOT MEASURED"


def _target(name: str, value: float | None, threshold: str, ok: bool | None) -> dict[str, Any]:
    if value is None or ok is None:
        status = UNMEASURED
    else:
        status = PASS if ok else FAIL
    return {"target": name, "measured": value, "threshold": threshold, "status": status}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Compute each target's ratio or value and its status from ``results`` alone.

    A value that this run did not measure (a section skipped, a recipe that never
    reached the accuracy) gives the status NOT MEASURED rather than a guess.
    """
    runs = results.get("time_to_accuracy", {})
    default, examples = runs.get("default", {}), runs.get("pytorch_examples", {})
    ratio = None
    if default.get("seconds_to_target") and examples.get("seconds_to_target"):
        ratio = default["seconds_to_target"] / examples["seconds_to_target"]

    epochs = [e for e in default.get("epoch_end_accuracy", []) if e["epoch"] <= 5]
    best_epoch = max((e["digit_accuracy"] for e in epochs), default=None)

    rates = results.get("data_path", {}).get("images_per_second", {})
    overhead = speedup = None
    if rates:
        overhead = rates[BARE] / rates[PER_ITEM] - 1
        speedup = rates[BATCHED] / rates[PER_ITEM]

    memory = results.get("memory", {})
    # A run on a subset of the images does not measure the memory of a real run.
    peak = None if memory.get("subset") else memory.get("peak_rss_bytes")
    return [
        _target("default recipe digit accuracy within 5 epochs", best_epoch, ">= 0.995",
                None if best_epoch is None else best_epoch >= 0.995),
        _target("time to 99 %: default / PyTorch examples", ratio, "<= 1/20 = 0.05",
                None if ratio is None else ratio <= 1 / 20),
        _target("per-item wrapper overhead over bare torchvision", overhead, "<= 0.10",
                None if overhead is None else overhead <= 0.10),
        _target("batched path / per-item DataLoader", speedup, ">= 50",
                None if speedup is None else speedup >= 50),
        _target("peak RSS of `mnist-fusion train --epochs 1` (GiB)",
                None if peak is None else peak / GIB, "< 2",
                None if peak is None else peak < 2 * GIB),
    ]  # fmt: skip


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(results: dict[str, Any], out: Path, name: str) -> tuple[Path, Path]:
    """Write ``OUT/NAME.json`` and ``OUT/NAME.md`` from ``results``; return both paths."""
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    write_atomic(json_path, json.dumps(results, indent=2) + "\n")
    write_atomic(md_path, markdown(results))
    return json_path, md_path


def markdown(results: dict[str, Any]) -> str:
    """Render ``results`` as markdown tables."""
    sections = [
        _header(results),
        _accuracy_table(results.get("time_to_accuracy", {})),
        _epoch_table(results.get("time_to_accuracy", {}).get("default")),
        _speed_table(results.get("speed", {})),
        _data_table(results.get("data_path")),
        _memory_table(results.get("memory")),
        _targets_table(results.get("targets", [])),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _rows(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _header(results: dict[str, Any]) -> str:
    machine = results["machine"]
    state = "complete" if results.get("complete") else "INCOMPLETE (still running or failed)"
    rows = [[key, f"`{value}`" if key == "command" else value] for key, value in machine.items()]
    rows.append(["options", ", ".join(f"{k}={v}" for k, v in results["options"].items())])
    rows.append(["run", f"{state}, {_num(results.get('wall_seconds'))} s wall"])
    return "# mnist_fusion benchmark\n\n" + _rows(["field", "value"], rows)


def _accuracy_table(runs: dict[str, Any]) -> str:
    if not runs:
        return ""
    target = next(iter(runs.values()))["target"]
    images = next(iter(runs.values()))["test_images"]
    rows = []
    for run in runs.values():
        reached = "yes" if run["reached"] else "not reached"
        rows.append([
            run["title"], f"{run['parameters']:,}", _num(run["budget_seconds"], 0), reached,
            _num(run["seconds_to_target"]), run["steps_to_target"] or "-",
            _pct(run["best_digit_accuracy"]), _pct(run["best_sum_accuracy"]),
            _num(run["train_seconds"]), _num(run["epochs_trained"], 2), run["stopped_by"],
        ])  # fmt: skip
    header = [
        "recipe", "parameters", "budget s", "target", "train s to target", "steps",
        "best digit", "best sum", "train s spent", "epochs", "stopped by",
    ]  # fmt: skip
    title = f"## Time to {100 * target:.1f} % digit and sum accuracy on {images:,} test images"
    note = (
        "Training clock only (evaluations paused out of it). Best accuracies are over the "
        "evaluations that covered every test image."
    )
    return f"{title}\n\n{note}\n\n" + _rows(header, rows)


def _epoch_table(run: dict[str, Any] | None) -> str:
    if not run:
        return ""
    rows = [
        [int(e["epoch"]), _pct(e["digit_accuracy"]), _pct(e["sum_accuracy"])]
        for e in run["epoch_end_accuracy"]
    ]
    return "## Default recipe after each epoch\n\n" + _rows(["epoch", "digit", "sum"], rows)


def _speed_table(speed: dict[str, Any]) -> str:
    if not speed:
        return ""
    rows = []
    for name, entry in speed.items():
        train = entry["training"]
        latency = {item["batch_size"]: item["median_seconds"] for item in entry["latency"]}
        rows.append(
            [name, f"{entry['parameters']:,}", train["batch_size"],
             _num(train["images_per_second"])]
            + [_num(1000 * latency[size], 2) for size in sorted(latency)]
        )  # fmt: skip
    sizes = sorted(item["batch_size"] for item in next(iter(speed.values()))["latency"])
    header = ["model", "parameters", "train batch", "train images/s"]
    header += [f"latency ms, batch {size:,}" for size in sizes]
    return "## Training throughput and inference latency\n\n" + _rows(header, rows)


def _data_table(data: dict[str, Any] | None) -> str:
    if not data:
        return ""
    rows = [[name, _num(rate, 0)] for name, rate in data["images_per_second"].items()]
    note = (
        f"Batch {data['batch_size']}, best of {data['repeats']} interleaved passes of "
        f"{data['images_per_measurement']:,} training images each, "
        f"{data['torch_threads']} torch intra-op thread(s)."
    )
    return f"## Data path\n\n{note}\n\n" + _rows(["path", "images/s"], rows)


def _memory_table(memory: dict[str, Any] | None) -> str:
    if not memory:
        return ""
    rows = [
        ["command", f"`{memory['command']}`"],
        ["method", memory["method"]],
        ["training data", _subset(memory.get("subset"))],
        ["peak RSS", f"{memory['peak_rss_bytes'] / GIB:.3f} GiB"],
        ["wall s", _num(memory["wall_seconds"])],
    ]
    return "## Peak memory of a training process\n\n" + _rows(["field", "value"], rows)


def _subset(subset: list[int] | None) -> str:
    if not subset:
        return "full MNIST splits"
    return f"first {subset[0]:,} training and {subset[1]:,} test images (harness check only)"


def _targets_table(rows: list[dict[str, Any]]) -> str:
    cells = [[r["target"], _num(r["measured"], 4), r["threshold"], r["status"]] for r in rows]
    return "## Targets\n\n" + _rows(["target", "measured", "threshold", "status"], cells)
