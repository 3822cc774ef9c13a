"""Language models in the formats their engines run, each reloaded in its engine and checked.

`export_llm(qmodel, tokenizer, out, format=...)` writes a frozen weight-only quantpilot GPT-2 or
Llama model as:

- `"hf"`: a Hugging Face checkpoint in compressed-tensors' pack-quantized form (`hf_checkpoint`):
  `transformers.AutoModelForCausalLM.from_pretrained(out)` loads it on a CPU, vLLM/SGLang on GPUs.
  Llama-family only (compressed-tensors packs `nn.Linear`; GPT-2's `Conv1D` is refused).
- `"gguf"`: one GGUF file for llama.cpp (`gguf_writer`): Q4_0 / Q4_1 / Q8_0 blocks from our codes.
- `"openvino"`: OpenVINO IR with u4/u8 compressed weights in NNCF's layout (`openvino_ir`), the KV
  cache as OpenVINO state (`openvino_kv`).

Then the export is reloaded in its engine and the perplexity of both models on the same tokens is
compared (`engine_check`); a difference above `tolerance` (relative) is a ValueError and the files
are removed, unless the export had to requantize (GGUF types the codes do not map to: warned, the
numbers are reported). Without llama-cpp-python a GGUF is checked tensor by tensor with the gguf
package's reader instead.

Example:
    >>> import tempfile, os, warnings, quantpilot as qp
    >>> from quantpilot.testing import tiny_causal_lm
    >>> q = qp.algorithms.rtn(tiny_causal_lm("llama"), bits=4, group_size=32)
    >>> r = export_llm(q, None, os.path.join(tempfile.mkdtemp(), "hf"), format="hf")
    >>> r.engine, r.passed, r.relative_difference < 1e-5
    ('transformers', True, True)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .engine_check import engine_logits, gguf_weight_error, perplexity
from .weights import SUPPORTED_ARCHITECTURES, architecture

__all__ = ["export_llm", "LLMExport", "FORMATS", "SUPPORTED_ARCHITECTURES"]

FORMATS = ("hf", "gguf", "openvino")


@dataclass(frozen=True)
class LLMExport:
    """Where an export went, which engine checked it and the perplexities it compared.

    Example:
        >>> LLMExport("gguf", Path("m.gguf"), "llama.cpp", 10.0, 10.001, 1e-4, True, None).passed
        True
    """

    format: str
    path: Path
    engine: str
    perplexity_quantpilot: float
    perplexity_engine: float | None  # None when the engine could not run (GGUF without llama-cpp-python)
    relative_difference: float  # |ppl_engine / ppl_quantpilot - 1|, or the GGUF reader's weight error
    passed: bool
    details: Any  # GGUFExport / OpenVINOExport, or None for the Hugging Face checkpoint


def _check_ids(model: Any, tokenizer: Any, text: str | None, n: int) -> torch.Tensor:
    """The tokens the check scores: the tokenized text, else a fixed random sequence (engines' agreement only)."""
    config = model.config
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or n
    if text is not None and tokenizer is not None:
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, : min(n, limit)]
        if ids.shape[1] >= 2:
            return ids
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, config.vocab_size, (1, min(n, limit)), generator=generator)


def _target(fmt: str, out: Path) -> Path:
    if fmt == "gguf" and out.suffix != ".gguf":
        return out / "model.gguf"
    if fmt == "openvino" and out.suffix != ".xml":
        return out / "openvino_model.xml"
    return out


def _remove(fmt: str, path: Path) -> None:
    if fmt == "hf":
        shutil.rmtree(path, ignore_errors=True)
        return
    for p in (path, path.with_suffix(".bin")) if fmt == "openvino" else (path,):
        p.unlink(missing_ok=True)


def _write(fmt: str, model: Any, tokenizer: Any, path: Path, gguf_type: str | None) -> Any:
    if fmt == "hf":
        from .hf_checkpoint import write_hf_checkpoint

        write_hf_checkpoint(model, tokenizer, path)
        return None
    if fmt == "gguf":
        from .gguf_writer import write_gguf

        return write_gguf(model, tokenizer, path, gguf_type)
    from .openvino_ir import write_openvino_ir

    return write_openvino_ir(model, path)


def _gguf_reader_check(model: Any, path: Path, details: Any) -> tuple[float, bool]:
    from .gguf_writer import _gguf_tensors

    expected = {name: t.value.numpy() for name, t in _gguf_tensors(model, architecture(model))}
    error = gguf_weight_error(path, expected)
    # The bytes read back must carry exactly the error the writer measured (f16 float tensors: ~2.4e-4).
    return error, error <= max(details.worst_relative_rms_error, 5e-4) * 1.01


def export_llm(
    qmodel: Any,
    tokenizer: Any,
    out: str | Path,
    format: str = "hf",
    gguf_type: str | None = None,
    check_text: str | None = None,
    check_tokens: int = 128,
    tolerance: float = 1e-3,
) -> LLMExport:
    """Export a frozen weight-only GPT-2 / Llama quantpilot model for its engine, reload it there and check it.

    Args:
        qmodel: frozen quantpilot model of a transformers causal LM (e.g. preset rtn-w4-g128, awq-w4-g128).
        tokenizer: its Hugging Face tokenizer (saved with the checkpoint, written into the GGUF), or None.
        out: new folder (hf), .gguf file or folder, .xml file or folder (openvino).
        format: "hf", "gguf" or "openvino".
        gguf_type: q8_0, q4_0, q4_1 or q6_k (GGUF only); default, per tensor, the type its codes map to exactly.
        check_text: text whose perplexity is compared (e.g. a WikiText-2 test slice); default a fixed
            random token sequence, which compares the engines' logits but says nothing of quality.
        check_tokens: tokens scored by the check (at most the model's context).
        tolerance: largest relative perplexity difference accepted (0.1 % by default).

    Example:
        >>> export_llm(None, None, "x", format="onnx")
        Traceback (most recent call last):
        ValueError: format must be one of hf, gguf, openvino (use qp.export_onnx for ONNX), got 'onnx'
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)} (use qp.export_onnx for ONNX), got {format!r}")
    if gguf_type is not None and format != "gguf":
        raise ValueError(f"gguf_type applies to format='gguf' only, got format={format!r}")
    architecture(qmodel)
    path = _target(format, Path(out))
    details = _write(format, qmodel, tokenizer, path, gguf_type)
    ids = _check_ids(qmodel, tokenizer, check_text, check_tokens)
    with torch.no_grad():
        ours = perplexity(qmodel(input_ids=ids).logits, ids)
    try:
        logits = engine_logits(format, path, ids, qmodel.config.vocab_size)
    except Exception:
        _remove(format, path)
        raise
    engine = {"hf": "transformers", "gguf": "llama.cpp", "openvino": "openvino"}[format]
    if logits is None:
        difference, passed = _gguf_reader_check(qmodel, path, details)
        result = LLMExport(format, path, "gguf reader", ours, None, difference, passed, details)
    else:
        theirs = perplexity(logits, ids)
        difference = abs(theirs / ours - 1)
        requantized = bool(getattr(details, "requantized", ()))
        result = LLMExport(
            format, path, engine, ours, theirs, difference, difference <= tolerance or requantized, details
        )
    if not result.passed:
        _remove(format, path)
        raise ValueError(
            f"the {format} export does not reproduce the model in {result.engine}: relative difference "
            f"{result.relative_difference:.2e} > {tolerance:g}; nothing was kept at {path}"
        )
    return result
