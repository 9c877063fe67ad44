"""Device placement and the speed options: bf16 autocast, channels_last, torch.compile.

NOTE: the CUDA path (bf16 autocast, channels_last, cuDNN benchmark mode) has been
checked by reading and on the CPU only, where autocast and channels_last also work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Accelerator:
    """Device and speed options of the benchmarked models.

    Attributes:
        device: The torch device.
        bf16: Run forward passes under bfloat16 autocast (on the CPU too, if asked).
        channels_last: Store the models' weights and the input images channels-last.
        compile: Wrap each model in ``torch.compile``.
    """

    device: torch.device
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device in the chosen layout; return what to call.

        The returned module shares its parameters with ``model``, so an optimizer may
        be built on either.
        """
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile:
            return torch.compile(model)
        return model

    def batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Move a dict batch to the device, with the images in the chosen layout."""
        moved = {name: value.to(self.device, non_blocking=True) for name, value in batch.items()}
        if self.channels_last:
            moved["image"] = moved["image"].contiguous(memory_format=torch.channels_last)
        return moved

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Return the autocast context of forward passes, or a no-op one."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def describe(self) -> dict[str, object]:
        return {
            "device": str(self.device),
            "bf16_autocast": self.bf16,
            "channels_last": self.channels_last,
            "torch_compile": self.compile,
        }


def make_accelerator(
    device: torch.device, *, bf16: bool | None, channels_last: bool | None, compile: bool
) -> Accelerator:
    """Build an :class:`Accelerator`; bf16 and channels_last default to on for CUDA only."""
    on_cuda = device.type == "cuda"
    if on_cuda:
        # Fixed input shapes, so letting cuDNN pick the fastest kernels pays off.
        torch.backends.cudnn.benchmark = True
    return Accelerator(
        device=device,
        bf16=on_cuda if bf16 is None else bf16,
        channels_last=on_cuda if channels_last is None else channels_last,
        compile=compile,
    )
