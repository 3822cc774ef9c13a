"""The main job: post-training quantization of the bundled all-MiniLM-L6-v2, measured against FP32.

Runs dynamic int8, static int8 (calibrated on 200 bundled sentences) and static int8 after
SmoothQuant (alpha chosen on the calibration sentences, see SMOOTHQUANT_ALPHA), and prints, for each,
the cosine of sentence embeddings against FP32 on 160 held-out sentences, nearest-neighbour
retrieval agreement, size on disk, and latency against FP32 eager and bf16 eager. PyTorch's own
`quantize_dynamic` is measured in the same run as the peer a PyTorch user would try first.

The quantpilot rows run the fake-quantized (QDQ) PyTorch model: it shows accuracy and size; speed
comes from running the export on an integer engine (OpenVINO / ONNX Runtime), so the latency
column of those rows is not the deployed speed.

Run: python -m quantpilot_testbed.demos.ptq_minilm --out demo-out
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path

import torch

import quantpilot as qp
from quantpilot.evaluate import size_on_disk
from quantpilot.models import load as load_model
from quantpilot.timing import interleaved_latency
from quantpilot_testbed import datasets
from quantpilot_testbed.sentence_embedding import embed, retrieval_agreement, token_batches

__all__ = ["main", "run"]

RECIPES = ("int8-dynamic", "int8-static")
# Chosen by embedding cosine on the 200 *calibration* sentences among 0.5, 0.6, ..., 1.0
# (0.9899, 0.9957, 0.9967, 0.9973, 0.9966, 0.9970); held-out sentences are never used for a choice.
SMOOTHQUANT_ALPHA = 0.8


def _torch_ao_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def run(out_dir: Path | None = None, threads: int = 2, iters: int = 10) -> list[dict]:
    """Quantize MiniLM with every demo recipe and measure each against FP32 and bf16.

    Args:
        out_dir: where to save the static int8 model and the table as JSON (None: nothing saved).
        threads: torch intra-op threads for the latency measurement.
        iters: timed rounds per model.

    Returns:
        One dict per row of the table.
    """
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model, tokenizer = load_model("minilm")
    calib, held_out = datasets.sentences("calibration"), datasets.sentences("eval")
    reference = embed(model, tokenizer, held_out)
    probe = next(token_batches(tokenizer, held_out, batch_size=32))

    variants: dict[str, torch.nn.Module] = {"fp32 eager": model, "bf16 eager": copy.deepcopy(model).to(torch.bfloat16)}
    info: dict[str, dict] = {}
    try:
        variants["torch.ao quantize_dynamic"] = _torch_ao_dynamic(model)
    except Exception as err:  # a peer failing is a result to report, not a reason to stop
        info["torch.ao quantize_dynamic"] = {"error": f"{type(err).__name__}: {err}"}
    for recipe in RECIPES:
        start = time.perf_counter()
        qmodel = qp.quantize(model, recipe)
        if qp.Recipe.preset(recipe).activations is not None and not qp.Recipe.preset(recipe).dynamic:
            with qp.calibrate(qmodel):
                for batch in token_batches(tokenizer, calib, batch_size=32):
                    qmodel(**batch)
        qp.freeze(qmodel)
        info[f"quantpilot {recipe}"] = {"quantize_s": time.perf_counter() - start}
        variants[f"quantpilot {recipe}"] = qmodel

    start = time.perf_counter()
    batches = list(token_batches(tokenizer, calib, batch_size=32))
    smoothed = qp.algorithms.smoothquant(model, batches, alpha=SMOOTHQUANT_ALPHA, recipe="int8-static")
    name = f"quantpilot int8-static+SQ{SMOOTHQUANT_ALPHA}"
    info[name] = {"quantize_s": time.perf_counter() - start}
    variants[name] = smoothed
    if out_dir is not None:
        qp.save(smoothed, out_dir / "minilm-int8-static-smoothquant")

    with torch.no_grad():
        latency = interleaved_latency({n: (lambda m=m: m(**probe)) for n, m in variants.items()}, warmup=2, iters=iters)
    fp32_bytes = size_on_disk(model)
    rows = []
    for name, m in variants.items():
        emb = embed(m, tokenizer, held_out)
        cos = (emb * reference).sum(-1)
        try:
            size = size_on_disk(m)
        except Exception:  # torch.ao's packed modules cannot be written as safetensors
            size = None
        rows.append(
            {
                "mode": name,
                "cosine_mean": float(cos.mean()),
                "cosine_min": float(cos.min()),
                "retrieval_agreement": retrieval_agreement(reference, emb),
                "size_mib": None if size is None else size / 2**20,
                "size_ratio": None if size is None else fp32_bytes / size,
                "speed_vs_fp32": latency["fp32 eager"] / latency[name],
                "speed_vs_bf16": latency["bf16 eager"] / latency[name],
                **info.get(name, {}),
            }
        )
    for name, extra in info.items():
        if "error" in extra:
            rows.append({"mode": name, **extra})
    if out_dir is not None:
        (out_dir / "ptq_minilm.json").write_text(json.dumps(rows, indent=2))
    return rows


def format_table(rows: list[dict]) -> str:
    """The demo's table as text."""
    head = (
        f"{'mode':<32} {'cosine':>8} {'min cos':>8} {'NN agree':>8} {'size MiB':>9} {'smaller':>8} "
        f"{'x fp32':>7} {'x bf16':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['mode']:<32} failed: {r['error']}")
            continue
        size = "n/a" if r["size_mib"] is None else f"{r['size_mib']:.1f}"
        ratio = "n/a" if r["size_ratio"] is None else f"{r['size_ratio']:.2f}x"
        lines.append(
            f"{r['mode']:<32} {r['cosine_mean']:8.4f} {r['cosine_min']:8.4f} {r['retrieval_agreement']:8.3f} "
            f"{size:>9} {ratio:>8} {r['speed_vs_fp32']:6.2f}x {r['speed_vs_bf16']:6.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: `python -m quantpilot_testbed.demos.ptq_minilm --out DIR`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="directory for the saved model and JSON (new run dir)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)
    out_dir = None
    if args.out is not None:
        out_dir = args.out / time.strftime("ptq-%Y%m%d-%H%M%S")
        out_dir.mkdir(parents=True, exist_ok=False)
    start = time.perf_counter()
    rows = run(out_dir, threads=args.threads, iters=args.iters)
    print("all-MiniLM-L6-v2, 160 held-out sentences; calibration: 200 other sentences; batch 32 for latency")
    print(format_table(rows))
    print(
        "note: quantpilot rows run the fake-quantized PyTorch model (accuracy and size); "
        "integer speed comes from an engine (quantpilot export / OpenVINO / ONNX Runtime)."
    )
    if out_dir is not None:
        print(f"saved the SmoothQuant int8 model and the table under {out_dir}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
