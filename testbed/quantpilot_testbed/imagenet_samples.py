"""The 500 ImageNet sample photographs shared with the project, and top-k accuracy over them.

The images live outside the repository, in ``shared/data/imagenet-samples/`` next to it (see
``shared/data/README.md``): one photograph for each of 500 of the 1000 ILSVRC-2012 classes, with
``labels.csv`` giving each file's class index in the standard 1000-class order.

Calibration and evaluation images must never overlap. :func:`split_calibration` takes a
calibration set spread evenly over the class-sorted list (by default every fifth image: 100 for
calibration, 400 for evaluation), so that calibration sees all kinds of classes rather than,
say, only the animals that occupy the first 398 class indices.

Example:
    >>> paths, labels = load_samples()
    >>> len(paths), labels[0], paths[0].name
    (500, 0, 'n01440764_tench.JPEG')
    >>> calibration, evaluation = split_calibration(paths, labels)
    >>> len(calibration.paths), len(evaluation.paths)
    (100, 400)
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "ENV_VAR",
    "Subset",
    "find_samples_dir",
    "load_samples",
    "split_calibration",
    "topk_accuracy",
]

ENV_VAR = "QUANTPILOT_SHARED_DATA"
_SAMPLES_SUBDIR = Path("shared") / "data" / "imagenet-samples"
_LABELS_FILE = "labels.csv"


class Subset(NamedTuple):
    """Image paths and their class indices, index-aligned.

    Example:
        >>> Subset([Path("a.JPEG")], [3]).labels
        [3]
    """

    paths: list[Path]
    labels: list[int]


def _candidate_dirs(start: Path | None) -> list[Path]:
    """Where the samples may be, most specific first, without duplicates."""
    candidates: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        # The variable names the shared data folder; accept the samples folder itself too.
        candidates += [Path(env) / "imagenet-samples", Path(env)]
    starts = [start] if start is not None else [Path(__file__).resolve().parent, Path.cwd().resolve()]
    for origin in starts:
        for ancestor in (origin, *origin.parents):
            candidates.append(ancestor / _SAMPLES_SUBDIR)
    return list(dict.fromkeys(candidates))


def find_samples_dir(start: str | Path | None = None) -> Path:
    """Locate the ``imagenet-samples`` folder.

    Looks, in order, in ``$QUANTPILOT_SHARED_DATA/imagenet-samples`` (or that variable's folder
    itself), then in ``shared/data/imagenet-samples`` under every ancestor of ``start`` (by
    default: of this package's folder, then of the current directory).

    Args:
        start: folder to walk up from instead of the package folder and the current directory.

    Returns:
        The folder that holds ``labels.csv`` and the images.

    Raises:
        FileNotFoundError: nowhere held ``labels.csv``; the message lists every place looked at.

    Example:
        >>> find_samples_dir().name
        'imagenet-samples'
    """
    candidates = _candidate_dirs(Path(start).resolve() if start is not None else None)
    for folder in candidates:
        if (folder / _LABELS_FILE).is_file():
            return folder
    looked = "\n  ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"could not find the ImageNet samples ({_SAMPLES_SUBDIR}/{_LABELS_FILE}); looked in:\n  {looked}\n"
        f"Set {ENV_VAR} to the folder that holds imagenet-samples/."
    )


def load_samples(root: str | Path | None = None) -> tuple[list[Path], list[int]]:
    """List the sample images and their labels, sorted by (class index, file name).

    Args:
        root: the ``imagenet-samples`` folder; found with :func:`find_samples_dir` when omitted.

    Returns:
        ``(paths, labels)``: absolute image paths and class indices in 0..999, index-aligned,
        in the same order on every machine.

    Raises:
        FileNotFoundError: the folder, ``labels.csv`` or an image it names is missing.

    Example:
        >>> paths, labels = load_samples()
        >>> labels[:3], paths[-1].name
        ([0, 2, 5], 'n15075141_toilet_tissue.JPEG')
    """
    folder = Path(root) if root is not None else find_samples_dir()
    labels_file = folder / _LABELS_FILE
    if not labels_file.is_file():
        raise FileNotFoundError(f"{labels_file} does not exist; pass the imagenet-samples folder as root")
    with labels_file.open(newline="") as f:
        rows = sorted((int(row["class_index"]), row["file"]) for row in csv.DictReader(f))
    missing = [name for _, name in rows if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) listed in {labels_file} are missing, e.g. {missing[0]}")
    return [(folder / name).resolve() for _, name in rows], [label for label, _ in rows]


def split_calibration(paths: Sequence[Path], labels: Sequence[int], n_calibration: int = 100) -> tuple[Subset, Subset]:
    """Split samples into disjoint calibration and evaluation sets, deterministically.

    Rule: of the ``n`` samples in the given order, the ``i``-th calibration image is the one at
    index ``(i * n) // n_calibration`` for ``i`` in ``0..n_calibration-1``; every other image is
    for evaluation. With the 500 class-sorted samples of :func:`load_samples` and the default
    100 that is every fifth image (indices 0, 5, 10, ...), so calibration spans the whole class
    range. Both subsets keep the input order.

    Args:
        paths: image paths, e.g. from :func:`load_samples`.
        labels: class indices aligned with ``paths``.
        n_calibration: size of the calibration set, 0 < n_calibration < len(paths).

    Returns:
        ``(calibration, evaluation)``, two :class:`Subset` s.

    Example:
        >>> calibration, evaluation = split_calibration(list("abcdefghij"), list(range(10)), n_calibration=3)
        >>> calibration.labels, evaluation.labels
        ([0, 3, 6], [1, 2, 4, 5, 7, 8, 9])
    """
    n = len(paths)
    if len(labels) != n:
        raise ValueError(f"paths and labels differ in length ({n} != {len(labels)})")
    if not 0 < n_calibration < n:
        raise ValueError(f"n_calibration must be between 1 and {n - 1} for {n} samples, got {n_calibration}")
    chosen = {(i * n) // n_calibration for i in range(n_calibration)}
    calibration = Subset([paths[i] for i in sorted(chosen)], [labels[i] for i in sorted(chosen)])
    rest = [i for i in range(n) if i not in chosen]
    return calibration, Subset([paths[i] for i in rest], [labels[i] for i in rest])


@torch.no_grad()
def topk_accuracy(
    model: nn.Module,
    prep: Callable[..., torch.Tensor],
    paths: Sequence[str | Path],
    labels: Sequence[int],
    k: Sequence[int] = (1, 5),
    batch_size: int = 50,
) -> dict[int, float]:
    """Top-k accuracy of an image classifier on image files.

    The model runs as given (call ``.eval()`` first for a float model) without gradients; each
    image is opened with Pillow and passed through ``prep``, which returns a (1, C, H, W) tensor.

    Args:
        model: maps a (B, C, H, W) batch to (B, num_classes) logits.
        prep: PIL image -> (1, C, H, W) float tensor, e.g. the ``prep`` from ``models.load``.
        paths: image files.
        labels: their class indices.
        k: the k values to report.
        batch_size: images per forward pass (bounds memory: 50 at 224x224 is about 30 MB).

    Returns:
        ``{k: fraction of images whose label is among the k highest logits}`` for each k.

    Example:
        >>> import torch
        >>> from quantpilot.models.efficientnet_lite import preprocess
        >>> paths, labels = load_samples()
        >>> class Guess(torch.nn.Module):  # always ranks class 0 (tench) first
        ...     def forward(self, x):
        ...         return torch.arange(1000.0, 0.0, -1.0).expand(len(x), -1)
        >>> topk_accuracy(Guess(), preprocess, paths[:2], labels[:2], k=(1, 2))
        {1: 0.5, 2: 0.5}
    """
    from PIL import Image

    if len(paths) != len(labels):
        raise ValueError(f"paths and labels differ in length ({len(paths)} != {len(labels)})")
    if not paths:
        raise ValueError("no images given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ks = sorted(set(k))
    if ks[0] < 1:
        raise ValueError(f"every k must be >= 1, got {tuple(k)}")
    hits = dict.fromkeys(ks, 0)
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            with Image.open(path) as image:
                batch.append(prep(image))
        target = torch.as_tensor(labels[start : start + batch_size]).unsqueeze(1)
        ranked = model(torch.cat(batch)).topk(ks[-1], dim=1).indices
        for kk in ks:
            hits[kk] += int((ranked[:, :kk] == target).any(dim=1).sum())
    return {kk: hits[kk] / len(paths) for kk in ks}
