"""`QuantAdd`: a residual addition whose two inputs are both quantized.

TensorRT fuses Conv-BN-Add into one int8 kernel only when both inputs of the Add carry Q/DQ; ONNX
Runtime and OpenVINO likewise keep the sum in the int8 domain. The module stands in for the `+`
of a traced graph (see `quantpilot.functional_points`).

Example:
    >>> import torch
    >>> from quantpilot import QuantSpec
    >>> add = QuantAdd(QuantSpec("int8"), dynamic=True)
    >>> add(torch.ones(2), torch.ones(2)).shape
    torch.Size([2])
"""

from __future__ import annotations

import torch
from torch import nn

from ..spec import QuantSpec
from .tensor_quantizer import CalibratorConfig, TensorQuantizer

__all__ = ["QuantAdd"]


class QuantAdd(nn.Module):
    """`lhs_quantizer(a) + rhs_quantizer(b)`.

    Example:
        >>> from quantpilot import QuantSpec
        >>> QuantAdd(QuantSpec("int8")).lhs_quantizer.needs_calibration
        True
    """

    def __init__(self, spec: QuantSpec, dynamic: bool = False, calibrator: CalibratorConfig | None = None) -> None:
        super().__init__()
        self.lhs_quantizer = TensorQuantizer(spec, dynamic=dynamic, calibrator=calibrator)
        self.rhs_quantizer = TensorQuantizer(spec, dynamic=dynamic, calibrator=calibrator)
        self.point = ""  # the recipe-facing name, e.g. "layer1.0:add" (set by the installer)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.lhs_quantizer(a) + self.rhs_quantizer(b)
