"""The architecture zoo's operations: one cell of the (family x operation) matrix each.

The families (tiny random-weight models of what transformers ships) live in `zoo_families`;
`benchmarks/zoo.py` runs every operation on every family, `tests/zoo/test_zoo.py` a fast subset.

Example:
    >>> "save/load" in OPERATIONS, FAMILIES["llama"].kind
    (True, 'decoder')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .zoo_families import FAMILIES, Family, output_tensor

__all__ = ["FAMILIES", "Family", "output_tensor", "Cell", "OPERATIONS", "run_family"]

# ---------------------------------------------------------------------------------------------------
# Operations: one cell of the (family x operation) matrix each; `benchmarks/zoo.py` runs them all,
# `tests/zoo/test_zoo.py` a fast subset.

CALIBRATION_SEEDS = (0, 1)  # two calibration batches
EVAL_SEED = 5


@dataclass
class Cell:
    """One result: status "ok", "warned" (ran, but quantpilot named a gap), "refused", "WRONG", "CRASH", "n/a"."""

    status: str
    detail: str = ""
    metric: float | None = None
    seconds: float = 0.0

    def short(self) -> str:
        if self.status in ("ok", "warned") and self.metric is not None:
            return f"{self.status} {self.metric:.3f}"
        return self.status

    def line(self) -> str:
        text = self.status if self.metric is None else f"{self.status} (cos {self.metric:.4f})"
        return f"{text}: {self.detail}" if self.detail else text


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cosine(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Lowest cosine similarity over output rows (last axis), float against quantized."""
    out, ref = out.detach().float(), ref.detach().float()
    if out.shape != ref.shape:
        raise AssertionError(f"output shape {tuple(out.shape)} differs from the float model's {tuple(ref.shape)}")
    if out.dim() == 1:
        out, ref = out[None], ref[None]
    cos = torch.nn.functional.cosine_similarity(out.reshape(-1, out.shape[-1]), ref.reshape(-1, ref.shape[-1]), dim=-1)
    return float(cos.min())


def _run(model: nn.Module, fam: Family, seed: int = EVAL_SEED, second: bool = False) -> torch.Tensor:
    with torch.no_grad():
        return output_tensor(model(**fam.inputs(seed, second)))


def _quantized(model: nn.Module, fam: Family, recipe: Any) -> nn.Module:
    import quantpilot as qp
    from quantpilot.api import needs_calibration

    qmodel = qp.quantize(model, recipe)
    if needs_calibration(qmodel):
        with qp.calibrate(qmodel) as m:
            for seed in CALIBRATION_SEEDS:
                m(**fam.inputs(seed))
    return qp.freeze(qmodel)


def _with_group(recipe: Any, size: int) -> Any:
    import dataclasses

    import quantpilot as qp

    return recipe.replace(weights=dataclasses.replace(recipe.weights, granularity=qp.PerGroup(size)))


def _preset(name: str) -> Callable[[Family, nn.Module, dict], Cell]:
    def op(fam: Family, model: nn.Module, state: dict) -> Cell:
        import quantpilot as qp

        recipe = qp.Recipe.preset(name)
        detail = ""
        try:
            qmodel = _quantized(model, fam, recipe)
        except ValueError as err:
            group = getattr(getattr(recipe.weights, "granularity", None), "size", None)
            if not group or group <= 64:
                raise
            # The zoo's layers are 64 wide: the g128 presets refuse; the same recipe in groups of 64 runs.
            detail = f"g128 refused ({_one_line(err, 160)}); ran with PerGroup(64)"
            qmodel = _quantized(model, fam, _with_group(recipe, 64))
        state[name] = qmodel
        # The share of the model's weights stored quantized (MoE expert stacks included), for the matrix's notes.
        covered = f"{qp.summary(qmodel).quantized_share:.1%} of weights quantized"
        return Cell("ok", "; ".join(filter(None, [detail, covered])), _cosine(_run(qmodel, fam), state["float"]))

    return op


def op_matmul(fam: Family, model: nn.Module, state: dict) -> Cell:
    import quantpilot as qp
    from quantpilot.functional_points import functional_points

    qmodel = _quantized(model, fam, qp.Recipe.preset("int8-static").replace(ops=("matmul",)))
    points = functional_points(qmodel)
    cos = _cosine(_run(qmodel, fam), state["float"])
    if not points:
        return Cell("ok", "no matmul point installed", cos)
    return Cell("ok", f"{len(points)} matmul points", cos)


def _save_load(fam: Family, name: str, state: dict) -> Cell:
    import tempfile

    import quantpilot as qp

    qmodel = state.get(name)
    if qmodel is None:
        return Cell("n/a", f"no {name} model to save (its cell did not run)")
    with tempfile.TemporaryDirectory() as tmp:
        qp.save(qmodel, f"{tmp}/q")
        loaded = qp.load(fam.build(seed=1), f"{tmp}/q")  # other random weights: everything comes from the file
    a, b = _run(qmodel, fam), _run(loaded, fam)
    if not torch.equal(a, b):
        return Cell("WRONG", f"loaded outputs differ from the saved model's (max {float((a - b).abs().max()):.3g})")
    return Cell("ok", "bit-exact", _cosine(b, state["float"]))


def op_save_load(fam: Family, model: nn.Module, state: dict) -> Cell:
    return _save_load(fam, "int8-static", state)


def op_save_load_w4(fam: Family, model: nn.Module, state: dict) -> Cell:
    return _save_load(fam, "w4a16-g128", state)


def op_onnx(fam: Family, model: nn.Module, state: dict) -> Cell:
    import tempfile

    import onnxruntime as ort

    import quantpilot as qp

    qmodel = state.get("int8-static")
    if qmodel is None:
        return Cell("n/a", "no int8-static model to export (its cell did not run)")
    with tempfile.TemporaryDirectory() as tmp:
        path = qp.export_onnx(qmodel, fam.inputs(0), f"{tmp}/m.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        second = fam.inputs(EVAL_SEED, second=True)
        wanted = {i.name for i in session.get_inputs()}
        got = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in second.items() if k in wanted})[0])
    ref = _run(qmodel, fam, second=True)
    if got.shape != ref.shape:
        return Cell(
            "WRONG", f"ONNX Runtime output {tuple(got.shape)} vs PyTorch {tuple(ref.shape)} at the second shape"
        )
    err = float((got - ref).abs().max()) / max(float(ref.abs().max()), 1e-12)
    cos = _cosine(got, ref)
    if err > 0.1:
        return Cell("WRONG", f"ONNX Runtime vs PyTorch at the second shape: max error {err:.3g} of the range", cos)
    return Cell("ok", f"second shape {tuple(ref.shape)}, max error {err:.2g} of the range", cos)


def op_rtn_generate(fam: Family, model: nn.Module, state: dict) -> Cell:
    import quantpilot as qp

    if fam.kind != "decoder":
        return Cell("n/a")
    qmodel = qp.algorithms.rtn(model, bits=4, group_size=64)
    batch = fam.inputs(EVAL_SEED)
    with torch.no_grad():
        out = qmodel.generate(**batch, max_new_tokens=4, do_sample=False)
    length = batch["input_ids"].shape[1]
    if out.shape[1] != length + 4:
        return Cell("WRONG", f"generate returned {out.shape[1]} tokens for {length} + 4")
    return Cell("ok", "generated 4 tokens", _cosine(_run(qmodel, fam), state["float"]))


PRESET_NAMES = (
    "int8-static",
    "int8-dynamic",
    "int8-tensorrt",
    "w8a16",
    "w4a16-g128",
    "fp8",
    "rtn-w4-g128",
    "gptq-w4-g128",
    "awq-w4-g128",
    "smoothquant-w8a8",
    "llm-int8",
)

OPERATIONS: dict[str, Callable[[Family, nn.Module, dict], Cell]] = {
    **{name: _preset(name) for name in PRESET_NAMES},
    "matmul": op_matmul,
    "save/load": op_save_load,
    "save/load w4": op_save_load_w4,
    "onnx": op_onnx,
    "rtn+generate": op_rtn_generate,
}


def run_family(fam: Family, operations: tuple[str, ...] | None = None) -> dict[str, Cell]:
    """Every operation on one family, each in its own try/except; one cell's failure never stops the rest.

    A "model untouched" cell checks that the float model given to every operation kept its weights.
    """
    import time
    import warnings

    if fam.skip:
        return {name: Cell("n/a", fam.skip) for name in operations or OPERATIONS}
    model = fam.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state: dict[str, Any] = {"float": _run(model, fam)}
    cells: dict[str, Cell] = {}
    for name in operations or tuple(OPERATIONS):
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                cell = OPERATIONS[name](fam, model, state)
            except ValueError as err:
                cell = Cell("refused", _one_line(err))
            except Exception as err:  # noqa: BLE001 - every other exception is the crash being recorded
                cell = Cell("CRASH", _one_line(f"{type(err).__name__}: {err}"))
        ours = [w for w in caught if "quantpilot" in str(w.filename) or "quantpilot" in str(w.message)]
        if ours and cell.status == "ok":
            cell.status = "warned"
            cell.detail = "; ".join(filter(None, [cell.detail, _one_line(ours[0].message, 200)]))
        cell.seconds = time.perf_counter() - start
        cells[name] = cell
    after = model.state_dict()
    changed = [k for k, v in before.items() if k not in after or not torch.equal(v, after[k])]
    cells["model untouched"] = Cell("WRONG", f"float model changed: {changed[:3]}") if changed else Cell("ok")
    return cells
