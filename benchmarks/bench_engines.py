"""quantpilot on real engines against every peer a user would pick, in one run (`make bench`).

MiniLM (all-MiniLM-L6-v2): batch 32 held-out sentences padded to 128 tokens. Rows: FP32 eager,
bf16 eager, torch.ao quantize_dynamic, torchao int8 dynamic, ONNX Runtime FP32 / quantize_dynamic /
quantize_static, OpenVINO FP32 / bf16, OpenVINO + NNCF int8 (default preset, and
`model_type=TRANSFORMER`), and quantpilot's int8-static (with and without attention-matmul points)
on OpenVINO and ONNX Runtime, and on torch-int8. Every static method calibrates on the same 200
calibration sentences. Columns: speed vs FP32 eager (medians of interleaved calls, so drift on a
shared machine hits every row alike), mean embedding cosine vs FP32 on the 160 held-out sentences,
and size on disk.

EfficientNet-Lite0: batch 16 x 224², top-1 on the 400 evaluation photos of
../shared/data/imagenet-samples (the other 100 calibrate). Rows: FP32/bf16 eager, OpenVINO
FP32/bf16, NNCF default int8, quantpilot int8-static (BN folded, residual adds quantized) on
OpenVINO and ONNX Runtime.

A peer that fails gets a row saying why. The CPU model and its int8/bf16 ISA flags are printed first:
the ranking of bf16 and int8 differs between the machines this runs on. Results also go to
bench-out/bench_engines.json.

The rows are built in `engine_minilm_rows.py` and `engine_efficientnet_rows.py`, from the runners in
`engine_runners.py`; this script times them side by side and prints the tables.

Run: make bench   (or .venv/bin/python benchmarks/bench_engines.py --help)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_efficientnet_rows import IMAGE_BATCH, efficientnet_rows, top1  # noqa: E402
from engine_minilm_rows import BATCH, TOKENS, embedding_cosines, minilm_rows  # noqa: E402
from engine_runners import Row, dir_size, first_output, nncf_quantize, ov_ir_size, ov_runner  # noqa: E402
from engine_targets import targets  # noqa: E402

from quantpilot.machine import cpu_header, cpu_report  # noqa: E402
from quantpilot.models import load  # noqa: E402
from quantpilot.timing import interleaved_latency  # noqa: E402

# bench_auto.py and profile_openvino.py import the runners and batch sizes from this script.
__all__ = [
    "BATCH",
    "IMAGE_BATCH",
    "TOKENS",
    "dir_size",
    "nncf_quantize",
    "first_output",
    "ov_ir_size",
    "ov_runner",
    "main",
    "table",
]

# ---------------------------------------------------------------------------------------------- report


def table(title: str, rows: list[Row], example: Any, metric: dict[str, float], metric_name: str, args) -> dict:
    """Time every runnable row side by side (interleaved medians), print the table and return it as data."""
    runnable = {r.name: (lambda r=r: r.run(example)) for r in rows if r.run is not None}
    latency = interleaved_latency(runnable, warmup=args.warmup, iters=args.iters)
    base = latency["FP32 eager"]
    print(f"\n{title}")
    print(f"{'variant':<40} {'median ms':>10} {'vs FP32':>8} {metric_name:>9} {'size MB':>8}")
    out = []
    for row in rows:
        size = f"{row.size / 1e6:8.1f}" if row.size else f"{'?':>8}"
        if row.run is None:
            print(f"{row.name:<40} {'-':>10} {'-':>8} {'-':>9} {'-':>8}  {row.error}")
            out.append({"variant": row.name, "error": row.error})
            continue
        speed = base / latency[row.name]
        print(f"{row.name:<40} {latency[row.name] * 1e3:>10.1f} {speed:>7.2f}x {metric[row.name]:>9.4f} {size}")
        out.append(
            {
                "variant": row.name,
                "median_s": latency[row.name],
                "speedup_vs_fp32": speed,
                metric_name: metric[row.name],
                "size_bytes": row.size,
            }
        )
    return {"title": title, "rows": out, "latency": latency}


def main(argv: list[str] | None = None) -> dict:
    """Build, measure and print the MiniLM and EfficientNet tables and the targets; write them to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--models", default="minilm,efficientnet", help="comma-separated: minilm, efficientnet")
    parser.add_argument("--out", default="bench-out/bench_engines.json")
    args = parser.parse_args(argv)

    cpu = cpu_report()
    print(cpu_header(cpu))
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="qp-bench-"))

    models = set(args.models.split(","))
    minilm = cos = effnet = accuracy = None
    if "minilm" in models:
        model, tok = load("minilm")
        rows, example = minilm_rows(model, tok, args.threads, workdir)
        cos = embedding_cosines(rows, tok)
        setting = f"batch {BATCH} x {TOKENS} tokens, {args.threads} threads, median of {args.iters} interleaved calls"
        minilm = table(f"all-MiniLM-L6-v2, {setting}", rows, example, cos, "cosine", args)
    if "efficientnet" in models:
        cnn_rows, cnn_example, data = efficientnet_rows(args.threads, workdir)
        accuracy = top1(cnn_rows, data)
        title = f"EfficientNet-Lite0, batch {IMAGE_BATCH} x 224², {args.threads} threads, top-1 on 400 photos"
        effnet = table(title, cnn_rows, cnn_example, accuracy, "top-1", args)
    print()
    accuracy = accuracy if effnet is not None else None
    result = {
        "cpu": cpu,
        "minilm": minilm,
        "efficientnet": effnet,
        "targets": targets(minilm, cos, effnet, accuracy, cpu),
        "load_average_end": os.getloadavg()[0],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
