"""The training, evaluation and prediction half of the model interface, which `specc.Model` (and so
`specc.Sequential`) inherits: compile, fit, evaluate, predict, train_on_batch / test_on_batch and the checks
of their data.

Arrays go to specc.train.fit.Trainer, built for the compiled settings and the model's structure and kept until
either changes; it returns Keras's History and log names. The model supplies its structure, engine and input
checks (specc.api.model).
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..train import checks
from . import backend
from .eager import runtime

if TYPE_CHECKING:
    from .layer import Layer

# Calls and predictions on at most this many samples run forward in the engine's workspace (reuse=True): the
# arrays of a call are kept per batch size and reused by the next call of that size instead of allocated
# (64-byte aligned) again, which would be most of a single sample's time. Larger batches allocate their own
# arrays, so inference at many batch sizes keeps no large arrays.
SMALL_BATCH = 64


class TrainingMixin:
    """Model's compile/fit/evaluate/predict (mixed into specc.api.model.Model, whose structure methods it uses:
    _output_names, _make_plan, _plan_and_engine, _signature, _input_arrays, _check_inputs, _structure)."""

    # --- training -----------------------------------------------------------------------------------

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, loss_weights: Any = None, metrics: Any = None,
                weighted_metrics: Any = None, run_eagerly: bool = False, steps_per_execution: int = 1,
                jit_compile: Any = "auto", auto_scale_loss: bool = True, **kwargs: Any) -> None:
        """Keras's compile: names, objects, lists (one per output) or dicts (by output name); metrics may be
        functions (y_true, y_pred) -> array. `jit_compile` (True, False or "auto") is accepted as Keras's:
        specc's kernels are always compiled by Numba (there is no XLA step to switch), and `run_eagerly=True`
        runs them as plain Python."""
        from . import optimizers
        from .training import CompileConfig, check_loss, resolve

        if kwargs:
            raise TypeError(f"compile() got argument(s) specc does not support: {', '.join(sorted(kwargs))}")
        if steps_per_execution != 1:
            raise NotImplementedError("steps_per_execution must be 1 in specc")
        if jit_compile not in (True, False, "auto"):
            raise ValueError(f"jit_compile must be True, False or \"auto\", got {jit_compile!r}")
        if jit_compile is True and run_eagerly:
            warnings.warn("If `run_eagerly` is True, then `jit_compile` cannot also be True. Disabling `jit_compile`.",
                          stacklevel=2)
            jit_compile = False
        if weighted_metrics is not None and not isinstance(weighted_metrics, (list, tuple, dict)):
            raise ValueError(f"Expected `weighted_metrics` argument to be a list, tuple, or dict. Received instead: "
                             f"weighted_metrics={weighted_metrics!r} of type {type(weighted_metrics).__name__}")
        for entry in (loss.values() if isinstance(loss, dict) else loss if isinstance(loss, (list, tuple)) else [loss]):
            check_loss(entry)
        config = CompileConfig(optimizers.get(optimizer), loss, metrics, loss_weights, weighted_metrics)
        if loss is not None and self.built:
            resolve(config, self._output_names())  # report bad names now rather than at fit()
        self._compiled = config
        self.run_eagerly = bool(run_eagerly)
        self.jit_compile = (not self.run_eagerly) if jit_compile == "auto" else jit_compile
        self._compile_flags = {id(layer): layer.trainable for layer in self._all_layers()}
        backend.structure_changed()  # the training engine follows the flags of this compile
        self._warned = False
        self._trainer = self._trainer_key = self._resolved = None
        backend.compiled_models.add(self)

    @property
    def optimizer(self) -> Any:
        """The optimizer compile() was given, as a specc.optimizers object (None before compile): its
        `learning_rate` is the training loop's, readable and settable between steps."""
        return None if self._compiled is None else self._compiled.optimizer

    @property
    def loss(self) -> Any:
        """What compile() was given as `loss` (a name, a loss object, a list or a dict), as Keras keeps it."""
        return None if self._compiled is None else self._compiled.loss

    def _warn_if_trainable_changed(self, layer: Layer) -> None:
        if self._warned or self._compiled is None:
            return
        for sub in layer._all_layers():
            if id(sub) in self._compile_flags and self._compile_flags[id(sub)] != sub.trainable:
                warnings.warn(f"`trainable` of '{layer.name}' changed after model '{self.name}' was compiled: "
                              f"fit() keeps the trainable state of compile time until you compile again. Call "
                              f"model.compile(...) for the change to take effect.", UserWarning, stacklevel=3)
                self._warned = True
                return

    @property
    def metrics_names(self) -> list[str]:
        """The names fit() and evaluate() log, in order: ['loss', ...] (tf.keras's definition)."""
        from .training import metrics_names, resolve

        if self._compiled is None or self._compiled.loss is None or not self.built:
            return []
        outputs = self._output_names()
        return metrics_names(resolve(self._compiled, outputs), outputs)

    @property
    def stop_training(self) -> bool:
        return bool(self._trainer and self._trainer.stop_training)

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        if self._trainer is not None:
            self._trainer.stop_training = bool(value)

    def _get_trainer(self, ys: list[np.ndarray] | None = None):
        """The training loop for the compiled settings and the current structure (cached). `ys` (the targets)
        decide what Keras's loss "crossentropy" / "ce" means: sparse for class-index targets."""
        from .training import crossentropy_for, make_trainer, resolve

        if self._compiled is None:
            raise RuntimeError("You must call `compile()` before using the model for training or evaluation: "
                               "model.compile(optimizer='adam', loss='mse')")
        self._require_built("fit")
        flags = self._compile_flags
        outputs = self._output_names()
        graph = self._make_plan(flags).graph
        ce = []
        for k, o in enumerate(outputs):
            shape = graph.node(o).output_shape
            sparse = ys is not None and (ys[k].ndim < len(shape) + 1 or (ys[k].shape[-1] == 1 and shape[-1] != 1))
            ce.append(crossentropy_for(shape[-1], sparse))
        # The targets matter only to a "crossentropy"/"ce" loss or metric; a call without them (evaluate's
        # loss reset, set_training_state) reuses the loop built with them rather than a fresh optimizer.
        key = (self._signature(flags), tuple(ce) if _mentions_crossentropy(self._compiled) else ())
        if ys is None and self._trainer is not None and self._trainer_key[0] == key[0]:
            key = self._trainer_key
        if self._trainer is None or self._trainer_key != key:
            self._resolved = resolve(self._compiled, outputs, ce)
            plan, engine = self._plan_and_engine(flags)
            seed = self._seed if self._seed is not None else backend.draw_seed()
            self._trainer = make_trainer(engine, self._resolved, seed)
            self._trainer.api_plan = plan
            self._trainer_key = key
        self._compiled.optimizer.bind(self._trainer.optimizer)
        return self._trainer

    def _prepared_inputs(self, x: Any, what: str = "x") -> list[np.ndarray]:
        """Input arrays checked against the model (which a deferred Sequential builds from first)."""
        if x is None:
            raise ValueError(f"{what} is None; pass the input data (an array, a list or a dict of arrays)")
        xs = self._input_arrays(x, self._n_inputs(), what)
        self._ensure_built(xs)
        self._check_inputs(xs, what)
        return xs

    def _targets(self, y: Any, what: str = "y") -> list[np.ndarray]:
        """One target array per output (a dict by output name, a list, or one array), of real numbers;
        their shapes against the outputs and losses are the Trainer's check (Trainer.check_data)."""
        outputs = self._output_names()
        if y is None:
            raise ValueError(f"{what} is None: fit() and evaluate() need targets, one array per model output "
                             f"({', '.join(outputs)})")
        if isinstance(y, dict):
            missing = [o for o in outputs if o not in y]
            if missing:
                raise ValueError(f"{what}: targets are missing output(s) {missing}; outputs: {outputs}")
            items = [y[o] for o in outputs]
        elif isinstance(y, (list, tuple)) and len(outputs) > 1:
            items = list(y)
        else:
            items = [y]
        if len(items) != len(outputs):
            raise ValueError(f"{what}: model '{self.name}' has {len(outputs)} outputs ({', '.join(outputs)}), got "
                             f"{len(items)} target arrays")
        arrays = []
        for k, item in enumerate(items):
            name = what if len(outputs) == 1 else f"{what}['{outputs[k]}']"
            a = checks.numeric_array(name, item)
            checks.check_batch_axis(name, a)
            arrays.append(a)
        return arrays

    def _run(self, trainer: Any):
        """Within fit(): the training engine holds the weights, and eager mode applies."""
        import contextlib

        from .functional import claim, hold

        @contextlib.contextmanager
        def live():
            plan = trainer.api_plan
            claim(trainer.engine, plan)
            with hold(plan), runtime(self.run_eagerly):
                yield

        return live()

    def _callbacks_for(self, callbacks: Any, params: dict) -> list:
        cbs = _callback_list(callbacks)
        for cb in cbs:
            cb.model = self
            if hasattr(cb, "set_params"):
                cb.set_params(params)
        return cbs

    def fit(self, x: Any = None, y: Any = None, batch_size: int | None = None, epochs: int = 1,
            verbose: Any = "auto", callbacks: Any = None, validation_split: float = 0.0,
            validation_data: Any = None, shuffle: bool = True, class_weight: dict | None = None,
            sample_weight: Any = None, initial_epoch: int = 0, steps_per_epoch: int | None = None,
            validation_steps: int | None = None, validation_batch_size: int | None = None,
            validation_freq: Any = 1):
        """Keras's fit on NumPy arrays; returns a History (`history.history['loss']`, ...), also `model.history`.

        Every array is checked before any work (shapes against the model, targets against the losses, the
        same number of samples everywhere, at least one), each error naming the array."""
        from .callbacks import History

        batch_size = _batch_size(batch_size)
        if validation_batch_size is not None:
            checks.check_positive_int("validation_batch_size", validation_batch_size)
        checks.check_non_negative_int("epochs", epochs)
        checks.check_non_negative_int("initial_epoch", initial_epoch)
        if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)) \
                or not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
        _check_class_weight(class_weight)
        _callback_list(callbacks)
        vx = vy = vsw = None
        if validation_data is not None:
            vx, vy, vsw = _unpack_validation_data(validation_data)
        xs = self._prepared_inputs(x)
        checks.check_non_empty(len(xs[0]), "x")
        ys = self._targets(y)
        trainer = self._get_trainer(ys)
        val = None
        if validation_data is not None:
            val = (self._prepared_inputs(vx, "validation_data x"), self._targets(vy, "validation_data y"), vsw)
        if verbose is True:
            verbose = 1
        n_train = len(xs[0]) if val is not None else int(len(xs[0]) * (1 - validation_split))
        history = History()
        history.model = self
        history.params = {"verbose": verbose, "epochs": epochs, "steps": steps_per_epoch or -(-n_train // batch_size)}
        cbs = self._callbacks_for(callbacks, history.params)
        with self._run(trainer):
            trainer.fit(xs, ys, batch_size=batch_size, epochs=epochs, validation_split=validation_split,
                        validation_data=val, shuffle=shuffle, class_weight=class_weight, callbacks=cbs,
                        verbose=verbose, initial_epoch=initial_epoch, validation_batch_size=validation_batch_size,
                        sample_weight=sample_weight, steps_per_epoch=steps_per_epoch,
                        validation_steps=validation_steps, validation_freq=validation_freq, history=history)
        self.history = history
        return history

    def _results(self, logs: dict, return_dict: bool) -> Any:
        """Keras's return forms: the dict, else the loss alone (a float) or the values in metrics_names order."""
        if return_dict:
            return logs
        values = [float(v) for v in logs.values()]
        return values[0] if len(values) == 1 else values

    def evaluate(self, x: Any = None, y: Any = None, batch_size: int | None = None, verbose: Any = "auto",
                 sample_weight: Any = None, steps: int | None = None, callbacks: Any = None,
                 return_dict: bool = False) -> Any:
        """Keras's evaluate: the loss (a float) if there is nothing else, else values in `metrics_names` order;
        `steps` batches at most; a progress bar at verbose=1 ("auto")."""
        xs = self._prepared_inputs(x)
        checks.check_non_empty(len(xs[0]), "x")
        ys = self._targets(y)
        trainer = self._get_trainer(ys)
        cbs = self._callbacks_for(callbacks, {"verbose": verbose, "epochs": 1, "steps": steps})
        with self._run(trainer):
            logs = trainer.evaluate(xs, ys, batch_size=batch_size, sample_weight=sample_weight, steps=steps,
                                    callbacks=cbs, verbose=_verbosity(verbose))
        return self._results(logs, return_dict)

    def train_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None, class_weight: dict | None = None,
                       return_dict: bool = False) -> Any:
        """Keras's train_on_batch: one optimizer step on this batch; the loss (computed before the step) and
        metrics of the batch, as a float, a list in `metrics_names` order, or a dict."""
        _check_class_weight(class_weight)
        xs = self._prepared_inputs(x)
        ys = self._targets(y)
        trainer = self._get_trainer(ys)
        with self._run(trainer):
            logs = trainer.train_on_batch(xs, ys, sample_weight=sample_weight, class_weight=class_weight)
        return self._results(logs, return_dict)

    def test_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None, return_dict: bool = False) -> Any:
        """Keras's test_on_batch: loss and metrics of this batch, in train_on_batch's forms."""
        xs = self._prepared_inputs(x)
        ys = self._targets(y)
        trainer = self._get_trainer(ys)
        with self._run(trainer):
            logs = trainer.test_on_batch(xs, ys, sample_weight=sample_weight)
        return self._results(logs, return_dict)

    # --- prediction ---------------------------------------------------------------------------------

    def predict(self, x: Any, batch_size: int | None = None, verbose: Any = "auto", steps: int | None = None,
                callbacks: Any = None) -> Any:
        """Outputs for `x`, computed in batches (an array, or a list for several outputs); `steps` batches at
        most; a progress bar at verbose=1 ("auto"); callbacks get on_predict_* calls."""
        if type(verbose) is int and verbose == 0 and steps is None and callbacks is None and type(x) is np.ndarray \
                and (batch_size is None or type(batch_size) is int and batch_size > 0):
            outs = self._quick_predict(x, batch_size or _default_batch_size())
            if outs is not None:
                return self._structure(outs)
        batch_size = _batch_size(batch_size)
        level = _verbosity(verbose)
        xs = self._prepared_inputs(x)
        checks.check_non_empty(len(xs[0]), "x")
        cbs = [] if callbacks is None else self._callbacks_for(callbacks, {"verbose": verbose, "epochs": 1,
                                                                          "steps": steps})
        plan, engine = self._plan_and_engine()
        with runtime(self.run_eagerly):
            if not cbs and steps is None and level == 0 and len(xs[0]) <= min(batch_size, SMALL_BATCH):
                outs = self._predict_small(plan, engine, xs)  # no bar or hooks to serve: one pass, no batching
            else:
                from ..train.fit import Trainer

                outs = Trainer.predict_with(engine, xs, batch_size, steps=steps, callbacks=cbs, verbose=level)
                self._remember(plan, engine, xs)
        return self._structure(outs)

    def _predict_small(self, plan: Any, engine: Any, xs: list[np.ndarray]) -> list[np.ndarray]:
        """One small batch, checked, for `engine` (just claimed): an MLP's one fused call (its DenseChain kept
        with the engine), else one forward pass in the engine's workspace; the outputs copied out of the
        buffers they are made in."""
        from ..train.fused import DenseChain

        if len(xs) > 1:
            checks.check_cardinality({f"x['{layer.name}']": a for layer, a in zip(self._input_layers(), xs)})
        self._remember(plan, engine, xs)
        chain = DenseChain.cached(engine)
        if chain is not None:
            return [chain.predict(xs[0]).copy()]
        return [o.copy() for o in _forward(engine, xs)]

    def _remember(self, plan: Any, engine: Any, xs: list[np.ndarray]) -> None:
        """Keeps what a checked call ran on (`engine`, just claimed) for _quick_predict, when the model has one
        input of a known sample shape and runs compiled."""
        from ..train.fused import DenseChain

        state = self._inference
        if state is not None and state.engine is engine and state.version == backend.structure_version():
            return
        shape = tuple(self._inputs[0].shape[1:])
        if len(xs) == 1 and None not in shape and not self.run_eagerly:
            self._inference = _Inference(backend.structure_version(), plan, engine, DenseChain.cached(engine), shape)

    def _quick_predict(self, x: np.ndarray, batch_size: int, calls: bool = False) -> list[np.ndarray] | None:
        """predict(x, batch_size, verbose=0) or (`calls`) model(x) for an array `x`, by the way an earlier call
        went (`_inference`), when nothing has changed since and x has that call's sample shape: every input
        check would pass, and on a small model would cost more than the forward pass. At most SMALL_BATCH
        samples (and batch_size) take one pass in the engine's workspace or an MLP's one fused call; more take
        an MLP's fused call per batch, written into the result. None otherwise (other models' large batches,
        anything else): the general path then runs, with its checks and errors."""
        state = self._inference
        if state is None or state.version != backend.structure_version() or self.run_eagerly:
            return None
        shape = x.shape
        if not shape or shape[1:] != state.shape or x.dtype.kind not in "biuf":
            return None
        n, chain = shape[0], state.chain
        small = n <= SMALL_BATCH and n <= batch_size
        if n == 0 or not (small or (chain is not None and not calls)):
            return None
        for layer, i, view in state.links:
            if layer._weights[i] is not view:  # another engine took the layer's weights: bring them back
                from .functional import claim

                claim(state.engine, state.plan)
                break
        if chain is None:
            return [o.copy() for o in _forward(state.engine, [x])]
        # Trainer.predict_with's batches, with no bar; the last layer writes straight into the result
        out = np.empty((n, chain.units_out), state.engine.dtype)
        replicated = n > SMALL_BATCH  # the weights' copies per thread pay off over batches, not one small call
        if replicated:
            chain.replicate()
        for start in range(0, n, batch_size):
            chain.predict(x[start: start + batch_size], out[start: start + batch_size], replicated=replicated)
        return [out]

    def predict_on_batch(self, x: Any) -> Any:
        return self(x)


def _forward(engine: Any, xs: list[np.ndarray]) -> list[np.ndarray]:
    """One inference pass: a convolutional network's inference plan (specc/infer.py: BatchNormalization
    folded, epilogues fused), else the engine's forward in its workspace; outputs valid until the next pass."""
    from ..infer import InferencePlan

    plan = InferencePlan.cached(engine)
    if plan is None:
        return engine.forward(xs, training=False, reuse=True)
    plan.refresh()
    with engine.held_threads():
        return plan.predict(xs)


def _mentions_crossentropy(compiled: Any) -> bool:
    """Whether compile() named Keras's "crossentropy"/"ce" (whose meaning depends on the targets)."""
    from .training import CROSSENTROPY

    def walk(v: Any) -> bool:
        if isinstance(v, str):
            return v in CROSSENTROPY
        if isinstance(v, dict):
            return any(map(walk, v.values()))
        if isinstance(v, (list, tuple)):
            return any(map(walk, v))
        return False

    return walk([compiled.loss, compiled.metrics, compiled.weighted_metrics])


class _Inference:
    """What a model's last checked prediction ran on: the structure version, the plan and engine (whose weight
    views the layers' arrays were, `links`), the engine's DenseChain or None, and the sample shape."""

    __slots__ = ("version", "plan", "engine", "chain", "shape", "links")

    def __init__(self, version: int, plan: Any, engine: Any, chain: Any, shape: tuple):
        self.version, self.plan, self.engine, self.chain, self.shape = version, plan, engine, chain, shape
        # (layer, index, engine view) for every weight functional.claim would look at
        self.links = [(layer, i, view) for step in engine.steps if (layer := plan.leaves.get(step.name)) is not None
                      for i, view in enumerate(step.weights)]


@functools.cache
def _default_batch_size() -> int:
    """Keras's default batch size: the spec's `fit.batch_size` default."""
    from ..spec.schema import FitDef

    return FitDef.model_fields["batch_size"].default


def _batch_size(value: Any) -> int:
    """Keras's default (the spec's `fit.batch_size` default) for None, else a positive integer."""
    return _default_batch_size() if value is None else checks.check_positive_int("batch_size", value)


def _verbosity(verbose: Any) -> int:
    """Keras's verbose for evaluate/predict: "auto" and True are 1 (the bar), else 0, 1 or 2."""
    if verbose == "auto" or verbose is True:
        return 1
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1, 2 or \"auto\", got {verbose!r}")
    return int(verbose)


def _callback_list(callbacks: Any) -> list:
    """Keras 3 takes one callback or a list of them (it flattens what it is given)."""
    from ..train.callbacks import Callback

    if callbacks is None:
        return []
    items = [callbacks] if isinstance(callbacks, Callback) else callbacks
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"callbacks must be a specc.callbacks object or a list of them, got "
                        f"{type(callbacks).__name__}")
    for cb in items:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be specc.callbacks objects (or subclasses of "
                            f"specc.callbacks.Callback), got {type(cb).__name__}")
    return list(items)


def _unpack_validation_data(data: Any) -> tuple[Any, Any, Any]:
    """(x_val, y_val, val_sample_weight) from Keras's `validation_data` forms: (x, y) or (x, y, sample_weight)."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        got = f"a {type(data).__name__} of {len(data)} item{'' if len(data) == 1 else 's'}" if isinstance(data, (tuple, list)) else \
            f"a {type(data).__name__}"
        raise ValueError(f"validation_data must be a tuple (x_val, y_val) or (x_val, y_val, val_sample_weight); got "
                         f"{got}")
    return data[0], data[1], (data[2] if len(data) == 3 else None)


def _check_class_weight(class_weight: Any) -> None:
    if class_weight is None:
        return
    if not isinstance(class_weight, dict):
        raise ValueError(f"class_weight must be a dict mapping class indices to weights, got "
                         f"{type(class_weight).__name__}")
    for k, v in class_weight.items():
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or \
                isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"class_weight must map integer class indices to numbers, got {k!r}: {v!r}")
