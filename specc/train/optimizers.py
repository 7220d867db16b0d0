"""Keras 3 optimizers over the engine's flat trainable buffer, one fused kernel per step.

    opt = make_optimizer(spec.compile.optimizer, variable_offsets(engine), engine.dtype)
    opt.step(engine.params[:engine.n_trainable], engine.grads)

Semantics follow Keras 3 (keras/src/optimizers and the torch backend's versions of them):
- defaults are each Keras optimizer's defaults (AdamW: weight_decay=0.004);
- a step clips the gradients (clipnorm per variable, using the variable boundaries `offsets`;
  clipvalue; or global_clipnorm over all of them), then applies weight decay to every variable as
  w *= 1 - weight_decay * lr (the base optimizer's rule, used by AdamW and any optimizer given
  weight_decay), then the optimizer's own update;
- a learning-rate schedule is evaluated at `iterations`, the number of steps taken before this one.

State arrays are flat and laid out like the parameters; `state_arrays()` returns them with the
iteration counter, a constant learning rate (which callbacks may change) and Nadam's running momentum
product as 0-d arrays, ready for a checkpoint, and `load_state_arrays()` puts them back.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import kernels as _kernels
from ..kernels import optim as K
from ..spec.schema import OPTIMIZER_DEFAULTS

# --- learning-rate schedules ----------------------------------------------------------------------------


class ExponentialDecay:
    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float, staircase: bool = False):
        if decay_steps <= 0:
            raise ValueError(f"decay_steps must be > 0, got {decay_steps}")
        self.initial_learning_rate, self.decay_steps = float(initial_learning_rate), decay_steps
        self.decay_rate, self.staircase = float(decay_rate), bool(staircase)

    def __call__(self, step: int) -> float:
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate ** p


class CosineDecay:
    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0):
        if decay_steps <= 0:
            raise ValueError(f"decay_steps must be > 0, got {decay_steps}")
        self.initial_learning_rate, self.decay_steps, self.alpha = float(initial_learning_rate), decay_steps, alpha

    def __call__(self, step: int) -> float:
        fraction = min(step, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * fraction))
        return self.initial_learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)


class PiecewiseConstantDecay:
    """values[0] while step <= boundaries[0], values[i] while boundaries[i-1] < step <= boundaries[i], and
    values[-1] after the last boundary (Keras's inclusive upper bounds)."""

    def __init__(self, boundaries: list[int], values: list[float]):
        if len(values) != len(boundaries) + 1:
            raise ValueError("PiecewiseConstantDecay needs one more value than boundaries")
        self.boundaries, self.values = list(boundaries), [float(v) for v in values]

    def __call__(self, step: int) -> float:
        for b, v in zip(self.boundaries, self.values[:-1], strict=True):
            if step <= b:
                return v
        return self.values[-1]


SCHEDULES = {"ExponentialDecay": ExponentialDecay, "CosineDecay": CosineDecay,
             "PiecewiseConstantDecay": PiecewiseConstantDecay}


def make_schedule(defn: Any):
    """A schedule from a `Schedule` spec (or any object with its fields)."""
    if defn.type == "ExponentialDecay":
        return ExponentialDecay(defn.initial_learning_rate, defn.decay_steps, defn.decay_rate, defn.staircase)
    if defn.type == "CosineDecay":
        return CosineDecay(defn.initial_learning_rate, defn.decay_steps, defn.alpha)
    if defn.type == "PiecewiseConstantDecay":
        return PiecewiseConstantDecay(defn.boundaries, defn.values)
    raise ValueError(f"unknown learning-rate schedule {defn.type!r}")


# --- optimizers -----------------------------------------------------------------------------------------


class Optimizer:
    """Base: learning rate, weight decay, clipping, the iteration counter and the state arrays."""

    name = "optimizer"
    defaults: dict[str, Any] = {}
    slots: tuple[str, ...] = ()  # names of the flat state arrays, as Keras names its optimizer variables

    def __init__(self, offsets, dtype: Any = np.float32, *, learning_rate: Any = None, weight_decay: float | None = None,
                 clipnorm: float | None = None, clipvalue: float | None = None, global_clipnorm: float | None = None,
                 **hyper):
        unknown = set(hyper) - set(self.defaults) - {"learning_rate", "weight_decay"}
        if unknown:
            raise ValueError(f"{self.name} has no argument {', '.join(sorted(unknown))}")
        for key, default in self.defaults.items():
            if key not in ("learning_rate", "weight_decay"):
                setattr(self, key, default if hyper.get(key) is None else hyper[key])
        if learning_rate is None:
            learning_rate = self.defaults.get("learning_rate", 0.001)
        self.schedule = None if isinstance(learning_rate, (int, float)) else learning_rate
        # A constant rate is state, as in Keras (a callback such as ReduceLROnPlateau may change it).
        self._learning_rate = None if self.schedule else np.array(float(learning_rate))
        if weight_decay is None:
            weight_decay = self.defaults.get("weight_decay")
        self.weight_decay = weight_decay
        if sum(c is not None for c in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError("use only one of clipnorm, clipvalue and global_clipnorm")
        self.clip_mode, self.clip = K.NO_CLIP, 0.0
        for mode, value in ((K.CLIPNORM, clipnorm), (K.CLIPVALUE, clipvalue), (K.GLOBAL_CLIPNORM, global_clipnorm)):
            if value is not None and value > 0:  # Keras ignores a zero clip
                self.clip_mode, self.clip = mode, float(value)

        self.offsets = _normalize_offsets(offsets)
        self.dtype = np.dtype(dtype)
        self.size = int(self.offsets[-1])
        self._largest = int(np.diff(self.offsets).max(initial=0))  # elements of the largest variable
        self._iterations = np.zeros((), np.int64)
        self.state = {name: np.zeros(self.size, self.dtype) for name in self.active_slots()}
        self._empty = np.zeros(0, self.dtype)

    def active_slots(self) -> tuple[str, ...]:
        return self.slots

    # --- public API -----------------------------------------------------------------------------------

    @property
    def iterations(self) -> int:
        return int(self._iterations)

    def learning_rate_now(self) -> float:
        """The learning rate the next step uses."""
        return float(self.schedule(self.iterations)) if self.schedule else float(self._learning_rate)

    @property
    def learning_rate(self) -> float:
        return self.learning_rate_now()

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        if self.schedule:
            raise TypeError("this optimizer's learning rate is a schedule, so it cannot be set")
        self._learning_rate[...] = float(value)

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        """One update of `params` (flat, in place) from `grads`; then iterations += 1."""
        if params.shape != (self.size,) or grads.shape != (self.size,):
            raise ValueError(f"expected flat params and grads of length {self.size}, got {params.shape} and "
                             f"{grads.shape}")
        if params.dtype != self.dtype or grads.dtype != self.dtype:
            raise ValueError(f"expected {self.dtype} params and grads, got {params.dtype} and {grads.dtype}")
        lr = self.learning_rate_now()
        decay = 1.0 - self.weight_decay * lr if self.weight_decay else 1.0
        self._update(params, grads, lr, decay, self.iterations + 1)
        self._iterations += 1

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything a checkpoint needs to resume (live arrays, not copies): the iteration counter, a
        constant learning rate, and the flat state arrays."""
        lr = {} if self.schedule else {"learning_rate": self._learning_rate}
        return {"iterations": self._iterations, **lr, **self.state}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        own = self.state_arrays()
        if set(arrays) != set(own):
            raise ValueError(f"optimizer state has {sorted(own)}, got {sorted(arrays)}")
        checked = []
        for key, target in own.items():  # every array checked before any is written
            a = np.asarray(arrays[key])
            if a.dtype.kind not in "biuf":
                raise ValueError(f"optimizer state {key!r} has dtype {a.dtype}; expected real numbers")
            if a.shape != target.shape:
                raise ValueError(f"optimizer state {key!r} has shape {target.shape}, got {a.shape}")
            checked.append((target, a))
        for target, a in checked:
            target[...] = a

    def _update(self, params, grads, lr: float, decay: float, t: int) -> None:
        raise NotImplementedError

    def _args(self, decay: float) -> tuple:
        return self.offsets, self.clip_mode, self.clip, float(decay)


class SGD(Optimizer):
    name = "sgd"
    defaults = OPTIMIZER_DEFAULTS["sgd"]
    slots = ("momentum",)

    def active_slots(self):
        return self.slots if self.momentum != 0 else ()

    def _update(self, params, grads, lr, decay, t):
        m = self.state.get("momentum", self._empty)
        args = (params, grads, *self._args(decay), lr, float(self.momentum), bool(self.nesterov), m)
        threads = _kernels.product_threads()
        if K.uses_threads(self._largest, threads):
            K.sgd_threaded(*args, threads)
        else:
            K.sgd(*args)


class Adam(Optimizer):
    name = "adam"
    defaults = OPTIMIZER_DEFAULTS["adam"]
    slots = ("momentum", "velocity", "velocity_hat")

    def active_slots(self):
        return self.slots if self.amsgrad else self.slots[:2]

    def _update(self, params, grads, lr, decay, t):
        alpha = lr * math.sqrt(1.0 - self.beta_2 ** t) / (1.0 - self.beta_1 ** t)
        args = (params, grads, *self._args(decay), alpha, float(self.beta_1), float(self.beta_2), float(self.epsilon),
                self.state["momentum"], self.state["velocity"])
        threads = _kernels.product_threads()
        if self.amsgrad:
            K.amsgrad(*args, self.state["velocity_hat"])
        elif K.uses_threads(self._largest, threads):
            K.adam_threaded(*args, threads)
        else:
            K.adam(*args)


class AdamW(Adam):
    """Adam with Keras's decoupled weight decay w *= 1 - lr * weight_decay (default 0.004)."""

    name = "adamw"
    defaults = OPTIMIZER_DEFAULTS["adamw"]


class RMSprop(Optimizer):
    name = "rmsprop"
    defaults = OPTIMIZER_DEFAULTS["rmsprop"]
    slots = ("velocity", "momentum", "average_gradient")

    def active_slots(self):
        return ("velocity",) + (("momentum",) if self.momentum > 0 else ()) + \
            (("average_gradient",) if self.centered else ())

    def _update(self, params, grads, lr, decay, t):
        K.rmsprop(params, grads, *self._args(decay), lr, float(self.rho), float(self.momentum), float(self.epsilon),
                  bool(self.centered), self.state["velocity"], self.state.get("momentum", self._empty),
                  self.state.get("average_gradient", self._empty))


class Adagrad(Optimizer):
    name = "adagrad"
    defaults = OPTIMIZER_DEFAULTS["adagrad"]
    slots = ("accumulator",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.state["accumulator"][:] = self.initial_accumulator_value

    def _update(self, params, grads, lr, decay, t):
        K.adagrad(params, grads, *self._args(decay), lr, float(self.epsilon), self.state["accumulator"])


class Adadelta(Optimizer):
    name = "adadelta"
    defaults = OPTIMIZER_DEFAULTS["adadelta"]
    slots = ("accumulated_grad", "accumulated_delta_var")

    def _update(self, params, grads, lr, decay, t):
        K.adadelta(params, grads, *self._args(decay), lr, float(self.rho), float(self.epsilon),
                   self.state["accumulated_grad"], self.state["accumulated_delta_var"])


class Nadam(Optimizer):
    """Keras's Nadam: momentum schedule u_t = beta_1 * (1 - 0.5 * 0.96^t) and its running product."""

    name = "nadam"
    defaults = OPTIMIZER_DEFAULTS["nadam"]
    slots = ("momentum", "velocity")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._u_product = np.ones((), np.float64)

    def state_arrays(self):
        return {**super().state_arrays(), "u_product": self._u_product}

    def _update(self, params, grads, lr, decay, t):
        u_t = self.beta_1 * (1.0 - 0.5 * 0.96 ** t)
        u_next = self.beta_1 * (1.0 - 0.5 * 0.96 ** (t + 1))
        u_product = float(self._u_product) * u_t
        c_m = u_next / (1.0 - u_product * u_next)
        c_g = (1.0 - u_t) / (1.0 - u_product)
        c_v = 1.0 / (1.0 - self.beta_2 ** t)
        K.nadam(params, grads, *self._args(decay), lr, float(self.beta_1), float(self.beta_2), float(self.epsilon),
                c_m, c_g, c_v, self.state["momentum"], self.state["velocity"])
        self._u_product[...] = u_product


OPTIMIZERS: dict[str, type[Optimizer]] = {c.name: c for c in (SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta, Nadam)}


def make_optimizer(defn: Any, offsets, dtype: Any = np.float32) -> Optimizer:
    """The optimizer an `OptimizerDef` describes, for a flat buffer whose variables start at `offsets`."""
    lr = defn.learning_rate
    if lr is not None and not isinstance(lr, (int, float)):
        lr = make_schedule(lr)
    cls = OPTIMIZERS[defn.type]
    hyper = {k: getattr(defn, k, None) for k in cls.defaults if k not in ("learning_rate", "weight_decay")}
    return cls(offsets, dtype, learning_rate=lr, weight_decay=defn.weight_decay, clipnorm=defn.clipnorm,
               clipvalue=defn.clipvalue, global_clipnorm=defn.global_clipnorm, **hyper)


def _normalize_offsets(offsets) -> np.ndarray:
    """Variable boundaries [0, end_0, end_1, ..., total] as int64; a missing leading 0 is added."""
    o = np.asarray(offsets, np.int64).reshape(-1)
    if o.size == 0 or o[0] != 0:
        o = np.concatenate([[0], o]).astype(np.int64)
    if np.any(np.diff(o) < 0):
        raise ValueError("variable offsets must be non-decreasing")
    return np.ascontiguousarray(o)


def variable_offsets(engine) -> np.ndarray:
    """Boundaries of the trainable variables inside `engine.params[:engine.n_trainable]`."""
    base = engine.params.ctypes.data
    item = engine.params.itemsize
    starts = sorted({(w.ctypes.data - base) // item for s in engine.steps for w in s.weights
                     if w is not None and w.size and 0 <= (w.ctypes.data - base) // item < engine.n_trainable})
    return np.array(starts + [engine.n_trainable], np.int64)
