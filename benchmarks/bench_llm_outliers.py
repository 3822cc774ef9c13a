"""LLM.int8() and SmoothQuant where they matter: the testbed LM with injected activation outliers.

Small language models lack the outlier features of >6.7 B models, so per-tensor int8 activations
work on them and the two methods designed for outliers show nothing. This benchmark measures, in
one run, WikiText-2 test perplexity (non-overlapping 256-token windows) of the trained testbed
GPT-2 before and after `inject_outlier_channels` (a few hidden channels of every LayerNorm output
scaled xFACTOR, the Linear layers reading them compensating, so the float model is unchanged):

* FP32;
* W8A8 per-tensor static (int8 per-channel weights, one calibrated activation range per layer),
  with min-max ranges (the papers' naive baseline) and with the preset's histogram-MSE ranges;
* W8A8 per-token dynamic, no smoothing;
* LLM.int8() (threshold 6.0), with the fraction of input columns it ran in float;
* SmoothQuant W8A8 (alpha 0.5) with per-tensor static and with per-token dynamic activations.

Targets on the injected model: LLM.int8() and SmoothQuant within 1 % of FP32 perplexity, per-tensor
static W8A8 not. Every row's perplexity is a pure function of the model and data (no timing), so
the contended CPU does not affect the numbers, only how long the run takes. Calibration: random
256-token windows of valid.txt (the testbed's training text); evaluation never sees them.

Results also go to bench-out/bench_llm_outliers.json.

Run: .venv/bin/python benchmarks/bench_llm_outliers.py [--max-windows 100 (0: all 256-token windows)] [--factor 60]
[--channels 4] [--calib 32]. The defaults keep the run to minutes on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

import quantpilot as qp  # noqa: E402
from quantpilot.machine import cpu_header, cpu_report  # noqa: E402
from quantpilot.tasks.language_model import (  # noqa: E402
    calibration_batches,
    load_testbed,
    perplexity,
    wikitext_tokens,
)
from quantpilot.tasks.outlier_injection import inject_outlier_channels  # noqa: E402

WINDOW = 256  # the testbed context, as the GPTQ/AWQ papers evaluate (their models: 2048)
# The preset's per-tensor static activations (asymmetric, range from the histogram with the lowest MSE) on
# every Linear / Conv1D but the head; and the same with plain min-max ranges, the papers' naive W8A8 baseline.
DECODER_W8A8 = qp.Recipe.preset("int8-static").replace(module_types=("Linear", "Conv1D"), skip=("lm_head",))
MINMAX = DECODER_W8A8.replace(activation_calibrator={"kind": "minmax"})


def per_tensor_w8a8(model: torch.nn.Module, calib: list[dict], recipe: qp.Recipe) -> torch.nn.Module:
    qmodel = qp.quantize(model, recipe)
    with qp.calibrate(qmodel):
        for batch in calib:
            qmodel(**batch)
    return qp.freeze(qmodel)


def variants(model: torch.nn.Module, calib: list[dict]) -> dict[str, Any]:
    """Builders of every row, called one at a time so only one quantized copy is alive."""
    return {
        "FP32": lambda: model,
        "W8A8 per-tensor minmax": lambda: per_tensor_w8a8(model, calib, MINMAX),
        "W8A8 per-tensor static": lambda: per_tensor_w8a8(model, calib, DECODER_W8A8),
        "W8A8 per-token dynamic": lambda: qp.freeze(
            qp.quantize(model, DECODER_W8A8.replace(activations="dynamic", dynamic=True))
        ),
        "LLM.int8() t=6.0": lambda: qp.algorithms.llm_int8(model, threshold=6.0),
        "SmoothQuant a=0.5 static": lambda: qp.algorithms.smoothquant(model, calib, alpha=0.5, activations="static"),
        "SmoothQuant a=0.5 dynamic": lambda: qp.algorithms.smoothquant(model, calib, alpha=0.5, activations="dynamic"),
    }


def measure(label: str, model: torch.nn.Module, calib: list[dict], tokens: torch.Tensor, max_windows) -> list[dict]:
    rows, fp32 = [], None
    for name, build in variants(model, calib).items():
        start = time.perf_counter()
        qmodel = build()
        built = time.perf_counter() - start
        if name.startswith("LLM.int8"):
            qp.algorithms.reset_outlier_stats(qmodel)
        ppl = perplexity(qmodel, tokens, window=WINDOW, max_windows=max_windows)
        fp32 = ppl if fp32 is None else fp32
        row = {
            "model": label,
            "variant": name,
            "perplexity": ppl,
            "delta_pct": 100.0 * (ppl / fp32 - 1.0),
            "outlier_fraction": qp.algorithms.outlier_fraction(qmodel) if name.startswith("LLM.int8") else None,
            "build_s": built,
        }
        rows.append(row)
        frac = "" if row["outlier_fraction"] is None else f"  float columns {100 * row['outlier_fraction']:.2f} %"
        print(f"  {label:<9} {name:<28} ppl {ppl:9.3f}  {row['delta_pct']:+7.2f} %{frac}", flush=True)
        del qmodel
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-windows", type=int, default=100, help="first N test windows (0: all)")
    parser.add_argument("--factor", type=float, default=60.0, help="outlier channel multiplier (20-100)")
    parser.add_argument("--channels", type=int, default=4, help="how many hidden channels become outliers")
    parser.add_argument("--calib", type=int, default=32, help="calibration windows of 256 tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench-out/bench_llm_outliers.json")
    args = parser.parse_args()
    args.max_windows = args.max_windows or None
    torch.set_num_threads(args.threads)
    cpu = cpu_report()
    print(cpu_header(cpu))
    print(f"{args.threads} threads (shared machine: perplexities are exact, build times are not)")

    model, tokenizer = load_testbed()
    tokens = wikitext_tokens("test", tokenizer)
    calib = calibration_batches(tokenizer, n=args.calib, seq_len=256, seed=0)
    injected = inject_outlier_channels(model, calib[0], n_channels=args.channels, factor=args.factor, seed=0)
    info = injected.quantpilot_outliers
    print(
        f"injected: channels {info['channels']} x{info['factor']:g} at {len(info['norms'])} norm outputs; "
        f"test windows: {'all' if args.max_windows is None else args.max_windows} of 256 tokens; "
        f"calibration: {args.calib} windows of valid.txt"
    )
    with torch.no_grad():
        probe = calib[1]["input_ids"]
        drift = (injected(input_ids=probe).logits - model(input_ids=probe).logits).abs().max().item()
    print(f"float model unchanged by the injection: max |logit difference| {drift:.2e}")

    rows = measure("original", model, calib, tokens, args.max_windows)
    rows += measure("injected", injected, calib, tokens, args.max_windows)

    by = {(r["model"], r["variant"]): r for r in rows}

    def gap(name: str) -> float:
        return abs(by[("injected", name)]["delta_pct"])

    checks = {
        "LLM.int8() within 1 % of FP32 (injected)": gap("LLM.int8() t=6.0") <= 1.0,
        "SmoothQuant static within 1 % of FP32 (injected)": gap("SmoothQuant a=0.5 static") <= 1.0,
        "SmoothQuant dynamic within 1 % of FP32 (injected)": gap("SmoothQuant a=0.5 dynamic") <= 1.0,
        "per-tensor W8A8 (minmax) NOT within 1 % (injected)": gap("W8A8 per-tensor minmax") > 1.0,
        "per-tensor W8A8 (histogram MSE) NOT within 1 % (injected)": gap("W8A8 per-tensor static") > 1.0,
    }
    print()
    print(f"{'variant':<28} {'original ppl':>13} {'Δ %':>8} {'injected ppl':>13} {'Δ %':>8}")
    for name in variants(model, calib):
        o, i = by[("original", name)], by[("injected", name)]
        cells = f"{o['perplexity']:13.3f} {o['delta_pct']:+8.2f} {i['perplexity']:13.3f} {i['delta_pct']:+8.2f}"
        print(f"{name:<28} {cells}")
    print()
    for what, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {what}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "cpu": cpu,
                "isa_flags": [f for f, on in cpu["flags"].items() if on],
                "torch": torch.__version__,
                "threads": args.threads,
                "injection": info,
                "max_windows": args.max_windows,
                "calibration_windows": args.calib,
                "float_drift": drift,
                "rows": rows,
                "checks": checks,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
