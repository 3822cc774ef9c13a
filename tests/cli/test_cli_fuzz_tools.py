"""Fuzzing the new sub-commands: any argument list exits 0 or 2 and, on 2, prints exactly one error line."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantpilot.cli import main

FLAGS = ["auto", "export", "benchmark", "evaluate", "inspect", "--model", "--calib-data", "--eval-data",
         "--metric", "--budget", "--target", "--out", "--calib-size", "--threads", "--format", "--engine",
         "--batch", "--seq-len", "--absolute", "--version"]  # fmt: skip
# No value names a real model, so no case starts real work.
VALUES = ["nope", "-3", "0", "1", "1%", "-1%", "abc", "150%", "cosine", "top1", "x:y", "openvino", "onnx", "gguf",
          "", "/", "..", "x.txt", "data.jsonl"]  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.sampled_from(FLAGS + VALUES), max_size=8))
def test_any_argument_list_is_a_clean_exit(argv, capsys, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # relative --out / data paths land in a scratch folder
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("quantpilot: error: "), (argv, err)
