"""A Hugging Face checkpoint in compressed-tensors' `pack-quantized` format (int4 / int8 weights).

Why this format: transformers loads it on a CPU through its own quantization integration
(`CompressedTensorsHfQuantizer`: the packed weights are read as they are and decompressed by the
`compressed-tensors` package, no GPU kernel needed), and the GPU servers read the same files (vLLM
and SGLang run `pack-quantized` int4/int8 with their Marlin/Machete kernels; it is what
llm-compressor writes). The GPTQ format needs optimum + gptqmodel kernels, which do not load on this
CPU. The codes are mapped exactly: compressed-tensors stores signed codes `q` and zero points `zp`
with `(q - zp) * scale`, so quantpilot's unsigned `c`, `z` become `c - 2**(b-1)`, `z - 2**(b-1)`
(the same difference) and the scales are written as they are (fp16 values, stored in the model's
float dtype, so exactly); packing is compressed-tensors' own `pack_to_int32`. Asymmetric schemes
(zero points, quantpilot's default) and quantized token tables (w8a16) also get `"dequantize": true`
in the quantization config: transformers 5.x's compressed route cannot load packed zero points
(llm-compressor issue #1618) nor run a compressed `nn.Embedding`; its dequantize route does both,
giving the same weights. vLLM/SGLang ignore the key and run the packed file.

Layers: compressed-tensors packs `nn.Linear` only, so Llama-family models export and GPT-2 (whose
layers are transformers `Conv1D`) is refused with a message naming the formats that take it.

Example:
    >>> import tempfile, os, quantpilot as qp
    >>> from quantpilot.testing import tiny_causal_lm
    >>> q = qp.algorithms.rtn(tiny_causal_lm("llama"))
    >>> out = write_hf_checkpoint(q, None, os.path.join(tempfile.mkdtemp(), "hf"))
    >>> sorted(p.name for p in out.iterdir())
    ['config.json', 'model.safetensors']
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ...atomic import atomic_directory, check_new
from .weights import LMTensor, architecture, lm_tensors

__all__ = ["write_hf_checkpoint", "quantization_config"]


def _scheme(t: LMTensor) -> tuple[int, bool, int | None]:
    """(bits, symmetric, group size or None for per channel) of a quantized weight."""
    return t.bits, t.symmetric, None if t.group_size == t.shape[1] else t.group_size


def quantization_config(
    schemes: dict[str, tuple[int, bool, int | None]], float_layers: list[str], classes: tuple[str, ...] = ("Linear",)
) -> dict:
    """The compressed-tensors `quantization_config` for layers -> (bits, symmetric, group) schemes.

    One scheme (the usual case) targets the layer classes quantized (`Linear`, and `Embedding` when
    the token table is) and ignores the float layers of those classes, as llm-compressor writes it;
    several schemes get one group each, targeting their layers by exact name.

    Example:
        >>> c = quantization_config({"a.q": (4, False, 128)}, ["lm_head"])
        >>> c["format"], c["ignore"], c["config_groups"]["group_0"]["weights"]["strategy"]
        ('pack-quantized', ['lm_head'], 'group')
    """
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    distinct = sorted(set(schemes.values()), key=str)
    groups = {}
    for i, (bits, symmetric, group) in enumerate(distinct):
        args = QuantizationArgs(
            num_bits=bits, type="int", symmetric=symmetric, strategy="group" if group else "channel", group_size=group
        )
        names = [n for n, s in schemes.items() if s == (bits, symmetric, group)]
        targets = list(classes) if len(distinct) == 1 else [f"re:^{re.escape(n)}$" for n in names]
        groups[f"group_{i}"] = QuantizationScheme(targets=targets, weights=args)
    config = QuantizationConfig(
        config_groups=groups, format="pack-quantized", quantization_status="compressed", ignore=float_layers
    )
    return config.model_dump(exclude_none=True)


def _packed(t: LMTensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    offset = 0 if t.signed else 2 ** (t.bits - 1)
    codes = (t.codes.to(torch.int32) - offset).to(torch.int8)
    out = {
        "weight_packed": pack_to_int32(codes, t.bits),
        "weight_scale": t.scale.to(dtype).contiguous(),
        "weight_shape": torch.tensor(list(t.shape), dtype=torch.int64),
    }
    if not t.symmetric:
        zero = (t.zero_point.round().to(torch.int32) - offset).to(torch.int8)
        out["weight_zero_point"] = pack_to_int32(zero, t.bits, packed_dim=0).contiguous()
    return out


def _float_dtype(model: Any) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.dtype.is_floating_point), torch.float32)


def write_hf_checkpoint(model: Any, tokenizer: Any, directory: str | Path) -> Path:
    """Write a frozen quantpilot Llama-family model as a compressed-tensors checkpoint folder.

    Args:
        model: frozen weight-only quantpilot model of a transformers model built from `nn.Linear` layers.
        tokenizer: its tokenizer (saved beside the weights), or None.
        directory: a new folder (written atomically: it appears complete or not at all).

    Example:
        >>> from quantpilot.testing import tiny_causal_lm
        >>> write_hf_checkpoint(tiny_causal_lm("gpt2"), None, "x")
        Traceback (most recent call last):
        ValueError: format='hf' (compressed-tensors) packs nn.Linear layers, not GPT-2's Conv1D: use gguf or openvino
    """
    from safetensors.torch import save_file

    if architecture(model) == "gpt2" or any(type(m).__name__ == "Conv1D" for m in model.modules()):
        raise ValueError(
            "format='hf' (compressed-tensors) packs nn.Linear layers, not GPT-2's Conv1D: use gguf or openvino"
        )
    check_new(directory)
    dtype = _float_dtype(model)
    tensors, schemes, float_layers = {}, {}, {}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    classes = {
        n: "Embedding" if getattr(m, "computes", None) == "lookup" or isinstance(m, torch.nn.Embedding) else "Linear"
        for n, m in model.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) or getattr(m, "computes", None)
    }
    for name, t in lm_tensors(model).items():
        layer = name.rsplit(".", 1)[0]
        if t.codes is None:
            if tied and name == "lm_head.weight":
                continue
            if name.endswith(".weight") and layer in classes:
                float_layers[layer] = classes[layer]
            tensors[name] = t.value.to(dtype).contiguous()
            continue
        if t.bits not in (4, 8):
            raise ValueError(
                f"{layer} holds {t.bits}-bit codes; format='hf' (compressed-tensors) takes 4- or 8-bit weights: "
                "6-bit tables (llama.cpp's Q6_K grid) are for format='gguf' or 'openvino'"
            )
        schemes[layer] = _scheme(t)
        tensors.update({f"{layer}.{k}": v for k, v in _packed(t, dtype).items()})
    if not schemes:
        raise ValueError("the model has no quantized layers: quantize and freeze it before exporting")
    config = model.config.to_dict()
    quantized_classes = tuple(sorted({classes.get(layer, "Linear") for layer in schemes}))
    ignore = [n for n, kind in float_layers.items() if kind in quantized_classes]
    config["quantization_config"] = quantization_config(schemes, ignore, quantized_classes)
    if "Embedding" in quantized_classes or not all(symmetric for _, symmetric, _ in schemes.values()):
        # transformers' own compressed route cannot load packed zero points (llm-compressor #1618: the
        # model it builds expects them unpacked) nor run a compressed nn.Embedding (its forward finds no
        # weight); its dequantize route reads both right. GPU servers ignore the key.
        config["quantization_config"]["dequantize"] = True
    config["dtype"] = str(dtype).removeprefix("torch.")
    config.pop("torch_dtype", None)
    with atomic_directory(directory) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(directory)
