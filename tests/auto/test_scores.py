"""The counted metric: per-sample scores or a float, bootstrap intervals, the deterministic held-out split."""

import numpy as np
import pytest
import torch

from quantpilot.auto.scores import Score, Scorer, bootstrap_interval, drop_interval, split_holdout


@pytest.mark.parametrize(
    "value,metric,has_samples",
    [(0.5, 0.5, False), (torch.tensor(0.25), 0.25, False), ([1.0, 0.0], 0.5, True), (torch.ones(3), 1.0, True),
     (np.array([2.0, 4.0]), 3.0, True)],
    ids=["float", "0-d tensor", "list", "tensor", "numpy"],
)  # fmt: skip
def test_scorer_reads_floats_and_per_sample_scores(value, metric, has_samples):
    scorer = Scorer(lambda model, data: value)
    score = scorer(None, [1, 2], "x")
    assert score.metric == pytest.approx(metric)
    assert (score.samples is not None) == has_samples
    assert (score.interval is not None) == has_samples
    assert scorer.calls == 1 and scorer.log == [("x", 2)]


@pytest.mark.parametrize(
    "value", [True, "0.9", [[1.0, 2.0]], [], float("nan"), object()], ids=["bool", "str", "2-d", "empty", "nan", "obj"]
)
def test_scorer_refuses_what_is_not_a_metric_in_one_line(value):
    with pytest.raises(ValueError) as err:
        Scorer(lambda model, data: value)(None, [1], "fp32 (search)")
    assert "\n" not in str(err.value) and "eval_fn" in str(err.value)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_samples():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.9, 0.1, 50), rng.normal(0.9, 0.1, 2000)
    lo_s, hi_s = bootstrap_interval(small)
    lo_l, hi_l = bootstrap_interval(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3
    assert bootstrap_interval(small) == [lo_s, hi_s]  # seeded


def test_paired_drop_interval_is_tighter_than_the_metrics_own_and_none_without_samples():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.5, 1.0, 400)
    ref, cand = Score(base.mean(), base), Score((base - 0.01).mean(), base - 0.01 + rng.normal(0, 1e-3, 400))
    lo, hi = drop_interval(ref, cand, lower_is_better=False)
    assert lo < 0.01 < hi and hi - lo < 1e-3
    own = ref.interval
    assert own[1] - own[0] > 10 * (hi - lo)
    assert drop_interval(Score(1.0), cand, False) is None


def test_split_holdout_interleaves_deterministically_and_needs_two_items():
    assert split_holdout("abcde") == (["a", "c", "e"], ["b", "d"])
    with pytest.raises(ValueError, match="holdout"):
        split_holdout([1])
