"""Streamed block-by-block quantization of Llama-style models at ~1B and ~7B parameters: peak memory and time.

What it measures: random-weight Llama-style checkpoints written once as bf16 safetensors (one shard
per block, like a real checkpoint) into a cache folder outside the repository, `$QP_BENCH_CACHE` or
`~/.cache/quantpilot/llm-scale` (1B: 1.9 GB, 7B: 13.5 GB on disk; delete the folder to reclaim it).
Each operation runs in a fresh Python process that reports its own peak RSS (`ru_maxrss`), wall
time and time per block:

- stream-rtn / stream-gptq / stream-awq: `quantpilot.streaming.quantize_checkpoint` with the
  rtn-w4-g128, gptq-w4-g128 and awq-w4-g128 presets (GPTQ: random token windows, at least as many
  tokens as the widest layer's inputs; AWQ: 16 x 128 tokens, clip search on);
- testbed (a size of its own): streamed vs in-memory RTN/GPTQ/AWQ on the trained testbed GPT-2,
  perplexity and KL (`llm_scale_testbed.py`);
- memory-rtn: the in-memory path for comparison (`from_pretrained(dtype=bfloat16)` then
  `qp.algorithms.rtn(bits=4, group_size=128, inplace=True)`), and whether its codes equal the
  streamed ones (the streamed folder loaded with `qp.load` onto a meta skeleton).

Peak RSS is given as a multiple of the bf16 model's bytes; the target is <= 0.6x for the 7B model.
Run:  make bench-llm-scale
      .venv/bin/python benchmarks/bench_llm_scale.py [--sizes testbed,1b,7b] [--ops stream-rtn,memory-rtn,...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZES = {
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16, "num_attention_heads": 16},
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32},
}
DEFAULT_OPS = {"1b": "stream-rtn,memory-rtn,stream-gptq,stream-awq", "7b": "stream-rtn"}
PRESETS = {"stream-rtn": "rtn-w4-g128", "stream-gptq": "gptq-w4-g128", "stream-awq": "awq-w4-g128"}


def cache_dir() -> Path:
    return Path(os.environ.get("QP_BENCH_CACHE", Path.home() / ".cache" / "quantpilot" / "llm-scale"))


def _config(size: str):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2, dtype="bfloat16", **SIZES[size])  # fmt: skip


def write_model(size: str) -> Path:
    """The random bf16 checkpoint of `size`, written once (a shard per block, so no step holds the model)."""
    import safetensors.torch
    import torch
    import transformers

    folder = cache_dir() / f"llama-{size}"
    if (folder / "complete").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = _config(size)
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(config)
    groups: dict[str, dict[str, tuple]] = {}
    for name, p in skeleton.state_dict().items():
        part = name.split(".")[2] if name.startswith("model.layers.") else "outside"
        groups.setdefault(part, {})[name] = tuple(p.shape)
    gen, weight_map = torch.Generator().manual_seed(0), {}
    for i, shapes in enumerate(groups.values()):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, shape in shapes.items():
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
            else:  # transformers' own initialisation scale
                tensors[name] = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        safetensors.torch.save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, fname))
        print(f"  wrote {fname}", flush=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(folder)
    (folder / "complete").write_text("ok\n")
    return folder


def model_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("model-*.safetensors"))


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Enough(Exception):
    """Raised after --max-blocks blocks: the run stops there like a killed one (and could resume)."""


def child(op: str, folder: Path, out: Path, calib_tokens: int, max_blocks: int = 0) -> dict:
    """One operation in this (fresh) process: peak RSS, wall, seconds per block."""
    import torch

    import quantpilot as qp
    from quantpilot.streaming import quantize_checkpoint

    torch.manual_seed(0)
    start, blocks = time.perf_counter(), []
    if op in PRESETS:
        calib = None
        if op == "stream-gptq":
            calib = torch.randint(0, 32000, (-(-calib_tokens // 256), 256))
        elif op == "stream-awq":
            calib = torch.randint(0, 32000, (16, 128))

        def on_block(info: dict) -> None:
            blocks.append(info["block_seconds"])
            # Progress on stderr (the parent passes it through): a 7B GPTQ run takes an hour on 2 cores.
            print(f"  {op} block {info['block'] + 1}/{info['blocks']}: {info['block_seconds']:.1f} s, "
                  f"{info['seconds']:.0f} s in all, RSS {info['rss_bytes'] / 2**30:.2f} GiB", file=sys.stderr,
                  flush=True)  # fmt: skip
            if max_blocks and info["block"] + 1 >= max_blocks:
                raise _Enough

        try:
            quantize_checkpoint(folder, PRESETS[op], calib, out=out, batch_size=4, on_block=on_block)
        except _Enough:
            pass
        return {"peak": _peak(), "wall": time.perf_counter() - start, "blocks": blocks[1:]}
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    qmodel = qp.algorithms.rtn(model, bits=4, group_size=128, inplace=True)
    result = {"peak": _peak(), "wall": time.perf_counter() - start, "blocks": []}
    streamed = out.parent / "stream-rtn"
    if (streamed / "quantpilot.json").is_file():
        with torch.device("meta"):
            skeleton = transformers.AutoModelForCausalLM.from_config(_config(folder.name.split("-")[1]))
        other = qp.load(skeleton, streamed).state_dict()
        mine = qmodel.state_dict()
        result["identical"] = sorted(other) == sorted(mine) and all(torch.equal(mine[k], other[k]) for k in mine)
    return result


def run(op: str, folder: Path, work: Path, calib_tokens: int, max_blocks: int) -> dict:
    out = work / op
    cmd = [sys.executable, __file__, "--child", op, str(folder), str(out), str(calib_tokens), str(max_blocks)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr (progress, errors) passes through
    if done.returncode:
        raise SystemExit(f"{op} failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="testbed,1b,7b", help="testbed (streamed vs in-memory), 1b, 7b")
    parser.add_argument("--ops", help="comma-separated operations for every size (default: see DEFAULT_OPS)")
    parser.add_argument(
        "--max-blocks",
        type=int,
        default=0,
        help="stop streamed runs after this many blocks (0: all); s/block and "
        "peak RSS are those of the blocks run, the wall column then covers only them",
    )
    parser.add_argument(
        "--work",
        help="keep the outputs in this folder (default: a temporary one, removed); the same command run again "
        "resumes an interrupted streamed run there (its peak, wall and s/block then cover the resumed blocks)",
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        op, folder, out, tokens, max_blocks = args.child
        print(json.dumps(child(op, Path(folder), Path(out), int(tokens), int(max_blocks))))
        return
    import shutil
    import tempfile

    from quantpilot.machine import cpu_header

    print(cpu_header())
    print(f"checkpoint cache: {cache_dir()}")
    rows, testbed = [], []
    for size in args.sizes.split(","):
        if size == "testbed":
            from llm_scale_testbed import compare_on_testbed

            work = Path(tempfile.mkdtemp(prefix="qp-scale-testbed-", dir=cache_dir()))
            try:
                testbed = compare_on_testbed(work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            continue
        folder = write_model(size)
        size_bytes = model_bytes(folder)
        keep = args.work is not None
        work = Path(args.work) / size if keep else Path(tempfile.mkdtemp(prefix=f"qp-scale-{size}-", dir=cache_dir()))
        try:
            for op in (args.ops or DEFAULT_OPS[size]).split(","):
                r = run(op, folder, work, SIZES[size]["intermediate_size"], args.max_blocks)
                per_block = f"{statistics.median(r['blocks']):.1f}" if r["blocks"] else "-"
                if args.max_blocks and op in PRESETS:
                    op = f"{op} ({len(r['blocks'])}/{SIZES[size]['num_hidden_layers']} blocks)"
                same = {True: "identical codes", False: "CODES DIFFER"}.get(r.get("identical"), "")
                rows.append((size, op, r["peak"] / 2**30, r["peak"] / size_bytes, per_block, r["wall"], same))
                print(f"{size:>3} {op:<24} peak {rows[-1][2]:6.2f} GiB = {rows[-1][3]:4.2f}x model  "
                      f"{per_block:>6} s/block  {r['wall']:7.1f} s  {same}", flush=True)  # fmt: skip
        finally:
            if not keep:
                shutil.rmtree(work, ignore_errors=True)
    if testbed:
        from llm_scale_testbed import print_testbed

        print_testbed(testbed)
    if not rows:
        return
    print("\n| size | operation | peak RSS GiB | x bf16 model | median s/block | wall s | note |")
    print("|---|---|---|---|---|---|---|")
    for size, op, gib, ratio, per_block, wall, note in rows:
        print(f"| {size} | {op} | {gib:.2f} | {ratio:.2f} | {per_block} | {wall:.0f} | {note} |")
    for size, op, _, ratio, *_ in rows:
        if size == "7b" and op.startswith("stream"):
            print(f"target 7B {op} peak RSS <= 0.6x model: {ratio:.2f}x {'PASS' if ratio <= 0.6 else 'MISS'}")


if __name__ == "__main__":
    main()
