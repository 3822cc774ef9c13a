"""Steps that need no data and act inside `quantize`: fold BatchNorm, LLM.int8() layers, packed token tables.

Example:
    >>> import torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> type(qp.quantize(net, qp.Recipe(weights=None, activations=None, steps=(LLMInt8(),)))[0]).__name__
    'LLMInt8Linear'
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

from .base import Step, register_step

__all__ = ["FoldBatchNorm", "LLMInt8", "QuantizeEmbeddings"]


@register_step
@dataclass(frozen=True)
class FoldBatchNorm(Step):
    """Fold every BatchNorm that follows a convolution into it (exact in eval mode) before quantizing.

    Example:
        >>> import torch, quantpilot as qp
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).eval()
        >>> type(qp.quantize(net, qp.Recipe(steps=(FoldBatchNorm(),)))[1]).__name__
        'Identity'
    """

    name = "fold_batchnorm"

    def prepare(self, model: Any, recipe: Any) -> Any:
        from ..transforms.fold_batchnorm import fold_batchnorm

        return fold_batchnorm(model, inplace=True)


@register_step
@dataclass(frozen=True)
class LLMInt8(Step):
    """LLM.int8() (Dettmers et al., 2022): Linear layers the recipe selects become vector-wise int8 with
    float outlier columns (any |x| >= threshold at run time). No calibration.

    The recipe's `module_types`, `layers` and `skip` choose the layers; its weight scheme is LLM.int8()'s own.

    Example:
        >>> LLMInt8(threshold=0.0).to_dict()
        {'name': 'llm_int8', 'threshold': 0.0}
    """

    name = "llm_int8"
    reads_weights_only = True
    threshold: float = 6.0

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, int | float) or not float(t) >= 0.0:
            raise ValueError(f"threshold must be a number >= 0 (6.0 in the paper), got {t!r}")
        object.__setattr__(self, "threshold", float(t))

    def prepare(self, model: Any, recipe: Any) -> Any:
        from ..install import replace_module
        from ..nn import lookup
        from ..nn.llm_int8_linear import LLMInt8Linear

        targets = [
            name
            for name, m in model.named_modules()
            if (entry := lookup(m)) is not None
            and entry.name in ("Linear", "Conv1D")
            and entry.name in recipe.module_types
            and any(fnmatch(name, p) for p in recipe.layers)
            and not any(fnmatch(name, p) for p in recipe.skip)
        ]
        if not targets:
            raise ValueError(
                f"the model has no Linear (or GPT-2 Conv1D) layer outside skip={list(recipe.skip)}: LLM.int8() has "
                "nothing to convert; check the model or the skip patterns"
            )
        for name in targets:
            model = replace_module(model, name, LLMInt8Linear.from_float(model.get_submodule(name), self.threshold))
        return model


@register_step
@dataclass(frozen=True)
class QuantizeEmbeddings(Step):
    """Store `nn.Embedding` tables as packed int4 / int6 / int8 codes; a head tied to a table reads the same codes.

    Args:
        bits: 4, 6 or 8.
        group_size: features per scale along the embedding dimension, or None for one per row.
        layers, skip: fnmatch patterns of the tables to include / leave float.
        scale_dtype: "float16" or "bfloat16" for the tables' scales (None: the recipe's `scale_dtype`).
        superblock: None, or columns whose group scales are multiples of one fp16 step, with symmetric
            codes (`algorithms.superblock_scales`; bits=6, group_size=16, superblock=256 is llama.cpp's Q6_K).

    Example:
        >>> QuantizeEmbeddings(bits=8, group_size=None).to_dict()["bits"]
        8
    """

    name = "quantize_embeddings"
    reads_weights_only = True
    bits: int = 4
    group_size: int | None = 128
    layers: tuple[str, ...] = ("*",)
    skip: tuple[str, ...] = ()
    scale_dtype: str | None = None
    superblock: int | None = None

    def __post_init__(self) -> None:
        from ..spec import PerChannel, PerGroup, QuantSpec

        if self.scale_dtype not in (None, "float16", "bfloat16"):
            raise ValueError(f"scale_dtype is None (the recipe's), 'float16' or 'bfloat16', got {self.scale_dtype!r}")
        if self.bits not in (4, 6, 8):
            raise ValueError(f"bits must be 4, 6 or 8 (packed int4, or one code per byte), got {self.bits!r}")
        self._check_superblock()
        g = self.group_size
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 2):
            raise ValueError(f"group_size must be None (per row) or an integer >= 2, got {g!r}")
        QuantSpec("uint4", granularity=PerGroup(g) if g else PerChannel(0), symmetric=False)  # validates
        for key in ("layers", "skip"):
            value = getattr(self, key)
            if isinstance(value, str):
                raise TypeError(f"{key} is a list of fnmatch patterns, e.g. ('*',), not the string {value!r}")
            object.__setattr__(self, key, tuple(value))

    def _check_superblock(self) -> None:
        sb, g = self.superblock, self.group_size
        if sb is None:
            return
        if isinstance(sb, bool) or not isinstance(sb, int) or g is None or sb <= g or sb % g:
            raise ValueError(
                f"superblock must be None or a multiple of group_size (Q6_K: bits=6, group_size=16, superblock=256), "
                f"got superblock={sb!r} with group_size={g!r}"
            )
        if self.scale_dtype == "bfloat16":
            raise ValueError("superblock scales are fp16 numbers (d * k); use scale_dtype='float16'")

    def prepare(self, model: Any, recipe: Any) -> Any:
        from ..algorithms.embeddings import pack_embeddings

        scale_dtype = self.scale_dtype or recipe.scale_dtype
        if self.superblock is not None and str(scale_dtype).removeprefix("torch.") != "float16":
            raise ValueError("superblock scales are fp16 numbers (d * k); use scale_dtype float16 for the tables")
        return pack_embeddings(model, self.bits, self.group_size, self.layers, self.skip, scale_dtype, self.superblock)
