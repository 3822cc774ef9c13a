"""The language-model testbed helpers: data, calibration windows, tiny models, training schedule."""

from __future__ import annotations

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
