"""`quantpilot quantize --model HF_DIR` for causal language models: streamed block by block from disk.

    quantpilot quantize --model ./llama-7b --recipe gptq-w4-g128 --calib-data wiki.txt \
        --calib-samples 128 --seq-len 512 --out ./llama-7b-gptq

The folder's tokenizer cuts `--calib-data` (plain text) into `--calib-samples` windows of
`--seq-len` tokens; `quantpilot.streaming.quantize_checkpoint` quantizes one block at a time and
prints a line per block. The output holds sharded safetensors, the quantpilot map and `source.json`,
so `quantpilot export|evaluate|inspect OUT` and `qp.load` reopen it alone. An interrupted run is
resumed by the same command.

Example:
    >>> is_causal_lm_folder("no-such-folder")
    False
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from .cli_inputs import read_text_file

__all__ = ["is_causal_lm_folder", "streams", "quantize_causal_lm", "calibration_ids"]


def is_causal_lm_folder(model: str) -> bool:
    """True for a local Hugging Face folder whose config names a causal-LM architecture (`...ForCausalLM`).

    Example:
        >>> import tempfile, json, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
        >>> is_causal_lm_folder(str(d))
        True
    """
    config = Path(model) / "config.json"
    if not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    causal = ("ForCausalLM", "LMHeadModel")
    return any(isinstance(a, str) and a.endswith(causal) and not a.startswith("Bert") for a in architectures)


def streams(model: str, recipe: Any) -> bool:
    """True when the command streams: a causal-LM folder and a recipe a block-by-block run reproduces.

    Other recipes (static activation ranges, SmoothQuant, LLM.int8()) keep the in-memory path.

    Example:
        >>> import quantpilot as qp
        >>> streams("no-such-folder", qp.Recipe.preset("rtn-w4-g128"))
        False
    """
    from .streaming.blocks import check_streamable

    if not is_causal_lm_folder(model):
        return False
    try:
        check_streamable(recipe)
    except ValueError:
        return False
    return True


def calibration_ids(tokenizer: Any, text: str, samples: int, seq_len: int) -> torch.Tensor:
    """`samples` consecutive windows of `seq_len` tokens of `text` (fewer when the text is short), as a 2-D tensor.

    Raises:
        ValueError: the text holds fewer than `seq_len` tokens.

    Example:
        >>> class Words:
        ...     def __call__(self, text, **_):
        ...         return {"input_ids": [len(w) for w in text.split()]}
        >>> calibration_ids(Words(), "a bb ccc dddd", samples=5, seq_len=2).tolist()
        [[1, 2], [3, 4]]
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = min(samples, len(ids) // seq_len)
    if windows < 1:
        raise ValueError(f"--calib-data holds {len(ids)} tokens, fewer than one --seq-len window of {seq_len}")
    return torch.tensor(ids[: windows * seq_len], dtype=torch.long).reshape(windows, seq_len)


def _calibration(args: argparse.Namespace, recipe: Any) -> torch.Tensor | None:
    if not any(step.needs_data for step in recipe.steps):
        return None
    from .streaming.blocks import block_step

    if not args.calib_data:
        raise ValueError(f"the {block_step(recipe).name} recipe runs on calibration text: pass --calib-data FILE")
    path = Path(args.calib_data)
    if not path.is_file():
        raise ValueError(f"--calib-data {path} is not a file")
    text = read_text_file(path, "--calib-data")
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{args.model} has no usable tokenizer for --calib-data: {' '.join(str(err).split())}"
        ) from None
    ids = calibration_ids(tokenizer, text, args.calib_samples, args.seq_len)
    vocab = _vocab_size(args.model)
    if vocab is not None and int(ids.max()) >= vocab:
        raise ValueError(
            f"{args.model}'s tokenizer gives token id {int(ids.max())} but the model's vocab_size is {vocab}: "
            "the folder's tokenizer is not the model's; copy the model's own tokenizer files into it"
        )
    return ids


def _vocab_size(model: str) -> int | None:
    """The folder config's vocab_size (top level, or a multimodal config's text_config), if it names one."""
    try:
        config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    return vocab if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0 else None


def _progress(info: dict[str, Any]) -> None:
    what = "embeddings/head" if info["block"] < 0 else f"block {info['block'] + 1}/{info['blocks']}"
    print(
        f"{what:>16}  {info['block_seconds']:7.1f} s  elapsed {info['seconds']:8.1f} s  "
        f"resident {info['rss_bytes'] / 2**30:6.2f} GiB",
        flush=True,
    )


def quantize_causal_lm(args: argparse.Namespace, recipe: Any) -> int:
    """The `quantize` command on a causal-LM folder: stream, print a line per block, write `source.json`.

    Example:
        >>> callable(quantize_causal_lm)
        True
    """
    from .saved_dirs import write_source
    from .streaming import quantize_checkpoint

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; choose a new directory (nothing is overwritten)")
    calib = _calibration(args, recipe)
    torch.set_num_threads(args.threads)
    try:
        quantize_checkpoint(args.model, recipe, calib, out=out, batch_size=4, on_block=_progress)
    except KeyboardInterrupt:
        print(f"quantpilot: interrupted; run the same command again to resume into {out}", flush=True)
        return 130
    write_source(out, hf_dir=args.model, auto_class="AutoModelForCausalLM")
    print(f"saved to {out}")
    return 0
