"""quantpilot.auto.decide: the order in which candidates within budget are checked on held-out data."""

from types import SimpleNamespace

import pytest

import quantpilot as qp
from quantpilot.auto.decide import SPEED_TIE, fastest_first, graph_key
from quantpilot.steps import SmoothQuant

BASE = qp.Recipe.preset("int8-static")


def _trial(name, latency_s, metric, recipe=None):
    recipe = recipe or BASE.replace(name=name, skip=(name,))  # a graph of its own unless given
    return SimpleNamespace(name=name, latency_s=latency_s, metric=metric, candidate=SimpleNamespace(recipe=recipe))


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


def test_same_graph_variants_share_their_fastest_time():
    smoothed = BASE.replace(steps=(SmoothQuant(alpha=0.8),))
    sq95 = smoothed.replace(steps=(SmoothQuant(alpha=0.95),), activation_calibrator={"kind": "minmax"})
    assert graph_key(smoothed) == graph_key(sq95) != graph_key(BASE)
    assert graph_key(smoothed) != graph_key(smoothed.replace(skip=("encoder.layer.0.output.dense",)))
    run = SimpleNamespace(loss=lambda m: 1.0 - m)
    # 0.95 timed 8 % faster on a loaded machine: the same operations, so 0.8's better metric goes first
    trials = [_trial("sq0.95", 0.604, 0.9974, sq95), _trial("sq0.8", 0.653, 0.9978, smoothed)]
    assert [t.name for t in fastest_first(run, trials)] == ["sq0.8", "sq0.95"]


def test_family_heads_within_the_speed_tie_are_searched_most_accurate_first():
    from types import SimpleNamespace as T

    from quantpilot.auto.search import _heads_in_search_order

    heads = [("a", T(latency_s=1.00, proxy=0.05)), ("b", T(latency_s=1.02, proxy=0.01)),
             ("c", T(latency_s=1.50, proxy=0.001)), ("d", T(latency_s=None, proxy=0.0))]  # fmt: skip
    assert [name for name, _ in _heads_in_search_order(heads)] == ["b", "a", "c", "d"]
