"""Model code that reads `.weight` (T5, ViT, DeiT, DeBERTa-v2) runs after `freeze` and after `load`."""

import os

import pytest
import torch

import quantpilot as qp

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _t5():
    config = transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4
    )
    ids = torch.randint(0, 64, (2, 6))
    return transformers.T5EncoderModel(config), {"input_ids": ids}


def _vit_like(cls, config_cls):
    config = config_cls(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
    )
    return cls(config), {"pixel_values": torch.randn(2, 3, 32, 32)}


def _deberta():
    config = transformers.DebertaV2Config(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        relative_attention=True,
        position_buckets=8,
        pos_att_type=["p2c", "c2p"],
    )
    return transformers.DebertaV2Model(config), {"input_ids": torch.randint(0, 64, (2, 6))}


MODELS = {
    "t5": _t5,
    "vit": lambda: _vit_like(transformers.ViTModel, transformers.ViTConfig),
    "deit": lambda: _vit_like(transformers.DeiTModel, transformers.DeiTConfig),
    "deberta-v2": _deberta,
}


@pytest.mark.parametrize("preset", ["w8a16", "int8-static"], ids=["w8a16", "int8-static"])
@pytest.mark.parametrize("name", list(MODELS), ids=list(MODELS))
def test_model_runs_after_freeze_and_after_load(name, preset, tmp_path):
    torch.manual_seed(0)
    model, batch = MODELS[name]()
    model.eval()
    qmodel = qp.quantize(model, preset)
    if preset == "int8-static":
        with qp.calibrate(qmodel):
            qmodel(**batch)
    qp.freeze(qmodel)
    with torch.no_grad():
        expected = qmodel(**batch).last_hidden_state
        loaded = qp.load(model, qp.save(qmodel, tmp_path / name))
        assert torch.equal(loaded(**batch).last_hidden_state, expected)
        assert qp.metrics.sqnr_db(model(**batch).last_hidden_state, expected) > 10
