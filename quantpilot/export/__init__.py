"""Export quantized models for inference engines, and check the export against PyTorch.

Example:
    >>> from quantpilot.export import export_onnx
    >>> callable(export_onnx)
    True
"""

from .llm import LLMExport, export_llm
from .onnx import TARGETS, export_onnx
from .verify import AgreementReport, compare_with_onnxruntime

__all__ = ["export_llm", "LLMExport", "export_onnx", "TARGETS", "compare_with_onnxruntime", "AgreementReport"]
