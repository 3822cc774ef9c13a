"""Calibrators: pick the float range a tensor is quantized over, from the data it sees.

All calibrators share one interface:

* `collect(x)` feeds a batch (detached, under no_grad; any float dtype);
* `compute_range()` returns `(min_val, max_val)` float32 tensors shaped by the spec's
  granularity (as `primitives.min_max` returns them); for a symmetric spec `min_val == -max_val`;
* `qparams()` turns that range into `(scale, zero_point)` with `primitives.choose_qparams`;
* `merge(other)` folds in statistics gathered elsewhere (another process, another shard);
* `state_dict()` / `load_state_dict()` hold plain tensors, so statistics can travel between
  processes; `reset()` forgets everything.

The three kinds:

* `MinMax`: the running min and max (per tensor, per channel or per group);
* `MovingAverageMinMax`: an exponential moving average of each batch's min and max;
* `Histogram`: a histogram from which `entropy` (TensorRT's KL-divergence search), `mse`
  (least expected fake-quantization error) or `percentile` picks a clipping range.

Example:
    >>> import torch
    >>> from quantpilot import QuantSpec
    >>> from quantpilot.calibrators import build_calibrator
    >>> cal = build_calibrator(QuantSpec("int8"), "minmax")
    >>> cal.collect(torch.tensor([-1.0, 0.5])); cal.collect(torch.tensor([2.0]))
    >>> [t.item() for t in cal.compute_range()]
    [-2.0, 2.0]
"""

from __future__ import annotations

from typing import Any

from ..spec import QuantSpec
from .base import META_DEVICE_MESSAGE as META_DEVICE_MESSAGE
from .base import Calibrator
from .histogram import Histogram
from .minmax import MinMax, MovingAverageMinMax

__all__ = [
    "Calibrator",
    "MinMax",
    "MovingAverageMinMax",
    "Histogram",
    "CALIBRATORS",
    "build_calibrator",
]


CALIBRATORS: dict[str, type[Calibrator]] = {cls.kind: cls for cls in (MinMax, MovingAverageMinMax, Histogram)}
"""Calibrator kinds by name; `build_calibrator` looks kinds up here, so adding one is one entry."""


def build_calibrator(spec: QuantSpec, kind: str, **options: Any) -> Calibrator:
    """Build a calibrator by name, as recipes name them.

    Args:
        spec: the scheme the range is chosen for.
        kind: a key of `CALIBRATORS`: "minmax", "moving_average" or "histogram".
        **options: the calibrator's constructor options (e.g. `method="percentile", percentile=99.99`).

    Returns:
        A fresh calibrator.

    Raises:
        ValueError: unknown kind or option (the message lists what is allowed).

    Example:
        >>> from quantpilot import QuantSpec
        >>> build_calibrator(QuantSpec(), "histogram", method="percentile", percentile=99.9).percentile
        99.9
    """
    if kind not in CALIBRATORS:
        raise ValueError(f"unknown calibrator kind {kind!r}; use one of: {', '.join(sorted(CALIBRATORS))}")
    cls = CALIBRATORS[kind]
    allowed = cls.option_names()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for calibrator {kind!r}; allowed: {', '.join(allowed) or 'none'}"
        )
    return cls(spec, **options)
