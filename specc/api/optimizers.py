"""Keras's optimizer classes for `compile()`: `specc.optimizers.Adam(learning_rate=1e-3)`.

Each object is a validated `OptimizerDef` (the spec's `compile.optimizer`), so its arguments, defaults and
error messages are the spec's; the training loop builds the real optimizer over the engine's flat buffer.
"""

from __future__ import annotations

from typing import Any

from ..spec.schema import OptimizerDef, Schedule
from .layer import ArgumentError, validate

# Keras class name -> the spec's optimizer type
_TYPES = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw", "RMSprop": "rmsprop", "Adagrad": "adagrad",
          "Adadelta": "adadelta", "Nadam": "nadam"}
# Keras arguments with no effect on plain training, accepted at their defaults.
_KERAS_DEFAULTS = {"name": None, "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
                   "loss_scale_factor": None, "gradient_accumulation_steps": None, "jit_compile": True}


class Optimizer:
    """Base of the optimizer classes; `definition` is the validated spec entry."""

    _type = ""

    def __init__(self, learning_rate: Any = None, **kwargs: Any):
        for key, default in _KERAS_DEFAULTS.items():
            if key in kwargs and (kwargs[key] == default or key == "name"):
                kwargs.pop(key)
        if isinstance(learning_rate, LearningRateSchedule):
            learning_rate = learning_rate.definition.model_dump(exclude_none=True)
        raw = {"type": self._type, **({} if learning_rate is None else {"learning_rate": learning_rate}),
               **{k: v for k, v in kwargs.items() if v is not None}}
        self.definition: OptimizerDef = check_arguments(validate(OptimizerDef, raw, type(self).__name__), raw)

    @property
    def learning_rate(self) -> Any:
        return self.definition.learning_rate

    def get_config(self) -> dict:
        return self.definition.model_dump(exclude_none=True)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.get_config()}>"


def _optimizer_class(name: str, type_name: str) -> type[Optimizer]:
    return type(name, (Optimizer,), {"_type": type_name, "__module__": "specc.optimizers",
                                     "__doc__": f"Keras's {name} optimizer (Keras 3 defaults)."})


SGD = _optimizer_class("SGD", "sgd")
Adam = _optimizer_class("Adam", "adam")
AdamW = _optimizer_class("AdamW", "adamw")
RMSprop = _optimizer_class("RMSprop", "rmsprop")
Adagrad = _optimizer_class("Adagrad", "adagrad")
Adadelta = _optimizer_class("Adadelta", "adadelta")
Nadam = _optimizer_class("Nadam", "nadam")


# Keras 3's constructor signatures, in order (`name` only names the schedule).
_SCHEDULE_POSITIONAL = {"ExponentialDecay": ("initial_learning_rate", "decay_steps", "decay_rate", "staircase", "name"),
                        "CosineDecay": ("initial_learning_rate", "decay_steps", "alpha", "name"),
                        "PiecewiseConstantDecay": ("boundaries", "values", "name")}


class LearningRateSchedule:
    _type = ""

    def __init__(self, *args: Any, **kwargs: Any):
        order = _SCHEDULE_POSITIONAL.get(self._type, ())
        if len(args) > len(order):
            raise ArgumentError(f"{self._type}() takes at most {len(order)} positional argument(s) "
                                f"({', '.join(order)}), got {len(args)}")
        for key in order[:len(args)]:
            if key in kwargs:
                raise ArgumentError(f"{self._type}() got multiple values for argument '{key}'")
        kwargs = {**dict(zip(order, args)), **kwargs}
        kwargs.pop("name", None)
        self.definition: Schedule = validate(Schedule, {"type": self._type, **kwargs}, type(self).__name__)


class _Schedules:
    """`specc.optimizers.schedules.ExponentialDecay(initial_learning_rate, decay_steps, decay_rate)`."""

    LearningRateSchedule = LearningRateSchedule

    def __init__(self) -> None:
        for name in ("ExponentialDecay", "CosineDecay", "PiecewiseConstantDecay"):
            setattr(self, name, type(name, (LearningRateSchedule,), {"_type": name,
                                                                      "__module__": "specc.optimizers.schedules"}))


schedules = _Schedules()


def check_arguments(definition: OptimizerDef, raw: dict) -> OptimizerDef:
    """Each argument the chosen optimizer does not take is an error, as in a spec's compile.optimizer."""
    from ..spec.schema import COMMON_OPTIMIZER_ARGS, OPTIMIZER_ARGS

    takes = OPTIMIZER_ARGS[definition.type] + COMMON_OPTIMIZER_ARGS
    wrong = [k for k in raw if k != "type" and k not in takes]
    if wrong:
        raise ArgumentError("; ".join(f"{definition.type} has no argument `{k}`; it takes {', '.join(takes)}"
                                      for k in wrong))
    return definition


def get(identifier: Any) -> OptimizerDef:
    """An OptimizerDef from a name ("adam", "Adam"), an optimizer object, or a spec-style mapping."""
    if isinstance(identifier, Optimizer):
        return identifier.definition
    if isinstance(identifier, OptimizerDef):
        return identifier
    if isinstance(identifier, str):
        return validate(OptimizerDef, {"type": identifier}, "optimizer")
    if isinstance(identifier, dict):
        return check_arguments(validate(OptimizerDef, dict(identifier), "optimizer"), identifier)
    raise TypeError(f"optimizer must be a name (e.g. 'adam'), a specc.optimizers object (e.g. "
                    f"specc.optimizers.Adam(learning_rate=1e-3)) or a mapping; got {type(identifier).__name__}")


__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Nadam", "Optimizer", "get", "schedules"]
