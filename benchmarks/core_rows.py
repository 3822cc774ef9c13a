"""bench-core's rows: contestants timed in turns, their ranges scored, compared and checked against the targets.

A row holds a contestant's median wall and CPU milliseconds, the range it picked and the int8 SQNR of
quantize -> dequantize with that range; speed ratios are against torch's HistogramObserver in CPU time
(the work done, which other jobs on a shared machine do not inflate the way they inflate wall time).

Example:
    >>> round(range_sqnr(torch.linspace(-1.0, 1.0, 11), -1.0, 1.0), 1) > 30
    True
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch
from core_contestants import SPEC, Contestant

from quantpilot.metrics import sqnr_db
from quantpilot.primitives import choose_qparams, dequantize, quantize

SPEED_TARGET = 3.0
AGREEMENT_TARGET = 0.02
# (ours, reference) pairs compared by amax; the first three are targets, the last is for information.
AGREEMENT_PAIRS = [
    ("ours_percentile_99.99", "ort_percentile_99.99"),
    ("ours_percentile_99.999", "ort_percentile_99.999"),
    ("ours_entropy", "ort_entropy"),
    ("ours_entropy", "tensorrt_entropy_reference"),
]


def timed(group: list[Contestant], repeats: int, warmup: int) -> dict[str, dict]:
    """Median wall and CPU milliseconds and the result of each contestant.

    The entries are timed in turns, so a burst of other work on the machine hits all alike.
    CPU time is this thread's (`time.thread_time`): with one torch thread, and numpy being
    single-threaded, it is the work each calibrator does, whatever else the machine runs.

    Example:
        >>> timed([Contestant("a", "A", "x", lambda: (0.0, 1.0), 1)], 1, 0)["a"]["result"]
        (0.0, 1.0)
    """
    fns = {e[0]: e[3] for e in group}
    results = {key: fn() for key, fn in fns.items() for _ in range(warmup)}
    wall: dict[str, list[float]] = {key: [] for key in fns}
    cpu: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            w0, c0 = time.perf_counter(), time.thread_time()
            results[key] = fn()
            cpu[key].append(time.thread_time() - c0)
            wall[key].append(time.perf_counter() - w0)
    return {
        key: {
            "ms": statistics.median(wall[key]) * 1e3,
            "cpu_ms": statistics.median(cpu[key]) * 1e3,
            "result": results[key],
        }
        for key in fns
    }


def range_sqnr(x: torch.Tensor, lo: float, hi: float) -> float:
    """SQNR (dB) of `x` through int8 quantize -> dequantize with the range [lo, hi] (symmetric: +-max).

    Example:
        >>> range_sqnr(torch.zeros(3) + 1.0, -1.0, 1.0) > 40
        True
    """
    scale, zero_point = choose_qparams(lo, hi, SPEC)
    return sqnr_db(x, dequantize(quantize(x, scale, zero_point, SPEC), scale, zero_point, SPEC))


def measure(candidates: list[Contestant], x: torch.Tensor, repeats: int) -> dict[str, dict]:
    """One row per contestant, in order: times, and the range (or avg/std) with its int8 SQNR.

    Contestants are timed in groups of equal rounds; the fast ones (`repeats` rounds) get a warm-up round
    first, the slow references are timed cold.

    Example:
        >>> rows = measure([Contestant("a", "A", "x", lambda: (-1.0, 1.0), 1)], torch.ones(4), 1)
        >>> rows["a"]["amax"]
        1.0
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        measured: dict[str, dict] = {}
        for group_repeats in sorted({e[4] for e in candidates}, reverse=True):
            group = [e for e in candidates if e[4] == group_repeats]
            measured.update(timed(group, group_repeats, warmup=1 if group_repeats == repeats else 0))
        rows = {}
        for key, label, impl, _, row_repeats in candidates:
            result = measured[key]["result"]
            row = {
                "label": label,
                "implementation": impl,
                "ms": measured[key]["ms"],
                "cpu_ms": measured[key]["cpu_ms"],
                "repeats": row_repeats,
            }
            if key == "ort_distribution":
                row.update(avg=result[0], std=result[1])
            else:
                lo, hi = result
                row.update(min=lo, max=hi, amax=max(abs(lo), abs(hi)), sqnr_db=range_sqnr(x, lo, hi))
            rows[key] = row
    return rows


def print_table(rows: dict[str, dict]) -> None:
    """Add the speed-ups against HistogramObserver to every row and print the table.

    Example:
        >>> row = {"label": "A", "ms": 2.0, "cpu_ms": 2.0, "min": -1.0, "max": 1.0, "sqnr_db": 30.0}
        >>> print_table({"torch_histogram": row})  # doctest: +NORMALIZE_WHITESPACE
        calibrator  wall ms   cpu ms x HistObs       min       max  SQNR dB
        A              2.00     2.00      1.00   -1.0000    1.0000    30.00
        (SQNR with the symmetric range +-max(|min|, |max|) the int8 scheme uses; ORT clamps its ranges to the data)
    """
    reference = rows["torch_histogram"]
    width = max(len(r["label"]) for r in rows.values())
    print(f"{'calibrator':<{width}} {'wall ms':>8} {'cpu ms':>8} {'x HistObs':>9} {'min':>9} {'max':>9} {'SQNR dB':>8}")
    for row in rows.values():
        # Speed ratios use CPU time: the work done, unaffected by other jobs on a shared machine.
        row["speedup_vs_histogram_observer"] = reference["cpu_ms"] / row["cpu_ms"]
        row["wall_speedup_vs_histogram_observer"] = reference["ms"] / row["ms"]
        if "min" in row:
            rng = f"{row['min']:>9.4f} {row['max']:>9.4f} {row['sqnr_db']:>8.2f}"
        else:
            rng = f"{'avg ' + format(row['avg'], '.4f'):>9} {'std ' + format(row['std'], '.4f'):>9} {'-':>8}"
        print(
            f"{row['label']:<{width}} {row['ms']:>8.2f} {row['cpu_ms']:>8.2f} "
            f"{row['speedup_vs_histogram_observer']:>9.2f} {rng}"
        )
    print("(SQNR with the symmetric range +-max(|min|, |max|) the int8 scheme uses; ORT clamps its ranges to the data)")


def agreement(rows: dict[str, dict]) -> list[dict]:
    """Our ranges against ORT's and TensorRT's (relative amax difference, CPU-time speed-up), printed.

    Example:
        >>> callable(agreement)
        True
    """
    print("\nagreement with ONNX Runtime (amax = max(|min|, |max|)):")
    entries = []
    for ours_key, ort_key in AGREEMENT_PAIRS:
        a, b = rows[ours_key]["amax"], rows[ort_key]["amax"]
        rel = abs(a - b) / b
        entry = {
            "ours": ours_key,
            "reference": ort_key,
            "ours_amax": a,
            "reference_amax": b,
            "relative_difference": rel,
            "speedup": rows[ort_key]["cpu_ms"] / rows[ours_key]["cpu_ms"],
        }
        entries.append(entry)
        print(
            f"  {rows[ours_key]['label']:<40} {a:>9.4f} vs {rows[ort_key]['label']:<48} {b:>9.4f}: "
            f"{rel * 100:6.2f} % apart, ours {entry['speedup']:.1f}x faster"
        )
    return entries


def targets(rows: dict[str, dict], agreement_entries: list[dict]) -> list[dict]:
    """The issue's targets (speed against HistogramObserver, agreement with ORT), printed as PASS/MISS lines.

    Example:
        >>> callable(targets)
        True
    """
    found = []
    for key in ("ours_percentile_99.99", "ours_entropy", "ours_mse"):
        speedup = rows[key]["speedup_vs_histogram_observer"]
        found.append(
            {
                "target": f"{rows[key]['label']} >= {SPEED_TARGET:g}x faster than HistogramObserver (CPU time; "
                f"wall {rows[key]['wall_speedup_vs_histogram_observer']:.2f}x)",
                "value": round(speedup, 2),
                "pass": speedup >= SPEED_TARGET,
            }
        )
    for entry in agreement_entries[:3]:
        found.append(
            {
                "target": f"{rows[entry['ours']]['label']} within {AGREEMENT_TARGET:.0%} of "
                + rows[entry["reference"]]["label"],
                "value": round(entry["relative_difference"], 4),
                "pass": entry["relative_difference"] <= AGREEMENT_TARGET,
            }
        )
    print("\ntargets:")
    for t in found:
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']} (measured {t['value']})")
    return found
