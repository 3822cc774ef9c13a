"""quantpilot: quantize PyTorch models and measure what it costs.

Example:
    >>> import quantpilot as qp
    >>> qp.QuantSpec("int8").qmax
    127
"""

__version__ = "0.1.0"

from . import algorithms, analysis, engines, evaluate, metrics, qat, steps, transforms  # noqa: E402
from .api import (  # noqa: E402
    calibrate,
    freeze,
    is_frozen,
    quantize,
    quantized_layers,
    recipe_of,
    unfrozen_parts,
)
from .auto import AutoResult, autoquantize  # noqa: E402
from .export import export_llm, export_onnx  # noqa: E402
from .persistence import load, save  # noqa: E402
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
    "recipe_of",
    "steps",
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
    "metrics",
    "models",
    "engines",
    "export_onnx",
    "export_llm",
    "qat",
    "autoquantize",
    "AutoResult",
    "__version__",
]


def __getattr__(name: str):
    """Bind ``qp.models`` on first use, so that ``import quantpilot`` never imports transformers.

    ``qp.datasets`` is the repository testbed's bundled sentences (``quantpilot_testbed.datasets``),
    kept under its old name for code written before the data left the package.
    """
    import importlib

    if name == "models":
        return importlib.import_module(".models", __name__)
    if name == "datasets":
        try:
            return importlib.import_module("quantpilot_testbed.datasets")
        except ModuleNotFoundError as err:
            raise AttributeError(
                "qp.datasets (the bundled sentences) moved to the repository's testbed: "
                "pip install -e testbed from a quantpilot checkout"
            ) from err
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
