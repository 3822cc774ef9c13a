"""`autoquantize`: from a model, the user's data and an accuracy budget to the fastest model that holds it.

Example:
    >>> import torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    >>> calib = [torch.randn(16, 8) for _ in range(4)]
    >>> ref = {id(b): net(b).detach() for b in calib}
    >>> score = lambda m, data: [float(torch.cosine_similarity(m(b), ref[id(b)], dim=-1).mean()) for b in data]
    >>> fixed = lambda fns: {name: 1e-3 for name in fns}  # a fixed timer keeps the example fast: omit it to measure
    >>> result = qp.autoquantize(net, calib, score, budget=0.05, target="torch", timer=fixed)
    >>> result.report["chosen"], result.recipe is None, result.report["evaluations"]
    ('bf16', True, 5)
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch import nn

from ..batches import eval_mode
from . import decide, search
from .candidates import Builder, families
from .report_data import build_report
from .result import AutoResult
from .run import Run, default_timer
from .scores import Scorer, split_holdout
from .targets import check_target

__all__ = ["autoquantize"]


def _check(model: Any, budget: Any, max_evaluations: Any, train_data: Any, loss_fn: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget) or budget < 0:
        raise ValueError(f"budget must be a finite number >= 0 (0.01 = 1 % of the float metric), got {budget!r}")
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int) or max_evaluations < 6:
        raise ValueError(f"max_evaluations must be an integer >= 6 (float, bf16, one candidate, the verdict), "
                         f"got {max_evaluations!r}")  # fmt: skip
    if (train_data is None) != (loss_fn is None):
        raise ValueError("QAT needs both train_data and loss_fn: pass both, or neither")


def _split(calib: list[Any], eval_data: Iterable[Any] | None, holdout: Iterable[Any] | None):
    """(calibration, search, holdout) data; the held-out part is never calibrated on nor scored by the search."""
    search_data = calib if eval_data is None else list(eval_data)
    if holdout is not None:
        held = list(holdout)
        if not held:
            raise ValueError("holdout is empty: pass held-out eval items, or holdout=None to split the eval data")
        return calib, search_data, held
    search_data, held = split_holdout(search_data)
    return (search_data if eval_data is None else calib), search_data, held


def _search(run: Run, train_data: Any, loss_fn: Any) -> Builder:
    """Score the float baselines, probe the families' speed, search the kept ones fastest first, then QAT."""
    search.baselines(run)
    found, skipped = families(run.model, run.target)
    for name, why in skipped:
        run.note(f"family {name}", "skipped", why)
    builder = Builder(run.model, run.calib, ops=next((f.recipe.ops for f in found if f.name == "static+ops"), ()))
    kept = search.probe(run, builder, found)
    for family in kept:
        if search.search_family(run, builder, family):
            why = "a variant without float layers holds the budget: the other families are slower at their fastest"
            run.note(f"family {family.name}", "stop", why + ", and so is any variant with float layers")
            break
    quantized_ok = any(t.within and t.candidate.kind == "quantized" for t in run.trials.values())
    if train_data is not None and kept and not quantized_ok:
        search.try_qat(run, builder, train_data, loss_fn)
    if not run.sensitivity and run.trials.get("static") is not None:
        run.sensitivity = builder.harm_ranking(run.trials["static"].model)
    return builder


def autoquantize(
    model: nn.Module,
    calib_data: Iterable[Any],
    eval_fn: Callable[[Any, Any], Any],
    budget: float = 0.01,
    target: str = "openvino",
    example_inputs: Any = None,
    holdout: Iterable[Any] | None = None,
    train_data: Iterable[Any] | None = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    max_evaluations: int = 40,
    lower_is_better: bool = False,
    absolute: bool = False,
    *,
    eval_data: Iterable[Any] | None = None,
    timer: Callable[[dict[str, Callable[[], object]]], dict[str, float]] | None = None,
    log: Callable[[str], None] | None = None,
) -> AutoResult:
    """Find the fastest model on `target` whose metric stays within `budget` of the float model's.

    Candidates within 3 % of the fastest one's latency count as equally fast (timing noise on a shared machine):
    among them the better metric is chosen.

    Args:
        model: the float model (never modified).
        calib_data: calibration batches, each an input as the model takes it (a tensor, a tuple of
            positional inputs, or a dict of keyword inputs such as a tokenizer's output). Without
            `eval_data` they are also the search's eval items (see below).
        eval_fn: `eval_fn(model, data)`: `data` is a list of eval items (whatever the function understands:
            input batches, (inputs, labels) pairs...); `model` is called as the float model is and returns what
            it returns, except that the reloaded ONNX/OpenVINO artifact returns its first output as a tensor
            (read outputs with `quantpilot.batches.first_tensor`). Return the metric as a float, or per-sample
            scores (a 1-D tensor/array/list whose mean is the metric): only per-sample scores give the
            bootstrap confidence intervals; with a float the report says no interval could be computed.
        budget: the allowed loss of metric: a fraction of the float metric (0.01 = 1 %), or an amount when
            `absolute`.
        target: the engine deployed to: "openvino", "onnxruntime", "torch" (eager fp32/bf16) or "torch-int8".
        example_inputs: the batch every candidate is timed on (and ONNX is exported with); default the first
            calibration batch.
        holdout: held-out eval items for the final verdict. None: every second eval item is held out
            (deterministically); when `eval_data` is None too, those items also leave the calibration set,
            so the verdict's data is neither calibrated on nor scored by the search.
        train_data, loss_fn: `(inputs, target)` pairs and `loss_fn(output, target)`: quantization-aware
            fine-tuning is tried when post-training quantization cannot meet the budget.
        max_evaluations: the most eval_fn calls (the float model's and the verdict's included).
        lower_is_better: the metric is an error or a loss.
        absolute: read `budget` as an absolute amount of metric.
        eval_data: eval items the search scores (default: the calibration batches).
        timer: `timer({name: zero-argument fn}) -> {name: seconds}`: measures latency side by side
            (default: medians of interleaved calls); tests inject a fake one.
        log: called with a line per decision as the run goes (e.g. `print`).

    Returns:
        An `AutoResult`: `.model`, `.recipe` (None when the answer is bf16 or fp32), `.report`, `.save(out)`.

    Raises:
        ValueError: an unknown target, a negative budget, empty data, a bad eval_fn result.
    """
    started = time.perf_counter()
    target = check_target(target)
    _check(model, budget, max_evaluations, train_data, loss_fn)
    calib = list(calib_data)
    if not calib:
        raise ValueError("calib_data is empty: pass at least one calibration batch")
    calib, search_data, held = _split(calib, eval_data, holdout)
    example = calib[0] if example_inputs is None else example_inputs
    with eval_mode(model):  # the user's model gets its own train/eval modes back
        run = Run(model, calib, Scorer(eval_fn), search_data, held, budget, absolute, lower_is_better, target,
                  example, max_evaluations, timer or default_timer, log)  # fmt: skip
        run.qat_possible = train_data is not None
        run.note("data", "split", f"{len(calib)} calibration, {len(search_data)} search, {len(held)} held-out items")
        builder = _search(run, train_data, loss_fn)
        chosen = decide.choose(run, decide.final_timing(run))
        # Lives as long as the result (removed with it): save() copies deploy/ out of it.
        workdir = tempfile.TemporaryDirectory(prefix="quantpilot-auto-")
        deployed = decide.deploy_and_check(run, chosen, Path(workdir.name) / "deploy")
        run.verdict = decide.verdict(run, chosen, deployed)
        run.note("verdict", chosen.name, run.verdict)
        report = build_report(run, chosen, deployed, builder, time.perf_counter() - started)
    return AutoResult(chosen.model, chosen.candidate.recipe, report, Path(workdir.name) / "deploy", workdir)
