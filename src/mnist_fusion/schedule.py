"""A one-cycle learning-rate schedule that restarts: a usable model early, a better one late."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["RestartingOneCycleLR", "restart_cycle_steps"]


class RestartingOneCycleLR(torch.optim.lr_scheduler.LambdaLR):
    """One-cycle schedules run back to back, stepped once per batch.

    Each cycle follows ``torch.optim.lr_scheduler.OneCycleLR`` with cosine annealing:
    the learning rate rises from ``max_lr / div_factor`` to ``max_lr`` over the first
    ``pct_start`` of the cycle's steps, then falls to
    ``max_lr / (div_factor * final_div_factor)`` at its end. At the end of a cycle the
    weights have settled at a low learning rate, so a short first cycle gives a usable
    model early, and the later cycles train it further. Unlike ``OneCycleLR``, a step
    past the last cycle keeps the final learning rate instead of raising.

    Args:
        optimizer: The optimizer; the ``lr`` of every parameter group is set to
            ``max_lr`` (momentum is left alone).
        max_lr: Peak learning rate of every cycle.
        cycle_steps: Steps of each cycle, in order.
        pct_start: Fraction of each cycle spent raising the learning rate.
        div_factor: ``max_lr`` over the learning rate at the start of each cycle.
        final_div_factor: Start learning rate over the one at the end of each cycle.

    Attributes:
        total_steps: The sum of ``cycle_steps``.
        cycle_steps: The steps of each cycle, as a tuple.

    Raises:
        ValueError: For no cycles, a cycle of fewer than 2 steps, a ``pct_start``
            outside ``(0, 1)``, or a ``max_lr`` or divisor that is not positive.

    Examples:
        >>> model = torch.nn.Linear(2, 1)
        >>> optimizer = torch.optim.AdamW(model.parameters())
        >>> scheduler = RestartingOneCycleLR(optimizer, max_lr=0.01, cycle_steps=(10, 20))
        >>> rates = []
        >>> for _ in range(30):
        ...     optimizer.step()
        ...     scheduler.step()
        ...     rates.append(scheduler.get_last_lr()[0])
        >>> rates[8] < 1e-5 < rates[9], max(rates) <= 0.01
        (True, True)
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        max_lr: float,
        cycle_steps: Sequence[int],
        pct_start: float = 0.2,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ) -> None:
        _check_schedule(max_lr, cycle_steps, pct_start, div_factor, final_div_factor)
        self.cycle_steps = tuple(int(steps) for steps in cycle_steps)
        self.total_steps = sum(self.cycle_steps)
        for group in optimizer.param_groups:
            group["lr"] = max_lr
        factor = _CycleFactor(self.cycle_steps, pct_start, div_factor, final_div_factor)
        super().__init__(optimizer, factor)


def restart_cycle_steps(
    *, epochs: int, steps_per_epoch: int, first_cycle_epochs: float = 1.0
) -> tuple[int, ...]:
    """Split ``epochs`` of training into a first cycle and, if it fits, a longer second one.

    The first cycle lasts ``first_cycle_epochs`` (rounded to whole steps, at least 2). A
    second cycle over the remaining steps follows only when it is at least as long as
    the first, so a 1-epoch run with the default stays one plain cycle. The default,
    1 epoch, is the one ``mnist-fusion train`` uses.

    Args:
        epochs: Epochs of the whole run.
        steps_per_epoch: Optimizer steps per epoch.
        first_cycle_epochs: Length of the first cycle in epochs.

    Returns:
        The steps of each cycle, which add up to ``epochs * steps_per_epoch``.

    Raises:
        ValueError: For a count below 1 or a ``first_cycle_epochs`` that is not positive.

    Examples:
        >>> restart_cycle_steps(epochs=5, steps_per_epoch=100, first_cycle_epochs=1.5)
        (150, 350)
        >>> restart_cycle_steps(epochs=2, steps_per_epoch=100, first_cycle_epochs=1.5)
        (200,)
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"Expected `epochs` and `steps_per_epoch` >= 1, but got {epochs!r} and "
            f"{steps_per_epoch!r}."
        )
    if not first_cycle_epochs > 0:
        raise ValueError(
            f"Expected a positive `first_cycle_epochs`, but got {first_cycle_epochs!r}."
        )

    total = epochs * steps_per_epoch
    first = max(round(first_cycle_epochs * steps_per_epoch), 2)
    if total - first < first:
        return (total,)
    return (first, total - first)


class _CycleFactor:
    """The learning rate at a step, as a fraction of ``max_lr``.

    A class rather than a closure, so that ``LambdaLR.state_dict`` saves its fields.
    """

    def __init__(
        self,
        cycle_steps: tuple[int, ...],
        pct_start: float,
        div_factor: float,
        final_div_factor: float,
    ) -> None:
        self.cycle_steps = cycle_steps
        self.pct_start = pct_start
        self.start = 1 / div_factor
        self.end = 1 / (div_factor * final_div_factor)

    def __call__(self, step: int) -> float:
        for steps in self.cycle_steps:
            if step < steps:
                return self._within_cycle(step, steps)
            step -= steps
        return self.end

    def _within_cycle(self, step: int, steps: int) -> float:
        # OneCycleLR's phase boundaries: the peak is at step pct_start * steps - 1 and
        # the last step of the cycle is steps - 1.
        peak = max(float(self.pct_start * steps) - 1, 1.0)
        if step <= peak:
            return _cosine(self.start, 1.0, step / peak)
        return _cosine(1.0, self.end, (step - peak) / max(steps - 1 - peak, 1.0))


def _cosine(start: float, end: float, fraction: float) -> float:
    """Return the value ``fraction`` of the way from ``start`` to ``end`` on a half cosine."""
    return end + (start - end) * (1 + math.cos(math.pi * min(fraction, 1.0))) / 2


def _check_schedule(
    max_lr: float,
    cycle_steps: Sequence[int],
    pct_start: float,
    div_factor: float,
    final_div_factor: float,
) -> None:
    if not cycle_steps:
        raise ValueError("Expected at least one cycle in `cycle_steps`, but got none.")
    short = [steps for steps in cycle_steps if steps < 2]
    if short:
        raise ValueError(
            f"Every cycle needs at least 2 steps, but `cycle_steps`={tuple(cycle_steps)!r} "
            f"contains {short[0]!r}; merge short cycles into their neighbours."
        )
    if not 0.0 < pct_start < 1.0:
        raise ValueError(f"Expected `pct_start` in (0, 1), but got {pct_start!r}.")
    for name, value in (
        ("max_lr", max_lr),
        ("div_factor", div_factor),
        ("final_div_factor", final_div_factor),
    ):
        if not value > 0:
            raise ValueError(f"Expected a positive `{name}`, but got {value!r}.")
