"""bench-llm's rows: how each variant is built from the float testbed, saved, served, and reloaded.

Quantpilot rows are frozen and saved with `qp.save`; torchao and quanto rows are re-quantized from the
float testbed when reloaded (their tensor subclasses serialise with torch.save only, for the size column).

Example:
    >>> slug("RTN W4A16 g128 + table W4 g32")
    'rtn_w4a16_g128___table_w4_g32'
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch

VARIANTS = [
    "FP32",
    "bf16",
    "RTN W8A16",
    "RTN W4A16 g128",
    "AWQ W4 g128",
    "GPTQ W4 g128",
    "RTN W4A16 g128 + table W4 g32",
    "SmoothQuant W8A8",
    "LLM.int8()",
    "torchao int8 weight-only",
    "torchao int4 weight-only g128 (Intx)",
    "quanto int8 weight-only",
    "quanto int4 weight-only g128",
]
WEIGHT_ONLY_ROWS = {"RTN W8A16", "RTN W4A16 g128", "AWQ W4 g128", "GPTQ W4 g128", "RTN W4A16 g128 + table W4 g32"}
QUANTPILOT_ROWS = WEIGHT_ONLY_ROWS | {"SmoothQuant W8A8", "LLM.int8()"}


def slug(name: str) -> str:
    """The row name as a file name (letters and digits kept, the rest "_").

    >>> slug("LLM.int8()")
    'llm_int8'
    """
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def build_variant(name: str, model: torch.nn.Module, calib: list[dict]) -> torch.nn.Module:
    """The variant as a model object (quantpilot rows frozen, ready for qp.save)."""
    import quantpilot as qp

    algorithms = qp.algorithms
    if name == "FP32":
        return model
    if name == "bf16":
        return model.to(torch.bfloat16)
    if name == "RTN W8A16":
        return algorithms.rtn(model, bits=8, group_size=None)
    if name == "RTN W4A16 g128":
        return algorithms.rtn(model, bits=4, group_size=128)
    if name == "RTN W4A16 g128 + table W4 g32":
        # The token table (40 % of this small model's weights) and the head tied to it, packed too, in
        # groups of 32: the head decides every logit, and g32 costs +0.09 % perplexity where g128 costs
        # +1.4 % (measured on the testbed); the 256x256 position table stays float.
        linear = algorithms.rtn(model, bits=4, group_size=128)
        return algorithms.quantize_embeddings(linear, bits=4, group_size=32, skip=("transformer.wpe",))
    if name == "GPTQ W4 g128":
        return algorithms.gptq(model, calib, bits=4, group_size=128)
    if name in ("AWQ W4 g128", "LLM.int8()"):
        fn = getattr(algorithms, "awq" if name.startswith("AWQ") else "llm_int8", None)
        if fn is None:
            raise RuntimeError("not available: quantpilot.algorithms has no such function yet")
        return fn(model, calib, bits=4, group_size=128) if name.startswith("AWQ") else fn(model, threshold=6.0)
    if name == "SmoothQuant W8A8":
        return algorithms.smoothquant(model, calib, alpha=0.5)
    if name.startswith("torchao"):
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        if "int8" in name:
            model = model.to(torch.bfloat16)
            quantize_(model, Int8WeightOnlyConfig())
        else:
            # torchao 0.18's Int4WeightOnlyConfig packs only for GPU kernels (plain / preshuffled /
            # tile_packed_to_4d); its CPU int4 weight-only path is IntxWeightOnlyConfig, whose default
            # layout keeps int4 values unpacked in int8.
            from torchao.quantization import IntxWeightOnlyConfig
            from torchao.quantization.granularity import PerGroup

            model = model.to(torch.bfloat16)
            quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(128)))
        return model
    if name.startswith("quanto"):
        from optimum.quanto import freeze, qint4, qint8, quantize

        # quanto quantizes nn.Linear only; GPT-2's transformers Conv1D layers (weight stored transposed)
        # become equivalent nn.Linear layers first, or quanto would leave every block in float.
        model = _conv1d_as_linear(model).to(torch.bfloat16)
        quantize(model, weights=qint8 if "int8" in name else qint4, exclude=["lm_head"])
        freeze(model)
        return model
    raise ValueError(f"unknown variant {name!r}")


def _conv1d_as_linear(model: torch.nn.Module) -> torch.nn.Module:
    for name, m in list(model.named_modules()):
        if type(m).__name__ == "Conv1D":
            linear = torch.nn.Linear(m.weight.shape[0], m.weight.shape[1])
            with torch.no_grad():
                linear.weight.copy_(m.weight.t())
                linear.bias.copy_(m.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    return model


def save_variant(name: str, model: torch.nn.Module, directory: Path) -> None:
    import safetensors.torch

    import quantpilot as qp

    directory.mkdir(parents=True, exist_ok=True)
    if name in QUANTPILOT_ROWS:
        qp.save(model, directory)
    elif name.startswith(("torchao", "quanto")):
        # torchao's and quanto's tensor subclasses serialise with torch.save (what they document); size only.
        torch.save(model.state_dict(), directory / "model.pt")
    else:
        safetensors.torch.save_model(model, str(directory / "model.safetensors"))


def deployable(name: str, model: torch.nn.Module) -> torch.nn.Module:
    """What serves requests: weight-only rows on the torch-int8 engine with the rest in bf16."""
    import quantpilot as qp
    from quantpilot.nn.packed import PackedWeight, WeightOnlyEmbedding
    from quantpilot.nn.weight_only_kernels import WeightOnlyKernelLinear

    if name in WEIGHT_ONLY_ROWS:
        runner = qp.engines.compile(model, engine="torch-int8")
        served = runner.model
        for m in served.modules():
            if isinstance(m, WeightOnlyEmbedding):
                m.output_dtype = torch.bfloat16  # its rows feed the bf16 blocks
            if isinstance(m, WeightOnlyKernelLinear | PackedWeight):
                continue  # keep their exact qparams; they compute in the activations' dtype
            for key, t in list(m._parameters.items()) + list(m._buffers.items()):
                if t is not None and t.is_floating_point():
                    (m._parameters if key in m._parameters else m._buffers)[key] = (
                        torch.nn.Parameter(t.detach().to(torch.bfloat16), requires_grad=False)
                        if key in m._parameters
                        else t.to(torch.bfloat16)
                    )
        return served
    if name == "SmoothQuant W8A8":
        return qp.engines.compile(model, engine="torch-int8").model
    return model


def load_variant(name: str, directory: Path) -> torch.nn.Module:
    """Rebuild a saved variant in a fresh process (torchao rows are re-quantized from the float testbed)."""
    import safetensors.torch
    from transformers import GPT2LMHeadModel

    import quantpilot as qp
    from quantpilot_testbed.language_model import default_cache_dir, load_testbed

    config_dir = default_cache_dir()
    if name.startswith(("torchao", "quanto")):
        model, _ = load_testbed(train=False)
        return build_variant(name, model, [])
    skeleton = GPT2LMHeadModel.from_pretrained(config_dir, dtype=torch.float32)  # architecture; weights replaced
    if name in QUANTPILOT_ROWS:
        model = qp.load(skeleton, directory)
    else:
        model = skeleton.to(torch.bfloat16) if name == "bf16" else skeleton
        safetensors.torch.load_model(model, str(directory / "model.safetensors"))
    del skeleton
    gc.collect()
    return model.eval()
