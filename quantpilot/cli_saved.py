"""What `quantpilot export|benchmark|evaluate|inspect` share: reopen a saved folder, tell its kind, make inputs.

Example:
    >>> kind_of({"kind": "bundled", "name": "efficientnet-lite0"}, None)
    'image'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["Saved", "open_folder", "kind_of", "float_skeleton", "synthetic_batch", "is_saved_folder"]


@dataclass(frozen=True)
class Saved:
    """A reopened folder: the quantized model, its input preparation, its source record, where it lives, its kind."""

    qmodel: torch.nn.Module
    prep: Any
    record: dict[str, Any]
    folder: Path
    kind: str


def kind_of(record: dict[str, Any], folder: Path | None) -> str:
    """ "text", "image" or "causal-lm" from a `source.json` record (and the files copied beside it).

    Example:
        >>> kind_of({"kind": "transformers", "auto_class": "AutoModelForCausalLM"}, None)
        'causal-lm'
    """
    from .cli_inputs import _BUNDLED_KINDS

    if record.get("kind") == "bundled":
        return _BUNDLED_KINDS.get(record.get("name"), "text")
    auto = record.get("auto_class", "")
    if auto == "AutoModelForCausalLM":
        return "causal-lm"
    if auto == "AutoModelForImageClassification":
        return "image"
    if folder is not None and any(
        (folder / n).is_file() for n in ("preprocessor_config.json", "image_processor_config.json")
    ):
        return "image"
    return "text"


def is_saved_folder(path: str | Path) -> bool:
    """Whether `path` is a folder the command line (or `autoquantize`) saved a quantized model in.

    Example:
        >>> is_saved_folder("minilm")
        False
    """
    from .saved_dirs import model_folder

    try:
        model_folder(path)
    except ValueError:
        return False
    return True


def open_folder(directory: str | Path) -> Saved:
    """Reopen a saved folder from the folder alone (`saved_dirs.open_saved`), with its kind.

    Example:
        >>> import tempfile
        >>> open_folder(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        ValueError: ... holds no quantpilot model (no quantpilot.json here or in model/)
    """
    from .saved_dirs import model_folder, open_saved, read_source

    folder = model_folder(directory)
    record = read_source(folder)
    qmodel, prep = open_saved(folder)
    return Saved(qmodel, prep, record, folder, kind_of(record, folder))


def float_skeleton(saved: Saved) -> tuple[torch.nn.Module, bool]:
    """`(float model, has real weights)`: the bundled model, or the architecture from the copied config.

    A transformers folder holds no float weights; its architecture with random weights runs at the float
    model's speed, which is all a benchmark needs (the second value says the weights are not real).

    Example:
        >>> float_skeleton.__name__
        'float_skeleton'
    """
    if saved.record["kind"] == "bundled":
        from .models import load

        return load(saved.record["name"])[0], True
    import transformers

    config = transformers.AutoConfig.from_pretrained(saved.folder, local_files_only=True)
    model = getattr(transformers, saved.record["auto_class"]).from_config(config)
    return model.eval(), False


def synthetic_batch(kind: str, prep: Any, model: torch.nn.Module, batch: int, seq_len: int) -> Any:
    """An input batch of the given size for timing and export: padded text, random pixels or random token ids.

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> synthetic_batch("image", lambda im: torch.zeros(1, 3, 8, 8), net, 2, 0).shape
        torch.Size([2, 3, 8, 8])
    """
    generator = torch.Generator().manual_seed(0)
    if kind == "image":
        from PIL import Image

        shape = prep(Image.new("RGB", (256, 256))).shape[1:] if prep is not None else (3, 224, 224)
        return torch.randn(batch, *shape, generator=generator)
    if kind == "causal-lm" or prep is None:
        vocab = int(getattr(getattr(model, "config", None), "vocab_size", 1000) or 1000)
        return {"input_ids": torch.randint(0, vocab, (batch, seq_len), generator=generator)}
    words = "the quick brown fox jumps over the lazy dog " * (seq_len // 4 + 1)
    encoded = prep([words] * batch, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    return dict(encoded)
