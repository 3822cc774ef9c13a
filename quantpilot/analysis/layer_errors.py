"""Per-layer quantization error of a quantized model: weight, input-activation and output SQNR.

Each quantized layer is measured *locally*: on the inputs it receives inside the quantized model, its
output is compared with the float layer's output on the same inputs. Errors do not compound in the
number, so a layer that is itself hard to quantize stands out wherever it sits in the network.
SQNR is accumulated over all batches (total signal over total noise), not averaged in dB.

Example:
    >>> import torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> qmodel = qp.quantize(net)
    >>> data = [torch.randn(16, 8) for _ in range(2)]
    >>> with qp.calibrate(qmodel):
    ...     _ = [qmodel(x) for x in data]
    >>> report = layer_errors(qmodel, data)
    >>> [row.name for row in report.rows], report.rows[0].output_sqnr_db > 20
    (['0', '2'], True)
"""

from __future__ import annotations

import copy
import csv
import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..api import freeze, is_frozen, quantized_layers
from ..atomic import atomic_path
from ..batches import call_model, eval_mode
from ..nn import QuantModule, TensorQuantizer
from ..nn.experts import QuantExpertWeight
from ..surgery import observe
from .statistics import point_quantizers

__all__ = ["LayerError", "LayerErrorReport", "layer_errors"]


@dataclass(frozen=True)
class LayerError:
    """Errors of one quantized layer in dB (higher is better; `inf` = exact, `nan` = not measurable).

    Example:
        >>> LayerError("fc", "QuantLinear", 40.0, 38.0, 35.0).worst_db
        35.0
    """

    name: str
    type: str
    weight_sqnr_db: float
    activation_sqnr_db: float
    output_sqnr_db: float

    @property
    def worst_db(self) -> float:
        """The output SQNR where known, else the lower of the weight and activation SQNR (NaN-free ordering key)."""
        if not math.isnan(self.output_sqnr_db):
            return self.output_sqnr_db
        known = [v for v in (self.weight_sqnr_db, self.activation_sqnr_db) if not math.isnan(v)]
        return min(known) if known else math.inf


@dataclass(frozen=True)
class LayerErrorReport:
    """The per-layer errors, in model order.

    Example:
        >>> rows = [LayerError("a", "QuantLinear", 50, 40, 39), LayerError("b", "QuantLinear", 30, 40, 29)]
        >>> r = LayerErrorReport(rows)
        >>> [row.name for row in r.worst(1)]
        ['b']
    """

    rows: list[LayerError]

    def worst(self, k: int | None = None) -> list[LayerError]:
        """The `k` layers with the lowest output SQNR (all layers, worst first, when k is None).

        Example:
            >>> LayerErrorReport([]).worst(3)
            []
        """
        ranked = sorted(self.rows, key=lambda r: r.worst_db)
        return ranked if k is None else ranked[: max(0, int(k))]

    def to_csv(self, path: str | Path) -> Path:
        """Write the table as CSV (refuses to overwrite an existing file).

        Example:
            >>> import tempfile, pathlib
            >>> p = LayerErrorReport([LayerError("a", "QuantLinear", 1.0, 2.0, 3.0)]).to_csv(
            ...     pathlib.Path(tempfile.mkdtemp()) / "errors.csv")
            >>> p.read_text().splitlines()[1]
            'a,QuantLinear,1.0,2.0,3.0'
        """
        # Written under a hidden temporary name and renamed: the file appears whole or not at all.
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(LayerError)])
            writer.writeheader()
            for row in self.rows:
                writer.writerow(asdict(row))
        return Path(path)

    def __str__(self) -> str:
        lines = [f"{'layer':<48} {'type':<14} {'weight dB':>9} {'act dB':>8} {'output dB':>9}"]
        for r in self.rows:
            lines.append(
                f"{r.name:<48} {r.type:<14} {r.weight_sqnr_db:>9.1f} {r.activation_sqnr_db:>8.1f} "
                f"{r.output_sqnr_db:>9.1f}"
            )
        return "\n".join(lines)


def _db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf if signal > 0.0 or noise == 0.0 else math.nan
    return 10.0 * math.log10(signal / noise) if signal > 0.0 else -math.inf


class _Accumulator:
    """Sums of reference energy and error energy (float64) over batches."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.seen = False

    def add(self, reference: torch.Tensor, approx: torch.Tensor) -> None:
        ref, app = reference.detach().double(), approx.detach().double()
        self.signal += float((ref * ref).sum())
        self.noise += float(((ref - app) ** 2).sum())
        self.seen = True

    def db(self) -> float:
        return _db(self.signal, self.noise) if self.seen else math.nan


def _lookup(getter: Any, name: str) -> Any:
    """`getter(name)` (torch's get_submodule / get_parameter), or None where the model has nothing by that name."""
    try:
        return getter(name)
    except AttributeError:
        return None


def _float_twin(name: str, layer: QuantModule, float_model: nn.Module | None) -> nn.Module | None:
    """A float module computing what `layer` computes before quantization, or None if the float weight is gone."""
    if float_model is not None:
        module = _lookup(float_model.get_submodule, name)
        if module is not None:
            return module
        # a mixture-of-experts stack: a 3-D Parameter of the float experts module, not a module
        stack = _lookup(float_model.get_parameter, name)
        if isinstance(layer, QuantExpertWeight) and stack is not None and stack.dim() == 3:
            return QuantExpertWeight(stack, transposed=layer.transposed, weight_spec=None)
        raise ValueError(f"float_model has no module '{name}': pass the float model this quantized model was made from")
    if layer.is_frozen:
        return None
    # The unfrozen layer still holds its float weight: the same layer with both quantizations off is float.
    twin = copy.deepcopy(layer)
    twin.weight_spec = None
    twin.input_quantizer = TensorQuantizer(None)
    return twin


def _float_weight(name: str, layer: QuantModule, twin: nn.Module | None) -> torch.Tensor | None:
    if twin is None:
        return None
    weight = getattr(twin, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None
    if type(twin).__name__ == "Conv1D" and hasattr(twin, "nf"):
        # transformers' GPT-2 Conv1D stores W as (in, out); the quantized layer holds it as a Linear's (out, in).
        return weight.detach().t()
    return weight.detach()


def layer_errors(
    qmodel: nn.Module, batches: Iterable[Any], *, float_model: nn.Module | None = None
) -> LayerErrorReport:
    """Measure every quantized layer's weight, input-activation and output SQNR on `batches`.

    Functional quantization points (residual adds, attention matmuls: modules holding quantizers that are not
    layers) get a row too, with the SQNR of their quantized inputs; they have no weight, and no output SQNR.

    Args:
        qmodel: a quantized model, calibrated (it is frozen on a copy) or frozen. Not modified.
        batches: inputs, each passed as `quantpilot.batches.call_model` does (e.g. the calibration batches).
        float_model: the float model `qmodel` came from. Needed for the weight and output SQNR of a
            *frozen* model, whose float weights are gone; without it those columns are NaN (with a warning).

    Returns:
        A `LayerErrorReport` (rows in model order; `.worst(k)` ranks them; `.to_csv(path)`).

    Raises:
        ValueError: the model is not quantized, was never calibrated, or `batches` is empty.

    Example:
        >>> import torch, quantpilot as qp
        >>> qm = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), "w8a16"))
        >>> row = layer_errors(qm, [torch.randn(2, 4)], float_model=torch.nn.Sequential(torch.nn.Linear(4, 4))).rows[0]
        >>> row.activation_sqnr_db
        inf
    """
    work, layers, twins, float_weights = _prepare(qmodel, float_model)
    act = {name: _Accumulator() for name, _ in layers}
    out = {name: _Accumulator() for name, _ in layers}
    points = _functional_points(work)
    point_act = {name: _Accumulator() for name in points}
    # One label per quantizer ("point[i]"), each adding to its point's accumulator.
    point_modules = {f"{name}[{i}]": q for name, qs in points.items() for i, q in enumerate(qs)}
    point_accs = {f"{name}[{i}]": point_act[name] for name, qs in points.items() for i in range(len(qs))}
    seen = 0
    with (
        observe(work, dict(layers), after=_layer_observer(dict(layers), act, out, twins)),
        observe(work, point_modules, after=lambda label, args, _kw, output: point_accs[label].add(args[0], output)),
        eval_mode(work),
        torch.no_grad(),
    ):
        for batch in batches:
            call_model(work, batch)
            seen += 1
    if seen == 0:
        raise ValueError("batches is empty: pass at least one input batch")
    rows = [
        LayerError(name, type(layer).__name__, _weight_db(layer, float_weights[name]), act[name].db(), out[name].db())
        for name, layer in layers
    ]
    for name in points:
        rows.append(LayerError(name, name.rpartition(":")[2], math.inf, point_act[name].db(), math.nan))
    return LayerErrorReport(rows)


def _prepare(qmodel: nn.Module, float_model: nn.Module | None):
    """A frozen copy of `qmodel`, its quantized layers, their float twins and float weights (checks first)."""
    if not isinstance(qmodel, nn.Module):
        raise TypeError(f"qmodel must be a torch.nn.Module, got {type(qmodel).__name__}")
    if not quantized_layers(qmodel):
        raise ValueError("qmodel is not quantized: pass the model returned by quantpilot.quantize (and calibrated)")
    work = copy.deepcopy(qmodel)
    layers = quantized_layers(work)
    twins = {name: _float_twin(name, layer, float_model) for name, layer in layers}
    if any(t is None for t in twins.values()):
        warnings.warn(
            "qmodel is frozen, so its float weights are gone: weight and output SQNR are NaN; "
            "pass float_model= (the model it was quantized from) to measure them",
            stacklevel=3,  # the caller of layer_errors
        )
    float_weights = {name: _float_weight(name, layer, twins[name]) for name, layer in layers}
    if not is_frozen(work):
        freeze(work)  # raises a clear error when calibration never ran
    return work, layers, twins, float_weights


def _layer_observer(
    layers: dict[str, QuantModule],
    act: dict[str, _Accumulator],
    out: dict[str, _Accumulator],
    twins: dict[str, nn.Module | None],
):
    """`observe` callback adding each layer's input-quantization and output errors to `act[name]` / `out[name]`."""

    def record(name, args, _kwargs, output):
        layer = layers[name]
        x = args[0]
        smoothing = getattr(layer, "input_smoothing", None)
        if isinstance(x, torch.Tensor) and smoothing is not None:
            x = x / smoothing.to(x.dtype)  # SmoothQuant: the quantizer sees the smoothed input
        if isinstance(x, torch.Tensor) and x.is_floating_point() and layer.input_quantizer.spec is not None:
            act[name].add(x, layer.input_quantizer(x))
        elif isinstance(x, torch.Tensor) and x.is_floating_point():
            act[name].add(x, x)
        twin = twins[name]
        if twin is not None and isinstance(output, torch.Tensor):
            out[name].add(twin(*args), output)

    return record


def _weight_db(layer: QuantModule, weight: torch.Tensor | None) -> float:
    """Weight SQNR of the frozen `layer` against its float weight (inf when unquantized, NaN when unknown)."""
    if weight is None or layer.weight_spec is None:
        return math.inf if layer.weight_spec is None else math.nan
    deq = layer.quantized_weight(torch.float64)  # the frozen codes, dequantized (whatever their storage)
    return _db(float((weight.double() ** 2).sum()), float(((weight.double() - deq) ** 2).sum()))


def _functional_points(model: nn.Module) -> dict[str, list[TensorQuantizer]]:
    """Enabled quantizers of each functional point (residual adds, attention matmuls), by point name."""
    points = {}
    for point, quantizers in point_quantizers(model).items():
        enabled = [q for q in quantizers if q.spec is not None]
        if enabled:
            points[point] = enabled
    return points
