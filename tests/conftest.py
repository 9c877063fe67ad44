"""Shared fixtures: tiny MNIST-format IDX files that the tests write themselves."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hypothesis import HealthCheck, settings

from mnist_fusion.data import write_idx

settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

TINY_TRAIN = 1200
TINY_TEST = 300


def make_digit_images(labels: torch.Tensor, *, seed: int) -> torch.Tensor:
    """Draw uint8 28x28 images a small CNN can classify: a fixed blob per class plus noise."""
    generator = torch.Generator().manual_seed(1234)
    templates = (torch.rand(10, 28, 28, generator=generator) > 0.7).float() * 200
    noise_generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(len(labels), 28, 28, generator=noise_generator) * 80
    return (templates[labels] * 0.7 + noise).clamp(0, 255).to(torch.uint8)


def write_tiny_mnist(root: Path, *, train: int = TINY_TRAIN, test: int = TINY_TEST) -> Path:
    """Write the four MNIST IDX files, with small synthetic splits, under ROOT/MNIST/raw."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train, 0), ("t10k", test, 1)):
        labels = torch.arange(count) % 10
        labels = labels[torch.randperm(count, generator=torch.Generator().manual_seed(seed))]
        write_idx(raw / f"{prefix}-images-idx3-ubyte", make_digit_images(labels, seed=seed))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.to(torch.uint8))
    return root


@pytest.fixture(scope="session")
def tiny_mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root folder whose MNIST/raw contains tiny synthetic train and test IDX files."""
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny_mnist"))


class Hostile:
    """An object that pickles as a call of ``function(*arguments)``, for unpickler tests."""

    def __init__(self, function, *arguments):
        self.function = function
        self.arguments = arguments

    def __reduce__(self):
        return (self.function, self.arguments)


def import_example(path: Path, name: str) -> ModuleType:
    """Import an example script by its path, without running its ``main``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
