"""A local Hugging Face checkpoint read without loading it: the skeleton on the meta device, tensors on demand.

`Checkpoint(hf_dir)` reads `config.json` and the safetensors index (or the one `model.safetensors`),
builds the model with `transformers.AutoModelForCausalLM.from_config` under `torch.device("meta")`
(no storage: a 70B skeleton costs nothing) and finds the decoder blocks generically: the longest
`nn.ModuleList` whose members are all of one class. Tensors are read one module at a time with
`safetensors.safe_open` (memory-mapped: only the tensors asked for are read) and *assigned* into the
skeleton, so their dtype is the file's (a bf16 checkpoint stays bf16).

Example:
    >>> import tempfile
    >>> from quantpilot.testing import tiny_causal_lm
    >>> d = tempfile.mkdtemp(); tiny_causal_lm("llama").save_pretrained(d)
    >>> ckpt = Checkpoint(d)
    >>> ckpt.blocks_name, len(ckpt.blocks)
    ('model.layers', 2)
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path

import safetensors
import torch
from torch import nn

__all__ = ["Checkpoint", "find_block_list"]

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


def find_block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks: the longest `nn.ModuleList` whose members all share one class.

    Raises:
        ValueError: no such list (an unknown layout), naming the lists that were found.

    Example:
        >>> net = nn.Sequential(nn.Embedding(4, 2)); net.layers = nn.ModuleList([nn.Linear(2, 2)] * 3)
        >>> find_block_list(net)[0]
        'layers'
    """
    best: tuple[str, nn.ModuleList] | None = None
    seen = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        seen.append(f"{name} ({len(module)})")
        if len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.ModuleList of identical decoder blocks (lists found: {seen or 'none'}); "
            "streamed quantization needs the usual transformer layout (model.layers, transformer.h, ...)"
        )
    return best


class Checkpoint:
    """A Hugging Face causal-LM folder: its meta skeleton, its blocks and its tensors read on demand.

    Args:
        hf_dir: a folder with `config.json` and `model.safetensors` or a sharded
            `model.safetensors.index.json`.

    Raises:
        ValueError: not such a folder, or a layout without decoder blocks.

    Example:
        >>> import tempfile
        >>> from quantpilot.testing import tiny_causal_lm
        >>> d = tempfile.mkdtemp(); tiny_causal_lm("gpt2").save_pretrained(d)
        >>> ckpt = Checkpoint(d)
        >>> ckpt.block_prefix(1), ckpt.file_key("lm_head.weight")  # tied to the token table: not in the file
        ('transformer.h.1.', None)
        >>> ckpt.load_block(1).mlp.c_fc.weight.device.type
        'cpu'
        >>> ckpt.free_block(1); ckpt.blocks[1].mlp.c_fc.weight.device.type
        'meta'
        >>> list(ckpt.read(["transformer.ln_f.bias"]))
        ['transformer.ln_f.bias']
        >>> with ckpt.without_blocks() as outside:
        ...     len(outside.transformer.h)
        0
    """

    def __init__(self, hf_dir: str | Path) -> None:
        self.hf_dir = Path(hf_dir)
        if not (self.hf_dir / "config.json").is_file():
            raise ValueError(f"{self.hf_dir} has no config.json: give a local Hugging Face model folder")
        self.weight_map = _weight_map(self.hf_dir)
        self.model = _skeleton(self.hf_dir)
        self.blocks_name, self.blocks = find_block_list(self.model)
        self._key_prefix = _key_prefix(self.model, self.weight_map)
        # transformers renames some checkpoint keys on load (GPT-NeoX's embed_out -> lm_head): the same here.
        rules = _rename_rules(self.model)
        self._renamed = {_renamed(rules, key): key for key in self.weight_map}
        self._pristine: dict[int, nn.Module] = {}

    def block_prefix(self, index: int) -> str:
        """Qualified-name prefix of block `index` (`model.layers.3.`); see the class example."""
        return f"{self.blocks_name}.{index}."

    def file_key(self, name: str) -> str | None:
        """The checkpoint's name for the model's tensor `name` (None when the file lacks it); see the class example."""
        for key in (name, self._key_prefix + name, name.removeprefix(self._key_prefix)):
            if key in self.weight_map:
                return key
        return self._renamed.get(name)

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The tensors `names` (model names) read from the files; names the files lack are left out (class example)."""
        by_file: dict[str, list[tuple[str, str]]] = {}
        for name in names:
            key = self.file_key(name)
            if key is not None:
                by_file.setdefault(self.weight_map[key], []).append((name, key))
        out = {}
        for fname, pairs in by_file.items():
            with safetensors.safe_open(str(self.hf_dir / fname), framework="pt") as f:
                for name, key in pairs:
                    out[name] = f.get_tensor(key)
        return out

    def load_block(self, index: int) -> nn.Module:
        """Block `index` with its weights from the files (assigned: the file's dtype), in eval mode (class example)."""
        block = self.blocks[index]
        # Quantizing changes the block in place; the meta copy (no storage) goes back in its place when freed.
        self._pristine[index] = copy.deepcopy(block)
        state = block.state_dict(keep_vars=True)
        prefix = self.block_prefix(index)
        tensors = self.read([prefix + key for key in state])
        missing = [key for key in state if prefix + key not in tensors and state[key].is_meta]
        if missing:
            raise ValueError(f"{self.hf_dir} lacks the tensors {[prefix + k for k in missing[:3]]} of block {index}")
        block.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items()}, strict=False, assign=True)
        return block.eval()

    def free_block(self, index: int) -> None:
        """Put block `index` back on the meta device, so its storage can be released (class example)."""
        self.blocks[index] = self._pristine.pop(index)

    def free_outside(self) -> None:
        """Release the parts outside the blocks (token table, head): once caught and written, nothing reads them.

        Example:
            >>> import tempfile
            >>> from quantpilot.testing import tiny_causal_lm
            >>> d = tempfile.mkdtemp(); tiny_causal_lm("gpt2").save_pretrained(d)
            >>> ckpt = Checkpoint(d); ckpt.free_outside(); ckpt.model.transformer.wte.weight.is_meta
            True
        """
        with self.without_blocks() as model:
            model.to_empty(device="meta")

    @contextlib.contextmanager
    def without_blocks(self) -> Iterator[nn.Module]:
        """The skeleton with an empty block list (embeddings, final norm, head), restored on exit (class example)."""
        parent_name, _, leaf = self.blocks_name.rpartition(".")
        parent = self.model.get_submodule(parent_name)
        setattr(parent, leaf, nn.ModuleList())
        try:
            yield self.model
        finally:
            setattr(parent, leaf, self.blocks)


def _weight_map(hf_dir: Path) -> dict[str, str]:
    if (hf_dir / _INDEX).is_file():
        try:
            weight_map = json.loads((hf_dir / _INDEX).read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{hf_dir / _INDEX} is not a safetensors index ({err})") from None
        return dict(weight_map)
    if (hf_dir / _SINGLE).is_file():
        with safetensors.safe_open(str(hf_dir / _SINGLE), framework="pt") as f:
            return dict.fromkeys(f.keys(), _SINGLE)
    raise ValueError(
        f"{hf_dir} has neither {_SINGLE} nor {_INDEX}: streamed quantization reads safetensors checkpoints "
        "(save the model with save_pretrained(..., safe_serialization=True))"
    )


def _skeleton(hf_dir: Path) -> nn.Module:
    try:
        import transformers
    except ImportError:
        raise ImportError("streamed quantization builds transformers models: pip install 'quantpilot[hf]'") from None
    try:
        config = transformers.AutoConfig.from_pretrained(hf_dir, local_files_only=True)
        with torch.device("meta"):  # no storage: the file supplies every tensor, one block at a time
            model = transformers.AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"cannot build a causal LM from {hf_dir / 'config.json'}: {' '.join(str(err).split())}"
        ) from None
    return model.eval()


def _rename_rules(model: nn.Module) -> list[tuple[str, str]]:
    """transformers' own checkpoint-key renamings for this model, as (regex, replacement); none in older versions."""
    try:
        from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping
    except ImportError:
        return []
    rules = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    return [(src, t.target_patterns[0]) for t in rules if len(t.target_patterns) == 1 for src in t.source_patterns]


def _renamed(rules: list[tuple[str, str]], key: str) -> str:
    for source, target in rules:
        key = re.sub(source, target, key)
    return key


def _key_prefix(model: nn.Module, weight_map: dict[str, str]) -> str:
    """The base-model prefix the file's names lack or add (GPT-2 checkpoints saved without `transformer.`)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    return f"{prefix}." if prefix else ""
