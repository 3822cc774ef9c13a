"""Calibrator speed and ranges against PyTorch's HistogramObserver and ONNX Runtime's calibrator.

One run, one 32x128x384 activation: the input of all-MiniLM-L6-v2's
`encoder.layer.1.intermediate.dense` on 32 passages of 128 tokens packed from the bundled
sentences (heavy-tailed: a few outlier features reach 40x the standard deviation). If the model
cannot be loaded, a fixed-seed Student-t (3 degrees of freedom) of the same shape stands in.

For each calibrator it prints the median wall and CPU time of collect + compute on the whole
tensor (calibrators timed in turns, one torch thread), the speed ratio against
`torch.ao.quantization.HistogramObserver` in CPU time (the work done, which other jobs on a
shared machine do not inflate the way they inflate wall time), the range picked and the int8
SQNR of quantize -> dequantize with it. ONNX Runtime's `HistogramCollector` runs on the
same numpy array, configured like ours where its parameters allow (percentile: 2048 bins of |x|;
entropy: 4096 signed bins, i.e. 2048 a side, and 255 quantized bins, i.e. ~128 a side, as ours).
A small numpy transcription of TensorRT's entropy procedure on 2048 linear bins of |x| is listed
as a second reference, since ORT's entropy is a variant (signed histogram, smoothed
distributions, remainder bins merged into the last level).

Targets (PASS/MISS): our histogram calibration >= 3x faster than HistogramObserver; our
entropy and percentile ranges within 2 % of ORT's. Results also go to bench-out/bench_core.json.

Run: make bench-core   (or .venv/bin/python benchmarks/bench_core.py)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from quantpilot import QuantSpec, datasets
from quantpilot.calibrators import build_calibrator
from quantpilot.machine import cpu_report
from quantpilot.metrics import sqnr_db
from quantpilot.primitives import choose_qparams, dequantize, quantize

SHAPE = (32, 128, 384)
LAYER = "encoder.layer.1.intermediate.dense"
SPEC = QuantSpec("int8", symmetric=True)
SPEED_TARGET = 3.0
AGREEMENT_TARGET = 0.02
ISA_FLAGS = {
    "AMX (tile/int8/bf16)": ("amx_tile", "amx_int8", "amx_bf16"),
    "AVX-512 VNNI": ("avx512_vnni",),
    "AVX-512 BF16": ("avx512_bf16",),
    "AVX-VNNI": ("avx_vnni",),
    "AVX-512F": ("avx512f",),
    "AVX2": ("avx2",),
}


def cpu_info() -> dict:
    """CPU model and the ISA extensions int8/bf16 kernels care about, grouped as ISA_FLAGS names them."""
    report = cpu_report()
    isa = {name: all(report["flags"].get(f, False) for f in needed) for name, needed in ISA_FLAGS.items()}
    return {"model": report["model"], "cores": report["cores"], "isa": isa}


def minilm_activation() -> tuple[torch.Tensor, str]:
    """The 32x128x384 input of LAYER on packed bundled sentences, or a Student-t stand-in."""
    try:
        from quantpilot_testbed.demos.calibrators import capture_input, load_minilm

        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            model, tokenizer = load_minilm()
        ids: list[int] = []
        for sentence in datasets.sentences("all"):
            ids += tokenizer(sentence, add_special_tokens=False)["input_ids"]
        batch, seq = SHAPE[0], SHAPE[1]
        body = seq - 2  # [CLS] ... [SEP]
        if len(ids) < batch * body:
            raise ValueError(f"only {len(ids)} tokens of text for {batch}x{seq}")
        rows = [[tokenizer.cls_token_id, *ids[i * body : (i + 1) * body], tokenizer.sep_token_id] for i in range(batch)]
        input_ids = torch.tensor(rows)
        x = capture_input(model, LAYER, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)})
        what = (
            f"all-MiniLM-L6-v2 input of {LAYER} (after the attention block's LayerNorm), "
            f"{batch} passages x {seq} tokens packed from the bundled sentences"
        )
        return x.contiguous(), what
    except (ImportError, OSError, ValueError) as err:
        g = torch.Generator().manual_seed(0)
        z = torch.randn(SHAPE, generator=g)
        chi2 = torch.randn((*SHAPE, 3), generator=g).square().sum(-1)
        return z / torch.sqrt(chi2 / 3), f"fixed-seed Student-t (3 dof) stand-in; MiniLM unavailable: {err}"


def timed(group: list[tuple], repeats: int, warmup: int) -> dict[str, dict]:
    """Median wall and CPU milliseconds and the result of each (key, _, _, fn, _) entry.

    The entries are timed in turns, so a burst of other work on the machine hits all alike.
    CPU time is this thread's (`time.thread_time`): with one torch thread, and numpy being
    single-threaded, it is the work each calibrator does, whatever else the machine runs.
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


def ours(kind: str, x: torch.Tensor, **options) -> Callable[[], tuple[float, float]]:
    def run() -> tuple[float, float]:
        cal = build_calibrator(SPEC, kind, **options)
        cal.collect(x)
        lo, hi = cal.compute_range()
        return lo.item(), hi.item()

    return run


def torch_observer(cls, x: torch.Tensor) -> Callable[[], tuple[float, float]]:
    def run() -> tuple[float, float]:
        obs = cls(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        obs(x)
        scale, _ = obs.calculate_qparams()
        # Symmetric int8: scale = amax / 127.5, so the range the observer settled on is +-127.5 scale.
        amax = scale.item() * (obs.quant_max - obs.quant_min) / 2
        return -amax, amax

    return run


def ort_collector(arr: np.ndarray, method: str, **params) -> Callable[[], object]:
    from onnxruntime.quantization.calibrate import HistogramCollector

    settings = {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128, "percentile": 99.999}
    settings.update(params)

    def run():
        collector = HistogramCollector(method=method, scenario="same", **settings)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints progress lines
            collector.collect({"x": arr})
            result = collector.compute_collection_result()["x"]
        if method == "distribution":
            return float(result.avg), float(result.std)
        return float(result[0]), float(result[1])

    return run


def tensorrt_entropy_reference(arr: np.ndarray, bins: int = 2048, levels: int = 128) -> Callable[[], tuple]:
    """TensorRT's procedure as published (GTC 2017, "8-bit Inference with TensorRT"), looped in numpy.

    2048 linear bins of |x| over [0, amax]; for each candidate i >= 128 bins: P = the first i bins
    with the rest added to the last, Q = those i bins merged into 128 levels and spread back over
    their non-empty bins; the threshold is the upper edge of the i with the least KL(P||Q),
    the largest i on ties.
    """
    absx = np.abs(arr.reshape(-1)).astype(np.float64)
    amax = float(absx.max())

    def run() -> tuple[float, float]:
        hist, edges = np.histogram(absx, bins=bins, range=(0.0, amax))
        hist = hist.astype(np.float64)
        best_kl, best_i = np.inf, bins
        for i in range(levels, bins + 1):
            p = hist[:i].copy()
            p[-1] += hist[i:].sum()
            level = (np.arange(i) * levels) // i
            present = hist[:i] > 0
            sums = np.bincount(level, weights=hist[:i], minlength=levels)
            nonempty = np.bincount(level, weights=present, minlength=levels)
            q = np.where(present, sums[level] / np.maximum(nonempty[level], 1), 0.0)
            p, q = p / p.sum(), q / q.sum()
            with np.errstate(divide="ignore", invalid="ignore"):
                kl = float(np.sum(np.where(p > 0, p * np.log(p / q), 0.0)))
            if kl <= best_kl:
                best_kl, best_i = kl, i
        t = float(edges[best_i])
        return -t, t

    return run


def range_sqnr(x: torch.Tensor, lo: float, hi: float) -> float:
    scale, zero_point = choose_qparams(lo, hi, SPEC)
    return sqnr_db(x, dequantize(quantize(x, scale, zero_point, SPEC), scale, zero_point, SPEC))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=15, help="timed rounds of the fast calibrators (median reported)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="folder for bench_core.json")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: ORT's collector is single-threaded numpy, and on a small shared "
        "machine a second thread waiting for a busy core makes every torch op take a scheduler tick)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    cpu = cpu_info()
    print("quantpilot bench-core: calibrators on one activation")
    print(f"CPU: {cpu['model']} | {cpu['cores']} cores | torch threads {torch.get_num_threads()}")
    print("ISA: " + " | ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in cpu["isa"].items()))
    import onnxruntime

    versions = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    load_before = os.getloadavg()[0]

    x, what = minilm_activation()
    arr = x.numpy()
    flat = x.reshape(-1).double()
    kurtosis = float(((flat - flat.mean()) ** 4).mean() / flat.var() ** 2)
    print(f"activation: {what}")
    print(
        f"  shape {tuple(x.shape)}, min {x.min().item():.4f}, max {x.max().item():.4f}, "
        f"std {x.std().item():.4f}, kurtosis {kurtosis:.1f}"
    )
    slow = max(1, min(3, args.repeats))
    print(
        "scheme: int8 symmetric per tensor; times: median of "
        f"{args.repeats} interleaved runs of collect + compute (slow references: {slow} or 1)\n"
    )

    from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver

    # (key, label, implementation, function, repeats)
    candidates = [
        ("ours_minmax", "quantpilot MinMax", "quantpilot", ours("minmax", x), args.repeats),
        (
            "ours_moving_average",
            "quantpilot MovingAverageMinMax",
            "quantpilot",
            ours("moving_average", x),
            args.repeats,
        ),
        (
            "ours_percentile_99.99",
            "quantpilot Histogram percentile 99.99",
            "quantpilot",
            ours("histogram", x, method="percentile", percentile=99.99),
            args.repeats,
        ),
        (
            "ours_percentile_99.999",
            "quantpilot Histogram percentile 99.999",
            "quantpilot",
            ours("histogram", x, method="percentile", percentile=99.999),
            args.repeats,
        ),
        (
            "ours_entropy",
            "quantpilot Histogram entropy",
            "quantpilot",
            ours("histogram", x, method="entropy"),
            args.repeats,
        ),
        ("ours_mse", "quantpilot Histogram mse", "quantpilot", ours("histogram", x, method="mse"), args.repeats),
        ("torch_minmax", "torch MinMaxObserver", "torch", torch_observer(MinMaxObserver, x), args.repeats),
        (
            "torch_histogram",
            "torch HistogramObserver (2048 bins)",
            "torch",
            torch_observer(HistogramObserver, x),
            args.repeats,
        ),
        (
            "ort_percentile_99.99",
            "ORT percentile 99.99 (2048 bins of |x|)",
            "onnxruntime",
            ort_collector(arr, "percentile", percentile=99.99),
            args.repeats,
        ),
        (
            "ort_percentile_99.999",
            "ORT percentile 99.999 (2048 bins of |x|)",
            "onnxruntime",
            ort_collector(arr, "percentile", percentile=99.999),
            args.repeats,
        ),
        (
            "ort_entropy",
            "ORT entropy (4096 signed bins, 255 levels)",
            "onnxruntime",
            ort_collector(arr, "entropy", num_bins=4096, num_quantized_bins=255),
            slow,
        ),
        (
            "ort_entropy_default",
            "ORT entropy (its defaults: 128 bins, 128 levels)",
            "onnxruntime",
            ort_collector(arr, "entropy", num_bins=128, num_quantized_bins=128),
            slow,
        ),
        (
            "ort_distribution",
            "ORT distribution (2048 bins; avg/std, no range)",
            "onnxruntime",
            ort_collector(arr, "distribution"),
            slow,
        ),
        (
            "tensorrt_entropy_reference",
            "TensorRT entropy reference (numpy loop)",
            "reference",
            tensorrt_entropy_reference(arr),
            1,
        ),
    ]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        measured: dict[str, dict] = {}
        for repeats in sorted({e[4] for e in candidates}, reverse=True):
            group = [e for e in candidates if e[4] == repeats]
            # Fast calibrators get a warm-up round; the slow references are timed cold.
            measured.update(timed(group, repeats, warmup=1 if repeats == args.repeats else 0))
        rows = {}
        for key, label, impl, _, repeats in candidates:
            result = measured[key]["result"]
            row = {
                "label": label,
                "implementation": impl,
                "ms": measured[key]["ms"],
                "cpu_ms": measured[key]["cpu_ms"],
                "repeats": repeats,
            }
            if key == "ort_distribution":
                row.update(avg=result[0], std=result[1])
            else:
                lo, hi = result
                row.update(min=lo, max=hi, amax=max(abs(lo), abs(hi)), sqnr_db=range_sqnr(x, lo, hi))
            rows[key] = row

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

    print("\nagreement with ONNX Runtime (amax = max(|min|, |max|)):")
    agreement = []
    for ours_key, ort_key in [
        ("ours_percentile_99.99", "ort_percentile_99.99"),
        ("ours_percentile_99.999", "ort_percentile_99.999"),
        ("ours_entropy", "ort_entropy"),
        ("ours_entropy", "tensorrt_entropy_reference"),
    ]:
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
        agreement.append(entry)
        print(
            f"  {rows[ours_key]['label']:<40} {a:>9.4f} vs {rows[ort_key]['label']:<48} {b:>9.4f}: "
            f"{rel * 100:6.2f} % apart, ours {entry['speedup']:.1f}x faster"
        )

    targets = []
    for key in ("ours_percentile_99.99", "ours_entropy", "ours_mse"):
        speedup = rows[key]["speedup_vs_histogram_observer"]
        targets.append(
            {
                "target": f"{rows[key]['label']} >= {SPEED_TARGET:g}x faster than HistogramObserver (CPU time; "
                f"wall {rows[key]['wall_speedup_vs_histogram_observer']:.2f}x)",
                "value": round(speedup, 2),
                "pass": speedup >= SPEED_TARGET,
            }
        )
    for entry in agreement[:3]:
        targets.append(
            {
                "target": f"{rows[entry['ours']]['label']} within {AGREEMENT_TARGET:.0%} of "
                + rows[entry["reference"]]["label"],
                "value": round(entry["relative_difference"], 4),
                "pass": entry["relative_difference"] <= AGREEMENT_TARGET,
            }
        )
    print("\ntargets:")
    for t in targets:
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']} (measured {t['value']})")
    load_after = os.getloadavg()[0]
    print(
        f"\n1-minute load average {load_before:.2f} before, {load_after:.2f} after "
        "(other work on this machine skews times)"
    )

    report = {
        "cpu": cpu,
        "versions": versions,
        "torch_threads": torch.get_num_threads(),
        "activation": {"description": what, "shape": list(x.shape), "kurtosis": kurtosis},
        "spec": SPEC.to_dict(),
        "rows": rows,
        "agreement": agreement,
        "targets": targets,
        "load_average": [load_before, load_after],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_core.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'bench_core.json'}")
    return report


if __name__ == "__main__":
    main()
