"""bench-engines' building blocks: a row, the runners for each engine, sizes on disk, and placement rows.

A row is a variant: how to run a batch, how big it is, or why a peer could not be built (`attempt_row`
turns any failure into such a row). `bench_auto.py` and `profile_openvino.py` reuse these runners
(through `bench_engines`).

Example:
    >>> placement_row_name("int8-matmul", "float32")
    'qp placement int8-matmul on OpenVINO'
"""

from __future__ import annotations

import tempfile
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import quantpilot as qp
from quantpilot.placement import engine_options, has_amx, placements_for


class Row:
    """One variant: how to run a batch, how big it is on disk, or why it could not be built."""

    def __init__(self, name: str, run: Callable[[Any], Any] | None = None, size: int | None = None, error: str = ""):
        self.name, self.run, self.size, self.error = name, run, size, error


def first_output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, list | tuple):
        return torch.as_tensor(out[0])
    return torch.as_tensor(np.asarray(out))


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def torch_saved_size(model: torch.nn.Module, workdir: Path, name: str) -> int | None:
    path = workdir / f"{name}.pt"
    try:
        torch.save(model.state_dict(), path)
    except Exception:  # noqa: BLE001 (a peer's tensor subclass that does not serialise: size unknown)
        return None
    return path.stat().st_size


def attempt_row(name: str, build: Callable[[], Row]) -> Row:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peers' deprecation notices, not results
            return build()
    except Exception as err:  # noqa: BLE001 (any failure of a peer is a row, not a crash)
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        return Row(name, error=f"failed: {last[:160]}")


def ov_ir_size(model) -> tuple[str, int]:
    import openvino as ov

    folder = Path(tempfile.mkdtemp(prefix="qp-bench-ov-"))
    ov.save_model(model, str(folder / "model.xml"))
    return str(folder / "model.xml"), dir_size(folder)


def nncf_quantize(onnx_path: Path, items: list[dict[str, np.ndarray]], **options) -> Any:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), **options)


def ort_runner(path: Path, threads: int) -> Callable[[Any], Any]:
    runner = qp.engines.compile(path, engine="onnxruntime", threads=threads)
    return runner.run


def ov_runner(model_or_path: Any, threads: int, dtype: str = "float32") -> Callable[[Any], Any]:
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


def placement_rows(kind: str, model, example, calibrated, threads: int, workdir: Path) -> list[Row]:
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
            return Row(placement_row_name(name, dtype), ov_runner(path[0], threads, dtype), dir_size(path[0]))

        rows += [attempt_row(placement_row_name(name, d), lambda d=d, b=build: b(d)) for d in dtypes]
    return rows
