"""bench-core's contestants: quantpilot's calibrators and the references they are timed against.

Each contestant is a zero-argument function that runs collect + compute on the whole activation and
returns the range it picked (ORT's "distribution" returns avg/std instead): quantpilot's calibrators,
torch.ao's observers, ONNX Runtime's `HistogramCollector` configured like ours where its parameters
allow, and a numpy transcription of TensorRT's entropy procedure.

Example:
    >>> x = torch.linspace(-1.0, 1.0, 101)
    >>> ours("minmax", x)()
    (-1.0, 1.0)
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from quantpilot import QuantSpec
from quantpilot.calibrators import build_calibrator

SPEC = QuantSpec("int8", symmetric=True)


class Contestant(NamedTuple):
    """One row of the table: its JSON key, printed label, whose implementation, the run, timed rounds."""

    key: str
    label: str
    implementation: str
    run: Callable[[], tuple[float, float]]
    repeats: int


def ours(kind: str, x: torch.Tensor, **options) -> Callable[[], tuple[float, float]]:
    """quantpilot's calibrator `kind` on `x` (int8 symmetric), built afresh per call: each run does all the work.

    Example:
        >>> ours("minmax", torch.tensor([-2.0, 3.0]))()
        (-3.0, 3.0)
    """

    def run() -> tuple[float, float]:
        cal = build_calibrator(SPEC, kind, **options)
        cal.collect(x)
        lo, hi = cal.compute_range()
        return lo.item(), hi.item()

    return run


def torch_observer(cls, x: torch.Tensor) -> Callable[[], tuple[float, float]]:
    """A torch.ao observer class on `x` (symmetric int8), returning the range its scale stands for.

    Example:
        >>> from torch.ao.quantization.observer import MinMaxObserver
        >>> lo, hi = torch_observer(MinMaxObserver, torch.tensor([-1.0, 2.0]))()
        >>> round(hi, 4)
        2.0
    """

    def run() -> tuple[float, float]:
        obs = cls(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        obs(x)
        scale, _ = obs.calculate_qparams()
        # Symmetric int8: scale = amax / 127.5, so the range the observer settled on is +-127.5 scale.
        amax = scale.item() * (obs.quant_max - obs.quant_min) / 2
        return -amax, amax

    return run


def ort_collector(arr: np.ndarray, method: str, **params) -> Callable[[], object]:
    """ONNX Runtime's `HistogramCollector` (`method`: percentile, entropy or distribution) on `arr`.

    Example:
        >>> lo, hi = ort_collector(np.linspace(-1, 1, 1000, dtype=np.float32), "percentile", percentile=100)()
        >>> round(hi, 2)
        1.0
    """
    from onnxruntime.quantization.calibrate import HistogramCollector

    settings = {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128, "percentile": 99.999}
    settings.update(params)

    def run():
        collector = HistogramCollector(method=method, scenario="same", **settings)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints progress lines
            collector.collect({"x": arr})
            result = collector.compute_collection_result()["x"]
        if method == "distribution":
            return float(result.avg), float(result.std)
        return float(result[0]), float(result[1])

    return run


def tensorrt_entropy_reference(arr: np.ndarray, bins: int = 2048, levels: int = 128) -> Callable[[], tuple]:
    """TensorRT's procedure as published (GTC 2017, "8-bit Inference with TensorRT"), looped in numpy.

    2048 linear bins of |x| over [0, amax]; for each candidate i >= 128 bins: P = the first i bins
    with the rest added to the last, Q = those i bins merged into 128 levels and spread back over
    their non-empty bins; the threshold is the upper edge of the i with the least KL(P||Q),
    the largest i on ties.

    Example:
        >>> lo, hi = tensorrt_entropy_reference(np.linspace(-1, 1, 1000), bins=16, levels=8)()
        >>> 0 < hi <= 1.0 and lo == -hi
        True
    """
    absx = np.abs(arr.reshape(-1)).astype(np.float64)
    amax = float(absx.max())

    def run() -> tuple[float, float]:
        hist, edges = np.histogram(absx, bins=bins, range=(0.0, amax))
        hist = hist.astype(np.float64)
        best_kl, best_i = np.inf, bins
        for i in range(levels, bins + 1):
            p = hist[:i].copy()
            p[-1] += hist[i:].sum()
            level = (np.arange(i) * levels) // i
            present = hist[:i] > 0
            sums = np.bincount(level, weights=hist[:i], minlength=levels)
            nonempty = np.bincount(level, weights=present, minlength=levels)
            q = np.where(present, sums[level] / np.maximum(nonempty[level], 1), 0.0)
            p, q = p / p.sum(), q / q.sum()
            with np.errstate(divide="ignore", invalid="ignore"):
                kl = float(np.sum(np.where(p > 0, p * np.log(p / q), 0.0)))
            if kl <= best_kl:
                best_kl, best_i = kl, i
        t = float(edges[best_i])
        return -t, t

    return run


def contestants(x: torch.Tensor, repeats: int, slow: int) -> list[Contestant]:
    """Every row of the table in print order; the slow references get `slow` rounds (TensorRT's loop one).

    Example:
        >>> [c.key for c in contestants(torch.zeros(2, 3), 5, 1)][:2]
        ['ours_minmax', 'ours_moving_average']
    """
    from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver

    arr = x.numpy()
    return [
        Contestant("ours_minmax", "quantpilot MinMax", "quantpilot", ours("minmax", x), repeats),
        Contestant(
            "ours_moving_average", "quantpilot MovingAverageMinMax", "quantpilot", ours("moving_average", x), repeats
        ),
        Contestant(
            "ours_percentile_99.99",
            "quantpilot Histogram percentile 99.99",
            "quantpilot",
            ours("histogram", x, method="percentile", percentile=99.99),
            repeats,
        ),
        Contestant(
            "ours_percentile_99.999",
            "quantpilot Histogram percentile 99.999",
            "quantpilot",
            ours("histogram", x, method="percentile", percentile=99.999),
            repeats,
        ),
        Contestant(
            "ours_entropy",
            "quantpilot Histogram entropy",
            "quantpilot",
            ours("histogram", x, method="entropy"),
            repeats,
        ),
        Contestant("ours_mse", "quantpilot Histogram mse", "quantpilot", ours("histogram", x, method="mse"), repeats),
        Contestant("torch_minmax", "torch MinMaxObserver", "torch", torch_observer(MinMaxObserver, x), repeats),
        Contestant(
            "torch_histogram",
            "torch HistogramObserver (2048 bins)",
            "torch",
            torch_observer(HistogramObserver, x),
            repeats,
        ),
        *ort_contestants(arr, repeats, slow),
        Contestant(
            "tensorrt_entropy_reference",
            "TensorRT entropy reference (numpy loop)",
            "reference",
            tensorrt_entropy_reference(arr),
            1,
        ),
    ]


def ort_contestants(arr: np.ndarray, repeats: int, slow: int) -> list[Contestant]:
    """ONNX Runtime's rows: percentiles like ours (2048 bins of |x|), entropy like ours and at its defaults.

    Example:
        >>> [c.repeats for c in ort_contestants(np.zeros(4, dtype=np.float32), 5, 1)]
        [5, 5, 1, 1, 1]
    """
    return [
        Contestant(
            "ort_percentile_99.99",
            "ORT percentile 99.99 (2048 bins of |x|)",
            "onnxruntime",
            ort_collector(arr, "percentile", percentile=99.99),
            repeats,
        ),
        Contestant(
            "ort_percentile_99.999",
            "ORT percentile 99.999 (2048 bins of |x|)",
            "onnxruntime",
            ort_collector(arr, "percentile", percentile=99.999),
            repeats,
        ),
        Contestant(
            "ort_entropy",
            "ORT entropy (4096 signed bins, 255 levels)",
            "onnxruntime",
            ort_collector(arr, "entropy", num_bins=4096, num_quantized_bins=255),
            slow,
        ),
        Contestant(
            "ort_entropy_default",
            "ORT entropy (its defaults: 128 bins, 128 levels)",
            "onnxruntime",
            ort_collector(arr, "entropy", num_bins=128, num_quantized_bins=128),
            slow,
        ),
        Contestant(
            "ort_distribution",
            "ORT distribution (2048 bins; avg/std, no range)",
            "onnxruntime",
            ort_collector(arr, "distribution"),
            slow,
        ),
    ]
