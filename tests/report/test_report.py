"""quantpilot.report: the page renders every section from a schema dict, tolerates missing keys, writes atomically,
and a real browser (headless Chromium) draws it."""

import copy
import json
import re
import shutil
import subprocess

import pytest

from quantpilot.report import render_html, write_html, write_json
from tests.report.sample import SAMPLE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_every_section_is_rendered_inline():
    page = render_html(SAMPLE)
    for needle in ("int8-static+matmul on openvino", "Candidates", "float (fp32)", "Per-layer sensitivity",
                   "Activation histograms", "calibrated range", "Decision trail", "Reproduce", "reloaded",
                   "[0.992, 0.994]", "2.10×", "eval_fn calls"):  # fmt: skip
        assert needle in page, needle
    assert page.count("<svg") == 2  # both charts inline
    assert "<script" not in page and not re.search(r"(src|href)=['\"]?(https?:|//)", page)  # nothing fetched
    assert "&lt;on this CPU&gt;" in page  # user text escaped


@pytest.mark.parametrize(
    "report",
    [{}, {"verdict": None, "candidates": None}, {"candidates": [{"name": "x"}], "float": "junk", "budget": 3},
     {"histograms": [{"layer": "a", "bins": [0, 1], "counts": [1, 2, 3]}], "sensitivity": [{"harm": "abc"}]}],
    ids=["empty", "nulls", "malformed", "bad-charts"],
)  # fmt: skip
def test_missing_or_malformed_keys_still_render(report):
    assert "<h1>" in render_html(report)


def test_not_a_dict_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="report must be a dict"):
        write_html(["x"], tmp_path / "r.html")  # type: ignore[arg-type]


def test_json_is_strict_and_never_overwrites(tmp_path):
    path = write_json(SAMPLE, tmp_path / "report.json")
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert data["candidates"][3]["metric"] is None and data["chosen"] == "int8-static+matmul"
    with pytest.raises(ValueError, match="already exists"):
        write_json(SAMPLE, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_failed_render_leaves_nothing(tmp_path, monkeypatch):
    import quantpilot.report.html as page

    monkeypatch.setattr(page, "render_html", lambda r: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        page.write_html(SAMPLE, tmp_path / "report.html")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run does)")
def test_headless_chromium_draws_the_page(tmp_path):
    from PIL import Image

    report = copy.deepcopy(SAMPLE)
    html = write_html(report, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
        html.resolve().as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 2000)
    low, high = image.getextrema()
    assert high - low > 100  # text and bars on white, not a blank page
    dark = sum(image.histogram()[:128]) / (image.size[0] * image.size[1])
    assert 0.005 < dark < 0.5  # some ink, and not an all-black failure page
