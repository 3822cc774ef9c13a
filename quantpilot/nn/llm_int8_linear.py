"""`LLMInt8Linear`: LLM.int8() (Dettmers et al., 2022) — vector-wise int8 with mixed-precision decomposition.

Large language models grow a few hidden dimensions ("outlier features") whose values reach 20-100x
the rest. One int8 scale per row of activations is then set by those dimensions and every other
value loses its precision. LLM.int8() splits the product along the inner dimension K:

    y = X[:, O] @ W[:, O].T            (the outlier columns O, in float)
      + s_x s_w^T * (Xq[:, ~O] @ Wq[:, ~O].T)   (the rest: int8 x int8 -> int32)

where O holds every input feature with any |x| >= threshold in the current batch (6.0 in the paper),
`Xq` has one absmax scale per row (token) and `Wq` one per output channel ("vector-wise"), so the
int32 accumulator rescales by the outer product of the two scale vectors.

The weight is stored once, as int8 codes with one scale per output channel (half the memory of
fp16); the outlier columns of the float part are dequantized from those codes per call, as
bitsandbytes' inference path does. With threshold 0 every column is an outlier and the layer equals
a float matmul against the stored (dequantized) weight.

Example:
    >>> import torch
    >>> layer = LLMInt8Linear.from_float(torch.nn.Linear(16, 4), threshold=6.0)
    >>> x = torch.randn(3, 16); x[:, 2] = 40.0
    >>> layer(x).shape, layer.outlier_fraction
    (torch.Size([3, 4]), 0.0625)
"""

from __future__ import annotations

import torch
from torch import nn

from ..primitives import choose_qparams, dequantize, min_max, quantize
from ..spec import PerChannel, PerToken, QuantSpec
from .integer_linear import int8_matmul
from .packed_weight import check_saved_sizes
from .quant_module import QuantModule

__all__ = ["LLMInt8Linear", "WEIGHT_SPEC", "ROW_SPEC"]

# Absmax int8 on both sides (scale = amax / 127), as the paper's vector-wise quantization.
WEIGHT_SPEC = QuantSpec("int8", symmetric=True, narrow_range=True, granularity=PerChannel(0))
ROW_SPEC = QuantSpec("int8", symmetric=True, narrow_range=True, granularity=PerToken())


class LLMInt8Linear(QuantModule):
    """A Linear layer running LLM.int8(): int8 for ordinary input features, float for outlier ones.

    Args:
        weight: `(out_features, in_features)` float weight; stored as int8 codes per output channel.
        bias: `(out_features,)` or None (kept in float).
        threshold: an input feature whose |x| reaches this in any row of a batch runs in float.

    The layer counts how many input columns it ran in float (`outlier_fraction`), over every
    batch since it was built or since `reset_outlier_stats()`.

    Example:
        >>> import torch
        >>> LLMInt8Linear(torch.randn(4, 8), None, threshold=0.0)(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, threshold: float = 6.0) -> None:
        super().__init__()
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError("LLMInt8Linear needs a 2-D float weight (out_features, in_features)")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not float(threshold) >= 0.0:
            raise ValueError(f"threshold must be a number >= 0 (6.0 in the paper), got {threshold!r}")
        self.out_features, self.in_features = weight.shape
        self._setup_quantization(weight.detach().float().clone(), WEIGHT_SPEC)
        self.store_weight_as_integers()
        self.float_dtype = weight.dtype  # `.weight` answers in the model's dtype, not the float32 copy's
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        # A buffer, so the threshold travels with the weights through safetensors.
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))
        self.reset_outlier_stats()

    @classmethod
    def from_float(cls, module: nn.Module, threshold: float = 6.0) -> LLMInt8Linear:
        """Build from an `nn.Linear` or transformers' GPT-2 `Conv1D` (its weight is stored transposed).

        The float module is not modified.

        Example:
            >>> import torch
            >>> LLMInt8Linear.from_float(torch.nn.Linear(3, 2)).weight_int.dtype
            torch.int8
        """
        if isinstance(module, nn.Linear):
            weight = module.weight
        elif type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
            weight = module.weight.t()
        else:
            raise TypeError(f"LLMInt8Linear wraps nn.Linear or transformers' Conv1D, got {type(module).__name__}")
        return cls(weight, module.bias, threshold=threshold)

    def saved_config(self) -> dict:
        """What `quantpilot.load` needs to rebuild this layer (stored in the saved layer map).

        Example:
            >>> import torch
            >>> LLMInt8Linear(torch.randn(2, 3), None, threshold=4.0).saved_config()
            {'in_features': 3, 'out_features': 2, 'bias': False, 'threshold': 4.0}
        """
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "threshold": float(self.threshold),
        }

    @classmethod
    def from_saved(cls, module: nn.Module, entry: dict) -> LLMInt8Linear:
        """An empty layer shaped as a saved one; `quantpilot.load` then fills it from the safetensors file.

        Args:
            module: what the saved recipe put at this name (only its weight's dtype is read).
            entry: the layer's entry of the saved map, holding `saved_config()` under "config".

        Example:
            >>> import torch
            >>> cfg = {"in_features": 3, "out_features": 2, "bias": True, "threshold": 6.0}
            >>> LLMInt8Linear.from_saved(None, {"config": cfg}).weight_int.shape
            torch.Size([2, 3])
        """
        cfg = entry.get("config") if isinstance(entry, dict) else None
        if not isinstance(cfg, dict) or not {"in_features", "out_features", "bias", "threshold"} <= set(cfg):
            raise ValueError("the saved LLM.int8() layer has no complete config; the quantpilot.json map is damaged")
        check_saved_sizes(cls.__name__, cfg)
        if isinstance(cfg["threshold"], bool) or not isinstance(cfg["threshold"], int | float):
            raise ValueError(f"the saved LLM.int8() layer has threshold={cfg['threshold']!r}; the map is damaged")
        out_features, in_features = int(cfg["out_features"]), int(cfg["in_features"])
        bias = torch.zeros(out_features) if cfg["bias"] else None
        weight = getattr(module, "weight", None)
        dtype = weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else torch.float32
        return cls(torch.zeros(out_features, in_features, dtype=dtype), bias, threshold=float(cfg["threshold"]))

    def reset_outlier_stats(self) -> None:
        """Forget the outlier counts (e.g. before measuring on a new data set)."""
        self.outlier_columns = 0
        self.columns_seen = 0

    @property
    def outlier_fraction(self) -> float:
        """Fraction of input columns (over all batches seen) that ran in float; 0.0 before any batch."""
        return self.outlier_columns / self.columns_seen if self.columns_seen else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs with {self.in_features} features, got shape {tuple(x.shape)}")
        rows = x.reshape(-1, self.in_features).float()
        outliers = (rows.abs() >= self.threshold).any(dim=0)
        n_outliers = int(outliers.sum())
        self.outlier_columns += n_outliers
        self.columns_seen += self.in_features
        if n_outliers == self.in_features:
            y = rows @ self._dequantized_columns(slice(None)).t()
        else:
            y = self._int8_part(rows.masked_fill(outliers, 0.0) if n_outliers else rows)
            if n_outliers:
                y.addmm_(rows[:, outliers], self._dequantized_columns(outliers).t())
        if self.bias is not None:
            y.add_(self.bias)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _int8_part(self, rows: torch.Tensor) -> torch.Tensor:
        """Row-wise absmax int8 activations times the per-channel int8 weight, int32 accumulate, rescale."""
        row_scale, row_zero = choose_qparams(*min_max(rows, ROW_SPEC), ROW_SPEC)
        codes = quantize(rows, row_scale, row_zero, ROW_SPEC)
        acc = int8_matmul(codes, self.weight_codes().t())
        # The outer product of the two scale vectors, applied in place on the accumulator's float copy.
        return acc.to(torch.float32).mul_(row_scale.unsqueeze(1)).mul_(self.weight_scale.unsqueeze(0))

    def _dequantized_columns(self, columns: torch.Tensor | slice) -> torch.Tensor:
        return dequantize(self.weight_codes()[:, columns], self.weight_scale, self.weight_zero_point, WEIGHT_SPEC)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"threshold={float(self.threshold)}, weight=int8/PerChannel"
        )
