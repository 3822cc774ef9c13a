"""The calibrators demo runs end to end on the bundled MiniLM and reports every calibrator."""

from __future__ import annotations

import math

import pytest

from quantpilot_testbed.demos import calibrators as demo


@pytest.mark.slow
def test_demo_prints_every_calibrator_and_saves_the_figure(tmp_path, capsys):
    rows = demo.main(["--out", str(tmp_path)])
    out = capsys.readouterr().out
    figure = tmp_path / "activation_histogram.png"
    assert figure.exists() and figure.stat().st_size > 10_000
    assert demo.LAYER in out
    for name, _, _ in demo.CALIBRATORS:
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    assert [r["name"] for r in rows] == [name for name, _, _ in demo.CALIBRATORS]
    by_name = {r["name"]: r for r in rows}
    peak = by_name["minmax"]["max"]
    for row in rows:
        assert math.isfinite(row["sqnr_db"]) and row["sqnr_db"] > 0
        assert row["min"] == -row["max"] and 0 < row["max"] <= peak  # symmetric int8, inside the data
    # The GELU output is heavy-tailed: the clipping calibrators pick ranges far below its maximum.
    assert by_name["percentile 99.9"]["max"] < 0.5 * peak
    assert by_name["entropy"]["max"] < 0.5 * peak
