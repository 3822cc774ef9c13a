"""Compare a quantized model with its float model: output error, task metric, size and latency.

Example:
    >>> import torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Linear(16, 16))
    >>> qm = qp.freeze(qp.quantize(net, "w8a16"))
    >>> r = qp.evaluate.compare(net, qm, [torch.randn(4, 16)], iters=2)
    >>> r.sqnr_db > 30
    True
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .api import is_frozen, quantized_layers, save
from .batches import call_model, eval_mode, first_tensor
from .metrics import cosine_similarity, max_abs_error, sqnr_db
from .timing import interleaved_latency

__all__ = ["compare", "Comparison", "size_on_disk"]


@dataclass(frozen=True)
class Comparison:
    """What `compare` measured. Latencies are medians in seconds, sizes are bytes on disk."""

    sqnr_db: float
    cosine: float
    max_abs_error: float
    float_bytes: int
    quant_bytes: int | None
    float_latency_s: float
    quant_latency_s: float
    float_metric: float | None = None
    quant_metric: float | None = None

    @property
    def size_ratio(self) -> float | None:
        """How many times smaller the quantized model is on disk (None if it is not frozen)."""
        return None if not self.quant_bytes else self.float_bytes / self.quant_bytes

    @property
    def speedup(self) -> float:
        """Float latency / quantized latency (> 1 means the quantized model is faster)."""
        return self.float_latency_s / self.quant_latency_s

    def as_dict(self) -> dict[str, Any]:
        """Fields and derived ratios as plain data."""
        return {**asdict(self), "size_ratio": self.size_ratio, "speedup": self.speedup}

    def __str__(self) -> str:
        lines = [
            f"output SQNR       {self.sqnr_db:8.2f} dB",
            f"cosine            {self.cosine:8.5f}",
            f"max abs error     {self.max_abs_error:8.4g}",
            f"size float/quant  {self.float_bytes / 2**20:8.2f} / "
            + ("n/a" if self.quant_bytes is None else f"{self.quant_bytes / 2**20:.2f} MiB ({self.size_ratio:.2f}x)"),
            f"latency ratio     {self.speedup:8.2f}x (median, float / quantized)",
        ]
        if self.float_metric is not None:
            lines.append(f"metric float/quant {self.float_metric:.4f} / {self.quant_metric:.4f}")
        return "\n".join(lines)


def size_on_disk(model: nn.Module) -> int:
    """Bytes the model takes saved as safetensors (quantpilot's format for quantized models).

    Example:
        >>> import torch
        >>> size_on_disk(torch.nn.Linear(256, 256)) > 256 * 256 * 4
        True
    """
    with tempfile.TemporaryDirectory() as tmp:
        if quantized_layers(model):
            directory = save(model, Path(tmp) / "q")
            return sum(p.stat().st_size for p in directory.iterdir())
        path = Path(tmp) / "model.safetensors"
        safetensors.torch.save_model(model, str(path))
        return path.stat().st_size


def compare(
    float_model: nn.Module,
    qmodel: nn.Module,
    batches: Iterable[Any],
    metric_fn: Callable[[nn.Module], float] | None = None,
    warmup: int = 2,
    iters: int = 10,
) -> Comparison:
    """Measure a quantized model against its float model on the same batches.

    Args:
        float_model, qmodel: the two models (both are run in eval mode under no_grad).
        batches: inputs, each passed as `model(**b)`, `model(*b)` or `model(b)`; the first one is
            also the latency probe.
        metric_fn: optional task metric `fn(model) -> float` (accuracy, perplexity, recall...).
        warmup, iters: latency rounds; float and quantized runs are interleaved.

    Returns:
        A `Comparison`.

    Example:
        >>> import torch, quantpilot as qp
        >>> net = torch.nn.Linear(8, 8)
        >>> qp.evaluate.compare(net, qp.freeze(qp.quantize(net, "w8a16")), [torch.randn(2, 8)], iters=1).cosine > 0.99
        True
    """
    batches = list(batches)
    if not batches:
        raise ValueError("compare needs at least one batch of inputs")
    ref_out, q_out = [], []
    # Latency too is measured in eval mode: dropout in the timed runs would be neither fair nor deployed.
    with eval_mode(float_model), eval_mode(qmodel), torch.no_grad():
        for model, sink in ((float_model, ref_out), (qmodel, q_out)):
            sink.extend(first_tensor(call_model(model, b)).float().flatten() for b in batches)
        ref, approx = torch.cat(ref_out), torch.cat(q_out)
        probe = batches[0]
        lat = interleaved_latency(
            {"float": lambda: call_model(float_model, probe), "quant": lambda: call_model(qmodel, probe)}, warmup, iters
        )
    return Comparison(
        sqnr_db=sqnr_db(ref, approx),
        cosine=float(cosine_similarity(ref, approx)),
        max_abs_error=max_abs_error(ref, approx),
        float_bytes=size_on_disk(float_model),
        quant_bytes=size_on_disk(qmodel) if is_frozen(qmodel) else None,
        float_latency_s=lat["float"],
        quant_latency_s=lat["quant"],
        float_metric=None if metric_fn is None else float(metric_fn(float_model)),
        quant_metric=None if metric_fn is None else float(metric_fn(qmodel)),
    )
