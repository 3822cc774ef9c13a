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

Run: make bench   (or .venv/bin/python benchmarks/bench_engines.py --help)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_torch_int8 import torch_ao_survives  # noqa: E402
from engine_targets import targets  # noqa: E402

import quantpilot as qp  # noqa: E402
from quantpilot.machine import cpu_header, cpu_report  # noqa: E402
from quantpilot.models import load  # noqa: E402
from quantpilot.placement import engine_options, has_amx, placements_for  # noqa: E402
from quantpilot.timing import interleaved_latency  # noqa: E402
from quantpilot_testbed import datasets  # noqa: E402
from quantpilot_testbed.sentence_embedding import mean_pool, token_batches  # noqa: E402

BATCH, TOKENS = 32, 128
IMAGE_BATCH = 16


class Row:
    """One variant: how to run a batch, how big it is on disk, or why it could not be built."""

    def __init__(self, name: str, run: Callable[[Any], Any] | None = None, size: int | None = None, error: str = ""):
        self.name, self.run, self.size, self.error = name, run, size, error


def _output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, list | tuple):
        return torch.as_tensor(out[0])
    return torch.as_tensor(np.asarray(out))


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _torch_size(model: torch.nn.Module, workdir: Path, name: str) -> int | None:
    path = workdir / f"{name}.pt"
    try:
        torch.save(model.state_dict(), path)
    except Exception:  # noqa: BLE001 (a peer's tensor subclass that does not serialise: size unknown)
        return None
    return path.stat().st_size


def _attempt(name: str, build: Callable[[], Row]) -> Row:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peers' deprecation notices, not results
            return build()
    except Exception as err:  # noqa: BLE001 (any failure of a peer is a row, not a crash)
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        return Row(name, error=f"failed: {last[:160]}")


def _ov_ir_size(model) -> tuple[str, int]:
    import openvino as ov

    folder = Path(tempfile.mkdtemp(prefix="qp-bench-ov-"))
    ov.save_model(model, str(folder / "model.xml"))
    return str(folder / "model.xml"), _dir_size(folder)


def _nncf_quantize(onnx_path: Path, items: list[dict[str, np.ndarray]], **options) -> Any:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), **options)


def _ort_runner(path: Path, threads: int) -> Callable[[Any], Any]:
    runner = qp.engines.compile(path, engine="onnxruntime", threads=threads)
    return runner.run


def _ov_runner(model_or_path: Any, threads: int, dtype: str = "float32") -> Callable[[Any], Any]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(model_or_path)) if isinstance(model_or_path, str | Path) else model_or_path
    config = {"INFERENCE_PRECISION_HINT": "f32" if dtype == "float32" else "bf16", "INFERENCE_NUM_THREADS": threads}
    config["PERFORMANCE_HINT"] = "LATENCY"
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    names = [p.get_any_name() for p in compiled.inputs]

    def run(batch: Any) -> torch.Tensor:
        feeds = {n: batch[n].numpy() for n in names} if isinstance(batch, dict) else {names[0]: batch.numpy()}
        return torch.from_numpy(np.array(request.infer(feeds)[compiled.outputs[0]]))

    return run


# Row-name suffix for OpenVINO runs whose float ops run in bf16 (INFERENCE_PRECISION_HINT=bf16): on a
# CPU with AMX that is how every int8 model should run; elsewhere the suffix is empty and unused.
BF16_FLOAT_OPS = " (bf16 float ops)" if has_amx() else ""


def placement_row_name(name: str, dtype: str = "bfloat16") -> str:
    """The table's name for a `quantpilot.placement` candidate run on OpenVINO, its float ops in `dtype`.

    Example:
        >>> placement_row_name("int8-matmul", "float32")
        'qp placement int8-matmul on OpenVINO'
    """
    return f"qp placement {name} on OpenVINO{BF16_FLOAT_OPS if dtype == 'bfloat16' else ''}"


def _placement_rows(kind: str, model, example, calibrated, threads: int, workdir: Path) -> list[Row]:
    """Rows per `placements_for(kind, "openvino")` candidate: with `engine_options` (bf16 float ops on AMX) and,
    where that is bf16, with f32 float ops too (the autopilot times both: EfficientNet int8-u8 kept FP32's top-1
    with f32 float ops at the same speed, and lost 2 photos with bf16 ones)."""
    dtypes = dict.fromkeys([engine_options("openvino").get("dtype", "float32"), "float32"])
    rows = []
    for name, recipe in placements_for(kind, "openvino", model=model):
        path: list[Path] = []

        def build(dtype: str, name=name, recipe=recipe, path=path) -> Row:
            if not path:
                path.append(qp.export_onnx(calibrated(recipe), example, workdir / f"{kind}-placement-{name}.onnx"))
            return Row(placement_row_name(name, dtype), _ov_runner(path[0], threads, dtype), _dir_size(path[0]))

        rows += [_attempt(placement_row_name(name, d), lambda d=d, b=build: b(d)) for d in dtypes]
    return rows


# ---------------------------------------------------------------------------------------------- MiniLM


def minilm_rows(model, tok, threads: int, workdir: Path) -> tuple[list[Row], dict]:
    calibration = [dict(b) for b in token_batches(tok, datasets.sentences("calibration"), BATCH, TOKENS)]
    example = dict(tok(datasets.sentences("eval")[:BATCH], padding="max_length", truncation=True,
                       max_length=TOKENS, return_tensors="pt"))
    fp32_onnx = qp.export_onnx(model, example, workdir / "minilm-fp32.onnx")
    rows = [
        Row("FP32 eager", qp.engines.compile(model, "torch").run, _torch_size(model, workdir, "fp32")),
        Row("bf16 eager", qp.engines.compile(model, "torch", dtype="bfloat16").run, _dir_size(fp32_onnx) // 2),
    ]

    def torch_ao() -> Row:
        problem = torch_ao_survives(threads)
        if problem is not None:
            return Row("torch.ao quantize_dynamic", error=problem)
        ao = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        return Row("torch.ao quantize_dynamic", qp.engines.compile(ao, "torch").run, _torch_size(ao, workdir, "ao"))

    def torchao_dynamic() -> Row:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantized = copy.deepcopy(model)
        quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
        quantized(**example)  # fail here, not in the timing loop
        return Row("torchao int8 dynamic", qp.engines.compile(quantized, "torch").run,
                   _torch_size(quantized, workdir, "torchao"))

    def ort_dynamic() -> Row:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = workdir / "minilm-ort-dynamic.onnx"
        quantize_dynamic(str(fp32_onnx), str(out), weight_type=QuantType.QInt8)
        return Row("ORT quantize_dynamic", _ort_runner(out, threads), _dir_size(out))

    def ort_static() -> Row:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter([{k: v.numpy() for k, v in b.items()} for b in calibration])

            def get_next(self):
                return next(self.items, None)

        out = workdir / "minilm-ort-static.onnx"
        quantize_static(str(fp32_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
        return Row("ORT quantize_static (QDQ, per-channel)", _ort_runner(out, threads), _dir_size(out))

    def nncf_row(name: str, dtype: str = "float32", **options) -> Row:
        items = [{k: v.numpy() for k, v in b.items()} for b in calibration]
        xml, size = _ov_ir_size(_nncf_quantize(fp32_onnx, items, **options))
        return Row(name, _ov_runner(xml, threads, dtype), size)

    def qp_static(ops: tuple[str, ...], recipe: qp.Recipe | None = None) -> Any:
        qmodel = qp.quantize(model, recipe or qp.Recipe.preset("int8-static").replace(ops=ops))
        with qp.calibrate(qmodel, progress=False):
            for batch in calibration:
                qmodel(**batch)
        return qp.freeze(qmodel)

    import nncf

    rows.append(_attempt("torch.ao quantize_dynamic", torch_ao))
    rows.append(_attempt("torchao int8 dynamic", torchao_dynamic))
    rows.append(Row("ORT FP32", _ort_runner(fp32_onnx, threads), _dir_size(fp32_onnx)))
    rows.append(_attempt("ORT quantize_dynamic", ort_dynamic))
    rows.append(_attempt("ORT quantize_static (QDQ, per-channel)", ort_static))
    rows.append(Row("OpenVINO FP32", _ov_runner(fp32_onnx, threads), _dir_size(fp32_onnx)))
    rows.append(Row("OpenVINO bf16", _ov_runner(fp32_onnx, threads, "bfloat16"), _dir_size(fp32_onnx)))
    rows.append(_attempt("NNCF int8 default preset", lambda: nncf_row("NNCF int8 default preset")))
    rows.append(_attempt("NNCF int8 TRANSFORMER", lambda: nncf_row(
        "NNCF int8 TRANSFORMER", model_type=nncf.ModelType.TRANSFORMER)))
    if BF16_FLOAT_OPS:  # NNCF's fair row on AMX: what stays float runs in bf16, as for our placements
        rows.append(_attempt(f"NNCF int8 TRANSFORMER{BF16_FLOAT_OPS}", lambda: nncf_row(
            f"NNCF int8 TRANSFORMER{BF16_FLOAT_OPS}", dtype="bfloat16", model_type=nncf.ModelType.TRANSFORMER)))

    layers_only, with_matmul = qp_static(()), qp_static(("matmul",))
    for label, qmodel in (("int8-static", layers_only), ("int8-static+matmul", with_matmul)):
        path = qp.export_onnx(qmodel, example, workdir / f"minilm-qp-{label}.onnx")
        rows.append(Row(f"qp {label} on OpenVINO", _ov_runner(path, threads), _dir_size(path)))
        rows.append(Row(f"qp {label} on ORT", _ort_runner(path, threads), _dir_size(path)))
    rows += _placement_rows("transformer", model, example, lambda r: qp_static((), r), threads, workdir)
    # SmoothQuant is a placement now (int8-smooth: alpha 0.8 with min-max ranges, its float rest in bf16 on AMX).
    dynamic = qp.freeze(qp.quantize(model, "int8-dynamic"))
    int8_dir = workdir / "qp-int8-dynamic"
    qp.save(dynamic, int8_dir)
    int8_runner = qp.engines.compile(dynamic, "torch-int8")
    rows.append(Row("qp int8-dynamic on torch-int8", int8_runner.run, _dir_size(int8_dir)))
    int8_static_dir = workdir / "qp-int8-static"
    qp.save(layers_only, int8_static_dir)
    rows.append(Row("qp int8-static on torch-int8", qp.engines.compile(layers_only, "torch-int8").run,
                    _dir_size(int8_static_dir)))
    return rows, example


def embedding_cosines(rows: list[Row], tok, reference_name: str = "FP32 eager") -> dict[str, float]:
    """Mean cosine of each row's mean-pooled embeddings with FP32's, on the held-out sentences."""
    batches = [dict(b) for b in token_batches(tok, datasets.sentences("eval"), BATCH, TOKENS)]

    def embed(run) -> torch.Tensor:
        with torch.inference_mode():
            vectors = [mean_pool(_output(run(b)).float(), b["attention_mask"]) for b in batches]
        return torch.nn.functional.normalize(torch.cat(vectors), dim=1)

    runs = {r.name: r.run for r in rows if r.run is not None}
    reference = embed(runs[reference_name])
    return {name: float((embed(run) * reference).sum(dim=1).mean()) for name, run in runs.items()}


# ---------------------------------------------------------------------------------------------- EfficientNet


def efficientnet_rows(threads: int, workdir: Path) -> tuple[list[Row], torch.Tensor, dict]:
    from PIL import Image

    from quantpilot_testbed.imagenet_samples import load_samples, split_calibration

    model, prep = load("efficientnet-lite0")
    calib, evaluation = split_calibration(*load_samples())
    images = lambda paths: torch.cat([prep(Image.open(p)) for p in paths])  # noqa: E731
    calib_x, eval_x = images(calib.paths), images(evaluation.paths)
    example = eval_x[:IMAGE_BATCH]
    fp32_onnx = qp.export_onnx(model, example, workdir / "effnet-fp32.onnx")
    rows = [
        Row("FP32 eager", qp.engines.compile(model, "torch").run, _torch_size(model, workdir, "effnet")),
        Row("bf16 eager", qp.engines.compile(model, "torch", dtype="bfloat16").run, _dir_size(fp32_onnx) // 2),
        Row("ORT FP32", _ort_runner(fp32_onnx, threads), _dir_size(fp32_onnx)),
        Row("OpenVINO FP32", _ov_runner(fp32_onnx, threads), _dir_size(fp32_onnx)),
        Row("OpenVINO bf16", _ov_runner(fp32_onnx, threads, "bfloat16"), _dir_size(fp32_onnx)),
    ]

    nncf_ir: list = []  # quantized once, run with both precision hints

    def nncf_row(dtype: str = "float32") -> Row:
        if not nncf_ir:
            items = [calib_x[i : i + IMAGE_BATCH].numpy() for i in range(0, len(calib_x), IMAGE_BATCH)]
            nncf_ir.append(_ov_ir_size(_nncf_quantize(fp32_onnx, items)))
        xml, size = nncf_ir[0]
        suffix = BF16_FLOAT_OPS if dtype == "bfloat16" else ""
        return Row(f"NNCF int8 default preset{suffix}", _ov_runner(xml, threads, dtype), size)

    rows.append(_attempt("NNCF int8 default preset", nncf_row))
    if BF16_FLOAT_OPS:
        rows.append(_attempt(f"NNCF int8 default preset{BF16_FLOAT_OPS}", lambda: nncf_row("bfloat16")))
    folded = qp.fold_batchnorm(model)

    def calibrated(recipe: qp.Recipe) -> Any:
        qmodel = qp.quantize(folded, recipe)
        with qp.calibrate(qmodel, progress=False):
            for i in range(0, len(calib_x), IMAGE_BATCH):
                qmodel(calib_x[i : i + IMAGE_BATCH])
        return qp.freeze(qmodel)

    rows += _placement_rows("cnn", folded, example, calibrated, threads, workdir)
    for label, recipe in (
        ("int8-static", qp.Recipe.preset("int8-static")),
        ("int8-static+add", qp.Recipe.preset("int8-static").replace(ops=("add",))),
    ):
        qmodel = qp.quantize(folded, recipe)
        with qp.calibrate(qmodel, progress=False):
            for i in range(0, len(calib_x), IMAGE_BATCH):
                qmodel(calib_x[i : i + IMAGE_BATCH])
        qp.freeze(qmodel)
        path = qp.export_onnx(qmodel, example, workdir / f"effnet-qp-{label}.onnx")
        rows.append(Row(f"qp {label} on OpenVINO", _ov_runner(path, threads), _dir_size(path)))
        rows.append(Row(f"qp {label} on ORT", _ort_runner(path, threads), _dir_size(path)))
    return rows, example, {"eval_x": eval_x, "labels": torch.tensor(evaluation.labels)}


def top1(rows: list[Row], data: dict) -> dict[str, float]:
    """Top-1 accuracy of every row on the evaluation photos."""
    out = {}
    for row in rows:
        if row.run is None:
            continue
        with torch.inference_mode():
            logits = torch.cat([_output(row.run(data["eval_x"][i : i + IMAGE_BATCH])).float()
                                for i in range(0, len(data["eval_x"]), IMAGE_BATCH)])
        out[row.name] = float((logits.argmax(dim=1) == data["labels"]).float().mean())
    return out


# ---------------------------------------------------------------------------------------------- report


def table(title: str, rows: list[Row], example: Any, metric: dict[str, float], metric_name: str, args) -> dict:
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
        out.append({"variant": row.name, "median_s": latency[row.name], "speedup_vs_fp32": speed,
                    metric_name: metric[row.name], "size_bytes": row.size})
    return {"title": title, "rows": out, "latency": latency}


def main(argv: list[str] | None = None) -> dict:
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
    result = {"cpu": cpu, "minilm": minilm, "efficientnet": effnet,
              "targets": targets(minilm, cos, effnet, accuracy, cpu), "load_average_end": os.getloadavg()[0]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
