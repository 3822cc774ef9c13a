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
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules beside this script

from core_contestants import SPEC, contestants  # noqa: E402
from core_rows import agreement, measure, print_table, targets  # noqa: E402

from quantpilot import datasets  # noqa: E402
from quantpilot.machine import cpu_report  # noqa: E402

SHAPE = (32, 128, 384)
LAYER = "encoder.layer.1.intermediate.dense"
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: --repeats, --out, --threads."""
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
    return parser.parse_args(argv)


def print_header() -> tuple[dict, dict]:
    """Print the CPU, its ISA and the library versions; return (cpu, versions) for the report."""
    cpu = cpu_info()
    print("quantpilot bench-core: calibrators on one activation")
    print(f"CPU: {cpu['model']} | {cpu['cores']} cores | torch threads {torch.get_num_threads()}")
    print("ISA: " + " | ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in cpu["isa"].items()))
    import onnxruntime

    versions = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return cpu, versions


def describe_activation(x: torch.Tensor, what: str) -> float:
    """Print where the activation comes from and its statistics; return its kurtosis (the tail weight)."""
    flat = x.reshape(-1).double()
    kurtosis = float(((flat - flat.mean()) ** 4).mean() / flat.var() ** 2)
    print(f"activation: {what}")
    print(
        f"  shape {tuple(x.shape)}, min {x.min().item():.4f}, max {x.max().item():.4f}, "
        f"std {x.std().item():.4f}, kurtosis {kurtosis:.1f}"
    )
    return kurtosis


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table, agreement and targets, and write <out>/bench_core.json."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu, versions = print_header()
    load_before = os.getloadavg()[0]

    x, what = minilm_activation()
    kurtosis = describe_activation(x, what)
    slow = max(1, min(3, args.repeats))
    print(
        "scheme: int8 symmetric per tensor; times: median of "
        f"{args.repeats} interleaved runs of collect + compute (slow references: {slow} or 1)\n"
    )
    rows = measure(contestants(x, args.repeats, slow), x, args.repeats)
    print_table(rows)
    agreement_entries = agreement(rows)
    found = targets(rows, agreement_entries)
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
        "agreement": agreement_entries,
        "targets": found,
        "load_average": [load_before, load_after],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_core.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'bench_core.json'}")
    return report


if __name__ == "__main__":
    main()
