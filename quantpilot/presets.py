"""Named recipes: the usual int8 / int4 / fp8 choices and the language-model methods as steps.

Example:
    >>> sorted(PRESETS)[:3]
    ['awq-w4-g128', 'fp8', 'gptq-w4-g128']
"""

from __future__ import annotations

from collections.abc import Callable

from .calibrator_config import CalibratorConfig
from .recipe import OUTPUT_HEADS, Recipe
from .spec import PerChannel, PerGroup, PerTensor, QuantSpec
from .steps import AWQ, GPTQ, LLMInt8, SmoothQuant, Step

__all__ = ["PRESETS"]

_HEADS = OUTPUT_HEADS

_INT8_WEIGHTS = QuantSpec("int8", symmetric=True, narrow_range=True, granularity=PerChannel(0))

PRESETS: dict[str, Callable[[], Recipe]] = {
    # Per-channel weights, per-tensor asymmetric activations with the histogram-MSE range. Measured
    # on all-MiniLM-L6-v2 (embedding cosine, 160 held-out sentences): asym+MSE 0.9933, sym+MSE 0.9859,
    # sym+minmax 0.9824, sym+percentile 99.99 0.9624 (it clips outlier channels that carry signal),
    # sym+entropy 0.9595.
    "int8-static": lambda: Recipe(name="int8-static"),
    "int8-dynamic": lambda: Recipe(activations="dynamic", name="int8-dynamic"),
    # What TensorRT's explicit quantization fuses: symmetric int8 everywhere (zero point 0), weights
    # in the restricted range, Q/DQ on the attention matmuls and on both inputs of residual adds.
    # "add" needs a torch.fx-traceable model (CNNs); use .replace(ops=("matmul",)) for transformers.
    "int8-tensorrt": lambda: Recipe(
        activations=QuantSpec("int8", symmetric=True, granularity=PerTensor()),
        ops=("matmul", "add"),
        name="int8-tensorrt",
    ),
    "w8a16": lambda: Recipe(weights=_INT8_WEIGHTS, activations=None, name="w8a16"),
    # Asymmetric groups of 128 with a zero point, as the AWQ/GPTQ reference code stores W4.
    # Stored packed (two codes per byte, fp16 scales) like `qp.algorithms.rtn(bits=4)`, which gives
    # the same codes; the token table is quantized too and the output head stays float, as RTN keeps it.
    "w4a16-g128": lambda: Recipe(
        weights=QuantSpec("uint4", symmetric=False, granularity=PerGroup(128)),
        activations=None,
        module_types=("Linear", "Conv1D", "Embedding"),
        skip=_HEADS,
        name="w4a16-g128",
    ),
    # fp8 scales to the format's largest value: an amax (min-max) range is the usual choice.
    "fp8": lambda: Recipe(
        weights=QuantSpec("fp8_e4m3", granularity=PerChannel(0)),
        activations=QuantSpec("fp8_e4m3"),
        activation_calibrator=CalibratorConfig("minmax"),
        name="fp8",
    ),
    # The language-model methods as presets: weight-only W4 g128 on the Linear layers, the output head
    # float, as the papers and their reference code quantize decoders. GPTQ and AWQ run inside freeze,
    # on the batches calibrate records.
    "rtn-w4-g128": lambda: _weight_only_lm("rtn-w4-g128"),
    "gptq-w4-g128": lambda: _weight_only_lm("gptq-w4-g128", GPTQ()),
    "awq-w4-g128": lambda: _weight_only_lm("awq-w4-g128", AWQ()),
    # SmoothQuant W8A8 (per-token dynamic activations, the paper's O1) and LLM.int8() on every Linear but the head.
    "smoothquant-w8a8": lambda: Recipe(
        activations="dynamic",
        module_types=("Linear", "Conv1D"),
        skip=_HEADS,
        steps=(SmoothQuant(alpha=0.5),),
        name="smoothquant-w8a8",
    ),
    "llm-int8": lambda: Recipe(
        weights=None,
        activations=None,
        module_types=("Linear", "Conv1D"),
        skip=_HEADS,
        steps=(LLMInt8(threshold=6.0),),
        name="llm-int8",
    ),
}


def _weight_only_lm(name: str, *steps: Step, skip: tuple[str, ...] = _HEADS) -> Recipe:
    return Recipe(
        weights=QuantSpec("uint4", symmetric=False, granularity=PerGroup(128)),
        activations=None,
        module_types=("Linear", "Conv1D"),
        skip=skip,
        steps=steps,
        name=name,
    )
