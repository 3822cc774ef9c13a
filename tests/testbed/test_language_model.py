"""The language-model testbed helpers: data, calibration windows, tiny models, training schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from quantpilot_testbed import language_model as lm


def byte_tokenizer(text, **kwargs):
    return {"input_ids": list(text.encode("utf-8"))}


@pytest.mark.parametrize("kind", ["gpt2", "llama"], ids=["gpt2", "llama"])
def test_tiny_causal_lm_is_seeded_and_causal(kind):
    a, b = lm.tiny_causal_lm(kind, seed=3), lm.tiny_causal_lm(kind, seed=3)
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out_a, out_b = a(input_ids=ids).logits, b(input_ids=ids).logits
        changed = ids.clone()
        changed[0, -1] = (changed[0, -1] + 1) % 512
        out_changed = a(input_ids=changed).logits
    assert torch.equal(out_a, out_b)
    assert not a.training
    # Causal: changing the last token leaves every earlier position's prediction unchanged.
    torch.testing.assert_close(out_changed[0, :-1], out_a[0, :-1])
    with pytest.raises(ValueError, match="kind"):
        lm.tiny_causal_lm("bert")


def test_wikitext_tokens_and_calibration_windows():
    tokens = lm.wikitext_tokens("valid", byte_tokenizer)
    assert tokens.dtype == torch.long and tokens.dim() == 1 and tokens.numel() > 1_000_000
    batches = lm.calibration_batches(byte_tokenizer, n=3, seq_len=64, seed=5)
    again = lm.calibration_batches(byte_tokenizer, n=3, seq_len=64, seed=5)
    assert [b["input_ids"].shape for b in batches] == [torch.Size([1, 64])] * 3
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches, again, strict=True))
    # Each window is a contiguous slice of valid.txt.
    text = bytes(batches[0]["input_ids"][0].tolist())
    assert text in lm.wikitext_path("valid").read_bytes()
    with pytest.raises(ValueError, match="split"):
        lm.wikitext_tokens("train", byte_tokenizer)
    with pytest.raises(ValueError, match="n >= 1"):
        lm.calibration_batches(byte_tokenizer, n=0)


def test_missing_data_and_untrained_cache_raise_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTPILOT_WIKITEXT", str(tmp_path))
    with pytest.raises(ValueError, match="QUANTPILOT_WIKITEXT"):
        lm.wikitext_tokens("test", byte_tokenizer)
    with pytest.raises(ValueError, match="train_lm.py"):
        lm.load_testbed(tmp_path / "empty", train=False)
    monkeypatch.setenv("QUANTPILOT_CACHE", str(tmp_path))
    assert lm.default_cache_dir().is_relative_to(tmp_path)


def test_learning_rate_warms_up_then_anneals_to_a_tenth():
    assert lm._learning_rate(1.0, 0.0) < 0.05
    assert lm._learning_rate(1.0, 0.05) == pytest.approx(1.0)
    assert lm._learning_rate(1.0, 1.0) == pytest.approx(0.1)
    values = [lm._learning_rate(1.0, p / 100) for p in range(5, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


# ---------------------------------------------------------------- the target folder: never delete the user's files


class _FakeCheckpoint:
    """Stands in for the trained model and tokenizer: `save_pretrained` writes one small file."""

    def __init__(self, name):
        self.name = name

    def save_pretrained(self, folder):
        (Path(folder) / f"{self.name}.json").write_text("{}")


@pytest.fixture
def no_training(monkeypatch):
    calls = []

    def fake_train(steps, max_seconds, log, arch="gpt2"):
        calls.append(steps if arch == "gpt2" else (arch, steps))
        return _FakeCheckpoint("model"), _FakeCheckpoint("tokenizer"), {"steps": steps}

    monkeypatch.setattr(lm, "_train", fake_train)
    return calls


def test_a_folder_of_the_users_files_is_refused_before_training_and_kept(tmp_path, no_training):
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for call in (lambda: lm.train_testbed(mine, steps=1), lambda: lm.load_testbed(mine)):
        with pytest.raises(ValueError, match="not a quantpilot testbed"):
            call()
    with pytest.raises(ValueError, match="not a quantpilot testbed"):
        lm.train_testbed(mine, steps=1, overwrite=True)
    assert no_training == []
    assert (mine / "thesis.tex").read_text() == "years of work" and len(list(mine.iterdir())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-project"]  # no temporary folder left either
    afile = tmp_path / "notes.txt"
    afile.write_text("keep")
    with pytest.raises(ValueError, match="is a file"):
        lm.train_testbed(afile, steps=1)
    assert afile.read_text() == "keep"


def test_training_goes_into_a_new_or_empty_folder(tmp_path, no_training):
    new = lm.train_testbed(tmp_path / "a" / "testbed", steps=2, log=lambda line: None)
    assert sorted(p.name for p in new.iterdir()) == ["model.json", "tokenizer.json", "train_log.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert lm.train_testbed(empty, steps=1) == empty and (empty / "train_log.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "empty"]
    with pytest.raises(ValueError, match="already holds a trained testbed"):
        lm.train_testbed(empty, steps=1)
    assert no_training == [2, 1]


def test_overwrite_replaces_only_a_trained_testbed_after_the_new_one_is_written(tmp_path, no_training, monkeypatch):
    target = lm.train_testbed(tmp_path / "testbed", steps=1)
    (target / "stale.bin").write_text("old weights")
    lm.train_testbed(target, steps=3, overwrite=True)
    assert not (target / "stale.bin").exists()
    assert json.loads((target / "train_log.json").read_text()) == {"steps": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["testbed"]

    def failing_train(steps, max_seconds, log, arch="gpt2"):
        raise KeyboardInterrupt

    (target / "stale.bin").write_text("old weights")
    monkeypatch.setattr(lm, "_train", failing_train)
    with pytest.raises(KeyboardInterrupt):
        lm.train_testbed(target, steps=1, overwrite=True)
    assert (target / "stale.bin").read_text() == "old weights"  # the old testbed stays until a new one exists


def test_a_folder_filled_while_training_is_left_alone_and_the_result_kept(tmp_path):
    target, tmp = tmp_path / "testbed", tmp_path / ".partial"
    tmp.mkdir()
    (tmp / "train_log.json").write_text("{}")
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match=r"nothing in it was touched.*\.partial"):
        lm._install(tmp, target)
    assert (target / "mine.txt").read_text() == "keep" and (tmp / "train_log.json").is_file()


def test_train_lm_script_refuses_a_users_folder_even_with_force(tmp_path, no_training, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "train_lm", Path(__file__).resolve().parents[2] / "scripts" / "train_lm.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.train_testbed = lm.train_testbed  # the patched module's function, with _train mocked
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("1,2")
    assert script.main(["--dir", str(mine), "--force", "--steps", "1"]) == 2
    assert "not a quantpilot testbed" in capsys.readouterr().err
    assert (mine / "data.csv").read_text() == "1,2"
    assert script.main(["--dir", str(tmp_path / "fresh"), "--steps", "1"]) == 0
    assert script.main(["--dir", str(tmp_path / "fresh"), "--steps", "1", "--force"]) == 0
    assert no_training == [1, 1]


def test_train_lm_script_trains_the_llama_testbed_into_its_own_cache(tmp_path, no_training, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "train_lm_arch", Path(__file__).resolve().parents[2] / "scripts" / "train_lm.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.train_testbed = lm.train_testbed
    monkeypatch.setenv("QUANTPILOT_CACHE", str(tmp_path))
    script.default_cache_dir = lm.default_cache_dir
    assert script.main(["--arch", "llama", "--steps", "2"]) == 0
    assert no_training == [("llama", 2)] and (tmp_path / "lm-testbed" / "llama-v1" / "train_log.json").is_file()
    with pytest.raises(ValueError, match="arch must be 'gpt2' or 'llama'"):
        lm.default_cache_dir("opt")


def test_llama_testbed_rows_are_multiples_of_256_with_gqa_and_a_tied_table():
    from quantpilot_testbed.llama_testbed import LLAMA_TESTBED_CONFIG, build_llama

    model = build_llama(512, {**LLAMA_TESTBED_CONFIG, "n_layer": 1})
    widths = {m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert widths == {256, 768} and model.config.num_key_value_heads * 2 == model.config.num_attention_heads
    assert model.lm_head.weight is model.model.embed_tokens.weight
