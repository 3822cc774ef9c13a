"""bench-engines' MiniLM rows (all-MiniLM-L6-v2), and their embedding cosine with FP32.

Batch 32 held-out sentences padded to 128 tokens. Rows: FP32 eager, bf16 eager, torch.ao
quantize_dynamic, torchao int8 dynamic, ONNX Runtime FP32 / quantize_dynamic / quantize_static,
OpenVINO FP32 / bf16, OpenVINO + NNCF int8 (default preset, and `model_type=TRANSFORMER`), and
quantpilot's int8-static (with and without attention-matmul points) on OpenVINO and ONNX Runtime,
its placement candidates, and int8-dynamic / int8-static on torch-int8. Every static method
calibrates on the same 200 calibration sentences.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bench_torch_int8 import torch_ao_survives
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
from quantpilot_testbed import datasets
from quantpilot_testbed.sentence_embedding import mean_pool, token_batches

BATCH, TOKENS = 32, 128


@dataclass(frozen=True)
class MiniLMSetup:
    """What every MiniLM row is built from: the float model, one timed batch, the calibration batches, the
    float ONNX export, the threads each engine gets and the folder for the files the rows write."""

    model: torch.nn.Module
    example: dict
    calibration: list[dict]
    fp32_onnx: Path
    threads: int
    workdir: Path


def minilm_example(tok) -> dict:
    """The batch every MiniLM row is timed and exported on: the first BATCH eval sentences padded to TOKENS.

    >>> callable(minilm_example)
    True
    """
    sentences = datasets.sentences("eval")[:BATCH]
    return dict(tok(sentences, padding="max_length", truncation=True, max_length=TOKENS, return_tensors="pt"))


def minilm_rows(model, tok, threads: int, workdir: Path) -> tuple[list[Row], dict]:
    """Every MiniLM row, in table order, and the example batch they are timed on."""
    calibration = [dict(b) for b in token_batches(tok, datasets.sentences("calibration"), BATCH, TOKENS)]
    example = minilm_example(tok)
    fp32_onnx = qp.export_onnx(model, example, workdir / "minilm-fp32.onnx")
    setup = MiniLMSetup(model, example, calibration, fp32_onnx, threads, workdir)
    rows = [
        Row("FP32 eager", qp.engines.compile(model, "torch").run, torch_saved_size(model, workdir, "fp32")),
        Row("bf16 eager", qp.engines.compile(model, "torch", dtype="bfloat16").run, dir_size(fp32_onnx) // 2),
    ]
    rows += _peer_rows(setup)
    rows += _quantpilot_rows(setup)
    return rows, example


def _peer_rows(s: MiniLMSetup) -> list[Row]:
    """The quantizers a user would otherwise pick: torch.ao, torchao, ONNX Runtime, OpenVINO and NNCF."""
    import nncf

    threads, fp32_onnx = s.threads, s.fp32_onnx
    rows = [
        attempt_row("torch.ao quantize_dynamic", lambda: _torch_ao(s)),
        attempt_row("torchao int8 dynamic", lambda: _torchao_dynamic(s)),
        Row("ORT FP32", ort_runner(fp32_onnx, threads), dir_size(fp32_onnx)),
        attempt_row("ORT quantize_dynamic", lambda: _ort_dynamic(s)),
        attempt_row("ORT quantize_static (QDQ, per-channel)", lambda: _ort_static(s)),
        Row("OpenVINO FP32", ov_runner(fp32_onnx, threads), dir_size(fp32_onnx)),
        Row("OpenVINO bf16", ov_runner(fp32_onnx, threads, "bfloat16"), dir_size(fp32_onnx)),
        attempt_row("NNCF int8 default preset", lambda: _nncf_row(s, "NNCF int8 default preset")),
        attempt_row(
            "NNCF int8 TRANSFORMER",
            lambda: _nncf_row(s, "NNCF int8 TRANSFORMER", model_type=nncf.ModelType.TRANSFORMER),
        ),
    ]
    if BF16_FLOAT_OPS:  # NNCF's fair row on AMX: what stays float runs in bf16, as for our placements
        name = f"NNCF int8 TRANSFORMER{BF16_FLOAT_OPS}"
        rows.append(
            attempt_row(name, lambda: _nncf_row(s, name, dtype="bfloat16", model_type=nncf.ModelType.TRANSFORMER))
        )
    return rows


def _torch_ao(s: MiniLMSetup) -> Row:
    problem = torch_ao_survives(s.threads)
    if problem is not None:
        return Row("torch.ao quantize_dynamic", error=problem)
    ao = torch.ao.quantization.quantize_dynamic(s.model, {torch.nn.Linear}, dtype=torch.qint8)
    return Row("torch.ao quantize_dynamic", qp.engines.compile(ao, "torch").run, torch_saved_size(ao, s.workdir, "ao"))


def _torchao_dynamic(s: MiniLMSetup) -> Row:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantized = copy.deepcopy(s.model)
    quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
    quantized(**s.example)  # fail here, not in the timing loop
    return Row(
        "torchao int8 dynamic",
        qp.engines.compile(quantized, "torch").run,
        torch_saved_size(quantized, s.workdir, "torchao"),
    )


def _ort_dynamic(s: MiniLMSetup) -> Row:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = s.workdir / "minilm-ort-dynamic.onnx"
    quantize_dynamic(str(s.fp32_onnx), str(out), weight_type=QuantType.QInt8)
    return Row("ORT quantize_dynamic", ort_runner(out, s.threads), dir_size(out))


def _ort_static(s: MiniLMSetup) -> Row:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{k: v.numpy() for k, v in b.items()} for b in s.calibration])

        def get_next(self):
            return next(self.items, None)

    out = s.workdir / "minilm-ort-static.onnx"
    quantize_static(str(s.fp32_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return Row("ORT quantize_static (QDQ, per-channel)", ort_runner(out, s.threads), dir_size(out))


def _nncf_row(s: MiniLMSetup, name: str, dtype: str = "float32", **options) -> Row:
    items = [{k: v.numpy() for k, v in b.items()} for b in s.calibration]
    xml, size = ov_ir_size(nncf_quantize(s.fp32_onnx, items, **options))
    return Row(name, ov_runner(xml, s.threads, dtype), size)


def _qp_static(s: MiniLMSetup, ops: tuple[str, ...], recipe: qp.Recipe | None = None) -> Any:
    """quantpilot int8-static (with `ops` quantized too, or `recipe`), calibrated on the calibration batches."""
    qmodel = qp.quantize(s.model, recipe or qp.Recipe.preset("int8-static").replace(ops=ops))
    with qp.calibrate(qmodel, progress=False):
        for batch in s.calibration:
            qmodel(**batch)
    return qp.freeze(qmodel)


def _quantpilot_rows(s: MiniLMSetup) -> list[Row]:
    """quantpilot's rows: int8-static on OpenVINO and ORT, the placement candidates, and torch-int8."""
    threads, workdir = s.threads, s.workdir
    rows = []
    layers_only, with_matmul = _qp_static(s, ()), _qp_static(s, ("matmul",))
    for label, qmodel in (("int8-static", layers_only), ("int8-static+matmul", with_matmul)):
        path = qp.export_onnx(qmodel, s.example, workdir / f"minilm-qp-{label}.onnx")
        rows.append(Row(f"qp {label} on OpenVINO", ov_runner(path, threads), dir_size(path)))
        rows.append(Row(f"qp {label} on ORT", ort_runner(path, threads), dir_size(path)))
    rows += placement_rows("transformer", s.model, s.example, lambda r: _qp_static(s, (), r), threads, workdir)
    # SmoothQuant is a placement now (int8-smooth: alpha 0.8 with min-max ranges, its float rest in bf16 on AMX).
    dynamic = qp.freeze(qp.quantize(s.model, "int8-dynamic"))
    int8_dir = workdir / "qp-int8-dynamic"
    qp.save(dynamic, int8_dir)
    int8_runner = qp.engines.compile(dynamic, "torch-int8")
    rows.append(Row("qp int8-dynamic on torch-int8", int8_runner.run, dir_size(int8_dir)))
    int8_static_dir = workdir / "qp-int8-static"
    qp.save(layers_only, int8_static_dir)
    rows.append(
        Row(
            "qp int8-static on torch-int8",
            qp.engines.compile(layers_only, "torch-int8").run,
            dir_size(int8_static_dir),
        )
    )
    return rows


def embedding_cosines(rows: list[Row], tok, reference_name: str = "FP32 eager") -> dict[str, float]:
    """Mean cosine of each row's mean-pooled embeddings with FP32's, on the held-out sentences."""
    batches = [dict(b) for b in token_batches(tok, datasets.sentences("eval"), BATCH, TOKENS)]

    def embed(run) -> torch.Tensor:
        with torch.inference_mode():
            vectors = [mean_pool(first_output(run(b)).float(), b["attention_mask"]) for b in batches]
        return torch.nn.functional.normalize(torch.cat(vectors), dim=1)

    runs = {r.name: r.run for r in rows if r.run is not None}
    reference = embed(runs[reference_name])
    return {name: float((embed(run) * reference).sum(dim=1).mean()) for name, run in runs.items()}
