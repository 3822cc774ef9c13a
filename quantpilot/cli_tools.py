"""`quantpilot export|evaluate|inspect DIR`: work on a folder quantpilot saved, from the folder alone.

    quantpilot export DIR --format onnx|openvino|hf|gguf [--target tensorrt] [--gguf-type q8_0|q4_0|q4_1|q6_k] --out OUT
    quantpilot evaluate DIR --eval-data PATH --metric cosine|top1|perplexity|MODULE:FUNC
    quantpilot inspect DIR

`DIR` is what `quantpilot quantize` or `quantpilot auto` wrote (`source.json` says how to rebuild the float
skeleton). Exports are written in a hidden sibling of OUT and renamed into place: whole or nothing.

Example:
    >>> import argparse
    >>> sub = argparse.ArgumentParser().add_subparsers(); add_tool_parsers(sub, int)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from .cli_metrics import METRICS, cosine_items, lower_is_better, metric_function
from .cli_saved import open_folder, synthetic_batch

__all__ = ["add_tool_parsers", "export_folder"]

FORMATS = ("onnx", "openvino", "hf", "gguf")


def _say(line: str) -> None:
    print(f"quantpilot: {line}", file=sys.stderr, flush=True)


def _staged(out: Path, write: Any) -> None:
    """Run `write(folder)` on a hidden sibling of `out`, then rename it to `out`; on any failure remove it."""
    staging = out.with_name(f".{out.name}.export-{os.getpid()}-{secrets.token_hex(4)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir()
    try:
        write(staging)
        if out.exists():
            out.rmdir()  # the empty folder the user named (checked before)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def export_folder(directory: str | Path, fmt: str, out: str | Path, target: str = "generic") -> Path:
    """Export the quantized model saved in `directory` as QDQ ONNX (`out/model.onnx`) or OpenVINO IR (`out/model.xml`).

    Example:
        >>> import tempfile
        >>> export_folder(tempfile.mkdtemp(), "onnx", tempfile.mkdtemp() + "/x")
        Traceback (most recent call last):
        ...
        ValueError: ... holds no quantpilot model (no quantpilot.json here or in model/)
    """
    from .export import export_onnx

    saved = open_folder(directory)
    batch = synthetic_batch(saved.kind, saved.prep, saved.qmodel, 1, 16)

    def write(folder: Path) -> None:
        onnx_path = export_onnx(saved.qmodel, batch, folder / "model.onnx", target=target)
        if fmt == "openvino":
            import openvino as ov

            # Weights stay as exported (int8 Q/DQ constants): no fp16 compression of the float parts either.
            ov.save_model(ov.convert_model(str(onnx_path)), str(folder / "model.xml"), compress_to_fp16=False)
            onnx_path.unlink()

    _staged(Path(out), write)
    return Path(out)


def _export(args: argparse.Namespace) -> int:
    from .cli import _check_out
    from .cli_saved import kind_of
    from .saved_dirs import model_folder, read_source

    out = Path(args.out)
    _check_out(out)
    if args.target == "tensorrt" and args.format != "onnx":
        raise ValueError("--target tensorrt applies to --format onnx (TensorRT reads QDQ ONNX)")
    folder = model_folder(args.directory)
    kind = kind_of(read_source(folder), folder)
    if kind == "causal-lm" and args.format in ("hf", "gguf", "openvino"):
        try:
            from .cli_export_llm import export_llm_dir  # written alongside: language-model exports
        except ModuleNotFoundError:
            raise ValueError(f"--format {args.format} for a language model is not available in this build") from None
        _say(f"exporting {folder} as {args.format}")
        written = Path(
            export_llm_dir(args.directory, args.format, out, args.gguf_type if args.format == "gguf" else None)
        )
        print(f"exported to {written}")
        return 0
    elif args.format in ("hf", "gguf"):
        raise ValueError(
            f"--format {args.format} is for language-model folders; this is a {kind} model: use onnx or openvino"
        )
    else:
        _say(f"exporting {folder} as {args.format}" + (" (TensorRT rules)" if args.target == "tensorrt" else ""))
        export_folder(args.directory, args.format, out, target=args.target)
    print(f"exported to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


def _reference(saved: Any, reference: str | None) -> Any:
    """The float model cosine compares with: `--reference`, or the bundled model the folder came from."""
    if reference is not None:
        from .cli_auto import load_for_cli, model_kind

        return load_for_cli(reference, model_kind(reference))[0]
    if saved.record["kind"] == "bundled":
        from .models import load

        return load(saved.record["name"])[0]
    raise ValueError("--metric cosine compares with the float model, which the folder does not hold: "
                     "pass --reference NAME|HF_DIR (the float model)")  # fmt: skip


def _evaluate(args: argparse.Namespace) -> int:
    from .auto.scores import bootstrap_interval
    from .cli_auto import input_batches, prepare_items, read_data

    metric_function(args.metric)  # an unknown metric or a MODULE:FUNC that fails to import: before the load
    if not Path(args.eval_data).exists():
        raise ValueError(f"--eval-data {args.eval_data} does not exist")
    from .saved_dirs import model_folder, read_source

    read_source(model_folder(args.directory))  # not a saved folder: one line, before any progress line
    torch.set_num_threads(args.threads)
    _say(f"opening {args.directory}")
    saved = open_folder(args.directory)
    where, samples = read_data(args.eval_data, saved.kind, "--eval-data", saved.prep, args.seq_len)
    if args.metric == "cosine":
        batches = input_batches(saved.kind, saved.prep, samples, args.batch_size, args.seq_len)
        items = cosine_items(_reference(saved, args.reference), batches)
    else:
        _, items = prepare_items(
            saved.kind, args.metric, saved.qmodel, saved.prep, samples, args.batch_size, args.seq_len
        )
    _say(f"{args.metric} on {len(samples)} samples from {where}")
    scores = metric_function(args.metric)(saved.qmodel, items)
    values = torch.as_tensor(scores, dtype=torch.float64).flatten().numpy()
    shown = f"{values.mean():.4f}"
    if values.size > 1:
        low, high = bootstrap_interval(values)
        shown += f" [95% interval {low:.4f}, {high:.4f}]"
    better = "lower" if lower_is_better(args.metric, args.lower_is_better) else "higher"
    print(f"{args.metric}: {shown} on {len(samples)} samples ({better} is better)")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .saved_dirs import read_source

    directory = Path(args.directory)
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such folder")
    report = directory / "report.json"
    if report.is_file():
        from .report import render_text

        try:
            print(render_text(json.loads(report.read_text(encoding="utf-8"))) + "\n")
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{report} is damaged: {err}") from None
        if not (directory / "model" / "quantpilot.json").is_file():
            print("the chosen model is float (no quantized model to inspect)")
            return 0
    saved = open_folder(directory)
    from .evaluate import size_on_disk
    from .summary import summary

    record = read_source(saved.folder)
    origin = record.get("name") or record.get("auto_class")
    print(f"{saved.folder}: {saved.kind} model ({origin}), {size_on_disk(saved.qmodel) / 2**20:.2f} MiB saved")
    print(summary(saved.qmodel))
    return 0


def add_tool_parsers(sub: Any, positive_int: Any) -> None:
    """Register `quantpilot export`, `evaluate` and `inspect` on the `quantpilot` parser's sub-commands."""
    e = sub.add_parser("export", help="export a saved folder for an engine (ONNX, OpenVINO IR, HF, GGUF)")
    e.add_argument("directory", metavar="DIR", help="a folder quantpilot quantize/auto wrote")
    e.add_argument("--format", required=True, choices=FORMATS)
    e.add_argument("--target", default="generic", choices=["generic", "tensorrt"], help="QDQ rules of the engine")
    e.add_argument("--gguf-type", default=None, choices=["q8_0", "q4_0", "q4_1", "q6_k"],
                   help="GGUF tensor type for every weight (default: each weight's own: Q4_0/Q4_1 for 4-bit codes, "
                   "Q6_K for 6-bit tables on its grid, Q8_0 for 8-bit codes)")  # fmt: skip
    e.add_argument("--out", required=True, help="new (or empty) directory for the exported files")
    e.set_defaults(func=_export)
    v = sub.add_parser("evaluate", help="score a saved folder on your data")
    v.add_argument("directory", metavar="DIR", help="a folder quantpilot quantize/auto wrote")
    v.add_argument("--eval-data", required=True, help="text file, .jsonl, image folder or .npy token ids")
    v.add_argument("--metric", default="cosine", help=f"one of {', '.join(METRICS)} or MODULE:FUNC")
    v.add_argument("--reference", help="the float model (name or HF folder) cosine compares with")
    v.add_argument("--lower-is-better", action="store_true", help="a MODULE:FUNC metric is an error or a loss")
    v.add_argument("--batch-size", type=positive_int, default=16)
    v.add_argument("--seq-len", type=positive_int, default=128)
    v.add_argument("--threads", type=positive_int, default=2, help="CPU threads, at least 1")
    v.set_defaults(func=_evaluate)
    i = sub.add_parser("inspect", help="what a saved folder holds: verdict, layers, schemes, sizes")
    i.add_argument("directory", metavar="DIR", help="a folder quantpilot quantize/auto wrote")
    i.set_defaults(func=_inspect)
