"""Language-model metrics: perplexity and KL to the float model, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from quantpilot.metrics import kl_to_reference, perplexity
from quantpilot.testing import tiny_causal_lm


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
    assert perplexity(model, tokens, window=4) == pytest.approx(expected, rel=1e-6)
    # Only the first window: predicted 1, 2, 0.
    first = math.exp(-(2 * math.log(0.25) + math.log(0.5)) / 3)
    assert perplexity(model, tokens, window=4, max_windows=1) == pytest.approx(first, rel=1e-6)


def test_perplexity_batches_do_not_change_the_result():
    model = tiny_causal_lm("gpt2")
    tokens = torch.randint(0, 512, (5 * 32 + 7,), generator=torch.Generator().manual_seed(1))
    a = perplexity(model, tokens, window=32, batch_size=1)
    b = perplexity(model, tokens, window=32, batch_size=4)
    assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"window": 1}, "window"), ({"window": 1000}, "do not fill"), ({"tokens": torch.zeros(2, 8)}, "1-D")],
    ids=["window-too-small", "too-few-tokens", "not-1d"],
)
def test_perplexity_rejects_bad_input(kwargs, match):
    args = {"tokens": torch.arange(100) % 7, "window": 10} | kwargs
    with pytest.raises(ValueError, match=match):
        perplexity(FixedLogits(torch.zeros(7)), **args)


def test_kl_to_reference_is_zero_for_the_same_model_and_matches_a_hand_computation():
    model = tiny_causal_lm("gpt2")
    tokens = torch.randint(0, 512, (96,), generator=torch.Generator().manual_seed(0))
    assert kl_to_reference(model, model, tokens, window=32) == pytest.approx(0.0, abs=1e-7)
    other = tiny_causal_lm("gpt2", seed=3)
    with torch.no_grad():
        ids = tokens.view(3, 32)
        p = torch.log_softmax(model(input_ids=ids).logits, -1)
        q = torch.log_softmax(other(input_ids=ids).logits, -1)
        expected = (p.exp() * (p - q)).sum(-1).mean().item()
    got = kl_to_reference(other, model, tokens, window=32, batch_size=2)
    assert got == pytest.approx(expected, rel=1e-5) and got > 0
    with pytest.raises(ValueError, match="window"):
        kl_to_reference(other, model, tokens, window=1)
