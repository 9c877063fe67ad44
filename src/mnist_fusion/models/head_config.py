"""Configuration of the fusion head: its side inputs, what it fuses and its sum head."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from mnist_fusion.models._checks import check_choice
from mnist_fusion.models.side_encoding import SIDE_ENCODINGS
from mnist_fusion.models.side_spec import SideSpec, specs_from_dict

__all__ = ["COMBINE_CHOICES", "DEFAULT_SIDE_NAME", "FUSE_CHOICES", "SUM_HEADS", "FusionHeadConfig"]

FUSE_CHOICES = ("probs", "logits", "features")
"""Inputs that a learned head can read from the encoder (``FusionHeadConfig.fuse``)."""

COMBINE_CHOICES = ("concat", "film", "attention")
"""Ways a learned head joins its input with the side codes (``FusionHeadConfig.combine``)."""

SUM_HEADS = ("regression", "classification", "exact")
"""The sum heads (``FusionHeadConfig.sum_head``)."""

DEFAULT_SIDE_NAME = "side"
"""Name of the one side input of a config without ``side_inputs``."""


@dataclass(frozen=True)
class FusionHeadConfig:
    """Shape of a :class:`~mnist_fusion.models.FusionHead`.

    A head reads either one integer side input, described by ``num_side_values``,
    ``side_encoding`` and ``side_dim``, or the named inputs of ``side_inputs``, each
    with a :class:`SideSpec` of its own. Every size comes from these declarations,
    never from a batch.

    Attributes:
        num_side_values: Number of values of the single side input; they must lie in
            ``[0, num_side_values)``.
        fuse: What a learned head reads from the encoder: ``"probs"`` (digit
            probabilities at ``temperature``), ``"logits"`` or ``"features"``.
        temperature: Softmax temperature for ``fuse="probs"``. Below 1 it sharpens the
            probabilities, so that an uncertain digit (say 0.6 / 0.4 between 4 and 9)
            does not drag a regression sum to the mean of the candidates. The softmax keeps
            a gradient path to the encoder at any temperature.
        hidden: Width of the hidden layer of the MLP, and of the tokens that
            ``combine="attention"`` weighs.
        sum_head: ``"regression"``: one real value per sample, ``[N]``.
            ``"classification"``: scores over the sums ``0 .. max_sum``, ``[N, max_sum + 1]``.
            ``"exact"``: no parameters; the log-probabilities of the digit plus every side
            input, ``[N, max_sum + 1]``. It needs categorical inputs and a target that is
            their plain sum with the digit, and it ignores their encodings.
        side_encoding: Code of the single side input: ``"one_hot"`` (width
            ``num_side_values``) or ``"embedding"`` (a learned vector of width ``side_dim``).
        side_dim: Width of ``side_encoding="embedding"``.
        combine: ``"concat"``: the head reads ``[fused, side codes]``. ``"film"``: the
            side codes scale and shift the fused vector, ``fused * (1 + gamma) + beta``.
            ``"attention"``: the fused vector and each side code are projected to
            ``hidden`` wide tokens, and the head reads their average weighted by learned,
            per-sample attention weights.
        side_inputs: Named side inputs ``{name: SideSpec}``; None means one categorical
            input named ``"side"`` described by the three ``side_`` fields above, which
            must then keep their defaults. A dict of dicts (as :meth:`SideSpec.to_dict`
            writes) is converted to specs. The inputs are stored sorted by name, so two
            configs that compare equal build heads with the same weight layout.
        max_sum: Largest value of the sum target. None derives it as the largest digit
            plus the largest value of each categorical input, which needs every input to
            be categorical. Declare it when the target is another function of the inputs.

    Raises:
        ValueError: For an unknown choice, a size below 1, a temperature that is not
            positive, an option that the exact head cannot honour, or a ``max_sum`` that
            cannot be derived.

    Examples:
        >>> FusionHeadConfig(sum_head="exact").num_sums(num_classes=10)
        19
        >>> two = FusionHeadConfig(side_inputs={"a": SideSpec.categorical(10),
        ...                                     "b": SideSpec.categorical(10)})
        >>> two.num_sums(num_classes=10)
        28
        >>> FusionHeadConfig(combine="flim")
        Traceback (most recent call last):
        ...
        ValueError: Invalid `combine`='flim'; expected one of ['concat', 'film', 'attention'].
    """

    num_side_values: int = 10
    fuse: str = "probs"
    temperature: float = 0.1
    hidden: int = 64
    sum_head: str = "regression"
    side_encoding: str = "one_hot"
    side_dim: int = 16
    combine: str = "concat"
    side_inputs: Mapping[str, SideSpec] | None = None
    max_sum: int | None = None

    def __post_init__(self) -> None:
        check_choice("fuse", self.fuse, FUSE_CHOICES)
        check_choice("sum_head", self.sum_head, SUM_HEADS)
        check_choice("side_encoding", self.side_encoding, SIDE_ENCODINGS)
        check_choice("combine", self.combine, COMBINE_CHOICES)
        if self.num_side_values < 1:
            raise ValueError(f"Expected `num_side_values` >= 1, got {self.num_side_values!r}.")
        if not self.temperature > 0:
            raise ValueError(f"Expected `temperature` > 0, got {self.temperature!r}.")
        for name in ("hidden", "side_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected `{name}` >= 1, got {getattr(self, name)!r}.")
        if self.side_inputs is not None:
            specs = specs_from_dict(self.side_inputs)
            object.__setattr__(self, "side_inputs", dict(sorted(specs.items())))
            self._check_single_fields_unset()
        self._check_max_sum()
        if self.sum_head == "exact":
            self._check_exact()

    def __hash__(self) -> int:
        # The generated hash would fail on the side_inputs dict.
        values = [getattr(self, field.name) for field in fields(self)]
        return hash(tuple(tuple(v.items()) if isinstance(v, Mapping) else v for v in values))

    def side_specs(self) -> dict[str, SideSpec]:
        """Return the declared side inputs as ``{name: SideSpec}``, in their order.

        Examples:
            >>> FusionHeadConfig(num_side_values=4).side_specs()["side"].cardinality
            4
        """
        if self.side_inputs is not None:
            return dict(self.side_inputs)
        single = SideSpec.categorical(
            self.num_side_values, encoding=self.side_encoding, dim=self.side_dim
        )
        return {DEFAULT_SIDE_NAME: single}

    def max_sum_for(self, *, num_classes: int) -> int:
        """Return the largest sum: ``max_sum`` if declared, else derived from the specs.

        Args:
            num_classes: Number of digit classes of the encoder.
        """
        if self.max_sum is not None:
            return self.max_sum
        return self.reached_max_sum(num_classes=num_classes)

    def reached_max_sum(self, *, num_classes: int) -> int:
        """Return the largest digit plus the largest value of each categorical input.

        Raises:
            ValueError: If a side input is continuous, so its largest value is unknown.
        """
        return num_classes - 1 + sum(spec.max_value for spec in self.side_specs().values())

    def num_sums(self, *, num_classes: int) -> int:
        """Number of possible sums ``0 .. max_sum``: the width of a sum distribution.

        Args:
            num_classes: Number of digit classes of the encoder.

        Returns:
            ``max_sum + 1``; for one side input and no declared ``max_sum``,
            ``num_classes + num_side_values - 1``.

        Examples:
            >>> FusionHeadConfig(num_side_values=4).num_sums(num_classes=10)
            13
        """
        return self.max_sum_for(num_classes=num_classes) + 1

    def _check_single_fields_unset(self) -> None:
        defaults = (("num_side_values", 10), ("side_encoding", "one_hot"), ("side_dim", 16))
        for name, default in defaults:
            if getattr(self, name) != default:
                raise ValueError(
                    f"`{name}`={getattr(self, name)!r} describes the single side input, but "
                    f"`side_inputs` declares {sorted(self.side_specs())}; set the values and "
                    "encoding of each input in its SideSpec instead."
                )

    def _check_max_sum(self) -> None:
        max_sum = self.max_sum
        if max_sum is not None:
            if isinstance(max_sum, bool) or not isinstance(max_sum, int) or max_sum < 0:
                raise ValueError(f"Expected `max_sum` to be an integer >= 0, got {max_sum!r}.")
            return
        continuous = self._continuous_names()
        if continuous:
            raise ValueError(
                f"Side input(s) {continuous} are continuous, so the range of the sum "
                "target cannot be derived from the specs; declare it with `max_sum`."
            )

    def _continuous_names(self) -> list[str]:
        return [name for name, spec in self.side_specs().items() if spec.kind == "continuous"]

    def _check_exact(self) -> None:
        # The exact head reads only the digit distribution and the side values. An option
        # that it would ignore must not look as if it had been applied.
        defaults = (("fuse", "probs"), ("combine", "concat"), ("side_encoding", "one_hot"))
        for name, default in defaults:
            if getattr(self, name) != default:
                raise ValueError(
                    f"`sum_head`='exact' reads the digit probabilities and the side value "
                    f"only, so `{name}`={getattr(self, name)!r} has no effect; leave `{name}` "
                    f"at {default!r} or choose a learned sum head."
                )
        continuous = self._continuous_names()
        if continuous:
            raise ValueError(
                f"`sum_head`='exact' adds integer side inputs to the digit, but {continuous} "
                "are continuous; choose the regression head for them."
            )
