"""bench-engines' EfficientNet-Lite0 rows, and their top-1 on the evaluation photos.

Batch 16 x 224², top-1 on the 400 evaluation photos of ../shared/data/imagenet-samples (the other
100 calibrate). Rows: FP32/bf16 eager, ORT FP32, OpenVINO FP32/bf16, NNCF default int8, quantpilot's
placement candidates, and quantpilot int8-static (BN folded; with and without quantized residual adds)
on OpenVINO and ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from engine_runners import (
    BF16_FLOAT_OPS,
    Row,
    attempt_row,
    dir_size,
    first_output,
    nncf_quantize,
    ort_runner,
    ov_ir_size,
    ov_runner,
    placement_rows,
    torch_saved_size,
)

import quantpilot as qp
from quantpilot.models import load

IMAGE_BATCH = 16


def efficientnet_rows(threads: int, workdir: Path) -> tuple[list[Row], torch.Tensor, dict]:
    """Every EfficientNet-Lite0 row in table order, the example batch they are timed on, and the evaluation data."""
    from PIL import Image

    from quantpilot_testbed.imagenet_samples import load_samples, split_calibration

    model, prep = load("efficientnet-lite0")
    calib, evaluation = split_calibration(*load_samples())
    images = lambda paths: torch.cat([prep(Image.open(p)) for p in paths])  # noqa: E731
    calib_x, eval_x = images(calib.paths), images(evaluation.paths)
    example = eval_x[:IMAGE_BATCH]
    fp32_onnx = qp.export_onnx(model, example, workdir / "effnet-fp32.onnx")
    rows = [
        Row("FP32 eager", qp.engines.compile(model, "torch").run, torch_saved_size(model, workdir, "effnet")),
        Row("bf16 eager", qp.engines.compile(model, "torch", dtype="bfloat16").run, dir_size(fp32_onnx) // 2),
        Row("ORT FP32", ort_runner(fp32_onnx, threads), dir_size(fp32_onnx)),
        Row("OpenVINO FP32", ov_runner(fp32_onnx, threads), dir_size(fp32_onnx)),
        Row("OpenVINO bf16", ov_runner(fp32_onnx, threads, "bfloat16"), dir_size(fp32_onnx)),
    ]

    nncf_ir: list = []  # quantized once, run with both precision hints

    def nncf_row(dtype: str = "float32") -> Row:
        if not nncf_ir:
            items = [calib_x[i : i + IMAGE_BATCH].numpy() for i in range(0, len(calib_x), IMAGE_BATCH)]
            nncf_ir.append(ov_ir_size(nncf_quantize(fp32_onnx, items)))
        xml, size = nncf_ir[0]
        suffix = BF16_FLOAT_OPS if dtype == "bfloat16" else ""
        return Row(f"NNCF int8 default preset{suffix}", ov_runner(xml, threads, dtype), size)

    rows.append(attempt_row("NNCF int8 default preset", nncf_row))
    if BF16_FLOAT_OPS:
        rows.append(attempt_row(f"NNCF int8 default preset{BF16_FLOAT_OPS}", lambda: nncf_row("bfloat16")))
    folded = qp.fold_batchnorm(model)

    def calibrated(recipe: qp.Recipe) -> Any:
        qmodel = qp.quantize(folded, recipe)
        with qp.calibrate(qmodel, progress=False):
            for i in range(0, len(calib_x), IMAGE_BATCH):
                qmodel(calib_x[i : i + IMAGE_BATCH])
        return qp.freeze(qmodel)

    rows += placement_rows("cnn", folded, example, calibrated, threads, workdir)
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
        rows.append(Row(f"qp {label} on OpenVINO", ov_runner(path, threads), dir_size(path)))
        rows.append(Row(f"qp {label} on ORT", ort_runner(path, threads), dir_size(path)))
    return rows, example, {"eval_x": eval_x, "labels": torch.tensor(evaluation.labels)}


def top1(rows: list[Row], data: dict) -> dict[str, float]:
    """Top-1 accuracy of every row on the evaluation photos."""
    out = {}
    for row in rows:
        if row.run is None:
            continue
        with torch.inference_mode():
            logits = torch.cat(
                [
                    first_output(row.run(data["eval_x"][i : i + IMAGE_BATCH])).float()
                    for i in range(0, len(data["eval_x"]), IMAGE_BATCH)
                ]
            )
        out[row.name] = float((logits.argmax(dim=1) == data["labels"]).float().mean())
    return out
