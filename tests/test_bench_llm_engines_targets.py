"""bench-llm-engines' verdicts from table rows, its calibration text, and llama_tools' errors (no model runs)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("bench_llm_engines")


def _row(name, ppl, bpw, decode=100.0):
    return {"engine": "llama.cpp", "row": name, "ppl": ppl, "bpw": bpw, "mb": 1.0, "prefill": 500.0, "decode": decode}


def test_each_rival_meets_quantpilots_best_row_at_no_more_bits(bench):
    rows = [
        _row("llama.cpp Q4_0 + imatrix", 151.0, 5.7),
        _row("llama.cpp Q4_K_M + imatrix", 150.9, 6.6),
        _row("llama.cpp Q4_0", 150.0, 5.7),  # no imatrix: not the rival
        _row("quantpilot GPTQ (Q4_1)", 151.1, 5.3),
        _row("quantpilot GPTQ+t8 (Q4_1/Q8_0)", 150.8, 5.9, decode=102.0),
    ]
    ours = {"GPTQ": 151.1, "GPTQ+t8": 150.8}
    lines = bench.targets(rows, ours)
    # The best rival (Q4_K_M + imatrix, 6.6 bpw) meets the +t8 row (5.9 bpw, lower ppl, decode 2 % apart) ...
    assert lines[0].startswith("PASS llama.cpp: quantpilot GPTQ+t8") and "Q4_K_M + imatrix" in lines[0]
    # ... and Q4_0 + imatrix (5.7 bpw) the 5.3-bpw row, which has the higher perplexity.
    assert lines[1].startswith("  (also) llama.cpp: quantpilot GPTQ (Q4_1) ppl 151.100 @ 5.300 bpw vs llama.cpp Q4_0 +")
    assert "MISS openvino: no quantpilot rows" in lines[2]
    assert any(line.startswith("PASS llama.cpp export of GPTQ+t8") for line in lines)


@pytest.mark.parametrize("decode,verdict", [(90.0, "MISS"), (96.0, "PASS"), (130.0, "PASS")],
                         ids=["slower", "within-5pct", "faster"])  # fmt: skip
def test_a_slower_decode_is_a_miss_a_faster_one_is_not(bench, decode, verdict):
    rows = [_row("llama.cpp Q4_0 + imatrix", 151.0, 5.7), _row("quantpilot RTN (Q4_1)", 150.0, 5.3, decode=decode)]
    assert bench.targets(rows, {"RTN": 150.0})[0].startswith(f"{verdict} llama.cpp")


def test_calibration_text_is_the_decoded_windows(bench):
    class Tok:
        def decode(self, ids):
            return "".join(chr(97 + i) for i in ids)

    calib = [{"input_ids": torch.tensor([[0, 1]])}, {"input_ids": torch.tensor([[2]])}]
    assert bench.calibration_text(Tok(), calib) == "abc"


def test_a_failing_tool_names_itself_and_its_last_lines(tmp_path):
    tools = _load("llama_tools")
    fake = tmp_path / "llama-quantize"
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint('invalid ftype Q9')\nsys.exit(1)\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match=r"llama-quantize failed \(exit 1\):\ninvalid ftype Q9"):
        tools.LlamaTools(fake, fake).quantize(tmp_path / "a.gguf", tmp_path / "b.gguf", "Q9")


def test_target_lines_carry_the_paired_interval_against_the_rival(bench):
    import numpy as np

    rival = {**_row("llama.cpp Q4_K_M + imatrix", 151.0, 5.7), "nll": np.array([1000.0, 1010.0, 990.0])}
    ours = {**_row("quantpilot AWQ (Q4_1)", 150.0, 5.3), "nll": rival["nll"] - 2.55}  # 1 % lower in every window
    line = bench.targets([rival, ours], {"AWQ": 150.0})[0]
    assert line.startswith("PASS llama.cpp") and "(change [-1.00, -1.00] %, paired 95 %)" in line
