"""The onnxruntime and openvino engines: one compile() shape, int8 really executed, clear errors."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

import quantpilot as qp


@pytest.fixture(scope="module")
def text_models(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    )
    model = transformers.AutoModel.from_config(config).eval()
    batch = {"input_ids": torch.randint(3, 120, (4, 16)), "attention_mask": torch.ones(4, 16, dtype=torch.long)}
    qmodel = qp.quantize(model, qp.Recipe.preset("int8-static").replace(ops=("matmul",)))
    with qp.calibrate(qmodel):
        for seed in range(3):
            g = torch.Generator().manual_seed(seed)
            qmodel(input_ids=torch.randint(3, 120, (4, 16), generator=g), attention_mask=batch["attention_mask"])
    qp.freeze(qmodel)
    path = qp.export_onnx(qmodel, batch, tmp_path_factory.mktemp("bert") / "model.onnx")
    return model, qmodel, path, batch


def test_openvino_executes_linear_layers_and_attention_in_int8(text_models):
    _, qmodel, path, batch = text_models
    runner = qp.engines.compile(path, engine="openvino", threads=1)
    kinds = [kind for kind, _ in runner.int8_ops()]
    linear_layers = [n for n, m in qp.quantized_layers(qmodel) if type(m).__name__ == "QuantLinear"]
    assert kinds.count("FullyConnected") >= len(linear_layers) - 1  # the pooler may be folded
    out = runner(**batch)
    reference = qmodel(**batch).last_hidden_state
    assert torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0) > 0.999


def _mlp_pair():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    qmodel = qp.quantize(model, "int8-static")
    with qp.calibrate(qmodel):
        for _ in range(4):
            qmodel(torch.randn(16, 32))
    return model, qp.freeze(qmodel)


def test_openvino_float_model_runs_no_int8():
    model, _ = _mlp_pair()
    x = torch.randn(4, 32)
    runner = qp.engines.compile(model, engine="openvino", example_inputs=x)
    assert runner.int8_ops() == []
    assert torch.allclose(runner(x), model(x), atol=1e-5)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_engine_compiles_a_module_and_benchmarks(engine):
    _, qmodel = _mlp_pair()
    x = torch.randn(4, 32)
    runner = qp.engines.compile(qmodel, engine=engine, example_inputs=x)
    assert runner.engine == engine
    assert runner.path.exists()  # the temporary export lives as long as the runner
    # Fused int8 kernels round the int32 accumulator through their own rescale: close, not bit-equal.
    assert torch.allclose(runner(x), qmodel(x), atol=5e-3)
    assert runner(torch.randn(7, 32)).shape == (7, 8)  # dynamic batch
    assert runner.benchmark(x, warmup=1, iters=3) > 0


def test_engine_errors_say_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="example_inputs"):
        qp.engines.compile(nn.Linear(2, 2), engine="onnxruntime")
    with pytest.raises(ValueError, match=r"\.onnx"):
        qp.engines.compile(str(tmp_path / "model.pt"), engine="openvino")
    with pytest.raises(TypeError, match="nn.Module or the path"):
        qp.engines.compile(42, engine="onnxruntime")
    with pytest.raises(ValueError, match="dtype"):
        qp.engines.compile(nn.Linear(2, 2), engine="openvino", example_inputs=torch.ones(1, 2), dtype="fp16")
    with pytest.raises(ValueError, match="threads"):
        qp.engines.compile(nn.Linear(2, 2), engine="onnxruntime", example_inputs=torch.ones(1, 2), threads=0)
    runner = qp.engines.compile(nn.Linear(2, 2), engine="onnxruntime", example_inputs=torch.ones(1, 2))
    with pytest.raises(ValueError, match="takes 1 inputs"):
        runner(torch.ones(1, 2), torch.ones(1, 2))


def test_openvino_bf16_runs_close_to_float(text_models):
    model, _, _, batch = text_models
    runner = qp.engines.compile(model, engine="openvino", example_inputs=batch, dtype="bfloat16")
    out = runner(**batch)
    reference = model(**batch).last_hidden_state
    assert torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0) > 0.99
