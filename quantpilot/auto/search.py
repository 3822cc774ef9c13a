"""The search stages: float baselines, the speed probe of each family's head, the accuracy repairs, QAT.

Order, cheapest first: FP32 and bf16 are scored; each family's head (every layer int8) is timed against
FP32 and bf16 on the target, and a family whose fastest variant is not faster than bf16 is dropped
unscored (nothing in it could be chosen). Surviving families go fastest head first: calibrator variants
ranked by the output-error proxy (the best two scored), then SmoothQuant, then the most harmful layers left
in float (1, 2, 4, ... by the per-layer error proxy). A family that keeps every layer int8 within budget
ends the search: the other families' heads are slower, and so is every variant with float layers.

Example:
    >>> from quantpilot.auto.candidates import Candidate
    >>> float_layers_name("static", 2)
    'static, 2 units float'
"""

from __future__ import annotations

import copy
import math
from typing import Any

from ..analysis.sensitivity import variant
from ..evaluate import size_on_disk
from ..steps import SmoothQuant
from . import targets
from .candidates import Builder, Candidate, Family
from .run import Run, Trial, speed_ties_first

__all__ = ["baselines", "probe", "search_family", "try_qat", "float_layers_name"]

SCORED_CALIBRATOR_VARIANTS = 2
SCORED_SMOOTHED_VARIANTS = 2
FLOAT_STEPS = (1, 2, 4, 8, 16)


def float_layers_name(family: str, k: int) -> str:
    """The candidate name of a family's best recipe with `k` units left in float."""
    return f"{family}, {k} unit{'s' if k > 1 else ''} float"


def baselines(run: Run) -> None:
    """Score FP32 (search and held-out data) and bf16; record their sizes."""
    run.float_score = run.scorer(run.model, run.search_data, "fp32 (search)")
    run.float_holdout = run.scorer(run.model, run.holdout_data, "fp32 (holdout)")
    fp32 = run.add(Candidate("fp32", "fp32", "float", why="the float model itself"), run.model)
    fp32.score, fp32.holdout, fp32.within = run.float_score, run.float_holdout, True
    fp32.size_bytes = size_on_disk(run.model)
    run.note("fp32", "scored", f"metric {fp32.metric:.6g} on search data, {fp32.holdout.metric:.6g} held out")
    if run.target in targets.NO_BF16:
        run.note("bf16", "skipped", targets.NO_BF16[run.target])
        return
    bf16 = run.add(Candidate("bf16", "bf16", "float", why="no quantization: the weights cast to bf16"),
                   targets.Bf16Model(run.model))  # fmt: skip
    bf16.size_bytes = size_on_disk(copy.deepcopy(run.model).bfloat16())
    run.evaluate(bf16)


def floor(run: Run) -> Trial:
    """What every quantized candidate must beat: bf16 when it holds the budget on this engine, else FP32."""
    bf16 = run.trials.get("bf16")
    return bf16 if bf16 is not None and bf16.within else run.trials["fp32"]


def probe(run: Run, builder: Builder, families: list[Family]) -> list[Family]:
    """Time each family's head against FP32 and bf16; return the families faster than the floor, fastest first."""
    heads = []
    for family in families:
        candidate = Candidate(family.name, "quantized", family.name, family.recipe, why=family.why)
        trial = run.add(candidate, builder.build(candidate))
        trial.proxy = builder.proxy(trial.model)
        heads.append(trial)
    floats = [t for t in (run.trials["fp32"], run.trials.get("bf16")) if t is not None]
    run.time(floats + heads, "speed probe")
    base = floor(run)
    kept = []
    for family, head in _heads_in_search_order(list(zip(families, heads, strict=True))):
        if head.latency_s is None:
            run.note(f"family {family.name}", "dropped", head.why)
        elif head.latency_s < base.latency_s:
            kept.append(family)
            run.note(f"family {family.name}", "searched", f"its head runs {base.latency_s / head.latency_s:.2f}x "
                     f"{base.name}; {family.why}")  # fmt: skip
        else:
            head.why = (
                f"not scored: every layer int8 is already {head.latency_s / base.latency_s:.2f}x slower "
                f"than {base.name} on {run.target}, so no variant of this family can be chosen"
            )
            run.note(f"family {family.name}", "dropped", head.why)
    return kept


def _heads_in_search_order(pairs: list[tuple[Family, Trial]]) -> list[tuple[Family, Trial]]:
    """Fastest head first; heads within `SPEED_TIE` of the fastest are a tie (timing noise on a shared CPU), which
    the lower output-error proxy wins: a family as fast and more accurate is searched first."""
    return speed_ties_first(pairs, lambda fh: fh[1].latency_s or math.inf, lambda fh: fh[1].proxy)


def _score_best(run: Run, trials: list[Trial], how_many: int) -> Trial | None:
    """Score the `how_many` best trials by proxy (within the evaluation budget); the best scored one."""
    for trial in sorted(trials, key=lambda t: t.proxy)[:how_many]:
        if run.evaluations_left() <= 0:
            run.note(trial.name, "not scored", "the evaluation budget (max_evaluations) is spent")
            break
        run.evaluate(trial)
    scored = [t for t in trials if t.score is not None]
    for trial in trials:
        if trial.score is None and not trial.why.startswith("not scored"):
            trial.why = f"not scored: ranked below the scored variants by the output-error proxy ({trial.proxy:.3g})"
    return min(scored, key=lambda t: run.loss(t.metric)) if scored else None


def _variants(run: Run, builder: Builder, family: Family, candidates: list[Candidate]) -> list[Trial]:
    out = []
    for candidate in candidates:
        trial = run.add(candidate, builder.build(candidate))
        trial.proxy = builder.proxy(trial.model)
        out.append(trial)
    return out


def search_family(run: Run, builder: Builder, family: Family) -> bool:
    """Search one family; True when a variant with every layer int8 holds the budget (the search can stop)."""
    head = run.trials[family.name]
    if not family.static:
        extras = _variants(run, builder, family, [
            Candidate(f"{family.name} {r.name}", "quantized", family.name, r, why=f"{r.name}: smaller weights")
            for r in family.extra])  # fmt: skip
        best = _score_best(run, [head, *extras], 1 + len(extras))
        return best is not None and best.within
    tuned = _variants(run, builder, family, builder.calibrator_variants(family))
    best = _score_best(run, [head, *tuned], SCORED_CALIBRATOR_VARIANTS)
    if best is None or best.within:
        return best is not None
    smoothed = _variants(run, builder, family, builder.smoothquant_variants(family, best.candidate.recipe))
    if smoothed:
        best_sq = _score_best(run, smoothed, SCORED_SMOOTHED_VARIANTS)
        if best_sq is not None and run.loss(best_sq.metric) < run.loss(best.metric):
            best = best_sq
        if best.within:
            return True
    return _float_fallback(run, builder, family, best)


def _float_fallback(run: Run, builder: Builder, family: Family, best: Trial) -> bool:
    """Leave the most harmful units of `best` in float, 1, 2, 4... until the budget holds; always False
    (a float layer costs speed, so another family may still be faster)."""
    ranking = builder.harm_ranking(best.model)
    if not run.sensitivity:
        run.sensitivity = ranking
    names = [name for name, _ in ranking]
    if not names:
        run.note(family.name, "float fallback skipped", "the per-layer error proxy could not rank this model's layers")
    for k in FLOAT_STEPS:
        if k >= len(names):
            break
        if run.evaluations_left() <= 0:
            run.note(family.name, "float fallback stopped", "the evaluation budget (max_evaluations) is spent")
            break
        recipe = variant(best.candidate.recipe, names[:k])
        candidate = Candidate(float_layers_name(family.name, k), "quantized", family.name, recipe.replace(
            name=f"{best.candidate.recipe.name}-float{k}"), alpha=best.candidate.alpha,
            why=f"{best.name} with the {k} most harmful units in float: {', '.join(names[:k])}")  # fmt: skip
        trial = _variants(run, builder, family, [candidate])[0]
        run.evaluate(trial)
        if trial.within:
            break
    return False


def try_qat(run: Run, builder: Builder, train_data: Any, loss_fn: Any) -> None:
    """Quantization-aware fine-tuning of the best static candidate, when post-training missed the budget."""
    from ..api import calibrate, freeze, quantize
    from ..batches import call_model
    from ..qat import Schedule, finetune, prepare

    static = [t for t in run.trials.values() if t.candidate.kind == "quantized" and t.score is not None
              and t.candidate.recipe.activations is not None and not t.candidate.recipe.dynamic]  # fmt: skip
    if not static or run.evaluations_left(for_qat=True) <= 0:
        run.note(
            "qat", "skipped", "no scored static candidate to start from" if not static else "evaluation budget spent"
        )
        return
    start = min(static, key=lambda t: run.loss(t.metric))
    # Without SmoothQuant: the step would run inside freeze, after training, on weights QAT already fitted.
    recipe = start.candidate.recipe
    recipe = recipe.replace(steps=tuple(s for s in recipe.steps if not isinstance(s, SmoothQuant)))
    qmodel = quantize(run.model, recipe)
    with calibrate(qmodel, progress=False):
        for batch in run.calib:
            call_model(qmodel, batch)
    qat_model = prepare(qmodel, learn_ranges=True)
    # A short, gentle fine-tune: QAT only repairs rounding from a calibrated start (see quantpilot.qat).
    finetune(qat_model, train_data, loss_fn, Schedule(epochs=2, lr=1e-4, batch_size=1, optimizer="adam"),
             progress=False)  # fmt: skip
    candidate = Candidate(
        "qat",
        "quantized",
        start.candidate.family,
        recipe.replace(name=f"{recipe.name}-qat"),
        why=f"QAT fine-tune (2 epochs) of {start.name}, the best post-training candidate",
    )
    trial = run.add(candidate, freeze(qat_model.eval()))
    run.evaluate(trial)
