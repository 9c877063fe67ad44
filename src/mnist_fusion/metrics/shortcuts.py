"""Side sensitivity: does the predicted sum follow a change of the side input?

A model can reach a high sum accuracy while it ignores its side input, for example when
the side input leaks into the image or the data set pairs a digit with few side values.
The counterfactual check catches that shortcut: it replaces each sample's side value by
another valid value and counts the samples whose predicted sum moves by exactly the
change. That is the right test whenever the target is the digit plus the side inputs,
as in MNIST-sum. For other targets the fraction measures nothing useful.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torchmetrics import Metric

from mnist_fusion.models.fusion import FusionModel
from mnist_fusion.models.side_spec import SideSpec

__all__ = [
    "SideSensitivity",
    "counterfactual_side",
    "evaluate_side_sensitivity",
    "side_sensitivity",
]


class SideSensitivity(Metric):
    """Fraction of samples whose predicted sum moved by exactly the change of the side input.

    Both states are int64 counts registered with ``dist_reduce_fx="sum"``, so the value
    synced across processes equals that of one process that saw every sample. The
    states follow the device of the inputs.

    ``compute()`` returns a 0-d float64 tensor: ``moved / total``, or NaN before the
    first sample.

    Args:
        **kwargs: Passed to ``torchmetrics.Metric``.

    Examples:
        >>> metric = SideSensitivity()
        >>> predicted, changed = torch.tensor([5, 9, 3]), torch.tensor([7, 9, 1])
        >>> metric.update(predicted, changed, torch.tensor([2, 1, -2]))
        >>> round(metric.compute().item(), 4)
        0.6667
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    moved: torch.Tensor
    total: torch.Tensor

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        for name in ("moved", "total"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(  # type: ignore[override]
        self,
        sum_pred: torch.Tensor,
        counterfactual_sum_pred: torch.Tensor,
        delta: torch.Tensor,
    ) -> None:
        """Add one batch of predictions.

        Args:
            sum_pred: Predicted sums with the original side values, integers ``[N]``.
            counterfactual_sum_pred: Predicted sums of the same images with the changed
                side values, integers ``[N]``.
            delta: Changed minus original side value, integers ``[N]``.

        Raises:
            TypeError: If an input is not a tensor.
            ValueError: If a tensor is not a 1-D integer tensor or the shapes differ.
        """
        moved, total = _moved_count(sum_pred, counterfactual_sum_pred, delta)
        if self.moved.device != sum_pred.device:
            self.to(sum_pred.device)
        self.moved = self.moved + moved
        self.total = self.total + total

    def compute(self) -> torch.Tensor:
        """Return ``moved / total`` as a 0-d float64 tensor, NaN when no sample was added."""
        return _fraction(self.moved, self.total)


def side_sensitivity(
    sum_pred: torch.Tensor, counterfactual_sum_pred: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """Compute the side sensitivity of one batch, as :class:`SideSensitivity` does.

    Args:
        sum_pred: Predicted sums with the original side values, integers ``[N]``.
        counterfactual_sum_pred: Predicted sums with the changed side values, integers ``[N]``.
        delta: Changed minus original side value, integers ``[N]``.

    Returns:
        A 0-d float64 tensor: the fraction of samples with
        ``counterfactual_sum_pred - sum_pred == delta``, NaN for an empty batch.

    Raises:
        TypeError: If an input is not a tensor.
        ValueError: If a tensor is not a 1-D integer tensor or the shapes differ.

    Examples:
        >>> side_sensitivity(torch.tensor([4, 4]), torch.tensor([6, 4]), torch.tensor([2, 3]))
        tensor(0.5000, dtype=torch.float64)
    """
    moved, total = _moved_count(sum_pred, counterfactual_sum_pred, delta)
    return _fraction(moved, total)


def counterfactual_side(
    side: torch.Tensor,
    spec: SideSpec,
    generator: torch.Generator | None = None,
    *,
    name: str = "side",
) -> torch.Tensor:
    """Draw, for each sample, another valid value of a categorical side input.

    The new value is uniform over the ``cardinality - 1`` categories other than the
    sample's own: a draw ``r`` uniform in ``[1, cardinality)`` gives
    ``(side + r) % cardinality``. The draws come from ``generator`` on the CPU and are
    then moved to ``side``'s device, so one seed gives the same values on every device.

    Args:
        side: Integer side values ``[N]`` in ``[0, spec.cardinality)``.
        spec: The input's spec; it must be categorical with at least two categories.
        generator: CPU generator for the draws; None uses torch's default generator.
        name: The input's name, for error messages.

    Returns:
        int64 ``[N]`` on ``side``'s device; every entry differs from ``side``.

    Raises:
        TypeError: If ``side`` is not a tensor.
        ValueError: If the spec is continuous or has one category, or ``side`` is not a
            1-D integer tensor within the spec.

    Examples:
        >>> from mnist_fusion.models import SideSpec
        >>> side = torch.tensor([0, 3, 9, 9])
        >>> generator = torch.Generator().manual_seed(0)
        >>> changed = counterfactual_side(side, SideSpec.categorical(10), generator)
        >>> bool((changed != side).all()), bool(((changed >= 0) & (changed <= 9)).all())
        (True, True)
    """
    _check_categorical(name, spec)
    cardinality = spec.cardinality
    assert cardinality is not None
    _check_integer_vector(f"side input {name!r}", side)
    if side.numel() and (int(side.min()) < 0 or int(side.max()) >= cardinality):
        bad = int(side.min()) if int(side.min()) < 0 else int(side.max())
        raise ValueError(
            f"Side input {name!r} has value {bad}, outside its spec {spec.describe()}, "
            f"which admits integers 0 to {cardinality - 1}."
        )

    offset = torch.randint(1, cardinality, side.shape, generator=generator)
    return (side.to(torch.int64) + offset.to(side.device)) % cardinality


@torch.no_grad()
def evaluate_side_sensitivity(
    model: FusionModel,
    batches: Iterable[Mapping[str, object]],
    *,
    names: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Compute the side sensitivity of ``model`` over ``batches``, one side input at a time.

    For each batch the model predicts the sum once with the original side values and
    once per checked input with that input changed by :func:`counterfactual_side` and
    the others kept. Predictions come from :meth:`FusionModel.predict`, so the model runs
    in eval mode and its mode is restored. Batches are moved to the device of the
    model's first parameter.

    A batch's ``missing`` entry (one mask, or masks by name) is passed to the model
    with both predictions. Rows where the changed input is missing are left out of its
    fraction, because the model does not read that input there.

    The result is reproducible: the same model, the same batches in the same order and
    a generator in the same state give the same fractions. The default generator is a
    new one seeded with 0, not torch's global one.

    Args:
        model: The model under test. Its target must be the digit plus the side inputs.
        batches: Iterable of dict batches with ``image`` and ``side`` (a tensor ``[N]``,
            or ``{name: [N]}``), such as a ``BatchLoader`` or a ``DataLoader``.
        names: Side inputs to check; None checks every declared input.
        generator: CPU generator for the changed side values.

    Returns:
        ``{name: fraction}`` for every checked input; ``"side"`` for a model with one
        side input.

    Raises:
        ValueError: If a checked input is continuous or has one category, a name is not
            declared, or ``batches`` yields no sample.
        TypeError: If a batch is not a mapping with ``image`` and ``side``.

    Examples:
        >>> from mnist_fusion.models import FusionHeadConfig, FusionModelConfig
        >>> model = FusionModel(FusionModelConfig(head=FusionHeadConfig(sum_head="exact")))
        >>> batch = {"image": torch.randn(8, 1, 28, 28), "side": torch.arange(8)}
        >>> evaluate_side_sensitivity(model, [batch])
        {'side': 1.0}
    """
    specs = model.config.head.side_specs()
    checked = _checked_names(specs, names)
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    device = next(model.parameters()).device
    metrics = {name: SideSensitivity().to(device) for name in checked}

    for batch in batches:
        image, side = _unpack_batch(batch, device)
        missing = _missing_masks(batch, list(specs), device)
        _, sum_pred = model.predict(image, side, missing=missing)
        side_map = model.head.as_mapping(side)
        for name in checked:
            present = ~missing[name] if missing and name in missing else None
            # Placeholders of missing rows may lie outside the spec; draw from 0 there.
            original = side_map[name] if present is None else side_map[name] * present
            changed = counterfactual_side(original, specs[name], generator, name=name)
            if present is not None:
                changed = torch.where(present, changed, side_map[name])
            counterfactual = _replace_input(side, name, changed)
            _, counterfactual_pred = model.predict(image, counterfactual, missing=missing)
            rows = slice(None) if present is None else present
            metrics[name].update(
                sum_pred[rows], counterfactual_pred[rows], (changed - side_map[name])[rows]
            )

    # compute() sums the counts over the processes of a process group, so a process
    # whose shard is empty still gets the fraction of the whole set.
    fractions = {name: float(metric.compute()) for name, metric in metrics.items()}
    undefined = [name for name, fraction in fractions.items() if math.isnan(fraction)]
    if undefined:
        raise ValueError(
            f"The batches yielded no sample in which side input(s) {undefined} are present, "
            "so their side sensitivity is undefined; pass a non-empty loader, or leave out "
            "inputs that are always missing with `names=`."
        )
    return fractions


def _checked_names(specs: Mapping[str, SideSpec], names: Sequence[str] | None) -> list[str]:
    if isinstance(names, str):
        raise TypeError(f"Expected `names` to be a sequence of names, got the string {names!r}.")
    checked = list(specs) if names is None else list(names)
    unknown = [name for name in checked if name not in specs]
    if unknown:
        raise ValueError(
            f"Unknown side input(s) {unknown}; the model declares {list(specs)}. Pass "
            "`names` from those."
        )
    if not checked:
        raise ValueError("Expected at least one side input in `names`, got none.")
    for name in checked:
        _check_categorical(name, specs[name])
    return checked


def _check_categorical(name: str, spec: SideSpec) -> None:
    if spec.kind != "categorical":
        raise ValueError(
            f"Side input {name!r} is continuous ({spec.describe()}). The counterfactual "
            "check compares the change of the predicted sum with the change of the input, "
            "which needs integer categories; leave it out with `names=`."
        )
    if spec.cardinality is not None and spec.cardinality < 2:
        raise ValueError(
            f"Side input {name!r} has a single category ({spec.describe()}), so it has no "
            "other value to change to; leave it out with `names=`."
        )


def _unpack_batch(
    batch: Mapping[str, object], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]:
    if not isinstance(batch, Mapping) or "image" not in batch or "side" not in batch:
        found = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise TypeError(
            f"Expected dict batches with `image` and `side`, as the datasets of "
            f"mnist_fusion.data yield, but got {found}."
        )
    image = batch["image"]
    side = batch["side"]
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"Expected the batch's `image` to be a tensor, got {type(image).__name__}.")
    if isinstance(side, Mapping):
        return image.to(device), {name: value.to(device) for name, value in side.items()}
    if not isinstance(side, torch.Tensor):
        raise TypeError(
            f"Expected the batch's `side` to be a tensor or a mapping of name to tensor, got "
            f"{type(side).__name__}."
        )
    return image.to(device), side.to(device)


def _missing_masks(
    batch: Mapping[str, object], names: list[str], device: torch.device
) -> dict[str, torch.Tensor] | None:
    """Return a batch's ``missing`` masks by name, on ``device``; None if it has none."""
    missing = batch.get("missing")
    if missing is None:
        return None
    if isinstance(missing, torch.Tensor):
        if len(names) != 1:
            raise ValueError(
                f"Got one `missing` mask, but the model declares the side inputs {names}; "
                "give the batch a mapping of name to mask."
            )
        return {names[0]: missing.to(device)}
    if not isinstance(missing, Mapping):
        raise TypeError(
            f"Expected the batch's `missing` to be a mask or a mapping of name to mask, got "
            f"{type(missing).__name__}."
        )
    return {name: mask.to(device) for name, mask in missing.items()}


def _replace_input(
    side: torch.Tensor | Mapping[str, torch.Tensor], name: str, value: torch.Tensor
) -> torch.Tensor | dict[str, torch.Tensor]:
    # A lone tensor stays a lone tensor, so the model checks it the way it checks the
    # original batch.
    if isinstance(side, Mapping):
        return {**side, name: value}
    return value


def _moved_count(
    sum_pred: torch.Tensor, counterfactual_sum_pred: torch.Tensor, delta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = {
        "sum_pred": sum_pred,
        "counterfactual_sum_pred": counterfactual_sum_pred,
        "delta": delta,
    }
    for label, tensor in tensors.items():
        _check_integer_vector(f"`{label}`", tensor)
    shapes = {label: list(tensor.shape) for label, tensor in tensors.items()}
    if len({tuple(shape) for shape in shapes.values()}) != 1:
        raise ValueError(f"Expected three tensors of one shape [N], but got shapes {shapes}.")

    moved = (counterfactual_sum_pred.to(torch.int64) - sum_pred.to(torch.int64)) == delta
    return moved.sum(), torch.tensor(moved.numel(), device=moved.device)


def _check_integer_vector(label: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"Expected {label} to be a tensor, but got {type(tensor).__name__}.")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(
            f"Expected integer values for {label}, but got dtype {tensor.dtype}; pass "
            "predicted sums such as FusionModel.predict returns."
        )
    if tensor.ndim != 1:
        raise ValueError(f"Expected {label} of shape [N], but got {list(tensor.shape)}.")


def _fraction(count: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    if int(total) == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=total.device)
    return count.to(torch.float64) / total.to(torch.float64)
