"""Where OpenVINO spends the time, per op, for bf16, NNCF int8 and quantpilot's int8 placements.

For each variant the CPU plugin compiles the graph with `PERF_COUNT`, runs the benchmark batch
(MiniLM 32 x 128 tokens, EfficientNet-Lite0 16 x 224²) a few times, and prints:

* the time per (layer type, kernel) group from `get_profiling_info()`, largest first, with its share
  of the total; the kernel name (`exec_type`, e.g. `brgemm_avx512_amx_I8`, `jit_avx512_f32`,
  `ref_any_f32`) says which ISA path and precision ran;
* how many compute nodes (FullyConnected/MatMul/Convolution/GroupConvolution) ran in each runtime
  precision (`runtimePrecision` of the runtime model's rt_info).

The IRs are kept under `bench-out/profile/run-*/` so NNCF's FakeQuantize placement can be read.

Run: .venv/bin/python benchmarks/profile_openvino.py [--models minilm,efficientnet] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quantpilot as qp  # noqa: E402
from quantpilot.machine import cpu_header  # noqa: E402
from quantpilot.models import load  # noqa: E402

COMPUTE = ("FullyConnected", "MatMul", "Convolution", "GroupConvolution")


def compile_profiled(model: Any, hint: str, threads: int):
    """An OpenVINO CPU compiled model with per-node counters on.

    Example:
        >>> compile_profiled.__name__
        'compile_profiled'
    """
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(model)) if isinstance(model, str | Path) else model
    config = {
        "INFERENCE_PRECISION_HINT": hint,
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "PERF_COUNT": True,
    }
    return core.compile_model(model, "CPU", config)


def profile(compiled, feeds: dict[str, np.ndarray], iters: int = 5) -> dict[str, Any]:
    """Per-(layer type, kernel) time of the median call, and compute-node counts per precision.

    Example:
        >>> profile.__name__
        'profile'
    """
    request = compiled.create_infer_request()
    runs = []
    for _ in range(iters + 1):
        request.infer(feeds)
        info = request.get_profiling_info()
        runs.append({(p.node_name, p.node_type, p.exec_type): p.real_time.total_seconds() for p in info})
    runs = runs[1:]  # the first call pays for allocation
    totals = [sum(r.values()) for r in runs]
    median = runs[int(np.argsort(totals)[len(totals) // 2])]
    groups: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for (_, node_type, exec_type), seconds in median.items():
        if exec_type in ("undef", "unknown_i32", "unknown_f32") or seconds == 0:
            continue
        groups[(node_type, exec_type)][0] += seconds
        groups[(node_type, exec_type)][1] += 1
    precisions: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        kind = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        if kind in COMPUTE:
            precision = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
            precisions[kind][precision] += 1
    counts = {k: dict(v) for k, v in precisions.items()}
    return {"total": sum(median.values()), "groups": dict(groups), "precisions": counts}


def show(name: str, result: dict[str, Any], top: int = 12) -> None:
    """Print one variant's profile.

    Example:
        >>> show("x", {"total": 1.0, "groups": {("MatMul", "brgemm_I8"): [0.5, 2]}, "precisions": {}})
        <BLANKLINE>
        == x: 1000.0 ms summed over nodes
           MatMul               brgemm_I8                        500.0 ms  50.0%  x2
    """
    total = result["total"]
    print(f"\n== {name}: {total * 1e3:.1f} ms summed over nodes")
    ranked = sorted(result["groups"].items(), key=lambda kv: -kv[1][0])
    for (node_type, exec_type), (seconds, count) in ranked[:top]:
        print(f"   {node_type:<20} {exec_type:<30} {seconds * 1e3:>7.1f} ms {100 * seconds / total:>5.1f}%  x{count}")
    for kind, counts in result["precisions"].items():
        print(f"   compute {kind}: " + ", ".join(f"{p} {n}" for p, n in sorted(counts.items())))


def _calibrated(model, recipe, batches, call) -> Any:
    qmodel = qp.quantize(model, recipe)
    with qp.calibrate(qmodel, progress=False):
        for batch in batches:
            call(qmodel, batch)
    return qp.freeze(qmodel)


def minilm_variants(workdir: Path, n_calib: int, recipes: dict) -> tuple[dict, dict]:
    """name -> (model or IR path, precision hint) for MiniLM, and the batch to feed.

    Example:
        >>> minilm_variants.__name__
        'minilm_variants'
    """
    import nncf
    from bench_engines import BATCH, TOKENS, nncf_quantize
    from engine_minilm_rows import minilm_example

    from quantpilot_testbed import datasets
    from quantpilot_testbed.sentence_embedding import token_batches

    model, tok = load("minilm")
    calib = [dict(b) for b in token_batches(tok, datasets.sentences("calibration")[:n_calib], BATCH, TOKENS)]
    example = minilm_example(tok)
    fp32 = qp.export_onnx(model, example, workdir / "minilm-fp32.onnx")
    items = [{k: v.numpy() for k, v in b.items()} for b in calib]
    import openvino as ov

    nncf_model = nncf_quantize(fp32, items, model_type=nncf.ModelType.TRANSFORMER)
    ov.save_model(nncf_model, str(workdir / "minilm-nncf.xml"))
    variants = {
        "OpenVINO bf16": (fp32, "bf16"),
        "NNCF int8 TRANSFORMER (bf16 hint)": (nncf_model, "bf16"),
        "NNCF int8 TRANSFORMER (f32 hint)": (nncf_model, "f32"),
    }
    for label, recipe in recipes.items():
        qmodel = _calibrated(model, recipe, calib, lambda m, b: m(**b))
        path = qp.export_onnx(qmodel, example, workdir / f"minilm-{label}.onnx")
        variants[f"qp {label} (f32 hint)"] = (path, "f32")
        variants[f"qp {label} (bf16 hint)"] = (path, "bf16")
    return variants, {k: v.numpy() for k, v in example.items()}


def efficientnet_variants(workdir: Path, n_calib: int, recipes: dict) -> tuple[dict, dict]:
    """name -> (model or IR path, precision hint) for EfficientNet-Lite0, and the batch to feed.

    Example:
        >>> efficientnet_variants.__name__
        'efficientnet_variants'
    """
    import openvino as ov
    from bench_engines import IMAGE_BATCH, nncf_quantize
    from PIL import Image

    from quantpilot_testbed.imagenet_samples import load_samples, split_calibration

    model, prep = load("efficientnet-lite0")
    calib, evaluation = split_calibration(*load_samples())
    calib_x = torch.cat([prep(Image.open(p)) for p in calib.paths[:n_calib]])
    example = torch.cat([prep(Image.open(p)) for p in evaluation.paths[:IMAGE_BATCH]])
    fp32 = qp.export_onnx(model, example, workdir / "effnet-fp32.onnx")
    items = [calib_x[i : i + IMAGE_BATCH].numpy() for i in range(0, len(calib_x), IMAGE_BATCH)]
    nncf_model = nncf_quantize(fp32, items)
    ov.save_model(nncf_model, str(workdir / "effnet-nncf.xml"))
    variants = {
        "OpenVINO bf16": (fp32, "bf16"),
        "NNCF int8 default (bf16 hint)": (nncf_model, "bf16"),
        "NNCF int8 default (f32 hint)": (nncf_model, "f32"),
    }
    folded = qp.fold_batchnorm(model)
    batches = [calib_x[i : i + IMAGE_BATCH] for i in range(0, len(calib_x), IMAGE_BATCH)]
    for label, recipe in recipes.items():
        qmodel = _calibrated(folded, recipe, batches, lambda m, b: m(b))
        path = qp.export_onnx(qmodel, example, workdir / f"effnet-{label}.onnx")
        variants[f"qp {label} (f32 hint)"] = (path, "f32")
        variants[f"qp {label} (bf16 hint)"] = (path, "bf16")
    return variants, {"input": example.numpy()}


def _feeds(compiled, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [p.get_any_name() for p in compiled.inputs]
    return {n: batch[n] for n in names} if all(n in batch for n in names) else {names[0]: next(iter(batch.values()))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,efficientnet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib", type=int, default=64, help="calibration sentences / photos")
    parser.add_argument("--out", default="bench-out/profile")
    args = parser.parse_args(argv)
    print(cpu_header())
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    # A folder of this run's own: quantpilot never overwrites a file, so a rerun must not meet the last one's.
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.out))
    print(f"IRs in {workdir}")
    from quantpilot.placement import placements_for

    for kind in args.models.split(","):
        recipes = dict(placements_for(kind, "openvino"))
        build = minilm_variants if kind == "minilm" else efficientnet_variants
        variants, batch = build(workdir, args.calib, recipes)
        for name, (model, hint) in variants.items():
            compiled = compile_profiled(model, hint, args.threads)
            show(f"{kind}: {name}", profile(compiled, _feeds(compiled, batch)))


if __name__ == "__main__":
    main()
