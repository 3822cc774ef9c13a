"""bench-qat: what quantization-aware training recovers on the digits CNN, and what it costs.

For W8A8, W4A8 and W4A4 (int8 / int4 symmetric per-channel weights, asymmetric per-tensor
activations with the default histogram-MSE range) this measures, in one run:

* FP32 test accuracy of the digits CNN trained with its original schedule (30 epochs, SGD);
* PTQ accuracy: BatchNorm folded into the convolutions (as every deployment does), calibrated on
  512 training images, frozen;
* QAT accuracy: the calibrated PTQ model prepared with learned ranges (LSQ; weight scales start
  from the per-channel range with the least squared quantization error, `--weight-init mse`,
  the best-calibrated start the rules of thumb ask for) and fine-tuned with
  the rules-of-thumb schedule `adapt_schedule(original)` (10 % of the epochs, 1 % of the LR,
  cosine with warm-up, SGD + momentum, half the batch size), then frozen, no re-calibration;
* QAT wall time as a fraction of the original training's wall time (medians over seeds x `--repeats`);
* for schemes with an ONNX QDQ form (int8), the frozen QAT model exported with
  `quantpilot.export_onnx` and run on ONNX Runtime: its accuracy must equal the PyTorch one.

Every number is given per seed (`--seeds`: the float model's initial weights and both batch
orders) and as the mean over seeds: on 450 test images one image is 0.22 points, so one seed
cannot tell a 1-point target from noise.

The CPU is shared with other work while this runs: times are medians, and the ratio is the number
to quote. Results also go to bench-out/bench_qat.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import quantpilot as qp  # noqa: E402
from quantpilot.machine import cpu_header, cpu_report  # noqa: E402
from quantpilot.transforms import fold_batchnorm  # noqa: E402
from quantpilot_testbed.digits_cnn import TRAINING_SCHEDULE, accuracy, digits_splits, train_digits_cnn  # noqa: E402

SCHEMES = {"W8A8": (8, 8), "W4A8": (4, 8), "W4A4": (4, 4)}
CALIBRATION_IMAGES = 512


def recipe(weight_bits: int, activation_bits: int) -> qp.Recipe:
    """Symmetric per-channel weights, asymmetric per-tensor activations at the given bit widths.

    Example:
        >>> recipe(4, 8).name
        'w4a8'
    """
    return qp.Recipe(
        weights=qp.QuantSpec(f"int{weight_bits}", symmetric=True, narrow_range=True, granularity=qp.PerChannel(0)),
        activations=qp.QuantSpec(f"int{activation_bits}", symmetric=False, granularity=qp.PerTensor()),
        name=f"w{weight_bits}a{activation_bits}",
    )


def shuffled_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0) -> list:
    """(x, y) batches in a seeded random order: the QAT batch order of one seed.

    Example:
        >>> [len(b[1]) for b in shuffled_batches(torch.zeros(5, 1), torch.zeros(5), 2)]
        [2, 2, 1]
    """
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i : i + batch_size]], y[order[i : i + batch_size]]) for i in range(0, len(y), batch_size)]


def ort_accuracy(frozen: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Accuracy of the model exported as QDQ ONNX and run by ONNX Runtime (None: no export available)."""
    export = getattr(qp, "export_onnx", None)
    if export is None:
        from quantpilot.export import export_onnx as export
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = export(frozen, (x[:2],), Path(tmp) / "qat.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        logits = session.run(None, {name: x.numpy()})[0]
    return float((np.argmax(logits, axis=1) == y.numpy()).mean())


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[int]]:
    """The command line, checked: (args, seeds)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of training and of each QAT per seed")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (model init and batch orders)")
    parser.add_argument(
        "--weight-init", default="mse", choices=qp.qat.learned_scale.WEIGHT_INITS, help="start of learned weight scales"
    )
    parser.add_argument("--width", type=int, default=16, help="channel width of the digits CNN (4: a fragile model)")
    # The digits CNN's ops are too small to gain from splitting across threads; one thread also
    # keeps the timings steadier on a shared CPU.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default="bench-out/bench_qat.json")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    return args, seeds


def scheme_row(folded: torch.nn.Module, bits: tuple[int, int], run: SimpleNamespace) -> tuple[dict, list]:
    """PTQ and QAT of one scheme on the folded float model: (accuracies of the row, QAT seconds per repeat)."""
    splits, args = run.splits, run.args
    qmodel = qp.quantize(folded, recipe(*bits))
    with qp.calibrate(qmodel):
        for chunk in run.calibration.split(64):
            qmodel(chunk)
    ptq = accuracy(qp.freeze(copy.deepcopy(qmodel)), splits.test_x, splits.test_y)
    qat_model, qat_times = None, []
    for _ in range(args.repeats):
        qat_model = qp.qat.prepare(qmodel, learn_ranges=True, weight_init=args.weight_init)
        start = time.perf_counter()
        qp.qat.finetune(qat_model, run.batches, F.cross_entropy, run.schedule, progress=False)
        qat_times.append(time.perf_counter() - start)
    qp.freeze(qat_model.eval())
    qat = accuracy(qat_model, splits.test_x, splits.test_y)
    ort = ort_accuracy(qat_model, splits.test_x, splits.test_y) if bits == (8, 8) else None
    return {"ptq_accuracy": ptq, "qat_accuracy": qat, "qat_onnxruntime_accuracy": ort}, qat_times


def seed_rows(seed: int, run: SimpleNamespace, train_times: list, qat_times: dict[str, list]) -> list[dict]:
    """Train the float model with `seed` (timed), then one row per scheme; times are appended to the lists."""
    splits = run.splits
    for _ in range(run.args.repeats):
        start = time.perf_counter()
        model = train_digits_cnn(splits, epochs=run.original.epochs, seed=seed, width=run.args.width)
        train_times.append(time.perf_counter() - start)
    fp32 = accuracy(model, splits.test_x, splits.test_y)
    folded = fold_batchnorm(model)
    run.batches = shuffled_batches(splits.train_x, splits.train_y, run.schedule.batch_size, seed=seed)
    rows = []
    for name, bits in SCHEMES.items():
        scores, times = scheme_row(folded, bits, run)
        qat_times[name] += times
        ptq, qat = scores["ptq_accuracy"], scores["qat_accuracy"]
        rows.append(
            {
                "seed": seed,
                "scheme": name,
                "fp32_accuracy": fp32,
                "ptq_accuracy": ptq,
                "qat_accuracy": qat,
                "qat_onnxruntime_accuracy": scores["qat_onnxruntime_accuracy"],
                "ptq_loss_points": 100 * (fp32 - ptq),
                "qat_loss_points": 100 * (fp32 - qat),
            }
        )
    return rows


def mean_rows(rows: list[dict], qat_times: dict[str, list], train_time: float) -> list[dict]:
    """Per scheme, the mean over seeds of every accuracy and drop, with the median QAT time and its share.

    Example:
        >>> row = {"seed": 0, "scheme": "W8A8", "fp32_accuracy": 1.0, "qat_onnxruntime_accuracy": None}
        >>> mean_rows([row], {"W8A8": [1.0]}, 4.0)[0]["qat_time_fraction"]
        0.25
    """
    means = []
    for name in qat_times:
        mine = [r for r in rows if r["scheme"] == name]
        numeric = [k for k in mine[0] if k not in ("seed", "scheme", "qat_onnxruntime_accuracy")]
        mean = {k: statistics.fmean(r[k] for r in mine) for k in numeric}
        ort_values = [r["qat_onnxruntime_accuracy"] for r in mine]
        mean["qat_onnxruntime_accuracy"] = None if None in ort_values else statistics.fmean(ort_values)
        qat_time = statistics.median(qat_times[name])
        means.append(
            {
                "seed": "mean",
                "scheme": name,
                **mean,
                "qat_seconds_median": qat_time,
                "qat_time_fraction": qat_time / train_time,
            }
        )
    return means


def print_table(rows: list[dict]) -> None:
    """The per-seed and mean rows: accuracies in %, drops in points, QAT time as a share of training's."""
    columns = ("FP32", "PTQ", "QAT", "QAT ORT", "PTQ drop", "QAT drop", "QAT time")
    print(f"{'seed':<5} {'scheme':<6} " + " ".join(f"{c:>9}" for c in columns))
    for r in rows:
        time_share = f"{100 * r['qat_time_fraction']:8.1f}%" if "qat_time_fraction" in r else f"{'':>9}"
        ort = "-" if r["qat_onnxruntime_accuracy"] is None else f"{100 * r['qat_onnxruntime_accuracy']:.2f}%"
        print(
            f"{r['seed']!s:<5} {r['scheme']:<6} {100 * r['fp32_accuracy']:8.2f}% {100 * r['ptq_accuracy']:8.2f}% "
            f"{100 * r['qat_accuracy']:8.2f}% {ort:>9} {r['ptq_loss_points']:7.2f}pt {r['qat_loss_points']:7.2f}pt "
            f"{time_share}"
        )
    print("(drops: accuracy points vs FP32; QAT time: share of the original training's; '-': no int4 QDQ in ONNX)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every seed and scheme, print the table and write the JSON report (`--out`)."""
    args, seeds = parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(args.threads)

    cpu = cpu_report()
    print(cpu_header(cpu))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    splits = digits_splits(seed=0)
    original = qp.qat.Schedule(**TRAINING_SCHEDULE)
    schedule = qp.qat.adapt_schedule(original)
    print(f"original schedule: {original}\nQAT schedule:      {schedule}")

    # What every seed shares; `seed_rows` adds the seed's batch order as `batches`.
    run = SimpleNamespace(
        args=args, splits=splits, original=original, schedule=schedule, calibration=splits.train_x[:CALIBRATION_IMAGES]
    )
    train_times, qat_times, rows = [], {name: [] for name in SCHEMES}, []
    for seed in seeds:
        rows += seed_rows(seed, run, train_times, qat_times)
    train_time = statistics.median(train_times)
    means = mean_rows(rows, qat_times, train_time)

    print(
        f"\ndigits CNN width {args.width}; test images: {len(splits.test_y)}; "
        f"seeds {seeds}; QAT weight scales start from: {args.weight_init}; "
        f"original training: {train_time:.2f} s (median of {len(train_times)})"
    )
    print_table(rows + means)
    result = {
        "cpu": cpu,
        "torch": torch.__version__,
        "repeats": args.repeats,
        "seeds": seeds,
        "weight_init": args.weight_init,
        "threads": args.threads,
        "width": args.width,
        "original_schedule": dataclasses.asdict(original),
        "qat_schedule": dataclasses.asdict(schedule),
        "train_seconds_median": train_time,
        "rows": rows,
        "means": means,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
