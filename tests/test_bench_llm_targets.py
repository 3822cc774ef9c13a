"""bench-llm's target verdicts: each of the issue's targets judged from a table's rows (no model runs here)."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_llm.py"


@pytest.fixture(scope="module")
def target_checks():
    spec = importlib.util.spec_from_file_location("bench_llm_under_test", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.target_checks


def _rows(rtn, awq, gptq, w8=100.1):
    return {
        "FP32": {"perplexity": 100.0, "size_mb": 60.0},
        "bf16": {"perplexity": 100.0, "decode_tok_s": 10.0},
        "RTN W8A16": {"perplexity": w8, "decode_tok_s": 12.0},
        "RTN W4A16 g128": {"perplexity": rtn, "kl_to_fp32": 2e-3, "size_mb": 20.0},
        "AWQ W4 g128": {"perplexity": awq, "kl_to_fp32": 0.9e-3},
        "GPTQ W4 g128": {"perplexity": gptq, "kl_to_fp32": 1.5e-3},
        "RTN W4A16 g128 + table W4 g32": {"perplexity": rtn, "size_mb": 9.0},
    }


def _verdict(checks, start):
    (value,) = [ok for label, ok in checks.items() if label.startswith(start)]
    return value


def test_half_the_gap_is_judged_on_the_perplexity_gap(target_checks):
    checks = target_checks(_rows(rtn=102.0, awq=101.0, gptq=101.2))
    assert _verdict(checks, "AWQ W4 g128 closes >= half of RTN W4 g128's perplexity gap") is True
    assert _verdict(checks, "GPTQ W4 g128 closes >= half of RTN W4 g128's perplexity gap") is False
    assert _verdict(checks, "AWQ W4 g128 closes >= half of RTN W4 g128's KL") is True
    assert _verdict(checks, "GPTQ W4 g128 closes >= half of RTN W4 g128's KL") is False


def test_no_rtn_gap_is_a_miss_not_a_pass(target_checks):
    # RTN below FP32 leaves nothing to close: the verdict must not read as met.
    checks = target_checks(_rows(rtn=99.6, awq=99.9, gptq=100.0))
    assert _verdict(checks, "AWQ W4 g128 closes >= half of RTN W4 g128's perplexity gap") is False


def test_size_w8_and_decode_targets(target_checks):
    checks = target_checks(_rows(rtn=102.0, awq=101.0, gptq=101.0, w8=100.6))
    assert _verdict(checks, "RTN W8A16 within 0.5 %") is False
    assert _verdict(checks, "RTN W4A16 g128 checkpoint") is False  # 3x
    assert _verdict(checks, "RTN W4A16 g128 + table W4 g32 checkpoint") is True  # 6.67x
    assert _verdict(checks, "weight-only int8 decode") is True


def test_failed_or_missing_rows_are_skipped(target_checks):
    rows = _rows(rtn=102.0, awq=101.0, gptq=101.0)
    rows["GPTQ W4 g128"] = {"error": "boom"}
    del rows["bf16"]
    labels = " | ".join(target_checks(rows))
    assert "GPTQ" not in labels and "decode" not in labels
    assert target_checks({"bf16": {"perplexity": 1.0}}) == {}
