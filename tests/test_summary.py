"""`summary` reads every quantized layer through the storage interface: every method's output and every preset."""

import pytest
import torch
from torch import nn

import quantpilot as qp

pytest.importorskip("transformers")
from tests.algorithms._tiny_lms import tiny_gpt2, tiny_llama, token_batches  # noqa: E402

BATCHES = token_batches(n=4, seq_len=64)

METHODS = {
    "rtn": lambda: qp.algorithms.rtn(tiny_llama(), bits=4, group_size=32),
    "gptq": lambda: qp.algorithms.gptq(tiny_llama(), BATCHES, bits=4, group_size=32),
    "awq": lambda: qp.algorithms.awq(tiny_llama(), BATCHES, bits=4, group_size=32, search_tokens=64),
    "llm_int8": lambda: qp.algorithms.llm_int8(tiny_gpt2()),
    "smoothquant": lambda: qp.algorithms.smoothquant(tiny_gpt2(), BATCHES, alpha=0.5),
    "quantize_embeddings": lambda: qp.algorithms.quantize_embeddings(tiny_gpt2(), bits=4, group_size=32),
}


@pytest.mark.parametrize("method", list(METHODS), ids=list(METHODS))
def test_summary_reads_every_method_output(method):
    qmodel = METHODS[method]()
    rows = qp.summary(qmodel)
    assert rows and all(r.weight_bytes < r.float_weight_bytes for r in rows if r.weights != "float")
    assert 0 < rows.quantized_share <= 1 and rows.quantized_weights <= rows.total_weights
    assert f"quantized weights: {rows.quantized_share:.1%}" in str(rows).splitlines()[-1]


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(16, 128), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128)).eval()


# Presets made of method steps (GPTQ, AWQ, LLM.int8(), SmoothQuant) are covered by the method tests above.
LAYER_PRESETS = [p for p in qp.Recipe.presets() if not getattr(qp.Recipe.preset(p), "steps", ())]


@pytest.mark.parametrize("preset", LAYER_PRESETS, ids=LAYER_PRESETS)
def test_summary_reads_every_layer_preset(preset):
    recipe = qp.Recipe.preset(preset)
    if "add" in recipe.ops:
        recipe = recipe.replace(ops=("matmul",))
    qmodel = qp.quantize(_net(), recipe)
    if qp.api.uncalibrated_quantizers(qmodel):
        with qp.calibrate(qmodel):
            qmodel(torch.randint(0, 16, (2, 8)))
    before = qp.summary(qmodel)
    rows = qp.summary(qp.freeze(qmodel))
    assert [r.layer for r in rows] == [r.layer for r in before] and rows.total_weights == before.total_weights
    assert sum(r.weight_bytes for r in rows) < sum(r.weight_bytes for r in before)


def test_share_counts_float_layers_and_a_tied_head_once():
    model = tiny_gpt2()
    rows = qp.summary(qp.algorithms.quantize_embeddings(model, bits=8, group_size=None))
    total = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    table = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    assert rows.total_weights == total and rows.quantized_weights == table
