"""Several processes, as torchrun starts them: process group, ranks, shards and checks.

``torchrun --standalone --nproc-per-node N -m mnist_fusion.cli train ...`` starts N
processes and passes each its rank and the rendezvous address in environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`init_from_env`
reads them and joins the process group: gloo on the CPU, nccl on CUDA with one GPU per
process. Without those variables nothing is initialised and every helper here returns what a
single process would (rank 0 of 1), so library code can call them unconditionally.

Once a group is initialised, :func:`~mnist_fusion.training.fit` trains through
``DistributedDataParallel`` and :func:`~mnist_fusion.training.evaluate` sums the metric
states of all processes. See docs/distributed.md for the full picture.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sized
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

__all__ = [
    "ShardSampler",
    "barrier",
    "check_same_values",
    "check_training_split",
    "destroy",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "run_on_main_process",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
# The variables torchrun sets for every worker; RANK and WORLD_SIZE mark a worker.
_ENV_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """Return whether a torch.distributed process group is initialised.

    Returns:
        True inside a process group, False in a plain single process.

    Examples:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Return this process's rank in the process group, or 0 without one.

    Returns:
        The global rank, from 0 to ``get_world_size() - 1``.

    Examples:
        >>> get_rank()
        0
    """
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Return the number of processes in the process group, or 1 without one.

    Returns:
        The world size.

    Examples:
        >>> get_world_size()
        1
    """
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Return whether this process is rank 0, the one that logs and writes files.

    Returns:
        True on rank 0 and in a plain single process.

    Examples:
        >>> is_main_process()
        True
    """
    return get_rank() == 0


def init_from_env(device: str | torch.device = "auto") -> torch.device:
    """Join the process group that torchrun describes in the environment, if any.

    Without ``RANK`` and ``WORLD_SIZE`` in the environment, or with a group already
    initialised, nothing is initialised and the resolved ``device`` comes back
    unchanged. Otherwise the backend follows the device: gloo for the CPU, nccl for
    CUDA, where each process takes GPU ``LOCAL_RANK`` (``LOCAL_RANK`` defaults to
    ``RANK``, for processes started by hand on one machine).

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``, as for
            :func:`~mnist_fusion.training.resolve_device`.

    Returns:
        The device this process computes on: ``cuda:LOCAL_RANK`` for a CUDA group.

    Raises:
        ValueError: If a torchrun variable is missing or not a valid number, if
            ``device`` names one GPU (``cuda:1``) while each process must take its own,
            or if ``LOCAL_RANK`` exceeds the visible GPUs.

    Examples:
        >>> init_from_env("cpu")  # No torchrun variables here: a single process.
        device(type='cpu')
    """
    # Imported here because mnist_fusion.training imports this module.
    from mnist_fusion.training import resolve_device

    resolved = resolve_device(device)
    if is_distributed() or not _launched_by_torchrun():
        return resolved

    rank, world_size, local_rank = _ranks_from_env()
    if resolved.type == "cuda":
        # NOTE: the test suite runs gloo on CPUs only; this nccl branch has not been run.
        resolved = _rank_gpu(resolved, local_rank)
        torch.cuda.set_device(resolved)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(
        backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        device_id=resolved if resolved.type == "cuda" else None,
    )
    logger.debug("Joined a %s process group as rank %d of %d", backend, rank, world_size)
    return resolved


def destroy() -> None:
    """Leave the process group, if one is initialised.

    Examples:
        >>> destroy()  # Nothing to leave in a single process.
    """
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process reaches this call; return at once without a group.

    Examples:
        >>> barrier()
    """
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        # Without device_ids an nccl barrier may guess the GPU from the rank, and warns.
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def run_on_main_process(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | None:
    """Call ``fn`` on rank 0 alone, then make every process wait for it to finish.

    Use it for files that one process writes and others may read later: when this
    returns on any rank, the file is complete. If ``fn`` raises, rank 0 raises and the
    others wait at the barrier until torchrun ends them.

    Args:
        fn: The function to call.
        *args: Positional arguments of ``fn``.
        **kwargs: Keyword arguments of ``fn``.

    Returns:
        What ``fn`` returned, on rank 0; None on every other rank.

    Examples:
        >>> run_on_main_process(max, 3, 4)
        4
    """
    result = fn(*args, **kwargs) if is_main_process() else None
    barrier()
    return result


def check_same_values(
    values: Mapping[str, object], *, fix: str = "start every process with the same arguments"
) -> None:
    """Raise on every rank unless all ranks passed equal ``values``.

    All ranks exchange their mappings, so they all see the same difference and all stop
    before any training step, instead of some waiting for the others forever.

    Args:
        values: Names and plain values (numbers, strings, tuples) that must agree,
            such as the seed, the epoch count and a hash of the configuration.
        fix: What the user should do about a difference, for the error message.

    Raises:
        ValueError: Naming the first value that differs and the ranks that disagree.

    Examples:
        >>> check_same_values({"seed": 0, "epochs": 5})  # One process agrees with itself.
    """
    if not is_distributed():
        return
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, dict(values))
    reference = gathered[0]
    missing = object()
    names = list(reference) + [name for other in gathered[1:] for name in other]
    for name in dict.fromkeys(names):
        expected = reference.get(name, missing)
        for other_rank, other in enumerate(gathered[1:], start=1):
            found = other.get(name, missing)
            if found != expected:
                raise ValueError(
                    f"Ranks disagree on {name}: rank 0 has {_shown(expected, missing)}, "
                    f"rank {other_rank} has {_shown(found, missing)}; {fix}."
                )


def check_training_split(
    length: int, batch_size: int, world_size: int, *, drop_last: bool = False
) -> None:
    """Check that ``length`` training items split into equal steps on every rank.

    ``batch_size`` is the global batch: each step, every rank takes
    ``batch_size // world_size`` items of it. DDP needs the same number of steps on
    every rank, so the split fails when a rank would get no items at all, and when the
    last, smaller batch (kept unless ``drop_last``) contains fewer items than there are
    ranks, because a rank would then have one step fewer and the others would wait
    for it forever.

    Args:
        length: Number of training items.
        batch_size: The global batch size.
        world_size: Number of processes.
        drop_last: Whether the last, smaller batch is dropped.

    Raises:
        ValueError: If ``world_size`` exceeds ``length``, ``batch_size`` does not divide
            by ``world_size``, or the last batch is smaller than ``world_size``.

    Examples:
        >>> check_training_split(60000, 128, 4)
        >>> try:
        ...     check_training_split(60000, 130, 4)
        ... except ValueError as error:
        ...     print(str(error).split(":")[0])
        batch_size 130 does not divide by the world size 4
    """
    if world_size > length:
        raise ValueError(
            f"The world size {world_size} is larger than the training set of {length} "
            f"item(s), so some process would get no data; start at most {length} processes."
        )
    _check_batch_divides(batch_size, world_size)
    last = length % batch_size
    if not drop_last and 0 < last < world_size:
        raise ValueError(
            f"The last batch of the {length} training items contains {last} item(s), fewer "
            f"than the {world_size} processes, so some process would take one step fewer "
            "and the others would wait for it; choose a batch size that leaves no "
            f"remainder or at least {world_size} items, or drop the last batch."
        )


class ShardSampler(DistributedSampler):
    """Give each process every ``world_size``-th index, without padding or shuffling.

    Rank ``r`` gets the indices ``r, r + world_size, r + 2 * world_size, ...``, so the
    shards together hold every index exactly once, and their lengths differ by at most
    one. torch's ``DistributedSampler`` instead repeats indices until every shard has
    the same length, which counts those samples twice in metrics summed across
    processes. Use this sampler for evaluation DataLoaders; training needs the equal
    shard lengths of ``DistributedSampler``. It subclasses ``DistributedSampler`` so
    that Lightning keeps it rather than putting a padding sampler in its place.

    Args:
        dataset: A sized dataset, or anything with ``len()``.
        rank: This process's rank; defaults to :func:`get_rank`.
        world_size: Number of processes; defaults to :func:`get_world_size`.

    Raises:
        ValueError: If ``world_size`` is not positive or ``rank`` is outside
            ``[0, world_size)``.

    Examples:
        >>> list(ShardSampler(range(5), rank=0, world_size=2))
        [0, 2, 4]
        >>> list(ShardSampler(range(5), rank=1, world_size=2))
        [1, 3]
    """

    def __init__(self, dataset: Sized, *, rank: int | None = None, world_size: int | None = None):
        rank, world_size = _check_shard(
            get_rank() if rank is None else rank,
            get_world_size() if world_size is None else world_size,
        )
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=world_size,
            rank=rank,
            shuffle=False,
            drop_last=False,
        )
        # DistributedSampler sized the shards with padding; these are the real sizes.
        self.total_size = len(dataset)
        self.num_samples = len(range(rank, self.total_size, world_size))

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def _check_batch_divides(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        upper = lower + world_size
        example = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"batch_size {batch_size} does not divide by the world size {world_size}: "
            "batch_size is the global batch, split evenly across the processes; use a "
            f"multiple of {world_size}, such as {example}."
        )


def _check_shard(rank: object, world_size: object) -> tuple[int, int]:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"Expected `world_size` to be a positive integer, but got {world_size!r}.")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(
            f"Expected `rank` to be an integer in [0, {world_size - 1}] for world_size "
            f"{world_size}, but got {rank!r}."
        )
    return rank, world_size


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _ranks_from_env() -> tuple[int, int, int]:
    missing = [name for name in _ENV_NAMES[3:] if name not in os.environ]
    if missing:
        raise ValueError(
            f"RANK and WORLD_SIZE are set, but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not; start the processes with torchrun, "
            "which sets all of them, or unset RANK and WORLD_SIZE to run a single process."
        )
    rank = _env_int("RANK")
    world_size = _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(
            f"The environment gives RANK={rank}, WORLD_SIZE={world_size} and "
            f"LOCAL_RANK={local_rank}; RANK must be in [0, WORLD_SIZE) and LOCAL_RANK must "
            "not be negative. Start the processes with torchrun."
        )
    return rank, world_size, local_rank


def _env_int(name: str) -> int:
    text = os.environ[name]
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"The environment variable {name}={text!r} is not an integer; start the "
            "processes with torchrun, which sets it."
        ) from None


def _rank_gpu(device: torch.device, local_rank: int) -> torch.device:
    if device.index is not None:
        raise ValueError(
            f"The device {str(device)!r} names one GPU, but with several processes each "
            "takes the GPU of its LOCAL_RANK; pass 'cuda' or 'auto' instead."
        )
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK is {local_rank}, but only {count} GPU(s) are visible; start at "
            f"most {count} processes per machine (torchrun --nproc-per-node {count})."
        )
    return torch.device("cuda", local_rank)


def _shown(value: object, missing: object) -> str:
    return "no value" if value is missing else repr(value)


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Return the sum of ``tensor`` over all ranks, on ``tensor``'s device."""
    if not is_distributed():
        return tensor
    # nccl reduces CUDA tensors only; gloo reduces CPU tensors.
    if dist.get_backend() == "nccl":
        work_device = torch.device("cuda", torch.cuda.current_device())
    else:
        work_device = torch.device("cpu")
    reduced = tensor.detach().to(work_device, copy=True)
    dist.all_reduce(reduced)
    return reduced.to(tensor.device)
