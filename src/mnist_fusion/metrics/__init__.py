"""Metrics of fusion models: the epoch ``Metric`` and its functional twins.

``FusionMetrics`` accumulates batches; :mod:`mnist_fusion.metrics.functional` computes
the same values for one batch with the same helpers. ``SideSensitivity`` and
:func:`evaluate_side_sensitivity` measure whether the predicted sum follows a change of
the side input.
"""

from mnist_fusion.metrics.functional import fusion_confusion_matrix, fusion_metrics
from mnist_fusion.metrics.fusion import FusionMetrics
from mnist_fusion.metrics.shortcuts import (
    SideSensitivity,
    counterfactual_side,
    evaluate_side_sensitivity,
    side_sensitivity,
)

__all__ = [
    "FusionMetrics",
    "SideSensitivity",
    "counterfactual_side",
    "evaluate_side_sensitivity",
    "fusion_confusion_matrix",
    "fusion_metrics",
    "side_sensitivity",
]
