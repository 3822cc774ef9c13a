"""The state of one autopilot run: the data split, the counted metric, the budget, every trial and the trail.

Example:
    >>> import torch
    >>> from quantpilot.auto.candidates import Candidate
    >>> t = Trial(Candidate("fp32", "fp32", "float")); t.within, t.metric
    (False, None)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..timing import interleaved_latency
from . import targets
from .candidates import Candidate
from .scores import Score, Scorer

__all__ = ["Trial", "Run", "default_timer"]

# Evaluations kept back from the search for the final verdict: the chosen model on held-out data, a second
# choice if the first misses there, and the deployed artifact reloaded in its engine.
FINAL_RESERVE = 3
# Seconds of timed calls the default timer aims at (each round calls every function once).
TIMED_SECONDS = 1.0
# Latencies within 3 % of the fastest are a tie on a shared machine (interleaved medians still move that much):
# among tied candidates the better search metric (or, for unscored family heads, proxy) goes first, so noise
# alone never trades accuracy for nothing.
SPEED_TIE = 1.03


def speed_ties_first(items: list, latency: Callable[[Any], float], error: Callable[[Any], float]) -> list:
    """`items` fastest first, those within `SPEED_TIE` of the fastest reordered by `error` (lower first).

    Example:
        >>> speed_ties_first([(1.0, 0.5), (1.02, 0.1), (2.0, 0.0)], lambda t: t[0], lambda t: t[1])
        [(1.02, 0.1), (1.0, 0.5), (2.0, 0.0)]
    """
    by_speed = sorted(items, key=lambda t: (latency(t), error(t)))
    if not by_speed or not math.isfinite(latency(by_speed[0])):
        return by_speed
    tied = [t for t in by_speed if latency(t) <= latency(by_speed[0]) * SPEED_TIE]
    return sorted(tied, key=error) + by_speed[len(tied) :]


# The name suffix of a quantized trial timed on OpenVINO with its float remainder in bf16.
BF16_REST = " (bf16 rest)"


def default_timer(fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median seconds of each function, timed side by side (`interleaved_latency`): 2 warm-up rounds, then
    enough rounds for about a second of timed calls (10 to 200), so that a fast model is not timed on noise.

    Example:
        >>> sorted(default_timer({"a": lambda: None}))
        ['a']
    """
    probe = interleaved_latency(fns, warmup=2, iters=1)
    rounds = int(min(200, max(10, TIMED_SECONDS / max(sum(probe.values()), 1e-6))))
    return interleaved_latency(fns, warmup=0, iters=rounds)


# A mutable record, not configuration: a trial fills in as the run measures it (proxy, score, latency...).
@dataclass
class Trial:
    """What the run knows of one candidate."""

    candidate: Candidate
    model: Any = None
    proxy: float | None = None
    score: Score | None = None
    holdout: Score | None = None
    latency_s: float | None = None
    timed_in: str | None = None
    precision: str | None = None
    size_bytes: int | None = None
    within: bool = False
    chosen: bool = False
    why: str = ""

    @property
    def name(self) -> str:
        return self.candidate.name

    @property
    def metric(self) -> float | None:
        return None if self.score is None else self.score.metric


class Run:
    """One `autoquantize` call's shared state; the search stages read and extend it.

    Example:
        >>> import torch
        >>> run = Run(torch.nn.Linear(2, 2), [torch.ones(1, 2)], Scorer(lambda m, d: 1.0), [0], [1],
        ...           0.01, False, False, "torch", torch.ones(1, 2), 10, default_timer, None)
        >>> run.loss(0.99, reference=1.0) > 0
        True
    """

    def __init__(
        self,
        model: nn.Module,
        calib: list[Any],
        scorer: Scorer,
        search_data: list[Any],
        holdout: list[Any],
        budget: float,
        absolute: bool,
        lower_is_better: bool,
        target: str,
        example: Any,
        max_evaluations: int,
        timer: Callable[[dict[str, Callable[[], object]]], dict[str, float]],
        log: Callable[[str], None] | None,
    ) -> None:
        self.model, self.calib, self.scorer = model, calib, scorer
        self.search_data, self.holdout_data = search_data, holdout
        self.budget, self.absolute, self.lower_is_better = budget, absolute, lower_is_better
        self.target, self.example = target, example
        self.max_evaluations, self.timer, self.log = max_evaluations, timer, log
        self.trials: dict[str, Trial] = {}
        self.trail: list[dict[str, str]] = []
        self.runners: dict[str, Any] = {}
        self.timings: dict[str, dict[str, float]] = {}
        self.started = time.perf_counter()
        self.float_score: Score | None = None
        self.float_holdout: Score | None = None
        self.sensitivity: list[tuple[str, float]] = []
        self.qat_possible = False
        self.verdict = ""

    def note(self, step: str, decision: str, why: str) -> None:
        """Add a line to the decision trail (and show it when the caller gave a `log`)."""
        self.trail.append({"step": step, "decision": decision, "why": why})
        if self.log is not None:
            self.log(f"[{time.perf_counter() - self.started:6.1f}s] {step}: {decision} ({why})")

    def loss(self, metric: float, reference: float | None = None) -> float:
        """How much worse `metric` is than the float model's (positive = worse)."""
        ref = self.float_score.metric if reference is None else reference
        return metric - ref if self.lower_is_better else ref - metric

    def allowed(self, reference: float | None = None) -> float:
        """The loss the budget allows against `reference` (default the float metric on the search data)."""
        ref = self.float_score.metric if reference is None else reference
        return float(self.budget) if self.absolute else float(self.budget) * abs(ref)

    def holds(self, metric: float, reference: float | None = None) -> bool:
        """Whether `metric` is within budget of `reference` (default: the float metric on the search data)."""
        return self.loss(metric, reference) <= self.allowed(reference) + 1e-12

    def evaluations_left(self, for_qat: bool = False) -> int:
        """eval_fn calls the search may still make (the final verdict's reserve excluded, and QAT's one
        evaluation when QAT may run: `for_qat` asks for that one)."""
        reserve = FINAL_RESERVE + (1 if self.qat_possible and not for_qat else 0)
        return self.max_evaluations - reserve - self.scorer.calls

    def add(self, candidate: Candidate, model: Any = None, why: str = "") -> Trial:
        """Register a candidate (its name is its key)."""
        trial = Trial(candidate, model=model, why=why or candidate.why)
        self.trials[candidate.name] = trial
        return trial

    def evaluate(self, trial: Trial) -> Trial:
        """Score `trial` on the search data (one eval_fn call) and mark whether it is within budget."""
        trial.score = self.scorer(trial.model, self.search_data, f"{trial.name} (search)")
        trial.within = self.holds(trial.score.metric)
        gap = self.loss(trial.score.metric)
        verdict = "within budget" if trial.within else "misses the budget"
        self.note(
            trial.name, verdict, f"metric {trial.score.metric:.6g}, loss {gap:.4g} of {self.allowed():.4g} allowed"
        )
        return trial

    def runner(self, trial: Trial) -> Any:
        """The trial's model compiled for the target (cached; None where the engine has no bf16)."""
        if trial.name not in self.runners:
            kind = trial.candidate.kind
            model = self.model if kind in ("fp32", "bf16") else trial.model
            self.runners[trial.name] = targets.runner(self.target, kind, model, self.example)
        return self.runners[trial.name]

    def _bf16_rest(self, trial: Trial) -> Any:
        """The trial's ONNX file on OpenVINO with the bf16 hint: its int8 ops stay int8, the float rest runs bf16."""
        key = trial.name + BF16_REST
        if key not in self.runners:
            self.runners[key] = targets.runner_for_file(self.runner(trial).path, self.target, "bf16")
        return self.runners[key]

    @staticmethod
    def _guarded(name: str, fn: Callable[[], object], failed: dict[str, str]) -> Callable[[], object]:
        """`fn` that records its first failure (export, compile or run) in `failed` and is then a no-op."""

        def call() -> object:
            if name in failed:
                return None
            try:
                return fn()
            except Exception as err:  # noqa: BLE001 (an engine that refuses one candidate drops that candidate)
                failed[name] = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
                return None

        return call

    def time(self, trials: list[Trial], step: str) -> dict[str, float]:
        """Latency of every trial on the target, side by side in one timer call; sets `latency_s`.

        On OpenVINO a quantized trial is timed twice, its float remainder (LayerNorm, softmax, float layers) in f32
        and in bf16; the faster sets its latency and `precision`, which the deployed artifact keeps.
        """
        # Compiled on first call (an untimed warm-up round), so that a timer that never calls them (a test's
        # fake one) costs no export.
        failed: dict[str, str] = {}
        fns = {
            trial.name: self._guarded(trial.name, lambda t=trial: self.runner(t).run(self.example), failed)
            for trial in trials
            if not (trial.candidate.kind == "bf16" and self.target in targets.NO_BF16)
        }
        if self.target == "openvino":
            for t in trials:
                if t.candidate.kind == "quantized":
                    run = lambda t=t: self._bf16_rest(t).run(self.example)  # noqa: E731
                    fns[t.name + BF16_REST] = self._guarded(t.name + BF16_REST, run, failed)
        seconds = self.timer(fns)
        for name, value in seconds.items():
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"timer returned {value!r} for {name}: it must return positive seconds")
        seconds = {name: value for name, value in seconds.items() if name not in failed}
        for trial in trials:
            if trial.name in failed:
                if trial.candidate.kind != "quantized":
                    raise ValueError(f"the {trial.name} model cannot run on {self.target}: {failed[trial.name]}")
                trial.latency_s, trial.why = None, f"cannot run on {self.target}: {failed[trial.name]}"
                self.note(trial.name, "not deployable", trial.why)
            if trial.name not in seconds:
                continue
            trial.latency_s, trial.timed_in = float(seconds[trial.name]), step
            if trial.candidate.kind == "quantized" and self.target == "openvino":
                rest = seconds.get(trial.name + BF16_REST)
                trial.precision = "bf16" if rest is not None and rest < trial.latency_s else "f32"
                trial.latency_s = min(trial.latency_s, rest or trial.latency_s)
        self.timings[step] = dict(seconds)
        self.note(step, "timed on " + self.target, ", ".join(f"{n} {s * 1e3:.3g} ms" for n, s in seconds.items()))
        return seconds
