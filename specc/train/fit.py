"""The training loop: plain Python around the engine's jitted forward/backward and the optimizer's fused
step. Keras 3 semantics for fit/evaluate/predict and train_on_batch/test_on_batch: batches in order
(shuffled per pass when asked), the last partial batch included, metrics accumulated over the epoch, `val_`
metrics after each validated epoch, sample and class weights, every callback hook with Keras's logs.

    trainer = Trainer(engine, compile_def, seed)
    history = trainer.fit(x, y, batch_size=64, epochs=10, validation_split=0.1)
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..engine import Engine
from ..infer import InferencePlan
from ..spec.schema import FitDef
from . import checks
from . import metrics as M
from .callbacks import Callback, History
from .fused import DenseChain
from .losses import get_loss
from .optimizers import make_optimizer
from .progress import Progress

DEFAULT_BATCH_SIZE: int = FitDef.model_fields["batch_size"].default  # the schema's, the one source of defaults


class Diverged(Exception):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(f"loss became {value} at epoch {epoch + 1}, step {step}")


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C or SIGTERM) after a completed step."""


def _as_list(a) -> list[np.ndarray]:
    return list(a) if isinstance(a, (list, tuple)) else [a]


def _array_name(what: str, names: list[str], k: int) -> str:
    """`x` for a model's one input, `x['meta']` for one of several (likewise for targets)."""
    return what if len(names) == 1 else f"{what}['{names[k]}']"


def checked_inputs(engine: Engine, x, what: str = "x") -> list[np.ndarray]:
    """The input arrays `x` (one per model input), each checked against its input's shape: real numbers, a
    batch axis, the input's rank and known sizes (specc.train.checks)."""
    x = _as_list(x)
    graph = engine.graph
    names = [node.name for node in graph.inputs]
    if len(x) != len(names):
        raise ValueError(f"{what}: model '{graph.name}' expects {len(names)} input(s) ({', '.join(names)}), but it "
                         f"received {len(x)} input arrays")
    out = []
    for k, (node, a) in enumerate(zip(graph.inputs, x)):
        name = _array_name(what, names, k)
        a = checks.numeric_array(name, a)
        checks.check_batch_axis(name, a)
        checks.check_shape(name, a, (None, *node.output_shape), graph.name, k)
        out.append(a)
    return out


class Trainer:
    def __init__(self, engine: Engine, compile_def, seed: int | None = None):
        self.engine = engine
        engine.input_gradients = False  # training never needs d(loss)/d(input)
        outputs = engine.graph.outputs
        self.output_names = list(outputs)
        loss = compile_def.loss
        names = [loss.get(o) for o in outputs] if isinstance(loss, dict) else [loss] * len(outputs)
        missing = [o for o, n in zip(outputs, names) if n is None]
        if missing:
            raise ValueError(f"no loss for output(s) {', '.join(missing)}")
        self.losses = [get_loss(n) for n in names]
        lw = compile_def.loss_weights
        if isinstance(lw, dict):
            self.loss_weights = [float(lw.get(o, 1.0)) for o in outputs]
        elif isinstance(lw, list):
            self.loss_weights = [float(w) for w in lw]
        else:
            self.loss_weights = [1.0] * len(outputs)
        self.metric_names = compile_def.metrics
        # Per output: (metric name or function, label or None, weighted). The API adds weighted_metrics and
        # metric functions; a spec's metrics are plain names, unweighted (Keras's `metrics`).
        self.metric_specs = [[(m, None, False) for m in (self.metric_names.get(o, []) if isinstance(
            self.metric_names, dict) else self.metric_names)] for o in outputs]
        self.optimizer = make_optimizer(compile_def.optimizer, engine.variable_offsets, engine.dtype)
        self.rng = np.random.default_rng(seed)  # shuffling
        self.dropout_rng = np.random.default_rng(None if seed is None else seed + 1)
        self.stop_training = False
        self.interrupt_requested = False
        self.run_dir: str | None = None
        self.loop_state: dict = {"epoch": 0, "step": 0}
        self.progress = Progress(0)
        # Which outputs fuse their activation into the loss (softmax + cross-entropy, sigmoid + BCE).
        self.fused = []
        for name, loss in zip(engine.output_names, self.losses):
            step = next(s for s in engine.steps if s.name == name)
            self.fused.append(loss.fuses_with if loss.fuses_with == step.layer.output_activation() else None)
        # An MLP trains with one jitted call per step (train/fused.py); allow_fused=False forces the general
        # path. fit() decides, since the API may still swap a loss after construction.
        self.chain = DenseChain.of(engine)
        self.allow_fused = True
        self.fused_step = None
        self._batch_buffers: dict[tuple, np.ndarray] = {}

    # --- the interface callbacks use ----------------------------------------------------------------

    def log(self, text: str) -> None:
        self.progress.message(text)

    def get_weights(self) -> list[np.ndarray]:
        return self.engine.get_weights()

    def set_weights(self, weights) -> None:
        self.engine.set_weights(weights)

    def save_weights(self, path: str) -> None:
        from .run import save_weights

        save_weights(path, self.engine)

    @property
    def learning_rate(self) -> float:
        return self.optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self.optimizer.learning_rate = value

    # --- metrics ------------------------------------------------------------------------------------

    def _make_metrics(self, y: list[np.ndarray]) -> list[list[M.Metric]]:
        out = []
        for k, name in enumerate(self.output_names):
            shape = self.engine.graph.node(name).output_shape
            sparse = y[k].ndim < len(shape) + 1 or (y[k].shape[-1] == 1 and shape[-1] != 1)
            made = []
            for what, label, weighted in self.metric_specs[k]:
                m = M.FunctionMetric(what, label) if callable(what) else M.resolve(what, shape, sparse)
                if label is not None:
                    m.name = label
                m.weighted = weighted
                made.append(m)
            out.append(made)
        return out

    def _metric_logs(self, metrics: list[list[M.Metric]], prefix: str = "") -> dict:
        """Keras 3's names: `metrics` first, then `weighted_metrics`, a weighted one renamed `weighted_<name>`
        when an unweighted metric has its name; `<output>_` before each with several outputs."""
        logs = {}
        multi = len(self.output_names) > 1
        for weighted in (False, True):
            for name, ms in zip(self.output_names, metrics):
                for m in ms:
                    if m.weighted != weighted:
                        continue
                    key = f"{name}_{m.name}" if multi else m.name
                    if weighted and f"{prefix}{key}" in logs:
                        key = f"{name}_weighted_{m.name}" if multi else f"weighted_{m.name}"
                    logs[f"{prefix}{key}"] = m.result()
        return logs

    def _update_metrics(self, metrics, yb, preds, sws) -> None:
        for k, ms in enumerate(metrics):
            w = None if sws[k] is None else sws[k].reshape(len(preds[k]), -1).mean(axis=1)
            for m in ms:
                m.update(yb[k], preds[k], w if m.weighted else None)

    # --- the data -----------------------------------------------------------------------------------

    def check_data(self, x, y, where: str = "") -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """(x, y, number of samples) with x checked against the model's inputs and y against its outputs and
        losses (sparse labels come back as int64), before any of it reaches a kernel. `where` prefixes the
        names in the errors ("validation_data ")."""
        x = checked_inputs(self.engine, x, f"{where}x")
        y = _as_list(y)
        if len(y) != len(self.output_names):
            raise ValueError(f"{where}y: model '{self.engine.graph.name}' has {len(self.output_names)} output(s) "
                             f"({', '.join(self.output_names)}), but it received {len(y)} target arrays")
        targets = []
        for k, (a, output, loss) in enumerate(zip(y, self.output_names, self.losses)):
            name = _array_name(f"{where}y", self.output_names, k)
            a = checks.numeric_array(name, a)
            checks.check_batch_axis(name, a)
            shape = self.engine.graph.node(output).output_shape
            targets.append(checks.check_targets(name, a, shape, loss.name, output))
        input_names = [node.name for node in self.engine.graph.inputs]
        n = checks.check_cardinality(
            {**{_array_name(f"{where}x", input_names, k): a for k, a in enumerate(x)},
             **{_array_name(f"{where}y", self.output_names, k): a for k, a in enumerate(targets)}})
        return x, targets, n

    # --- one step -----------------------------------------------------------------------------------

    def _losses(self, xb, yb, sw, training: bool) -> tuple[list[float], list[np.ndarray], list[np.ndarray]]:
        """Forward, then each output's loss value and gradient (w.r.t. its pre-activation when fused)."""
        if not training and self.chain is not None and self.allow_fused:
            preds = [self.chain.predict(xb[0])]
        else:
            preds = self.engine.forward(xb, training=training, rng=self.dropout_rng, reuse=True)
        values, grads = [], []
        workspace = self.engine.workspace
        with workspace.active():  # the losses' gradient arrays are reused from step to step too
            for k, (loss, fused) in enumerate(zip(self.losses, self.fused)):
                workspace.owner = f"loss {k}"
                w = sw[k] if isinstance(sw, list) else sw  # per output, or one array for all
                if fused and training:
                    value, grad = loss.fused(fused, yb[k], self.engine.pre_activation(k), w)
                else:
                    value, grad = loss(yb[k], preds[k], w)
                if self.loss_weights[k] != 1.0:
                    grad *= self.loss_weights[k]
                values.append(value)
                grads.append(grad)
        return values, grads, preds

    def batch_losses(self, xb, yb, sw, training: bool) -> tuple[list[float], list[np.ndarray], list[np.ndarray]]:
        """One batch's forward pass and losses: (loss values, their gradients w.r.t. the outputs, outputs)."""
        return self._losses(xb, yb, sw, training)

    @property
    def parallel(self):
        """This trainer's share of a data-parallel run (specc.distributed) once init() joined an MPI world
        of more than one process, else None."""
        from ..distributed import attached

        return attached(self)

    def compute_gradients(self, xb, yb, sw) -> tuple[list[float], list[np.ndarray]]:
        """One batch forward and backward, `engine.grads` filled: (the loss values, the outputs)."""
        if self.fused_step is not None:
            value, pred = self.fused_step(xb[0], yb[0], sw[0] if isinstance(sw, list) else sw)
            return [value], [pred]
        values, grads, preds = self._losses(xb, yb, sw, training=True)
        self.engine.backward(grads, pre_activation=[f is not None for f in self.fused], reuse=True)
        return values, preds

    def train_step(self, xb, yb, sw) -> tuple[float, list[float], list[np.ndarray]]:
        parallel, grads = self.parallel, self.engine.grads
        if parallel is None:
            values, preds = self.compute_gradients(xb, yb, sw)
        else:  # this rank's rows of the batch; the gradients (and losses, outputs) of all the batch's rows
            values, preds, grads = parallel.step(self, xb, yb, sw)
        self.optimizer.step(self.engine.params[: self.engine.n_trainable], grads)
        total = sum(w * v for w, v in zip(self.loss_weights, values))
        return total, values, preds

    # --- fit / evaluate / predict -------------------------------------------------------------------

    def sample_weights(self, sample_weight, n: int, where: str = "") -> list[np.ndarray | None]:
        """Keras's `sample_weight` per output: one array for every output, or a list / dict by output name."""
        name = f"{where}sample_weight"
        if sample_weight is None:
            return [None] * len(self.output_names)
        if isinstance(sample_weight, dict):
            unknown = [k for k in sample_weight if k not in self.output_names]
            if unknown:
                raise ValueError(f"{name} names {unknown[0]!r}, which is not a model output; outputs: "
                                 f"{', '.join(self.output_names)}")
            items = [sample_weight.get(o) for o in self.output_names]
        elif isinstance(sample_weight, (list, tuple)) and len(self.output_names) > 1:
            if len(sample_weight) != len(self.output_names):
                raise ValueError(f"{name} is a list of {len(sample_weight)} arrays for a model with "
                                 f"{len(self.output_names)} outputs ({', '.join(self.output_names)})")
            items = list(sample_weight)
        else:
            items = [sample_weight] * len(self.output_names)
        return [None if w is None else checks.check_sample_weight(_array_name(name, self.output_names, k), w, n)
                for k, w in enumerate(items)]

    def _prepare_fused(self, y: list[np.ndarray]) -> list[np.ndarray]:
        """Use the one-call MLP step when it computes exactly this loss; y cast for it once."""
        self.fused_step = None
        if self.allow_fused and self.chain is not None and len(self.losses) == 1 and self.loss_weights == [1.0] \
                and isinstance(self.losses[0], type(get_loss("mse"))) and self.losses[0].plain:
            self.fused_step = self.chain.trainer(self.losses[0], self.fused[0])
        if self.fused_step is not None:
            return [self.fused_step.targets(y[0])]
        return y

    def _check_trainable_losses(self) -> None:
        for name, loss in zip(self.output_names, self.losses):
            if getattr(loss, "reduction", None) == "none":
                raise ValueError(f"the loss of output '{name}' has reduction='none': it gives one value per sample, "
                                 f"and training needs one number to minimise. Use reduction='sum_over_batch_size' "
                                 f"(the default) or 'sum'")

    def fit(self, x, y, batch_size: int | None = None, epochs: int = 1, validation_split: float = 0.0,
            validation_data=None, shuffle: bool = True, class_weight: dict | None = None,
            callbacks: list[Callback] | None = None, verbose="auto", initial_epoch: int = 0,
            history: History | None = None, resume: dict | None = None,
            validation_batch_size: int | None = None, sample_weight=None, steps_per_epoch: int | None = None,
            validation_steps: int | None = None, validation_freq=1) -> History:
        """Keras's fit. `resume` (a `loop_state` saved at an interruption) continues mid-epoch.

        Every array is checked (check_data) before anything runs; so are the counts. `sample_weight` and
        `class_weight` both given multiply (tf.keras's rule; Keras 3 refuses the pair). With
        `steps_per_epoch`, epochs draw batches from one pass over the data after another: an epoch ends after
        that many steps, or early where a pass ends (Keras's "ran out of data"), the next starting a new pass."""
        batch_size = checks.check_positive_int("batch_size", DEFAULT_BATCH_SIZE if batch_size is None else batch_size)
        validation_batch_size = checks.check_positive_int("validation_batch_size", validation_batch_size or batch_size)
        epochs = checks.check_non_negative_int("epochs", epochs)
        initial_epoch = checks.check_non_negative_int("initial_epoch", initial_epoch)
        if steps_per_epoch is not None:
            steps_per_epoch = checks.check_positive_int("steps_per_epoch", steps_per_epoch)
        if validation_steps is not None:
            validation_steps = checks.check_positive_int("validation_steps", validation_steps)
        _check_validation_freq(validation_freq)
        if not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
        self._check_trainable_losses()
        x, y, n = self.check_data(x, y)
        checks.check_non_empty(n, "x")
        sws = self.sample_weights(sample_weight, n)
        val_sws = [None] * len(self.output_names)
        if validation_data is not None:
            vx, vy, n_val = self.check_data(*validation_data[:2], where="validation_data ")
            checks.check_non_empty(n_val, "validation_data")
            if len(validation_data) > 2:
                val_sws = self.sample_weights(validation_data[2], n_val, "validation_data ")
            validation_data = (vx, vy)
        elif validation_split > 0:
            # Keras takes the validation part from the end, before any shuffling.
            split = int(n * (1 - validation_split))
            if split in (0, n):
                raise ValueError(f"Training data contains {n} samples, which is not sufficient to split it into a "
                                 f"validation and training set as specified by `validation_split={validation_split}`. "
                                 f"Either provide more data, or a different value for the `validation_split` argument.")
            validation_data = ([a[split:] for a in x], [a[split:] for a in y])
            val_sws = [None if w is None else w[split:] for w in sws]
            x, y, n = [a[:split] for a in x], [a[:split] for a in y], split
            sws = [None if w is None else w[:split] for w in sws]
        n_batches = math.ceil(n / batch_size)
        if resume is not None:
            if steps_per_epoch is not None:
                raise ValueError("a mid-epoch resume needs whole passes over the data (no steps_per_epoch)")
            _check_resume(resume, n, n_batches)
        # Cast once rather than per batch (no copy when the arrays already have the model's dtype).
        x = [np.ascontiguousarray(a, self.engine.dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else a
             for a in x]
        y = self._prepare_fused(y)  # the same shapes: metrics read these targets too
        callbacks = callbacks or []
        for cb in callbacks:
            cb.trainer = self
        self.progress = Progress(verbose)
        if self.parallel is not None:
            self.parallel.begin(self)  # rank 0's weights and batch order everywhere; ranks > 0 print nothing
        history = history or History()
        steps = steps_per_epoch or n_batches
        self.stop_training = False
        self.resume_epoch = None
        for cb in callbacks:
            cb.on_train_begin({})
        if self.resume_epoch is not None:  # a callback restored a backup (BackupAndRestore)
            initial_epoch = self.resume_epoch
        stream = {"order": None, "seen": 0}  # the current pass over the data, across epochs
        warned = False
        logs: dict = {}
        for epoch in range(initial_epoch, epochs):
            metrics = self._make_metrics(y)
            if resume is not None and resume["epoch"] == epoch:  # continue an interrupted epoch exactly
                stream["order"], stream["seen"] = np.asarray(resume["order"]), resume["step"]
                total_sum, out_sums, seen = resume["total_sum"], list(resume["out_sums"]), resume["seen"]
                for ms, states in zip(metrics, resume["metrics"]):
                    for m, state in zip(ms, states):
                        m.load_state(state)
                logs = self._epoch_logs(total_sum / max(seen, 1), [v / max(seen, 1) for v in out_sums], metrics)
            else:
                if stream["order"] is None or steps_per_epoch is None:
                    stream["order"] = self.rng.permutation(n) if shuffle else np.arange(n)
                    stream["seen"] = 0
                total_sum, out_sums, seen = 0.0, [0.0] * len(self.losses), 0
            order = stream["order"]
            self.progress.epoch_begin(epoch, epochs, steps)
            for cb in callbacks:
                cb.on_epoch_begin(epoch, {})
            with self.engine.held_threads():  # the thread limits once per epoch, not per pass
                for step in range(stream["seen"] if steps_per_epoch is None else 0, steps):
                    if stream["seen"] >= n_batches:
                        if not warned:
                            warnings.warn(f"Your input ran out of data: steps_per_epoch={steps_per_epoch} asks for more "
                                          f"batches than one pass over {n} samples gives ({n_batches} batches of "
                                          f"{batch_size}), so this epoch ends early and the next starts a new pass, "
                                          f"as in Keras", UserWarning, stacklevel=3)
                            warned = True
                        break
                    b0 = stream["seen"] * batch_size
                    stream["seen"] += 1
                    for cb in callbacks:
                        cb.on_train_batch_begin(step, {})
                    if shuffle:
                        idx = order[b0: b0 + batch_size]
                        xb, yb = self._gather(x, idx, "x"), self._gather(y, idx, "y")
                        swb = [None if w is None else w[idx] for w in sws]
                    else:  # batches in order are views: no copy
                        xb = [a[b0: b0 + batch_size] for a in x]
                        yb = [a[b0: b0 + batch_size] for a in y]
                        swb = [None if w is None else w[b0: b0 + batch_size] for w in sws]
                    swb = _combine_weights(swb, class_weight, yb[0])
                    total, values, preds = self.train_step(xb, yb, swb)
                    if not np.isfinite(total):
                        raise Diverged(epoch, step + 1, total)
                    b = len(xb[0])
                    total_sum += total * b
                    out_sums = [s + v * b for s, v in zip(out_sums, values)]
                    seen += b
                    self._update_metrics(metrics, yb, preds, swb)
                    logs = self._epoch_logs(total_sum / seen, [s / seen for s in out_sums], metrics)
                    self.progress.step(step + 1, logs)
                    for cb in callbacks:
                        cb.on_train_batch_end(step, dict(logs))
                    if self.stop_training:
                        break
                    if self.interrupt_requested and stream["seen"] < n_batches and steps_per_epoch is None:
                        # Everything needed to continue this epoch from the next step.
                        self.loop_state = {"epoch": epoch, "step": stream["seen"], "order": order.tolist(),
                                           "total_sum": total_sum, "out_sums": out_sums, "seen": seen,
                                           "metrics": [[m.state() for m in ms] for ms in metrics]}
                        raise Interrupted()
            if steps_per_epoch is not None and stream["seen"] >= n_batches:
                stream["order"] = None  # the pass is used up: the next epoch starts a new one
            logs = dict(logs)
            if validation_data is not None and _should_validate(epoch, validation_freq):
                val_logs = self._evaluate(*validation_data, batch_size=validation_batch_size, sws=val_sws,
                                          steps=validation_steps, callbacks=callbacks)
                logs.update({f"val_{k}": v for k, v in val_logs.items()})
            self.progress.epoch_end(logs)
            for cb in callbacks:
                cb.on_epoch_end(epoch, logs)
            history.append(epoch, logs)
            self.loop_state = {"epoch": epoch + 1, "step": 0}
            self.epoch_done(epoch, history)
            if self.stop_training:
                break
            if self.interrupt_requested:
                raise Interrupted()
        for cb in callbacks:
            cb.on_train_end(dict(logs))
        return history

    def _gather(self, arrays: list[np.ndarray], idx: np.ndarray, role: str) -> list[np.ndarray]:
        """The rows `idx` of each array, copied into a buffer kept per batch size (no allocation per step).
        A buffer is overwritten by the next step's batch: nothing may keep it past the step."""
        out = []
        for k, a in enumerate(arrays):
            a = np.asarray(a)
            key = (role, k, len(idx), a.shape[1:], a.dtype.str)
            buf = self._batch_buffers.get(key)
            if buf is None:
                buf = self._batch_buffers[key] = np.empty((len(idx),) + a.shape[1:], a.dtype)
            np.take(a, idx, axis=0, out=buf, mode="clip")  # the default mode="raise" copies through a temporary
            out.append(buf)
        return out

    def epoch_done(self, epoch: int, history: History) -> None:
        """Hook for the run directory (checkpoint after each epoch); nothing by default."""

    def _epoch_logs(self, total: float, per_output: list[float], metrics) -> dict:
        logs = {"loss": total}
        if len(self.output_names) > 1:
            logs.update({f"{name}_loss": v for name, v in zip(self.output_names, per_output)})
        logs.update(self._metric_logs(metrics))
        return logs

    # --- one batch (Keras's train_on_batch / test_on_batch) -------------------------------------------

    def train_on_batch(self, x, y, sample_weight=None, class_weight: dict | None = None) -> dict:
        """One optimizer step on exactly these samples; the logs of this batch: the loss at the weights
        before the step (as Keras computes it) and the metrics on its predictions."""
        self._check_trainable_losses()
        x, y, n = self.check_data(x, y)
        checks.check_non_empty(n, "x")
        sws = _combine_weights(self.sample_weights(sample_weight, n), class_weight, y[0])
        x = [np.ascontiguousarray(a, self.engine.dtype) if np.issubdtype(a.dtype, np.floating) else a for a in x]
        metrics = self._make_metrics(y)
        total, values, preds = self.train_step(x, self._prepare_fused(y), sws)
        self._update_metrics(metrics, y, preds, sws)
        return self._epoch_logs(total, values, metrics)

    def test_on_batch(self, x, y, sample_weight=None) -> dict:
        x, y, n = self.check_data(x, y)
        checks.check_non_empty(n, "x")
        return self._evaluate(x, y, max(n, 1), self.sample_weights(sample_weight, n))

    def evaluate(self, x, y, batch_size: int | None = None, sample_weight=None, steps: int | None = None,
                 callbacks: list[Callback] | None = None, verbose=0) -> dict:
        """Loss and metrics over x and y (checked first; no samples give zeros); `steps` batches at most."""
        batch_size = checks.check_positive_int("batch_size", DEFAULT_BATCH_SIZE if batch_size is None else batch_size)
        if steps is not None:
            steps = checks.check_positive_int("steps", steps)
        x, y, n = self.check_data(x, y)
        sws = self.sample_weights(sample_weight, n)
        for cb in callbacks or []:
            cb.trainer = self
        return self._evaluate(x, y, batch_size, sws, steps, callbacks, Progress(verbose))

    def _evaluate(self, x, y, batch_size: int, sws=None, steps: int | None = None, callbacks=None,
                  progress: Progress | None = None) -> dict:
        if self.parallel is not None and not any(w is not None for w in sws or []) and steps is None:
            # each rank a share of the samples, the results reduced (weighted or capped evaluations run whole
            # on every rank: the same numbers, not shared out)
            return self.parallel.evaluate(self, x, y, batch_size)
        n = len(x[0])
        sws = sws or [None] * len(self.output_names)
        metrics = self._make_metrics(y)
        total_sum, out_sums, seen = 0.0, [0.0] * len(self.losses), 0
        n_steps = min(math.ceil(n / batch_size), steps or math.inf)
        callbacks = callbacks or []
        logs: dict = self._epoch_logs(0.0, out_sums, metrics)
        if progress is not None:
            progress.begin(n_steps)
        for cb in callbacks:
            cb.on_test_begin({})
        with self.engine.held_threads():
            for step in range(n_steps):
                start = step * batch_size
                for cb in callbacks:
                    cb.on_test_batch_begin(step, {})
                xb, yb = [a[start: start + batch_size] for a in x], [a[start: start + batch_size] for a in y]
                swb = [None if w is None else w[start: start + batch_size] for w in sws]
                values, _, preds = self._losses(xb, yb, swb, training=False)
                b = len(xb[0])
                seen += b
                total_sum += sum(w * v for w, v in zip(self.loss_weights, values)) * b
                out_sums = [s + v * b for s, v in zip(out_sums, values)]
                self._update_metrics(metrics, yb, preds, swb)
                logs = self._epoch_logs(total_sum / seen, [s / seen for s in out_sums], metrics)
                if progress is not None:
                    progress.step(step + 1, logs)
                for cb in callbacks:
                    cb.on_test_batch_end(step, dict(logs))
        if progress is not None:
            progress.end(logs)
        for cb in callbacks:
            cb.on_test_end(dict(logs))
        return logs

    def predict(self, x, batch_size: int | None = None) -> list[np.ndarray]:
        return self.predict_with(self.engine, x, batch_size)

    @staticmethod
    def predict_with(engine: Engine, x, batch_size: int | None = None, steps: int | None = None,
                     callbacks: list[Callback] | None = None, verbose=0) -> list[np.ndarray]:
        """Inference in batches (`steps` batches at most); needs no loss or optimizer. x is checked first;
        no samples give empty outputs (sizes unknown until run time are 0). Callbacks get Keras's
        on_predict_* calls, each batch's outputs in `logs["outputs"]`."""
        batch_size = checks.check_positive_int("batch_size", DEFAULT_BATCH_SIZE if batch_size is None else batch_size)
        if steps is not None:
            steps = checks.check_positive_int("steps", steps)
        x = checked_inputs(engine, x)
        input_names = [node.name for node in engine.graph.inputs]
        n = checks.check_cardinality({_array_name("x", input_names, k): a for k, a in enumerate(x)})
        if n == 0:
            return [np.zeros((0, *(d or 0 for d in engine.graph.node(name).output_shape)), engine.dtype)
                    for name in engine.graph.outputs]
        n_steps = min(math.ceil(n / batch_size), steps or math.inf)
        n = min(n, n_steps * batch_size)
        callbacks = callbacks or []
        progress = Progress(verbose)
        progress.begin(n_steps)
        for cb in callbacks:
            cb.on_predict_begin({})
        chain = DenseChain.cached(engine)
        # a convolutional network: BatchNormalization folded, epilogues fused, buffers reused (specc/infer.py)
        plan = InferencePlan.cached(engine) if chain is None else None
        if plan is not None:
            plan.refresh()
        # the weights' copies per thread stay current through the loop unless a callback could change them
        replicated = chain is not None and not callbacks
        if replicated:
            chain.replicate()
        parts: list[list[np.ndarray]] = [[] for _ in engine.output_names]
        out = np.empty((n, chain.units_out), engine.dtype) if chain is not None else None
        with engine.held_threads():
            for step in range(n_steps):
                start = step * batch_size
                for cb in callbacks:
                    cb.on_predict_batch_begin(step, {})
                if chain is not None:  # one jitted call per batch, written straight into the result
                    chain.predict(x[0][start: start + batch_size], out[start: start + batch_size], replicated=replicated)
                    outs = [out[start: start + batch_size]]
                else:
                    batch = [a[start: start + batch_size] for a in x]
                    # Copied at once: full batches run on the workspace's arrays (reuse=True), which serve the
                    # next batch too; a last, smaller batch allocates its own rather than keep a set per size.
                    outs = [o.copy() for o in (plan.predict(batch) if plan is not None else
                                               engine.forward(batch, training=False,
                                                              reuse=len(batch[0]) == batch_size))]
                    for k, o in enumerate(outs):
                        parts[k].append(o)
                progress.step(step + 1, {})
                for cb in callbacks:
                    cb.on_predict_batch_end(step, {"outputs": outs[0] if len(outs) == 1 else list(outs)})
        progress.end({})
        for cb in callbacks:
            cb.on_predict_end({})
        return [out] if chain is not None else [np.concatenate(p) for p in parts]


def _check_validation_freq(freq) -> None:
    """Keras: a positive integer (validate every `freq` epochs) or a list of the (1-based) epochs to validate."""
    if isinstance(freq, (list, tuple)):
        for e in freq:
            checks.check_positive_int("validation_freq entries", e)
        return
    if isinstance(freq, bool) or not isinstance(freq, (int, np.integer)) or freq < 1:
        raise ValueError(f"Expected `validation_freq` to be a positive integer or a list of epochs. Received: "
                         f"validation_freq={freq!r} of the type {type(freq).__name__}.")


def _should_validate(epoch: int, freq) -> bool:
    epoch += 1  # Keras counts the epochs from 1 here
    return epoch in freq if isinstance(freq, (list, tuple)) else epoch % freq == 0


def _combine_weights(sws: list, class_weight: dict | None, y0: np.ndarray) -> list:
    """The weights of a batch: sample weights times the class weights of the first output's labels."""
    if not class_weight:
        return sws
    cw = _class_weights(class_weight, y0)
    return [cw if w is None else w * cw.reshape((-1,) + (1,) * (w.ndim - 1)) for w in sws]


def _check_resume(resume: dict, n: int, steps: int) -> None:
    """A mid-epoch checkpoint must fit the data: its sample order a permutation of the n samples (the
    batches are gathered by these indices) and its next step inside the epoch."""
    order = np.asarray(resume.get("order", ()))
    if order.shape != (n,) or order.dtype.kind not in "iu" or not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError(f"the checkpoint's sample order covers {order.size} samples, but the training data has {n}: "
                         f"the data changed since the run was interrupted")
    if not 0 <= int(resume.get("step", 0)) < steps:
        raise ValueError(f"the checkpoint continues at step {resume.get('step')} of an epoch of {steps} steps: the "
                         f"data or batch size changed since the run was interrupted")


def _class_weights(class_weight: dict, y: np.ndarray) -> np.ndarray:
    labels = np.argmax(y, axis=-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(len(y), -1)[:, 0]
    labels = labels.astype(np.int64)
    return np.array([class_weight.get(int(c), 1.0) for c in labels], np.float64)
