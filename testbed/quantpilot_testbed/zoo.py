"""An architecture zoo: tiny random-weight models of the families transformers ships.

Every family is built from its transformers config (hidden 64, 2 layers, 2-4 heads, vocabulary 128,
widths multiples of 64 where the architecture allows) with transformers' own initialisation, which
leaves weights at a scale where quantization error shows. Nothing is downloaded.

`FAMILIES[name]` is a `Family`: `build()` gives a fresh model in eval mode (seeded: two calls give
equal weights), `inputs(seed, second=False)` a batch of keyword arguments (token ids, pixel values,
`decoder_input_ids` for encoder-decoders); `second=True` gives another shape (batch and sequence
length differ) for checking exported graphs. A family this transformers version lacks has `skip` set
to the reason and no builder.

Example:
    >>> fam = FAMILIES["llama"]
    >>> fam.kind, sorted(fam.inputs(0))
    ('decoder', ['attention_mask', 'input_ids'])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["FAMILIES", "Family", "output_tensor"]

VOCAB = 128
HIDDEN = 64
FFN = 128
LAYERS = 2
IMAGE = 32

# Token ids the models' special tokens use stay out of the batches.
_SPECIAL = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


@dataclass(frozen=True)
class Family:
    """One architecture: how to build it, what it eats, and what kind of model it is."""

    name: str
    kind: str  # "decoder", "encoder", "encoder-decoder" or "vision"
    make: Callable[[], nn.Module] | None
    skip: str | None = None

    def build(self, seed: int = 0) -> nn.Module:
        if self.make is None:
            raise ValueError(f"{self.name}: {self.skip}")
        torch.manual_seed(seed)
        return self.make().eval()

    def inputs(self, seed: int, second: bool = False) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1000 + seed)
        if self.kind == "vision":
            batch = 3 if second else 4
            return {"pixel_values": torch.randn(batch, 3, IMAGE, IMAGE, generator=g)}
        batch, length = (3, 9) if second else (8, 32)
        ids = torch.randint(3, VOCAB, (batch, length), generator=g)
        if self.kind == "encoder-decoder":
            dec_length = 5 if second else 10
            return {"input_ids": ids, "decoder_input_ids": torch.randint(3, VOCAB, (batch, dec_length), generator=g)}
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def output_tensor(out: Any) -> torch.Tensor:
    """The main output of a transformers model call: logits, else the last hidden state."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state", "pooler_output"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"no tensor output in {type(out).__name__}")


def _text(hidden: int = HIDDEN, heads: int = 4, **extra: Any) -> dict[str, Any]:
    return dict(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=LAYERS,
        num_attention_heads=heads,
        intermediate_size=FFN,
        max_position_embeddings=64,
        **extra,
    )


def _llama_like(**extra: Any) -> dict[str, Any]:
    return _text(num_key_value_heads=2, use_cache=False, **_SPECIAL, **extra)


# name -> (kind, config class name, model class name, config kwargs)
_SPECS: dict[str, tuple[str, str, str, Callable[[], dict[str, Any]]]] = {
    "bert": ("encoder", "BertConfig", "BertModel", lambda: _text()),
    "roberta": ("encoder", "RobertaConfig", "RobertaModel", lambda: _text(pad_token_id=1)),
    "distilbert": (
        "encoder",
        "DistilBertConfig",
        "DistilBertModel",
        lambda: dict(
            vocab_size=VOCAB, dim=HIDDEN, hidden_dim=FFN, n_layers=LAYERS, n_heads=4, max_position_embeddings=64
        ),
    ),
    "deberta-v2": ("encoder", "DebertaV2Config", "DebertaV2Model", lambda: _text(max_relative_positions=32)),
    "modernbert": (
        "encoder",
        "ModernBertConfig",
        "ModernBertModel",
        lambda: _text(
            pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, local_attention=16
        ),
    ),
    "gpt2": (
        "decoder",
        "GPT2Config",
        "GPT2LMHeadModel",
        lambda: dict(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=64, use_cache=False, **_SPECIAL
        ),
    ),
    "gpt-neox": ("decoder", "GPTNeoXConfig", "GPTNeoXForCausalLM", lambda: _text(use_cache=False, **_SPECIAL)),
    "opt": (
        "decoder",
        "OPTConfig",
        "OPTForCausalLM",
        lambda: dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            ffn_dim=FFN,
            word_embed_proj_dim=HIDDEN,
            max_position_embeddings=64,
            use_cache=False,
            **_SPECIAL,
        ),
    ),
    "bloom": (
        "decoder",
        "BloomConfig",
        "BloomForCausalLM",
        lambda: dict(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=4, use_cache=False, **_SPECIAL),
    ),
    "falcon": (
        "decoder",
        "FalconConfig",
        "FalconForCausalLM",
        lambda: dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            max_position_embeddings=64,
            use_cache=False,
            **_SPECIAL,
        ),
    ),
    "llama": ("decoder", "LlamaConfig", "LlamaForCausalLM", lambda: _llama_like()),
    "mistral": ("decoder", "MistralConfig", "MistralForCausalLM", lambda: _llama_like(sliding_window=None)),
    "qwen2": ("decoder", "Qwen2Config", "Qwen2ForCausalLM", lambda: _llama_like()),
    "qwen3": ("decoder", "Qwen3Config", "Qwen3ForCausalLM", lambda: _llama_like(head_dim=16)),
    "phi3": ("decoder", "Phi3Config", "Phi3ForCausalLM", lambda: _llama_like()),
    "gemma": ("decoder", "GemmaConfig", "GemmaForCausalLM", lambda: _llama_like(head_dim=16)),
    "gemma2": ("decoder", "Gemma2Config", "Gemma2ForCausalLM", lambda: _llama_like(head_dim=16, sliding_window=16)),
    "gemma3-text": (
        "decoder",
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        lambda: _llama_like(head_dim=16, sliding_window=16),
    ),
    "mixtral": (
        "decoder",
        "MixtralConfig",
        "MixtralForCausalLM",
        lambda: _llama_like(num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
    ),
    # More mixture-of-experts layouts: a shared expert beside the routed ones (Qwen2-MoE), q/k norms (Qwen3-MoE, OLMoE).
    "qwen2-moe": (
        "decoder",
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        lambda: _llama_like(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=64
        ),
    ),
    "qwen3-moe": (
        "decoder",
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        lambda: _llama_like(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64),
    ),
    "olmoe": ("decoder", "OlmoeConfig", "OlmoeForCausalLM", lambda: _llama_like(num_experts=4, num_experts_per_tok=2)),
    "t5": (
        "encoder-decoder",
        "T5Config",
        "T5Model",
        lambda: dict(
            vocab_size=VOCAB,
            d_model=HIDDEN,
            d_kv=16,
            d_ff=FFN,
            num_layers=LAYERS,
            num_heads=4,
            decoder_start_token_id=0,
            use_cache=False,
            **_SPECIAL,
        ),
    ),
    "bart": (
        "encoder-decoder",
        "BartConfig",
        "BartModel",
        lambda: dict(
            vocab_size=VOCAB,
            d_model=HIDDEN,
            encoder_layers=LAYERS,
            decoder_layers=LAYERS,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=FFN,
            decoder_ffn_dim=FFN,
            max_position_embeddings=64,
            use_cache=False,
            **_SPECIAL,
        ),
    ),
    "vit": (
        "vision",
        "ViTConfig",
        "ViTModel",
        lambda: dict(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            intermediate_size=FFN,
            image_size=IMAGE,
            patch_size=8,
        ),
    ),
    "deit": (
        "vision",
        "DeiTConfig",
        "DeiTModel",
        lambda: dict(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            intermediate_size=FFN,
            image_size=IMAGE,
            patch_size=8,
        ),
    ),
    "convnext": (
        "vision",
        "ConvNextConfig",
        "ConvNextForImageClassification",
        lambda: dict(num_stages=2, hidden_sizes=[32, 64], depths=[1, 1], image_size=IMAGE, num_labels=10),
    ),
    "resnet": (
        "vision",
        "ResNetConfig",
        "ResNetForImageClassification",
        lambda: dict(embedding_size=32, hidden_sizes=[64, 64], depths=[1, 1], layer_type="basic", num_labels=10),
    ),
    "mobilenet_v2": (
        "vision",
        "MobileNetV2Config",
        "MobileNetV2ForImageClassification",
        lambda: dict(depth_multiplier=0.35, image_size=IMAGE, num_labels=10),
    ),
}


def _family(name: str, kind: str, config_name: str, model_name: str, kwargs: Callable[[], dict[str, Any]]) -> Family:
    import transformers

    config_cls = getattr(transformers, config_name, None)
    model_cls = getattr(transformers, model_name, None)
    if config_cls is None or model_cls is None:
        missing = config_name if config_cls is None else model_name
        return Family(name, kind, None, skip=f"transformers {transformers.__version__} has no {missing}")

    def make() -> nn.Module:
        model = model_cls(config_cls(**kwargs()))
        if name == "mobilenet_v2":
            # transformers' init (std 0.02 convolutions) shrinks the signal to ~1e-26 through 17 blocks:
            # He init keeps activations, and so quantization error, measurable.
            for module in model.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        return model

    return Family(name, kind, make)


FAMILIES: dict[str, Family] = {name: _family(name, *spec) for name, spec in _SPECS.items()}


# ---------------------------------------------------------------------------------------------------
# Operations: one cell of the (family x operation) matrix each; `benchmarks/zoo.py` runs them all,
# `tests/zoo/test_zoo.py` a fast subset.

CALIBRATION_SEEDS = (0, 1)  # two calibration batches
EVAL_SEED = 5


@dataclass
class Cell:
    """One result: status "ok", "warned" (ran, but quantpilot named a gap), "refused", "WRONG", "CRASH", "n/a"."""

    status: str
    detail: str = ""
    metric: float | None = None
    seconds: float = 0.0

    def short(self) -> str:
        if self.status in ("ok", "warned") and self.metric is not None:
            return f"{self.status} {self.metric:.3f}"
        return self.status

    def line(self) -> str:
        text = self.status if self.metric is None else f"{self.status} (cos {self.metric:.4f})"
        return f"{text}: {self.detail}" if self.detail else text


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cosine(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Lowest cosine similarity over output rows (last axis), float against quantized."""
    out, ref = out.detach().float(), ref.detach().float()
    if out.shape != ref.shape:
        raise AssertionError(f"output shape {tuple(out.shape)} differs from the float model's {tuple(ref.shape)}")
    if out.dim() == 1:
        out, ref = out[None], ref[None]
    cos = torch.nn.functional.cosine_similarity(out.reshape(-1, out.shape[-1]), ref.reshape(-1, ref.shape[-1]), dim=-1)
    return float(cos.min())


def _run(model: nn.Module, fam: Family, seed: int = EVAL_SEED, second: bool = False) -> torch.Tensor:
    with torch.no_grad():
        return output_tensor(model(**fam.inputs(seed, second)))


def _quantized(model: nn.Module, fam: Family, recipe: Any) -> nn.Module:
    import quantpilot as qp
    from quantpilot.api import needs_calibration

    qmodel = qp.quantize(model, recipe)
    if needs_calibration(qmodel):
        with qp.calibrate(qmodel) as m:
            for seed in CALIBRATION_SEEDS:
                m(**fam.inputs(seed))
    return qp.freeze(qmodel)


def _with_group(recipe: Any, size: int) -> Any:
    import dataclasses

    import quantpilot as qp

    return recipe.replace(weights=dataclasses.replace(recipe.weights, granularity=qp.PerGroup(size)))


def _preset(name: str) -> Callable[[Family, nn.Module, dict], Cell]:
    def op(fam: Family, model: nn.Module, state: dict) -> Cell:
        import quantpilot as qp

        recipe = qp.Recipe.preset(name)
        detail = ""
        try:
            qmodel = _quantized(model, fam, recipe)
        except ValueError as err:
            group = getattr(getattr(recipe.weights, "granularity", None), "size", None)
            if not group or group <= 64:
                raise
            # The zoo's layers are 64 wide: the g128 presets refuse; the same recipe in groups of 64 runs.
            detail = f"g128 refused ({_one_line(err, 160)}); ran with PerGroup(64)"
            qmodel = _quantized(model, fam, _with_group(recipe, 64))
        state[name] = qmodel
        # The share of the model's weights stored quantized (MoE expert stacks included), for the matrix's notes.
        covered = f"{qp.summary(qmodel).quantized_share:.1%} of weights quantized"
        return Cell("ok", "; ".join(filter(None, [detail, covered])), _cosine(_run(qmodel, fam), state["float"]))

    return op


def op_matmul(fam: Family, model: nn.Module, state: dict) -> Cell:
    import quantpilot as qp
    from quantpilot.functional_points import functional_points

    qmodel = _quantized(model, fam, qp.Recipe.preset("int8-static").replace(ops=("matmul",)))
    points = functional_points(qmodel)
    cos = _cosine(_run(qmodel, fam), state["float"])
    if not points:
        return Cell("ok", "no matmul point installed", cos)
    return Cell("ok", f"{len(points)} matmul points", cos)


def _save_load(fam: Family, name: str, state: dict) -> Cell:
    import tempfile

    import quantpilot as qp

    qmodel = state.get(name)
    if qmodel is None:
        return Cell("n/a", f"no {name} model to save (its cell did not run)")
    with tempfile.TemporaryDirectory() as tmp:
        qp.save(qmodel, f"{tmp}/q")
        loaded = qp.load(fam.build(seed=1), f"{tmp}/q")  # other random weights: everything comes from the file
    a, b = _run(qmodel, fam), _run(loaded, fam)
    if not torch.equal(a, b):
        return Cell("WRONG", f"loaded outputs differ from the saved model's (max {float((a - b).abs().max()):.3g})")
    return Cell("ok", "bit-exact", _cosine(b, state["float"]))


def op_save_load(fam: Family, model: nn.Module, state: dict) -> Cell:
    return _save_load(fam, "int8-static", state)


def op_save_load_w4(fam: Family, model: nn.Module, state: dict) -> Cell:
    return _save_load(fam, "w4a16-g128", state)


def op_onnx(fam: Family, model: nn.Module, state: dict) -> Cell:
    import tempfile

    import onnxruntime as ort

    import quantpilot as qp

    qmodel = state.get("int8-static")
    if qmodel is None:
        return Cell("n/a", "no int8-static model to export (its cell did not run)")
    with tempfile.TemporaryDirectory() as tmp:
        path = qp.export_onnx(qmodel, fam.inputs(0), f"{tmp}/m.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        second = fam.inputs(EVAL_SEED, second=True)
        wanted = {i.name for i in session.get_inputs()}
        got = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in second.items() if k in wanted})[0])
    ref = _run(qmodel, fam, second=True)
    if got.shape != ref.shape:
        return Cell(
            "WRONG", f"ONNX Runtime output {tuple(got.shape)} vs PyTorch {tuple(ref.shape)} at the second shape"
        )
    err = float((got - ref).abs().max()) / max(float(ref.abs().max()), 1e-12)
    cos = _cosine(got, ref)
    if err > 0.1:
        return Cell("WRONG", f"ONNX Runtime vs PyTorch at the second shape: max error {err:.3g} of the range", cos)
    return Cell("ok", f"second shape {tuple(ref.shape)}, max error {err:.2g} of the range", cos)


def op_rtn_generate(fam: Family, model: nn.Module, state: dict) -> Cell:
    import quantpilot as qp

    if fam.kind != "decoder":
        return Cell("n/a")
    qmodel = qp.algorithms.rtn(model, bits=4, group_size=64)
    batch = fam.inputs(EVAL_SEED)
    with torch.no_grad():
        out = qmodel.generate(**batch, max_new_tokens=4, do_sample=False)
    length = batch["input_ids"].shape[1]
    if out.shape[1] != length + 4:
        return Cell("WRONG", f"generate returned {out.shape[1]} tokens for {length} + 4")
    return Cell("ok", "generated 4 tokens", _cosine(_run(qmodel, fam), state["float"]))


PRESET_NAMES = (
    "int8-static",
    "int8-dynamic",
    "int8-tensorrt",
    "w8a16",
    "w4a16-g128",
    "fp8",
    "rtn-w4-g128",
    "gptq-w4-g128",
    "awq-w4-g128",
    "smoothquant-w8a8",
    "llm-int8",
)

OPERATIONS: dict[str, Callable[[Family, nn.Module, dict], Cell]] = {
    **{name: _preset(name) for name in PRESET_NAMES},
    "matmul": op_matmul,
    "save/load": op_save_load,
    "save/load w4": op_save_load_w4,
    "onnx": op_onnx,
    "rtn+generate": op_rtn_generate,
}


def run_family(fam: Family, operations: tuple[str, ...] | None = None) -> dict[str, Cell]:
    """Every operation on one family, each in its own try/except; one cell's failure never stops the rest.

    A "model untouched" cell checks that the float model given to every operation kept its weights.
    """
    import time
    import warnings

    if fam.skip:
        return {name: Cell("n/a", fam.skip) for name in operations or OPERATIONS}
    model = fam.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state: dict[str, Any] = {"float": _run(model, fam)}
    cells: dict[str, Cell] = {}
    for name in operations or tuple(OPERATIONS):
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                cell = OPERATIONS[name](fam, model, state)
            except ValueError as err:
                cell = Cell("refused", _one_line(err))
            except Exception as err:  # noqa: BLE001 - every other exception is the crash being recorded
                cell = Cell("CRASH", _one_line(f"{type(err).__name__}: {err}"))
        ours = [w for w in caught if "quantpilot" in str(w.filename) or "quantpilot" in str(w.message)]
        if ours and cell.status == "ok":
            cell.status = "warned"
            cell.detail = "; ".join(filter(None, [cell.detail, _one_line(ours[0].message, 200)]))
        cell.seconds = time.perf_counter() - start
        cells[name] = cell
    after = model.state_dict()
    changed = [k for k, v in before.items() if k not in after or not torch.equal(v, after[k])]
    cells["model untouched"] = Cell("WRONG", f"float model changed: {changed[:3]}") if changed else Cell("ok")
    return cells
