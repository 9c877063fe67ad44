"""Typed side-input specs: what values a named side input takes and how a head encodes it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mnist_fusion.models._checks import check_choice, is_tracing

__all__ = [
    "CATEGORICAL_ENCODINGS",
    "CONTINUOUS_ENCODINGS",
    "SIDE_KINDS",
    "SideSpec",
    "check_side_inputs",
    "specs_from_dict",
]

SIDE_KINDS = ("categorical", "continuous")
"""Kinds of side input (``SideSpec.kind``)."""

CATEGORICAL_ENCODINGS = ("one_hot", "embedding")
"""Encodings of a categorical side input."""

CONTINUOUS_ENCODINGS = ("linear", "fourier")
"""Encodings of a continuous side input."""


@dataclass(frozen=True)
class SideSpec:
    """The values of one side input and the code a learned head reads for it.

    Build specs with :meth:`categorical` or :meth:`continuous`. A spec is plain data,
    so it is stored in a model's configuration and its checkpoint, and the model checks
    every batch of that input against it.

    Attributes:
        kind: ``"categorical"`` (integers ``0 .. cardinality - 1``) or
            ``"continuous"`` (floats in ``[low, high)``).
        cardinality: Number of categories; categorical only.
        low: Smallest value (inclusive); continuous only.
        high: Bound above every value (exclusive); continuous only.
        encoding: ``"one_hot"`` or ``"embedding"`` for a categorical input,
            ``"linear"`` (a learned projection of the scaled value) or ``"fourier"``
            (fixed sines and cosines of the scaled value) for a continuous one.
        dim: Width of an ``"embedding"``, ``"linear"`` or ``"fourier"`` code; even for
            ``"fourier"``, which uses ``dim / 2`` frequencies.
        prior: Probability of each category, which the exact sum head averages over
            when the input is missing; None means uniform. Categorical only.

    Raises:
        ValueError: For an unknown kind or encoding, a field that the kind does not use,
            an empty range, or a prior that is not a positive distribution over the
            categories.

    Examples:
        >>> SideSpec.categorical(10).width
        10
        >>> SideSpec.continuous(0.0, 1.0, encoding="fourier", dim=8).width
        8
        >>> SideSpec.categorical(3, encoding="linear")
        Traceback (most recent call last):
        ...
        ValueError: Invalid `encoding`='linear'; expected one of ['one_hot', 'embedding'].
    """

    kind: str
    cardinality: int | None = None
    low: float | None = None
    high: float | None = None
    encoding: str = "one_hot"
    dim: int = 16
    prior: tuple[float, ...] | None = None

    @classmethod
    def categorical(
        cls,
        cardinality: int,
        *,
        encoding: str = "one_hot",
        dim: int = 16,
        prior: tuple[float, ...] | None = None,
    ) -> SideSpec:
        """Return the spec of an integer input in ``[0, cardinality)``."""
        return cls("categorical", cardinality=cardinality, encoding=encoding, dim=dim, prior=prior)

    @classmethod
    def continuous(
        cls, low: float = 0.0, high: float = 1.0, *, encoding: str = "linear", dim: int = 16
    ) -> SideSpec:
        """Return the spec of a real-valued input in ``[low, high)``."""
        return cls("continuous", low=low, high=high, encoding=encoding, dim=dim)

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, SIDE_KINDS)
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"Expected `dim` to be an integer >= 1, got {self.dim!r}.")
        if self.kind == "categorical":
            self._check_categorical()
        else:
            self._check_continuous()

    @property
    def width(self) -> int:
        """Width of the code a learned head reads: the cardinality for one-hot, else dim."""
        if self.encoding == "one_hot":
            assert self.cardinality is not None
            return self.cardinality
        return self.dim

    @property
    def max_value(self) -> int:
        """Largest category; categorical only.

        Raises:
            ValueError: For a continuous spec, whose values have no largest one.
        """
        if self.cardinality is None:
            raise ValueError(f"{self.describe()} has no largest value: it is continuous.")
        return self.cardinality - 1

    def log_prior(self, *, device: torch.device | None = None) -> torch.Tensor:
        """Return the log-probabilities of the categories, ``[cardinality]`` float32."""
        if self.cardinality is None:
            raise ValueError(f"{self.describe()} has no prior: it is continuous.")
        if self.prior is None:
            return torch.full((self.cardinality,), -math.log(self.cardinality), device=device)
        return torch.tensor(self.prior, device=device).log()

    def describe(self) -> str:
        """Return the spec in short for messages: ``categorical(10, encoding='one_hot')``."""
        if self.kind == "categorical":
            return f"categorical({self.cardinality}, encoding={self.encoding!r})"
        return f"continuous([{self.low}, {self.high}), encoding={self.encoding!r})"

    def check(
        self, name: str, values: torch.Tensor, size: int, present: torch.Tensor | None
    ) -> None:
        """Raise ValueError unless ``values`` fit this spec.

        Args:
            name: The input's name, for the message.
            values: The input's values ``[N]``.
            size: The batch size ``N`` the values must match.
            present: Boolean ``[N]``: rows whose value is read. Missing rows may hold
                any placeholder of the right dtype. None means every row.
        """
        if not isinstance(values, torch.Tensor):
            raise TypeError(
                f"Expected side input {name!r} to be a tensor, but got {type(values).__name__}."
            )
        if values.shape != (size,):
            raise ValueError(
                f"Expected side input {name!r} of shape [{size}] to match the images, "
                f"but got {list(values.shape)}."
            )
        self._check_dtype(name, values)
        if is_tracing() or values.numel() == 0:
            # A traced graph cannot branch on tensor values, so compiled and exported
            # models check shapes and dtypes only.
            return

        read = values if present is None else values[present]
        if read.numel() == 0:
            return
        self._check_range(name, read)

    def _check_dtype(self, name: str, values: torch.Tensor) -> None:
        is_integer = not (
            values.is_floating_point() or values.is_complex() or values.dtype == torch.bool
        )
        if self.kind == "categorical" and not is_integer:
            raise ValueError(
                f"Expected integer values for side input {name!r}, {self.describe()}, "
                f"but got dtype {values.dtype}; convert whole numbers with .long()."
            )
        if self.kind == "continuous" and not values.is_floating_point():
            raise ValueError(
                f"Expected floating-point values for side input {name!r}, {self.describe()}, "
                f"but got dtype {values.dtype}; convert them with .float()."
            )

    def _check_range(self, name: str, values: torch.Tensor) -> None:
        if self.kind == "categorical":
            assert self.cardinality is not None
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= self.cardinality:
                bad = low if low < 0 else high
                raise ValueError(
                    f"Side input {name!r} has value {bad}, outside its spec "
                    f"{self.describe()}, which admits integers 0 to {self.cardinality - 1}."
                )
            return

        if not bool(torch.isfinite(values).all()):
            bad_value = values[~torch.isfinite(values)][0].item()
            raise ValueError(
                f"Side input {name!r} has value {bad_value}, but its spec "
                f"{self.describe()} admits finite values only."
            )
        low_value, high_value = values.min().item(), values.max().item()
        assert self.low is not None and self.high is not None
        if low_value < self.low or high_value >= self.high:
            outside = low_value if low_value < self.low else high_value
            raise ValueError(
                f"Side input {name!r} has value {outside}, outside its spec {self.describe()}."
            )

    def _check_categorical(self) -> None:
        check_choice("encoding", self.encoding, CATEGORICAL_ENCODINGS)
        cardinality = self.cardinality
        if isinstance(cardinality, bool) or not isinstance(cardinality, int) or cardinality < 1:
            raise ValueError(
                f"Expected `cardinality` to be an integer >= 1 for a categorical side "
                f"input, got {cardinality!r}."
            )
        if self.low is not None or self.high is not None:
            raise ValueError(
                "A categorical side input takes the integers 0 .. cardinality - 1, so "
                f"`low`={self.low!r} and `high`={self.high!r} must be left unset."
            )
        if self.prior is not None:
            object.__setattr__(self, "prior", tuple(float(p) for p in self.prior))
            self._check_prior(cardinality)

    def _check_prior(self, cardinality: int) -> None:
        prior = self.prior
        assert prior is not None
        if len(prior) != cardinality:
            raise ValueError(
                f"Expected a `prior` of {cardinality} probabilities, one per category, "
                f"but got {len(prior)}."
            )
        if not all(p > 0 and math.isfinite(p) for p in prior):
            # A zero would give the missing-input sum distribution terms of -inf only.
            raise ValueError(
                f"Expected every `prior` probability to be positive and finite, got {prior!r}; "
                "give impossible categories a small positive probability."
            )
        if not math.isclose(sum(prior), 1.0, abs_tol=1e-6):
            raise ValueError(f"Expected `prior` to sum to 1, but it sums to {sum(prior)!r}.")

    def _check_continuous(self) -> None:
        if self.encoding == "one_hot":
            # The field default belongs to the categorical kind.
            object.__setattr__(self, "encoding", "linear")
        check_choice("encoding", self.encoding, CONTINUOUS_ENCODINGS)
        if self.cardinality is not None or self.prior is not None:
            raise ValueError(
                "A continuous side input has a range, not categories, so `cardinality` "
                f"={self.cardinality!r} and `prior`={self.prior!r} must be left unset."
            )
        for field_name in ("low", "high"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(
                    f"Expected `{field_name}` to be a number for a continuous side input, "
                    f"got {value!r}."
                )
            object.__setattr__(self, field_name, float(value))
        assert self.low is not None and self.high is not None
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(
                f"Expected finite `low` < `high`, but got low={self.low!r}, high={self.high!r}."
            )
        if self.encoding == "fourier" and self.dim % 2:
            raise ValueError(
                f"Expected an even `dim` for Fourier features (a sine and a cosine per "
                f"frequency), got {self.dim!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as plain JSON-compatible data."""
        return asdict(self)


def specs_from_dict(data: Mapping[str, SideSpec | Mapping[str, Any]]) -> dict[str, SideSpec]:
    """Return ``{name: SideSpec}`` from specs or the dicts of :meth:`SideSpec.to_dict`.

    Raises:
        TypeError: If a name is not a string or a spec is neither a spec nor a mapping.
        ValueError: If there are no specs, or a dict is not a valid spec.
    """
    if not isinstance(data, Mapping):
        raise TypeError(
            f"Expected `side_inputs` to be a mapping of name to SideSpec, got "
            f"{type(data).__name__}."
        )
    if not data:
        raise ValueError("Expected at least one side input in `side_inputs`, got none.")
    specs: dict[str, SideSpec] = {}
    for name, spec in data.items():
        if not isinstance(name, str) or not name or "." in name:
            # Names key the head's modules, and torch reserves "." in module names.
            raise TypeError(
                f"Expected side input names to be non-empty strings without '.', got {name!r}."
            )
        if isinstance(spec, Mapping):
            try:
                spec = SideSpec(**spec)
            except TypeError as error:
                raise ValueError(f"Invalid spec for side input {name!r}: {error}") from error
        if not isinstance(spec, SideSpec):
            raise TypeError(
                f"Expected a SideSpec for side input {name!r}, got {type(spec).__name__}."
            )
        specs[name] = spec
    return specs


def check_side_inputs(
    specs: Mapping[str, SideSpec],
    side: Mapping[str, torch.Tensor],
    size: int,
    missing: Mapping[str, torch.Tensor] | None,
) -> None:
    """Raise ValueError unless ``side`` has exactly the declared inputs, each fitting its spec.

    Args:
        specs: The declared inputs.
        side: The given inputs, ``{name: [N]}``.
        size: The batch size ``N``.
        missing: Boolean masks ``{name: [N]}``, True where the input is missing; the
            values of missing rows are not range-checked.
    """
    absent = [name for name in specs if name not in side]
    if absent:
        raise ValueError(
            f"Side input(s) {absent} are missing from the mapping; the model declares "
            f"{_listing(specs)}. Pass every declared input (a placeholder value where it "
            "is missing, with `missing=` marking those rows)."
        )
    unknown = sorted(name for name in side if name not in specs)
    if unknown:
        raise ValueError(f"Unknown side input(s) {unknown}; the model declares {_listing(specs)}.")

    missing = missing or {}
    for name, spec in specs.items():
        mask = missing.get(name)
        spec.check(name, side[name], size, None if mask is None else ~mask)


def _listing(specs: Mapping[str, SideSpec]) -> str:
    return "{" + ", ".join(f"{name!r}: {spec.describe()}" for name, spec in specs.items()) + "}"
