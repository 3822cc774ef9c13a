"""torch-int8 engine against FP32, bf16 and torch.ao's dynamic int8 on all-MiniLM-L6-v2.

One run, one batch: 32 held-out sentences padded / truncated to 128 tokens, 2 threads. Every
variant is timed in turns (`quantpilot.timing.interleaved_latency`), so drift on a shared machine
hits all alike, and its mean-pooled sentence embeddings of the 160 held-out sentences are compared
with FP32's (mean cosine). Variants:

* FP32 eager, and a bf16 copy (the honest baseline, see DESIGN.md);
* `torch.ao.quantization.quantize_dynamic` (qint8 Linear): issue 5 reports its oneDNN kernel
  crashing in torch 2.13 on this CPU, and a crash cannot be caught, so it first runs once in a
  child process; only if that survives is it timed here, and a failure is a row of the table;
* quantpilot int8-dynamic as fake-quant (the `torch` engine) and on `torch-int8`;
* quantpilot int8-static (calibrated on the 200 calibration sentences) on `torch-int8`.

Targets (PASS/MISS): torch-int8 faster than torch.ao dynamic and than FP32 eager. On a MISS (or
with --profile) the torch-int8 models are profiled and the time per op printed. The timing is then
repeated, every row alike, with glibc malloc told to keep freed memory (see `tune_malloc`): the
unfused eager integer path allocates several large temporaries per layer, and under glibc's
defaults each one costs fresh page faults. Results also go to bench-out/bench_torch_int8.json.

Run: .venv/bin/python benchmarks/bench_torch_int8.py
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

import quantpilot as qp
from quantpilot.machine import cpu_header, cpu_report
from quantpilot.models import load
from quantpilot.timing import interleaved_latency
from quantpilot_testbed import datasets
from quantpilot_testbed.sentence_embedding import embed, token_batches

BATCH, TOKENS = 32, 128
FP32, BF16, AO = "FP32 eager", "bf16 eager", "torch.ao quantize_dynamic"
FAKE, INT8_DYN, INT8_STATIC = "qp fake-quant int8-dynamic", "qp torch-int8 int8-dynamic", "qp torch-int8 int8-static"

# The torch.ao model run once in a child: a segfault there is a return code here, not a dead benchmark.
AO_PROBE = """
import sys, warnings, torch
warnings.simplefilter("ignore")
torch.set_num_threads(int(sys.argv[1]))
from quantpilot_testbed import datasets
from quantpilot.models import load
model, tok = load("minilm")
ao = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
batch = tok(datasets.sentences("eval")[:32], padding="max_length", truncation=True, max_length=128,
            return_tensors="pt")
with torch.inference_mode():
    ao(**batch)
"""


def torch_ao_survives(threads: int) -> str | None:
    """None if torch.ao's dynamic int8 MiniLM ran once in a child process, else what went wrong."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", AO_PROBE, str(threads)], capture_output=True, text=True, timeout=600
        )
    except subprocess.TimeoutExpired:
        return "did not finish in 600 s"
    if done.returncode < 0:
        return f"crashed with signal {-done.returncode} (SIGSEGV is 11)"
    if done.returncode:
        return "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    return None


def build_variants(model, tok, threads: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Name -> runner (anything called as runner(**batch)), and name -> why it could not be built."""
    runners: dict[str, Any] = {
        FP32: qp.engines.compile(model, engine="torch"),
        BF16: qp.engines.compile(model, engine="torch", dtype="bfloat16"),
    }
    failed: dict[str, str] = {}
    problem = torch_ao_survives(threads)
    if problem is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its deprecation notices, not results
                ao = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            runners[AO] = qp.engines.compile(ao, engine="torch")
        except Exception as err:  # noqa: BLE001 (any failure of the peer is a row, not a crash)
            problem = f"failed: {type(err).__name__}: {err}"
    if problem is not None:
        failed[AO] = problem
    dynamic = qp.freeze(qp.quantize(model, "int8-dynamic"))
    runners[FAKE] = qp.engines.compile(dynamic, engine="torch")
    runners[INT8_DYN] = qp.engines.compile(dynamic, engine="torch-int8")
    static = qp.quantize(model, "int8-static")
    with qp.calibrate(static, progress=False):
        for batch in token_batches(tok, datasets.sentences("calibration"), BATCH, TOKENS):
            static(**batch)
    runners[INT8_STATIC] = qp.engines.compile(qp.freeze(static), engine="torch-int8")
    return runners, failed


def profile(runner, batch: dict, rows: int = 12) -> dict[str, Any]:
    """Where one call's time goes: the ops with the most self CPU time, and the int8 GEMM's share."""
    runner.run(batch)  # warm
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        runner.run(batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return {
        "total_ms": total / 1e3,
        "top": [
            {
                "op": e.key,
                "self_ms": e.self_cpu_time_total / 1e3,
                "share": e.self_cpu_time_total / total,
                "calls": e.count,
            }
            for e in top
        ],
    }


def tune_malloc() -> str | None:
    """Keep freed memory in glibc's heap (None on success, else why not).

    By default glibc serves allocations above a threshold (at most 32 MiB) with fresh mmap'd pages and
    returns them on free, so every large temporary of an unfused eager op pays page faults again;
    jemalloc / tcmalloc, or these two settings, are the usual fix for PyTorch CPU inference.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError as err:
        return f"no glibc: {err}"
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    if not (libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)):
        return "mallopt refused the settings"
    return None


def report(title: str, latency: dict[str, float], cosine: dict[str, float], failed: dict[str, str]) -> dict:
    """Print one table and its PASS/MISS lines; return them as plain data."""
    rows = []
    print(f"\n{title}")
    print(f"{'variant':<30} {'median ms':>10} {'vs FP32':>8} {'cosine':>8}")
    for name in (FP32, BF16, AO, FAKE, INT8_DYN, INT8_STATIC):
        if name in failed:
            rows.append({"variant": name, "error": failed[name]})
            print(f"{name:<30} {'-':>10} {'-':>8} {'-':>8}  {failed[name]}")
            continue
        speed = latency[FP32] / latency[name]
        rows.append({"variant": name, "median_s": latency[name], "speedup_vs_fp32": speed, "cosine": cosine[name]})
        print(f"{name:<30} {latency[name] * 1e3:>10.1f} {speed:>7.2f}x {cosine[name]:>8.4f}")
    targets = []
    for engine_row in (INT8_DYN, INT8_STATIC):
        for peer in (AO, FP32):
            name = f"{engine_row} faster than {peer}"
            if peer not in latency:
                targets.append({"target": name, "pass": None, "ratio": None})
                print(f"n/a  {name} ({peer} did not run)")
                continue
            ratio = latency[peer] / latency[engine_row]
            targets.append({"target": name, "pass": ratio > 1.0, "ratio": ratio})
            print(f"{'PASS' if ratio > 1.0 else 'MISS'} {name} ({ratio:.2f}x)")
    for engine_row in (INT8_DYN, INT8_STATIC):
        print(f"info: {engine_row} vs {BF16}: {latency[BF16] / latency[engine_row]:.2f}x")
    return {"title": title, "rows": rows, "targets": targets}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="profile the torch-int8 models even if targets pass")
    parser.add_argument("--out", default="bench-out/bench_torch_int8.json")
    args = parser.parse_args(argv)

    cpu = cpu_report()
    print(cpu_header(cpu))
    loads = {"start": os.getloadavg()[0]}
    torch.set_num_threads(args.threads)

    model, tok = load("minilm")
    sentences = datasets.sentences("eval")
    batch = dict(tok(sentences[:BATCH], padding="max_length", truncation=True, max_length=TOKENS, return_tensors="pt"))
    runners, failed = build_variants(model, tok, args.threads)
    int8 = runners[INT8_DYN]
    print(f"torch-int8: {len(int8.integer_layers)} integer Linear layers, {len(int8.fallback_layers)} fallback")

    reference = embed(runners[FP32], tok, sentences)
    cosine = {name: float((embed(r, tok, sentences) * reference).sum(dim=1).mean()) for name, r in runners.items()}
    calls = {name: (lambda r=r: r.run(batch)) for name, r in runners.items()}
    setting = f"batch {BATCH} x {TOKENS} tokens, {args.threads} threads, median of {args.iters} interleaved"

    latency = interleaved_latency(calls, warmup=args.warmup, iters=args.iters)
    loads["default malloc"] = os.getloadavg()[0]
    tables = [report(f"all-MiniLM-L6-v2, {setting}, glibc malloc defaults", latency, cosine, failed)]

    profiles = {}
    if args.profile or any(t["pass"] is False for t in tables[0]["targets"]):
        for name in (INT8_DYN, INT8_STATIC):
            profiles[name] = profile(runners[name], batch)
            print(f"\nprofile of {name}: {profiles[name]['total_ms']:.1f} ms of self CPU time in one call")
            for op in profiles[name]["top"]:
                print(f"  {op['op']:<40} {op['self_ms']:>8.1f} ms {op['share']:>6.1%}  x{op['calls']}")

    problem = tune_malloc()
    if problem is None:
        latency = interleaved_latency(calls, warmup=args.warmup, iters=args.iters)
        loads["tuned malloc"] = os.getloadavg()[0]
        title = "the same, glibc malloc tuned (mmap threshold 32 MiB, trim threshold 1 GiB) for every row"
        tables.append(report(title, latency, cosine, failed))
    else:
        print(f"\nno tuned-allocator table: {problem}")
    print("\nload average: " + ", ".join(f"{k} {v:.2f}" for k, v in loads.items()))

    result = {
        "cpu": cpu,
        "load_average": loads,
        "settings": {"batch": BATCH, "tokens": TOKENS, "threads": args.threads, "iters": args.iters},
        "integer_layers": int8.integer_layers,
        "fallback_layers": int8.fallback_layers,
        "tables": tables,
        "profiles": profiles,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
