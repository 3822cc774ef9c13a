"""Reload an LM export in its engine and measure perplexity on the same tokens as quantpilot's model.

Engines: transformers (`AutoModelForCausalLM.from_pretrained`), OpenVINO (CPU, f32 precision and no
dynamic activation quantization, so only the weights' format can differ), llama.cpp through
`llama-cpp-python` when it is installed. Without llama-cpp-python a GGUF is read back with the
`gguf` package's reader and dequantizer and every tensor is compared with quantpilot's weight
(llama.cpp's arithmetic on the same bytes is what the benchmark measures).

Example:
    >>> import torch
    >>> ids = torch.tensor([[1, 2, 3]])
    >>> round(perplexity(torch.zeros(1, 3, 4), ids), 3)  # uniform over 4 tokens
    4.0
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["perplexity", "engine_logits", "gguf_weight_error", "OPENVINO_EXACT_CONFIG"]

# OpenVINO CPU defaults compute in bf16 where the CPU has it and quantize activations to int8 for
# compressed weights; the check turns both off so it measures the exported weights alone.
OPENVINO_EXACT_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}


def perplexity(logits: torch.Tensor | np.ndarray, ids: torch.Tensor) -> float:
    """exp(mean cross-entropy) of next-token predictions: logits (1, n, vocab) against ids (1, n).

    Example:
        >>> perplexity(torch.zeros(1, 2, 10), torch.tensor([[0, 1]]))
        10.000000000000002
    """
    logits = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits).float()
    logits = logits.reshape(-1, logits.shape[-1])[: ids.shape[-1] - 1]
    loss = torch.nn.functional.cross_entropy(logits.double(), ids.reshape(-1)[1:].long())
    return math.exp(float(loss))


def engine_logits(fmt: str, path: Path, ids: torch.Tensor, vocab_size: int | None = None) -> np.ndarray | None:
    """Logits (n, vocab) of the export at `path` in its engine; None for GGUF without llama-cpp-python.

    `vocab_size` (the model's rows) is needed for GGUF: llama.cpp's logits are a flat buffer.

    Example:
        >>> engine_logits("onnx", Path("x"), torch.zeros(1, 2))
        Traceback (most recent call last):
        ValueError: format must be 'hf', 'gguf' or 'openvino', got 'onnx'
    """
    if fmt == "hf":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
        with torch.no_grad():
            return model(input_ids=ids).logits[0].float().numpy()
    if fmt == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", OPENVINO_EXACT_CONFIG)
        request = compiled.create_infer_request()
        request.reset_state()  # a stateful (KV-cache) IR scores the window as one fresh sequence
        return np.asarray(request.infer({0: ids.numpy()})[0])[0]
    if fmt == "gguf":
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            return None
        from .llama_cpp_runner import LlamaCpp

        with LlamaCpp(path, n_ctx=ids.shape[-1], vocab_size=vocab_size) as llm:
            return llm.logits(ids.reshape(-1).tolist())
    raise ValueError(f"format must be 'hf', 'gguf' or 'openvino', got {fmt!r}")


def gguf_weight_error(path: Path, expected: dict[str, Any]) -> float:
    """Largest relative RMS difference between the GGUF's tensors (gguf reader + dequantizer) and `expected`.

    `expected` maps GGUF names to the values written (quantpilot's weights in GGUF layout). A tensor
    missing on either side is a ValueError.

    Example:
        >>> gguf_weight_error.__name__
        'gguf_weight_error'
    """
    import gguf

    reader = gguf.GGUFReader(str(path))
    found = {t.name: t for t in reader.tensors}
    if set(found) != set(expected):
        raise ValueError(f"the GGUF holds {sorted(set(found) ^ set(expected))[:4]} unexpectedly (or lacks them)")
    worst = 0.0
    for name, want in expected.items():
        t = found[name]
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(np.asarray(want).shape)
        want = np.asarray(want, dtype=np.float32)
        err = np.sqrt(((got - want) ** 2).mean()) / max(np.sqrt((want**2).mean()), 1e-30)
        worst = max(worst, float(err))
    return worst
