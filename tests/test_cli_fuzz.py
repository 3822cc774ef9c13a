"""Fuzzing the command line: any argument list or recipe file gives exit 0/2 and, on 2, one line on stderr."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantpilot.cli import main

FLAGS = ["quantize", "presets", "--model", "--recipe", "--out", "--data", "--calib-size", "--threads", "-h"]
VALUES = ["minilm", "nope", "-3", "0", "1", "400", "many", "int8-static", "w4a16-g128", "", "/", "..", "x.yaml"]


def _assert_clean(code: int, err: str) -> None:
    assert code in (0, 2), code
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("quantpilot: error: "), err


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.sampled_from(FLAGS + VALUES), max_size=8))
def test_any_argument_list_is_a_clean_exit(argv, capsys, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # relative --out / --data land in a scratch folder
    if "quantize" in argv and "--model" in argv:
        argv = [a if a != "minilm" else "nope" for a in argv]  # never start a real (slow) quantization
    try:
        code = main(argv)
    except SystemExit as exit_:  # -h prints help and exits 0
        code = exit_.code
    _assert_clean(code, capsys.readouterr().err)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=string.printable, max_size=120))
def test_any_recipe_file_is_a_clean_exit(text, capsys, tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe")
    recipe = folder / "recipe.yaml"
    recipe.write_text(text)
    # A missing model folder: a recipe that parses still ends in a one-line error, before any loading.
    code = main(["quantize", "--model", str(folder / "no-model"), "--recipe", str(recipe), "--out", str(folder / "q")])
    _assert_clean(code, capsys.readouterr().err)
    assert not (folder / "q").exists()
