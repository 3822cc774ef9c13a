"""The report's charts as inline SVG: per-layer sensitivity bars and activation histograms with calibrated ranges.

matplotlib (the `[plot]` extra) draws them; without it each chart is replaced by a one-line note, so a
report is still written. Figures are built with `matplotlib.figure.Figure`, never pyplot: no global
state, no display, safe in any thread.

Example:
    >>> svg = sensitivity_svg([{"layer": "fc1", "harm": 0.02}, {"layer": "fc2", "harm": 0.001}])
    >>> svg is None or svg.lstrip().startswith("<svg")
    True
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["sensitivity_svg", "histograms_svg", "MAX_SENSITIVITY_BARS", "MAX_HISTOGRAMS", "MAX_BARS"]

# A readable chart: the layers that matter, not all 200 of a large model.
MAX_SENSITIVITY_BARS = 25
MAX_HISTOGRAMS = 6
MAX_BARS = 128


def _figure(width: float, height: float):
    """A matplotlib Figure (no pyplot), or None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        return None
    return Figure(figsize=(width, height), dpi=96, layout="constrained")


def _svg(fig) -> str:
    """The figure as an `<svg>` element (XML prologue dropped) with real text, for inlining in HTML."""
    import matplotlib

    buffer = io.StringIO()
    # fonttype none keeps labels as <text>: a quarter of the size, and searchable in the page.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "quantpilot"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def sensitivity_svg(sensitivity: Sequence[dict[str, Any]]) -> str | None:
    """Horizontal bars of each layer's harm (metric lost when only it is quantized), most harmful on top.

    Returns None when there is nothing to draw or matplotlib is missing.

    Example:
        >>> sensitivity_svg([]) is None
        True
    """
    rows = [(str(r.get("layer", "?")), _number(r.get("harm"))) for r in sensitivity if isinstance(r, dict)]
    rows = sorted(((name, harm) for name, harm in rows if harm is not None), key=lambda r: -r[1])
    rows = rows[:MAX_SENSITIVITY_BARS]
    if not rows:
        return None
    fig = _figure(9.0, 0.8 + 0.26 * len(rows))
    if fig is None:
        return None
    ax = fig.add_subplot()
    names, harms = [r[0] for r in reversed(rows)], [r[1] for r in reversed(rows)]
    colors = ["#c0392b" if h > 0 else "#7f8c8d" for h in harms]
    ax.barh(range(len(rows)), harms, color=colors)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.set_xlabel("harm when only this layer is quantized")
    ax.axvline(0.0, color="black", linewidth=0.6)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def _edges(bins: list[float], n: int) -> list[float] | None:
    """Bin edges from edges (n + 1 values) or evenly spaced bin centers (n values)."""
    if len(bins) == n + 1:
        return list(bins)
    if len(bins) == n and n > 1:
        half = (bins[-1] - bins[0]) / (n - 1) / 2
        return [b - half for b in bins] + [bins[-1] + half]
    return None


def _coarsen(counts: list[float], edges: list[float]) -> tuple[list[float], list[float]]:
    """At most MAX_BARS bins (adjacent ones summed): a calibrator's 2048 bins draw as a blur and slowly."""
    step = max(1, math.ceil(len(counts) / MAX_BARS))
    return [sum(counts[i : i + step]) for i in range(0, len(counts), step)], edges[::step][
        : math.ceil(len(counts) / step)
    ] + [edges[-1]]


def _histogram(ax, entry: dict[str, Any]) -> bool:
    counts = [_number(c) for c in entry.get("counts") or []]
    bins = [_number(b) for b in entry.get("bins") or []]
    if not counts or None in counts or None in bins:
        return False
    edges = _edges(bins, len(counts))  # type: ignore[arg-type]
    if edges is None:
        return False
    counts, edges = _coarsen(counts, edges)  # type: ignore[arg-type]
    ax.stairs(counts, edges, fill=True, color="#2980b9")  # one path, however many bins
    if max(counts) > 0:  # type: ignore[type-var]
        ax.set_yscale("log")
    span = entry.get("range")
    if isinstance(span, list | tuple) and len(span) == 2 and None not in (lo := [_number(v) for v in span]):
        for edge in lo:
            ax.axvline(edge, color="#c0392b", linestyle="--", linewidth=1.2)
        ax.set_title(f"{entry.get('layer', '?')}\ncalibrated range [{lo[0]:.3g}, {lo[1]:.3g}]", fontsize=8)
    else:
        ax.set_title(str(entry.get("layer", "?")), fontsize=8)
    ax.tick_params(labelsize=7)
    return True


def histograms_svg(histograms: Sequence[dict[str, Any]]) -> str | None:
    """Small multiples: each layer's activation histogram (log counts) with its calibrated range as dashed lines.

    Example:
        >>> histograms_svg([{"layer": "x", "bins": [0, 1], "counts": []}]) is None
        True
    """
    entries = [h for h in histograms if isinstance(h, dict)][:MAX_HISTOGRAMS]
    usable = [h for h in entries if _number((h.get("counts") or [None])[0]) is not None]
    if not usable:
        return None
    cols = min(3, len(usable))
    rows = math.ceil(len(usable) / cols)
    fig = _figure(3.4 * cols, 2.6 * rows)
    if fig is None:
        return None
    drawn = sum(_histogram(fig.add_subplot(rows, cols, i + 1), h) for i, h in enumerate(usable))
    return _svg(fig) if drawn else None
