"""Keras's optimizer classes for `compile()`: `specc.optimizers.Adam(learning_rate=1e-3)`.

Each object is a validated `OptimizerDef` (the spec's `compile.optimizer`), so its arguments, defaults and
error messages are the spec's; the training loop builds the real optimizer over the engine's flat buffer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..spec.schema import OptimizerDef, Schedule
from .layer import ArgumentError, validate

# Keras class name -> the spec's optimizer type
_TYPES = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw", "RMSprop": "rmsprop", "Adagrad": "adagrad",
          "Adadelta": "adadelta", "Nadam": "nadam"}
# Keras arguments with no effect on plain training, accepted at their defaults.
_KERAS_DEFAULTS = {"name": None, "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
                   "loss_scale_factor": None, "gradient_accumulation_steps": None, "jit_compile": True}


class Optimizer:
    """Base of the optimizer classes; `definition` is the validated spec entry.

    It is `model.optimizer` after compile(). Once fit() (or train_on_batch) runs, it reads and writes the
    training loop's optimizer: `learning_rate` is the rate the next step uses, and setting it (from a
    callback, between steps) changes that step, as assigning Keras's learning-rate variable does."""

    _type = ""
    _live = None  # the training loop's optimizer (specc.train.optimizers), once the model trains

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
    def learning_rate(self) -> float:
        """The learning rate the next step uses (a schedule's value at the current iteration)."""
        if self._live is not None:
            return self._live.learning_rate
        lr = self.definition.learning_rate
        if lr is None:
            from ..spec.schema import OPTIMIZER_DEFAULTS

            return float(OPTIMIZER_DEFAULTS[self.definition.type]["learning_rate"])
        if isinstance(lr, (int, float)):
            return float(lr)
        from ..train.optimizers import make_schedule

        return float(make_schedule(lr)(0))

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        if self.definition.learning_rate is not None and not isinstance(self.definition.learning_rate, (int, float)):
            raise TypeError("This optimizer was created with a `LearningRateSchedule` object as its `learning_rate` "
                            "constructor argument, hence its learning rate is not settable. If you need the learning "
                            "rate to be settable, you should instantiate the optimizer with a float `learning_rate`.")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"learning_rate must be a number, got {type(value).__name__}")
        value = float(value)
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"learning_rate must be a finite number >= 0, got {value}")
        # The definition too: a training loop built later (a recompiled model) starts from this rate.
        self.definition = self.definition.model_copy(update={"learning_rate": value})
        if self._live is not None:
            self._live.learning_rate = value

    lr = learning_rate  # tf.keras 2's name

    @property
    def iterations(self) -> int:
        """The number of optimizer steps taken."""
        return 0 if self._live is None else int(self._live.iterations)

    def bind(self, live: Any) -> None:
        """Attach the training loop's optimizer (the model's trainer calls this)."""
        self._live = live

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


_BY_TYPE = {t: name for name, t in _TYPES.items()}


def _from_definition(definition: OptimizerDef) -> Optimizer:
    opt = object.__new__(globals()[_BY_TYPE[definition.type]])
    opt.definition = definition
    return opt


def get(identifier: Any) -> Optimizer:
    """An optimizer object from a name ("adam", "Adam"), an optimizer object (itself), a spec-style mapping or
    an OptimizerDef."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, OptimizerDef):
        return _from_definition(identifier)
    if isinstance(identifier, str):
        return _from_definition(validate(OptimizerDef, {"type": identifier}, "optimizer"))
    if isinstance(identifier, dict):
        return _from_definition(check_arguments(validate(OptimizerDef, dict(identifier), "optimizer"), identifier))
    raise TypeError(f"optimizer must be a name (e.g. 'adam'), a specc.optimizers object (e.g. "
                    f"specc.optimizers.Adam(learning_rate=1e-3)) or a mapping; got {type(identifier).__name__}")


__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Nadam", "Optimizer", "get", "schedules"]
