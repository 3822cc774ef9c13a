"""quantpilot: quantize PyTorch models and measure what it costs.

Example:
    >>> import quantpilot as qp
    >>> qp.QuantSpec("int8").qmax
    127
"""

__version__ = "0.1.0"

from . import algorithms, analysis, datasets, engines, evaluate, qat, transforms  # noqa: E402
from .api import calibrate, freeze, is_frozen, load, quantize, quantized_layers, save, unfrozen_parts  # noqa: E402
from .export import export_onnx  # noqa: E402
from .recipe import Recipe  # noqa: E402
from .selection import select  # noqa: E402
from .spec import PerChannel, PerGroup, PerTensor, PerToken, QuantDtype, QuantSpec  # noqa: E402
from .summary import summary  # noqa: E402
from .transforms import fold_batchnorm  # noqa: E402

__all__ = [
    "QuantSpec",
    "QuantDtype",
    "PerTensor",
    "PerChannel",
    "PerGroup",
    "PerToken",
    "Recipe",
    "quantize",
    "calibrate",
    "freeze",
    "save",
    "load",
    "quantized_layers",
    "is_frozen",
    "unfrozen_parts",
    "summary",
    "evaluate",
    "algorithms",
    "analysis",
    "select",
    "fold_batchnorm",
    "transforms",
    "datasets",
    "engines",
    "export_onnx",
    "qat",
    "__version__",
]
