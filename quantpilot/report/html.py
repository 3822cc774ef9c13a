"""`report.html`: one self-contained page (inline CSS and SVG, no scripts, no network) proving the autopilot's choice.

Sections, each rendered only when the report has its data (a missing or malformed key never fails):
the one-line verdict; the run's facts (target, CPU, budget, data counts, evaluations, wall time); the
candidate table (metric ± 95 % interval, held-out metric, size, latency on the target against FP32
and bf16 on the same engine); the deployed artifact re-checked in its runtime; the per-layer
sensitivity chart; activation histograms with calibrated ranges; the decision trail; the commands that
reproduce the run.

Example:
    >>> page = render_html({"verdict": "bf16 wins", "candidates": []})
    >>> "<h1" in page and "bf16 wins" in page and "<script" not in page
    True
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from .charts import histograms_svg, sensitivity_svg

__all__ = ["render_html", "write_html"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1150px;
color:#222;background:#fff;padding:0 1em}
h1{font-size:1.5em;padding:.6em .8em;background:#eaf4ea;border-left:6px solid #27ae60;margin-bottom:.3em}
h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.88em;width:100%}
th,td{border:1px solid #ddd;padding:.3em .5em;text-align:right;vertical-align:top}
th{background:#f4f6f8}td{white-space:nowrap}td.l,th.l{text-align:left;white-space:normal}td.l{overflow-wrap:anywhere}td.l:last-child{min-width:16em}
tr.chosen td{background:#fff6d5;font-weight:600}tr.baseline td{background:#f7f7f7;color:#555}
.no{color:#c0392b}.yes{color:#27ae60}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:.15em 1.2em;font-size:.92em}
.facts dt{color:#666}.facts dd{margin:0}
pre{background:#f4f6f8;padding:.8em;overflow-x:auto;font-size:.85em}
.note{color:#666;font-size:.88em}svg{max-width:100%;height:auto}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value: Any, digits: int = 4) -> str:
    number = _num(value)
    return "–" if number is None else f"{number:.{digits}g}"


def _metric(value: Any, interval: Any) -> str:
    """`0.9931 [0.9912, 0.9950]`: the metric and its 95 % bootstrap interval when there is one."""
    text = _fmt(value, 6)  # six digits: a cosine of 0.999985 must not read as 1
    if isinstance(interval, list | tuple) and len(interval) == 2 and None not in map(_num, interval):
        text += f"<br><span class='note'>[{_fmt(interval[0], 6)}, {_fmt(interval[1], 6)}]</span>"
    return text


def _size(value: Any) -> str:
    number = _num(value)
    if number is None:
        return "–"
    return f"{number / 2**20:.1f} MiB" if number >= 2**20 else f"{number / 2**10:.1f} KiB"


def _ratio(value: Any) -> str:
    number = _num(value)
    return "–" if number is None else f"{number:.2f}×"


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _facts(report: dict[str, Any]) -> str:
    budget = report.get("budget") if isinstance(report.get("budget"), dict) else {}
    rows = []
    if report.get("target") is not None:
        rows.append(("target engine", _e(report["target"])))
    if report.get("cpu") is not None:
        isa = report.get("isa")
        flags = ", ".join(map(str, isa)) if isinstance(isa, list | tuple) else ""
        rows.append(("CPU", _e(report["cpu"]) + (f" <span class='note'>({_e(flags)})</span>" if flags else "")))
    if budget.get("value") is not None:
        value = _num(budget.get("value"))
        kind = "absolute" if budget.get("absolute") else "relative"
        shown = f"{value:g}" if budget.get("absolute") or value is None else f"{value * 100:g} %"
        better = "lower" if budget.get("lower_is_better") else "higher"
        rows.append(("accuracy budget", f"{_e(shown)} ({kind}; {better} metric is better)"))
    data = report.get("data")
    if isinstance(data, dict):
        rows.append(("data used", _e(", ".join(f"{k}: {v}" for k, v in data.items()))))
    if report.get("evaluations") is not None:
        rows.append(("eval_fn calls", _e(report["evaluations"])))
    if _num(report.get("wall_s")) is not None:
        rows.append(("wall time", f"{_num(report['wall_s']):.1f} s"))
    items = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return f"<dl class='facts'>{items}</dl>" if rows else ""


def _baseline_rows(report: dict[str, Any]) -> list[str]:
    """FP32 and bf16 on the same engine: the rows every candidate is measured against."""
    base = report.get("float")
    if not isinstance(base, dict):
        return []
    rows = []
    listed = {c.get("name") for c in report.get("candidates") or [] if isinstance(c, dict)}
    for kind in ("fp32", "bf16"):
        if kind in listed:  # the autopilot lists the float model and its bf16 cast as candidates already
            continue
        latency = _get(base, "latency_ms", kind)
        if latency is None and kind == "bf16":
            continue
        metric = _metric(base.get("metric"), base.get("interval")) if kind == "fp32" else "–"
        fp32 = _num(_get(base, "latency_ms", "fp32"))
        lat = _num(latency)
        speed = _ratio(fp32 / lat) if fp32 and lat else "–"
        rows.append(
            f"<tr class='baseline'><td class='l'>float ({kind})</td><td>{metric}</td><td>–</td>"
            f"<td>{_size(base.get('size_bytes')) if kind == 'fp32' else '–'}</td><td>{_fmt(latency)}</td>"
            f"<td>{speed}</td><td>–</td><td>–</td><td class='l'>baseline on the target engine</td></tr>"
        )
    return rows


def _candidate_row(c: dict[str, Any], chosen_name: Any) -> str:
    chosen = bool(c.get("chosen")) or (chosen_name is not None and c.get("name") == chosen_name)
    within = c.get("within_budget")
    ok = "–" if within is None else ("<span class='yes'>yes</span>" if within else "<span class='no'>no</span>")
    name = _e(c.get("name", "?")) + (" ★" if chosen else "")
    return (
        f"<tr class='{'chosen' if chosen else ''}'><td class='l'>{name}</td>"
        f"<td>{_metric(c.get('metric'), c.get('interval'))}</td><td>{_fmt(c.get('holdout_metric'), 6)}</td>"
        f"<td>{_size(c.get('size_bytes'))}</td><td>{_fmt(c.get('latency_ms'))}</td>"
        f"<td>{_ratio(c.get('speedup_vs_fp32'))}</td><td>{_ratio(c.get('speedup_vs_bf16'))}</td>"
        f"<td>{ok}</td><td class='l'>{_e(c.get('why', ''))}</td></tr>"
    )


def _candidates(report: dict[str, Any]) -> str:
    candidates = [c for c in report.get("candidates") or [] if isinstance(c, dict)]
    rows = _baseline_rows(report) + [_candidate_row(c, report.get("chosen")) for c in candidates]
    if not rows:
        return ""
    head = (
        "<tr><th class='l'>candidate</th><th>metric [95 % interval]</th><th>held-out metric</th><th>size</th>"
        "<th>latency ms</th><th>vs FP32</th><th>vs bf16</th><th>within budget</th><th class='l'>why</th></tr>"
    )
    return f"<h2>Candidates</h2><table>{head}{''.join(rows)}</table>"


def _deployed(report: dict[str, Any]) -> str:
    d = report.get("deployed")
    if not isinstance(d, dict) or not d:
        return ""
    return (
        "<h2>Deployed artifact, reloaded in its runtime</h2><dl class='facts'>"
        f"<dt>format</dt><dd>{_e(d.get('format', '–'))}</dd><dt>path</dt><dd>{_e(d.get('path', '–'))}</dd>"
        f"<dt>metric before export</dt><dd>{_fmt(d.get('metric'), 6)}</dd>"
        f"<dt>metric after reload</dt><dd>{_fmt(d.get('reloaded_metric'), 6)}</dd></dl>"
    )


def _chart(title: str, svg: str | None, present: bool, caption: str) -> str:
    if not present:
        return ""
    body = (
        svg if svg is not None else "<p class='note'>no chart: install matplotlib (pip install 'quantpilot[plot]')</p>"
    )
    return f"<h2>{title}</h2><p class='note'>{caption}</p>{body}"


def _trail(report: dict[str, Any]) -> str:
    steps = [s for s in report.get("trail") or [] if isinstance(s, dict)]
    if not steps:
        return ""
    rows = "".join(
        f"<tr><td class='l'>{_e(s.get('step', ''))}</td><td class='l'>{_e(s.get('decision', ''))}</td>"
        f"<td class='l'>{_e(s.get('why', ''))}</td></tr>"
        for s in steps
    )
    head = "<tr><th class='l'>step</th><th class='l'>decision</th><th class='l'>why</th></tr>"
    return f"<h2>Decision trail</h2><table>{head}{rows}</table>"


def _commands(report: dict[str, Any]) -> str:
    commands = [str(c) for c in report.get("commands") or []]
    if not commands:
        return ""
    return f"<h2>Reproduce</h2><pre>{_e(chr(10).join(commands))}</pre>"


def render_html(report: dict[str, Any]) -> str:
    """The report page as one HTML string: inline CSS and SVG charts, no scripts, nothing fetched.

    Example:
        >>> "Decision trail" in render_html({"trail": [{"step": "bf16", "decision": "kept", "why": "fast"}]})
        True
    """
    if not isinstance(report, dict):
        raise ValueError(f"report must be a dict (AutoResult.report), got {type(report).__name__}")
    verdict = report.get("verdict") or "no verdict recorded"
    sensitivity = report.get("sensitivity") or []
    histograms = report.get("histograms") or []
    parts = [
        f"<h1>{_e(verdict)}</h1>",
        _facts(report),
        _candidates(report),
        _deployed(report),
        _chart(
            "Per-layer sensitivity", sensitivity_svg(sensitivity), bool(sensitivity),
            "Harm of quantizing only that layer (most harmful first): the first kept in float. "
            + _e(report.get("sensitivity_measure") or ""),
        ),
        _chart(
            "Activation histograms of the worst layers", histograms_svg(histograms), bool(histograms),
            "Calibration activations (log counts); dashed lines: the range the calibrator chose.",
        ),
        _trail(report),
        _commands(report),
    ]  # fmt: skip
    title = _e(f"quantpilot report: {verdict}")
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(p for p in parts if p)}"
        "<p class='note'>written by quantpilot</p></body></html>\n"
    )


def write_html(report: dict[str, Any], path: str | Path) -> Path:
    """Write `render_html(report)` to `path` atomically (whole or not at all; never over an existing file).

    Example:
        >>> import tempfile, pathlib
        >>> p = write_html({"verdict": "ok"}, pathlib.Path(tempfile.mkdtemp()) / "report.html")
        >>> p.read_text().startswith("<!DOCTYPE html>")
        True
    """
    page = render_html(report)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(path)
