"""Peak resident memory of quantpilot's weight methods on a random-weight Llama-style causal LM.

What it measures: a random bf16 LlamaForCausalLM (about 370 M parameters by default) is built once
and saved with `save_pretrained` (safetensors) to a temporary directory. Each operation then runs
in a FRESH Python process that loads those weights with
`AutoModelForCausalLM.from_pretrained(dir, torch_dtype=torch.bfloat16)`, records the resident set
size after loading, runs the operation and reports its peak RSS (`ru_maxrss`) and wall time. The
parent never holds the model itself (the build is a child process too), so nothing of its memory
leaks into a child's `ru_maxrss`. The table shows peak RSS, peak / bf16 model bytes (sum of the
parameters' bytes) and (peak - RSS after load) / model bytes: what the operation adds on top of
the loaded model, in model copies.

Operations: rtn, rtn-inplace, gptq (8 x 256 random tokens), awq (8 x 128 tokens,
search_tokens=512), int8-dynamic (`qp.quantize(model, "int8-dynamic")`).

Run:  make bench-memory
      .venv/bin/python benchmarks/bench_memory.py [--only rtn,gptq] [--hidden 256 --layers 2]
                                                  [--calib-batches 8] [--json out.json]
To measure another checkout of quantpilot, put it first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

OPS = ("rtn", "rtn-inplace", "gptq", "awq", "int8-dynamic")
VOCAB = 32000
GIB = 1024**3


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rss_bytes() -> int:
    """Current resident set size: psutil if installed, else VmRSS from /proc/self/status."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read the resident set size")


def peak_rss_bytes() -> int:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024


def build(out_dir: str, hidden: int, layers: int) -> dict:
    """Child: build the random bf16 Llama, save it, return its size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=-(-hidden * 11 // 4 // 128) * 128,  # 2816 at 1024; a multiple of 128
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        vocab_size=VOCAB,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "params": params,
        "model_bytes": nbytes,
        "intermediate_size": config.intermediate_size,
        "heads": config.num_attention_heads,
    }


def calib_batches(n: int, tokens: int, seed: int) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, VOCAB, (1, tokens), generator=g)} for _ in range(n)]


def run_op(op: str, model_dir: str, n_calib: int) -> dict:
    """Child: load the saved model, run one operation, report memory and time."""
    import torch
    from transformers import AutoModelForCausalLM

    import quantpilot as qp

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).eval()
    load_s = time.perf_counter() - t0
    after_load = rss_bytes()
    calib = None
    if op == "gptq":
        calib = calib_batches(n_calib, 256, seed=0)
    elif op == "awq":
        calib = calib_batches(n_calib, 128, seed=0)
    t0 = time.perf_counter()
    with torch.no_grad():
        if op == "rtn":
            result = qp.algorithms.rtn(model, bits=4, group_size=128)
        elif op == "rtn-inplace":
            result = qp.algorithms.rtn(model, bits=4, group_size=128, inplace=True)
        elif op == "gptq":
            result = qp.algorithms.gptq(model, calib, bits=4, group_size=128)
        elif op == "awq":
            result = qp.algorithms.awq(model, calib, bits=4, group_size=128, search_tokens=512)
        elif op == "int8-dynamic":
            result = qp.quantize(model, "int8-dynamic")
        else:
            raise ValueError(f"unknown operation {op!r}")
    wall = time.perf_counter() - t0
    assert result is not None
    return {
        "op": op,
        "rss_after_load": after_load,
        "peak_rss": peak_rss_bytes(),
        "wall_s": wall,
        "load_s": load_s,
        "quantpilot": qp.__file__,
    }


def last_json_line(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("child printed no JSON line")


def child_run(args: list[str]) -> dict:
    """Run this script as a fresh child; its last JSON line, or {'error': last stderr line}."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return last_json_line(proc.stdout)


def print_table(rows: list[dict], model_bytes: int) -> None:
    head = f"{'operation':<14} {'peak RSS GiB':>12} {'peak/model':>10} {'(peak-load)/model':>17} {'wall s':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['op']:<14} FAILED: {r['error']}")
            continue
        peak, load = r["peak_rss"], r["rss_after_load"]
        print(
            f"{r['op']:<14} {peak / GIB:>12.2f} {peak / model_bytes:>10.2f} "
            f"{(peak - load) / model_bytes:>17.2f} {r['wall_s']:>8.1f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(OPS), help="comma-separated operations")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--calib-batches", type=int, default=8, help="batches for gptq and awq")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child_main(child: list[str]) -> None:
    if child[0] == "build":
        out = build(child[1], int(child[2]), int(child[3]))
    else:
        out = run_op(child[0], child[1], int(child[2]))
    print(json.dumps(out), flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args.child)
        return
    ops = [o.strip() for o in args.only.split(",") if o.strip()]
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        raise SystemExit(f"unknown operations {unknown}; choose from {', '.join(OPS)}")
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="qp-bench-memory-") as model_dir:
        info = child_run(["build", model_dir, str(args.hidden), str(args.layers)])
        if "error" in info:
            raise SystemExit(f"building the model failed: {info['error']}")
        mb = info["model_bytes"]
        print(
            f"model: Llama hidden={args.hidden} intermediate={info['intermediate_size']} "
            f"layers={args.layers} heads={info['heads']} vocab={VOCAB}, untied, bf16: "
            f"{info['params']:,} parameters, {mb:,} bytes ({mb / GIB:.3f} GiB)"
        )
        print(f"calibration: gptq {args.calib_batches} x 256 tokens, awq {args.calib_batches} x 128 tokens")
        rows = []
        for op in ops:
            r = child_run([op, model_dir, str(args.calib_batches)])
            r["op"] = op
            rows.append(r)
            if len(rows) == 1 and "quantpilot" in r:
                print(f"quantpilot: {r['quantpilot']}")
            print(
                f"  {op}: " + (f"FAILED: {r['error']}" if "error" in r else f"done in {r['wall_s']:.1f} s"), flush=True
            )
    print()
    print_table(rows, mb)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "cpu": cpu_model(),
                    "model": info,
                    "hidden": args.hidden,
                    "layers": args.layers,
                    "calib_batches": args.calib_batches,
                    "results": rows,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
