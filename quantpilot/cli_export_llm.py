"""`quantpilot export DIR --format hf|gguf|openvino`: the command line's side of `qp.export_llm`.

DIR is what `quantpilot quantize --model HF_DIR ...` wrote; `quantpilot.saved_dirs.open_saved`
rebuilds the quantized model and its tokenizer from it, and `export_llm` writes, reloads and checks
the export. `quantpilot.cli` parses the arguments and calls `export_llm_dir`.

Example:
    >>> export_llm_dir("no-such-dir", "gguf", "out.gguf")
    Traceback (most recent call last):
    ValueError: no-such-dir is not a folder quantpilot saved (quantpilot quantize --model HF_DIR --out DIR writes one)
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["export_llm_dir"]


def export_llm_dir(directory: str | Path, format: str, out: str | Path, gguf_type: str | None = None) -> Path:
    """Export the quantized LM saved in `directory` as `format` to `out`, checked in its engine; returns the path.

    Args:
        directory: a folder written by `quantpilot quantize` for a Hugging Face causal LM.
        format: "hf", "gguf" or "openvino".
        out: where the export goes (see `qp.export_llm`).
        gguf_type: q8_0, q4_0, q4_1 or q6_k for format "gguf".

    Example:
        >>> export_llm_dir(".", "onnx", "x")
        Traceback (most recent call last):
        ValueError: format must be one of hf, gguf, openvino (use qp.export_onnx for ONNX), got 'onnx'
    """
    from .export.llm import FORMATS, export_llm

    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)} (use qp.export_onnx for ONNX), got {format!r}")
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(
            f"{directory} is not a folder quantpilot saved (quantpilot quantize --model HF_DIR --out DIR writes one)"
        )
    try:
        from .saved_dirs import open_saved
    except ImportError:
        raise ValueError("this quantpilot cannot reopen saved folders yet (quantpilot.saved_dirs is missing)") from None
    qmodel, tokenizer = open_saved(directory)
    return export_llm(qmodel, tokenizer, out, format=format, gguf_type=gguf_type).path
