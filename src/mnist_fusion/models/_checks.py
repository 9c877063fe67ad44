"""Validation shared by the model configurations."""

from __future__ import annotations

import torch


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ValueError naming ``value`` and the valid ``choices`` unless it is one of them."""
    if value not in choices:
        raise ValueError(f"Invalid `{name}`={value!r}; expected one of {list(choices)}.")


def is_tracing() -> bool:
    """Return whether torch.compile or torch.export is tracing the current call.

    A traced graph cannot branch on tensor values, so value checks skip themselves then.
    """
    # Older torch releases may lack torch.compiler.is_exporting.
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return torch.compiler.is_compiling() or (is_exporting is not None and is_exporting())
