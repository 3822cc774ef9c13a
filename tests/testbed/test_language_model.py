"""The language-model testbed helpers: perplexity, data, calibration windows, tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from quantpilot_testbed import language_model as lm


def byte_tokenizer(text, **kwargs):
    return {"input_ids": list(text.encode("utf-8"))}


class FixedLogits(torch.nn.Module):
    """Predicts the same distribution at every position."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, input_ids):
        return self.logits.expand(*input_ids.shape, -1)


def test_perplexity_matches_hand_computed_nll():
    probs = torch.tensor([0.5, 0.25, 0.25])
    model = FixedLogits(probs.log())
    tokens = torch.tensor([0, 1, 2, 0, 0, 0, 1, 1])  # windows [0 1 2 0] [0 0 1 1]: predicted 1 2 0 | 0 1 1
    expected = math.exp(-(math.log(0.25) * 4 + math.log(0.5) * 2) / 6)
    assert lm.perplexity(model, tokens, window=4) == pytest.approx(expected, rel=1e-6)
    # Only the first window: predicted 1, 2, 0.
    first = math.exp(-(2 * math.log(0.25) + math.log(0.5)) / 3)
    assert lm.perplexity(model, tokens, window=4, max_windows=1) == pytest.approx(first, rel=1e-6)


def test_perplexity_batches_do_not_change_the_result():
    model = lm.tiny_causal_lm("gpt2")
    tokens = torch.randint(0, 512, (5 * 32 + 7,), generator=torch.Generator().manual_seed(1))
    a = lm.perplexity(model, tokens, window=32, batch_size=1)
    b = lm.perplexity(model, tokens, window=32, batch_size=4)
    assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"window": 1}, "window"), ({"window": 1000}, "do not fill"), ({"tokens": torch.zeros(2, 8)}, "1-D")],
    ids=["window-too-small", "too-few-tokens", "not-1d"],
)
def test_perplexity_rejects_bad_input(kwargs, match):
    args = {"tokens": torch.arange(100) % 7, "window": 10} | kwargs
    with pytest.raises(ValueError, match=match):
        lm.perplexity(FixedLogits(torch.zeros(7)), **args)


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


def test_kl_to_reference_is_zero_for_the_same_model_and_matches_a_hand_computation():
    model = lm.tiny_causal_lm("gpt2")
    tokens = torch.randint(0, 512, (96,), generator=torch.Generator().manual_seed(0))
    assert lm.kl_to_reference(model, model, tokens, window=32) == pytest.approx(0.0, abs=1e-7)
    other = lm.tiny_causal_lm("gpt2", seed=3)
    with torch.no_grad():
        ids = tokens.view(3, 32)
        p = torch.log_softmax(model(input_ids=ids).logits, -1)
        q = torch.log_softmax(other(input_ids=ids).logits, -1)
        expected = (p.exp() * (p - q)).sum(-1).mean().item()
    got = lm.kl_to_reference(other, model, tokens, window=32, batch_size=2)
    assert got == pytest.approx(expected, rel=1e-5) and got > 0
    with pytest.raises(ValueError, match="window"):
        lm.kl_to_reference(other, model, tokens, window=1)
