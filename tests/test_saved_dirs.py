"""saved_dirs: a folder the command line wrote reopens from the folder alone (source.json + copied config)."""

import json

import pytest
import torch

import quantpilot as qp
from quantpilot.saved_dirs import model_folder, open_saved, read_source, write_source
from quantpilot.testing import tiny_causal_lm


def test_transformers_folder_reopens_bit_exactly(tmp_path):
    model = tiny_causal_lm("llama")
    hf = tmp_path / "hf"
    model.save_pretrained(hf)
    qmodel = qp.freeze(qp.quantize(model, "w8a16"))
    out = tmp_path / "out"
    qp.save(qmodel, out)
    write_source(out, hf_dir=hf, auto_class="AutoModelForCausalLM")
    assert (out / "config.json").is_file()
    reopened, _ = open_saved(out)
    ids = torch.randint(0, model.config.vocab_size, (1, 9))
    with torch.no_grad():
        assert torch.equal(reopened(ids).logits, qmodel(ids).logits)


def test_autoquantize_layout_is_found_under_model(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "quantpilot.json").write_text("{}")
    assert model_folder(tmp_path) == tmp_path / "model"


@pytest.mark.parametrize(
    "record, message",
    [
        (None, "has no source.json"),
        ("{not json", "is damaged"),
        (json.dumps({"format": 9, "kind": "bundled", "name": "x"}), "not a format-1"),
        (json.dumps({"format": 1, "kind": "weird"}), "unknown model source"),
    ],
    ids=["missing", "not-json", "future-format", "unknown-kind"],
)
def test_bad_source_records_are_one_line_errors(tmp_path, record, message):
    if record is not None:
        (tmp_path / "source.json").write_text(record)
    with pytest.raises(ValueError, match=message):
        read_source(tmp_path)


def test_write_source_needs_exactly_one_origin(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        write_source(tmp_path)
    with pytest.raises(ValueError, match="no config.json"):
        write_source(tmp_path, hf_dir=tmp_path)
