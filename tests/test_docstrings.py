"""Every public name documents itself: a docstring with an Examples section that runs."""

from __future__ import annotations

import importlib
import inspect

import pytest

PUBLIC_MODULES = [
    "mnist_fusion.data",
    "mnist_fusion.models",
    "mnist_fusion.losses",
    "mnist_fusion.metrics",
    "mnist_fusion.training",
    "mnist_fusion.checkpoint",
    "mnist_fusion.testing",
]


def _public_callables():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            is_error = inspect.isclass(obj) and issubclass(obj, Exception)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and not is_error:
                yield pytest.param(obj, id=f"{module_name}.{name}")


def _public_errors():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, Exception):
                yield pytest.param(obj, id=f"{module_name}.{name}")


@pytest.mark.parametrize("error", list(_public_errors()))
def test_public_error_has_docstring(error):
    # An exception's docstring describes when it is raised; its constructor is not public API.
    assert inspect.getdoc(error) != inspect.getdoc(Exception)


@pytest.mark.parametrize("obj", list(_public_callables()))
def test_public_name_has_example(obj):
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{obj.__qualname__} has no docstring"
    assert "Examples:" in doc, f"{obj.__qualname__} has no Examples section"
    assert ">>>" in doc, f"{obj.__qualname__}'s Examples section has no doctest"


@pytest.mark.parametrize("obj", list(_public_callables()))
def test_public_name_documents_arguments(obj):
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    names = [n for n in parameters if n not in ("self", "args", "kwargs", "draw")]
    doc = (inspect.getdoc(obj) or "") + (inspect.getdoc(target) or "")
    if names and not _is_dataclass_or_tuple(obj):
        assert "Args:" in doc, f"{obj.__qualname__} takes {names} but has no Args section"


def _is_dataclass_or_tuple(obj) -> bool:
    # Dataclass configs and NamedTuples document their fields under Attributes instead.
    return hasattr(obj, "__dataclass_fields__") or hasattr(obj, "_fields")
