"""bench-llm: LLM weight quantization methods on the WikiText-2 testbed GPT-2, in one table.

Rows: FP32, bf16, RTN W8A16, RTN W4A16 g128, AWQ W4 g128, GPTQ W4 g128, RTN W4 g128 with the token
table (and its tied head) packed W4 g32 too, SmoothQuant W8A8, LLM.int8(), torchao int8 / int4
weight-only, optimum-quanto int8 / int4 weight-only. Columns: perplexity on test.txt
(non-overlapping 256-token windows, capped by --windows), mean per-token KL divergence of the
next-token distribution from FP32's (first --kl-windows windows, in 1e-3 nats), size on disk,
weight bytes resident, peak RSS of a process that only loads and serves the variant, prefill and
decode tokens/s.

Stages, each variant in its own subprocess so memory peaks never mix:
  1. build: quantize from the float testbed (calibration: --calib windows of valid.txt), save,
     measure perplexity as deployed;
  2. serve: a fresh process loads the saved variant, runs prefill + decode once, reports peak RSS;
  3. time: one process loads every variant and times prefill (1 x --prefill tokens) and greedy
     decode with the KV cache (--decode new tokens), interleaved round by round so the shared
     machine's drift hits all rows alike; medians and ratios to bf16.

Quantized weight-only rows are timed on the torch-int8 engine (bf16 activations, PyTorch's packed
int8 / int4 kernels for decode, dequantize + bf16 matmul for prefill; the rest of those models in
bf16 like the bf16 row); their perplexity is that of the stored weights with float32 activations.
W8A8 and LLM.int8() rows run their own layers in float32.

Quanto rows convert GPT-2's Conv1D layers to nn.Linear first (quanto only quantizes nn.Linear).

The rows live in `llm_variants.py`, the stages in `llm_stages.py`, the printed table in `llm_table.py`.

Usage: python benchmarks/bench_llm.py [--windows 100] [--calib 128] [--threads 1] [--out bench-out]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules beside this script

from llm_stages import stage_build, stage_serve, stage_time  # noqa: E402
from llm_table import print_checks, print_notes, print_table, target_checks  # noqa: E402
from llm_variants import VARIANTS, slug  # noqa: E402

from quantpilot.machine import cpu_header, cpu_report  # noqa: E402

__all__ = ["main", "target_checks"]  # target_checks: tests/test_bench_llm_targets.py reads it from this script


# --------------------------------------------------------------------------- stages (child processes)
def run_child(stage: str, names: list[str], workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run one stage of `names` in a fresh process of this script; its result, or {"error": why}."""
    out = workdir / f"{stage}-{slug('_'.join(names))[:60]}.json"
    cmd = [
        sys.executable,
        __file__,
        "--stage",
        stage,
        "--names",
        json.dumps(names),
        "--workdir",
        str(workdir),
        "--result",
        str(out),
        "--windows",
        str(args.windows),
        "--kl-windows",
        str(args.kl_windows),
        "--calib",
        str(args.calib),
        "--threads",
        str(args.threads),
        "--prefill",
        str(args.prefill),
        "--decode",
        str(args.decode),
        "--iters",
        str(args.iters),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)[-300:] or f"exit code {proc.returncode}"}
    return json.loads(out.read_text())


def child_main(args: argparse.Namespace) -> None:
    """In the child process: run the stage, write its result (or the reason it failed) to --result."""
    torch.set_num_threads(args.threads)
    names = json.loads(args.names)
    workdir = Path(args.workdir)
    try:
        if args.stage == "time":
            result = stage_time(names, workdir, args)
        else:
            fn = stage_build if args.stage == "build" else stage_serve
            result = fn(names[0], workdir, args)
    except Exception as err:  # reported as the row's reason, never hidden
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if not msg.startswith("not available"):
            traceback.print_exc()
            msg = f"failed: {type(err).__name__}: {msg}"
        result = {"error": msg[:300]}
    Path(args.result).write_text(json.dumps(result))


# --------------------------------------------------------------------------- the run
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (the hidden --stage/--names/--workdir/--result flags are run_child's)."""
    parser = argparse.ArgumentParser(description="LLM weight quantization on the WikiText-2 testbed")
    parser.add_argument("--windows", type=int, default=80, help="test.txt windows of 256 tokens (of 942)")
    parser.add_argument("--kl-windows", type=int, default=40, help="test windows for the KL to FP32 column")
    parser.add_argument("--calib", type=int, default=128, help="calibration windows of 256 tokens (AWQ, GPTQ, SQ)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (2 cores are shared)")
    parser.add_argument("--prefill", type=int, default=256, help="prompt tokens timed for prefill")
    parser.add_argument("--decode", type=int, default=32, help="new tokens timed for greedy decode")
    parser.add_argument("--iters", type=int, default=5, help="timed rounds (medians)")
    parser.add_argument("--only", default=None, help="comma-separated row names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--names", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def testbed_log(args: argparse.Namespace) -> dict[str, Any]:
    """Train or load the testbed, print what it is and what the scores cover; its training log."""
    from quantpilot_testbed.language_model import default_cache_dir, load_testbed

    load_testbed()  # trains and caches the testbed on first use (a few minutes)
    log = json.loads((default_cache_dir() / "train_log.json").read_text())
    print(
        f"testbed: {default_cache_dir()} (GPT-2 {log['config']['n_layer']}x{log['config']['n_embd']}, "
        f"{log['steps']} steps, train loss {log['final_train_loss']:.3f})"
    )
    print(
        f"perplexity: first {args.windows} non-overlapping 256-token windows of test.txt; "
        f"calibration: {args.calib} windows of valid.txt"
    )
    return log


def measure_rows(names: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Build and serve each variant in its own processes, then time all of them in one: the table's rows."""
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        workdir = Path(tmp)
        for name in names:
            t0 = time.perf_counter()
            rows[name] = run_child("build", [name], workdir, args)
            if "error" not in rows[name]:
                rows[name].update(run_child("serve", [name], workdir, args))
            state = rows[name].get("error", f"ppl {rows[name].get('perplexity', float('nan')):.2f}")
            print(f"  {name}: {state} ({time.perf_counter() - t0:.0f}s)", flush=True)
        ok = [n for n in names if "error" not in rows[n]]
        timing = run_child("time", ok, workdir, args) if ok else {}
    if "error" in timing:
        print(f"timing failed: {timing['error']}")
        timing = {}
    for n, t in timing.items():
        rows[n].update(t)
    return rows


def write_result(
    args: argparse.Namespace,
    cpu: dict[str, Any],
    log: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    checks: dict[str, bool],
    elapsed: float,
) -> dict[str, Any]:
    """bench_llm.json in --out: the CPU, the arguments, the testbed, every row, the target verdicts."""
    result = {
        "cpu": cpu,
        "torch": torch.__version__,
        "args": {
            k: v
            for k, v in vars(args).items()
            if k != "out" and not k.startswith(("stage", "names", "workdir", "result"))
        }
        | {"out": str(args.out)},
        "testbed": log,
        "rows": rows,
        "checks": checks,
        "seconds": elapsed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_llm.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {path}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (or, with the hidden --stage flag, one child stage) and return what it wrote."""
    args = parse_args(argv)
    if args.stage:
        child_main(args)
        return {}
    cpu = cpu_report()
    print(cpu_header(cpu))
    print(f"torch {torch.__version__}, {args.threads} thread(s) per process")
    log = testbed_log(args)
    names = VARIANTS if not args.only else [n.strip() for n in args.only.split(",")]
    started = time.perf_counter()
    rows = measure_rows(names, args)
    print_table(rows, names)
    print_notes(rows, names, log)
    checks = target_checks(rows)
    print_checks(checks)
    elapsed = time.perf_counter() - started
    print(
        f"\n{elapsed:.0f}s. Published anchor (OPT-125M, WikiText-2): FP16 27.65, RTN W4 g128 30.49, "
        "AWQ 29.77, GPTQ 29.39."
    )
    return write_result(args, cpu, log, rows, checks, elapsed)


if __name__ == "__main__":
    main()
