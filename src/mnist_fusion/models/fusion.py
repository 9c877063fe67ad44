"""The full multi-input model: encoder plus fusion head, with input checks and predict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from mnist_fusion.models._checks import is_tracing
from mnist_fusion.models.encoder import ConvEncoder, ConvEncoderConfig
from mnist_fusion.models.head import FusionHead, FusionHeadConfig, SideInputs
from mnist_fusion.models.side_spec import check_side_inputs
from mnist_fusion.models.sum_heads import convolve_log_probs, expected_sum

__all__ = ["FusionModel", "FusionModelConfig", "FusionOutput", "predicted_digit", "predicted_sum"]


class FusionOutput(NamedTuple):
    """Outputs of :class:`FusionModel`.

    A NamedTuple, so ``torch.compile`` and ``torch.export`` treat it as a tuple.

    Attributes:
        digit_logits: Unnormalised digit scores ``[N, num_classes]``.
        sum: The sum as a real value ``[N]``: the regression head's prediction, or the
            mean of ``sum_logits`` for the classification and exact heads. None when
            not set.
        sum_logits: Scores over the possible sums ``[N, max_sum + 1]`` (the classification
            head), or their log-probabilities (the exact head); None for regression.
        second_digit_logits: Digit scores of the second image in two-image addition
            ``[N, num_classes]``; None otherwise.
        fusion_weights: Attention weights of ``combine="attention"`` over the fused
            vector and each side input ``[N, 1 + number of side inputs]``; None otherwise.

    Examples:
        >>> output = FusionOutput(torch.zeros(2, 10), sum=torch.tensor([3.0, 7.0]))
        >>> output.sum_logits is None, output.second_digit_logits is None
        (True, True)
    """

    digit_logits: torch.Tensor
    sum: torch.Tensor | None = None
    sum_logits: torch.Tensor | None = None
    second_digit_logits: torch.Tensor | None = None
    fusion_weights: torch.Tensor | None = None


@dataclass(frozen=True)
class FusionModelConfig:
    """Configuration of a :class:`FusionModel`: an encoder and a head.

    Attributes:
        encoder: Encoder options.
        head: Fusion head options.

    Examples:
        >>> config = FusionModelConfig(encoder=ConvEncoderConfig.wide())
        >>> FusionModelConfig.from_dict(config.to_dict()) == config
        True
    """

    encoder: ConvEncoderConfig = field(default_factory=ConvEncoderConfig.small)
    head: FusionHeadConfig = field(default_factory=FusionHeadConfig)

    @property
    def max_sum(self) -> int:
        """Largest possible sum: declared in the head, or the largest digit plus the
        largest value of each side input."""
        return self.head.max_sum_for(num_classes=self.encoder.num_classes)

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as plain JSON-compatible data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionModelConfig:
        """Rebuild a configuration written by :meth:`to_dict`.

        A field missing from ``data`` takes its default, so the dicts of earlier
        versions, which had fewer fields, still load.

        Args:
            data: A dict with ``encoder`` and ``head`` dicts.

        Returns:
            The configuration.

        Raises:
            ValueError: If a key is unknown or missing, or a value is invalid.
        """
        try:
            return cls(
                encoder=ConvEncoderConfig(**data["encoder"]),
                head=FusionHeadConfig(**data["head"]),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"Invalid model configuration {data!r}: {error}") from error


class FusionModel(nn.Module):
    """Multi-input model: ``model(image, side)`` predicts the digit and the sum.

    ``side`` is one integer tensor, or a mapping of name to tensor for the inputs that
    ``FusionHeadConfig.side_inputs`` declares. Each batch is checked against the
    declared specs: a missing or unknown name, a wrong dtype or a value outside its
    spec raises ValueError naming the input, the value and the spec.

    The sum head reads a differentiable function of the encoder's output (digit
    probabilities by default), so the sum loss trains the encoder too.

    With ``sum_head="exact"`` the model also adds two images:
    ``model(image, second_image=other)`` runs the one encoder on both images and
    returns the exact distribution of the sum of their digits, so a loss on the sum
    alone trains the digit classifier.

    Args:
        config: Model configuration; the default is the small fast recipe.

    Examples:
        >>> model = FusionModel(FusionModelConfig())
        >>> out = model(torch.zeros(2, 1, 28, 28), torch.tensor([3, 4]))
        >>> tuple(out.digit_logits.shape), tuple(out.sum.shape)
        ((2, 10), (2,))
        >>> adder = FusionModel(FusionModelConfig(head=FusionHeadConfig(sum_head="exact")))
        >>> pair = adder(torch.zeros(2, 1, 28, 28), second_image=torch.zeros(2, 1, 28, 28))
        >>> tuple(pair.sum_logits.shape), tuple(pair.second_digit_logits.shape)
        ((2, 19), (2, 10))
    """

    def __init__(self, config: FusionModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or FusionModelConfig()
        self.encoder = ConvEncoder(self.config.encoder)
        self.head = FusionHead(
            self.config.head,
            num_classes=self.config.encoder.num_classes,
            num_features=self.encoder.num_features,
        )

    def forward(
        self,
        image: torch.Tensor,
        side: SideInputs | None = None,
        *,
        second_image: torch.Tensor | None = None,
        missing: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    ) -> FusionOutput:
        """Predict the digit and the sum of ``image`` and ``side`` (or ``second_image``).

        Args:
            image: Float images ``[N, in_channels, image_size, image_size]``.
            side: Side values ``[N]`` of the single side input, or ``{name: [N]}`` for
                the declared side inputs.
            second_image: Images of the shape of ``image``, to add instead of ``side``;
                needs ``sum_head="exact"``.
            missing: Boolean masks ``{name: [N]}`` (or one mask ``[N]`` for a single
                input), True where the input is missing. Missing rows may hold any
                placeholder value. Only the exact sum head accepts missing inputs: it
                averages them over their priors, and the digit logits do not change.

        Returns:
            The outputs; which sum fields are set depends on the sum head.

        Raises:
            ValueError: If an input has the wrong shape, dtype or range, if neither or
                both of ``side`` and ``second_image`` are given, or if ``second_image``
                is given to a learned sum head.
        """
        masks = self._check_inputs(image, side, second_image, missing)
        if second_image is not None:
            return self._add_images(image, second_image)
        assert side is not None

        digit_logits, features = self.encoder(image)  # (N, classes), (N, F)
        prediction, weights = self.head.forward_with_weights(
            digit_logits, features, side, masks
        )  # (N,) or (N, K)
        if self.config.head.sum_head == "regression":
            return FusionOutput(digit_logits=digit_logits, sum=prediction, fusion_weights=weights)
        return FusionOutput(
            digit_logits=digit_logits,
            sum=expected_sum(prediction),
            sum_logits=prediction,
            fusion_weights=weights,
        )

    @torch.no_grad()
    def predict(
        self,
        image: torch.Tensor,
        side: SideInputs | None = None,
        *,
        second_image: torch.Tensor | None = None,
        missing: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict the digit and the sum as int64 tensors ``[N]``.

        Runs in eval mode and restores the previous mode afterwards. A regression sum is
        rounded to the nearest integer and clipped to ``[0, max_sum]``; the other heads
        give the most likely sum. For two images, the digit is the first image's.

        Args:
            image: Float images ``[N, C, H, W]``.
            side: Side values ``[N]``, or ``{name: [N]}``.
            second_image: Images to add instead of ``side`` (exact head only).
            missing: Masks of missing side inputs, as in :meth:`forward`.

        Returns:
            ``(digit, sum)``, both int64 ``[N]``.

        Raises:
            ValueError: As :meth:`forward`.

        Examples:
            >>> model = FusionModel(FusionModelConfig(head=FusionHeadConfig(sum_head="exact")))
            >>> digit, total = model.predict(torch.zeros(3, 1, 28, 28), torch.tensor([0, 4, 9]))
            >>> torch.equal(total, digit + torch.tensor([0, 4, 9]))
            True
        """
        was_training = self.training
        self.eval()
        try:
            output = self(image, side, second_image=second_image, missing=missing)
        finally:
            self.train(was_training)
        return predicted_digit(output), predicted_sum(output, self.config.max_sum)

    def _add_images(self, image: torch.Tensor, second_image: torch.Tensor) -> FusionOutput:
        # One encoder pass over both halves: shared weights, and one set of batch
        # statistics in training mode.
        both = torch.cat([image, second_image])  # (2N, C, H, W)
        both_logits, _ = self.encoder(both)  # (2N, classes)
        digit_logits, second_logits = both_logits.split(image.shape[0])  # (N, classes) x 2

        sum_logits = convolve_log_probs(
            digit_logits.log_softmax(dim=-1), second_logits.log_softmax(dim=-1)
        )  # (N, 2 * classes - 1)
        return FusionOutput(
            digit_logits=digit_logits,
            sum=expected_sum(sum_logits),
            sum_logits=sum_logits,
            second_digit_logits=second_logits,
        )

    def _check_inputs(
        self,
        image: torch.Tensor,
        side: SideInputs | None,
        second_image: torch.Tensor | None,
        missing: torch.Tensor | Mapping[str, torch.Tensor] | None,
    ) -> dict[str, torch.Tensor] | None:
        """Check every input and return the missing masks by name (None for none)."""
        self._check_image(image)
        if second_image is not None:
            if missing is not None:
                raise ValueError("`missing` marks side inputs, but two images have none.")
            self._check_second_image(image, side, second_image)
            return None
        if side is None:
            raise ValueError(
                "Expected a `side` tensor [N] of integers, but got None; pass the side "
                "values, or `second_image=` to add two images."
            )

        masks = self._check_missing(missing, image.shape[0])
        if isinstance(side, torch.Tensor) and self.config.head.side_inputs is None:
            if masks is None:
                self._check_side(image, side)
                return None
        specs = self.head.specs
        check_side_inputs(specs, self.head.as_mapping(side), image.shape[0], masks)
        return masks

    def _check_missing(
        self, missing: torch.Tensor | Mapping[str, torch.Tensor] | None, size: int
    ) -> dict[str, torch.Tensor] | None:
        if missing is None:
            return None
        specs = self.head.specs
        if isinstance(missing, torch.Tensor):
            if len(specs) != 1:
                raise ValueError(
                    f"Got one `missing` mask, but the model declares the side inputs "
                    f"{list(specs)}; pass a mapping of name to mask."
                )
            missing = {next(iter(specs)): missing}
        if not isinstance(missing, Mapping):
            raise TypeError(
                f"Expected `missing` to be a mapping of name to boolean mask, got "
                f"{type(missing).__name__}."
            )

        unknown = sorted(name for name in missing if name not in specs)
        if unknown:
            raise ValueError(
                f"`missing` names unknown side input(s) {unknown}; the model declares "
                f"{list(specs)}."
            )
        for name, mask in missing.items():
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise ValueError(
                    f"Expected a boolean mask for missing side input {name!r}, but got "
                    f"{getattr(mask, 'dtype', type(mask).__name__)}."
                )
            if mask.shape != (size,):
                raise ValueError(
                    f"Expected the missing mask of {name!r} of shape [{size}] to match the "
                    f"images, but got {list(mask.shape)}."
                )
        return dict(missing)

    def _check_image(self, image: torch.Tensor) -> None:
        encoder = self.config.encoder
        expected = (encoder.in_channels, encoder.image_size, encoder.image_size)
        if image.ndim != 4 or tuple(image.shape[1:]) != expected:
            raise ValueError(
                f"Expected images of shape [N, {', '.join(map(str, expected))}], "
                f"but got {list(image.shape)}."
            )
        if not image.is_floating_point():
            raise ValueError(
                f"Expected floating-point images, but got dtype {image.dtype}; scale uint8 "
                "pixels to [0, 1] and normalise them first, as the datasets in "
                "mnist_fusion.data do."
            )
        weight_dtype = next(self.encoder.parameters()).dtype
        if image.dtype != weight_dtype and not _autocasting(image.device.type):
            raise ValueError(
                f"Expected images of dtype {weight_dtype}, the dtype of the model's weights, "
                f"but got {image.dtype}; convert the images with .to({weight_dtype}), the "
                f"model with .to({image.dtype}), or run under torch.autocast."
            )

    def _check_second_image(
        self, image: torch.Tensor, side: SideInputs | None, second_image: torch.Tensor
    ) -> None:
        if side is not None:
            raise ValueError(
                "Got both `side` and `second_image`; pass `side` to add a side value, or "
                "`second_image` to add two images."
            )
        if self.config.head.sum_head != "exact":
            raise ValueError(
                f"Two-image addition needs sum_head='exact', but this model has "
                f"sum_head={self.config.head.sum_head!r}, which reads a side value."
            )
        if second_image.shape != image.shape:
            raise ValueError(
                f"Expected `second_image` of shape {list(image.shape)} to match the first "
                f"images, but got {list(second_image.shape)}."
            )
        if second_image.dtype != image.dtype:
            raise ValueError(
                f"Expected `second_image` of dtype {image.dtype} like the first images, "
                f"but got {second_image.dtype}."
            )

    def _check_side(self, image: torch.Tensor, side: torch.Tensor) -> None:
        if side.shape != image.shape[:1]:
            raise ValueError(
                f"Expected side of shape [{image.shape[0]}] to match the images, "
                f"but got {list(side.shape)}."
            )
        if side.is_floating_point() or side.is_complex() or side.dtype == torch.bool:
            raise ValueError(f"Expected an integer side tensor, but got dtype {side.dtype}.")
        # A traced graph cannot branch on tensor values, so compiled and exported models
        # skip the range check; it runs in eager mode only.
        if is_tracing() or side.numel() == 0:
            return

        # One device-to-host sync per batch; cheap next to a forward pass.
        low, high = int(side.min()), int(side.max())
        if low < 0 or high >= self.config.head.num_side_values:
            bad = low if low < 0 else high
            raise ValueError(
                f"Side value {bad} is outside [0, {self.config.head.num_side_values - 1}]; "
                "raise `num_side_values` in FusionHeadConfig to accept it."
            )


def _autocasting(device_type: str) -> bool:
    """Return whether autocast, which casts inputs per operation, is on for the device."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch releases before 2.4 take no device type
        return torch.is_autocast_enabled()


def predicted_digit(output: FusionOutput) -> torch.Tensor:
    """Return the most likely digit per sample, int64 ``[N]``.

    Args:
        output: A model's output.

    Returns:
        The argmax of ``output.digit_logits``.

    Examples:
        >>> predicted_digit(FusionOutput(torch.eye(10)[[4, 0]])).tolist()
        [4, 0]
    """
    return output.digit_logits.argmax(dim=-1)


def predicted_sum(output: FusionOutput, max_sum: int) -> torch.Tensor:
    """Return the predicted sum per sample, int64 ``[N]``.

    Sum logits, when present, give their most likely sum; otherwise the regression value
    is rounded to the nearest integer and clipped to ``[0, max_sum]``.

    Args:
        output: A model's output.
        max_sum: Largest possible sum, for clipping a regression value.

    Returns:
        The predicted sums.

    Raises:
        ValueError: If the output contains neither ``sum`` nor ``sum_logits``.

    Examples:
        >>> predicted_sum(FusionOutput(torch.zeros(2, 10), sum=torch.tensor([3.4, 25.0])), 18)
        tensor([ 3, 18])
    """
    if output.sum_logits is not None:
        return output.sum_logits.argmax(dim=-1)
    if output.sum is None:
        raise ValueError("The output contains neither `sum` nor `sum_logits`.")
    return output.sum.detach().round().clamp(0, max_sum).to(torch.int64)
