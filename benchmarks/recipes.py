"""The three training recipes compared: mnist_fusion's default, PyTorch examples, reference.

All three train a ``FusionModel`` with the default fusion head and the default loss's
sum weight, on the batched tensor path. They differ in the encoder, the optimizer, its
schedule, the batch size, and the label smoothing that only the default uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from encoders import ExamplesEncoder, ReferenceEncoder
from torch import nn

from mnist_fusion.cli import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DIGIT_LABEL_SMOOTHING,
    DEFAULT_EPOCHS,
    DEFAULT_FIRST_CYCLE_EPOCHS,
    DEFAULT_LR,
    DEFAULT_SUM_WEIGHT,
    DEFAULT_WEIGHT_DECAY,
    default_scheduler,
)
from mnist_fusion.losses import FusionLoss
from mnist_fusion.models import FusionHead, FusionModel, FusionModelConfig

Params = Iterable[nn.Parameter]
Scheduler = torch.optim.lr_scheduler.LRScheduler


@dataclass(frozen=True)
class Recipe:
    """One way to train a model.

    Attributes:
        name: Key in the results.
        title: What the recipe is, for the table.
        batch_size: Training batch size.
        epochs: Epochs the recipe trains for when no time budget stops it first.
        budget_seconds: Default cap on the training clock.
        build_model: Return a freshly initialised model.
        build_optimizer: Return the optimizer over the given parameters.
        build_scheduler: ``(optimizer, steps_per_epoch, epochs)`` to a scheduler or None.
        scheduler_interval: ``"step"`` or ``"epoch"``: when the scheduler steps.
        digit_label_smoothing: Label smoothing of the digit term of ``FusionLoss``.
    """

    name: str
    title: str
    batch_size: int
    epochs: int
    budget_seconds: float
    build_model: Callable[[], FusionModel]
    build_optimizer: Callable[[Params], torch.optim.Optimizer]
    build_scheduler: Callable[[torch.optim.Optimizer, int, int], Scheduler | None]
    scheduler_interval: str = "step"

    digit_label_smoothing: float = 0.0

    def loss(self) -> FusionLoss:
        return FusionLoss(
            sum_weight=DEFAULT_SUM_WEIGHT, digit_label_smoothing=self.digit_label_smoothing
        )


def with_encoder(encoder: nn.Module) -> FusionModel:
    """Return a default ``FusionModel`` whose encoder is ``encoder``, head sized to match."""
    model = FusionModel(FusionModelConfig())
    model.encoder = encoder
    model.head = FusionHead(
        model.config.head,
        num_classes=model.config.encoder.num_classes,
        num_features=encoder.num_features,
    )
    return model


def _default_schedule(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int
) -> Scheduler:
    return default_scheduler(
        optimizer, max_lr=DEFAULT_LR, epochs=epochs, steps_per_epoch=steps_per_epoch
    )


def _step_lr(optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> Scheduler:
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)


DEFAULT = Recipe(
    name="default",
    title=(
        f"mnist_fusion default: CNN 16-32-64-128 channels-last, AdamW {DEFAULT_LR}, "
        f"one-cycle restarted after {DEFAULT_FIRST_CYCLE_EPOCHS} epochs, label smoothing "
        f"{DEFAULT_DIGIT_LABEL_SMOOTHING}, batch {DEFAULT_BATCH_SIZE}"
    ),
    batch_size=DEFAULT_BATCH_SIZE,
    epochs=DEFAULT_EPOCHS,
    budget_seconds=600.0,
    build_model=lambda: FusionModel(FusionModelConfig()),
    build_optimizer=lambda params: torch.optim.AdamW(
        params, lr=DEFAULT_LR, weight_decay=DEFAULT_WEIGHT_DECAY
    ),
    build_scheduler=_default_schedule,
    digit_label_smoothing=DEFAULT_DIGIT_LABEL_SMOOTHING,
)

EXAMPLES = Recipe(
    name="pytorch_examples",
    title="PyTorch examples/mnist: conv 32-64, FC 128, Adadelta 1.0, StepLR 0.7, batch 64",
    batch_size=64,
    epochs=14,
    # It first reached 99 % digit and sum accuracy after 3.25 epochs (248 s) on the
    # 2-core machine of docs/benchmarks.md, and after 682 s there under heavier load.
    budget_seconds=900.0,
    build_model=lambda: with_encoder(ExamplesEncoder()),
    build_optimizer=lambda params: torch.optim.Adadelta(params, lr=1.0),
    build_scheduler=_step_lr,
    scheduler_interval="epoch",
)

REFERENCE = Recipe(
    name="reference",
    title="reference experiment: 7 convs 32-1024-10, no norm, SGD 0.001, batch 64",
    batch_size=64,
    epochs=5,
    budget_seconds=240.0,
    build_model=lambda: with_encoder(ReferenceEncoder()),
    build_optimizer=lambda params: torch.optim.SGD(params, lr=0.001),
    build_scheduler=lambda optimizer, steps_per_epoch, epochs: None,
)

RECIPES = (DEFAULT, EXAMPLES, REFERENCE)


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
