"""quantpilot.auto.decide: the order in which candidates within budget are checked on held-out data."""

from types import SimpleNamespace

import pytest

from quantpilot.auto.decide import SPEED_TIE, fastest_first


def _trial(name, latency_s, metric):
    return SimpleNamespace(name=name, latency_s=latency_s, metric=metric)


@pytest.mark.parametrize("lower_is_better", [False, True], ids=["higher-better", "lower-better"])
def test_a_speed_tie_goes_to_the_better_metric(lower_is_better):
    run = SimpleNamespace(loss=(lambda m: m - 1.0) if lower_is_better else (lambda m: 1.0 - m))
    worse, better = (1.02, 1.01) if lower_is_better else (0.990, 0.998)
    trials = [_trial("fast", 1.0, worse), _trial("tied", 1.0 * SPEED_TIE * 0.999, better), _trial("slow", 1.5, better)]
    assert [t.name for t in fastest_first(run, trials)] == ["tied", "fast", "slow"]


def test_a_real_speed_gap_still_wins_over_accuracy():
    run = SimpleNamespace(loss=lambda m: 1.0 - m)
    trials = [_trial("accurate", 1.10, 0.999), _trial("fast", 1.0, 0.990)]
    assert [t.name for t in fastest_first(run, trials)] == ["fast", "accurate"]
    assert fastest_first(run, []) == []
