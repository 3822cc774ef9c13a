"""The data the `quantpilot` command reads for `auto` and `evaluate`: text, images with labels, token ids.

| model kind   | a data PATH is                                                                          |
|--------------|-----------------------------------------------------------------------------------------|
| text         | a text file, one sample per line, or `.jsonl` with a `text` field per line              |
| image        | a folder of photos; labels from class sub-folders or a `labels.csv` (`file,label`)      |
| causal-lm    | text (as above; tokenized and cut into `--seq-len` windows), `.jsonl` with `input_ids`, |
|              | or `.npy` token ids (1-D: cut into windows; 2-D: one row per sample)                   |

Every check raises `ValueError` with one line saying what to change; `quantpilot.cli` prints it.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.jsonl"; _ = p.write_text('{"text": "a"}\\n{"text": "b"}\\n')
    >>> read_texts(p, "--calib-data")
    ['a', 'b']
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cli_inputs import _IMAGE_SUFFIXES, read_text_file

__all__ = ["Samples", "read_texts", "read_images", "read_token_ids", "read_samples", "take"]


@dataclass(frozen=True)
class Samples:
    """What one data PATH holds: `items` (sentences, image paths or 1-D token-id tensors) and optional labels."""

    kind: str
    items: list[Any]
    labels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.items)


def _exists(path: Path, flag: str) -> None:
    if not path.exists():
        raise ValueError(f"{flag} {path} does not exist")


def read_texts(path: str | Path, flag: str) -> list[str]:
    """Samples of a text file (one per non-empty line) or of a `.jsonl` file (its `text` fields).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.txt"; _ = p.write_text("one\\n\\n two \\n")
        >>> read_texts(p, "--eval-data")
        ['one', 'two']
    """
    path = Path(path)
    _exists(path, flag)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; a text model needs a text file (one sample per line) or .jsonl")
    text = read_text_file(path, flag, "; pass one sample per line, or .jsonl")
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if path.suffix.lower() != ".jsonl":
        texts = lines
    else:
        texts = [_jsonl_field(line, "text", str, path, flag, n) for n, line in enumerate(lines, 1)]
    if not texts:
        raise ValueError(f"{flag} {path} holds no samples (every line is empty)")
    return texts


def _jsonl_field(line: str, field: str, kind: type, path: Path, flag: str, number: int) -> Any:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag} {path}, line {number}: not valid JSON ({err.msg})") from None
    value = record.get(field) if isinstance(record, dict) else None
    if not isinstance(value, kind):
        raise ValueError(f"{flag} {path}, line {number}: needs a {field!r} field holding a {kind.__name__}")
    return value


# Header names of the label column in a labels.csv, most specific first (else the second column).
_LABEL_COLUMNS = ("label", "class_index", "label_index", "class_id", "target", "class")


def _csv_labels(folder: Path, flag: str) -> dict[str, str]:
    table = folder / "labels.csv"
    try:
        rows = list(csv.reader(table.read_text(encoding="utf-8").splitlines()))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{flag} {table} cannot be read as CSV: {err}") from None
    column = 1
    if rows and rows[0] and rows[0][0].strip().lower() in ("file", "filename", "image", "path"):
        header = [name.strip().lower() for name in rows[0]]  # e.g. file,synset,class_index,name: take class_index
        column = next((header.index(n) for n in _LABEL_COLUMNS if n in header), 1)
        rows = rows[1:]
    labels = {}
    for number, row in enumerate(rows, 1):
        if len(row) <= column or not row[0].strip() or not row[column].strip():
            raise ValueError(f"{flag} {table}, row {number}: expected 'file,label'")
        labels[row[0].strip()] = row[column].strip()
    return labels


def read_images(path: str | Path, flag: str) -> Samples:
    """Photos of a folder, with labels from class sub-folders (`cat/1.jpg`) or `labels.csv` when present.

    Example:
        >>> import tempfile
        >>> read_images(tempfile.mkdtemp(), "--calib-data")
        Traceback (most recent call last):
        ...
        ValueError: --calib-data ... holds no images (.bmp, .jpeg, .jpg, .png, .webp), nor class sub-folders of them
    """
    folder = Path(path)
    _exists(folder, flag)
    if not folder.is_dir():
        raise ValueError(f"{flag} {folder} is a file, but the model takes images: pass a folder of photos")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    labels: list[str] | None = None
    if images and (folder / "labels.csv").is_file():
        table = _csv_labels(folder, flag)
        missing = [p.name for p in images if p.name not in table]
        if missing:
            raise ValueError(f"{flag} {folder}/labels.csv has no label for {len(missing)} image(s), e.g. {missing[0]}")
        labels = [table[p.name] for p in images]
    elif not images:
        classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        for d in classes:
            found = sorted(p for p in d.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
            images += found
            labels = (labels or []) + [d.name] * len(found)
    if not images:
        raise ValueError(
            f"{flag} {folder} holds no images ({', '.join(sorted(_IMAGE_SUFFIXES))}), nor class sub-folders of them"
        )
    return Samples("image", images, labels)


def read_token_ids(path: str | Path, flag: str, tokenizer: Any, seq_len: int) -> list[torch.Tensor]:
    """Token-id samples for a language model, each a 1-D LongTensor of at most `seq_len` ids.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "ids.npy"; np.save(p, np.arange(10))
        >>> [t.tolist() for t in read_token_ids(p, "--eval-data", None, 4)]
        [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    path = Path(path)
    _exists(path, flag)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        import numpy as np

        try:
            array = np.load(path, allow_pickle=False)  # never unpickle a user's file
        except (OSError, ValueError) as err:
            raise ValueError(f"{flag} {path} is not a readable .npy array: {err}") from None
        if array.dtype.kind not in "iu" or array.ndim not in (1, 2):
            raise ValueError(
                f"{flag} {path}: token ids must be a 1-D or 2-D integer array, got {array.dtype} {array.shape}"
            )
        rows = (
            [torch.from_numpy(array.astype("int64"))]
            if array.ndim == 1
            else list(torch.from_numpy(array.astype("int64")))
        )
    elif suffix == ".jsonl" and '"input_ids"' in path.read_text(encoding="utf-8", errors="replace")[:10000]:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [torch.tensor(_jsonl_field(line, "input_ids", list, path, flag, n), dtype=torch.long)
                for n, line in enumerate(lines, 1)]  # fmt: skip
    else:
        if tokenizer is None:
            raise ValueError(f"{flag} {path}: text needs the model's tokenizer; pass .npy or .jsonl token ids")
        text = "\n\n".join(read_texts(path, flag))
        rows = [torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)]
    windows = []
    for row in rows:
        if row.ndim != 1:
            raise ValueError(f"{flag} {path}: each sample of token ids must be a flat list of integers")
        if row.numel() > seq_len or len(rows) == 1:
            windows += [w for w in row.split(seq_len) if w.numel() == seq_len]  # whole windows, as GPTQ/AWQ do
        elif row.numel() >= 2:
            windows.append(row)
    if not windows:
        raise ValueError(f"{flag} {path} holds fewer than {seq_len} tokens: pass more text or a smaller --seq-len")
    return windows


def read_samples(path: str | Path, kind: str, flag: str, tokenizer: Any = None, seq_len: int = 128) -> Samples:
    """The samples of a data PATH for a model of `kind` ("text", "image" or "causal-lm").

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.txt"; _ = p.write_text("a\\nb\\n")
        >>> len(read_samples(p, "text", "--calib-data"))
        2
    """
    if kind == "image":
        return read_images(path, flag)
    if Path(path).is_dir():
        raise ValueError(f"{flag} {path} is a folder, but the model takes text: pass a text, .jsonl or .npy file")
    if Path(path).suffix.lower() in _IMAGE_SUFFIXES:
        raise ValueError(f"{flag} {path} is an image, but the model takes text: pass a text, .jsonl or .npy file")
    if kind == "causal-lm":
        return Samples(kind, read_token_ids(path, flag, tokenizer, seq_len))
    return Samples(kind, read_texts(path, flag))


def take(samples: Samples, size: int | None, flag: str, what: str) -> Samples:
    """The first `size` samples (all when None); asking for more than there are is a one-line error.

    Example:
        >>> take(Samples("text", ["a", "b", "c"]), 2, "--calib-size", "--calib-data").items
        ['a', 'b']
    """
    if size is None:
        return samples
    if size > len(samples):
        raise ValueError(f"{flag} {size} is more than the {len(samples)} samples in {what}: use {len(samples)} or less")
    labels = None if samples.labels is None else samples.labels[:size]
    return Samples(samples.kind, samples.items[:size], labels)
