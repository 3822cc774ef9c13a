"""`report.json`: the report dict as strict JSON (no NaN/Infinity: they become null), written atomically.

Example:
    >>> import tempfile, pathlib, json
    >>> p = write_json({"format": 1, "wall_s": float("nan")}, pathlib.Path(tempfile.mkdtemp()) / "r.json")
    >>> json.loads(p.read_text())
    {'format': 1, 'wall_s': None}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..atomic import atomic_path

__all__ = ["to_jsonable", "write_json"]


def to_jsonable(value: Any) -> Any:
    """`value` with tuples as lists, numpy/torch scalars and arrays as numbers and lists, NaN/inf as None.

    Strict JSON has no NaN: a reader in another language must be able to parse every report.

    Example:
        >>> to_jsonable({"a": (1.0, float("inf")), 2: "x"})
        {'a': [1.0, None], '2': 'x'}
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy and torch scalars and arrays
        return to_jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    try:
        return to_jsonable(float(value))
    except (TypeError, ValueError):
        return str(value)


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report to `path` as indented strict JSON, atomically (never over an existing file).

    Example:
        >>> import tempfile, pathlib
        >>> write_json({"verdict": "ok"}, pathlib.Path(tempfile.mkdtemp()) / "report.json").name
        'report.json'
    """
    if not isinstance(report, dict):
        raise ValueError(f"report must be a dict (AutoResult.report), got {type(report).__name__}")
    text = json.dumps(to_jsonable(report), indent=1, allow_nan=False, ensure_ascii=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return Path(path)
