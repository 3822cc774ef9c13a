"""The tensors of a quantized causal LM as the exporters read them: float, or codes with their qparams.

Every exporter (Hugging Face checkpoint, GGUF, OpenVINO IR) walks the model the same way: each
quantized layer answers the storage interface (`weight_codes()`, `weight_qparams()`), so its codes
are handed over as they are, never requantized here; every other parameter is float. Weights are
given in the (out_features, in_features) layout of `nn.Linear`, with transformers' `Conv1D`
(GPT-2, which stores W.T) transposed, so the exporters see one layout.

Example:
    >>> import torch
    >>> from quantpilot.testing import tiny_causal_lm
    >>> t = lm_tensors(tiny_causal_lm("llama"))
    >>> t["model.layers.0.self_attn.q_proj.weight"].shape, t["model.layers.0.self_attn.q_proj.weight"].codes is None
    ((128, 128), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...nn.quant_module import QuantModule
from ...spec import PerChannel, PerGroup

__all__ = ["LMTensor", "lm_tensors", "architecture", "SUPPORTED_ARCHITECTURES"]

# transformers `model_type`s whose tensor names, attention layout and metadata the exporters know.
SUPPORTED_ARCHITECTURES = ("gpt2", "llama")


@dataclass(frozen=True)
class LMTensor:
    """One exported tensor: a float value, or unsigned/signed codes with (rows, groups) scale and zero point.

    `value` is always the weight as quantpilot computes with it (dequantized for quantized layers),
    so an exporter can measure what its format changes. `codes` is None for float tensors.

    Example:
        >>> LMTensor(torch.zeros(2, 4)).shape
        (2, 4)
    """

    value: torch.Tensor
    codes: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    bits: int = 0
    group_size: int = 0
    signed: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """The (out, in) shape of the weight (or the shape of a float tensor)."""
        return tuple(self.value.shape)

    @property
    def symmetric(self) -> bool:
        """True when every zero point is the middle code (0 for signed codes, 2**(bits-1) for unsigned)."""
        if self.codes is None:
            return False
        mid = 0 if self.signed else 2 ** (self.bits - 1)
        return bool((self.zero_point == mid).all())

    def permute_rows(self, order: torch.Tensor) -> LMTensor:
        """The same tensor with its rows (output features) reordered; codes keep their qparams (exact).

        Example:
            >>> LMTensor(torch.arange(4.0).reshape(2, 2)).permute_rows(torch.tensor([1, 0])).value.tolist()
            [[2.0, 3.0], [0.0, 1.0]]
        """
        pick = (lambda t: None if t is None else t[order]) if self.value.dim() else (lambda t: t)
        return LMTensor(
            pick(self.value), pick(self.codes), pick(self.scale), pick(self.zero_point),
            self.bits, self.group_size, self.signed,
        )  # fmt: skip


def architecture(model: nn.Module) -> str:
    """The transformers `model_type` of a causal LM, refused (ValueError) unless the exporters support it.

    Example:
        >>> architecture(torch.nn.Linear(2, 2))
        Traceback (most recent call last):
        ValueError: export_llm takes a transformers causal LM (model.config.model_type one of gpt2, llama); got a Linear
    """
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in SUPPORTED_ARCHITECTURES:
        got = f"model_type {kind!r}" if kind else f"a {type(model).__name__}"
        raise ValueError(
            f"export_llm takes a transformers causal LM (model.config.model_type one of "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}); got {got}"
        )
    return kind


def _quantized(module: QuantModule) -> LMTensor:
    spec = module.weight_spec
    kind = spec.dtype.value
    if kind not in ("uint4", "uint6", "uint8", "int4", "int8"):
        raise ValueError(
            f"a {kind} weight cannot be exported; the LM exports take 4-, 6- or 8-bit integer weights "
            "(presets rtn-w4-g128, gptq-w4-g128, awq-w4-g128, w4a16-g128, w8a16)"
        )
    if getattr(module, "input_quantizer", None) is not None and module.input_quantizer.spec is not None:
        raise ValueError(
            "the LM exports take weight-only models (activations=None, e.g. rtn-w4-g128 or w8a16); "
            "this model quantizes layer inputs too"
        )
    codes = module.weight_codes()
    if codes.dim() != 2:
        raise ValueError(f"the LM exports take 2-D weights, got a {codes.dim()}-D {type(module).__name__}")
    scale, zero = (t.detach().float() for t in module.weight_qparams())
    rows, cols = codes.shape
    g = spec.granularity
    if isinstance(g, PerGroup):
        group = g.size
    elif isinstance(g, PerChannel) and g.axis in (0, -2):
        group = cols
    else:
        raise ValueError(f"the LM exports take weights per output channel or per group, got {g}")
    scale, zero = scale.reshape(rows, -1), zero.reshape(rows, -1).expand(rows, cols // group)
    signed = kind.startswith("int")
    value = module.dequantized_weight(torch.float32).detach()
    return LMTensor(value, codes, scale.reshape(rows, -1), zero.contiguous(), spec.dtype.bits, group, signed)


def lm_tensors(model: nn.Module) -> dict[str, LMTensor]:
    """Every parameter of a (quantized) transformers causal LM by its Hugging Face name, in model order.

    Quantized layers give `<name>.weight` with codes (and `<name>.bias` float); `Conv1D` weights are
    transposed to (out, in); tied parameters appear once, under their first name.

    Example:
        >>> from quantpilot.testing import tiny_causal_lm
        >>> list(lm_tensors(tiny_causal_lm("gpt2")))[:2]
        ['transformer.wte.weight', 'transformer.wpe.weight']
    """
    out: dict[str, LMTensor] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, QuantModule) and module.weight_spec is not None and module.is_frozen:
            codes = module.weight_storage()[0]
            if id(codes) not in seen:  # a head tied to a packed table reads the table's codes: given once
                seen.add(id(codes))
                out[f"{prefix}weight"] = _quantized(module)
        elif isinstance(module, QuantModule) and module.weight_spec is not None:
            raise ValueError("freeze the model (qp.freeze) before exporting it: its weights are not stored as codes")
        conv1d = type(module).__name__ == "Conv1D"
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            value = param.detach().float()
            out[f"{prefix}{pname}"] = LMTensor(value.t().contiguous() if conv1d and pname == "weight" else value)
        if isinstance(module, QuantModule) and isinstance(getattr(module, "bias", None), torch.Tensor):
            out.setdefault(f"{prefix}bias", LMTensor(module.bias.detach().float()))
    return out
