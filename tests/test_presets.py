"""Every preset is a valid recipe that survives YAML; the language-model method presets run the pipeline."""

import pytest
import torch

import quantpilot as qp
from quantpilot.testing import tiny_causal_lm

PRESETS = qp.Recipe.presets()


@pytest.mark.parametrize("name", PRESETS, ids=PRESETS)
def test_preset_round_trips_through_yaml(name, tmp_path):
    recipe = qp.Recipe.preset(name)
    assert recipe.name == name
    assert qp.Recipe.from_yaml(recipe.to_yaml(tmp_path / "r.yaml")) == recipe


LM_PRESETS = ["rtn-w4-g128", "gptq-w4-g128", "awq-w4-g128", "smoothquant-w8a8", "llm-int8"]


@pytest.mark.filterwarnings("ignore:nothing to calibrate")
@pytest.mark.parametrize("name", LM_PRESETS, ids=LM_PRESETS)
def test_language_model_presets_quantize_a_decoder(name):
    model = tiny_causal_lm("llama")
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 512, (1, 64), generator=g)} for _ in range(4)]
    qmodel = qp.quantize(model, name)
    with qp.calibrate(qmodel):
        for batch in data:
            qmodel(**batch)
    qp.freeze(qmodel)
    assert qp.is_frozen(qmodel) and type(qmodel.lm_head).__name__ == "Linear"  # the head stays float
    ids = data[0]["input_ids"]
    reference = model(input_ids=ids).logits
    out = qmodel(input_ids=ids).logits
    assert torch.isfinite(out).all()
    cosine = torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.9, f"{name}: cosine {cosine:.3f}"
