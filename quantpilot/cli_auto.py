"""`quantpilot auto`: the autopilot on the user's model and data, from the command line.

    quantpilot auto --model NAME|HF_DIR --calib-data PATH --eval-data PATH --metric cosine|top1|perplexity|MODULE:FUNC \
                    --budget 1% --target openvino --out DIR [--calib-size N --threads N]

Writes `qp.autoquantize(...).save(DIR)` plus `model/source.json` (so `quantpilot export|benchmark|evaluate|
inspect DIR` reopen the folder alone), all at once: the folder appears complete or not at all. Prints the
verdict and the candidate table; progress goes to stderr as the run goes.

Example:
    >>> parse_budget("0.5%"), parse_budget("0.01"), parse_budget("2", absolute=True)
    (0.005, 0.01, 2.0)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .cli_data import Samples, read_samples, take
from .cli_metrics import (
    METRICS,
    cosine_items,
    image_batches,
    label_indices,
    lower_is_better,
    metric_function,
    text_batches,  # fmt: skip
    token_batches_of,
)

__all__ = [
    "parse_budget",
    "add_auto_parser",
    "model_kind",
    "source_of",
    "load_for_cli",
    "read_data",
    "input_batches",
    "prepare_items",
]


def parse_budget(text: str, absolute: bool = False) -> float:
    """`"1%"` -> 0.01 and `"0.01"` -> 0.01 (a fraction of the float metric); with `absolute`, an amount of metric.

    Example:
        >>> parse_budget("abc")
        Traceback (most recent call last):
        ...
        ValueError: --budget 'abc': use a percentage such as 1% or 0.5%, or a fraction such as 0.01
    """
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError:
        raise ValueError(
            f"--budget {text!r}: use a percentage such as 1% or 0.5%, or a fraction such as 0.01"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--budget {text!r}: must be a finite amount >= 0, e.g. 1% or 0.5%")
    if absolute:
        if percent:
            raise ValueError(f"--budget {text!r} with --absolute is an amount of metric (e.g. 0.5), not a percentage")
        return value
    value = value / 100 if percent else value
    if value >= 1:
        raise ValueError(f"--budget {text!r} allows losing the whole metric; use less than 100%, e.g. 1%")
    return round(value, 12)


def _architectures(folder: Path) -> list[str]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    found = config.get("architectures") if isinstance(config, dict) else None
    return [str(a) for a in found] if isinstance(found, list) else []


def model_kind(name: str) -> str:
    """ "text", "image" or "causal-lm" for a bundled name or a Hugging Face folder, checked before loading.

    Example:
        >>> model_kind("minilm")
        'text'
    """
    from .cli_inputs import _BUNDLED_KINDS, _model_kind

    path = Path(name).expanduser()
    if name not in _BUNDLED_KINDS and path.is_dir() and any(a.endswith("ForCausalLM") for a in _architectures(path)):
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise ValueError(f"--model {path} has config.json but no weights (no *.safetensors or *.bin file)")
        return "causal-lm"  # token ids need no tokenizer, so the folder may have none
    return _model_kind(name) or "text"


def source_of(name: str, model: torch.nn.Module) -> dict[str, Any]:
    """How `saved_dirs.write_source` records the float model `name` loaded as `model` (bundled, or HF class).

    Example:
        >>> source_of("minilm", None)
        {'bundled': 'minilm'}
    """
    from .models import available

    if name in available():
        return {"bundled": name}
    kind = type(model).__name__
    auto = next((a for a in ("ForImageClassification", "ForCausalLM") if kind.endswith(a)), None)
    return {"hf_dir": Path(name).expanduser(), "auto_class": f"AutoModel{auto}" if auto else "AutoModel"}


def load_for_cli(name: str, kind: str) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """`(float model, tokenizer or image preparation, how saved_dirs.write_source records it)`.

    Example:
        >>> load_for_cli.__name__
        'load_for_cli'
    """
    from .cli_inputs import _load

    if name in ("minilm", "efficientnet-lite0") or kind != "causal-lm":
        model, prep = _load(name, kind)
        return model, prep, source_of(name, model)
    import transformers

    folder = Path(name).expanduser()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
        tokenizer = None
        if any(folder.glob("tokenizer*")) or any(folder.glob("vocab.*")) or any(folder.glob("*.model")):
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, RuntimeError, KeyError) as err:
        raise ValueError(f"cannot load model {name}: {err}") from None
    return model, tokenizer, {"hf_dir": folder, "auto_class": "AutoModelForCausalLM"}


def _default_data(kind: str, flag: str) -> tuple[str, list[str]]:
    """The repository testbed's bundled sentences (calibration or eval split) for a text model without data."""
    if kind != "text":
        raise ValueError(f"{flag} is required for this model (only text models default to the bundled sentences)")
    from .cli_inputs import _testbed

    datasets = _testbed("datasets", f"{flag} FILE (one sentence per line)")
    split = "calibration" if flag == "--calib-data" else "eval"
    return f"the testbed's bundled {split} sentences", datasets.sentences(split)


def read_data(path: str | None, kind: str, flag: str, prep: Any, seq_len: int) -> tuple[str, Samples]:
    """`(where the data came from, its samples)`; text models default to the testbed's bundled sentences.

    Example:
        >>> read_data(None, "image", "--eval-data", None, 128)
        Traceback (most recent call last):
        ...
        ValueError: --eval-data is required for this model (only text models default to the bundled sentences)
    """
    if path is None:
        where, texts = _default_data(kind, flag)
        return where, Samples("text", texts)
    tokenizer = prep if kind == "causal-lm" else None
    return path, read_samples(path, kind, flag, tokenizer=tokenizer, seq_len=seq_len)


def input_batches(kind: str, prep: Any, samples: Samples, batch_size: int, seq_len: int) -> list[Any]:
    """The samples as batches the model takes: a tokenizer's dicts, pixel tensors, or `{"input_ids": ...}`.

    Example:
        >>> import torch
        >>> len(input_batches("causal-lm", None, Samples("causal-lm", [torch.arange(4)] * 3), 2, 4))
        2
    """
    if kind == "image":
        return image_batches(prep, samples.items, batch_size)
    if kind == "causal-lm":
        return token_batches_of(samples.items, batch_size)
    # Sorted by length, a batch pads little (MiniLM's eval sentences: about half the tokens). Each sample's
    # score does not depend on its neighbours, and the held-out split interleaves batches, so both halves
    # still span every length.
    return text_batches(prep, sorted(samples.items, key=len), batch_size, max_length=seq_len)


def prepare_items(kind: str, metric: str, model: Any, prep: Any, samples: Samples, batch_size: int, seq_len: int):
    """`(input batches, eval items)`: the batches as the model takes them, and `(inputs, target)` pairs for `metric`.

    Example:
        >>> prepare_items.__name__
        'prepare_items'
    """
    batches = input_batches(kind, prep, samples, batch_size, seq_len)
    if metric == "cosine":
        return batches, cosine_items(model, batches)
    if metric == "top1":
        if samples.labels is None:
            raise ValueError("--metric top1 needs labels: image class sub-folders or a labels.csv beside the photos")
        labels = label_indices(samples.labels, model).split(batch_size)
        return batches, list(zip(batches, labels, strict=True))
    if metric == "perplexity" and kind != "causal-lm":
        raise ValueError("--metric perplexity needs a causal language model (a folder with a *ForCausalLM config)")
    labels = label_indices(samples.labels, model).split(batch_size) if samples.labels is not None else None
    return batches, [(b, None if labels is None else labels[i]) for i, b in enumerate(batches)]


def _progress(started: float):
    def say(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {line}", file=sys.stderr, flush=True)

    return say


def _command(args: argparse.Namespace) -> str:
    parts = ["quantpilot", "auto", "--model", args.model]
    for flag in ("calib_data", "eval_data", "metric", "budget", "target", "calib_size", "max_evaluations", "seq_len"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    parts += ["--absolute"] * args.absolute + ["--lower-is-better"] * args.lower_is_better
    return shlex.join(parts + ["--out", args.out])


def _publish(result: Any, out: Path, source: dict[str, Any]) -> None:
    """`result.save` into a hidden sibling, add `model/source.json`, then rename into `out`: whole or nothing."""
    from .saved_dirs import write_source

    staging = out.with_name(f".{out.name}.auto-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        result.save(staging)
        if (staging / "model").is_dir():
            write_source(staging / "model", **source)
        if out.exists():
            out.rmdir()  # an empty folder the user made for us (checked before the run)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_inputs(args: argparse.Namespace) -> tuple[str, float, str]:
    """Everything that can be checked before loading anything: out, budget, target, metric, model, data paths."""
    from .cli import _check_out

    _check_out(Path(args.out))
    budget = parse_budget(args.budget, args.absolute)
    kind = model_kind(args.model)
    metric = args.metric or {"image": "top1", "causal-lm": "perplexity"}.get(kind, "cosine")
    metric_function(metric)  # a MODULE:FUNC that does not import fails here, before the model loads
    if metric == "perplexity" and kind != "causal-lm":
        raise ValueError("--metric perplexity needs a causal language model (a folder with a *ForCausalLM config)")
    for flag, path in (("--calib-data", args.calib_data), ("--eval-data", args.eval_data)):
        if path is not None and not Path(path).exists():
            raise ValueError(f"{flag} {path} does not exist")
    return kind, budget, metric


def _read_all(args: argparse.Namespace, kind: str, metric: str, prep: Any) -> tuple[str, Samples, str, Samples]:
    """Calibration and eval samples, the calibration ones cut to --calib-size; top1 checked to have labels."""
    calib_from, calib = read_data(args.calib_data, kind, "--calib-data", prep, args.seq_len)
    same = args.calib_data is not None and args.eval_data is not None
    if same and Path(args.calib_data).resolve() == Path(args.eval_data).resolve():
        # One data set for both: calibrate on its first part, evaluate on the rest, never on the same samples.
        size = args.calib_size or len(calib) // 2
        if size >= len(calib):
            raise ValueError(f"--calib-size {size} leaves none of the {len(calib)} samples in {calib_from} to evaluate")
        rest = Samples(calib.kind, calib.items[size:], None if calib.labels is None else calib.labels[size:])
        calib_from, eval_from = f"{calib_from} (first {size})", f"{calib_from} (the other {len(rest)})"
        calib, evals = take(calib, size, "--calib-size", calib_from), rest
    else:
        eval_from, evals = read_data(args.eval_data, kind, "--eval-data", prep, args.seq_len)
        calib = take(calib, args.calib_size, "--calib-size", calib_from)
    if metric == "top1" and evals.labels is None:
        raise ValueError("--metric top1 needs labels: image class sub-folders or a labels.csv beside the photos")
    return calib_from, calib, eval_from, evals


def _auto(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    kind, budget, metric = _check_inputs(args)
    if kind != "causal-lm":  # text and images are read (and checked) before the model loads
        data = _read_all(args, kind, metric, None)
    say = _progress(started)
    say(f"loading {args.model} ({kind} model)")
    torch.set_num_threads(args.threads)
    model, prep, source = load_for_cli(args.model, kind)
    if kind == "causal-lm":  # text is tokenized by the model's own tokenizer
        data = _read_all(args, kind, metric, prep)
    calib_from, calib, eval_from, evals = data
    say(f"data: {len(calib)} calibration samples from {calib_from}, {len(evals)} eval samples from {eval_from}")
    calib_batches = input_batches(kind, prep, calib, args.batch_size, args.seq_len)
    _, items = prepare_items(kind, metric, model, prep, evals, args.batch_size, args.seq_len)
    say(f"metric {metric} on {len(items)} eval batches (half held out for the verdict); target {args.target}")
    from .auto import autoquantize

    result = autoquantize(
        model, calib_batches, metric_function(metric), budget=budget, target=args.target,
        lower_is_better=lower_is_better(metric, args.lower_is_better), absolute=args.absolute,
        max_evaluations=args.max_evaluations, eval_data=items,
        log=lambda line: print(line, file=sys.stderr, flush=True),  # its lines carry their own clock
    )  # fmt: skip
    counted = result.report.get("data") if isinstance(result.report.get("data"), dict) else {}
    used = {"calibration samples": len(calib), "calibration data": calib_from, "eval samples": len(evals)}
    result.report["data"] = {**used, "eval data": eval_from, "metric": metric, **counted}
    result.report["commands"] = [_command(args)] + list(result.report.get("commands") or [])
    out = Path(args.out)
    _publish(result, out, source)
    from .report import render_text

    print(render_text(result.report))
    print(f"\ndata: {len(calib)} calibration and {len(evals)} eval samples ({metric}); "
          f"{result.report.get('evaluations', '?')} evaluations in {time.perf_counter() - started:.0f} s")  # fmt: skip
    print(f"report: {out / 'report.html'}  (and report.json, recipe.yaml, model/, deploy/)")
    return 0


def add_auto_parser(sub: Any, positive_int: Any) -> None:
    """Register `quantpilot auto` on the `quantpilot` parser's sub-commands.

    Example:
        >>> import argparse
        >>> sub = argparse.ArgumentParser().add_subparsers(); add_auto_parser(sub, int)
    """
    a = sub.add_parser("auto", help="find the fastest model on the target that holds the accuracy budget")
    a.add_argument("--model", required=True, help="bundled model name or local Hugging Face model directory")
    a.add_argument("--calib-data", help="calibration data (text file, .jsonl, image folder, .npy token ids); "
                   "text models default to the testbed's bundled sentences")  # fmt: skip
    a.add_argument("--eval-data", help="evaluation data, same kinds; half of it is held out for the verdict")
    a.add_argument("--metric", help=f"one of {', '.join(METRICS)} or MODULE:FUNC (default: cosine for text, "
                   "top1 for images, perplexity for language models)")  # fmt: skip
    a.add_argument("--budget", default="1%", help="metric loss allowed: 1%%, 0.5%% or a fraction (default 1%%)")
    a.add_argument("--absolute", action="store_true", help="read --budget as an amount of metric")
    a.add_argument("--lower-is-better", action="store_true", help="a MODULE:FUNC metric is an error or a loss")
    a.add_argument("--target", default="openvino", choices=["openvino", "onnxruntime", "torch", "torch-int8"])
    a.add_argument("--out", required=True, help="new (or empty) directory for the results")
    a.add_argument("--calib-size", type=positive_int, help="calibration samples to use (default: all)")
    a.add_argument("--batch-size", type=positive_int, default=16, help="samples per batch (default 16)")
    a.add_argument("--seq-len", type=positive_int, default=128, help="tokens per sample, at most (default 128)")
    a.add_argument("--max-evaluations", type=positive_int, default=40, help="most eval_fn calls (default 40)")
    a.add_argument("--threads", type=positive_int, default=2, help="CPU threads, at least 1")
    a.set_defaults(func=_auto)
