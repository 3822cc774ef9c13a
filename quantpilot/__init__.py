"""quantpilot: quantize PyTorch models and measure what it costs.

Example:
    >>> import quantpilot as qp
    >>> qp.QuantSpec("int8").qmax
    127
"""

__version__ = "0.1.0"

from . import algorithms, datasets, engines, evaluate, qat  # noqa: E402
from .api import calibrate, freeze, is_frozen, load, quantize, quantized_layers, save, unfrozen_parts  # noqa: E402
from .recipe import Recipe  # noqa: E402
from .spec import PerChannel, PerGroup, PerTensor, PerToken, QuantDtype, QuantSpec  # noqa: E402
from .summary import summary  # noqa: E402

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
    "datasets",
    "engines",
    "qat",
    "__version__",
]
