"""The output of a streamed run: one safetensors shard per block, written whole, and a resumable record.

Each block's shard appears only whole (`quantpilot.atomic`: written under a temporary name, then
renamed). After each shard a progress record (`.quantpilot-stream/state-NNNNN.json`: the blocks
done, their layer entries and checksums, what the steps chose) and, for data-fitted recipes, the
calibration activations that enter the next block (`carry-...safetensors`) are written the same
way, then the previous ones removed. A run started again on the same folder with the same
checkpoint, recipe and calibration data resumes after the last finished block; anything else is
refused. The index and `quantpilot.json` are written last, so `quantpilot.load` never sees a
half-written model, and the progress folder is removed.

Example:
    >>> import tempfile
    >>> w = ShardWriter(tempfile.mkdtemp(), shards=3, fingerprint={"x": 1})
    >>> w.shard_name(0), w.next_shard
    ('model-00001-of-00003.safetensors', 0)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ..atomic import atomic_path
from ..load_checks import tensor_checksums
from ..persistence import MAP_FILE, SHARD_INDEX, layer_map, map_record
from ..recipe import Recipe

__all__ = ["ShardWriter", "STATE_DIR"]

STATE_DIR = ".quantpilot-stream"


class ShardWriter:
    """Writes shards in order into `out` and records progress so that a killed run can resume.

    Args:
        out: the output folder (new, empty, or holding an unfinished run of the same job).
        shards: how many shards the model takes (blocks + 1 for the parts outside them).
        fingerprint: what identifies the job (checkpoint, recipe, data); a different one is refused.
        rank: only rank 0 writes shards and records; every rank writes its own activations.

    Raises:
        ValueError: `out` holds other files, or an unfinished run of another job.
    """

    def __init__(self, out: str | Path, shards: int, fingerprint: dict[str, Any], rank: int = 0) -> None:
        self.out, self.shards, self.rank = Path(out), shards, rank
        self.state_dir = self.out / STATE_DIR
        self.state: dict[str, Any] = {"fingerprint": fingerprint, "done": 0, "layers": {}, "checksums": {},
                                      "choices": {}, "weight_map": {}}  # fmt: skip
        previous = self._latest("state-*.json")
        if previous is not None:
            state = json.loads(previous.read_text(encoding="utf-8"))
            if state.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"{self.out} holds an unfinished streamed run of another checkpoint, recipe or calibration set; "
                    "give a new --out folder (or the same arguments to resume it)"
                )
            self.state = state
        elif self.out.is_dir() and any(p.name != STATE_DIR for p in self.out.iterdir()):
            raise ValueError(f"{self.out} exists and is not empty; choose a new folder (nothing is overwritten)")

    @property
    def next_shard(self) -> int:
        """Index of the first shard not written yet (0 on a fresh run); see the module example."""
        return int(self.state["done"])

    def shard_name(self, index: int) -> str:
        """The file name of shard `index` (0-based), Hugging Face style.

        Example:
            >>> import tempfile
            >>> ShardWriter(tempfile.mkdtemp(), shards=2, fingerprint={}).shard_name(1)
            'model-00002-of-00002.safetensors'
        """
        return f"model-{index + 1:05d}-of-{self.shards:05d}.safetensors"

    def _latest(self, pattern: str) -> Path | None:
        found = sorted(self.state_dir.glob(pattern)) if self.state_dir.is_dir() else []
        return found[-1] if found else None

    def carried(self) -> list[torch.Tensor] | None:
        """This rank's activations saved after the last finished shard (None if there are none).

        Example:
            >>> import tempfile
            >>> ShardWriter(tempfile.mkdtemp(), shards=2, fingerprint={}).carried() is None
            True
        """
        path = self.state_dir / f"carry-rank{self.rank}-{self.next_shard:05d}.safetensors"
        if not path.is_file():
            return None
        tensors = safetensors.torch.load_file(str(path))
        return [tensors[str(i)] for i in range(len(tensors))]

    def write(self, module: nn.Module, choices: dict[str, Any], carry: list[torch.Tensor] | None = None) -> None:
        """Write the next shard (`module`'s tensors under its full names) and the progress record.

        Example:
            >>> import tempfile, quantpilot as qp
            >>> w = ShardWriter(tempfile.mkdtemp(), shards=1, fingerprint={})
            >>> w.write(qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), "w8a16")), {})
            >>> w.next_shard
            1
        """
        index = self.next_shard
        if carry is not None:  # every rank keeps its own share of the calibration activations
            path = self.state_dir / f"carry-rank{self.rank}-{index + 1:05d}.safetensors"
            path.unlink(missing_ok=True)  # left by a run killed before its record said so: not part of the result
            with atomic_path(path) as tmp:
                safetensors.torch.save_file({str(i): t.contiguous() for i, t in enumerate(carry)}, str(tmp))
        if self.rank == 0:
            name = self.shard_name(index)
            (self.out / name).unlink(missing_ok=True)  # the same: a shard the record does not count yet
            with atomic_path(self.out / name) as tmp:
                safetensors.torch.save_model(module, str(tmp), metadata={"format": "quantpilot"})
            with safetensors.safe_open(str(self.out / name), framework="pt") as f:
                self.state["weight_map"].update(dict.fromkeys(f.keys(), name))
            self.state["layers"].update(layer_map(module))
            self.state["checksums"].update(tensor_checksums(module.state_dict()))
            for key, value in choices.items():
                _merge_choice(self.state["choices"], key, value)
        self.state["done"] = index + 1
        if self.rank == 0:
            with atomic_path(self.state_dir / f"state-{index + 1:05d}.json") as tmp:
                tmp.write_text(json.dumps(self.state), encoding="utf-8")
        self._drop_older(index + 1)

    def _drop_older(self, keep: int) -> None:
        if not self.state_dir.is_dir():
            return
        pattern = (
            ("state-*.json", f"carry-rank{self.rank}-*.safetensors")
            if self.rank == 0
            else (f"carry-rank{self.rank}-*",)
        )
        for glob in pattern:
            for path in self.state_dir.glob(glob):
                if not path.name.endswith((f"-{keep:05d}.json", f"-{keep:05d}.safetensors")):
                    path.unlink(missing_ok=True)

    def finish(self, model_class: str, recipe: Recipe) -> Path:
        """Write the shard index and the quantpilot map (last), then remove the progress folder.

        Example:
            >>> import tempfile, quantpilot as qp
            >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
            >>> w = ShardWriter(tempfile.mkdtemp() + "/q", shards=1, fingerprint={})
            >>> w.write(qp.freeze(qp.quantize(net, "w8a16")), {})
            >>> qp.load(net, w.finish("Sequential", qp.Recipe.preset("w8a16")))[0].is_frozen
            True
        """
        if self.rank != 0:
            return self.out
        index = {"metadata": {"format": "quantpilot"}, "weight_map": dict(sorted(self.state["weight_map"].items()))}
        with atomic_path(self.out / SHARD_INDEX) as tmp:
            tmp.write_text(json.dumps(index, indent=1), encoding="utf-8")
        record = map_record(model_class, recipe, self.state["layers"], self.state["choices"], self.state["checksums"])
        with atomic_path(self.out / MAP_FILE) as tmp:
            tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return self.out


def _merge_choice(into: dict[str, Any], key: str, value: Any) -> None:
    """Fold one block's step report into the run's: mappings merged entry by entry, lists concatenated."""
    if value is None:
        return
    value = json.loads(json.dumps(value, default=str))  # plain data, as the map stores it
    current = into.get(key)
    if isinstance(current, dict) and isinstance(value, dict):
        for k, v in value.items():
            if isinstance(current.get(k), dict) and isinstance(v, dict):
                current[k].update(v)
            elif isinstance(current.get(k), list) and isinstance(v, list):
                current[k] = current[k] + v
            else:
                current[k] = v
    else:
        into[key] = value
