"""The metrics of `quantpilot auto|evaluate`: model inputs in batches, and `eval_fn(model, items)` per metric.

Eval items are `(inputs, target)` pairs: `inputs` as the model takes them (a tokenizer's dict, a pixel
tensor, `{"input_ids": ...}`), `target` what the metric compares with: the float model's normalised
embeddings (cosine), class indices (top1), nothing (perplexity), labels or nothing (MODULE:FUNC).
Every metric returns per-sample scores, so the autopilot can put a bootstrap interval on each number.

| metric       | per-sample score                                                   | better |
|--------------|--------------------------------------------------------------------|--------|
| cosine       | cosine of the (mean-pooled) output with the float model's          | higher |
| top1         | 1 if the arg-max class is the label, else 0                        | higher |
| perplexity   | exp(mean next-token loss) of each sequence                         | lower  |
| MODULE:FUNC  | whatever `FUNC(model, items)` returns (a float or per-sample list) | higher unless --lower-is-better |

Example:
    >>> import torch
    >>> net = torch.nn.Linear(4, 3)
    >>> items = cosine_items(net, [torch.randn(2, 4)])
    >>> [round(s, 4) for s in cosine(net, items)]
    [1.0, 1.0]
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .batches import call_model, first_tensor
from .text import mean_pool

__all__ = ["METRICS", "metric_function", "lower_is_better", "cosine", "cosine_items", "top1", "perplexity",
           "label_indices", "text_batches", "image_batches", "token_batches_of"]  # fmt: skip

METRICS = ("cosine", "top1", "perplexity")


def text_batches(tokenizer: Any, texts: list[str], batch_size: int = 16, max_length: int = 128) -> list[dict]:
    """Tokenized batches as plain dicts of tensors (what the model, ONNX export and engines take).

    Example:
        >>> text_batches(lambda s, **k: {"n": torch.tensor(len(s))}, ["a", "b", "c"], batch_size=2)[1]["n"].item()
        1
    """
    from .text import token_batches

    return [dict(b) for b in token_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length)]


def image_batches(prep: Callable[[Any], torch.Tensor], paths: list[Path], batch_size: int = 16) -> list[torch.Tensor]:
    """Photos through the model's preparation (PIL image -> (1, 3, H, W)), stacked in batches.

    Example:
        >>> image_batches(lambda im: torch.zeros(1, 3, 2, 2), [])
        []
    """
    from PIL import Image  # Pillow comes with the models extra, as image models do

    rows = []
    for path in paths:
        try:
            with Image.open(path) as image:
                rows.append(prep(image.convert("RGB")))
        except OSError as err:  # PIL.UnidentifiedImageError too
            raise ValueError(f"cannot read the image {path}: {err}") from None
    return [torch.cat(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


def token_batches_of(windows: list[torch.Tensor], batch_size: int = 8) -> list[dict]:
    """Token-id windows stacked into `{"input_ids": (B, L)}` batches (consecutive windows of one length).

    Example:
        >>> [b["input_ids"].shape[0] for b in token_batches_of([torch.arange(4)] * 3, batch_size=2)]
        [2, 1]
    """
    batches, group = [], []
    for window in windows:
        if group and (len(group) == batch_size or group[0].numel() != window.numel()):
            batches.append({"input_ids": torch.stack(group)})
            group = []
        group.append(window)
    if group:
        batches.append({"input_ids": torch.stack(group)})
    return batches


def _embedding(output: Any, inputs: Any) -> torch.Tensor:
    """(B, D) L2-normalised: token outputs mean-pooled over the attention mask, other outputs flattened."""
    out = first_tensor(output).float()
    if out.dim() == 3:
        mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        out = mean_pool(out, mask) if isinstance(mask, torch.Tensor) else out.mean(1)
    return torch.nn.functional.normalize(out.flatten(1), dim=-1)


def cosine_items(float_model: Any, batches: list[Any]) -> list[tuple[Any, torch.Tensor]]:
    """`(inputs, float embeddings)` pairs: the reference `cosine` compares each model with (one float pass).

    Example:
        >>> len(cosine_items(torch.nn.Identity(), [torch.ones(2, 3)]))
        1
    """
    with torch.inference_mode():
        return [(b, _embedding(call_model(float_model, b), b)) for b in batches]


def cosine(model: Any, items: list[tuple[Any, torch.Tensor]]) -> list[float]:
    """Per-sample cosine between the model's embeddings and the float model's (see `cosine_items`).

    Example:
        >>> cosine(torch.nn.Identity(), [(torch.ones(1, 2), torch.tensor([[0.0, 1.0]]))])[0] > 0.7
        True
    """
    scores: list[float] = []
    with torch.inference_mode():
        for inputs, reference in items:
            scores += (_embedding(call_model(model, inputs), inputs) * reference).sum(-1).tolist()
    return scores


def top1(model: Any, items: list[tuple[Any, torch.Tensor]]) -> list[float]:
    """Per-sample top-1 correctness (1.0 or 0.0) of the model's class scores against the labels.

    Example:
        >>> top1(torch.nn.Identity(), [(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))])
        [1.0, 0.0]
    """
    scores: list[float] = []
    with torch.inference_mode():
        for inputs, labels in items:
            logits = first_tensor(call_model(model, inputs)).float().flatten(1)
            scores += (logits.argmax(-1) == labels).float().tolist()
    return scores


def perplexity(model: Any, items: list[tuple[Any, Any]]) -> list[float]:
    """Per-sequence perplexity: exp(mean cross-entropy of each next token) for a causal LM's logits.

    Example:
        >>> class Uniform(torch.nn.Module):
        ...     def forward(self, input_ids):
        ...         return torch.zeros(*input_ids.shape, 50)
        >>> [round(p, 3) for p in perplexity(Uniform(), [({"input_ids": torch.zeros(2, 5, dtype=torch.long)}, None)])]
        [50.0, 50.0]
    """
    scores: list[float] = []
    with torch.inference_mode():
        for inputs, _ in items:
            ids = inputs["input_ids"]
            logits = first_tensor(call_model(model, inputs)).float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            scores += loss.mean(1).exp().tolist()
    return scores


def label_indices(labels: list[str], model: Any) -> torch.Tensor:
    """Class indices of label names: integers as they are, names through the model's `config.label2id`.

    Example:
        >>> label_indices(["3", "0"], None).tolist()
        [3, 0]
    """
    table = getattr(getattr(model, "config", None), "label2id", None) or {}
    out = []
    for label in labels:
        if label.lstrip("-").isdigit():
            out.append(int(label))
        elif label in table:
            out.append(int(table[label]))
        else:
            raise ValueError(
                f"label {label!r} is neither a class index nor one of the model's class names "
                f"(config.label2id); name class folders / labels.csv entries by index, e.g. '0', '207'"
            )
    return torch.tensor(out, dtype=torch.long)


def _user_function(spec: str) -> Callable[[Any, Any], Any]:
    """`MODULE:FUNC` (an importable module, or a path to a .py file) to the function it names."""
    module_name, _, func_name = spec.rpartition(":")
    if not module_name or not func_name.isidentifier():
        raise ValueError(f"--metric {spec!r}: use cosine, top1, perplexity or MODULE:FUNC (e.g. my_metrics:accuracy)")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ValueError(f"--metric {spec!r}: {path} does not exist")
            loader = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader)  # type: ignore[arg-type]
            loader.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            sys.path.insert(0, str(Path.cwd()))  # a module beside the user's data, as `python -m` finds it
            try:
                module = importlib.import_module(module_name)
            finally:
                sys.path.remove(str(Path.cwd()))
    except ValueError:
        raise
    except Exception as err:  # the user's module failed to import: say which and why, in one line
        raise ValueError(f"--metric {spec!r}: cannot import {module_name}: {type(err).__name__}: {err}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"--metric {spec!r}: {module_name} has no function {func_name}")
    return func


def metric_function(name: str) -> Callable[[Any, Any], Any]:
    """`eval_fn(model, items)` for a metric name or `MODULE:FUNC`.

    Example:
        >>> metric_function("top1") is top1
        True
    """
    builtin = {"cosine": cosine, "top1": top1, "perplexity": perplexity}
    return builtin[name] if name in builtin else _user_function(name)


def lower_is_better(name: str, flag: bool = False) -> bool:
    """Whether a smaller value of the metric is better (perplexity; a user metric with --lower-is-better).

    Example:
        >>> lower_is_better("perplexity"), lower_is_better("cosine")
        (True, False)
    """
    return name == "perplexity" or (name not in METRICS and flag)
