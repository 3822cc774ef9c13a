"""What the `quantpilot` command reads: the model (bundled name or local folder) and its calibration data.

Each check runs before any work starts and raises `ValueError` with a one-line message; `quantpilot.cli`
prints it as `quantpilot: error: ...`.

Example:
    >>> _model_kind("minilm")
    'text'
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

import torch

__all__: list[str] = []


def _is_tokenizer(prep) -> bool:
    return hasattr(prep, "tokenize") and hasattr(prep, "pad_token")


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model",
    "sentencepiece.bpe.model",
)  # fmt: skip
_BUNDLED_KINDS = {"minilm": "text", "efficientnet-lite0": "image"}


def _folder_kind(folder: Path) -> str:
    """The input kind of a local Hugging Face model folder: "text" (a tokenizer) or "image" (an image processor).

    Checked before anything is loaded: the folder exists and has config.json, weights and one input kind.
    """
    if not folder.exists():
        raise ValueError(f"--model {folder}: no such folder")
    if not folder.is_dir():
        raise ValueError(f"--model {folder} is a file; pass a Hugging Face model folder or a bundled model name")
    if not (folder / "config.json").is_file():
        raise ValueError(f"--model {folder} has no config.json: it is not a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ValueError(f"--model {folder} has config.json but no weights (no *.safetensors or *.bin file)")
    text = any((folder / name).is_file() for name in _TOKENIZER_FILES)
    image = False
    for name in ("preprocessor_config.json", "image_processor_config.json"):
        try:
            config = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        image = image or (isinstance(config, dict) and any("image" in str(key) for key in config))
    if text and image:
        raise ValueError(
            f"--model {folder} has both a tokenizer and an image processor; "
            "quantpilot quantize handles text-only or image-only models"
        )
    if not text and not image:
        raise ValueError(
            f"--model {folder} has neither a tokenizer ({', '.join(_TOKENIZER_FILES[:2])}) nor an image processor "
            "(preprocessor_config.json), so there is no way to prepare calibration data for it"
        )
    return "text" if text else "image"


def read_text_file(path: Path, flag: str, hint: str = "") -> str:
    """The UTF-8 text of a file the user named with `flag`; anything else is one line ending in `hint`.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "b.bin"; _ = p.write_bytes(b"\\xff")
        >>> read_text_file(p, "--data", "; pass one sentence per line")
        Traceback (most recent call last):
        ...
        ValueError: --data ... is not UTF-8 text; pass one sentence per line
    """
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{flag} {path} is not UTF-8 text{hint}") from None


def _model_kind(name: str) -> str | None:
    """The model's input kind when it can be told without loading it (None: tell from what `load` returns)."""
    from .models import available

    if name in available():
        return _BUNDLED_KINDS.get(name)
    path = Path(name).expanduser()
    if path.exists() or any(sep in name for sep in ("/", "\\")) or name.startswith((".", "~")):
        return _folder_kind(path)
    raise ValueError(
        f"unknown model {name!r}: use one of {', '.join(available())}, "
        "or the path of a local folder holding a Hugging Face model (with config.json)"
    )


def _load(name: str, kind: str | None) -> tuple[torch.nn.Module, Any]:
    from .models import available
    from .models import load as load_model

    try:
        # qp.models.load tells a text folder (tokenizer) from an image folder (image processor) itself.
        return load_model(Path(name).expanduser() if name not in available() else name)
    except (OSError, RuntimeError, KeyError) as err:  # damaged or mismatched files in the user's folder
        raise ValueError(f"cannot load model {name}: {err}") from None


def _testbed(module: str, instead: str):
    """A module of the repository's testbed, which brings the default calibration data."""
    try:
        return importlib.import_module(f"quantpilot_testbed.{module}")
    except ModuleNotFoundError as err:
        raise ValueError(
            f"no calibration data: pass --data {instead}, or install the repository's testbed (pip install -e testbed)"
        ) from err


def _split(items: list, calib_size: int, data: Path, what: str) -> tuple[list, list]:
    if len(items) <= calib_size:
        raise ValueError(
            f"--data {data} holds {len(items)} {what}: need more than --calib-size {calib_size}, the rest being "
            f"held out to check the quantized model (use --calib-size {max(len(items) - 1, 1)} or less, or more data)"
        )
    return items[:calib_size], items[calib_size:]


def _enough(available: int, calib_size: int, what: str) -> None:
    if calib_size > available:
        raise ValueError(
            f"--calib-size {calib_size} is more than the testbed's {available} calibration {what}: "
            f"use --calib-size {available} or less, or pass --data"
        )


def _check_data_kind(data: str | None, kind: str, model: str) -> None:
    """Refuse a data path of the wrong kind for the model before anything heavy runs."""
    if data is None:
        return
    path = Path(data)
    if not path.exists():
        raise ValueError(f"--data {path} does not exist")
    if kind == "text":
        if path.is_dir():
            raise ValueError(
                f"--data {path} is a folder, but {model} is a text model (it has a tokenizer): "
                "pass a text file with one sentence per line"
            )
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            raise ValueError(
                f"--data {path} is an image, but {model} is a text model (it has a tokenizer): "
                "pass a text file with one sentence per line"
            )
    elif not path.is_dir():
        raise ValueError(
            f"--data {path} is a file, but {model} is an image model (it takes images): pass a folder of images"
        )


def _sentences(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Calibration and held-out sentences: from `--data` (one per line) or the testbed's bundled ones."""
    if args.data is None:
        datasets = _testbed("datasets", "FILE (one sentence per line)")
        calibration = datasets.sentences("calibration")
        _enough(len(calibration), args.calib_size, "sentences")
        return calibration[: args.calib_size], datasets.sentences("eval")
    path = Path(args.data)
    text = read_text_file(path, "--data", "; a text model needs one sentence per line")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return _split(lines, args.calib_size, path, "sentences")


def _images(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """Calibration and held-out image paths: from the `--data` folder or the testbed's ImageNet samples."""
    if args.data is None:
        samples = _testbed("imagenet_samples", "DIR (a folder of images)")
        calib_set, eval_set = samples.split_calibration(*samples.load_samples())
        _enough(len(calib_set.paths), args.calib_size, "images")
        return list(calib_set.paths)[: args.calib_size], list(eval_set.paths)
    folder = Path(args.data)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    return _split(paths, args.calib_size, folder, f"images ({', '.join(sorted(_IMAGE_SUFFIXES))})")
