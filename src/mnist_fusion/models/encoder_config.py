"""The configuration of the image encoder, its validation, and the named presets."""

from __future__ import annotations

from dataclasses import dataclass

from mnist_fusion.models._checks import check_choice

__all__ = ["ENCODER_PRESETS", "ConvEncoderConfig"]

ENCODER_PRESETS = ("small", "wide", "reference")
"""Names accepted by :meth:`ConvEncoderConfig.preset`."""

NORMS = ("batch", "group", "none")
ACTIVATIONS = ("relu", "gelu", "silu")
STAGE_POOLS = ("max", "avg", "stride", "none")
POOLS = ("flatten", "avg")
DIGIT_HEADS = ("linear", "conv")
POOL_PLACEMENTS = ("after_activation", "after_conv")


@dataclass(frozen=True)
class ConvEncoderConfig:
    """Shape of a :class:`ConvEncoder`.

    Each stage is ``convs_per_stage`` convolutions (kernel ``kernel_size``, same padding),
    each followed by normalisation and the activation, and then a 2x2 pooling step
    chosen by ``stage_pool``. The field defaults build the same network as the
    configurations saved before ``pool_placement`` and ``train_shift`` existed;
    :meth:`small` (the default recipe's encoder), :meth:`wide` and :meth:`reference`
    build the presets.

    Attributes:
        in_channels: Channels of the input image.
        image_size: Height and width of the (square) input image.
        channels: Output channels of each stage.
        convs_per_stage: Convolutions in each stage: one count for every stage, or one
            count per stage.
        kernel_size: Odd convolution kernel size.
        norm: ``"batch"`` (BatchNorm2d), ``"group"`` (GroupNorm with ``num_groups``
            groups) after each convolution, or ``"none"``.
        activation: One of ``"relu"``, ``"gelu"``, ``"silu"``.
        dropout: Dropout probability before the digit classifier.
        pool: ``"flatten"`` keeps the last feature map's spatial layout; ``"avg"``
            averages it to one vector per channel.
        num_classes: Number of digit classes.
        num_groups: Groups of ``norm="group"``; it must divide every stage's channels.
        stage_pool: The 2x2 downsampling of each stage: ``"max"`` or ``"avg"`` pooling,
            ``"stride"`` (the stage's last convolution has stride 2, which costs a
            quarter of the multiply-accumulates and rounds odd sizes up), or ``"none"``:
            one choice for every stage, or one per stage.
        digit_head: ``"linear"``: dropout and a linear layer on the features give the
            digit logits. ``"conv"``: a last convolution with ``num_classes`` output
            channels, averaged over the feature map, gives them; it needs
            ``pool="flatten"``, because it reads the whole map.
        pool_placement: Where each stage's pooling step sits. ``"after_activation"``
            pools the output of the stage's last activation. ``"after_conv"`` pools the
            output of its last convolution, before the norm and the activation, so
            those run on a quarter of the values. With ``norm="none"``,
            ``stage_pool="max"`` and ``activation="relu"`` the two placements compute
            the same function, because a max-pool commutes with ReLU. A ``"stride"`` stage has
            no pooling step, so this option does not change it.
        channels_last: Store the convolution weights in the channels-last memory format,
            so that the convolutions, norms and pools run channels-last. The outputs
            differ by float rounding only.
        train_shift: Largest random translation, in pixels, applied to each training
            image along each axis; 0 turns it off. It acts in training mode only, like
            dropout, and fills the uncovered border with the nearest edge pixels.

    Raises:
        ValueError: For an unknown choice, a count below 1, an even kernel size, a
            dropout outside ``[0, 1)``, per-stage options of the wrong length, a
            ``num_groups`` that does not divide the channels, an ``image_size`` too
            small for the pooling steps, or a ``train_shift`` outside
            ``[0, image_size)``.

    Examples:
        >>> ConvEncoderConfig().channels
        (16, 32, 64)
        >>> ConvEncoderConfig(norm="bacth")
        Traceback (most recent call last):
        ...
        ValueError: Invalid `norm`='bacth'; expected one of ['batch', 'group', 'none'].
    """

    in_channels: int = 1
    image_size: int = 28
    channels: tuple[int, ...] = (16, 32, 64)
    convs_per_stage: int | tuple[int, ...] = 1
    kernel_size: int = 3
    norm: str = "batch"
    activation: str = "relu"
    dropout: float = 0.0
    pool: str = "flatten"
    num_classes: int = 10
    num_groups: int = 8
    stage_pool: str | tuple[str, ...] = "max"
    digit_head: str = "linear"
    # The defaults of the three fields below keep configurations written before they
    # existed loading as the same network.
    pool_placement: str = "after_activation"
    channels_last: bool = True
    train_shift: int = 0

    def __post_init__(self) -> None:
        # Configs arrive from JSON too, where tuples become lists.
        for name in ("channels", "convs_per_stage", "stage_pool"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "channels", tuple(self.channels))

        check_choice("norm", self.norm, NORMS)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("pool", self.pool, POOLS)
        check_choice("digit_head", self.digit_head, DIGIT_HEADS)
        check_choice("pool_placement", self.pool_placement, POOL_PLACEMENTS)
        self._check_counts()
        self._check_per_stage()
        self._check_sizes()

    @property
    def stage_convs(self) -> tuple[int, ...]:
        """The number of convolutions of each stage."""
        if isinstance(self.convs_per_stage, int):
            return (self.convs_per_stage,) * len(self.channels)
        return self.convs_per_stage

    @property
    def stage_pools(self) -> tuple[str, ...]:
        """The pooling step after each stage."""
        if isinstance(self.stage_pool, str):
            return (self.stage_pool,) * len(self.channels)
        return self.stage_pool

    @property
    def feature_map_size(self) -> int:
        """Height and width of the last feature map; each 2x2 pooling step halves it."""
        size = self.image_size
        for pooling in self.stage_pools:
            if pooling == "stride":
                size = (size + 1) // 2  # A padded stride-2 convolution rounds up.
            elif pooling != "none":
                size //= 2
        return size

    @classmethod
    def small(cls) -> ConvEncoderConfig:
        """Return the default encoder: stages of 16, 32, 64 and 128 channels, BatchNorm, max-pool.

        Each stage pools its convolution's output before the norm and the activation,
        and training images move by up to 1 pixel at random. The four poolings take the
        28x28 image to maps of 14, 7, 3 and 1 pixels, so the features are one vector of
        128 values. The last pooling rounds down: it reads the top-left 2x2 of the 3x3
        map, whose convolution still reads the whole 3x3 map before it. It has 98,682
        parameters and is the encoder of the default ``mnist-fusion train`` and
        of ``FusionModelConfig()``. The field defaults of this class differ from it in
        the channels and those two options, so that configurations saved before the
        options existed load as the same network.

        Examples:
            >>> ConvEncoderConfig.small().pool_placement
            'after_conv'
            >>> ConvEncoderConfig.small().channels
            (16, 32, 64, 128)
        """
        return cls(channels=(16, 32, 64, 128), pool_placement="after_conv", train_shift=1)

    @classmethod
    def wide(cls) -> ConvEncoderConfig:
        """Return a wide three-stage encoder: 32, 64 and 128 channels, dropout 0.1.

        It has 104,426 parameters, about as many as the default, and about 2.9 times the
        default's multiply-accumulates, because its stages run at higher resolutions.

        Examples:
            >>> ConvEncoderConfig.wide().channels
            (32, 64, 128)
        """
        return cls(channels=(32, 64, 128), dropout=0.1)

    @classmethod
    def reference(cls) -> ConvEncoderConfig:
        """Return the network of the reference experiment, for comparisons on equal terms.

        It has seven 3x3 convolutions with 32, 64, 128, 256, 512, 1024 and 10 output
        channels and no normalisation. ReLU follows the first six, and a 2x2 max-pool
        follows the second and the fourth. It has 6,379,786 parameters. Each of the
        first six convolutions is a stage of its own, so ``stage_pool`` can place the two
        pools. The seventh is the digit head (``digit_head="conv"``), and its 10 output
        maps, each averaged over the 7x7 positions, are the digit logits. The features
        are the flattened 1024-channel map that the seventh convolution reads.

        Examples:
            >>> ConvEncoderConfig.reference().stage_pool
            ('none', 'max', 'none', 'max', 'none', 'none')
        """
        return cls(
            channels=(32, 64, 128, 256, 512, 1024),
            norm="none",
            stage_pool=("none", "max", "none", "max", "none", "none"),
            digit_head="conv",
        )

    @classmethod
    def preset(cls, name: str) -> ConvEncoderConfig:
        """Return the preset called ``name``, one of :data:`ENCODER_PRESETS`.

        Args:
            name: ``"small"``, ``"wide"`` or ``"reference"``.

        Returns:
            The preset's configuration.

        Raises:
            ValueError: For another name.

        Examples:
            >>> ConvEncoderConfig.preset("wide") == ConvEncoderConfig.wide()
            True
        """
        check_choice("preset", name, ENCODER_PRESETS)
        return getattr(cls, name)()

    def _check_counts(self) -> None:
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"Expected positive `channels`, but got {self.channels!r}.")
        # With zero convolutions a stage would keep its input width, and num_features
        # would no longer describe the features.
        for name in ("in_channels", "num_classes", "num_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected `{name}` >= 1, but got {getattr(self, name)!r}.")
        if isinstance(self.convs_per_stage, int) and self.convs_per_stage < 1:
            raise ValueError(f"Expected `convs_per_stage` >= 1, but got {self.convs_per_stage!r}.")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"Expected an odd positive `kernel_size`, got {self.kernel_size!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Expected `dropout` in [0, 1), but got {self.dropout!r}.")
        if not 0 <= self.train_shift < self.image_size:
            raise ValueError(
                f"Expected `train_shift` in [0, {self.image_size}) pixels, but got "
                f"{self.train_shift!r}; use 0 to turn the random translation off."
            )

    def _check_per_stage(self) -> None:
        stages = len(self.channels)
        for name in ("convs_per_stage", "stage_pool"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != stages:
                raise ValueError(
                    f"Expected `{name}` to give one entry per stage ({stages}), but got "
                    f"{value!r}; give a single value to use it for every stage."
                )
        if any(count < 1 for count in self.stage_convs):
            raise ValueError(f"Expected `convs_per_stage` >= 1, but got {self.convs_per_stage!r}.")
        for pooling in self.stage_pools:
            check_choice("stage_pool", pooling, STAGE_POOLS)

        if self.norm == "group":
            for stage, width in enumerate(self.channels, start=1):
                if width % self.num_groups:
                    raise ValueError(
                        f"`num_groups`={self.num_groups} does not divide the {width} channels "
                        f"of stage {stage}; choose a `num_groups` that divides every entry "
                        f"of `channels` {self.channels}."
                    )

    def _check_sizes(self) -> None:
        pooled = sum(pooling != "none" for pooling in self.stage_pools)
        if self.image_size < 2**pooled:
            raise ValueError(
                f"`image_size`={self.image_size} is too small for {pooled} stages "
                f"of 2x2 pooling; use at least {2**pooled} or fewer stages."
            )
        if self.digit_head == "conv" and self.pool != "flatten":
            raise ValueError(
                f"`digit_head`='conv' needs `pool`='flatten', because its convolution reads "
                f"the whole feature map, but got `pool`={self.pool!r}."
            )
