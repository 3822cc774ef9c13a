"""Mixture-of-experts weights: the 3-D expert stacks of transformers' experts modules, quantized.

In transformers 5 an MoE layer keeps its experts in one module (`MixtralExperts`, `Qwen2MoeExperts`,
`OlmoeExperts`, ... every class decorated with `use_experts_implementation`) holding 3-D Parameters
`gate_up_proj` / `up_proj` and `down_proj`, one (out, in) matrix per expert (gpt-oss stores (in, out):
`is_transposed`). They are no `nn.Linear`, so nothing else quantizes them, and they hold most of an
MoE's bytes.

`QuantExperts` replaces such a module: each stack becomes a `QuantExpertWeight` (a `QuantModule` whose
weight is the stack viewed as (experts x out, in) rows), so per output channel means per expert and
output channel, groups run along the input width, and every storage (int8 codes, 4-bit codes packed
two per byte, fp8, the packed weight-only `PackedExpertWeight` at freeze) is the one every other layer
uses. `forward` hands the module's own forward the dequantized stacks, so routing and every experts
implementation (eager loop, batched_mm, grouped_mm) run unchanged. Expert activations stay float:
their inner matmuls have no input quantization point (`warn_expert_gaps` says so).

Example:
    >>> import torch
    >>> stack = QuantExpertWeight(torch.randn(4, 6, 8), transposed=False)
    >>> stack.weight.shape, stack.expert_weight(torch.float32).shape
    (torch.Size([24, 8]), torch.Size([4, 6, 8]))
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from fnmatch import fnmatch
from typing import Any

import torch
from torch import nn

from ..spec import QuantSpec
from .packed_weight import SCALE_DTYPES, PackedWeight
from .quant_module import DEFAULT_WEIGHT_SPEC, QuantModule
from .tensor_quantizer import CalibratorConfig, TensorQuantizer

__all__ = [
    "EXPERTS_TYPE",
    "is_experts_class",
    "expert_stack_names",
    "QuantExpertWeight",
    "PackedExpertWeight",
    "QuantExperts",
    "warn_expert_gaps",
    "traceable_experts",
    "skipped_stacks",
]

# The short name recipes use for experts modules (`module_types`); a recipe quantizing "Linear" selects them too.
EXPERTS_TYPE = "Experts"
# transformers wraps an experts class's forward in this decorator's closure; its code object keeps the name.
_DECORATOR = "use_experts_implementation"


def is_experts_class(cls: type) -> bool:
    """True for a transformers experts class (its forward dispatched by `use_experts_implementation`).

    Example:
        >>> is_experts_class(torch.nn.Linear)
        False
    """
    code = getattr(getattr(cls, "forward", None), "__code__", None)
    return code is not None and _DECORATOR in getattr(code, "co_qualname", "")


def expert_stack_names(module: nn.Module) -> tuple[str, ...]:
    """Names of the module's own 3-D Parameters with one matrix per expert (biases and norms excluded).

    Example:
        >>> m = torch.nn.Module(); m.num_experts = 2; m.down_proj = torch.nn.Parameter(torch.zeros(2, 3, 4))
        >>> expert_stack_names(m)
        ('down_proj',)
    """
    experts = getattr(module, "num_experts", None)
    return tuple(
        name
        for name, p in module.named_parameters(recurse=False)
        if p.dim() == 3 and (experts is None or p.shape[0] == experts)
    )


class _ExpertLayout:
    """The 3-D layout behind a (experts x out, in) weight: rows back into per-expert matrices."""

    num_experts: int
    out_features: int
    in_features: int
    transposed: bool

    def _set_layout(self, experts: int, out_features: int, in_features: int, transposed: bool) -> None:
        self.num_experts, self.out_features, self.in_features = experts, out_features, in_features
        self.transposed = transposed

    def expert_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The stack as the experts module stores it: (experts, out, in), or (experts, in, out) when transposed."""
        w = self.quantized_weight(dtype).reshape(self.num_experts, self.out_features, self.in_features)
        # grouped_mm wants the stored layout's strides, so a transposed stack is made contiguous.
        return w.transpose(1, 2).contiguous() if self.transposed else w

    def _layout_config(self) -> dict[str, Any]:
        return {
            "experts": self.num_experts,
            "rows": self.out_features,
            "cols": self.in_features,
            "transposed": self.transposed,
        }

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, out={self.out_features}, in={self.in_features}, " + self._scheme()


class QuantExpertWeight(_ExpertLayout, QuantModule):
    """One stack of expert matrices, quantized as (experts x out, in) rows; `QuantExperts` reads it.

    Args:
        weight: the 3-D Parameter, (experts, out, in), or (experts, in, out) with `transposed=True`.
        transposed: the stack stores each expert's matrix as (in, out) (gpt-oss).
        weight_spec, weight_calibrator: how the weights are quantized (per-channel = per expert row).

    Example:
        >>> stack = QuantExpertWeight(torch.randn(2, 3, 4), transposed=True)
        >>> stack.num_experts, stack.out_features, stack.in_features
        (2, 4, 3)
    """

    def __init__(
        self,
        weight: torch.Tensor,
        transposed: bool = False,
        weight_spec: QuantSpec | None = DEFAULT_WEIGHT_SPEC,
        weight_calibrator: CalibratorConfig | None = None,
    ) -> None:
        super().__init__()
        if weight.dim() != 3:
            raise ValueError(f"an expert stack is 3-D (experts, out, in), got shape {tuple(weight.shape)}")
        rows_first = weight.detach().transpose(1, 2) if transposed else weight.detach()
        self._set_layout(*rows_first.shape, transposed)
        # A view of the stack when it is (out, in) already: the float weights are not copied.
        flat = rows_first.reshape(-1, self.in_features)
        self._setup_quantization(
            nn.Parameter(flat, requires_grad=weight.requires_grad), weight_spec, weight_calibrator, None
        )

    def weight_only_form(
        self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scale_dtype: torch.dtype
    ) -> PackedExpertWeight:
        """The packed `PackedExpertWeight` holding these codes (`quantpilot.nn.storage.frozen_form`).

        Example:
            >>> from quantpilot.nn.packed import weight_only_spec
            >>> stack = QuantExpertWeight(torch.randn(2, 3, 4), weight_spec=weight_only_spec(8, None))
            >>> stack.weight_only_form(torch.zeros(6, 4), torch.ones(6, 1), torch.zeros(6, 1), torch.float16).bits
            8
        """
        layer = PackedExpertWeight(
            self.num_experts, self.out_features, self.in_features, self.weight_spec, self.transposed, scale_dtype
        )
        layer._store_codes(codes, scale, zero_point)
        return layer

    def _scheme(self) -> str:
        return self._weight_repr()


class PackedExpertWeight(_ExpertLayout, PackedWeight):
    """A frozen weight-only expert stack: uint4 (two per byte) or uint8 codes with 16-bit scales per row/group.

    Example:
        >>> from quantpilot.nn.packed import weight_only_spec
        >>> PackedExpertWeight(4, 8, 64, weight_only_spec(4, 32)).weight_packed.shape
        torch.Size([32, 32])
    """

    def __init__(
        self,
        experts: int,
        out_features: int,
        in_features: int,
        spec: QuantSpec,
        transposed: bool = False,
        scale_dtype: torch.dtype = torch.float16,
    ) -> None:
        super().__init__()
        self._set_layout(experts, out_features, in_features, transposed)
        self._init_storage(experts * out_features, in_features, spec, scale_dtype, "the experts' input width")

    def saved_config(self) -> dict[str, Any]:
        """What `from_saved` needs to rebuild the empty stack (stored in the saved layer map).

        Example:
            >>> from quantpilot.nn.packed import weight_only_spec
            >>> PackedExpertWeight(4, 8, 64, weight_only_spec(4, 32)).saved_config()["experts"]
            4
        """
        scale_dtype = next(k for k, v in SCALE_DTYPES.items() if v == self.weight_scale.dtype)
        return {**self._layout_config(), "scale_dtype": scale_dtype}

    @classmethod
    def from_saved(cls, module: Any, entry: dict[str, Any]) -> PackedExpertWeight:
        """An empty stack shaped as the saved one, once its sizes are checked against `module`'s (before allocating).

        Example:
            >>> from quantpilot.nn.packed import weight_only_spec
            >>> stack = PackedExpertWeight(2, 4, 8, weight_only_spec(8, None))
            >>> entry = {"weights": stack.weight_spec.to_dict(), "config": stack.saved_config()}
            >>> PackedExpertWeight.from_saved(QuantExpertWeight(torch.zeros(2, 4, 8)), entry).weight_scale.shape
            torch.Size([8, 1])
        """
        config = entry.get("config")
        keys = ("experts", "rows", "cols")
        if not isinstance(config, dict) or any(
            isinstance(config.get(k), bool) or not isinstance(config.get(k), int) or config[k] <= 0 for k in keys
        ):
            raise ValueError(f"the saved {cls.__name__} lacks positive sizes {list(keys)}; the map file is damaged")
        saved = tuple(config[k] for k in keys)
        here = getattr(module, "_layout_config", lambda: {})()
        if saved != tuple(here.get(k) for k in keys) or bool(config.get("transposed")) != here.get("transposed"):
            raise ValueError(
                f"the saved expert stack is {saved} (experts, rows, cols) but this float model's is "
                f"{tuple(here.get(k) for k in keys)}; load it onto the model it was saved from"
            )
        try:
            spec, scale_dtype = QuantSpec.from_dict(entry["weights"]), SCALE_DTYPES[config["scale_dtype"]]
        except (KeyError, TypeError) as err:
            raise ValueError(f"the saved entry of a {cls.__name__} lacks {err}; the map file is damaged") from None
        layer = cls(*saved, spec, bool(config.get("transposed")), scale_dtype)
        layer.float_dtype = getattr(module, "float_dtype", torch.float32)
        return layer

    def _scheme(self) -> str:
        return self._scheme_repr()


class QuantExperts(nn.Module):
    """A transformers experts module whose 3-D stacks are `QuantExpertWeight`s; routing and math are its own.

    The original module lives on as `inner`, without its stacks (biases and norms stay there, float);
    each forward gives it the dequantized stacks for the duration of the call. Attributes the model
    reads (`num_experts`, `config`, ...) are answered by `inner`.

    Example:
        >>> import transformers
        >>> cfg = transformers.MixtralConfig(hidden_size=8, intermediate_size=16, num_local_experts=2)
        >>> block = transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock(cfg)
        >>> q = QuantExperts.from_float(block.experts)
        >>> sorted(name for name, _ in q.named_children()), q.num_experts
        (['down_proj', 'gate_up_proj', 'inner'], 2)
    """

    def __init__(self, inner: nn.Module, stacks: dict[str, QuantModule]) -> None:
        super().__init__()
        self.inner = inner
        self.stack_names = tuple(stacks)
        for name, stack in stacks.items():
            setattr(self, name, stack)

    @classmethod
    def from_float(
        cls,
        module: nn.Module,
        weight_spec: QuantSpec | None = DEFAULT_WEIGHT_SPEC,
        weight_calibrator: CalibratorConfig | None = None,
        input_quantizer: TensorQuantizer | None = None,
        float_stacks: Sequence[str] = (),
    ) -> QuantExperts:
        """Move the module's 3-D stacks into `QuantExpertWeight`s (the registry's factory; changes `module`).

        `input_quantizer` must be None: expert activations stay float. Stacks named in `float_stacks`
        stay float Parameters of `inner` (a recipe's skip pattern matched their own name).
        """
        names = tuple(n for n in expert_stack_names(module) if n not in float_stacks)
        if not expert_stack_names(module):
            raise ValueError(f"{type(module).__name__} holds no 3-D expert weights to quantize")
        if input_quantizer is not None and input_quantizer.spec is not None:
            raise ValueError("QuantExperts quantizes expert weights only; pass input_quantizer=None")
        transposed = bool(getattr(module, "is_transposed", False))
        stacks = {}
        for name in names:
            stacks[name] = QuantExpertWeight(module._parameters.pop(name), transposed, weight_spec, weight_calibrator)
        return cls(module, stacks)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("inner")
            if inner is None or name.startswith("_"):
                raise
            return getattr(inner, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        inner = self.inner
        hidden = args[0] if args else kwargs.get("hidden_states")
        # The weights in the activations' dtype, as QuantLinear does (a model cast to bf16 after quantize).
        dtype = hidden.dtype if isinstance(hidden, torch.Tensor) and hidden.is_floating_point() else None
        try:
            for name in self.stack_names:
                stack = getattr(self, name)
                # A plain attribute for this call only (the module's forward reads `self.<name>`); no copy is kept.
                inner.__dict__[name] = stack.expert_weight(dtype or stack.float_dtype)
            return inner(*args, **kwargs)
        finally:
            for name in self.stack_names:
                inner.__dict__.pop(name, None)

    def extra_repr(self) -> str:
        return f"{type(self.inner).__name__}, stacks={list(self.stack_names)}"


def skipped_stacks(name: str, module: nn.Module, skip: Sequence[str]) -> tuple[str, ...]:
    """The stacks of the experts module `name` whose own qualified name a skip pattern matches.

    Sensitivity sweeps leave one quantized layer float by its name; for experts that is a stack's
    name ("...experts.down_proj"), which the module's own name does not match.

    Example:
        >>> m = torch.nn.Module(); m.num_experts = 2; m.down_proj = torch.nn.Parameter(torch.zeros(2, 3, 4))
        >>> skipped_stacks("mlp.experts", m, ["*.down_proj"])
        ('down_proj',)
    """
    return tuple(s for s in expert_stack_names(module) if any(fnmatch(f"{name}.{s}", p) for p in skip))


def warn_expert_gaps(plan: list, recipe: Any, steps_ran: bool = True, stacklevel: int = 3) -> None:
    """Name the experts modules where the recipe asked for more than quantized expert weights (one warning each kind).

    Activations of expert matmuls stay float; steps fitted to data (GPTQ, AWQ) handle `nn.Linear`
    layers, so expert stacks get the recipe's round-to-nearest weights instead (said when `steps_ran`).

    Example:
        >>> warn_expert_gaps([], None)  # nothing planned: nothing to say
    """
    experts = [(name, layer) for name, _module, entry, layer, _ in plan if entry.name == EXPERTS_TYPE]
    if not experts:
        return
    listed = ", ".join(name for name, _ in experts[:3]) + (f" and {len(experts) - 3} more" if len(experts) > 3 else "")
    if any(layer.activations is not None for _, layer in experts):
        warnings.warn(
            f"{len(experts)} mixture-of-experts module(s) ({listed}) get quantized weights but keep float activations: "
            "quantpilot has no input quantization point inside their expert matmuls (weight-only there)",
            stacklevel=stacklevel,
        )
    fitted = [s.name for s in getattr(recipe, "steps", ()) if getattr(s, "needs_data", False)]
    if steps_ran and fitted and any(layer.weights is not None for _, layer in experts):
        warnings.warn(
            f"the recipe's steps {fitted} handle Linear layers only: the expert weights of {len(experts)} "
            f"mixture-of-experts module(s) ({listed}) are quantized with round-to-nearest (RTN) instead",
            stacklevel=stacklevel,
        )


@contextlib.contextmanager
def traceable_experts(model: nn.Module) -> Iterator[None]:
    """Inside the block the model's experts modules run transformers' "batched_mm" implementation.

    transformers' default "grouped_mm" calls an op with no ONNX form, and the eager loop's shapes
    depend on the routing; "batched_mm" (gather each token's expert matrices, one batched matmul)
    traces into plain Gather and MatMul and computes the same products. The configs are restored on exit.

    Example:
        >>> with traceable_experts(torch.nn.Linear(2, 2)):  # no experts: nothing changes
        ...     pass
    """
    configs = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if is_experts_class(type(module)) and hasattr(config, "_experts_implementation_internal"):
            configs[id(config)] = (config, config._experts_implementation_internal)
    try:
        for config, _ in configs.values():
            # The internal field, not the property: its setter also rewrites every sub-config.
            config._experts_implementation_internal = "batched_mm"
        yield
    finally:
        for config, before in configs.values():
            config._experts_implementation_internal = before
