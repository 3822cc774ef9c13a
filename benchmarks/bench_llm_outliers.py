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
* SmoothQuant W8A8 (alpha 0.5) with per-tensor static and with per-token dynamic activations;
* weight-only W4 g128: RTN, AWQ, GPTQ, GPTQ with act-order (the injected channels' weight columns
  shrink by the factor, the salient-weight case AWQ targets).

Every row also reports the mean per-token KL divergence of its next-token distribution from the
float model's (first --kl-windows windows), which shows how far a method moved the model even where
perplexity does not (W4 noise can leave perplexity unchanged or even lower it).

Targets on the injected model: LLM.int8() and SmoothQuant within 1 % of FP32 perplexity, per-tensor
static W8A8 not; AWQ and GPTQ closing at least half of RTN's gap (perplexity where RTN has a gap,
and KL). Every row's perplexity is a pure function of the model and data (no timing), so
the contended CPU does not affect the numbers, only how long the run takes. Calibration: random
256-token windows of valid.txt (the testbed's training text); evaluation never sees them.

Results also go to bench-out/bench_llm_outliers.json.

Run: .venv/bin/python benchmarks/bench_llm_outliers.py [--max-windows 100 (0: all 256-token windows)] [--factor 100]
[--channels 4] [--calib 32] [--weight-calib 128] [--kl-windows 40]. The defaults keep the run to minutes on a
shared 2-core machine.
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
from quantpilot_testbed.language_model import (  # noqa: E402
    calibration_batches,
    kl_to_reference,
    load_testbed,
    perplexity,
    wikitext_tokens,
)
from quantpilot_testbed.outlier_injection import inject_outlier_channels  # noqa: E402

WINDOW = 256  # the testbed context, as the GPTQ/AWQ papers evaluate (their models: 2048)
# The preset's per-tensor static activations (asymmetric, range from the histogram with the lowest MSE) on
# every Linear / Conv1D but the head; and the same with plain min-max ranges, the papers' naive W8A8 baseline.
DECODER_W8A8 = qp.Recipe.preset("int8-static").replace(module_types=("Linear", "Conv1D"), skip=("lm_head",))
MINMAX = DECODER_W8A8.replace(activation_calibrator={"kind": "minmax"})


def per_tensor_w8a8(model: torch.nn.Module, calib: list[dict], recipe: qp.Recipe) -> torch.nn.Module:
    """`model` quantized with `recipe`, calibrated on `calib` and frozen (the static W8A8 rows)."""
    qmodel = qp.quantize(model, recipe)
    with qp.calibrate(qmodel):
        for batch in calib:
            qmodel(**batch)
    return qp.freeze(qmodel)


def variants(model: torch.nn.Module, calib: list[dict], weight_calib: list[dict]) -> dict[str, Any]:
    """Builders of every row, called one at a time so only one quantized copy is alive."""
    algorithms = qp.algorithms
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
        # Weight-only W4 g128: the injected channels' weight columns are 1/FACTOR as large, so
        # round-to-nearest flattens them, which is the salient-weight case AWQ and GPTQ were built for.
        "RTN W4 g128": lambda: algorithms.rtn(model, bits=4, group_size=128),
        "AWQ W4 g128": lambda: algorithms.awq(model, weight_calib, bits=4, group_size=128),
        "GPTQ W4 g128": lambda: algorithms.gptq(model, weight_calib, bits=4, group_size=128),
        "GPTQ W4 g128 act-order": lambda: algorithms.gptq(model, weight_calib, bits=4, group_size=128, act_order=True),
    }


def measure(
    label: str, model: torch.nn.Module, calib: list[dict], weight_calib: list[dict], tokens: torch.Tensor, args
) -> list[dict]:
    """Build, score (perplexity, KL to `model`) and print every variant of one model, FP32 first."""
    rows, fp32 = [], None
    max_windows = args.max_windows
    for name, build in variants(model, calib, weight_calib).items():
        start = time.perf_counter()
        qmodel = build()
        built = time.perf_counter() - start
        if name.startswith("LLM.int8"):
            qp.algorithms.reset_outlier_stats(qmodel)
        ppl = perplexity(qmodel, tokens, window=WINDOW, max_windows=max_windows)
        # Read before the KL pass runs more tokens through the layers.
        frac = qp.algorithms.outlier_fraction(qmodel) if name.startswith("LLM.int8") else None
        kl = 0.0
        if qmodel is not model:
            kl = kl_to_reference(qmodel, model, tokens, window=WINDOW, max_windows=args.kl_windows)
        fp32 = ppl if fp32 is None else fp32
        row = {
            "model": label,
            "variant": name,
            "perplexity": ppl,
            "delta_pct": 100.0 * (ppl / fp32 - 1.0),
            "kl_to_fp32": kl,
            "outlier_fraction": frac,
            "build_s": built,
        }
        rows.append(row)
        frac = "" if frac is None else f"  float columns {100 * frac:.2f} %"
        print(
            f"  {label:<9} {name:<28} ppl {ppl:9.3f}  {row['delta_pct']:+7.2f} %  KL {1e3 * kl:7.3f}e-3{frac}",
            flush=True,
        )
        del qmodel
    return rows


def parse_args() -> argparse.Namespace:
    """The command line; --max-windows 0 becomes None (every window)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-windows", type=int, default=100, help="first N test windows (0: all)")
    parser.add_argument("--factor", type=float, default=100.0, help="outlier channel multiplier (20-100)")
    parser.add_argument("--channels", type=int, default=4, help="how many hidden channels become outliers")
    parser.add_argument("--calib", type=int, default=32, help="calibration windows of 256 tokens (W8A8 rows)")
    parser.add_argument("--weight-calib", type=int, default=128, help="calibration windows for AWQ and GPTQ")
    parser.add_argument("--kl-windows", type=int, default=40, help="test windows for the KL-to-FP32 column")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench-out/bench_llm_outliers.json")
    args = parser.parse_args()
    args.max_windows = args.max_windows or None
    return args


def injected_model(model: torch.nn.Module, calib: list[dict], args) -> tuple[torch.nn.Module, float]:
    """The model with outlier channels injected, and the max |logit difference| it shows (printed: ~0)."""
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
    return injected, drift


def checks(by: dict[tuple[str, str], dict]) -> dict[str, bool]:
    """The targets: outlier methods within 1 % on the injected model, per-tensor W8A8 not, W4 methods vs RTN."""

    def gap(name: str) -> float:
        return abs(by[("injected", name)]["delta_pct"])

    found = {
        "LLM.int8() within 1 % of FP32 (injected)": gap("LLM.int8() t=6.0") <= 1.0,
        "SmoothQuant static within 1 % of FP32 (injected)": gap("SmoothQuant a=0.5 static") <= 1.0,
        "SmoothQuant dynamic within 1 % of FP32 (injected)": gap("SmoothQuant a=0.5 dynamic") <= 1.0,
        "per-tensor W8A8 (minmax) NOT within 1 % (injected)": gap("W8A8 per-tensor minmax") > 1.0,
        "per-tensor W8A8 (histogram MSE) NOT within 1 % (injected)": gap("W8A8 per-tensor static") > 1.0,
    }

    def closes_half(model_label: str, method: str, key: str) -> bool:
        rtn, other = by[(model_label, "RTN W4 g128")][key], by[(model_label, method)][key]
        return rtn > 0 and other <= rtn / 2

    for label in ("original", "injected"):
        for method in ("AWQ W4 g128", "GPTQ W4 g128", "GPTQ W4 g128 act-order"):
            # Perplexity gap: only meaningful where RTN has one (it can be <= 0 when W4 noise is harmless).
            rtn_gap = by[(label, "RTN W4 g128")]["delta_pct"]
            if rtn_gap > 0:
                found[f"{method} closes >= half of RTN's perplexity gap ({label})"] = closes_half(
                    label, method, "delta_pct"
                )
            found[f"{method} closes >= half of RTN's KL to FP32 ({label})"] = closes_half(label, method, "kl_to_fp32")
    return found


def print_table(by: dict[tuple[str, str], dict], names) -> None:
    """One line per variant: perplexity, its change and KL to FP32, on the original and the injected model."""
    print()
    print(
        f"{'variant':<28} {'original ppl':>13} {'Δ %':>8} {'KL·1e3':>8} {'injected ppl':>13} {'Δ %':>8} {'KL·1e3':>8}"
    )
    for name in names:
        o, i = by[("original", name)], by[("injected", name)]
        cells = (
            f"{o['perplexity']:13.3f} {o['delta_pct']:+8.2f} {1e3 * o['kl_to_fp32']:8.3f} "
            f"{i['perplexity']:13.3f} {i['delta_pct']:+8.2f} {1e3 * i['kl_to_fp32']:8.3f}"
        )
        print(f"{name:<28} {cells}")


def main() -> None:
    """Measure every variant on the original and the injected testbed, print the table and targets, write JSON."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    cpu = cpu_report()
    print(cpu_header(cpu))
    print(f"{args.threads} threads (shared machine: perplexities are exact, build times are not)")

    model, tokenizer = load_testbed()
    tokens = wikitext_tokens("test", tokenizer)
    calib = calibration_batches(tokenizer, n=args.calib, seq_len=256, seed=0)
    injected, drift = injected_model(model, calib, args)

    weight_calib = calibration_batches(tokenizer, n=args.weight_calib, seq_len=256, seed=0)
    rows = measure("original", model, calib, weight_calib, tokens, args)
    rows += measure("injected", injected, calib, weight_calib, tokens, args)

    by = {(r["model"], r["variant"]): r for r in rows}
    found = checks(by)
    print_table(by, variants(model, calib, weight_calib))
    print()
    for what, ok in found.items():
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
                "injection": injected.quantpilot_outliers,
                "max_windows": args.max_windows,
                "calibration_windows": args.calib,
                "weight_calibration_windows": args.weight_calib,
                "float_drift": drift,
                "rows": rows,
                "checks": found,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
