"""`Recipe`: what to quantize and how — one serialisable object a user can read, edit and share.

A recipe holds the weight scheme, the activation scheme (static, dynamic or none), a calibrator
for each role, which module types are quantized, `skip` patterns and per-layer overrides
(fnmatch patterns on fully qualified module names). Named presets cover the usual choices.

Example:
    >>> import quantpilot as qp
    >>> r = qp.Recipe.preset("int8-static")
    >>> r.for_layer("encoder.layer.0.attention.self.query", "Linear").activations.dtype.value
    'int8'
    >>> r2 = qp.Recipe.from_dict(r.to_dict()); r2 == r
    True
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from .atomic import atomic_path
from .calibrator_config import CalibratorConfig
from .layer_recipe import LayerRecipe, _check_layer, _normalise_activations, _spec
from .spec import PerChannel, PerTensor, QuantSpec
from .steps.base import Step, as_step

__all__ = ["Recipe", "LayerRecipe", "FORMAT_VERSION", "FUNCTIONAL_OPS", "OUTPUT_HEADS"]

# 2: recipes hold `steps` (methods registered by name), `layers` include patterns and the packed `scale_dtype`.
# Version-1 files have none of them and load unchanged.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SCALE_DTYPES = ("float16", "bfloat16")

DEFAULT_MODULE_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "Embedding")
# Functional operations that can get quantization points besides the module layers: "matmul" (the
# attention products Q·Kᵀ and P·V) and "add" (both inputs of a residual addition). LayerNorm and
# softmax stay in float: every engine we target runs them in float anyway.
FUNCTIONAL_OPS = ("matmul", "add")
# Output layers every method keeps float by default, as the papers and their reference code do: the
# head decides every logit (and in GPT-2 it is tied to the token table).
OUTPUT_HEADS = ("lm_head", "*.lm_head", "score", "classifier")
_OVERRIDABLE = ("weights", "activations", "dynamic", "weight_calibrator", "activation_calibrator")


@dataclass(frozen=True)
class Recipe:
    """How to quantize a model.

    Args:
        weights: weight scheme (None keeps weights float). Default int8 symmetric, restricted
            range, per output channel.
        activations: input-activation scheme; `"dynamic"` for per-token int8 ranges computed at
            run time; None keeps activations float (weight-only, e.g. W8A16). Default int8
            asymmetric per tensor, its range from the histogram with the lowest quantization MSE.
        dynamic: compute activation ranges per batch instead of from calibration.
        weight_calibrator, activation_calibrator: `CalibratorConfig` or mapping like
            `{"kind": "histogram", "method": "percentile", "percentile": 99.99}`.
        module_types: short names of the layer types to quantize (see `quantpilot.nn.registered_names()`).
        skip: fnmatch patterns of qualified module names left in float.
        overrides: `{pattern: {field: value}}` applied in order to matching layers; fields are
            weights, activations, dynamic, weight_calibrator, activation_calibrator.
        ops: functional operations that also get quantization points, a subset of
            `FUNCTIONAL_OPS` ("matmul": attention Q·Kᵀ and P·V; "add": both inputs of residual
            additions). They use the activation scheme and calibrator of the recipe; `skip` and
            `overrides` patterns match their point names (e.g. "encoder.layer.0.attention.self:matmul").
        layers: fnmatch patterns of qualified names to quantize (default every layer); `skip` wins.
        steps: ordered methods applied to the model (`quantpilot.steps`: SmoothQuant, AWQ, GPTQ,
            LLMInt8, FoldBatchNorm, QuantizeEmbeddings), as `Step` objects or `{"name": ..., ...}`
            mappings. Steps that need data run inside `freeze` on the batches `calibrate` recorded.
        scale_dtype: "float16" (default) or "bfloat16": the dtype of the scales of packed weight-only
            layers (uint4 / uint8 weights with float activations), as GPTQ/AWQ checkpoints store them.
        name: a label (presets set it).
        notes: free-text explanations, `{topic or layer: why}`; `quantpilot.select` records there why each
            layer stays in float or got its calibrator. They never change how the model is quantized.

    Example:
        >>> from quantpilot import Recipe, QuantSpec
        >>> r = Recipe(activations=None, skip=("lm_head",))
        >>> r.for_layer("lm_head", "Linear") is None
        True
    """

    weights: QuantSpec | None = QuantSpec("int8", symmetric=True, narrow_range=True, granularity=PerChannel(0))
    activations: QuantSpec | str | None = QuantSpec("int8", symmetric=False, granularity=PerTensor())
    dynamic: bool = False
    weight_calibrator: CalibratorConfig = CalibratorConfig("minmax")
    activation_calibrator: CalibratorConfig = CalibratorConfig("histogram", {"method": "mse"})
    module_types: tuple[str, ...] = DEFAULT_MODULE_TYPES
    skip: tuple[str, ...] = ()
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    ops: tuple[str, ...] = ()
    name: str = "custom"
    notes: dict[str, str] = field(default_factory=dict)
    layers: tuple[str, ...] = ("*",)
    steps: tuple[Step, ...] = ()
    scale_dtype: str = "float16"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass normalisation)
        set_("weights", _spec(self.weights, "weights"))
        activations, dynamic = _normalise_activations(self.activations, self.dynamic)
        set_("activations", activations)
        set_("dynamic", dynamic)
        set_("weight_calibrator", CalibratorConfig.from_dict(self.weight_calibrator))
        set_("activation_calibrator", CalibratorConfig.from_dict(self.activation_calibrator))
        for key in ("module_types", "skip", "ops", "layers"):
            value = getattr(self, key)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise TypeError(f"{key} must be a list of strings, got {value!r}")
            set_(key, tuple(value))
        bad_ops = [op for op in self.ops if op not in FUNCTIONAL_OPS]
        if bad_ops:
            raise ValueError(f"unknown ops {bad_ops}; functional quantization points are {list(FUNCTIONAL_OPS)}")
        if self.ops and self.activations is None:
            raise ValueError("ops quantize activations: give the recipe an activation scheme, or set ops=()")
        from .nn.registry import registered_names  # validation only: the registry lives a layer above

        known = registered_names()
        unknown = [t for t in self.module_types if t not in known]
        if unknown:
            raise ValueError(f"unknown module_types {unknown}; quantizable types are {known}")
        if not isinstance(self.overrides, dict):
            raise TypeError(
                f"overrides must map fnmatch patterns to field mappings, got {type(self.overrides).__name__}"
            )
        set_("overrides", {str(p): self._normalise_override(p, o) for p, o in self.overrides.items()})
        if not isinstance(self.notes, dict) or not all(isinstance(v, str) for v in self.notes.values()):
            raise TypeError(f"notes must map names to explanation strings, got {self.notes!r}")
        set_("notes", {str(k): v for k, v in self.notes.items()})
        if isinstance(self.steps, str | dict | Step):
            raise TypeError(f"steps must be a list of steps, got {self.steps!r}")
        set_("steps", tuple(as_step(s) for s in self.steps))
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(f"scale_dtype={self.scale_dtype!r}: use one of {list(SCALE_DTYPES)}")
        for step in self.steps:
            step.check(self)
        _check_layer(
            self.weights, self.activations, self.dynamic, self.weight_calibrator, self.activation_calibrator, "recipe"
        )
        for pattern in self.overrides:
            layer = self._resolve(pattern)
            _check_layer(
                layer.weights,
                layer.activations,
                layer.dynamic,
                layer.weight_calibrator,
                layer.activation_calibrator,
                f"override {pattern!r}",
            )

    @staticmethod
    def _normalise_override(pattern: str, override: Any) -> dict[str, Any]:
        if not isinstance(override, dict):
            raise TypeError(f"override {pattern!r} must be a mapping of fields, got {override!r}")
        unknown = set(override) - set(_OVERRIDABLE)
        if unknown:
            raise ValueError(f"override {pattern!r} has unknown keys {sorted(unknown)}; allowed: {list(_OVERRIDABLE)}")
        out: dict[str, Any] = {}
        for key, value in override.items():
            if key == "weights":
                out[key] = _spec(value, f"override {pattern!r} weights")
            elif key == "activations":
                out[key] = value if isinstance(value, str) else _spec(value, f"override {pattern!r} activations")
            elif key == "dynamic":
                if not isinstance(value, bool):
                    raise TypeError(f"override {pattern!r}: dynamic must be True or False")
                out[key] = value
            else:
                out[key] = CalibratorConfig.from_dict(value)
        return out

    def _resolve(self, *patterns: str) -> LayerRecipe:
        fields = {k: getattr(self, k) for k in _OVERRIDABLE}
        for pattern in patterns:
            fields.update(self.overrides[pattern])
        activations, dynamic = _normalise_activations(fields["activations"], fields["dynamic"])
        return LayerRecipe(
            fields["weights"], activations, dynamic, fields["weight_calibrator"], fields["activation_calibrator"]
        )

    def for_layer(self, qualname: str, type_name: str) -> LayerRecipe | None:
        """The scheme of the layer `qualname` of type `type_name`, or None if it stays float.

        Example:
            >>> from quantpilot import Recipe
            >>> r = Recipe(overrides={"head.*": {"activations": None}})
            >>> r.for_layer("head.fc", "Linear").activations is None
            True
        """
        if type_name not in self.module_types or any(fnmatch(qualname, p) for p in self.skip):
            return None
        if not any(fnmatch(qualname, p) for p in self.layers):
            return None
        return self._resolve(*[p for p in self.overrides if fnmatch(qualname, p)])

    def for_point(self, point: str) -> LayerRecipe | None:
        """The scheme of a functional quantization point such as "encoder.layer.0.attention.self:matmul".

        None when the point's op is not in `ops`, a `skip` pattern matches it, or its resolved
        activation scheme is None. One input of a point ("...:matmul.probs") takes the point's overrides,
        then those naming the input.

        Example:
            >>> from quantpilot import Recipe
            >>> r = Recipe(ops=("matmul",), skip=("*.layer.5.*",))
            >>> r.for_point("bert.layer.5.attention.self:matmul") is None, r.for_point("layer.0.attn:matmul") is None
            (True, False)
            >>> r = r.replace(overrides={"*:matmul.probs": {"activations": None}})
            >>> r.for_point("layer.0.attn:matmul.probs") is None, r.for_point("layer.0.attn:matmul.key") is None
            (True, False)
        """
        head, _, tail = point.rpartition(":")
        op = tail.split(".")[0]
        if op not in self.ops or any(fnmatch(point, p) for p in self.skip):
            return None
        whole = f"{head}:{op}"
        layer = self._resolve(*[p for p in self.overrides if fnmatch(whole, p) or fnmatch(point, p)])
        return layer if layer.activations is not None else None

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed.

        Example:
            >>> from quantpilot import Recipe
            >>> Recipe.preset("int8-static").replace(skip=("classifier",)).skip
            ('classifier',)
        """
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML-ready), with a format version.

        Example:
            >>> from quantpilot import Recipe
            >>> Recipe().to_dict()["activations"]["dtype"]
            'int8'
        """

        def value(v: Any) -> Any:
            if isinstance(v, QuantSpec | CalibratorConfig):
                return v.to_dict()
            return v

        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "weights": value(self.weights),
            "activations": value(self.activations),
            "dynamic": self.dynamic,
            "weight_calibrator": value(self.weight_calibrator),
            "activation_calibrator": value(self.activation_calibrator),
            "module_types": list(self.module_types),
            "skip": list(self.skip),
            "overrides": {p: {k: value(v) for k, v in o.items()} for p, o in self.overrides.items()},
            "ops": list(self.ops),
            "notes": dict(self.notes),
            "layers": list(self.layers),
            "steps": [step.to_dict() for step in self.steps],
            "scale_dtype": self.scale_dtype,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Build a recipe from plain data; unknown keys or a newer format version raise `ValueError`.

        Example:
            >>> from quantpilot import Recipe
            >>> Recipe.from_dict({"activations": "dynamic"}).dynamic
            True
        """
        if not isinstance(data, dict):
            raise TypeError(f"a recipe must be a mapping, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"recipe format_version {version!r} is not supported; this quantpilot reads {list(READABLE_VERSIONS)}"
                + (": upgrade quantpilot" if isinstance(version, int) and version > FORMAT_VERSION else "")
            )
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown recipe keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        return cls(**data)

    def to_yaml(self, path: str | Path) -> Path:
        """Write the recipe as YAML (refuses to overwrite an existing file).

        Example:
            >>> import tempfile, pathlib
            >>> from quantpilot import Recipe
            >>> p = Recipe().to_yaml(pathlib.Path(tempfile.mkdtemp()) / "r.yaml"); p.name
            'r.yaml'
        """
        return _write_new(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def to_json(self, path: str | Path) -> Path:
        """Write the recipe as JSON (refuses to overwrite an existing file).

        Example:
            >>> import tempfile, pathlib
            >>> from quantpilot import Recipe
            >>> Recipe.from_json(Recipe().to_json(pathlib.Path(tempfile.mkdtemp()) / "r.json")) == Recipe()
            True
        """
        return _write_new(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        """Read a recipe written by `to_yaml` (or by hand).

        Example:
            >>> import tempfile, pathlib
            >>> from quantpilot import Recipe
            >>> Recipe.from_yaml(Recipe().to_yaml(pathlib.Path(tempfile.mkdtemp()) / "r.yaml")) == Recipe()
            True
        """
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))

    @classmethod
    def from_json(cls, path: str | Path) -> Recipe:
        """Read a recipe written by `to_json`.

        Example:
            >>> Recipe.from_json  # doctest: +ELLIPSIS
            <bound method Recipe.from_json of <class '...Recipe'>>
        """
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str) -> Recipe:
        """A named recipe: int8-static, int8-dynamic, w8a16, w4a16-g128, fp8.

        Example:
            >>> from quantpilot import Recipe
            >>> Recipe.preset("w4a16-g128").weights.granularity
            PerGroup(size=128)
        """
        from .presets import PRESETS

        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
        return PRESETS[name]()

    @staticmethod
    def presets() -> list[str]:
        """Names of the presets.

        Example:
            >>> "fp8" in Recipe.presets()
            True
        """
        from .presets import PRESETS

        return sorted(PRESETS)


def _write_new(path: str | Path, text: str) -> Path:
    """Write `text` to a new file atomically; an existing path or a symbolic link (even dangling) is refused."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
