"""The verdict: time every candidate within budget beside FP32 and bf16, check the fastest on held-out data,
export it, reload it in the target runtime and score it again.

Nothing slower than the floor (bf16 on the engine when it holds the budget, else FP32) is ever chosen, and a
candidate is chosen only if it also holds the budget on the held-out data the search never scored; when none
does, the floor itself is the answer, said plainly.

Example:
    >>> ratio_text(2.0, 1.0)
    '2.00x faster than'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import targets
from .run import SPEED_TIE, Run, Trial, speed_ties_first  # noqa: F401 (decide.SPEED_TIE, as before)
from .scores import drop_interval
from .search import floor

__all__ = ["final_timing", "choose", "fastest_first", "graph_key", "deploy_and_check", "verdict", "ratio_text"]

HOLDOUT_CHECKS = 2


def ratio_text(reference_s: float, candidate_s: float) -> str:
    """'N.NNx faster than' / 'N.NNx slower than': how `candidate_s` compares to `reference_s`."""
    if candidate_s <= reference_s:
        return f"{reference_s / candidate_s:.2f}x faster than"
    return f"{candidate_s / reference_s:.2f}x slower than"


def final_timing(run: Run) -> list[Trial]:
    """Time FP32, bf16 and every quantized candidate within budget in one run; return those candidates."""
    eligible = [t for t in run.trials.values() if t.within and t.candidate.kind == "quantized"]
    floats = [t for t in (run.trials["fp32"], run.trials.get("bf16")) if t is not None]
    run.time(floats + eligible, "final timing")
    return [t for t in eligible if t.latency_s is not None]  # those the engine could not run are out


def _holds_holdout(run: Run, trial: Trial) -> bool:
    trial.holdout = run.scorer(trial.model, run.holdout_data, f"{trial.name} (holdout)")
    return run.holds(trial.holdout.metric, run.float_holdout.metric)


def choose(run: Run, eligible: list[Trial]) -> Trial:
    """The fastest candidate faster than the floor that holds the budget on held-out data, else the floor."""
    base = floor(run)
    for trial in eligible:
        if trial.latency_s >= base.latency_s:
            trial.why = f"within budget, but {ratio_text(base.latency_s, trial.latency_s)} {base.name}: never chosen"
    faster = fastest_first(run, [t for t in eligible if t.latency_s < base.latency_s])
    checks = 0
    for trial in faster:
        if checks == HOLDOUT_CHECKS or run.scorer.calls >= run.max_evaluations - 1:
            trial.why = (
                "within budget, not checked on held-out data (a faster candidate was, or the evaluations ran out)"
            )
            continue
        checks += 1
        if _holds_holdout(run, trial):
            run.note(trial.name, "chosen", f"the fastest within budget, and it holds on held-out data "
                     f"(metric {trial.holdout.metric:.6g}, float {run.float_holdout.metric:.6g})")  # fmt: skip
            trial.chosen = True
            return trial
        trial.why = f"within budget on the search data, but held-out metric {trial.holdout.metric:.6g} misses it"
        run.note(trial.name, "rejected", trial.why)
    if base.name == "bf16" and run.scorer.calls < run.max_evaluations - 1 and not _holds_holdout(run, base):
        run.note("bf16", "rejected", f"held-out metric {base.holdout.metric:.6g} misses the budget")
        base = run.trials["fp32"]
    base.chosen = True
    if base.name == "fp32":
        base.holdout = run.float_holdout
    run.note(base.name, "chosen", "no quantized candidate both held the budget and ran faster than "
             f"{base.name} on {run.target}: {base.name} itself, no quantization")  # fmt: skip
    return base


def graph_key(recipe: Any) -> str:
    """What decides a candidate's graph on the engine: its recipe without the range choices (calibrators, the
    SmoothQuant alpha), which change constants, not operations.

    Example:
        >>> import quantpilot as qp
        >>> a = qp.Recipe(steps=(qp.steps.SmoothQuant(alpha=0.8),))
        >>> b = a.replace(steps=(qp.steps.SmoothQuant(alpha=0.95),), activation_calibrator={"kind": "minmax"})
        >>> graph_key(a) == graph_key(b), graph_key(a) == graph_key(qp.Recipe())
        (True, False)
    """
    if recipe is None:
        return "float"
    data = recipe.to_dict()
    for key in ("name", "notes", "activation_calibrator", "weight_calibrator"):
        data.pop(key, None)
    data["overrides"] = {p: {k: v for k, v in o.items() if "calibrator" not in k}
                         for p, o in (data.get("overrides") or {}).items()}  # fmt: skip
    data["overrides"] = {p: o for p, o in data["overrides"].items() if o}
    data["steps"] = [step.get("name", step) if isinstance(step, dict) else step for step in data.get("steps", ())]
    return repr(sorted(data.items(), key=lambda kv: kv[0]))


def fastest_first(run: Run, trials: list[Trial]) -> list[Trial]:
    """`trials` by latency, with two allowances for timing noise: trials with the same graph (`graph_key`: they
    differ only in ranges) share their fastest time, and those within `SPEED_TIE` of the fastest count as tied;
    ties go to the better search metric.

    Example:
        >>> from types import SimpleNamespace as T
        >>> run = T(loss=lambda metric: 1.0 - metric)
        >>> trials = [T(name="a", latency_s=1.00, metric=0.990, candidate=T(recipe=None)),
        ...           T(name="b", latency_s=1.02, metric=0.998, candidate=T(recipe=None)),
        ...           T(name="c", latency_s=0.90, metric=0.900, candidate=T(recipe=None))]
        >>> [t.name for t in fastest_first(run, trials)]
        ['b', 'a', 'c']
    """
    keys = {id(t): graph_key(t.candidate.recipe) for t in trials}
    shared: dict[str, float] = {}
    for t in trials:
        shared[keys[id(t)]] = min(shared.get(keys[id(t)], t.latency_s), t.latency_s)
    latency = {id(t): shared[keys[id(t)]] for t in trials}
    return speed_ties_first(trials, lambda t: latency[id(t)], lambda t: run.loss(t.metric))


def deploy_and_check(run: Run, chosen: Trial, folder: Path) -> dict[str, Any]:
    """Export the chosen model for the target into `folder`, reload it there, score it on held-out data."""
    model = chosen.model if chosen.candidate.kind == "quantized" else run.model
    exported = getattr(run.runners.get(chosen.name), "path", None)  # the ONNX file timed, when there is one
    info = targets.deploy(run.target, chosen.candidate.kind, model, run.example, folder, exported, chosen.precision)
    info["metric"] = None if chosen.holdout is None else chosen.holdout.metric
    info["reloaded_metric"] = None
    if run.scorer.calls >= run.max_evaluations:
        run.note("deploy", "not re-scored", "max_evaluations is spent: the reloaded artifact was not scored")
        return info
    reloaded = targets.reload(folder, run.model)
    score = run.scorer(reloaded, run.holdout_data, f"{chosen.name} deployed (holdout)")
    info["reloaded_metric"] = score.metric
    info["reloaded_interval"] = score.interval
    run.note("deploy", f"exported as {info['format']}", f"reloaded in {run.target}: held-out metric {score.metric:.6g}"
             + ("" if info["metric"] is None else f" (in PyTorch {info['metric']:.6g})"))  # fmt: skip
    return info


def verdict(run: Run, chosen: Trial, deployed: dict[str, Any] | None = None) -> str:
    """One line: what was chosen, its speed against FP32 and bf16, its held-out metric, and the noise; and a
    warning when the deployed artifact, reloaded in its runtime, misses the budget the PyTorch model met."""
    line = _verdict(run, chosen)
    reloaded = None if deployed is None else deployed.get("reloaded_metric")
    if reloaded is not None and not run.holds(reloaded, run.float_holdout.metric):
        line += f"; WARNING: the deployed artifact reloaded in {run.target} scores {reloaded:.6g}, outside the budget"
    return line


def _verdict(run: Run, chosen: Trial) -> str:
    fp32, bf16 = run.trials["fp32"], run.trials.get("bf16")
    speed = f"{ratio_text(fp32.latency_s, chosen.latency_s)} fp32"
    if bf16 is not None and bf16.latency_s is not None and chosen is not bf16:
        speed += f" and {ratio_text(bf16.latency_s, chosen.latency_s)} bf16"
    if chosen.candidate.kind != "quantized":
        head = f"{chosen.name}, no quantization: no int8 candidate both held the budget and ran faster on {run.target}"
        if chosen is not fp32:
            head += f" ({speed})"
    else:
        head = f"{chosen.name}: {speed} on {run.target}"
    metric = chosen.holdout.metric if chosen.holdout is not None else chosen.metric
    loss = run.loss(metric, run.float_holdout.metric)
    allowed = run.allowed(run.float_holdout.metric)
    line = (
        f"{head}; held-out metric {metric:.6g} vs float {run.float_holdout.metric:.6g} "
        f"(loss {loss:.4g}, {allowed:.4g} allowed)"
    )
    interval = drop_interval(run.float_holdout, chosen.holdout, run.lower_is_better) if chosen.holdout else None
    if chosen is fp32:
        return line
    if chosen.holdout is None:
        unchecked = line.replace("held-out metric", "search metric")
        return unchecked + "; not checked on held-out data: max_evaluations spent"
    if interval is None:
        return line + "; no confidence interval: eval_fn returned one number, not per-sample scores"
    if interval[0] <= allowed <= interval[1]:
        return (
            line + f"; the margin is inside the noise (95% interval of the loss [{interval[0]:.4g}, {interval[1]:.4g}])"
        )
    return line + f"; 95% interval of the loss [{interval[0]:.4g}, {interval[1]:.4g}]"
