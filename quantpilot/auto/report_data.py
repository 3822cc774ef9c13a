"""The autopilot's report as plain JSON-able data (schema: `report_schema.md` beside this file).

`quantpilot.report.write_html` renders it; `AutoResult.save` writes it as report.json.

Example:
    >>> rebin([1, 2, 3, 4], [0.0, 1.0, 2.0, 3.0, 4.0], 2)
    ([3, 7], [0.0, 2.0, 4.0])
"""

from __future__ import annotations

import math
from typing import Any

from ..calibrator_config import CalibratorConfig
from ..evaluate import size_on_disk
from ..machine import cpu_report
from .candidates import Builder
from .run import Run, Trial

__all__ = ["build_report", "rebin", "FORMAT"]

FORMAT = 1
HISTOGRAM_LAYERS = 5
HISTOGRAM_BINS = 64
SENSITIVITY_ROWS = 30


def rebin(counts: list[int], edges: list[float], bins: int) -> tuple[list[int], list[float]]:
    """Merge adjacent bins of a histogram down to at most `bins` bins (small enough to plot and to store)."""
    step = max(1, math.ceil(len(counts) / bins))
    merged = [int(sum(counts[i : i + step])) for i in range(0, len(counts), step)]
    new_edges = [float(edges[i]) for i in range(0, len(counts), step)] + [float(edges[-1])]
    return merged, new_edges


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _candidate(run: Run, trial: Trial) -> dict[str, Any]:
    timing = run.timings.get(trial.timed_in or "", {})
    speed = lambda ref: None if trial.latency_s is None or ref not in timing else timing[ref] / trial.latency_s  # noqa: E731
    if trial.size_bytes is None and trial.latency_s is not None and trial.candidate.kind == "quantized":
        trial.size_bytes = size_on_disk(trial.model)
    recipe = trial.candidate.recipe
    return {
        "name": trial.name,
        "family": trial.candidate.family,
        "kind": trial.candidate.kind,
        "recipe": None if recipe is None else recipe.to_dict(),
        "proxy": _number(trial.proxy),
        "metric": None if trial.score is None else trial.score.metric,
        "interval": None if trial.score is None else trial.score.interval,
        "holdout_metric": None if trial.holdout is None else trial.holdout.metric,
        "holdout_interval": None if trial.holdout is None else trial.holdout.interval,
        "latency_ms": None if trial.latency_s is None else trial.latency_s * 1e3,
        "timed_in": trial.timed_in,
        "precision": trial.precision,
        "speedup_vs_fp32": speed("fp32"),
        "speedup_vs_bf16": speed("bf16"),
        "size_bytes": trial.size_bytes,
        "within_budget": bool(trial.within),
        "chosen": bool(trial.chosen),
        "why": trial.why,
    }


def _histograms(run: Run, builder: Builder | None) -> list[dict[str, Any]]:
    """Activation histograms, with the calibrated range, of the most harmful units' static inputs."""
    if builder is None or not run.sensitivity:
        return []
    stats = builder.statistics()
    out = []
    mse = CalibratorConfig("histogram", {"method": "mse"})
    for unit, _ in run.sensitivity:
        prefix = unit.partition(":")[0] + "."
        points = [p for p in stats.points if p == f"{unit}.input_quantizer" or (":" in unit and p.startswith(prefix)
                  and "input_quantizer" not in p)]  # fmt: skip
        for point in points[:2]:
            spec, _, calibrator = stats.points[point]
            try:
                histogram = stats.calibrator_for(point, mse, spec)
                counts, edges = histogram.histogram()
            except (ValueError, AttributeError):
                continue  # per-channel or fp8 points keep no histogram
            lo, hi = (float(v) for v in calibrator.compute_range())
            bins, bin_edges = rebin(counts.tolist(), edges.tolist(), HISTOGRAM_BINS)
            out.append({"layer": point, "bins": bin_edges, "counts": bins, "range": [lo, hi],
                        "symmetric": bool(spec.symmetric)})  # fmt: skip
        if len(out) >= HISTOGRAM_LAYERS:
            break
    return out


def _commands(run: Run, chosen: Trial) -> list[str]:
    call = (f"result = qp.autoquantize(model, calib_data, eval_fn, budget={run.budget!r}, target={run.target!r}, "
            f"example_inputs=example_inputs, max_evaluations={run.max_evaluations}, "
            f"lower_is_better={run.lower_is_better}, absolute={run.absolute})")  # fmt: skip
    out = ["import quantpilot as qp", call, "result.save('OUT')"]
    if chosen.candidate.kind == "quantized":
        out += [
            "model_q = qp.selection.build(model, qp.Recipe.from_yaml('OUT/recipe.yaml'), calib_data)  # rebuild",
            "model_q = qp.load(model, 'OUT/model')  # or load the saved one",
        ]
    return out


def build_report(run: Run, chosen: Trial, deployed: dict[str, Any], builder: Builder | None, wall_s: float) -> dict:
    """The report dict of a finished run (see report_schema.md)."""
    cpu = cpu_report()
    fp32, bf16 = run.trials["fp32"], run.trials.get("bf16")
    return {
        "format": FORMAT,
        "verdict": run.verdict,
        "target": run.target,
        "cpu": cpu["model"],
        "isa": [flag for flag, on in cpu["flags"].items() if on],
        "budget": {
            "value": run.budget,
            "absolute": run.absolute,
            "lower_is_better": run.lower_is_better,
            "allowed_loss": run.allowed(),
            "allowed_loss_holdout": run.allowed(run.float_holdout.metric),
        },
        "float": {
            "metric": run.float_score.metric,
            "interval": run.float_score.interval,
            "holdout_metric": run.float_holdout.metric,
            "holdout_interval": run.float_holdout.interval,
            "latency_ms": {
                "fp32": fp32.latency_s * 1e3,
                "bf16": None if bf16 is None or bf16.latency_s is None else bf16.latency_s * 1e3,
            },
            "size_bytes": fp32.size_bytes,
        },  # fmt: skip
        "candidates": [_candidate(run, t) for t in run.trials.values()],
        "chosen": chosen.name,
        "deployed": deployed,
        "sensitivity": [{"layer": n, "harm": _number(h)} for n, h in run.sensitivity[:SENSITIVITY_ROWS]],
        "sensitivity_measure": "output noise/signal of each unit on calibration data (a proxy: no eval_fn call)",
        "histograms": _histograms(run, builder),
        "trail": run.trail,
        "evaluations": run.scorer.calls,
        "evaluation_log": [{"what": label, "items": n} for label, n in run.scorer.log],
        "calibration_passes": 0 if builder is None else builder.calibration_passes,
        "data": {
            "calibration_items": len(run.calib),
            "search_items": len(run.search_data),
            "holdout_items": len(run.holdout_data),
        },
        "wall_s": wall_s,
        "commands": _commands(run, chosen),
    }
