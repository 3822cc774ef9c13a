"""DESIGN's layer table, enforced: a module may import (at module level) only its own layer and the ones below.

Imports inside functions are the sanctioned way for a lower layer to reach an optional or higher piece
lazily (a recipe step calling its method's implementation at run time); module-level imports are what
make a layer depend on another.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "quantpilot"

# Lower numbers sit lower in the table. Helpers that only need torch sit at the bottom.
LAYERS = {
    "batches": 0, "atomic": 0, "surgery": 0, "timing": 0, "machine": 0, "text": 0,
    # The configuration (recipe, steps, calibrator choice) is plain data over spec: DESIGN's "recipe: spec".
    "spec": 1, "calibrator_config": 1, "recipe": 1, "layer_recipe": 1, "steps": 1, "presets": 1, "placement": 1,
    "primitives": 2, "qparams": 2,
    "calibrators": 3, "metrics": 3,
    "nn": 4, "transforms": 4, "distributed": 4,
    "api": 6, "persistence": 6, "load_checks": 6, "install": 6, "deferred": 6, "functional_points": 6, "meta_device": 6,
    "algorithms": 7, "streaming": 7, "analysis": 7, "qat": 7, "summary": 7, "evaluate": 7,
    "export": 8,
    "engines": 9,
    "selection": 10, "selection_calibrators": 10, "selection_stages": 10, "auto": 10,
    "report": 11,
    "cli": 12, "cli_inputs": 12, "cli_stream": 12, "cli_export_llm": 12, "cli_auto": 12, "cli_bench": 12,
    "cli_data": 12, "cli_metrics": 12, "cli_saved": 12, "cli_tools": 12, "saved_dirs": 12, "models": 12,
    "testing": 12, "tasks": 12, "demos": 12, "_moved": 12, "datasets": 12,
}  # fmt: skip


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "quantpilot" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1], -1)


def _imported(path: Path, module: str) -> list[str]:
    """Fully qualified modules (or module.names) imported at the top level of the file."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found += [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
    return found


FILES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


@pytest.mark.parametrize("path", FILES, ids=[_module_name(p) for p in FILES])
def test_module_imports_only_its_layer_and_below(path):
    module = _module_name(path)
    own = _layer(module)
    assert own != -1, f"{module} is in no layer: add it to LAYERS here (and to DESIGN's table)"
    higher = [t for t in _imported(path, module) if (_layer(t) or 0) > own]
    assert not higher, f"{module} (layer {own}) imports higher layers: {higher}"
