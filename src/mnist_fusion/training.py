"""Training and evaluation loops for fusion models, with resumable training checkpoints."""

from __future__ import annotations

import io
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from mnist_fusion import distributed
from mnist_fusion._io import atomic_write_bytes
from mnist_fusion.data.batched import BatchLoader
from mnist_fusion.losses import FusionLoss
from mnist_fusion.metrics import FusionMetrics
from mnist_fusion.models.fusion import FusionModel

__all__ = ["TRAINING_STATE_NAME", "Callback", "evaluate", "fit", "resolve_device"]

logger = logging.getLogger(__name__)

Batch = Mapping[str, torch.Tensor]
Callback = Callable[[int, dict[str, float]], None]
"""Called after each epoch with the epoch number (from 1) and that epoch's record."""

TRAINING_STATE_NAME = "training_state.pt"
"""File name of the training checkpoint that :func:`fit` writes into ``checkpoint_dir``."""
_TRAINING_FORMAT = "mnist_fusion.training"
_DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"``, ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``) into a torch device.

    ``"auto"`` picks CUDA when it is available, else the CPU.

    Args:
        device: A device name, or a torch device, which is returned unchanged.

    Returns:
        The torch device.

    Raises:
        ValueError: For another string, or ``"cuda"`` on a machine without CUDA.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.split(":")[0] not in _DEVICES:
        raise ValueError(f"Invalid device {device!r}; expected one of {list(_DEVICES)}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} was requested, but CUDA is not available here.")
    return torch.device(device)


def fit(
    model: FusionModel,
    train_loader: Iterable[Batch],
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scheduler_interval: str = "step",
    eval_loader: Iterable[Batch] | None = None,
    device: str | torch.device = "auto",
    grad_clip: float | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    side_dropout: float = 0.0,
) -> list[dict[str, float]]:
    """Train ``model`` for ``epochs`` epochs and return one record per epoch.

    Each record contains ``epoch``, ``loss``, ``digit_loss`` and ``sum_loss`` (averages
    weighted by batch size), ``train_seconds`` (time in training steps only) and, when
    ``eval_loader`` is given, ``test_``-prefixed :class:`FusionMetrics` values. Each
    epoch's record is logged at INFO level to the ``mnist_fusion.training`` logger.

    A loss with parameters of its own (``FusionLoss(uncertainty_weighting=True)``)
    trains them too: ``fit`` moves ``loss_fn`` to ``device`` and adds the parameters
    that ``optimizer`` lacks as a new parameter group. A scheduler is built for the
    parameter groups it saw, so with a scheduler the optimizer must already contain them.

    Inside a process group (see :func:`mnist_fusion.distributed.init_from_env`) ``fit``
    trains through ``DistributedDataParallel``, which averages the gradients over the
    processes, and averages the loss's own parameters' gradients too. Each process must
    get its own shard of the training data: a :class:`~mnist_fusion.data.BatchLoader`
    built with this process's ``rank`` and ``world_size``, or a ``DataLoader`` with a
    ``DistributedSampler``, whose ``set_epoch`` ``fit`` calls each epoch. The
    evaluation loader must be sharded without padding (a sharded ``BatchLoader`` or a
    :class:`~mnist_fusion.distributed.ShardSampler`). After each epoch the buffers
    (BatchNorm statistics) of rank 0 are copied to all ranks, so every rank evaluates
    the model that rank 0 saves. Rank 0 alone logs, shows the progress bar and writes
    the training checkpoint; the others wait until it is written. The loss figures of
    the history are averages over all processes; ``train_seconds`` is this process's.
    Callbacks run on every process.

    Args:
        model: The model; it is moved to ``device``. Pass the module itself, not a
            ``DistributedDataParallel`` wrapper: ``fit`` wraps it when needed.
        train_loader: Iterable of dict batches with ``image``, ``side``, ``digit``,
            ``sum`` (a two-image batch has ``second_image`` instead of ``side``).
        epochs: Total number of epochs, counting any already done before a resume.
        optimizer: Optimizer over ``model``'s parameters (and ``loss_fn``'s, if any).
        loss_fn: Loss module; defaults to ``FusionLoss(sum_loss="auto")``.
        scheduler: Optional learning-rate scheduler.
        scheduler_interval: ``"step"`` to step the scheduler after each batch, ``"epoch"``
            after each epoch.
        eval_loader: Optional loader evaluated after each epoch; it must neither
            shuffle nor drop the last batch.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        grad_clip: Clip the norm of all trained gradients (model and loss) to this value
            when given.
        callbacks: Functions called after each epoch with ``(epoch, record)``.
        checkpoint_dir: Folder for a training checkpoint written atomically after each
            epoch (model, loss, optimizer, scheduler, RNG and loader state, history).
        resume: Continue from the checkpoint in ``checkpoint_dir`` when there is one.
        progress: Show a progress bar; defaults to whether stderr is a terminal.
        side_dropout: Probability in ``[0, 1)`` with which each side input of each
            training sample is marked missing, drawn from torch's global RNG. Only the
            exact sum head, which averages a missing input over its prior, admits it.

    Returns:
        The history: a list of per-epoch records, including those before a resume.

    Raises:
        ValueError: For invalid arguments, ``resume`` without ``checkpoint_dir``, an
            ``eval_loader`` that shuffles or drops its last batch, or loss parameters
            missing from an optimizer that has a scheduler, or a ``side_dropout`` outside
            ``[0, 1)`` or with a learned sum head. Inside a process group
            also for a loader that is not sharded for this process, a training split
            that gives the processes different step counts, or processes that resume
            from different epochs.
        FloatingPointError: If the loss becomes NaN or infinite; the last good
            checkpoint stays in place.

    Examples:
        >>> from mnist_fusion.data import BatchLoader, TensorFusionDataset
        >>> images = torch.zeros(8, 28, 28, dtype=torch.uint8)
        >>> data = TensorFusionDataset(images, torch.arange(8) % 10, torch.arange(8) % 10)
        >>> model = FusionModel()
        >>> history = fit(model, BatchLoader(data, batch_size=4), epochs=2, device="cpu",
        ...               optimizer=torch.optim.SGD(model.parameters(), lr=0.01))
        >>> [record["epoch"] for record in history]
        [1.0, 2.0]
    """
    _check_fit_arguments(epochs, scheduler_interval, resume, checkpoint_dir)
    _check_side_dropout(side_dropout, model)
    if isinstance(model, DistributedDataParallel):
        raise ValueError(
            "fit got a DistributedDataParallel wrapper; pass the model itself (its .module), "
            "because fit wraps it inside a process group and saves the unwrapped weights."
        )
    if eval_loader is not None:
        _check_eval_loader(eval_loader)
        _check_sharded(eval_loader, "evaluation")
    if distributed.is_distributed():
        _check_distributed_training(train_loader)
    device = resolve_device(device)
    model.to(device)
    loss_fn = (loss_fn if loss_fn is not None else FusionLoss(sum_loss="auto")).to(device)
    _include_loss_parameters(optimizer, loss_fn, scheduler)
    show = sys.stderr.isatty() if progress is None else progress
    show = show and distributed.is_main_process()
    state_path = Path(checkpoint_dir) / TRAINING_STATE_NAME if checkpoint_dir else None
    train_model = _wrap_for_training(model, device)

    history: list[dict[str, float]] = []
    if resume and state_path is not None and state_path.is_file():
        history = _load_training_state(
            state_path, model, loss_fn, optimizer, scheduler, train_loader
        )
        if distributed.is_main_process():
            logger.info("Resumed from %s after epoch %d", state_path, len(history))
    if resume:
        distributed.check_same_values(
            {"the epochs done in the training checkpoint": len(history)},
            fix="put checkpoint_dir on a file system that every process sees",
        )

    for epoch in range(len(history) + 1, epochs + 1):
        _set_sampler_epoch(train_loader, epoch)
        record = _train_one_epoch(
            train_model, train_loader, optimizer, loss_fn, scheduler, scheduler_interval,
            device, grad_clip, epoch, epochs, show, side_dropout,
        )  # fmt: skip
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        _copy_buffers_from_main(model)
        if eval_loader is not None:
            metrics = evaluate(model, eval_loader, device=device, progress=False)
            record.update({f"test_{name}": value for name, value in metrics.items()})

        history.append(record)
        if distributed.is_main_process():
            logger.info("epoch %d/%d %s", epoch, epochs, _format_record(record))
        if state_path is not None:
            distributed.run_on_main_process(
                _save_training_state,
                state_path, model, loss_fn, optimizer, scheduler, train_loader, history,
            )  # fmt: skip
        for callback in callbacks:
            callback(epoch, record)
    return history


@torch.no_grad()
def evaluate(
    model: FusionModel,
    loader: Iterable[Batch],
    *,
    device: str | torch.device = "auto",
    metrics: FusionMetrics | None = None,
    progress: bool | None = None,
) -> dict[str, float]:
    """Compute :class:`FusionMetrics` of ``model`` over every batch of ``loader``.

    The metrics are reset first and the model runs in eval mode (restored afterwards),
    so two calls on an unchanged model return identical values. The loader must
    neither shuffle nor drop its last batch, so that every sample counts once, in a
    fixed order. A torch ``DataLoader`` with a ``RandomSampler`` or ``drop_last=True``
    raises, and so does any loader whose ``shuffle`` or ``drop_last`` attribute is True,
    such as a shuffling :class:`~mnist_fusion.data.BatchLoader`.

    Inside a process group each process evaluates its own shard and the metric states
    are summed over the processes, so every process returns the values of the whole
    set. The shards must hold every item exactly once: a ``BatchLoader`` built with
    this process's ``rank`` and ``world_size``, or a ``DataLoader`` with a
    :class:`~mnist_fusion.distributed.ShardSampler`. torch's ``DistributedSampler``
    repeats items to even out the shards whenever the length does not divide by the
    world size, which would count them twice, so it raises then.

    Args:
        model: The model to evaluate; it is moved to ``device``.
        loader: Iterable of dict batches.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        metrics: Metric to use; moved to ``device`` with the model. Defaults to
            ``FusionMetrics`` with the model's ``max_sum`` and number of classes.
        progress: Show a progress bar; defaults to whether stderr is a terminal.

    Returns:
        A flat dict of floats, plus ``count``: the number of samples seen, over all
        processes.

    Raises:
        ValueError: If ``loader`` shuffles, drops its last batch, repeats items to pad
            its shards, or, inside a process group, is not sharded for this process.

    Examples:
        >>> from mnist_fusion.data import BatchLoader, TensorFusionDataset
        >>> images = torch.zeros(5, 28, 28, dtype=torch.uint8)
        >>> data = TensorFusionDataset(images, torch.arange(5), torch.arange(5))
        >>> values = evaluate(FusionModel(), BatchLoader(data, batch_size=2), device="cpu")
        >>> values["count"]
        5.0
    """
    _check_eval_loader(loader)
    _check_sharded(loader, "evaluation")
    if isinstance(model, DistributedDataParallel):
        # The wrapper syncs buffers in each forward, which would stall ranks whose
        # shards hold different numbers of batches.
        model = model.module
    device = resolve_device(device)
    model.to(device)
    if metrics is None:
        metrics = FusionMetrics(
            max_sum=model.config.max_sum, num_classes=model.config.encoder.num_classes
        )
    metrics = metrics.to(device)
    metrics.reset()
    show = sys.stderr.isatty() if progress is None else progress
    show = show and distributed.is_main_process()

    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc="evaluate", leave=False, disable=not show):
            batch = _to_device(batch, device)
            metrics.update(_forward_batch(model, batch), batch)
    finally:
        model.train(was_training)

    values = {name: float(value) for name, value in metrics.compute().items()}
    # compute() restores this process's own states afterwards, so the count of all
    # processes needs a sync of its own.
    with metrics.sync_context(
        dist_sync_fn=metrics.dist_sync_fn,
        process_group=metrics.process_group,
        should_sync=metrics.sync_on_compute,
    ):
        values["count"] = float(metrics.count)
    return values


def _forward_batch(model: nn.Module, batch: Batch) -> Any:
    """Run ``model`` on a batch: ``(image, side)``, or ``(image, second_image=...)``.

    A ``missing`` entry (one mask, or masks by side input name) is passed on.
    """
    if "side" not in batch and "second_image" in batch:
        return model(batch["image"], second_image=batch["second_image"])
    if batch.get("missing") is not None:
        return model(batch["image"], batch["side"], missing=batch["missing"])
    return model(batch["image"], batch["side"])


def _drop_side_inputs(batch: Batch, rate: float) -> Batch:
    """Return ``batch`` with each side input marked missing with probability ``rate``.

    Drawn masks are combined with any ``missing`` masks the batch already has.
    """
    if rate == 0 or "side" not in batch:
        return batch
    side, given = batch["side"], batch.get("missing")
    if isinstance(side, Mapping):
        given = given if isinstance(given, Mapping) else {}
        missing: Any = {
            name: _dropout_mask(values, rate) | given.get(name, False)
            for name, values in side.items()
        }
    else:
        missing = _dropout_mask(side, rate)
        if given is not None:
            missing = missing | given
    return {**batch, "missing": missing}


def _dropout_mask(values: torch.Tensor, rate: float) -> torch.Tensor:
    return torch.rand(values.shape, device=values.device) < rate


def _check_side_dropout(rate: float, model: nn.Module) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
        raise ValueError(f"Expected `side_dropout` in [0, 1), got {rate!r}.")
    sum_head = getattr(getattr(model, "config", None), "head", None)
    sum_head = getattr(sum_head, "sum_head", None)
    if rate > 0 and sum_head != "exact":
        raise ValueError(
            f"`side_dropout`={rate} marks side inputs missing, which only the exact sum head "
            f"can predict without, but the model has sum_head={sum_head!r}; use "
            "sum_head='exact' or leave side_dropout at 0."
        )


def _train_one_epoch(
    model: FusionModel,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scheduler_interval: str,
    device: torch.device,
    grad_clip: float | None,
    epoch: int,
    epochs: int,
    show: bool,
    side_dropout: float = 0.0,
) -> dict[str, float]:
    model.train()
    totals = torch.zeros(3, dtype=torch.float64)
    count = 0
    started = time.perf_counter()

    bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", leave=False, disable=not show)
    for step, batch in enumerate(bar, start=1):
        batch = _drop_side_inputs(_to_device(batch, device), side_dropout)
        loss = loss_fn(_forward_batch(model, batch), batch)
        if not torch.isfinite(loss.total):
            raise FloatingPointError(
                f"Loss is {loss.total.item()} at epoch {epoch}, batch {step}; training "
                "stopped. Lower the learning rate or set grad_clip; the last training "
                "checkpoint, if any, is unchanged."
            )

        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        _average_loss_gradients(loss_fn)
        if grad_clip is not None:
            trained = [*model.parameters(), *loss_fn.parameters()]
            nn.utils.clip_grad_norm_(trained, grad_clip)
        optimizer.step()
        if scheduler is not None and scheduler_interval == "step":
            scheduler.step()

        # "sum" is the one target every batch has, sum-only ones included.
        size = len(batch["sum"])
        totals += torch.stack([loss.total, loss.digit, loss.sum]).detach().double().cpu() * size
        count += size

    if distributed.is_distributed():
        summed = distributed._all_reduce_sum(torch.cat([totals, totals.new_tensor([count])]))
        totals, count = summed[:3], int(summed[3])
    averages = (totals / max(count, 1)).tolist()
    return {
        "epoch": float(epoch),
        "loss": averages[0],
        "digit_loss": averages[1],
        "sum_loss": averages[2],
        "train_seconds": time.perf_counter() - started,
    }


def _to_device(batch: Batch, device: torch.device) -> dict[str, Any]:
    """Move every tensor of ``batch`` to ``device``; dicts of named side inputs too."""
    return {
        name: {key: part.to(device, non_blocking=True) for key, part in value.items()}
        if isinstance(value, Mapping)
        else value.to(device, non_blocking=True)
        for name, value in batch.items()
    }


def _check_fit_arguments(
    epochs: int, scheduler_interval: str, resume: bool, checkpoint_dir: object
) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"Expected `epochs` to be a positive integer, but got {epochs!r}.")
    if scheduler_interval not in ("step", "epoch"):
        raise ValueError(
            f"Invalid `scheduler_interval`={scheduler_interval!r}; expected 'step' or 'epoch'."
        )
    if resume and checkpoint_dir is None:
        raise ValueError("`resume=True` needs `checkpoint_dir`, the folder of the checkpoint.")


def _wrap_for_training(model: nn.Module, device: torch.device) -> nn.Module:
    if not distributed.is_distributed():
        return model
    if device.type != "cuda":
        return DistributedDataParallel(model)
    # A bare "cuda" means the current device, which init_from_env set to LOCAL_RANK.
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(model, device_ids=[index])


def _average_loss_gradients(loss_fn: nn.Module) -> None:
    # DDP averages the model's gradients only; the loss's own parameters (uncertainty
    # weights) would otherwise drift apart between the processes.
    if not distributed.is_distributed():
        return
    world_size = distributed.get_world_size()
    for parameter in loss_fn.parameters():
        if parameter.grad is not None:
            parameter.grad.copy_(distributed._all_reduce_sum(parameter.grad) / world_size)


def _copy_buffers_from_main(model: nn.Module) -> None:
    # DDP copies rank 0's buffers at the start of each forward pass only, so after the
    # last step each rank has BatchNorm statistics of its own batches.
    if not distributed.is_distributed():
        return
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)


def _set_sampler_epoch(loader: object, epoch: int) -> None:
    # A DistributedSampler draws its permutation from (seed, epoch), so without this
    # every epoch would repeat the first one's order.
    for sampler in _samplers(loader):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


def _samplers(loader: object) -> list[object]:
    if not isinstance(loader, DataLoader):
        return []
    batch_sampler = getattr(loader.batch_sampler, "sampler", None)
    return [s for s in (loader.sampler, batch_sampler) if s is not None]


def _check_distributed_training(loader: object) -> None:
    _check_sharded(loader, "training")
    world_size = distributed.get_world_size()
    if isinstance(loader, BatchLoader):
        distributed.check_training_split(
            len(loader.dataset), loader.batch_size, world_size, drop_last=loader.drop_last
        )
    if hasattr(loader, "__len__"):
        distributed.check_same_values(
            {"the number of training batches per epoch": len(loader)},
            fix="give every process the same number of training batches, or DDP waits forever",
        )


def _check_sharded(loader: object, role: str) -> None:
    """Raise if, inside a process group, ``loader`` is not this process's shard."""
    if not distributed.is_distributed():
        return
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    name = type(loader).__name__
    if isinstance(loader, BatchLoader):
        if (loader.rank, loader.world_size) != (rank, world_size):
            raise ValueError(
                f"The {role} BatchLoader is built for rank {loader.rank} of "
                f"{loader.world_size}, but this process is rank {rank} of {world_size}; "
                "build it with rank=distributed.get_rank() and "
                "world_size=distributed.get_world_size(), so each process reads its own shard."
            )
        return
    if not isinstance(loader, DataLoader):
        return  # Another iterable: its sharding cannot be seen from here.
    shards = [s for s in _samplers(loader) if isinstance(s, DistributedSampler)]
    sampler_name = "ShardSampler" if role == "evaluation" else "DistributedSampler"
    if not shards:
        raise ValueError(
            f"The {role} {name} has no {sampler_name}, so every one of the {world_size} "
            f"processes would read the whole dataset; pass sampler={sampler_name}(dataset)."
        )
    for shard in shards:
        if (shard.rank, shard.num_replicas) != (rank, world_size):
            raise ValueError(
                f"The {role} {name}'s sampler is built for rank {shard.rank} of "
                f"{shard.num_replicas}, but this process is rank {rank} of {world_size}; "
                "leave its rank and num_replicas at their defaults."
            )


def _check_eval_loader(loader: object) -> None:
    name = type(loader).__name__
    if isinstance(loader, DataLoader):
        batch_sampler = loader.batch_sampler
        samplers = (loader.sampler, getattr(batch_sampler, "sampler", None))
        shuffles = any(isinstance(sampler, RandomSampler) for sampler in samplers)
        drops = loader.drop_last or getattr(batch_sampler, "drop_last", False) is True
    else:
        shuffles = getattr(loader, "shuffle", False) is True
        drops = getattr(loader, "drop_last", False) is True
    if shuffles:
        raise ValueError(
            f"The evaluation {name} shuffles; evaluation must visit the samples in a fixed "
            "order, so build it with shuffle=False."
        )
    if drops:
        raise ValueError(
            f"The evaluation {name} drops its last incomplete batch, so those samples "
            "would not count; build it with drop_last=False."
        )
    for sampler in _samplers(loader):
        _check_unpadded(sampler, name)


def _check_unpadded(sampler: object, name: str) -> None:
    if not isinstance(sampler, DistributedSampler) or isinstance(sampler, distributed.ShardSampler):
        return
    length = len(sampler.dataset)  # type: ignore[arg-type]
    if sampler.shuffle:
        raise ValueError(
            f"The evaluation {name}'s DistributedSampler shuffles; evaluation must visit "
            "the samples in a fixed order, so use mnist_fusion.distributed.ShardSampler."
        )
    if length % sampler.num_replicas:
        effect = "leaves out" if sampler.drop_last else "repeats"
        raise ValueError(
            f"The evaluation {name}'s DistributedSampler {effect} samples to give each of "
            f"{sampler.num_replicas} processes the same share of {length}, so the synced "
            "metrics would not count every sample once; use "
            "mnist_fusion.distributed.ShardSampler(dataset) instead."
        )


def _include_loss_parameters(
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> None:
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [p for p in loss_fn.parameters() if p.requires_grad and id(p) not in in_optimizer]
    if not missing:
        return
    if scheduler is not None:
        # A scheduler records the parameter groups when it is built, and OneCycleLR
        # fails on a group added later.
        raise ValueError(
            f"`loss_fn` has {len(missing)} trainable parameter(s) that the optimizer lacks, "
            "and a scheduler is given; build the optimizer over "
            "[*model.parameters(), *loss_fn.parameters()] before the scheduler."
        )
    optimizer.add_param_group({"params": missing})
    logger.info("Added %d loss parameter(s) to the optimizer", len(missing))


def _format_record(record: Mapping[str, float]) -> str:
    parts = []
    for name, value in record.items():
        # The history keeps the per-class accuracies, which would crowd the log line.
        per_class = name.rpartition("_")[2].isdigit()
        if name != "epoch" and not per_class and math.isfinite(value):
            parts.append(f"{name}={value:.4f}")
    return " ".join(parts)


def _save_training_state(
    path: Path,
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loader: object,
    history: list[dict[str, float]],
) -> None:
    state: dict[str, Any] = {
        "format": _TRAINING_FORMAT,
        "epoch": len(history),
        "model": model.state_dict(),
        "loss": loss_fn.state_dict(),
        "loss_options": _loss_options(loss_fn),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "history": history,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def _load_training_state(
    path: Path,
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loader: object,
) -> list[dict[str, float]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # As in checkpoint.load: damaged bytes fail with almost any exception type.
    except Exception as error:
        raise ValueError(
            f"{str(path)!r} is not a readable training checkpoint ({type(error).__name__}); "
            "delete it to train from the start, or pass resume=False."
        ) from error
    if not isinstance(state, dict) or state.get("format") != _TRAINING_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not an mnist_fusion training checkpoint; delete it to train "
            "from the start, or pass resume=False."
        )

    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(
            f"The model state in {str(path)!r} does not fit `model`, so it was saved from a "
            f"model of another configuration ({str(error).splitlines()[0]}); build the model "
            "as in the first run, or start afresh with a new checkpoint folder (--out for "
            "mnist-fusion train)."
        ) from error
    _load_loss_state(path, loss_fn, state.get("loss"))
    _check_loss_options(path, loss_fn, state.get("loss_options"))
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if state["loader"] is not None and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(state["loader"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return list(state["history"])


# The options of FusionLoss that its state_dict leaves out, so a resume compares them.
_FUSION_LOSS_OPTIONS = (
    "digit_weight", "sum_weight", "sum_loss", "huber_delta", "uncertainty_weighting",
    "digit_label_smoothing",
)  # fmt: skip


def _loss_options(loss_fn: nn.Module) -> dict[str, Any] | None:
    if not isinstance(loss_fn, FusionLoss):
        return None
    return {name: getattr(loss_fn, name) for name in _FUSION_LOSS_OPTIONS}


def _check_loss_options(path: Path, loss_fn: nn.Module, saved: Mapping[str, Any] | None) -> None:
    # States written before the options were saved, and other losses, pass unchecked.
    current = _loss_options(loss_fn)
    if saved is None or current is None:
        return
    changed = [name for name in current if name in saved and saved[name] != current[name]]
    if changed:
        differences = ", ".join(
            f"{name}={saved[name]!r} (now {current[name]!r})" for name in changed
        )
        raise ValueError(
            f"The training checkpoint {str(path)!r} was written with FusionLoss {differences}; "
            "build the loss as in the first run, or start afresh with a new checkpoint folder."
        )


def _load_loss_state(path: Path, loss_fn: nn.Module, saved: Mapping[str, Any] | None) -> None:
    # Files written before losses could hold parameters have no "loss" entry.
    saved = saved or {}
    expected = sorted(loss_fn.state_dict())
    if sorted(saved) != expected:
        raise ValueError(
            f"The loss state in {str(path)!r} contains {sorted(saved)}, but `loss_fn` has "
            f"{expected}; build the loss as in the first run, for example with the same "
            "uncertainty_weighting."
        )
    if expected:
        loss_fn.load_state_dict(saved)
