"""Recipe steps: every method quantpilot applies to a model, as a small class registered by name.

Example:
    >>> from quantpilot.steps import registered_steps
    >>> registered_steps()
    ['awq', 'fold_batchnorm', 'gptq', 'llm_int8', 'quantize_embeddings', 'smoothquant']
"""

from .base import Step, StepContext, as_step, register_step, registered_steps, step_from_dict
from .smoothing import SmoothQuant
from .structural import FoldBatchNorm, LLMInt8, QuantizeEmbeddings
from .weight_methods import AWQ, GPTQ

__all__ = [
    "Step",
    "StepContext",
    "register_step",
    "registered_steps",
    "step_from_dict",
    "as_step",
    "SmoothQuant",
    "GPTQ",
    "AWQ",
    "LLMInt8",
    "FoldBatchNorm",
    "QuantizeEmbeddings",
]
