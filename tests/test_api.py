"""quantize -> calibrate -> freeze -> save/load on small models, and every bad input of the path."""

import json

import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot.nn import QuantConv1d, QuantConv2d, QuantConv3d, QuantEmbedding, QuantLinear, TensorQuantizer


class Mixed(nn.Module):
    """One of every registered float type, plus a LayerNorm that must stay float."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.c1 = nn.Conv1d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect")
        self.c3 = nn.Conv3d(1, 2, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8 + 4 * 8 * 8 + 2 * 4 * 4 * 4, 5)

    def forward(self, ids, image, volume):
        x = self.norm(self.emb(ids))
        x = self.c1(x.transpose(1, 2)).mean(-1)
        y = self.c2(image).flatten(1)
        z = self.c3(volume).flatten(1)
        return self.fc(torch.cat([x, y, z], dim=1))


def mixed_batch(seed):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, 20, (3, 6), generator=g),
        torch.randn(3, 1, 8, 8, generator=g),
        torch.randn(3, 1, 4, 4, 4, generator=g),
    )


@pytest.fixture
def mixed():
    torch.manual_seed(0)
    return Mixed().eval()


def calibrated(model, recipe="int8-static", n=4):
    qmodel = qp.quantize(model, recipe)
    with qp.calibrate(qmodel):
        for i in range(n):
            qmodel(*mixed_batch(i))
    return qmodel


def test_walker_swaps_every_registered_type_and_leaves_the_original(mixed):
    before = {k: v.clone() for k, v in mixed.state_dict().items()}
    qmodel = qp.quantize(mixed, "int8-static")
    expected = {"emb": QuantEmbedding, "c1": QuantConv1d, "c2": QuantConv2d, "c3": QuantConv3d, "fc": QuantLinear}
    assert {n: type(m) for n, m in qp.quantized_layers(qmodel)} == expected
    assert isinstance(qmodel.norm, nn.LayerNorm)
    assert qmodel.emb.input_quantizer.spec is None
    assert all(type(m) is not QuantLinear for m in mixed.modules())
    assert all(torch.equal(v, mixed.state_dict()[k]) for k, v in before.items())


def test_inplace_modifies_the_given_model(mixed):
    qmodel = qp.quantize(mixed, "w8a16", inplace=True)
    assert qmodel is mixed and isinstance(mixed.fc, QuantLinear)


def test_static_path_is_close_to_float_and_freeze_is_exact(mixed):
    qmodel = calibrated(mixed)
    with pytest.raises(ValueError, match="calibrate"):
        qmodel(*mixed_batch(9))  # static ranges exist only after freeze
    qp.freeze(qmodel)
    assert all(m.is_frozen for _, m in qp.quantized_layers(qmodel))
    assert "weight" not in dict(qmodel.fc.named_parameters())
    with torch.no_grad():
        ref, out = mixed(*mixed_batch(9)), qmodel(*mixed_batch(9))
    assert qp.metrics.sqnr_db(ref, out) > 25


def test_frozen_conv_equals_float_conv_with_dequantized_weights(mixed):
    qmodel = qp.freeze(calibrated(mixed))
    conv = qmodel.c2
    reference = nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect")
    with torch.no_grad():
        reference.weight.copy_(conv.quantized_weight(torch.float32))
        reference.bias.copy_(conv.bias)
        image = mixed_batch(3)[1]
        assert torch.equal(conv(image), reference(conv.input_quantizer(image)))


def test_dynamic_and_weight_only_need_no_calibration(mixed):
    for preset in ("int8-dynamic", "w8a16", "w4a16-g128"):
        model = Mixed().eval() if preset != "w4a16-g128" else nn.Sequential(nn.Linear(256, 64)).eval()
        qmodel = qp.freeze(qp.quantize(model, preset))
        batch = mixed_batch(1) if preset != "w4a16-g128" else (torch.randn(2, 256),)
        with torch.no_grad():
            assert qp.metrics.sqnr_db(model(*batch), qmodel(*batch)) > 15, preset


def test_calibrate_restores_modes_and_removes_hooks_on_error(mixed):
    qmodel = qp.quantize(mixed, "int8-static")
    qmodel.train()
    qmodel.norm.eval()
    with pytest.raises(RuntimeError, match="boom"):
        with qp.calibrate(qmodel):
            assert not torch.is_grad_enabled()
            assert not qmodel.training
            qmodel(*mixed_batch(0))
            raise RuntimeError("boom")
    assert torch.is_grad_enabled()
    assert qmodel.training and not qmodel.norm.training
    assert not qmodel._forward_hooks
    assert not any(m.collecting for m in qmodel.modules() if isinstance(m, TensorQuantizer))


def test_statistics_accumulate_over_calibration_blocks(mixed):
    one = calibrated(mixed, n=4)
    two = qp.quantize(mixed, "int8-static")
    for part in (range(0, 2), range(2, 4)):
        with qp.calibrate(two):
            for i in part:
                two(*mixed_batch(i))
    qp.freeze(one), qp.freeze(two)
    assert torch.equal(one.fc.input_quantizer.scale, two.fc.input_quantizer.scale)


def test_freeze_before_calibration_names_the_layers_and_changes_nothing(mixed):
    qmodel = qp.quantize(mixed, "int8-static")
    with pytest.raises(ValueError, match="saw no calibration data.*c1.input_quantizer"):
        qp.freeze(qmodel)
    assert not any(m.is_frozen for _, m in qp.quantized_layers(qmodel))


def test_nan_calibration_batch_is_rejected_with_the_layer_name(mixed):
    qmodel = qp.quantize(mixed, "int8-static")
    ids, image, volume = mixed_batch(0)
    image[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="c2.input_quantizer"):
        with qp.calibrate(qmodel):
            qmodel(ids, image, volume)


def test_constant_zero_activation_gets_a_valid_scale():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].bias.fill_(-1.0)  # ReLU output is always 0
    qmodel = qp.quantize(model, "int8-static")
    with qp.calibrate(qmodel):
        qmodel(torch.rand(8, 4))
    qp.freeze(qmodel)
    scale = qmodel[2].input_quantizer.scale
    assert scale.item() > 0 and torch.isfinite(scale).all()
    out = qmodel(torch.rand(3, 4))
    assert torch.isfinite(out).all()


def test_model_without_quantizable_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="no layer this recipe quantizes"):
        qp.quantize(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)))
    with pytest.raises(ValueError, match="no layer this recipe quantizes"):
        qp.quantize(nn.Sequential(nn.Linear(2, 2)), qp.Recipe(skip=("*",)))


def test_wrong_argument_types():
    with pytest.raises(TypeError, match="nn.Module"):
        qp.quantize("model")
    with pytest.raises(TypeError, match="Recipe"):
        qp.quantize(nn.Linear(2, 2), 8)
    with pytest.raises(ValueError, match="not quantized"):
        with qp.calibrate(nn.Linear(2, 2)):
            pass
    with pytest.raises(ValueError, match="already quantized"):
        qp.quantize(qp.quantize(nn.Sequential(nn.Linear(2, 2))))


def test_save_load_is_bit_exact_and_never_overwrites(mixed, tmp_path):
    qmodel = qp.freeze(calibrated(mixed))
    out_dir = qp.save(qmodel, tmp_path / "q")
    meta = json.loads((out_dir / "quantpilot.json").read_text())
    assert meta["format_version"] == 2 and set(meta["layers"]) == {"emb", "c1", "c2", "c3", "fc"}
    fresh = Mixed().eval()  # other random weights: all must come from the file
    loaded = qp.load(fresh, out_dir)
    with torch.no_grad():
        for seed in range(3):
            assert torch.equal(loaded(*mixed_batch(seed)), qmodel(*mixed_batch(seed)))
    with pytest.raises(ValueError, match="already exists"):
        qp.save(qmodel, out_dir)


def test_save_requires_a_frozen_model(mixed, tmp_path):
    with pytest.raises(ValueError, match="not frozen"):
        qp.save(calibrated(mixed), tmp_path / "q")


def test_load_rejects_another_model_and_tampered_files(mixed, tmp_path):
    out_dir = qp.save(qp.freeze(calibrated(mixed)), tmp_path / "q")
    with pytest.raises(ValueError, match="does not match"):
        qp.load(nn.Sequential(nn.Linear(8, 5)), out_dir)

    class Wider(Mixed):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv1d(8, 8, 5, padding=2)

    with pytest.raises(ValueError, match="does not fit|do not match"):
        qp.load(Wider(), out_dir)
    meta_path = out_dir / "quantpilot.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 7}))
    with pytest.raises(ValueError, match="format_version 7"):
        qp.load(Mixed(), out_dir)
    meta_path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        qp.load(Mixed(), out_dir)
    with pytest.raises(ValueError, match="has no"):
        qp.load(Mixed(), tmp_path / "nowhere")


def test_gpt2_conv1d_is_quantized_like_a_linear():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    qmodel = qp.quantize(model, "int8-dynamic")
    types = {type(m).__name__ for _, m in qp.quantized_layers(qmodel)}
    assert "QuantLinear" in types and not any(type(m).__name__ == "Conv1D" for m in qmodel.modules())
    ids = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        ref, out = model(ids).logits, qp.freeze(qmodel)(ids).logits
    assert qp.metrics.sqnr_db(ref, out) > 20


def test_summary_lists_every_layer(mixed):
    rows = qp.summary(qp.freeze(calibrated(mixed)))
    assert [r.layer for r in rows] == ["emb", "c1", "c2", "c3", "fc"]
    fc = rows[-1]
    assert fc.activations == "int8 asym per-tensor" and fc.input_range.startswith("[")
    assert fc.weight_bytes < fc.float_weight_bytes / 3
    assert "total" in str(rows)
