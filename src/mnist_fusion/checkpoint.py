"""Model files: one file contains the configuration and the weights, and rebuilds the model.

The file is ``torch.save`` of plain types only (str, int, float, dict, list, tensors),
read back with ``torch.load(weights_only=True)``, which refuses any other object, so
loading never runs code from the file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mnist_fusion._io import atomic_write_bytes
from mnist_fusion.models.fusion import FusionModel, FusionModelConfig

__all__ = ["CheckpointError", "load", "load_metadata", "save"]

FORMAT = "mnist_fusion.model"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a model checkpoint, is damaged, or does not fit its configuration."""


def save(
    model: FusionModel, path: str | os.PathLike[str], *, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model`` to ``path`` atomically: its configuration, weights and ``metadata``.

    Args:
        model: The model to save.
        path: Destination file; its folder must exist.
        metadata: Optional plain data (str, int, float, bool, None, lists, tuples, and
            dicts with str keys) stored beside the weights, such as the seed the model
            was trained with.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: If the folder of ``path`` does not exist.
        TypeError: If ``model`` is not a FusionModel, or ``metadata`` contains a value of
            another type, which :func:`load` could not read back.

    Examples:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.pt"
        >>> _ = save(FusionModel(), path, metadata={"seed": 0})
        >>> type(load(path)).__name__, load_metadata(path)
        ('FusionModel', {'seed': 0})
    """
    if not isinstance(model, FusionModel):
        raise TypeError(f"Expected a FusionModel, but got {type(model).__name__}.")
    _check_plain(dict(metadata or {}), "metadata")

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def load(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> FusionModel:
    """Rebuild the model saved at ``path``, in eval mode.

    The stored configuration rebuilds any encoder, fusion and sum head. A file written by
    an earlier version, whose configuration lacks the newer fields, loads with their
    defaults, which reproduce the earlier layers.

    Args:
        path: A file written by :func:`save`.
        map_location: Device for the weights.

    Returns:
        The model with its weights loaded.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        CheckpointError: If the file is not a checkpoint, is truncated, or its weights
            do not fit its configuration.

    Examples:
        >>> import tempfile, pathlib
        >>> from mnist_fusion.models import FusionHeadConfig
        >>> config = FusionModelConfig(head=FusionHeadConfig(sum_head="exact"))
        >>> path = save(FusionModel(config), pathlib.Path(tempfile.mkdtemp()) / "model.pt")
        >>> load(path).config == config
        True
    """
    payload = _read(path, map_location)
    config = _config_from(payload, path)
    model = FusionModel(config)

    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"{str(path)!r} contains no weights: expected a `state_dict` mapping, but got "
            f"{type(state_dict).__name__}."
        )
    missing, unexpected = _compare_keys(model.state_dict(), state_dict)
    if missing or unexpected:
        raise CheckpointError(
            f"The weights in {str(path)!r} do not fit its configuration: missing keys "
            f"{missing}, unexpected keys {unexpected}."
        )
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CheckpointError(f"The weights in {str(path)!r} do not fit: {error}") from error
    return model.eval()


def load_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the metadata stored by :func:`save`.

    Args:
        path: A file written by :func:`save`.

    Returns:
        The metadata dict, empty when none was saved.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        CheckpointError: If the file is not a checkpoint.

    Examples:
        >>> import tempfile, pathlib
        >>> path = save(FusionModel(), pathlib.Path(tempfile.mkdtemp()) / "model.pt")
        >>> load_metadata(path)
        {}
    """
    return dict(_read(path, "cpu").get("metadata", {}))


def _read(path: str | os.PathLike[str], map_location: str | torch.device) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} not found.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    # Bytes that are not a zip archive go to the legacy pickle reader, which fails on
    # arbitrary data with almost any exception (KeyError, IndexError, struct.error, ...).
    except Exception as error:
        raise CheckpointError(
            f"{str(path)!r} is not a readable mnist_fusion checkpoint (truncated, damaged, "
            f"or another kind of file): {_first_line(error)}"
        ) from error

    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not an mnist_fusion model checkpoint: expected "
            f"format {FORMAT!r}. Write model files with mnist_fusion.checkpoint.save."
        )
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has format version {payload.get('format_version')!r}; this "
            f"version of mnist_fusion reads version {FORMAT_VERSION}."
        )
    return payload


def _config_from(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> FusionModelConfig:
    try:
        return FusionModelConfig.from_dict(payload["config"])
    except (KeyError, ValueError) as error:
        message = f"{str(path)!r} contains an invalid configuration: {error}"
        raise CheckpointError(message) from error


def _compare_keys(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str]]:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    return missing, unexpected


_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _check_plain(value: object, where: str) -> None:
    # Exact type checks: numpy's float64 subclasses float but pickles as a numpy object,
    # which the weights_only reader in load rejects.
    if type(value) in _PLAIN_SCALARS:
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):  # type: ignore[arg-type]
            _check_plain(item, f"{where}[{index}]")
        return
    if type(value) is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise TypeError(f"Expected str keys in `{where}`, but got key {key!r}.")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"Expected plain data in `{where}` (str, int, float, bool, None, list, tuple, dict), "
        f"but got {type(value).__module__}.{type(value).__qualname__} {value!r}; convert it, "
        "for example with str() or float()."
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
