"""qp.autoquantize on a tiny BERT (functional points: the static+ops family) and on a real engine (ONNX Runtime:
the chosen model is exported, reloaded in the runtime and scored again)."""

import pytest
import torch

import quantpilot as qp
from quantpilot.batches import first_tensor

from .test_autoquantize import CALIB, FAST_INT8, _mlp, fake_timer


def _cosines(reference_model, batches):
    with torch.no_grad():
        ref = {id(b): first_tensor(qp.batches.call_model(reference_model, b)).float() for b in batches}

    def eval_fn(model, data):
        outs = [first_tensor(qp.batches.call_model(model, b)).float() for b in data]
        pairs = zip(outs, data, strict=True)
        return torch.cat([torch.cosine_similarity(o.flatten(1), ref[id(b)].flatten(1), dim=-1) for o, b in pairs])

    return eval_fn


@pytest.fixture(scope="module")
def tiny_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 100, (2, 8), generator=gen), "attention_mask": torch.ones(2, 8).long()}
               for _ in range(4)]  # fmt: skip
    return transformers.BertModel(config).eval(), batches


def test_tiny_bert_searches_the_attention_matmul_family_and_stops_at_the_first_all_int8_fit(tiny_bert):
    bert, batches = tiny_bert
    timer = fake_timer({**FAST_INT8, "static+ops": 1.5})
    result = qp.autoquantize(bert, batches, _cosines(bert, batches), budget=0.05, target="torch", timer=timer)
    report = result.report
    assert report["chosen"].startswith("static+ops"), report["trail"]
    assert "matmul" in result.recipe.ops
    steps = [(t["step"], t["decision"]) for t in report["trail"]]
    assert ("family static+ops", "stop") in steps and ("family static", "searched") in steps
    assert not any(c["family"] == "static" and c["metric"] is not None for c in report["candidates"])
    assert report["calibration_passes"] == 1
    assert report["histograms"] and all(len(h["counts"]) + 1 == len(h["bins"]) for h in report["histograms"])


def test_onnxruntime_deploys_the_chosen_qdq_model_and_scores_it_again_in_the_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    net = _mlp()
    timer = fake_timer({"fp32": 10, "static": 2})
    result = qp.autoquantize(net, CALIB, _cosines(net, CALIB), budget=0.01, target="onnxruntime", timer=timer)
    report = result.report
    assert report["float"]["latency_ms"]["bf16"] is None
    assert any("no bf16" in t["why"] for t in report["trail"])
    assert report["chosen"].startswith("static")
    deployed = report["deployed"]
    assert deployed["format"] == "onnx (QDQ int8)" and deployed["path"] == "deploy/model.onnx"
    assert deployed["reloaded_metric"] == pytest.approx(deployed["metric"], abs=1e-3)
    out = result.save(tmp_path / "out")
    assert (out / "deploy" / "model.onnx").is_file() and (out / "deploy" / "engine.json").is_file()


def test_a_transformer_gets_the_smoothquant_gptq_placement_whose_builds_match_its_recipe(tiny_bert):
    from quantpilot.auto.candidates import Builder, Candidate, families, relative_error

    bert, batches = tiny_bert
    batches = batches * 8  # SmoothQuant wants 64 rows per layer: the pooler sees one per sequence
    found = {f.name: f for f in families(bert, "openvino")[0]}
    assert "static+ops sym-gptq" not in {f.name for f in families(bert, "torch")[0]}  # not a QDQ engine
    family = found["static+ops sym-gptq"]
    assert family.recipe.ops == ("matmul",) and [s.name for s in family.recipe.steps] == ["smoothquant", "gptq"]
    builder = Builder(bert, batches, ops=family.recipe.ops)
    built = builder.build(Candidate(family.name, "quantized", family.name, family.recipe))
    rebuilt = qp.api.run_pipeline(bert, family.recipe, batches)  # what the recipe the autopilot returns rebuilds
    without_gptq = builder.build(Candidate("x", "quantized", family.name, family.recipe.replace(
        steps=family.recipe.steps[:1])))  # fmt: skip
    with torch.no_grad():
        out, again, plain, ref = (m(**batches[0]).last_hidden_state for m in (built, rebuilt, without_gptq, bert))
    # The rebuild calibrates its own ranges (the builder replays cached ones): equal up to a small part of the
    # quantization error itself.
    assert relative_error([out], [again]) < 0.01 * relative_error([ref], [out])
    layer = "encoder.layer.0.output.dense"
    assert not torch.equal(built.get_submodule(layer).weight_int, without_gptq.get_submodule(layer).weight_int)
    assert builder.proxy(built) < 0.05 and not torch.equal(out, plain)
    variants = builder.calibrator_variants(family)  # per-layer choices build from the smoothed statistics
    assert variants and all(v.recipe.steps == family.recipe.steps for v in variants)
    for v in variants:  # the placement's own schemes survive every variant
        assert all(v.recipe.overrides[p]["activations"] == o["activations"]
                   for p, o in family.recipe.overrides.items() if "activations" in o)  # fmt: skip
    assert qp.is_frozen(builder.build(variants[-1]))
