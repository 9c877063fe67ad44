"""The two comparison image encoders, with the interface of ``mnist_fusion.models.ConvEncoder``.

Each ``forward(images)`` returns ``(digit_logits [N, 10], features [N, num_features])``,
so either one can replace the encoder of a ``FusionModel``.
"""

from __future__ import annotations

import torch
from torch import nn


class ExamplesEncoder(nn.Module):
    """The network of the PyTorch examples MNIST script, as an encoder.

    Two unpadded 3x3 convolutions (32 and 64 channels) with ReLU, a 2x2 max-pool,
    dropout 0.25, a 128-unit layer with ReLU, dropout 0.5 and a 10-way output layer.
    The features are the 128 hidden units after ReLU and before the second dropout.
    """

    num_features = 128

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(64 * 12 * 12, self.num_features),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.5)
        self.classifier = nn.Linear(self.num_features, 10)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(images)  # (N, 128)
        return self.classifier(self.dropout(features)), features  # (N, 10), (N, 128)


REFERENCE_CHANNELS = (32, 64, 128, 256, 512, 1024, 10)
"""Output channels of the seven convolutions of the reference experiment's network."""


class ReferenceEncoder(nn.Module):
    """The reference experiment's seven-convolution network, as an encoder.

    Seven 3x3 convolutions with ReLU between them and no normalisation, a 2x2 max-pool
    after the second and the fourth. The convolutions are padded, because seven unpadded
    ones and two pools would shrink a 28x28 image below one pixel. The last convolution
    has 10 channels; averaging its 7x7 map gives the digit logits. The features are the
    1024 channels before it, averaged over the map.
    """

    num_features = REFERENCE_CHANNELS[-2]

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for position, out_channels in enumerate(REFERENCE_CHANNELS[:-1], start=1):
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU()]
            if position in (2, 4):
                layers.append(nn.MaxPool2d(2))
            in_channels = out_channels
        self.trunk = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(in_channels, REFERENCE_CHANNELS[-1], 3, padding=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map = self.trunk(images)  # (N, 1024, 7, 7)
        logits = self.classifier(feature_map).mean(dim=(2, 3))  # (N, 10)
        return logits, feature_map.mean(dim=(2, 3))  # (N, 10), (N, 1024)
