"""Model size and cost: parameter count and multiply-accumulates per image."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mnist_fusion.models.fusion import FusionModel

__all__ = ["ModelComplexity", "model_complexity"]


class ModelComplexity(NamedTuple):
    """Size and cost of a model.

    Attributes:
        parameters: Number of trainable and frozen parameters (buffers excluded).
        macs_per_image: Multiply-accumulates of one forward pass on one image and side
            value, counted over convolutions and linear layers.

    Examples:
        >>> ModelComplexity(parameters=30608, macs_per_image=1926356).parameters
        30608
    """

    parameters: int
    macs_per_image: int


def model_complexity(model: FusionModel) -> ModelComplexity:
    """Count the parameters of ``model`` and its multiply-accumulates per image.

    The count runs one forward pass on a zero image and side value 0 in eval mode, with
    forward hooks on every ``Conv2d`` and ``Linear`` layer. These layers hold nearly all
    the arithmetic; normalisation, activations, pooling, the softmax and the exact
    head's gather are left out. The model's mode is restored afterwards and its weights
    and statistics are unchanged.

    Args:
        model: The model to measure; its first parameter's device and dtype are used.

    Returns:
        The parameter count and the multiply-accumulates per image.

    Raises:
        TypeError: If ``model`` is not a FusionModel.

    Examples:
        >>> model_complexity(FusionModel())
        ModelComplexity(parameters=100112, macs_per_image=2585428)
    """
    if not isinstance(model, FusionModel):
        raise TypeError(f"Expected a FusionModel, but got {type(model).__name__}.")
    parameters = sum(p.numel() for p in model.parameters())

    reference = next(model.parameters())
    encoder = model.config.encoder
    image = torch.zeros(
        1,
        encoder.in_channels,
        encoder.image_size,
        encoder.image_size,
        device=reference.device,
        dtype=reference.dtype,
    )
    side = torch.zeros(1, dtype=torch.int64, device=reference.device)

    counts: list[int] = []
    hooks = [
        module.register_forward_hook(lambda m, args, out: counts.append(_macs(m, out)))
        for module in model.modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(image, side)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return ModelComplexity(parameters=parameters, macs_per_image=sum(counts))


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    # Each output value of a convolution or a linear layer is one dot product over the
    # inputs that feed it.
    if isinstance(module, nn.Conv2d):
        kernel_h, kernel_w = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w
    return output.numel() * module.in_features
