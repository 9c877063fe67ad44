"""Checks of a metric update: shapes, dtypes and value ranges of outputs and targets."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mnist_fusion.models.fusion import FusionOutput

__all__ = ["check_update", "is_two_image"]


def is_two_image(output: FusionOutput, batch: Mapping[str, torch.Tensor]) -> bool:
    """Return whether ``output`` and ``batch`` are a two-image addition batch.

    Raises:
        ValueError: If only one of the two carries the second image's digit.
    """
    has_logits = getattr(output, "second_digit_logits", None) is not None
    has_target = "second_digit" in batch
    if has_logits and not has_target:
        raise ValueError(
            "The output has `second_digit_logits` but the batch has no `second_digit`; "
            "pass the second image's labels to score a two-image model."
        )
    if has_target and not has_logits:
        raise ValueError(
            "The batch has `second_digit` but the output has no `second_digit_logits`; "
            "score a two-image batch with a model that predicts both digits."
        )
    return has_logits


def check_update(
    output: FusionOutput,
    batch: Mapping[str, torch.Tensor],
    *,
    num_classes: int,
    max_sum: int,
) -> bool:
    """Check one metric update and return whether it is a two-image batch.

    Raises:
        ValueError: Naming the field and the value that is wrong.
    """
    two_image = is_two_image(output, batch)
    names = ("digit", "second_digit", "sum") if two_image else ("digit", "side", "sum")
    for name in names:
        if name not in batch:
            raise ValueError(f"Missing `{name}`: the batch contains {sorted(batch)}.")
    if not two_image and isinstance(batch["side"], Mapping):
        # Named side inputs were checked by the model against their specs; consistency
        # reads them through the targets.
        names = ("digit", "sum")

    size = _check_logits("digit logits", output.digit_logits, None, num_classes)
    if two_image:
        _check_logits("second digit logits", output.second_digit_logits, size, num_classes)
    _check_sum_prediction(output, size, max_sum)

    digit_high = num_classes - 1
    # max_sum is the largest digit plus the largest side value, as in FusionModelConfig.
    limits = {"digit": digit_high, "second_digit": digit_high, "sum": max_sum}
    limits["side"] = max_sum - digit_high
    for name in names:
        _check_target(name, batch[name], size, limits[name])
    return two_image


def _check_logits(name: str, logits: torch.Tensor, size: int | None, num_classes: int) -> int:
    if not logits.is_floating_point():
        raise ValueError(f"Expected floating-point {name}, but got dtype {logits.dtype}.")
    rows = logits.shape[0] if logits.ndim == 2 else -1
    if logits.ndim != 2 or logits.shape[1] != num_classes or (size is not None and rows != size):
        expected = f"[{size if size is not None else 'N'}, {num_classes}]"
        raise ValueError(
            f"Expected {name} of shape {expected}, but got {list(logits.shape)}; set "
            "`num_classes` to the model's number of digit classes."
        )
    return rows


def _check_sum_prediction(output: FusionOutput, size: int, max_sum: int) -> None:
    if output.sum_logits is not None:
        if output.sum_logits.shape != (size, max_sum + 1):
            raise ValueError(
                f"Expected `sum_logits` of shape [{size}, {max_sum + 1}] (max_sum={max_sum}), "
                f"but got {list(output.sum_logits.shape)}; set `max_sum` to the model's."
            )
        return
    if output.sum is None:
        raise ValueError(
            "The metrics need a sum prediction, but the output contains neither `sum` nor "
            "`sum_logits`."
        )
    if output.sum.shape != (size,):
        raise ValueError(
            f"Expected `sum prediction` of shape [{size}] to match the digit logits, "
            f"but got {list(output.sum.shape)}."
        )
    if not output.sum.is_floating_point():
        raise ValueError(
            f"Expected a floating-point `sum prediction`, but got dtype {output.sum.dtype}."
        )


def _check_target(name: str, target: torch.Tensor, size: int, high: int) -> None:
    if target.shape != (size,):
        raise ValueError(
            f"Expected `{name}` of shape [{size}] to match the digit logits, "
            f"but got {list(target.shape)}."
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(
            f"Expected integer `{name}` values, but got dtype {target.dtype}; convert "
            "whole-number floats with .long()."
        )
    if target.numel() == 0:
        return
    low_value, high_value = int(target.min()), int(target.max())
    if low_value < 0 or high_value > high:
        bad = low_value if low_value < 0 else high_value
        raise ValueError(f"Invalid `{name}` value {bad}: expected values in [0, {high}].")
