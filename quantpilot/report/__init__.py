"""The autopilot's reports: `report.html` (self-contained page with charts) and `report.json` (the same data).

`qp.autoquantize(...).save(out)` calls both; they also work on any dict of the report schema (README,
"report.json"), rendering only what is present.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_html({"verdict": "int8-static: 2.1x bf16"}, folder / "report.html").name
    'report.html'
"""

from .html import render_html, write_html
from .json_report import to_jsonable, write_json
from .text import render_text

__all__ = ["render_html", "render_text", "write_html", "write_json", "to_jsonable"]
