"""Time to a target test accuracy: train a recipe, evaluating every fraction of an epoch.

Only training steps count on the clock: fetching the batch, forward, backward, optimizer
and scheduler steps. The clock is paused during evaluations. With ``--compile`` the
compilation in the first steps counts as training time too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch
from accel import Accelerator
from recipes import Recipe, parameter_count
from timing import Stopwatch

from mnist_fusion.data import BatchLoader, TensorFusionDataset
from mnist_fusion.models import predicted_digit, predicted_sum

EVAL_BATCH_SIZE = 1000


@dataclass
class Evaluation:
    """One evaluation on the test images.

    ``complete`` is False when the evaluation stopped early, because more wrong
    predictions than the target allows had already been counted. Its accuracies then
    cover the first ``count`` test images only.
    """

    step: int
    epoch: float
    train_seconds: float
    count: int
    digit_accuracy: float
    sum_accuracy: float
    complete: bool


@dataclass
class Run:
    """Outcome of one recipe's run to the target."""

    recipe: str
    title: str
    parameters: int
    batch_size: int
    budget_seconds: float
    target: float
    test_images: int
    reached: bool = False
    seconds_to_target: float | None = None
    steps_to_target: int | None = None
    train_seconds: float = 0.0
    steps: int = 0
    epochs_trained: float = 0.0
    stopped_by: str = ""
    evaluations: list[Evaluation] = field(default_factory=list)

    def complete_evaluations(self) -> list[Evaluation]:
        return [evaluation for evaluation in self.evaluations if evaluation.complete]

    def best(self, name: str) -> float | None:
        """Best value of accuracy ``name`` over the complete evaluations, or None."""
        values = [getattr(evaluation, name) for evaluation in self.complete_evaluations()]
        return max(values) if values else None

    def epoch_end_accuracy(self) -> list[dict[str, float]]:
        """Return the accuracies of the complete evaluations at an epoch boundary."""
        return [
            {"epoch": e.epoch, "digit_accuracy": e.digit_accuracy, "sum_accuracy": e.sum_accuracy}
            for e in self.complete_evaluations()
            if e.epoch.is_integer() and e.epoch > 0
        ]

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["best_digit_accuracy"] = self.best("digit_accuracy")
        data["best_sum_accuracy"] = self.best("sum_accuracy")
        data["epoch_end_accuracy"] = self.epoch_end_accuracy()
        return data


def allowed_errors(count: int, target: float) -> int:
    """Return the largest number of errors among ``count`` that still meets ``target``."""
    # The small slack absorbs float error: 10000 * (1 - 0.99) is 100.00000000000009.
    return math.floor(count * (1 - target) + 1e-6)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    test_data: TensorFusionDataset,
    accel: Accelerator,
    *,
    max_sum: int,
    give_up_above: int | None,
) -> tuple[int, int, int]:
    """Evaluate in float32; return the images seen and the right digits and sums among them.

    Digits and sums are predicted as ``FusionModel.predict`` does, and so as the
    library's ``FusionMetrics`` counts them.

    Stops early once the digit or sum errors exceed ``give_up_above``, since the target
    is then out of reach for this evaluation. Autocast stays off: bf16 rounding of the
    regression sum could move it across a .5 boundary and change the rounded sum.
    """
    count = digit_correct = sum_correct = 0
    was_training = model.training
    model.eval()
    try:
        for batch in BatchLoader(test_data, batch_size=EVAL_BATCH_SIZE):
            batch = accel.batch(batch)
            output = model(batch["image"], batch["side"])
            count += len(batch["digit"])
            digit_correct += int((predicted_digit(output) == batch["digit"]).sum())
            sum_correct += int((predicted_sum(output, max_sum) == batch["sum"]).sum())
            if (
                give_up_above is not None
                and count - min(digit_correct, sum_correct) > give_up_above
            ):
                break
    finally:
        model.train(was_training)
    return count, digit_correct, sum_correct


def run_to_target(
    recipe: Recipe,
    train_data: TensorFusionDataset,
    test_data: TensorFusionDataset,
    accel: Accelerator,
    *,
    target: float,
    budget_seconds: float,
    evals_per_epoch: int,
    stop_at_target: bool,
    seed: int = 0,
) -> Run:
    """Train ``recipe`` until it reaches ``target`` on digit and sum accuracy, or runs out.

    The run stops at the first of: the target met (if ``stop_at_target``), the training
    clock past ``budget_seconds``, or ``recipe.epochs`` epochs done. Evaluations at an
    epoch boundary and at the stop are always complete.
    """
    torch.manual_seed(seed)
    model = recipe.build_model()
    loader = BatchLoader(train_data, batch_size=recipe.batch_size, shuffle=True, seed=seed)
    steps_per_epoch = len(loader)
    eval_every = math.ceil(steps_per_epoch / evals_per_epoch)
    network = accel.prepare(model)
    optimizer = recipe.build_optimizer(model.parameters())
    scheduler = recipe.build_scheduler(optimizer, steps_per_epoch, recipe.epochs)
    loss_fn = recipe.loss()
    run = Run(
        recipe=recipe.name, title=recipe.title, parameters=parameter_count(model),
        batch_size=recipe.batch_size, budget_seconds=budget_seconds, target=target,
        test_images=len(test_data),
    )  # fmt: skip
    allowed = allowed_errors(len(test_data), target)
    clock = Stopwatch(accel.device)

    def check(step: int, *, complete: bool) -> bool:
        clock.pause()
        count, digit, total = evaluate(
            network, test_data, accel, max_sum=model.config.max_sum,
            give_up_above=None if complete else allowed,
        )  # fmt: skip
        whole = count == len(test_data)
        evaluation = Evaluation(
            step=step, epoch=step / steps_per_epoch, train_seconds=clock.total, count=count,
            digit_accuracy=digit / count, sum_accuracy=total / count, complete=whole,
        )  # fmt: skip
        run.evaluations.append(evaluation)
        met = whole and count - min(digit, total) <= allowed
        if met and not run.reached:
            run.reached, run.seconds_to_target, run.steps_to_target = True, clock.total, step
        clock.resume()
        return met

    run.stopped_by = "epochs"
    step = 0
    clock.resume()
    for step, position, batch in _steps(loader, recipe.epochs):
        epoch_end = position == steps_per_epoch
        train_step(network, accel, batch, loss_fn, optimizer)
        if scheduler is not None and (recipe.scheduler_interval == "step" or epoch_end):
            scheduler.step()
        out_of_time = clock.peek() >= budget_seconds
        if not (epoch_end or out_of_time or position % eval_every == 0):
            continue
        met = check(step, complete=epoch_end or out_of_time)
        if met and stop_at_target:
            run.stopped_by = "target"
            break
        if out_of_time:
            run.stopped_by = "budget"
            break
    clock.pause()
    run.train_seconds, run.steps, run.epochs_trained = clock.total, step, step / steps_per_epoch
    return run


def _steps(loader: BatchLoader, epochs: int) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
    """Yield ``(step, position in its epoch, batch)`` over ``epochs`` passes, both from 1."""
    step = 0
    for _ in range(epochs):
        for position, batch in enumerate(loader, start=1):
            step += 1
            yield step, position, batch


def train_step(
    network: torch.nn.Module,
    accel: Accelerator,
    batch: dict[str, torch.Tensor],
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Run one optimizer step on ``batch``, with the forward pass under ``accel``'s autocast."""
    batch = accel.batch(batch)
    with accel.autocast():
        loss = loss_fn(network(batch["image"], batch["side"]), batch)
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    optimizer.step()
