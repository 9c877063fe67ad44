"""Metrics of fusion models: the epoch ``Metric`` and its functional twins.

``FusionMetrics`` accumulates batches; :mod:`mnist_fusion.metrics.functional` computes
the same values for one batch with the same helpers.
"""

from mnist_fusion.metrics.functional import fusion_confusion_matrix, fusion_metrics
from mnist_fusion.metrics.fusion import FusionMetrics

__all__ = ["FusionMetrics", "fusion_confusion_matrix", "fusion_metrics"]
