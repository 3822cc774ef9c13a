"""`Step`: one method applied to a model, as a small serialisable class registered by name.

A `Recipe` holds an ordered tuple of steps (SmoothQuant, AWQ, GPTQ, LLM.int8(), fold BatchNorm,
token-table quantization). Each step says where in the pipeline it acts, through three hooks that
default to doing nothing:

- `prepare(model, recipe)`: inside `quantize`, on the float copy, with no data (fold BatchNorm).
- `before_install(model, recipe, context)`: inside `freeze`, on the float model, with the batches
  `calibrate` recorded (AWQ folds its scales, GPTQ quantizes block by block, SmoothQuant gathers its
  statistics).
- `after_install(model, recipe, context)`: inside `freeze`, once the recipe's quantizers are in place
  and before activation ranges are calibrated (SmoothQuant smooths the layers).

A recipe with a `before_install` or `after_install` step is *deferred*: `quantize` leaves the layers
float, `calibrate` records the batches, and `freeze` runs the steps, installs the quantizers,
calibrates on the recorded batches and freezes, in that order.

Example:
    >>> from quantpilot.steps import step_from_dict, GPTQ
    >>> step_from_dict({"name": "gptq", "damp": 0.02}) == GPTQ(damp=0.02)
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["Step", "StepContext", "register_step", "step_from_dict", "registered_steps", "as_step"]

_STEPS: dict[str, type[Step]] = {}


@dataclass
class StepContext:
    """What deferred steps share at `freeze`: the recorded calibration batches and a scratch dict.

    Example:
        >>> StepContext([1, 2]).batches
        [1, 2]
    """

    batches: list[Any]
    state: dict[str, Any] = field(default_factory=dict)
    # What each step chose (AWQ's alphas, SmoothQuant's smoothed layers, LLM.int8()'s outlier share):
    # `freeze` stores it on the model and `save` writes it into the saved map.
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """Base class of recipe steps: frozen dataclasses whose fields are plain data.

    Subclasses set `name` (the registry key written to YAML/JSON) and `needs_data` (whether
    `freeze` refuses to run without recorded calibration batches), and override the hooks they use.

    Example:
        >>> from quantpilot.steps import FoldBatchNorm
        >>> FoldBatchNorm().to_dict()
        {'name': 'fold_batchnorm'}
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    # True for steps that read the float weights and never write them (GPTQ, LLM.int8(), token tables):
    # a one-shot run may then share those weights with the user's model instead of copying them.
    reads_weights_only: ClassVar[bool] = False

    def check(self, recipe: Any) -> None:
        """Raise `ValueError` if the recipe cannot carry this step (called when the recipe is built)."""

    def prepare(self, model: Any, recipe: Any) -> Any:
        """Change the float copy inside `quantize`, before layers are replaced (no data). Returns the model."""
        return model

    def before_install(self, model: Any, recipe: Any, context: StepContext) -> Any:
        """Change the float model inside `freeze`, before the recipe's quantizers go in. Returns the model."""
        return model

    def after_install(self, model: Any, recipe: Any, context: StepContext) -> Any:
        """Change the model inside `freeze`, after the quantizers went in, before calibration. Returns the model."""
        return model

    @property
    def deferred(self) -> bool:
        """True when the step acts inside `freeze` (so `quantize` leaves the layers float until then).

        Example:
            >>> from quantpilot.steps import FoldBatchNorm, GPTQ
            >>> FoldBatchNorm().deferred, GPTQ().deferred
            (False, True)
        """
        cls = type(self)
        return cls.before_install is not Step.before_install or cls.after_install is not Step.after_install

    def to_dict(self) -> dict[str, Any]:
        """Plain data: `{"name": ..., field: value, ...}` (tuples become lists).

        Example:
            >>> from quantpilot.steps import SmoothQuant
            >>> SmoothQuant(alpha=0.8).to_dict()
            {'name': 'smoothquant', 'alpha': 0.8, 'layers': ['*']}
        """
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            out[f.name] = _plain(getattr(self, f.name))
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def register_step(cls: type[Step]) -> type[Step]:
    """Class decorator: make a `Step` subclass available to recipes under `cls.name`.

    Example:
        >>> "gptq" in registered_steps()
        True
    """
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name` to be registered")
    _STEPS[cls.name] = cls
    return cls


def registered_steps() -> list[str]:
    """Names of every registered step.

    Example:
        >>> "smoothquant" in registered_steps()
        True
    """
    return sorted(_STEPS)


def step_from_dict(data: Any) -> Step:
    """Build a step from `{"name": ..., field: value}` (or a bare name for a step without fields).

    Raises:
        ValueError: unknown step name or fields, naming what is allowed.

    Example:
        >>> step_from_dict("fold_batchnorm").name
        'fold_batchnorm'
    """
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ValueError(f"a recipe step is a mapping with a 'name' (one of {registered_steps()}), got {data!r}")
    fields_ = dict(data)
    name = fields_.pop("name")
    cls = _STEPS.get(name)
    if cls is None:
        raise ValueError(f"unknown recipe step {name!r}; registered steps are {registered_steps()}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(fields_) - allowed
    if unknown:
        raise ValueError(f"step {name!r} has unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
    try:
        return cls(**fields_)
    except TypeError as err:
        raise ValueError(f"step {name!r}: {err}") from None


def as_step(value: Any) -> Step:
    """A `Step` as is, or one built by `step_from_dict`.

    Example:
        >>> as_step({"name": "llm_int8"}).threshold
        6.0
    """
    return value if isinstance(value, Step) else step_from_dict(value)
