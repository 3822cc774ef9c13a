"""Folders the `quantpilot` command writes, reopened without the user's original model.

`qp.load` needs the float model's skeleton. A folder written by the command line therefore also holds
`source.json`, which says how to rebuild that skeleton: a bundled model name, or a Hugging Face
architecture whose `config.json` and tokenizer/processor files were copied beside the weights. With it,
`quantpilot export|benchmark|evaluate|inspect DIR` work on the folder alone, on any machine.

`source.json` (format 1):
    {"format": 1, "kind": "bundled", "name": "minilm"}
    {"format": 1, "kind": "transformers", "auto_class": "AutoModelForCausalLM"}

Example:
    >>> import tempfile, torch, quantpilot as qp
    >>> out = tempfile.mkdtemp()
    >>> _ = write_source(out, bundled="minilm")
    >>> read_source(out)["name"]
    'minilm'
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from .atomic import atomic_path

__all__ = ["SOURCE_FILE", "write_source", "read_source", "model_folder", "open_saved", "copy_hf_files"]

SOURCE_FILE = "source.json"
_FORMAT = 1
# What a Hugging Face folder needs besides its weights to rebuild the model and prepare its inputs.
_HF_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model",
    "added_tokens.json", "chat_template.jinja", "preprocessor_config.json", "image_processor_config.json",
)  # fmt: skip
_AUTO_CLASSES = (
    "AutoModel", "AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForSequenceClassification",
    "AutoModelForImageClassification", "AutoModelForMaskedLM", "AutoModelForTokenClassification",
)  # fmt: skip


def copy_hf_files(hf_dir: str | Path, directory: str | Path) -> list[str]:
    """Copy the config, tokenizer and processor files (not the weights) of a Hugging Face folder into `directory`.

    Example:
        >>> import tempfile
        >>> copy_hf_files(tempfile.mkdtemp(), tempfile.mkdtemp())
        []
    """
    source, target = Path(hf_dir), Path(directory)
    copied = []
    for name in _HF_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
            copied.append(name)
    return copied


def write_source(
    directory: str | Path,
    *,
    bundled: str | None = None,
    hf_dir: str | Path | None = None,
    auto_class: str = "AutoModel",
) -> Path:
    """Record in `directory` how to rebuild the float skeleton of the model saved there.

    Pass `bundled` (a name from `qp.models.available()`) or `hf_dir` (the user's Hugging Face folder, whose
    config and tokenizer files are copied; `auto_class` names the transformers class that builds it).

    Example:
        >>> import tempfile
        >>> write_source(tempfile.mkdtemp(), bundled="minilm").name
        'source.json'
    """
    if (bundled is None) == (hf_dir is None):
        raise ValueError("write_source: pass exactly one of bundled= or hf_dir=")
    directory = Path(directory)
    if bundled is not None:
        record: dict[str, Any] = {"format": _FORMAT, "kind": "bundled", "name": bundled}
    else:
        if auto_class not in _AUTO_CLASSES:
            raise ValueError(f"auto_class {auto_class!r} is not one of {', '.join(_AUTO_CLASSES)}")
        if "config.json" not in copy_hf_files(hf_dir, directory):  # type: ignore[arg-type]
            raise ValueError(f"{hf_dir} has no config.json: it is not a Hugging Face model folder")
        record = {"format": _FORMAT, "kind": "transformers", "auto_class": auto_class}
    path = directory / SOURCE_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def model_folder(directory: str | Path) -> Path:
    """The folder holding the saved model: `directory` itself, or its `model/` (what `autoquantize` saves).

    Example:
        >>> import tempfile
        >>> model_folder(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        ValueError: ... holds no quantpilot model (no quantpilot.json here or in model/)
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such folder")
    for candidate in (directory, directory / "model"):
        if (candidate / "quantpilot.json").is_file():
            return candidate
    raise ValueError(f"{directory} holds no quantpilot model (no quantpilot.json here or in model/)")


def read_source(directory: str | Path) -> dict[str, Any]:
    """The `source.json` record of a saved folder, checked.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp(); _ = write_source(d, bundled="minilm")
        >>> read_source(d)["kind"]
        'bundled'
    """
    path = Path(directory) / SOURCE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"{directory} has no {SOURCE_FILE}: it was saved by the Python API, so reopen it with "
            "qp.load(float_model, folder) and your own float model"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is damaged: {err}") from None
    if not isinstance(record, dict) or record.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a format-{_FORMAT} source record (write it again with a current quantpilot)")
    kind = record.get("kind")
    if kind == "bundled" and isinstance(record.get("name"), str):
        return record
    if kind == "transformers" and record.get("auto_class") in _AUTO_CLASSES:
        return record
    raise ValueError(f"{path}: unknown model source {record!r}")


def _skeleton(folder: Path, record: dict[str, Any]) -> tuple[nn.Module, Any]:
    """The float model to load into, and its input preparation (tokenizer, image processor or transform)."""
    if record["kind"] == "bundled":
        from .models import load as load_model

        return load_model(record["name"])
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    auto = getattr(transformers, record["auto_class"])
    with torch.device("meta"):  # qp.load fills every tensor from the saved file
        model = auto.from_config(config)
    prep = None  # a folder saved without tokenizer or processor files: the caller brings its own inputs
    if any((folder / name).is_file() for name in ("preprocessor_config.json", "image_processor_config.json")):
        prep = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    elif any((folder / name).is_file() for name in _HF_FILES[2:11]):
        prep = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), prep


def open_saved(directory: str | Path) -> tuple[nn.Module, Any]:
    """Reopen a folder the `quantpilot` command wrote: `(quantized model, prep)`.

    prep is the tokenizer, the image processor, or None when the folder holds neither.

    Example:
        >>> import tempfile
        >>> open_saved(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        ValueError: ... holds no quantpilot model (no quantpilot.json here or in model/)
    """
    from .persistence import load

    folder = model_folder(directory)
    record = read_source(folder)
    try:
        float_model, prep = _skeleton(folder, record)
    except (OSError, KeyError, RuntimeError) as err:
        raise ValueError(f"cannot rebuild the model saved in {folder}: {err}") from None
    return load(float_model, folder), prep
