"""Validation shared by the model configurations."""

from __future__ import annotations


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ValueError naming ``value`` and the valid ``choices`` unless it is one of them."""
    if value not in choices:
        raise ValueError(f"Invalid `{name}`={value!r}; expected one of {list(choices)}.")
