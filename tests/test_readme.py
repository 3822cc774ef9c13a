"""The README's Python snippets run as written.

Every ```python block of README.md runs, top to bottom, in a fresh interpreter (`sys.executable -c`)
in a temporary directory, offline and on one thread, and must exit 0. A block preceded directly by
the line ``<!-- readme-test: skip (REASON) -->`` is not run (for the few that would train the GPT-2
testbed, ~20 minutes); ``<!-- readme-test: slow -->`` marks one `pytest.mark.slow`. Test ids name
the section heading the block sits under.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*readme-test:\s*(skip|slow)\b(.*?)-->\s*$")


def readme_blocks(text: str) -> list[tuple[str, str, str | None, str]]:
    """(heading, code, marker, reason) for every ```python block, in order; marker is "skip", "slow" or None."""
    blocks, heading, marker, reason = [], "(top)", None, ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise ValueError(f"README.md: unclosed code block at line {i + 1}")
            if fence.group(1) == "python":
                blocks.append((heading, "\n".join(lines[i + 1 : end]) + "\n", marker, reason))
            marker, reason, i = None, "", end + 1
            continue
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        found = _MARKER.match(line.strip())
        if found:
            marker, reason = found.group(1), found.group(2).strip(" ()")
        elif line.strip():
            marker, reason = None, ""  # the comment must come directly before its block
        i += 1
    return blocks


def _params() -> list:
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    params = []
    for heading, code, marker, reason in blocks:
        seen[heading] = seen.get(heading, 0) + 1
        label = heading if seen[heading] == 1 else f"{heading} #{seen[heading]}"
        marks = []
        if marker == "skip":
            marks.append(pytest.mark.skip(reason=f"README says: {reason or 'skip'}"))
        elif marker == "slow":
            marks.append(pytest.mark.slow)
        params.append(pytest.param(code, id=label, marks=marks))
    return params


def test_blocks_are_found():
    text = "# T\n\n## A\n\n```python\nx = 1\n```\n\n<!-- readme-test: skip (trains) -->\n```python\ny\n```\n"
    assert readme_blocks(text) == [("A", "x = 1\n", None, ""), ("A", "y\n", "skip", "trains")]
    assert len(_params()) >= 7  # README.md has its snippets


@pytest.mark.parametrize("code", _params())
def test_readme_block_runs(code: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MPLBACKEND": "Agg",
        # The library's own cache (the GPT-2 testbed): a block must not find or train one.
        "QUANTPILOT_CACHE": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, (
        f"README block failed (exit {done.returncode}):\n{code}\n--- stderr ---\n{done.stderr[-4000:]}"
    )


class _TokenModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(32, 8)
        self.proj = torch.nn.Linear(8, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(input_ids) * attention_mask.unsqueeze(-1))


def test_compare_with_onnxruntime_takes_a_batch_encoding(tmp_path: Path) -> None:
    """The engines snippet passes a tokenizer's `BatchEncoding` (a `UserDict`, not a dict) as the batch."""
    pytest.importorskip("onnxruntime")
    from transformers import BatchEncoding

    import quantpilot as qp

    torch.manual_seed(0)
    ids = torch.randint(0, 32, (2, 6))
    batch = BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    qmodel = qp.quantize(_TokenModel(), "int8-static")
    with qp.calibrate(qmodel):
        qmodel(**batch)
    qp.freeze(qmodel)
    path = qp.export_onnx(qmodel, dict(batch), tmp_path / "m.onnx")
    report = qp.export.compare_with_onnxruntime(qmodel, path, batch)
    assert report.points >= 1 and report.max_code_difference <= 1
    assert report.max_output_error <= 1e-4 * max(report.output_scale, 1.0)


def test_the_readme_recipe_files_load_and_stream(tmp_path):
    # The README's ```yaml blocks are recipe files users save and pass to --recipe: each must load, and
    # the language-model one must take the streamed (block-by-block) path the README promises.
    from quantpilot.recipe import Recipe
    from quantpilot.streaming.blocks import check_streamable

    text = README.read_text(encoding="utf-8")
    found = re.findall(r"^( *)```yaml\n(.*?)^\1```", text, flags=re.S | re.M)
    assert found, "README.md has no ```yaml recipe block"
    for indent, body in found:
        path = tmp_path / "recipe.yaml"
        path.write_text("\n".join(line[len(indent) :] for line in body.splitlines()) + "\n", encoding="utf-8")
        recipe = Recipe.from_yaml(path)
        check_streamable(recipe)
        if recipe.name == "gptq-q4_0-q6k":  # llama.cpp's Q4_0 layout: Q4_0 layers, the table on Q6_K's grid
            assert [s.name for s in recipe.steps] == ["gptq", "quantize_embeddings"]
            assert recipe.weights.symmetric and recipe.steps[1].superblock == 256
