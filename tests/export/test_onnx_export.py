"""QDQ ONNX export: structure for both targets, agreement with PyTorch in ONNX Runtime, bad input.

The models are randomly initialised BERT, RoBERTa and GPT-2 from transformers configs (two layers,
so an export takes seconds), a small residual CNN, and the bundled MiniLM once.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import transformers
from torch import nn

import quantpilot as qp
from quantpilot.export import compare_with_onnxruntime
from quantpilot.export.tensorrt_rules import tensorrt_violations

CONFIGS = {
    "bert": lambda: transformers.BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    ),
    "roberta": lambda: transformers.RobertaConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    ),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=4, use_cache=False),
}


def _text_batch(batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, length // 2 :] = 0  # padding in the batch
    return {"input_ids": torch.randint(3, 120, (batch, length), generator=g), "attention_mask": mask}


def _calibrated(model: nn.Module, recipe: qp.Recipe, batches) -> nn.Module:
    qmodel = qp.quantize(model, recipe)
    with qp.calibrate(qmodel):
        for batch in batches:
            qmodel(**batch) if isinstance(batch, dict) else qmodel(batch)
    return qp.freeze(qmodel)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported_text_model(request, tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(CONFIGS[request.param]()).eval()
    recipe = qp.Recipe.preset("int8-static").replace(ops=("matmul",))
    qmodel = _calibrated(model, recipe, [_text_batch(4, 16, seed) for seed in range(4)])
    path = qp.export_onnx(qmodel, _text_batch(2, 12, 99), tmp_path_factory.mktemp(request.param) / "model.onnx")
    return request.param, model, qmodel, path


def test_export_is_qdq_with_int8_weight_initializers(exported_text_model):
    _, _, qmodel, path = exported_text_model
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = Counter(node.op_type for node in model.graph.node)
    assert model.opset_import[0].version >= 13
    attention_modules = [m for m in qmodel.modules() if type(m).__name__ == "AttentionQuantizers"]
    assert len(attention_modules) == 2
    # Four matmul inputs per attention, plus one per distinct Linear input (q/k/v may share one).
    assert ops["QuantizeLinear"] >= 4 * 2 + 4 * 2
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(int8_weights) >= len(qp.quantized_layers(qmodel)) - 1  # the embedding tables too
    # Per-channel weights: DequantizeLinear on an int8 initializer with axis 0 and a vector of scales.
    int8_names = {i.name for i in int8_weights}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8_names]
    assert weight_dq and all(next((a.i for a in n.attribute if a.name == "axis"), 1) == 0 for n in weight_dq)
    # No float copy of a quantized weight is left in the file.
    float_matrices = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2]
    assert not float_matrices


def test_dynamic_batch_and_sequence_axes(exported_text_model):
    _, _, _, path = exported_text_model
    model = onnx.load(str(path))
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[1].dim_param, f"{value.name} has fixed axes"


def test_onnxruntime_agrees_with_fake_quant_within_one_step(exported_text_model):
    _, _, qmodel, path = exported_text_model
    # Another batch size and length than the export example: the axes are dynamic.
    report = compare_with_onnxruntime(qmodel, path, _text_batch(3, 20, 7))
    assert report.points >= 2 * 4 + 6  # both attention matmuls of two layers, plus Linear inputs
    assert report.max_code_difference <= 1
    assert report.differing_fraction < 1e-3
    assert report.max_output_error <= 1e-4 * max(report.output_scale, 1.0)


def test_onnxruntime_engine_runs_the_export_close_to_pytorch(exported_text_model):
    _, float_model, qmodel, path = exported_text_model
    batch = _text_batch(3, 20, 11)
    runner = qp.engines.compile(path, engine="onnxruntime")
    out = runner(**batch)
    reference = qmodel(**batch)[0]
    fp32 = float_model(**batch)[0]
    cosine = torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.999
    assert torch.nn.functional.cosine_similarity(out.flatten(), fp32.flatten(), dim=0) > 0.95


def test_generic_asymmetric_export_breaks_tensorrt_rules(exported_text_model):
    _, _, _, path = exported_text_model
    problems = tensorrt_violations(onnx.load(str(path)))
    assert any("zero point" in p for p in problems)  # the default recipe has asymmetric activations


class ResidualCNN(nn.Module):
    """Conv-ReLU stem, one residual block (Conv-ReLU-Conv + identity), pooled Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tensorrt_cnn(tmp_path_factory):
    torch.manual_seed(0)
    model = ResidualCNN().eval()
    qmodel = _calibrated(model, qp.Recipe.preset("int8-tensorrt"), [torch.randn(8, 3, 16, 16) for _ in range(3)])
    path = qp.export_onnx(qmodel, torch.randn(2, 3, 16, 16), tmp_path_factory.mktemp("cnn") / "m.onnx", "tensorrt")
    return qmodel, path


def test_tensorrt_export_follows_the_rules(tensorrt_cnn):
    qmodel, path = tensorrt_cnn
    model = onnx.load(str(path))
    assert tensorrt_violations(model) == []
    # Both inputs of the residual Add come from DequantizeLinear.
    producer = {out: node for node in model.graph.node for out in node.output}
    adds = [n for n in model.graph.node if n.op_type == "Add" and all(i in producer for i in n.input)]
    residual = [n for n in adds if all(producer[i].op_type == "DequantizeLinear" for i in n.input)]
    assert len(residual) == 1
    # Symmetric everywhere: every zero point in the file is 0.
    zero_points = [
        onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8
    ]
    assert zero_points
    report = compare_with_onnxruntime(qmodel, path, torch.randn(5, 3, 16, 16))
    assert report.points == 6 and report.max_code_difference <= 1


def test_tensorrt_target_rejects_asymmetric_and_int4_recipes(tmp_path):
    model = ResidualCNN().eval()
    asym = _calibrated(model, qp.Recipe.preset("int8-static"), [torch.randn(4, 3, 8, 8)])
    with pytest.raises(ValueError, match="symmetric int8"):
        qp.export_onnx(asym, torch.randn(1, 3, 8, 8), tmp_path / "a.onnx", target="tensorrt")
    int4 = qp.Recipe(weights=qp.QuantSpec("int4", granularity=qp.PerChannel(0)), activations=None)
    with pytest.raises(ValueError, match="no standard QDQ form"):
        qp.export_onnx(qp.freeze(qp.quantize(model, int4)), torch.randn(1, 3, 8, 8), tmp_path / "b.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_export_bad_input(tmp_path):
    model = ResidualCNN().eval()
    qmodel = qp.quantize(model, "int8-static")
    with pytest.raises(ValueError, match="not frozen|no activation range"):
        qp.export_onnx(qmodel, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    dynamic = qp.freeze(qp.quantize(model, "int8-dynamic"))
    with pytest.raises(ValueError, match="dynamically"):
        qp.export_onnx(dynamic, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    frozen = _calibrated(model, qp.Recipe.preset("int8-static"), [torch.randn(4, 3, 8, 8)])
    with pytest.raises(ValueError, match="target"):
        qp.export_onnx(frozen, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", target="tflite")
    (tmp_path / "taken.onnx").write_text("mine")
    with pytest.raises(ValueError, match="already exists"):
        qp.export_onnx(frozen, torch.randn(1, 3, 8, 8), tmp_path / "taken.onnx")
    assert (tmp_path / "taken.onnx").read_text() == "mine"
    with pytest.raises(TypeError, match="example_inputs"):
        qp.export_onnx(frozen, [1, 2], tmp_path / "m2.onnx")


def test_export_leaves_the_model_as_it_was(tmp_path):
    model = ResidualCNN()
    qmodel = _calibrated(model, qp.Recipe.preset("int8-static"), [torch.randn(4, 3, 8, 8)])
    qmodel.train()
    requires_grad = [p.requires_grad for p in qmodel.parameters()]
    x = torch.randn(2, 3, 8, 8)
    before = qmodel.eval()(x).detach()
    qmodel.train()
    qp.export_onnx(qmodel, x, tmp_path / "m.onnx")
    assert qmodel.training and [p.requires_grad for p in qmodel.parameters()] == requires_grad
    assert torch.equal(qmodel.eval()(x).detach(), before)


def test_minilm_export_is_four_times_smaller_and_agrees(tmp_path):
    import quantpilot.models
    from quantpilot_testbed.datasets import sentences
    from quantpilot_testbed.sentence_embedding import token_batches

    model, tokenizer = quantpilot.models.load("minilm")
    batches = [dict(b) for b in token_batches(tokenizer, sentences("calibration")[:32], batch_size=16)]
    qmodel = _calibrated(model, qp.Recipe.preset("int8-static").replace(ops=("matmul",)), batches)
    example = dict(batches[0])
    quantized = qp.export_onnx(qmodel, example, tmp_path / "int8.onnx")
    float_bytes = 4 * sum(p.numel() for p in model.parameters())  # what an FP32 export stores
    ratio = float_bytes / quantized.stat().st_size
    assert ratio > 3.5, f"the QDQ file is only {ratio:.2f}x smaller"
    held_out = dict(next(token_batches(tokenizer, sentences("eval")[:8], batch_size=8)))
    report = compare_with_onnxruntime(qmodel, quantized, held_out)
    assert report.points >= 6 * (6 + 4) and report.max_code_difference <= 1
    assert np.isfinite(report.max_output_error) and report.max_output_error < 1e-3 * report.output_scale


class PaddedStrideTwo(nn.Module):
    """TF-"SAME" on an even input: an explicit asymmetric zero Pad before a stride-2 convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.conv = nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


def test_quantize_dequantize_moves_above_zero_pads_and_still_agrees(tmp_path):
    torch.manual_seed(0)
    qmodel = _calibrated(PaddedStrideTwo().eval(), qp.Recipe.preset("int8-static"), [torch.randn(4, 3, 8, 8)])
    path = qp.export_onnx(qmodel, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    pad = next(n for n in graph.node if n.op_type == "Pad")
    conv = next(n for n in graph.node if n.op_type == "Conv")
    # Q -> DQ -> Pad -> Conv: the engine can fold the Pad into its int8 convolution.
    assert producer[pad.input[0]].op_type == "DequantizeLinear"
    assert producer[conv.input[0]] is pad or producer[conv.input[0]].op_type == "Pad"
    report = compare_with_onnxruntime(qmodel, path, torch.randn(3, 3, 8, 8))
    assert report.points == 1 and report.max_code_difference == 0
    assert report.max_output_error < 1e-5


def test_encoder_decoder_export_takes_its_own_decoder_length(tmp_path):
    import onnxruntime as ort

    cfg = transformers.BartConfig(
        vocab_size=100, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    qmodel = qp.quantize(transformers.BartModel(cfg).eval(), "int8-static")
    enc, dec = torch.randint(3, 100, (2, 12)), torch.randint(3, 100, (2, 7))
    with qp.calibrate(qmodel):
        qmodel(input_ids=enc, decoder_input_ids=dec)
    qp.freeze(qmodel)
    path = qp.export_onnx(qmodel, {"input_ids": enc, "decoder_input_ids": dec}, tmp_path / "bart.onnx")
    # A second shape, the decoder shorter than the encoder and both unlike the export's.
    enc2, dec2 = torch.randint(3, 100, (3, 9)), torch.randint(3, 100, (3, 5))
    onnx_out = ort.InferenceSession(str(path)).run(None, {"input_ids": enc2.numpy(), "decoder_input_ids": dec2.numpy()})
    with torch.no_grad():
        torch_out = qmodel(input_ids=enc2, decoder_input_ids=dec2).last_hidden_state
    assert onnx_out[0].shape == (3, 5, 32)
    assert float((torch.from_numpy(onnx_out[0]) - torch_out).abs().max()) < 0.1 * float(torch_out.abs().max())


def test_a_mixture_of_experts_model_exports_and_agrees_at_a_second_shape(tmp_path):
    # Expert stacks are quantized (QuantExperts) and traced through transformers' batched_mm experts
    # implementation (its default grouped_mm has no ONNX form: this used to be a refusal).
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2, use_cache=False,
    )  # fmt: skip
    qmodel = qp.quantize(transformers.MixtralForCausalLM(config).eval(), "int8-static")
    with qp.calibrate(qmodel):
        qmodel(input_ids=torch.randint(3, 64, (4, 16)))
    qp.freeze(qmodel)
    path = qp.export_onnx(qmodel, {"input_ids": torch.randint(3, 64, (4, 16))}, tmp_path / "mixtral.onnx")
    assert qmodel.config._experts_implementation == "grouped_mm"  # restored after the trace
    second = torch.randint(3, 64, (3, 9))  # another batch and length
    session = pytest.importorskip("onnxruntime").InferenceSession(str(path))
    onnx_out = torch.from_numpy(session.run(None, {"input_ids": second.numpy()})[0])
    with torch.no_grad():
        torch_out = qmodel(input_ids=second).logits
    assert onnx_out.shape == torch_out.shape
    assert float((onnx_out - torch_out).abs().max()) < 0.01 * float(torch_out.abs().max())
