"""`quantpilot benchmark DIR|MODEL --engine openvino|onnxruntime|torch|torch-int8 [--batch N --seq-len L]`.

Times the quantized model of a saved folder (or a float model) side by side with FP32 and bf16 of the same
architecture on the same engine, interleaved call by call so drift on the machine hits all alike, and prints
latency percentiles (p50/p90/p99), throughput and the ratios to FP32 and bf16.

Example:
    >>> rows = time_side_by_side({"a": lambda: None}, warmup=0, iters=3)
    >>> sorted(rows["a"])
    ['p50', 'p90', 'p99']
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cli_saved import Saved, float_skeleton, is_saved_folder, open_folder, synthetic_batch
from .timing import interleaved_samples

__all__ = ["time_side_by_side", "add_benchmark_parser", "ENGINES"]

ENGINES = ("openvino", "onnxruntime", "torch", "torch-int8")


def time_side_by_side(fns: dict[str, Callable[[], object]], warmup: int = 3, iters: int = 20) -> dict[str, dict]:
    """Latency percentiles (seconds) of each function, timed in turns after `warmup` untimed rounds.

    Example:
        >>> time_side_by_side({"x": lambda: None}, 0, 2)["x"]["p50"] >= 0
        True
    """
    samples = interleaved_samples(fns, warmup, iters)
    return {n: {f"p{q}": float(np.percentile(s, q)) for q in (50, 90, 99)} for n, s in samples.items()}


def _runners(engine: str, float_model: Any, qmodel: Any, batch: Any) -> dict[str, Any]:
    """name -> compiled model: FP32 and bf16 of the float architecture, and the quantized model, on `engine`."""
    from .engines import compile as compile_engine

    runners: dict[str, Any] = {}
    if engine in ("openvino", "onnxruntime"):
        runners["fp32"] = compile_engine(float_model, engine, example_inputs=batch)
        if engine == "openvino":
            runners["bf16"] = compile_engine(float_model, engine, example_inputs=batch, dtype="bfloat16")
        if qmodel is not None:
            runners["quantized"] = compile_engine(qmodel, engine, example_inputs=batch)
        return runners
    runners["fp32"] = compile_engine(float_model, "torch")
    runners["bf16"] = compile_engine(float_model, "torch", dtype="bfloat16")
    if qmodel is not None:
        runners["quantized"] = compile_engine(qmodel, engine)
    return runners


def _table(rows: dict[str, dict], batch_size: int) -> str:
    fp32, bf16 = rows.get("fp32", {}).get("p50"), rows.get("bf16", {}).get("p50")
    lines = [f"{'model':<10} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'samples/s':>10} {'vs FP32':>8} {'vs bf16':>8}"]
    for name, r in rows.items():
        vs_fp32 = f"{fp32 / r['p50']:.2f}x" if fp32 else "-"
        vs_bf16 = f"{bf16 / r['p50']:.2f}x" if bf16 else "-"
        lines.append(f"{name:<10} {r['p50'] * 1e3:>9.2f} {r['p90'] * 1e3:>9.2f} {r['p99'] * 1e3:>9.2f} "
                     f"{batch_size / r['p50']:>10.1f} {vs_fp32:>8} {vs_bf16:>8}")  # fmt: skip
    return "\n".join(lines)


def _models(target: str) -> tuple[Any, Any, Any, str, str]:
    """(float model, quantized model or None, input preparation, kind, what was opened)."""
    if is_saved_folder(target):
        saved: Saved = open_folder(target)
        float_model, real = float_skeleton(saved)
        note = "" if real else " (FP32/bf16: its architecture with random weights; weights do not change speed)"
        return float_model, saved.qmodel, saved.prep, saved.kind, f"{saved.folder}{note}"
    from .cli_auto import load_for_cli, model_kind

    if Path(target).is_dir() and (Path(target) / "report.json").is_file():
        raise ValueError(f"{target} holds no quantized model (the autopilot's answer was float): "
                         "benchmark the float model by name or folder instead")  # fmt: skip
    kind = model_kind(target)
    model, prep, _ = load_for_cli(target, kind)
    return model, None, prep, kind, f"{target} (float model only)"


def _check_target(target: str) -> None:
    """A saved folder with a readable source record, or a model name / Hugging Face folder (else ValueError)."""
    if is_saved_folder(target):
        from .saved_dirs import model_folder, read_source

        read_source(model_folder(target))
    elif not (Path(target).is_dir() and (Path(target) / "report.json").is_file()):
        from .cli_auto import model_kind

        model_kind(target)


def _benchmark(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.engine == "torch-int8" and not is_saved_folder(args.target):
        raise ValueError("--engine torch-int8 runs a quantized model: pass a folder quantpilot saved")
    _check_target(args.target)  # a mistake is one line, before any progress line
    print(f"[{0:6.1f}s] opening {args.target}", file=sys.stderr, flush=True)
    torch.set_num_threads(args.threads)
    float_model, qmodel, prep, kind, what = _models(args.target)
    batch = synthetic_batch(kind, prep, float_model, args.batch, args.seq_len)
    print(f"[{time.perf_counter() - started:6.1f}s] compiling on {args.engine}", file=sys.stderr, flush=True)
    runners = _runners(args.engine, float_model, qmodel, batch)
    print(f"[{time.perf_counter() - started:6.1f}s] timing {', '.join(runners)}: {args.warmup} warm-up and "
          f"{args.iters} timed calls each, interleaved", file=sys.stderr, flush=True)  # fmt: skip
    with torch.inference_mode():
        rows = time_side_by_side({n: (lambda r=r: r.run(batch)) for n, r in runners.items()}, args.warmup, args.iters)
    from .machine import cpu_report

    cpu = cpu_report()
    isa = ", ".join(f for f, on in cpu["flags"].items() if on) or "none of " + ", ".join(cpu["flags"])
    shape = f"batch {args.batch}" + (f" x {args.seq_len} tokens" if kind != "image" else "")
    print(f"{what}\nengine {args.engine}, {shape}, {args.threads} thread(s); CPU: {cpu['model']} ({isa})")
    if args.engine == "onnxruntime":
        print("(ONNX Runtime's CPU provider has no bf16 kernels: no bf16 row)")
    print(_table(rows, args.batch))
    return 0


def add_benchmark_parser(sub: Any, positive_int: Any) -> None:
    """Register `quantpilot benchmark` on the `quantpilot` parser's sub-commands.

    Example:
        >>> import argparse
        >>> sub = argparse.ArgumentParser().add_subparsers(); add_benchmark_parser(sub, int)
    """
    b = sub.add_parser("benchmark", help="latency percentiles and throughput against FP32 and bf16 on one engine")
    b.add_argument(
        "target", metavar="DIR|MODEL", help="a folder quantpilot saved, a bundled model name or an HF folder"
    )
    b.add_argument("--engine", default="openvino", choices=ENGINES)
    b.add_argument("--batch", type=positive_int, default=8, help="samples per call (default 8)")
    b.add_argument("--seq-len", type=positive_int, default=128, help="tokens per sample for text models (default 128)")
    b.add_argument("--iters", type=positive_int, default=30, help="timed calls per model (default 30)")
    b.add_argument("--warmup", type=positive_int, default=3, help="untimed calls first (default 3)")
    b.add_argument("--threads", type=positive_int, default=2, help="CPU threads, at least 1")
    b.set_defaults(func=_benchmark)
