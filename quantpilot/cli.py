"""The `quantpilot` command.

    quantpilot quantize --model minilm --recipe int8-static --out DIR
    quantpilot presets

`--model` is a bundled model name (`quantpilot.models.available()`) or a local Hugging Face model
directory; `--recipe` is a preset name or a recipe YAML/JSON file. `--data` gives the calibration
data: for a text model a text file with one sentence per line, for an image model a folder of
images; the first `--calib-size` calibrate and the rest are held out to check the result. Without
`--data`, the repository's testbed (`pip install -e testbed`) supplies its bundled sentences or the
ImageNet sample photos under shared/data, calibration and evaluation kept apart.

Example:
    >>> import contextlib, io
    >>> with contextlib.redirect_stdout(io.StringIO()) as printed:
    ...     code = main(["presets"])
    >>> code, {"fp8", "int8-static", "w4a16-g128"} <= set(printed.getvalue().split())
    (0, True)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

from . import api
from .evaluate import size_on_disk
from .recipe import Recipe
from .summary import summary

__all__ = ["main"]


def _recipe(value: str) -> Recipe:
    path = Path(value)
    if path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise ValueError(f"recipe file {path} does not exist")
        return Recipe.from_json(path) if path.suffix == ".json" else Recipe.from_yaml(path)
    return Recipe.preset(value)


def _is_tokenizer(prep) -> bool:
    return hasattr(prep, "tokenize") and hasattr(prep, "pad_token")


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _testbed(module: str, instead: str):
    """A module of the repository's testbed, which brings the default calibration data."""
    try:
        return importlib.import_module(f"quantpilot_testbed.{module}")
    except ModuleNotFoundError as err:
        raise ValueError(
            f"no calibration data: pass --data {instead}, or install the repository's testbed (pip install -e testbed)"
        ) from err


def _split(items: list, calib_size: int, data: Path) -> tuple[list, list]:
    if len(items) <= calib_size:
        raise ValueError(
            f"--data {data} holds {len(items)} samples: need more than --calib-size {calib_size}, "
            "the rest being held out to check the quantized model"
        )
    return items[:calib_size], items[calib_size:]


def _sentences(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Calibration and held-out sentences: from `--data` (one per line) or the testbed's bundled ones."""
    if args.data is None:
        datasets = _testbed("datasets", "FILE (one sentence per line)")
        return datasets.sentences("calibration")[: args.calib_size], datasets.sentences("eval")
    path = Path(args.data)
    if not path.is_file():
        raise ValueError(f"--data {path} is not a file; a text model needs a text file with one sentence per line")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return _split(lines, args.calib_size, path)


def _images(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """Calibration and held-out image paths: from the `--data` folder or the testbed's ImageNet samples."""
    if args.data is None:
        samples = _testbed("imagenet_samples", "DIR (a folder of images)")
        calib_set, eval_set = samples.split_calibration(*samples.load_samples())
        return list(calib_set.paths)[: args.calib_size], list(eval_set.paths)
    folder = Path(args.data)
    if not folder.is_dir():
        raise ValueError(f"--data {folder} is not a folder; an image model needs a folder of images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    return _split(paths, args.calib_size, folder)


def _quantize(args: argparse.Namespace) -> int:
    from .models import load as load_model

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty; choose a new directory (nothing is overwritten)")
    recipe = _recipe(args.recipe)
    torch.set_num_threads(args.threads)
    model, prep = load_model(args.model)
    qmodel = api.quantize(model, recipe)
    static = api.needs_calibration(qmodel)
    if _is_tokenizer(prep):
        from .text import embed, token_batches

        calib, held_out = _sentences(args)
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

        calib_paths, eval_paths = _images(args)
        images = lambda paths: torch.cat([prep(Image.open(p).convert("RGB")) for p in paths])  # noqa: E731
        if static:
            x = images(calib_paths)
            with api.calibrate(qmodel, progress=True):
                for chunk in x.split(16):
                    qmodel(chunk)
        api.freeze(qmodel)
        x = images(eval_paths[:64])
        with torch.no_grad():
            agree = (model(x).argmax(-1) == qmodel(x).argmax(-1)).float().mean()
        check = f"top-1 agreement with float on {len(x)} held-out photos: {agree:.3f}"
    api.save(qmodel, out)
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
    parser = argparse.ArgumentParser(prog="quantpilot", description="Quantize PyTorch models and measure the cost.")
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="quantize, calibrate, freeze and save a model")
    q.add_argument("--model", required=True, help="bundled model name or local Hugging Face model directory")
    q.add_argument("--recipe", default="int8-static", help="preset name or recipe .yaml/.json file")
    q.add_argument("--out", required=True, help="new directory for the quantized model")
    q.add_argument(
        "--data",
        help="calibration data: a text file (one sentence per line) or a folder of images; "
        "default: the repository testbed's bundled sentences or ImageNet samples",
    )
    q.add_argument("--calib-size", type=int, default=200, help="calibration samples (sentences or images)")
    q.add_argument("--threads", type=int, default=2)
    q.set_defaults(func=_quantize)
    p = sub.add_parser("presets", help="list the recipe presets")
    p.set_defaults(func=_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; errors in the user's input (and a missing extra) print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ModuleNotFoundError) as err:  # a missing extra too
        print(f"quantpilot: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
