"""The report as terminal text: the verdict and the candidate table (what `quantpilot auto` prints).

Example:
    >>> print(render_text({"verdict": "bf16: 2.0x FP32", "candidates": []}))
    bf16: 2.0x FP32
"""

from __future__ import annotations

from typing import Any

from .html import _get, _num

__all__ = ["render_text"]


def _cell(value: Any, spec: str, suffix: str = "") -> str:
    number = _num(value)
    return "-" if number is None else f"{number:{spec}}{suffix}"


def _interval(interval: Any) -> str:
    if isinstance(interval, list | tuple) and len(interval) == 2 and None not in map(_num, interval):
        return f"[{_num(interval[0]):.6g}, {_num(interval[1]):.6g}]"
    return ""


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    base = report.get("float") if isinstance(report.get("float"), dict) else {}
    fp32 = _num(_get(base, "latency_ms", "fp32"))
    float_mib = None if _num(base.get("size_bytes")) is None else _num(base.get("size_bytes")) / 2**20
    listed = {c.get("name") for c in report.get("candidates") or [] if isinstance(c, dict)}
    for kind in ("fp32", "bf16"):
        if kind in listed:  # the autopilot lists the float model and its bf16 cast as candidates already
            continue
        latency = _num(_get(base, "latency_ms", kind))
        if base and (latency is not None or kind == "fp32"):
            metric = base.get("metric") if kind == "fp32" else None
            speed = fp32 / latency if fp32 and latency else None
            interval = _interval(base.get("interval")) if kind == "fp32" else ""
            size = _cell(float_mib if kind == "fp32" else None, ".1f")
            rows.append([f"float {kind}", _cell(metric, ".6g"), interval, "-", size, _cell(latency, ".2f"),
                         _cell(speed, ".2f", "x"), "-", "baseline"])  # fmt: skip
    for c in report.get("candidates") or []:
        if not isinstance(c, dict):
            continue
        size = _num(c.get("size_bytes"))
        ok = {True: "yes", False: "no"}.get(c.get("within_budget"), "-")
        chosen = c.get("chosen") or (report.get("chosen") is not None and c.get("name") == report.get("chosen"))
        name = ("* " if chosen else "") + str(c.get("name", "?"))
        mib = _cell(None if size is None else size / 2**20, ".1f")
        rows.append([name, _cell(c.get("metric"), ".6g"), _interval(c.get("interval")),
                     _cell(c.get("holdout_metric"), ".6g"), mib, _cell(c.get("latency_ms"), ".2f"),
                     _cell(c.get("speedup_vs_fp32"), ".2f", "x"), _cell(c.get("speedup_vs_bf16"), ".2f", "x"),
                     ok])  # fmt: skip
    return rows


def render_text(report: dict[str, Any]) -> str:
    """The verdict line, then the candidate table (`*` marks the chosen one; latency on the target engine).

    Example:
        >>> text = render_text({"verdict": "v", "candidates": [{"name": "int8", "metric": 0.99, "chosen": True}]})
        >>> text.splitlines()[-1].split()[:3]
        ['*', 'int8', '0.99']
    """
    lines = [str(report.get("verdict") or "no verdict recorded")]
    rows = _rows(report)
    if rows:
        head = ["candidate", "metric", "95% interval", "held-out", "MiB", "ms", "vs FP32", "vs bf16", "in budget"]
        table = [head] + rows
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        target = report.get("target")
        lines.append("")
        lines.append(f"latency on {target}" if target else "latency on the target engine")
        for row in table:
            lines.append(
                "  ".join(
                    cell.ljust(w) if i == 0 else cell.rjust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                ).rstrip()
            )
    return "\n".join(lines)
