"""The full multi-input model: encoder plus fusion head, with input checks and predict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from mnist_fusion.models.encoder import ConvEncoder, ConvEncoderConfig
from mnist_fusion.models.head import FusionHead, FusionHeadConfig

__all__ = ["FusionModel", "FusionModelConfig", "FusionOutput"]


class FusionOutput(NamedTuple):
    """Outputs of :class:`FusionModel`.

    A NamedTuple, so ``torch.compile`` and ``torch.export`` treat it as a tuple.

    Attributes:
        digit_logits: Unnormalised digit scores ``[N, num_classes]``.
        sum: Regression prediction of the sum ``[N]``, or None.
        sum_logits: Scores over the possible sums ``[N, max_sum + 1]``, or None.
    """

    digit_logits: torch.Tensor
    sum: torch.Tensor | None = None
    sum_logits: torch.Tensor | None = None


@dataclass(frozen=True)
class FusionModelConfig:
    """Configuration of a :class:`FusionModel`: an encoder and a head.

    Attributes:
        encoder: Encoder options.
        head: Fusion head options.
    """

    encoder: ConvEncoderConfig = field(default_factory=ConvEncoderConfig)
    head: FusionHeadConfig = field(default_factory=FusionHeadConfig)

    @property
    def max_sum(self) -> int:
        """Largest possible sum: the largest digit plus the largest side value."""
        return self.encoder.num_classes - 1 + self.head.num_side_values - 1

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as plain JSON-compatible data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionModelConfig:
        """Rebuild a configuration written by :meth:`to_dict`.

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

    The sum head reads a differentiable function of the encoder's output (digit
    probabilities by default), so the sum loss trains the encoder too.

    Args:
        config: Model configuration; the default is the small fast recipe.

    Examples:
        >>> model = FusionModel(FusionModelConfig())
        >>> out = model(torch.zeros(2, 1, 28, 28), torch.tensor([3, 4]))
        >>> tuple(out.digit_logits.shape), tuple(out.sum.shape)
        ((2, 10), (2,))
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

    def forward(self, image: torch.Tensor, side: torch.Tensor) -> FusionOutput:
        self._check_inputs(image, side)
        digit_logits, features = self.encoder(image)  # (N, classes), (N, F)
        sum_value = self.head(digit_logits, features, side)  # (N,)
        return FusionOutput(digit_logits=digit_logits, sum=sum_value)

    @torch.no_grad()
    def predict(self, image: torch.Tensor, side: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict the digit and the sum as int64 tensors ``[N]``.

        Runs in eval mode and restores the previous mode afterwards. The regression sum
        is rounded to the nearest integer and clipped to ``[0, max_sum]``.
        """
        was_training = self.training
        self.eval()
        try:
            output = self(image, side)
        finally:
            self.train(was_training)
        return predicted_digit(output), predicted_sum(output, self.config.max_sum)

    def _check_inputs(self, image: torch.Tensor, side: torch.Tensor) -> None:
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
        if side.shape != image.shape[:1]:
            raise ValueError(
                f"Expected side of shape [{image.shape[0]}] to match the images, "
                f"but got {list(side.shape)}."
            )
        if side.is_floating_point() or side.dtype == torch.bool:
            raise ValueError(f"Expected an integer side tensor, but got dtype {side.dtype}.")
        if torch.compiler.is_compiling() or side.numel() == 0:
            return

        # One device-to-host sync per batch; cheap next to a forward pass.
        low, high = int(side.min()), int(side.max())
        if low < 0 or high >= self.config.head.num_side_values:
            bad = low if low < 0 else high
            raise ValueError(
                f"Side value {bad} is outside [0, {self.config.head.num_side_values - 1}]; "
                "raise `num_side_values` in FusionHeadConfig to accept it."
            )


def predicted_digit(output: FusionOutput) -> torch.Tensor:
    """Return the most likely digit per sample, int64 ``[N]``."""
    return output.digit_logits.argmax(dim=-1)


def predicted_sum(output: FusionOutput, max_sum: int) -> torch.Tensor:
    """Return the predicted sum per sample, int64 ``[N]``.

    A regression value is rounded to the nearest integer and clipped to ``[0, max_sum]``;
    sum logits give their most likely class.
    """
    if output.sum_logits is not None:
        return output.sum_logits.argmax(dim=-1)
    if output.sum is None:
        raise ValueError("The output holds neither `sum` nor `sum_logits`.")
    return output.sum.detach().round().clamp(0, max_sum).to(torch.int64)
