"""`QuantModule`: what every quantized layer shares — a quantized weight and an input quantizer.

Before `freeze` the float weight is a Parameter and is fake-quantized on the fly (calibration runs
the float model untouched). `freeze` stores the weight as codes plus scale / zero point buffers and
drops the float copy: 8-bit and fp8 codes one per byte in `weight_int`, 4-bit codes two per byte in
`weight_packed` (`quantpilot.nn.packing`). A module *is* frozen exactly when one of them exists.

Every quantized layer answers the same storage interface, which `summary`, save / load, export and
the engines read instead of buffer names: `weight_codes()`, `weight_qparams()`,
`stored_weight_bytes()`, `weight_numel()` and `dequantized_weight(dtype)`. A frozen layer still
answers `.weight` (dequantized on access, in the float dtype the weight had) because model code
reads it (T5, ViT, DeBERTa); it is read-only and not part of `state_dict()`.

Example:
    >>> import torch
    >>> from quantpilot.nn import QuantLinear
    >>> layer = QuantLinear.from_float(torch.nn.Linear(4, 2))
    >>> layer.is_frozen
    False
    >>> layer.freeze(); layer.is_frozen, layer.weight_codes().dtype, layer.weight.dtype
    (True, torch.int8, torch.float32)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..primitives import choose_qparams, dequantize, fake_quantize, min_max, quantize
from ..spec import PerChannel, QuantSpec
from .packing import is_packed, pack_codes, packed_numel, unpack_codes
from .tensor_quantizer import CalibratorConfig, TensorQuantizer

__all__ = ["QuantModule", "DEFAULT_WEIGHT_SPEC", "FrozenWeightError"]

DEFAULT_WEIGHT_SPEC = QuantSpec("int8", symmetric=True, narrow_range=True, granularity=PerChannel(0))
_CODE_BUFFERS = ("weight_int", "weight_packed")


class FrozenWeightError(ValueError, AttributeError):
    """Assigning `.weight` of a frozen layer (an AttributeError too, as for any read-only attribute).

    Example:
        >>> issubclass(FrozenWeightError, AttributeError)
        True
    """


class QuantModule(nn.Module):
    """Base class of quantized layers; subclasses implement `forward` with `self.quantized_weight(dtype)`.

    Example:
        >>> issubclass(__import__("quantpilot.nn", fromlist=["QuantConv2d"]).QuantConv2d, QuantModule)
        True
    """

    # Multiplies the gradient of a learned weight scale (LSQ's gradient scale; set by `quantpilot.qat.prepare`).
    weight_scale_grad_factor: float = 1.0
    # What `forward` computes, so engines pick an implementation from the layer's interface instead of
    # its class: "linear" (`x @ W.T + b` over the last dimension), "lookup" (rows of W gathered by
    # index: an embedding) or None (anything else). A subclass computing something else resets it.
    computes: str | None = None

    def _setup_quantization(
        self,
        weight: torch.Tensor,
        weight_spec: QuantSpec | None = DEFAULT_WEIGHT_SPEC,
        weight_calibrator: CalibratorConfig | None = None,
        input_quantizer: TensorQuantizer | None = None,
    ) -> None:
        if weight_spec is not None and not isinstance(weight_spec, QuantSpec):
            raise TypeError(f"weight_spec must be a QuantSpec or None, got {type(weight_spec).__name__}")
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight)
        self.float_dtype = weight.dtype  # what `.weight` answers in once frozen
        self.weight_spec = weight_spec
        self.weight_calibrator = weight_calibrator or CalibratorConfig("minmax")
        self.input_quantizer = input_quantizer if input_quantizer is not None else TensorQuantizer(None)

    @property
    def is_frozen(self) -> bool:
        """True once the weight is stored as codes."""
        return any(self._buffers.get(name) is not None for name in _CODE_BUFFERS)

    # `.weight`: the float Parameter until freeze, then the stored codes dequantized (read-only). A
    # class-level property wins over nn.Module.__getattr__, so it looks in `_parameters` itself.
    @property
    def weight(self) -> torch.Tensor:
        """The float weight Parameter, or once frozen the stored weight dequantized to `float_dtype`."""
        param = self._parameters.get("weight")
        if param is not None:
            return param
        if self.is_frozen:
            return self.dequantized_weight()
        # AttributeError keeps hasattr() False, which register_parameter("weight", ...) relies on.
        raise AttributeError(f"this {type(self).__name__} has no weight")

    def __setattr__(self, name: str, value) -> None:
        if name == "weight" and "_buffers" in self.__dict__ and self.is_frozen:
            raise FrozenWeightError(
                f"the weight of a frozen {type(self).__name__} is read-only (it is dequantized from the stored "
                "codes on access); change the float model and quantize it again"
            )
        super().__setattr__(name, value)

    @property
    def weight_int(self) -> torch.Tensor:
        """Read-only alias of `weight_codes()` on a frozen layer (the name older code reads)."""
        if not self.is_frozen:
            raise AttributeError(f"this {type(self).__name__} is not frozen: it has no weight codes yet")
        return self._buffers.get("weight_int") if "weight_int" in self._buffers else self.weight_codes()

    def _code_buffer(self) -> torch.Tensor:
        return next(self._buffers[n] for n in _CODE_BUFFERS if self._buffers.get(n) is not None)

    def weight_storage(self) -> tuple[torch.Tensor, ...]:
        """The tensors that hold the weight: (codes, scale, zero point) once frozen, else (float weight,).

        Example:
            >>> import torch
            >>> from quantpilot.nn import QuantLinear
            >>> len(QuantLinear.from_float(torch.nn.Linear(4, 2)).weight_storage())
            1
        """
        if not self.is_frozen:
            return (self._parameters["weight"],)
        return (self._code_buffer(), self.weight_scale, self.weight_zero_point)

    def stored_weight_bytes(self) -> int:
        """Bytes the weight occupies: codes + qparams once frozen, the float weight before.

        Example:
            >>> import torch
            >>> from quantpilot.nn import QuantLinear
            >>> layer = QuantLinear.from_float(torch.nn.Linear(4, 2)); before = layer.stored_weight_bytes()
            >>> layer.freeze(); before, layer.stored_weight_bytes()  # 8 int8 codes + 2 fp32 scales + 2 int32 zps
            (32, 24)
        """
        return sum(t.numel() * t.element_size() for t in self.weight_storage())

    def weight_numel(self) -> int:
        """Number of weight elements (the float weight's numel, before and after freeze).

        Example:
            >>> import torch
            >>> from quantpilot.nn import QuantConv2d
            >>> QuantConv2d.from_float(torch.nn.Conv2d(2, 4, 3)).weight_numel()
            72
        """
        if not self.is_frozen:
            return self._parameters["weight"].numel()
        return math.prod(self._weight_shape)

    def weight_codes(self) -> torch.Tensor:
        """The integer codes (fp8 values for fp8 specs), unpacked, in the weight's own layout.

        Frozen: the stored codes. Before freeze: the codes the weight would be stored as.

        Example:
            >>> import torch
            >>> from quantpilot import QuantSpec
            >>> from quantpilot.nn import QuantLinear
            >>> layer = QuantLinear.from_float(torch.nn.Linear(3, 2), weight_spec=QuantSpec("int4"))
            >>> layer.freeze(); layer.weight_packed.numel(), layer.weight_codes().shape
            (3, torch.Size([2, 3]))
        """
        if self.weight_spec is None:
            raise ValueError("this layer keeps its weight in float (weight_spec is None): it has no codes")
        if not self.is_frozen:
            return quantize(self.weight.detach(), *self.weight_qparams(), self.weight_spec)
        if self._buffers.get("weight_int") is not None:
            return self._buffers["weight_int"]
        return unpack_codes(self._buffers["weight_packed"], self.weight_spec, self._weight_shape)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight as the quantized model uses it, `(q - z) * s`, in `dtype` (default: `float_dtype`).

        Example:
            >>> import torch
            >>> from quantpilot.nn import QuantLinear
            >>> layer = QuantLinear.from_float(torch.nn.Linear(4, 2)); fake = layer.dequantized_weight()
            >>> layer.freeze(); torch.equal(layer.dequantized_weight(), fake.detach())
            True
        """
        dtype = self.float_dtype if dtype is None else dtype
        if self.weight_spec is None:
            return self.weight.to(dtype)
        if self.is_frozen:
            return dequantize(self.weight_codes(), self.weight_scale, self.weight_zero_point, self.weight_spec, dtype)
        scale, zero_point = self.weight_qparams()
        return fake_quantize(self.weight, scale, zero_point, self.weight_spec, self.weight_scale_grad_factor).to(dtype)

    def weight_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point of the float weight under the layer's weight calibrator.

        Example:
            >>> import torch
            >>> from quantpilot.nn import QuantLinear
            >>> QuantLinear.from_float(torch.nn.Linear(3, 5)).weight_qparams()[0].shape
            torch.Size([5])
        """
        if self.weight_spec is None:
            raise ValueError("this layer keeps its weight in float (weight_spec is None): it has no weight qparams")
        if self.is_frozen or self._parameters.get("weight_scale") is not None:
            # Stored codes' qparams, or a scale learned by QAT (`quantpilot.qat.prepare(learn_ranges=True)`).
            return self.weight_scale, self.weight_zero_point
        calibrator = self.weight_calibrator.build(self.weight_spec)
        calibrator.collect(self.weight.detach())
        return calibrator.qparams()

    def quantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight as the quantized model sees it, in `dtype`.

        Frozen: the stored codes dequantized. Calibrating: the float weight (calibration observes
        the float model). Otherwise: the float weight fake-quantized, differentiable for QAT.
        """
        if self.weight_spec is not None and not self.is_frozen and self.input_quantizer.collecting:
            return self.weight.to(dtype)
        return self.dequantized_weight(dtype)

    def freeze(self) -> None:
        """Fix the input range from calibration and store the weight as integers (idempotent)."""
        if self.weight_spec is not None and not self.is_frozen and self.weight.is_meta:
            raise ValueError("freeze needs real weights: the model is on the meta device; load its weights first")
        self.input_quantizer.fix_qparams()
        q = self.input_quantizer
        if isinstance(q.scale, nn.Parameter):
            # A scale learned by QAT: a frozen model holds plain buffers, as after PTQ.
            scale = q.scale.detach().clone()
            del q.scale
            q.register_buffer("scale", scale)
        self.store_weight_as_integers()

    def store_weight_as_integers(self) -> None:
        """Replace the float weight by its codes and qparams (idempotent; no-op for float weights)."""
        if self.weight_spec is None or self.is_frozen:
            return
        if self.weight.is_meta:
            scale, zero_point, codes = self._meta_layout()
        else:
            scale, zero_point = (t.detach().clone() for t in self.weight_qparams())
            codes = quantize(self.weight.detach(), scale, zero_point, self.weight_spec)
        self.float_dtype, self._weight_shape = self.weight.dtype, tuple(codes.shape)
        del self.weight
        if "weight_scale" in self._parameters:
            del self.weight_scale  # learned by QAT; stored below as a buffer like any frozen scale
        if is_packed(self.weight_spec):
            # `quantpilot.load` calls this on a fresh layer, so the file's bytes land in this same layout.
            packed = (
                torch.empty(packed_numel(codes.shape), dtype=torch.uint8, device="meta")
                if codes.is_meta
                else pack_codes(codes, self.weight_spec)
            )
            self.register_buffer("weight_packed", packed)
        else:
            self.register_buffer("weight_int", codes)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", zero_point)

    def _meta_layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Empty meta tensors shaped as the qparams and codes of this meta weight.

        A model built on the meta device has no values to compute from: `quantpilot.load` only needs
        the layout and assigns the file's tensors. The qparams' shapes and dtypes come from the same
        primitives on a tiny stand-in range, so they match what `freeze` would store.
        """
        low, _ = min_max(self.weight, self.weight_spec)  # on meta tensors: a shape, no values read
        stand_in = torch.zeros(low.shape, dtype=low.dtype), torch.ones(low.shape, dtype=low.dtype)
        scale, zero_point = (torch.empty_like(t, device="meta") for t in choose_qparams(*stand_in, self.weight_spec))
        return scale, zero_point, torch.empty_like(self.weight, dtype=self.weight_spec.dtype.torch_dtype)

    def _weight_repr(self) -> str:
        if self.weight_spec is None:
            return "weight=float"
        state = "frozen" if self.is_frozen else "fake-quant"
        return f"weight={self.weight_spec.dtype.value}/{type(self.weight_spec.granularity).__name__} ({state})"
