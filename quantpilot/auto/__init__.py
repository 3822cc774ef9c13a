"""The autopilot: `autoquantize(model, calib_data, eval_fn, budget, target)` returns the fastest model on the
target engine that holds the accuracy budget on held-out data, with a report that shows why.

Example:
    >>> import quantpilot as qp
    >>> qp.auto.TARGETS
    ('openvino', 'onnxruntime', 'torch', 'torch-int8')
"""

from .api import autoquantize
from .result import AutoResult
from .targets import TARGETS

__all__ = ["autoquantize", "AutoResult", "TARGETS"]
