"""OpenVINO KV-cache graphs: decoding one token per call with the state equals the full-sequence logits."""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest
import torch

from quantpilot.export.llm.engine_check import OPENVINO_EXACT_CONFIG
from quantpilot.export.llm.openvino_ir import write_openvino_ir
from quantpilot.export.llm.openvino_kv import convert_with_cache, empty_cache, make_stateful
from quantpilot.testing import tiny_causal_lm


def _prefill_then_decode(compiled, ids: np.ndarray, prompt: int) -> np.ndarray:
    """Logits of `ids` from one request: the prompt in one call, then one token per call with the cache."""
    request = compiled.create_infer_request()
    request.reset_state()
    out = [request.infer({"input_ids": ids[:, :prompt]})["logits"][0]]
    for t in range(prompt, ids.shape[1]):
        out.append(request.infer({"input_ids": ids[:, t : t + 1]})["logits"][0])
    return np.concatenate(out)


@pytest.mark.parametrize("kind", ["gpt2", "llama"], ids=["gpt2", "llama"])
def test_float_graph_decodes_with_its_cache_like_the_full_sequence(kind):
    model = tiny_causal_lm(kind).eval()
    ir = make_stateful(convert_with_cache(model))
    assert [p.get_any_name() for p in ir.inputs] == ["input_ids"] and len(ir.get_sinks()) == 4
    ids = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(3))
    compiled = ov.Core().compile_model(ir, "CPU", OPENVINO_EXACT_CONFIG)
    with torch.no_grad():
        full = model(input_ids=ids).logits[0].numpy()
    np.testing.assert_allclose(_prefill_then_decode(compiled, ids.numpy(), 10), full, rtol=1e-4, atol=1e-5)
    # The same request, reset, scores a second sequence from an empty cache (not after the first one).
    again = _prefill_then_decode(compiled, ids.numpy()[:, ::-1].copy(), 24)
    with torch.no_grad():
        np.testing.assert_allclose(again, model(input_ids=ids.flip(1)).logits[0].numpy(), rtol=1e-4, atol=1e-5)


def test_quantized_llama_ir_is_stateful_with_u4_weights(rtn_models, tmp_path):
    model = rtn_models["llama"]
    result = write_openvino_ir(model, tmp_path / "m.xml")
    assert result.stateful and result.low_bit_types == ("u4",)
    ir = ov.Core().read_model(str(result.path))
    assert [p.get_any_name() for p in ir.inputs] == ["input_ids"]
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(4))
    compiled = ov.Core().compile_model(ir, "CPU", OPENVINO_EXACT_CONFIG)
    with torch.no_grad():
        ours = model(input_ids=ids).logits[0].numpy()
    np.testing.assert_allclose(_prefill_then_decode(compiled, ids.numpy(), 5), ours, rtol=1e-4, atol=1e-5)


def test_empty_cache_feeds_the_explicit_graph_and_make_stateful_refuses_other_graphs():
    model = tiny_causal_lm("llama").eval()
    ir = convert_with_cache(model)
    ids = np.arange(6, dtype=np.int64)[None]
    out = ov.Core().compile_model(ir, "CPU", OPENVINO_EXACT_CONFIG)({"input_ids": ids, **empty_cache(model.config)})
    assert out["present.1.value"].shape == (1, 2, 6, 64)
    x = ov.opset13.parameter([1], ov.Type.f32, name="x")
    plain = ov.Model([ov.opset13.relu(x)], [x], "plain")
    with pytest.raises(ValueError, match="past_key_values"):
        make_stateful(plain)
