"""`quantpilot quantize --model HF_DIR` on a causal LM: streamed, a line per block, reopened alone, resumed."""

import warnings

import pytest
import torch

from quantpilot.cli import main
from quantpilot.saved_dirs import open_saved


class _Tokenizer:
    """Stands in for the folder's tokenizer (the tiny decoders are saved without one)."""

    def __call__(self, text, **_):
        return {"input_ids": [hash(w) % 256 for w in text.split()]}


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(" ".join(f"w{i % 97}" for i in range(600)))
    return path


def test_gptq_from_the_command_line_prints_blocks_and_reopens_alone(
    saved_decoder, text_file, tmp_path, capsys, monkeypatch
):
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: _Tokenizer())
    model, out = str(saved_decoder("llama")), str(tmp_path / "q")
    args = ["quantize", "--model", model, "--recipe", "gptq-w4-g128", "--calib-data", str(text_file),
            "--calib-samples", "4", "--seq-len", "64", "--out", out, "--threads", "1"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
        printed = capsys.readouterr().out
        assert "block 2/2" in printed and "resident" in printed and "saved to" in printed
        qmodel, _ = open_saved(tmp_path / "q")
    assert type(qmodel.model.layers[1].self_attn.q_proj).__name__ == "WeightOnlyLinear"
    ids = torch.randint(0, 256, (1, 8))
    assert qmodel(input_ids=ids).logits.shape == (1, 8, 256)
    assert torch.isfinite(qmodel(input_ids=ids).logits).all()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--recipe", "gptq-w4-g128"], "pass --calib-data"),
        (["--recipe", "gptq-w4-g128", "--calib-data", "missing.txt"], "is not a file"),
    ],
    ids=["no-data", "missing-file"],
)
def test_command_line_errors_are_one_line(extra, message, saved_decoder, tmp_path, capsys):
    folder = saved_decoder("gpt2")
    capsys.readouterr()  # what writing the folder printed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["quantize", "--model", str(folder), "--out", str(tmp_path / "q"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_a_tokenizer_larger_than_the_model_is_one_line(saved_decoder, text_file, tmp_path, capsys, monkeypatch):
    # A folder holding another model's tokenizer would index past the token table deep inside torch.
    import transformers

    class Wide(_Tokenizer):
        def __call__(self, text, **_):
            return {"input_ids": [300 + i for i, _ in enumerate(text.split())]}

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Wide())
    args = ["quantize", "--model", str(saved_decoder("llama")), "--recipe", "gptq-w4-g128", "--calib-data",
            str(text_file), "--calib-samples", "2", "--seq-len", "64", "--out", str(tmp_path / "q")]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "vocab_size is 256" in err and err.count("\n") == 1 and not (tmp_path / "q").exists()


def test_recipes_that_cannot_stream_keep_the_in_memory_path(saved_decoder):
    import quantpilot as qp
    from quantpilot.cli_stream import streams

    folder = str(saved_decoder("gpt2"))
    assert streams(folder, qp.Recipe.preset("gptq-w4-g128")) and streams(folder, qp.Recipe.preset("w8a16"))
    assert not streams(folder, qp.Recipe.preset("int8-static"))
    assert not streams(folder, qp.Recipe.preset("llm-int8"))
