"""Where quantization hurts: per-layer errors, sensitivity sweeps, and the statistics they share.

Example:
    >>> import quantpilot as qp
    >>> callable(qp.analysis.layer_errors) and callable(qp.analysis.sensitivity)
    True
"""

from .layer_errors import LayerError, LayerErrorReport, layer_errors
from .sensitivity import SensitivityReport, SensitivityRow, sensitivity
from .statistics import CalibrationStatistics, literal_pattern

__all__ = [
    "layer_errors",
    "LayerError",
    "LayerErrorReport",
    "sensitivity",
    "SensitivityReport",
    "SensitivityRow",
    "CalibrationStatistics",
    "literal_pattern",
]
