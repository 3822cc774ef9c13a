"""The `quantpilot` command.

    quantpilot quantize --model minilm --recipe int8-static --out DIR
    quantpilot presets

`--model` is a bundled model name (`quantpilot.models.available()`) or a local Hugging Face model
directory (`config.json`, weights, and a tokenizer for a text model or an image processor for an
image model); `--recipe` is a preset name or a recipe YAML/JSON file. `--data` gives the calibration
data: for a text model a text file with one sentence per line, for an image model a folder of
images; the first `--calib-size` calibrate and the rest are held out to check the result. Without
`--data`, the repository's testbed (`pip install -e testbed`) supplies its bundled sentences or the
ImageNet sample photos under shared/data, calibration and evaluation kept apart.

Every mistake in the input is one line on stderr (`quantpilot: error: ...`) and exit status 2,
checked before any work starts; Ctrl-C exits 130. Nothing half-written is left behind: a `--out`
folder the command created is removed again when it fails or is interrupted.

Example:
    >>> import contextlib, io
    >>> with contextlib.redirect_stdout(io.StringIO()) as printed:
    ...     code = main(["presets"])
    >>> code, {"fp8", "int8-static", "w4a16-g128"} <= set(printed.getvalue().split())
    (0, True)
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from . import api
from .cli_inputs import _check_data_kind, _images, _is_tokenizer, _load, _model_kind, _sentences, read_text_file
from .evaluate import size_on_disk
from .recipe import Recipe
from .summary import summary

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (`quantpilot: error: ...`) and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"quantpilot: error: {message} (see {self.prog} --help)\n")


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _recipe(value: str) -> Recipe:
    path = Path(value)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        return Recipe.preset(value)
    if not path.is_file():
        raise ValueError(f"recipe file {path} does not exist")
    text = read_text_file(path, "recipe file")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"recipe file {path} is not valid JSON: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ValueError(
            f"recipe file {path} is not valid YAML: {where}{getattr(err, 'problem', None) or err}"
        ) from None
    try:
        return Recipe.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"recipe file {path}: {err}") from None


def _check_out(out: Path) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ValueError(f"--out {out} is an existing file; choose a new directory (nothing is overwritten)")
        if any(out.iterdir()):
            raise ValueError(f"--out {out} exists and is not empty; choose a new directory (nothing is overwritten)")
        return
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"--out {out}: {parent} is a file, not a directory")


def _created_root(out: Path) -> Path | None:
    """The outermost folder on the way to `out` that does not exist yet (what the command will create)."""
    out = out.absolute()
    if out.exists():
        return None
    root = out
    while not root.parent.exists() and root.parent != root.parent.parent:
        root = root.parent
    return root


def _undo(out: Path, created: Path | None, existed: set[str]) -> None:
    """Remove what this command wrote: the folders it created, or new entries of a pre-existing empty --out."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    if out.is_dir():
        for entry in out.iterdir():
            if entry.name not in existed:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def _logits(output: Any) -> torch.Tensor:
    """An image model's class scores (or, for a model without a head, its pooled features)."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("logits", "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value.flatten(1)
    return output[0].flatten(1)


def _quantize(args: argparse.Namespace) -> int:
    out = Path(args.out)
    from .cli_stream import quantize_causal_lm, streams

    recipe = _recipe(args.recipe)
    if streams(args.model, recipe):  # language models stream block by block (and resume into --out)
        return quantize_causal_lm(args, recipe)
    _check_out(out)
    kind = _model_kind(args.model)
    if kind is not None:
        _check_data_kind(args.data, kind, args.model)
        calib, held_out = _sentences(args) if kind == "text" else _images(args)  # all checked before loading
    torch.set_num_threads(args.threads)
    model, prep = _load(args.model, kind)
    if kind is None:  # a registered model of unlisted kind: tell from its input preparation
        kind = "text" if _is_tokenizer(prep) else "image"
        _check_data_kind(args.data, kind, args.model)
        calib, held_out = _sentences(args) if kind == "text" else _images(args)

    created, existed = _created_root(out), {p.name for p in out.iterdir()} if out.is_dir() else set()
    try:
        qmodel = api.quantize(model, recipe)
        static = api.needs_calibration(qmodel)
        if kind == "text":
            from .text import embed, token_batches

            if static:
                with api.calibrate(qmodel, progress=True):
                    for batch in token_batches(prep, calib, batch_size=32):
                        qmodel(**batch)
            api.freeze(qmodel)
            cos = (embed(model, prep, held_out) * embed(qmodel, prep, held_out)).sum(-1)
            check = (
                f"embedding cosine vs float on {len(held_out)} held-out sentences: "
                f"mean {cos.mean():.4f}, min {cos.min():.4f}"
            )
        else:
            from PIL import Image  # Pillow comes with the models extra, as image models do

            def images(paths: list[Path]) -> torch.Tensor:
                try:
                    return torch.cat([prep(Image.open(p).convert("RGB")) for p in paths])
                except OSError as err:  # PIL.UnidentifiedImageError too
                    raise ValueError(f"--data: cannot read an image: {err}") from None

            if static:
                x = images(calib)
                with api.calibrate(qmodel, progress=True):
                    for chunk in x.split(16):
                        qmodel(chunk)
            api.freeze(qmodel)
            x = images(held_out[:64])
            with torch.no_grad():
                ref_out = model(x)
                ref, got = _logits(ref_out), _logits(qmodel(x))
            if isinstance(ref_out, torch.Tensor) or getattr(ref_out, "logits", None) is not None:
                agree = (ref.argmax(-1) == got.argmax(-1)).float().mean()
                check = f"top-1 agreement with float on {len(x)} held-out photos: {agree:.3f}"
            else:
                cos = torch.nn.functional.cosine_similarity(ref, got, dim=-1)
                check = f"feature cosine vs float on {len(x)} held-out photos: mean {cos.mean():.4f}"
        api.save(qmodel, out)
        from .cli_auto import source_of
        from .saved_dirs import write_source

        write_source(out, **source_of(args.model, model))  # export/benchmark/evaluate/inspect reopen it alone
    except BaseException:
        _undo(out, created, existed)
        raise
    print(summary(qmodel))
    print(check)
    print(
        f"size on disk: float {size_on_disk(model) / 2**20:.1f} MiB, quantized {size_on_disk(qmodel) / 2**20:.1f} MiB"
    )
    print(f"saved to {out}")
    return 0


def _presets(_: argparse.Namespace) -> int:
    for name in Recipe.presets():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `quantpilot` command."""
    from . import __version__
    from .cli_auto import add_auto_parser
    from .cli_bench import add_benchmark_parser
    from .cli_tools import add_tool_parsers

    parser = _Parser(prog="quantpilot", description="Quantize PyTorch models and measure the cost.")
    parser.add_argument("--version", action="version", version=f"quantpilot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_auto_parser(sub, _positive_int)
    q = sub.add_parser("quantize", help="quantize, calibrate, freeze and save a model")
    q.add_argument("--model", required=True, help="bundled model name or local Hugging Face model directory")
    q.add_argument("--recipe", default="int8-static", help="preset name or recipe .yaml/.json file")
    q.add_argument("--out", required=True, help="new (or empty) directory for the quantized model")
    q.add_argument(
        "--data",
        help="calibration data: a text file (one sentence per line) or a folder of images; "
        "default: the repository testbed's bundled sentences or ImageNet samples",
    )
    q.add_argument(
        "--calib-size", type=_positive_int, default=200, help="calibration samples (sentences or images), at least 1"
    )
    q.add_argument("--threads", type=_positive_int, default=2, help="CPU threads, at least 1")
    q.add_argument("--calib-data", help="causal LM folders: calibration text file (GPTQ, AWQ)")
    q.add_argument("--calib-samples", type=_positive_int, default=128, help="causal LMs: calibration windows")
    q.add_argument("--seq-len", type=_positive_int, default=512, help="causal LMs: tokens per calibration window")
    q.set_defaults(func=_quantize)
    p = sub.add_parser("presets", help="list the recipe presets")
    p.set_defaults(func=_presets)
    add_tool_parsers(sub, _positive_int)
    add_benchmark_parser(sub, _positive_int)
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the command line; errors in the user's input (and a missing extra) print one line and exit 2.

    Ctrl-C prints one line and exits 130, after removing whatever the command had started to write.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # a usage error (one line, status 2), or --help (status 0)
        return done.code if isinstance(done.code, int) else 2
    # torch's ONNX exporter logs one warning per torchvision operator it cannot register; a command's
    # output is its progress and verdict, so only the exporter's errors get through.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("quantpilot: error: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ModuleNotFoundError) as err:  # a missing extra too
        print(f"quantpilot: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
