"""Time one training step of the default FusionModel with other encoder options.

Each argument is a JSON object of ``ConvEncoderConfig`` fields that replace those of the
default encoder, ``ConvEncoderConfig.small()``, plus an optional ``"batch_size"``; ``{}``
times the default model itself. The timed step is a forward and backward pass with the default loss
and an AdamW step, on random images. From the repository root:

    python benchmarks/step_time.py '{}' '{"channels_last": false}' '{"channels": [16, 32, 64]}'

It prints the lower-quartile step time of each, which a busy machine disturbs least.
The figures of docs/benchmarks.md that compare encoder shapes and layouts come from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from mnist_fusion.cli import default_loss
from mnist_fusion.models import ConvEncoderConfig, FusionModel, FusionModelConfig, model_complexity


def step_seconds(options: dict[str, object], *, steps: int, warmup: int) -> dict[str, object]:
    """Return the lower-quartile step time, the parameters and MACs of one configuration."""
    options = dict(options)
    batch_size = int(options.pop("batch_size", 128))  # type: ignore[call-overload]
    torch.manual_seed(0)
    encoder = dataclasses.replace(ConvEncoderConfig.small(), **options)  # type: ignore[arg-type]
    model = FusionModel(FusionModelConfig(encoder=encoder))
    complexity = model_complexity(model)
    images = torch.randn(batch_size, 1, 28, 28)
    side = torch.randint(0, 10, (batch_size,))
    digit = torch.randint(0, 10, (batch_size,))
    batch = {"image": images, "side": side, "digit": digit, "sum": digit + side}
    loss_fn = default_loss()
    optimizer = torch.optim.AdamW(model.parameters())

    def step() -> None:
        loss = loss_fn(model(images, side), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)

    quartile = sorted(times)[len(times) // 4]
    return {
        "options": options,
        "batch_size": batch_size,
        "parameters": complexity.parameters,
        "macs_per_image": complexity.macs_per_image,
        "ms_per_step": 1000 * quartile,
        "images_per_second": batch_size / quartile,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="JSON objects of ConvEncoderConfig fields")
    parser.add_argument("--steps", type=int, default=25, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    for text in args.configs:
        result = step_seconds(json.loads(text), steps=args.steps, warmup=args.warmup)
        print(
            f"{json.dumps(result['options']):70s} batch {result['batch_size']:4d}  "
            f"{result['parameters']:7,d} params  {result['macs_per_image'] / 1e6:5.2f} M MACs  "
            f"{result['ms_per_step']:6.1f} ms/step  {result['images_per_second']:7,.0f} images/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
