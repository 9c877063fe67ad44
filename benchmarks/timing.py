"""Clocks that account for asynchronous CUDA work."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a clock read afterwards includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """A clock that runs only between :meth:`resume` and :meth:`pause`.

    Both calls synchronise the device first, so the time of each running interval
    covers the device work queued in it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.total = 0.0
        self._since: float | None = None

    def resume(self) -> None:
        synchronize(self.device)
        self._since = time.perf_counter()

    def pause(self) -> None:
        synchronize(self.device)
        if self._since is not None:
            self.total += time.perf_counter() - self._since
            self._since = None

    def peek(self) -> float:
        """Return the time so far without synchronising; CUDA work still queued is missed."""
        running = 0.0 if self._since is None else time.perf_counter() - self._since
        return self.total + running


def median_seconds(
    run: Callable[[], object], *, device: torch.device, repeats: int, warmup: int
) -> tuple[float, list[float]]:
    """Call ``run`` ``warmup`` times untimed, then ``repeats`` times; return the median and all."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times), times
