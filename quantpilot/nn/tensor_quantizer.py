"""`TensorQuantizer`: the quantization point for one tensor (a layer's input or weight).

It has three behaviours, each derived from its state rather than from flags set twice:

* collecting (inside `quantpilot.calibrate`): feed the calibrator, return the input unchanged;
* dynamic: compute qparams from the tensor itself on every call, then fake-quantize;
* static: fake-quantize with the qparams fixed by `freeze` (the `scale` / `zero_point` buffers).

Example:
    >>> import torch
    >>> from quantpilot import QuantSpec, PerToken
    >>> tq = TensorQuantizer(QuantSpec("int8", granularity=PerToken()))
    >>> tq(torch.tensor([[0.5, -1.0]])).tolist()
    [[0.501960813999176, -0.9960784912109375]]
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..calibrator_config import CalibratorConfig
from ..primitives import choose_qparams, fake_quantize, min_max
from ..spec import QuantSpec

__all__ = ["CalibratorConfig", "TensorQuantizer"]

# Scales at or below this mean the calibrated range collapsed to (almost) a point: nothing passes.
_EMPTY_RANGE_SCALE = 1e-6


class TensorQuantizer(nn.Module):
    """Fake-quantizes one tensor with a static (calibrated) or dynamic (per-batch) range.

    Args:
        spec: the scheme, or None for a pass-through.
        dynamic: ranges from each batch at run time instead of from calibration
            (always the case for `PerToken`).
        calibrator: how a static range is picked from calibration data.

    Example:
        >>> import torch
        >>> from quantpilot import QuantSpec
        >>> tq = TensorQuantizer(QuantSpec("int8"))
        >>> tq.start_collecting(); _ = tq(torch.tensor([-2.0, 1.0])); tq.stop_collecting()
        >>> tq.fix_qparams(); round(tq.scale.item(), 5)
        0.01569
    """

    def __init__(
        self, spec: QuantSpec | None, *, dynamic: bool = False, calibrator: CalibratorConfig | None = None
    ) -> None:
        super().__init__()
        if spec is not None and not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec or None, got {type(spec).__name__}")
        self.spec = spec
        self.dynamic = bool(dynamic) or (spec is not None and spec.is_dynamic)
        self.calibrator_config = calibrator or CalibratorConfig()
        self.register_buffer("scale", None)
        self.register_buffer("zero_point", None)
        self.calibrator = None
        self.collecting = False
        self.qualname = ""  # set by the walker, so errors can name the layer
        # (scale, zero_point) as Python numbers while an ONNX export traces the model: the exporter
        # turns per-tensor Q/DQ into QuantizeLinear/DequantizeLinear only with constant qparams.
        self.export_qparams: tuple[float, int] | None = None

    @property
    def needs_calibration(self) -> bool:
        """True for an enabled static quantizer (its range comes from data)."""
        return self.spec is not None and not self.dynamic

    def extra_repr(self) -> str:
        if self.spec is None:
            return "disabled"
        mode = "dynamic" if self.dynamic else ("fixed" if self.scale is not None else "uncalibrated")
        return f"{self.spec.dtype.value}, {type(self.spec.granularity).__name__}, {mode}"

    def start_collecting(self) -> None:
        """Start feeding forward inputs to the calibrator (created on first use, kept across sessions)."""
        if not self.needs_calibration:
            return
        if self.calibrator is None:
            self.calibrator = self.calibrator_config.build(self.spec)
        self.collecting = True

    def stop_collecting(self) -> None:
        """Stop feeding the calibrator; its statistics are kept until `fix_qparams`."""
        self.collecting = False

    def fix_qparams(self) -> None:
        """Turn the calibrator's statistics into fixed `scale` / `zero_point` buffers.

        Raises:
            ValueError: the quantizer is static and saw no calibration data.
        """
        if not self.needs_calibration or (self.scale is not None and self.calibrator is None):
            return
        if self.calibrator is None or not self.calibrator.has_data:
            raise ValueError(
                f"'{self.qualname or 'quantizer'}' has no activation range: run calibration data through the model "
                "inside `with quantpilot.calibrate(model):` before `quantpilot.freeze(model)`"
            )
        scale, zero_point = self.calibrator.qparams()
        if not self.spec.dtype.is_float and float(scale.max()) <= _EMPTY_RANGE_SCALE:
            # An input that was all zeros (or one constant) in calibration gets an empty range: at inference it
            # would pass (almost) nothing, so say so instead of freezing it silently.
            warnings.warn(
                f"'{self.qualname or 'quantizer'}' saw only zeros (or one constant value) during calibration: its "
                "range is empty and it will pass almost nothing at inference; calibrate on representative data or "
                "skip that layer in the recipe",
                stacklevel=5,  # the caller of quantpilot.freeze (through the layer's freeze)
            )
        self.scale, self.zero_point = scale, zero_point
        self.calibrator = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec is None:
            return x
        if self.collecting:
            try:
                self.calibrator.collect(x)
            except ValueError as err:
                raise ValueError(f"calibration data reaching '{self.qualname}' was rejected: {err}") from None
            return x
        if self.dynamic:
            scale, zero_point = choose_qparams(*min_max(x, self.spec), self.spec)
            return fake_quantize(x, scale, zero_point, self.spec)
        if self.scale is None:
            raise ValueError(
                f"'{self.qualname or 'quantizer'}' is static and has no range yet: calibrate the model with "
                "`quantpilot.calibrate`, then `quantpilot.freeze` it, before running it"
            )
        if self.export_qparams is not None and torch.onnx.is_in_onnx_export():
            return fake_quantize(x, *self.export_qparams, self.spec)
        return fake_quantize(x, self.scale, self.zero_point, self.spec)
