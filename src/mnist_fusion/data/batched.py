"""A tensor-resident fused dataset that builds a whole batch from an index tensor."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from mnist_fusion.data.pairing import TargetFn, _resolve_targets
from mnist_fusion.data.side import _check_index, _check_int
from mnist_fusion.distributed import _check_batch_divides, _check_shard
from mnist_fusion.models.side_spec import check_side_name

__all__ = ["BatchLoader", "TensorFusionDataset", "MNIST_MEAN", "MNIST_STD"]

MNIST_MEAN = 0.1307
"""Mean pixel of the MNIST training images, after scaling to [0, 1]."""

MNIST_STD = 0.3081
"""Standard deviation of the MNIST training pixels, after scaling to [0, 1]."""


class BatchSource(Protocol):
    """Dataset interface of :class:`BatchLoader`: a length, and whole batches by index tensor."""

    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor) -> dict[str, Any]: ...


class TensorFusionDataset(Dataset[dict[str, torch.Tensor]]):
    """Images, labels and side inputs held once in memory as tensors.

    Images stay uint8 and are scaled to ``[0, 1]`` and normalised per batch with the
    same operations, in the same order, as torchvision's ``ToTensor`` followed by
    ``Normalize(mean, std)``, so a sample equals the per-item path's bit for bit while
    torch's default dtype is float32 (``ToTensor`` follows the default dtype).

    Args:
        images: uint8 tensor ``[N, H, W]`` or ``[N, C, H, W]``.
        labels: Integer tensor ``[N]``.
        side: Integer tensor ``[N]``, or a mapping of name to tensor ``[N]`` for several
            side inputs; in a mapping, floating-point tensors are continuous inputs,
            stored as float32.
        mean: Per-channel mean subtracted after scaling.
        std: Per-channel standard deviation divided out after subtracting the mean.
        targets: Target names from :data:`~mnist_fusion.data.TARGETS` or a mapping of
            name to ``callable(label, side)``; the callables must work on batches.

    Raises:
        TypeError: If an input is not a tensor, ``images`` is not uint8, or the labels or
            the single side tensor are not integers.
        ValueError: If the lengths differ, ``images`` is not 3-D or 4-D, or the labels
            or side are not 1-D.

    Examples:
        >>> data = TensorFusionDataset(
        ...     torch.zeros(3, 28, 28, dtype=torch.uint8), torch.tensor([1, 2, 3]),
        ...     torch.tensor([4, 5, 6]))
        >>> batch = data.batch(torch.tensor([2, 0]))
        >>> batch["image"].shape, batch["sum"].tolist()
        (torch.Size([2, 1, 28, 28]), [9, 5])
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        side: torch.Tensor | Mapping[str, torch.Tensor],
        *,
        mean: float | Sequence[float] = MNIST_MEAN,
        std: float | Sequence[float] = MNIST_STD,
        targets: Sequence[str] | Mapping[str, TargetFn] | None = None,
    ) -> None:
        named = dict(side) if isinstance(side, Mapping) else {"side": side}
        if not named:
            raise ValueError("Expected at least one side input in the mapping, got none.")
        if isinstance(side, Mapping):
            for name in named:
                check_side_name(name)
        columns = {"labels": labels, **named}
        for name, tensor in (("images", images), *columns.items()):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(
                    f"Expected `{name}` to be a torch.Tensor, but got {type(tensor).__name__}; "
                    "convert it with torch.as_tensor."
                )
        if images.dtype != torch.uint8:
            raise TypeError(f"Expected uint8 images, but got dtype {images.dtype}.")
        if images.ndim not in (3, 4):
            raise ValueError(
                "Expected images of shape [N, H, W] or [N, C, H, W], but got shape "
                f"{tuple(images.shape)}."
            )
        for name, tensor in columns.items():
            floating_allowed = isinstance(side, Mapping) and name in named
            floating = tensor.is_floating_point() and not floating_allowed
            if floating or tensor.is_complex() or tensor.dtype == torch.bool:
                raise TypeError(f"Expected integer {name}, but got dtype {tensor.dtype}.")
            if tensor.ndim != 1:
                # An [N, 1] column would broadcast against [N] targets downstream.
                raise ValueError(
                    f"Expected 1-D {name} of shape [N], but got shape {tuple(tensor.shape)}; "
                    "flatten them with .reshape(-1)."
                )
        lengths = {name: len(tensor) for name, tensor in columns.items()}
        if any(length != len(images) for length in lengths.values()):
            raise ValueError(
                f"Expected images, labels and side of one length, but got {len(images)} "
                f"images and lengths {lengths}."
            )

        self.images = images if images.ndim == 4 else images.unsqueeze(1)
        self.labels = labels.to(torch.int64)
        stored = {name: _stored_side(tensor) for name, tensor in named.items()}
        self.side: torch.Tensor | dict[str, torch.Tensor] = (
            stored if isinstance(side, Mapping) else stored["side"]
        )
        channels = self.images.shape[1]
        self.mean = torch.as_tensor(mean, dtype=torch.float32).expand(channels).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).expand(channels).view(-1, 1, 1)
        self.targets = _resolve_targets(targets)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Build the batch at ``indices`` with tensor operations only.

        Args:
            indices: 1-D integer tensor; negative indices count from the end, and the
                ``index`` field contains them counted from the start, as per-item reads do.

        Raises:
            TypeError: If ``indices`` is not an integer tensor (a boolean mask, say).
            ValueError: If ``indices`` is not 1-D.
            IndexError: If an index is outside ``[-len(self), len(self))``.
        """
        indices = self._check_indices(indices)
        images = self.images[indices].to(torch.float32).div(255).sub(self.mean).div(self.std)
        labels = self.labels[indices]
        if isinstance(self.side, dict):
            side: torch.Tensor | dict[str, torch.Tensor] = {
                name: values[indices] for name, values in self.side.items()
            }
        else:
            side = self.side[indices]

        batch = {"image": images, "side": side, "index": indices}
        for name, target_fn in self.targets.items():
            batch[name] = target_fn(labels, side)
        return batch

    def _check_indices(self, indices: torch.Tensor) -> torch.Tensor:
        if not isinstance(indices, torch.Tensor):
            raise TypeError(
                f"Expected `indices` to be a tensor, but got {type(indices).__name__}; "
                "wrap them with torch.tensor(indices), or call __getitems__."
            )
        if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
            raise TypeError(
                f"Expected integer indices, but got dtype {indices.dtype}; a boolean mask "
                "selects rows differently, so pass mask.nonzero().flatten()."
            )
        if indices.ndim != 1:
            raise ValueError(f"Expected 1-D indices, but got shape {tuple(indices.shape)}.")

        length = len(self)
        outside = (indices < -length) | (indices >= length)
        if outside.any():
            raise IndexError(
                f"Index {int(indices[outside][0])} is out of range for a dataset of length "
                f"{length}; valid indices are {-length} to {length - 1}."
            )
        # The remainder maps negative indices to their positions and leaves the others.
        return indices.to(torch.int64) % max(length, 1)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = _check_index(index, len(self))
        batch = self.batch(torch.tensor([index]))
        return _row(batch, 0)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """Return the samples at ``indices`` as a list, as the DataLoader fetcher expects."""
        index_tensor = torch.tensor(
            [_check_index(i, len(self)) for i in indices], dtype=torch.int64
        )
        batch = self.batch(index_tensor)
        return [_row(batch, row) for row in range(len(indices))]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(length={len(self)}, "
            f"image_shape={tuple(self.images.shape[1:])}, targets={list(self.targets)})"
        )


def _stored_side(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.float32 if tensor.is_floating_point() else torch.int64)


def _row(batch: Mapping[str, Any], row: int) -> dict[str, Any]:
    """Return one sample of a batch; a dict of named side inputs is indexed inside."""
    return {
        name: {key: part[row] for key, part in value.items()}
        if isinstance(value, dict)
        else value[row]
        for name, value in batch.items()
    }


class BatchLoader:
    """Iterate over a :class:`TensorFusionDataset` in batches, with no per-item Python.

    A drop-in for a DataLoader in this library's loops: each iteration yields a dict of
    batched tensors. Shuffling draws a permutation from a private generator seeded once,
    so the order depends on ``seed`` and the epoch count only, never on the global RNG.

    With ``world_size`` above 1 the loader yields one process's shard. Every rank draws
    the same permutation (same seed, same epoch count) and cuts it into the same global
    batches of ``batch_size`` items. Rank ``r`` then takes the items at offsets ``r``,
    ``r + world_size``, ... of each global batch. So the shards of one step together
    form the batch that a single process would see, each item once, with no padding.
    A rank whose share of the last, smaller batch is empty yields one batch fewer,
    which evaluation tolerates but DDP training does not (see
    :func:`~mnist_fusion.distributed.check_training_split`).

    Args:
        dataset: The tensor-resident dataset: a :class:`TensorFusionDataset`, or any
            object with ``__len__`` and ``batch(indices)`` (such as a
            :class:`~mnist_fusion.data.TensorSubset`).
        batch_size: Samples per batch, over all ranks together; each rank's batches
            hold ``batch_size // world_size`` of them.
        shuffle: Draw a new permutation each epoch.
        drop_last: Drop the last batch when it is smaller than ``batch_size``.
        seed: Seed of the shuffling generator.
        rank: This process's rank, from 0 to ``world_size - 1``.
        world_size: Number of processes that share the dataset.

    Raises:
        ValueError: If ``batch_size`` is not a positive integer, ``seed`` is not an
            integer, ``rank`` is outside ``[0, world_size)``, or ``batch_size`` does not
            divide by ``world_size``.

    Examples:
        >>> data = TensorFusionDataset(
        ...     torch.zeros(5, 28, 28, dtype=torch.uint8), torch.arange(5), torch.arange(5))
        >>> [len(b["index"]) for b in BatchLoader(data, batch_size=2)]
        [2, 2, 1]
        >>> [b["index"].tolist() for b in BatchLoader(data, batch_size=2, rank=1, world_size=2)]
        [[1], [3]]
    """

    def __init__(
        self,
        dataset: BatchSource,
        *,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Expected `batch_size` to be a positive integer, got {batch_size!r}.")
        if not callable(getattr(dataset, "batch", None)):
            raise TypeError(
                f"BatchLoader reads whole batches with dataset.batch(indices), which "
                f"{type(dataset).__name__} lacks; pass a TensorFusionDataset (such as "
                "MNISTSum(...).as_tensors()), or load this dataset with a torch DataLoader."
            )
        self.rank, self.world_size = _check_shard(rank, world_size)
        _check_batch_divides(batch_size, world_size)
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = _check_int("seed", seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def __len__(self) -> int:
        full, last = divmod(len(self.dataset), self.batch_size)
        # This rank's share of the last batch starts at offset `rank` within it.
        return full + (1 if not self.drop_last and last > self.rank else 0)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        count = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(count, generator=self.generator)
        else:
            order = torch.arange(count)

        for batch_index in range(len(self)):
            start = batch_index * self.batch_size
            stop = start + self.batch_size
            yield self.dataset.batch(order[start + self.rank : stop : self.world_size])

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Return the shuffling generator's state, so a resumed run draws the same orders.

        The state also contains the ``seed`` the loader was built with, so that a caller can
        tell whether it resumes the run it means to.
        """
        return {"generator": self.generator.get_state(), "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, torch.Tensor | int]) -> None:
        """Restore the generator state and the seed written by :meth:`state_dict`.

        The loader then records the saved seed, whose stream its generator continues.
        States written before the seed was saved leave ``seed`` as it is.
        """
        generator_state = state["generator"]
        if not isinstance(generator_state, torch.Tensor):
            raise TypeError(
                f"Expected the loader state's `generator` to be a tensor, got "
                f"{type(generator_state).__name__}; pass a dict from BatchLoader.state_dict()."
            )
        self.generator.set_state(generator_state)
        if "seed" in state:
            self.seed = _check_int("seed", state["seed"])
