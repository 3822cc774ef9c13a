"""`AutoResult`: the autopilot's answer (model, recipe, report) and `save`, which writes it all at once.

`save(out)` writes into a hidden sibling folder and renames it into place at the end: `out` appears
complete or not at all. Layout::

    out/recipe.yaml    the chosen recipe (or a note that the answer is not quantized)
    out/model/         qp.save of the quantized model (float answers: its weights as safetensors)
    out/deploy/        what the target engine runs (model.onnx, or a qp.save folder) + engine.json
    out/report.json    the report (schema: quantpilot/auto/report_schema.md)
    out/report.html    the same, rendered by quantpilot.report

Example:
    >>> import tempfile, pathlib
    >>> check_out(pathlib.Path(tempfile.mkdtemp()) / "new").name
    'new'
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import yaml
from torch import nn

from ..persistence import save as save_model
from ..recipe import Recipe

__all__ = ["AutoResult", "check_out"]


def check_out(out: str | Path) -> Path:
    """`out` as a Path if it is new or an empty folder; a one-line ValueError otherwise."""
    out = Path(out)
    if out.is_symlink():
        raise ValueError(f"{out} is a symbolic link; choose a new folder for the results")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder; choose a new or empty folder for the results")
    return out


@dataclass(frozen=True)
class AutoResult:
    """What `autoquantize` returns.

    Attributes:
        model: the chosen model (a frozen quantized model; for a float answer the float model or its bf16
            copy taking float32 inputs).
        recipe: the chosen `Recipe`, or None when the answer is not quantized (bf16 / fp32).
        report: the JSON-able report dict (quantpilot/auto/report_schema.md).
        deploy_dir: the temporary folder holding the exported artifact (copied by `save`).
    """

    model: nn.Module
    recipe: Recipe | None
    report: dict[str, Any]
    deploy_dir: Path
    workdir: Any = field(default=None, repr=False, compare=False)  # the TemporaryDirectory deploy_dir lives in

    def save(self, out: str | Path) -> Path:
        """Write recipe.yaml, model/, deploy/, report.json and report.html into `out`, atomically.

        Raises:
            ValueError: `out` exists and is not an empty folder (nothing is written then).
        """
        out = check_out(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.with_name(f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        staging.mkdir(mode=0o755)
        try:
            self._write(staging)
            check_out(out)  # still free: nothing appeared while we wrote
            if out.exists():
                out.rmdir()
            os.rename(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return out

    def _write(self, folder: Path) -> None:
        if self.recipe is not None:
            self.recipe.to_yaml(folder / "recipe.yaml")
            save_model(self.model, folder / "model")
        else:
            note = {"chosen": self.report.get("chosen"), "recipe": None,
                    "why": "no quantization: " + str(self.report.get("verdict", ""))}  # fmt: skip
            (folder / "recipe.yaml").write_text(yaml.safe_dump(note, sort_keys=False))
            (folder / "model").mkdir()
            state = {k: v.detach().clone().contiguous() for k, v in self.model.state_dict().items()}
            safetensors.torch.save_file(state, str(folder / "model" / "model.safetensors"))
        shutil.copytree(self.deploy_dir, folder / "deploy")
        # The renderers sit a layer above (quantpilot.report reads this package's reports): imported when used.
        from ..report import write_html, write_json

        write_json(self.report, folder / "report.json")
        write_html(self.report, folder / "report.html")
