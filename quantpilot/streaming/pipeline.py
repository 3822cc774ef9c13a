"""`quantize_checkpoint`: a Hugging Face causal LM quantized block by block from disk, with bounded memory.

The model is never in memory as a whole: its skeleton lives on the meta device, the parts outside
the decoder blocks (token table, final norm, head) are loaded first, the calibration batches run
through them once to catch what block 0 receives (hidden states, rotary position embeddings, the
attention mask: a pre-hook on block 0 stops the forward there), and then each block is loaded from
the memory-mapped safetensors, quantized with the recipe (`quantpilot.streaming.blocks`), written
to its own shard and freed. The calibration activations go from block to block. Peak memory is one
block's working set plus those activations and the outside parts.

Example:
    >>> import tempfile, quantpilot as qp
    >>> from quantpilot.testing import tiny_causal_lm
    >>> src, out = tempfile.mkdtemp(), tempfile.mkdtemp() + "/q"
    >>> tiny_causal_lm("llama").save_pretrained(src)
    >>> _ = quantize_checkpoint(src, "rtn-w4-g128", out=out)
    >>> type(qp.load(tiny_causal_lm("llama"), out).model.layers[1].mlp.up_proj).__name__
    'WeightOnlyLinear'
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..algorithms.gptq_sequential import _run
from ..api import RECIPE_ATTR, freeze
from ..distributed import is_distributed
from ..install import check_plan, install_layers, plan_layers
from ..meta_device import _materialise_derived_buffers, _retie, _tie_groups
from ..nn.registry import warn_unhandled
from ..recipe import Recipe
from ..steps import AWQ, QuantizeEmbeddings
from ..surgery import inputs_of
from .blocks import as_kwargs, block_step, check_streamable, hidden_key, quantize_block
from .checkpoint import Checkpoint
from .ranks import barrier, gather_objects, merge_hessians, rank
from .writer import ShardWriter

__all__ = ["quantize_checkpoint", "rss_bytes"]


def rss_bytes() -> int:
    """This process's resident memory now, in bytes (Linux `/proc/self/statm`).

    Example:
        >>> rss_bytes() > 0
        True
    """
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def quantize_checkpoint(
    hf_dir: str | Path,
    recipe: Recipe | str,
    calib: torch.Tensor | Sequence[Any] | None = None,
    *,
    out: str | Path,
    batch_size: int = 8,
    on_block: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Quantize a local Hugging Face causal LM block by block into `out` (sharded safetensors + quantpilot map).

    Args:
        hf_dir: `config.json` and `model.safetensors` (or a sharded index) of a causal LM.
        recipe: a preset name or `Recipe`: weight-only or dynamic, with at most one GPTQ or AWQ step.
        calib: calibration token ids, a 2-D tensor (samples x tokens) cut into batches of
            `batch_size` rows, or a list of batches (`{"input_ids": ...}`); needed by GPTQ and AWQ.
            Under torch.distributed each rank passes its own share (GPTQ's Hessians are summed).
        out: new or empty folder; an unfinished run of the same job there is resumed.
        on_block: called after each shard with `{"block", "blocks", "seconds", "block_seconds", "rss_bytes"}`
            (block -1 is the parts outside the blocks).

    Returns:
        `out`: `qp.load(skeleton, out)` (a meta skeleton too) rebuilds the quantized model.

    Raises:
        ValueError: a recipe that cannot stream, missing calibration data, an unknown layout, an `out`
            holding something else.

    Example:
        >>> quantize_checkpoint(".", "int8-static", out="never-written")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: streamed quantization runs weight-only or dynamic recipes ...
    """
    recipe = Recipe.preset(recipe) if isinstance(recipe, str) else recipe
    check_streamable(recipe)
    ckpt = Checkpoint(hf_dir)
    needs_data = any(step.needs_data for step in recipe.steps)
    batches = _batches(calib, batch_size) if needs_data else []
    if needs_data and not batches:
        raise ValueError(f"the recipe's {block_step(recipe).name} step runs on calibration data: pass calib token ids")
    if is_distributed() and any(isinstance(s, AWQ) for s in recipe.steps):
        raise ValueError("AWQ's statistics are not merged across processes: run streamed AWQ in one process")
    check_plan(plan_layers(ckpt.model, recipe)[0])  # group sizes and the like, before anything is read
    warn_unhandled(ckpt.model, recipe.skip, stacklevel=2)
    writer = ShardWriter(out, len(ckpt.blocks) + 1, _fingerprint(ckpt, recipe, batches), rank())
    barrier()  # every rank checked `out` before rank 0 writes into it
    start, clock = writer.next_shard, time.perf_counter()
    calls = _load_outside_and_catch(ckpt, batches)
    if start > 1 and needs_data:
        carried = writer.carried()
        if carried is None or len(carried) != len(calls):
            raise ValueError(f"{out}: the saved activations of the unfinished run are missing; give a new --out")
        key = hidden_key(ckpt.blocks[0])
        calls = [{**call, key: hidden} for call, hidden in zip(calls, carried, strict=True)]
    if start == 0:
        tick = time.perf_counter()
        with ckpt.without_blocks() as model:
            writer.write(_quantize_outside(model, recipe), {})
        _report(on_block, -1, len(ckpt.blocks), clock, tick)
    ckpt.free_outside()
    for index in range(max(start - 1, 0), len(ckpt.blocks)):
        tick = time.perf_counter()
        block = ckpt.load_block(index)
        merge = merge_hessians if is_distributed() else None
        frozen, choices, calls = quantize_block(
            block, ckpt.blocks_name + f".{index}", recipe, calls, merge_hessians=merge
        )
        key = hidden_key(block)
        writer.write(frozen, choices, [c[key] for c in calls] if needs_data else None)
        del frozen, block
        ckpt.free_block(index)
        _report(on_block, index, len(ckpt.blocks), clock, tick)
    barrier()
    done = writer.finish(type(ckpt.model).__name__, recipe)
    barrier()  # no rank returns before rank 0's map is in place
    return done


def _report(on_block, index: int, blocks: int, clock: float, tick: float) -> None:
    if on_block is not None:
        now = time.perf_counter()
        on_block({"block": index, "blocks": blocks, "seconds": now - clock, "block_seconds": now - tick,
                  "rss_bytes": rss_bytes()})  # fmt: skip


def _batches(calib: Any, batch_size: int) -> list[Any]:
    if calib is None:
        return []
    if isinstance(calib, torch.Tensor):
        if calib.dim() != 2 or calib.dtype not in (torch.long, torch.int):
            raise ValueError(
                f"calib token ids must be a 2-D integer tensor (samples x tokens), got {tuple(calib.shape)}"
            )
        return [{"input_ids": chunk.long()} for chunk in calib.split(batch_size)]
    return [b if isinstance(b, dict) else {"input_ids": b} for b in calib]


def _fingerprint(ckpt: Checkpoint, recipe: Recipe, batches: list[Any]) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one: checkpoint, recipe, every rank's data."""
    digest = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch):
            value = batch[key]
            if isinstance(value, torch.Tensor):
                digest.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    config = hashlib.sha256((ckpt.hf_dir / "config.json").read_bytes()).hexdigest()
    return {"checkpoint": str(ckpt.hf_dir.resolve()), "config": config, "recipe": recipe.to_dict(),
            "data": gather_objects(digest.hexdigest())}  # fmt: skip


def _load_outside_and_catch(ckpt: Checkpoint, batches: list[Any]) -> list[dict[str, Any]]:
    """Load the token table, final norm, head (and rotary buffers); return what block 0 receives per batch."""
    with ckpt.without_blocks() as model:
        groups = _tie_groups(model)
        tensors = ckpt.read(list(model.state_dict(keep_vars=True)))
        model.load_state_dict(tensors, strict=False, assign=True)
        _retie(model, groups, set(tensors))
        _materialise_derived_buffers(model)
        left = [n for n, t in model.state_dict(keep_vars=True).items() if t.is_meta]
        if left:
            raise ValueError(f"{ckpt.hf_dir} lacks the tensors {left[:3]} outside the decoder blocks")
    if not batches:
        return []
    # The blocks stay on the meta device: the pre-hook on block 0 stops every forward before it.
    with torch.no_grad():
        caught = inputs_of(ckpt.model.eval(), ckpt.blocks[0], batches, run=_run)
    if len(caught) != len(batches):
        raise ValueError(f"{type(ckpt.model).__name__}'s forward never reached {ckpt.blocks_name}.0")
    return [as_kwargs(ckpt.blocks[0], args, kwargs) for args, kwargs in caught]


def _quantize_outside(model: torch.nn.Module, recipe: Recipe) -> torch.nn.Module:
    """The parts outside the blocks quantized as the in-memory pipeline does (RTN, the head float by default;
    a `QuantizeEmbeddings` step packs the token table and a head tied to it first, as `quantize` runs it)."""
    for step in recipe.steps:
        if isinstance(step, QuantizeEmbeddings):
            model = step.prepare(model, recipe)
    plan = plan_layers(model, recipe)[0]
    if plan:
        model = install_layers(model, recipe, plan)
        setattr(model, RECIPE_ATTR, recipe)
        model = freeze(model)
    return model
