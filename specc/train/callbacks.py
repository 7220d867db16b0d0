"""Callbacks with Keras 3's semantics: EarlyStopping, ReduceLROnPlateau, ModelCheckpoint, CSVLogger,
TerminateOnNaN (each built from its validated spec entry, specc.spec.schema), LearningRateScheduler,
BackupAndRestore and History. They see the trainer through a small interface: `get_weights()`,
`set_weights()`, `learning_rate`, `stop_training`, `optimizer`, `engine`, and `run_dir` for files.
"""

from __future__ import annotations

import math
import os

import numpy as np

_MAX_HINTS = ("acc", "auc", "precision", "recall", "f1")


def _mode(mode: str, monitor: str) -> str:
    """Keras's 'auto': maximise accuracy-like metrics, minimise losses and errors."""
    if mode != "auto":
        return mode
    return "max" if any(h in monitor for h in _MAX_HINTS) else "min"


class Callback:
    """Keras 3's callback hooks, each called with Keras's `logs` (a dict: {} where Keras passes no values,
    the running loss and metrics after a batch, the epoch's after an epoch, {"outputs": ...} after a
    prediction batch). `on_batch_end` is the older name of `on_train_batch_end`, as in Keras."""

    trainer = None

    def on_train_begin(self, logs: dict | None = None) -> None: ...

    def on_train_end(self, logs: dict | None = None) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None: ...

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch_end(batch, logs)

    def on_test_begin(self, logs: dict | None = None) -> None: ...

    def on_test_end(self, logs: dict | None = None) -> None: ...

    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None: ...

    def on_predict_begin(self, logs: dict | None = None) -> None: ...

    def on_predict_end(self, logs: dict | None = None) -> None: ...

    def on_predict_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...

    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None: ...

    def state(self) -> dict:
        """What a resumed run needs to continue exactly (JSON-serialisable)."""
        return {}

    def load_state(self, state: dict) -> None: ...


class History(Callback):
    """Keras's History: `history[name]` is the list of per-epoch values, `epoch` the epochs trained. fit()
    fills the one it returns; one given as a callback records through on_epoch_end, as Keras's does."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.params: dict = {}
        self.model = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.epoch = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.append(epoch, logs or {})
        if self.model is not None:
            self.model.history = self

    def append(self, epoch: int, logs: dict) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))


class _Monitoring(Callback):
    def __init__(self, monitor: str, mode: str, min_delta: float):
        self.monitor = monitor
        self.mode = _mode(mode, monitor)
        self.min_delta = abs(min_delta)
        self.best = math.inf if self.mode == "min" else -math.inf

    def improved(self, current: float) -> bool:
        if self.mode == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta

    def current(self, logs: dict) -> float | None:
        value = logs.get(self.monitor)
        return None if value is None else float(value)


class EarlyStopping(_Monitoring):
    def __init__(self, cfg):
        super().__init__(cfg.monitor, cfg.mode, cfg.min_delta)
        self.patience, self.baseline = cfg.patience, cfg.baseline
        self.restore_best_weights, self.start_from_epoch = cfg.restore_best_weights, cfg.start_from_epoch
        self.wait, self.best_weights, self.best_epoch, self.stopped_epoch = 0, None, 0, None

    def on_epoch_end(self, epoch, logs):
        current = self.current(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.trainer.get_weights()  # Keras keeps the first epoch as a fallback
        self.wait += 1
        if self.improved(current):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.trainer.get_weights()
            if self.baseline is None or self.improved_over_baseline(current):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True
            self.trainer.log(f"Epoch {epoch + 1}: early stopping ({self.monitor} did not improve for "
                             f"{self.patience} epochs; best {self.best:.4g} at epoch {self.best_epoch + 1})")

    def improved_over_baseline(self, current):
        return current < self.baseline if self.mode == "min" else current > self.baseline

    def on_train_end(self, logs=None):
        # Keras 3 restores the best weights at the end of training, whether or not it stopped early.
        if self.restore_best_weights and self.best_weights is not None:
            self.trainer.set_weights(self.best_weights)
            self.trainer.log(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")

    def state(self):
        return {"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def load_state(self, state):
        self.wait, self.best, self.best_epoch = state["wait"], state["best"], state["best_epoch"]
        self.stopped_epoch, self.best_weights = state.get("stopped_epoch"), state.get("best_weights")


class ReduceLROnPlateau(_Monitoring):
    def __init__(self, cfg):
        super().__init__(cfg.monitor, cfg.mode, cfg.min_delta)
        self.factor, self.patience, self.cooldown, self.min_lr = cfg.factor, cfg.patience, cfg.cooldown, cfg.min_lr
        self.wait, self.cooldown_counter = 0, 0

    def on_epoch_end(self, epoch, logs):
        current = self.current(logs)
        logs["learning_rate"] = float(self.trainer.learning_rate)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.improved(current):
            self.best, self.wait = current, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = float(self.trainer.learning_rate)
                if old > self.min_lr:
                    new = max(old * self.factor, self.min_lr)
                    self.trainer.learning_rate = new
                    self.trainer.log(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new:.4g}.")
                    self.cooldown_counter, self.wait = self.cooldown, 0

    def state(self):
        return {"wait": self.wait, "best": self.best, "cooldown_counter": self.cooldown_counter}

    def load_state(self, state):
        self.wait, self.best, self.cooldown_counter = state["wait"], state["best"], state["cooldown_counter"]


class ModelCheckpoint(_Monitoring):
    """Saves weights (.npz) into the run directory: every epoch, or only when `monitor` improves."""

    def __init__(self, cfg):
        super().__init__(cfg.monitor, cfg.mode, 0.0)
        self.save_best_only = cfg.save_best_only
        self.filepath = cfg.filepath or ("checkpoints/best.npz" if cfg.save_best_only
                                         else "checkpoints/epoch_{epoch:03d}.npz")

    def on_epoch_end(self, epoch, logs):
        if self.trainer.run_dir is None:
            return
        if self.save_best_only:
            current = self.current(logs)
            if current is None or not self.improved(current):
                return
            self.best = current
        try:
            name = self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as missing:
            raise ValueError(f"ModelCheckpoint filepath {self.filepath!r} names {missing.args[0]!r}, which this run "
                             f"does not log; it logs: epoch, {', '.join(sorted(logs))}") from None
        self.trainer.save_weights(os.path.join(self.trainer.run_dir, name))

    def state(self):
        return {"best": self.best}

    def load_state(self, state):
        self.best = state["best"]


class CSVLogger(Callback):
    def __init__(self, cfg):
        self.filename, self.separator, self.append = cfg.filename, cfg.separator, cfg.append
        self.rows: list[dict] = []

    def on_epoch_end(self, epoch, logs):
        from .run import atomic_write_text  # lazy: run imports heavy modules

        if self.trainer.run_dir is None:
            return
        self.rows.append({"epoch": epoch, **logs})
        keys = list(dict.fromkeys(k for row in self.rows for k in row))
        lines = [self.separator.join(keys)]
        lines += [self.separator.join(str(row.get(k, "")) for k in keys) for row in self.rows]
        atomic_write_text(os.path.join(self.trainer.run_dir, self.filename), "\n".join(lines) + "\n")

    def state(self):
        return {"rows": self.rows}

    def load_state(self, state):
        self.rows = state["rows"]


class TerminateOnNaN(Callback):
    def on_batch_end(self, step, logs):
        loss = logs.get("loss")
        if loss is not None and not np.isfinite(loss):
            self.trainer.stop_training = True


class LearningRateScheduler(Callback):
    """Keras's LearningRateScheduler: at each epoch's start, `schedule(epoch, learning_rate)` (or
    `schedule(epoch)`) gives the rate for that epoch's steps; the epoch's logs get `learning_rate`."""

    def __init__(self, schedule, verbose: int = 0):
        if not callable(schedule):
            raise TypeError(f"schedule must be a function schedule(epoch, learning_rate) -> float, got "
                            f"{type(schedule).__name__}")
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        lr = float(self.trainer.learning_rate)
        try:
            lr = self.schedule(epoch, lr)
        except TypeError:  # Keras's older form: schedule(epoch)
            lr = self.schedule(epoch)
        if not isinstance(lr, (float, np.floating)):
            raise ValueError(f"The output of the `schedule` function should be a float. Got: {lr!r}")
        self.trainer.learning_rate = float(lr)
        if self.verbose > 0:
            self.trainer.log(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(lr)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.trainer.learning_rate)


class BackupAndRestore(Callback):
    """Keras's BackupAndRestore: the weights, the optimizer's state and the epoch are backed up in
    `backup_dir` after every epoch (or every `save_freq` batches); a fit that finds a backup starts from it
    (the epoch after the last complete one backed up, or the start of the epoch a batch backup was taken
    in), and a fit that completes deletes it (`delete_checkpoint`). Files: `latest.weights.npz` (weights
    keyed `layer/weight`, the optimizer's arrays keyed `optimizer/<name>`) and `training_metadata.json`."""

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint: bool = False, delete_checkpoint: bool = True):
        if not backup_dir:
            raise ValueError("Empty `backup_dir` argument passed")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(f"Invalid value for argument `save_freq`. Received: save_freq={save_freq!r}. Expected "
                             f"either 'epoch' or a positive integer.")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq, self.double_checkpoint, self.delete_checkpoint = save_freq, double_checkpoint, delete_checkpoint
        self.weights_path = os.path.join(self.backup_dir, "latest.weights.npz")
        self.metadata_path = os.path.join(self.backup_dir, "training_metadata.json")
        self._current_epoch = 0
        self._batches = 0

    def on_train_begin(self, logs=None):
        self._batches = 0
        if os.path.exists(self.metadata_path) and os.path.exists(self.weights_path):
            self._restore(self.weights_path, self.metadata_path)
        elif self.double_checkpoint and os.path.exists(self.weights_path + ".bkp") \
                and os.path.exists(self.metadata_path + ".bkp"):
            self._restore(self.weights_path + ".bkp", self.metadata_path + ".bkp")

    def _restore(self, weights_path: str, metadata_path: str) -> None:
        import json

        try:
            with open(metadata_path, encoding="utf-8") as fh:
                epoch = json.load(fh)["epoch"]
            with np.load(weights_path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
            # By position, as Keras matches a weights file to the model's structure (a model rebuilt in a new
            # session has new auto-names).
            weights = [a for k, a in arrays.items() if not k.startswith("optimizer/")]
            own = [w for s in self.trainer.engine.steps for w in s.weights]
            if [w.shape for w in weights] != [w.shape for w in own]:
                raise ValueError("its weights are not this model's (their shapes differ)")
            optimizer = {k[len("optimizer/"):]: arrays[k] for k in arrays if k.startswith("optimizer/")}
            if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
                raise ValueError(f"its epoch is {epoch!r}")
            self.trainer.set_weights(weights)
            self.trainer.optimizer.load_state_arrays(optimizer)
        except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
            raise ValueError(f"BackupAndRestore cannot resume from {self.backup_dir}: {exc}. Delete the directory "
                             f"to start over.") from None
        self.trainer.resume_epoch = epoch
        self._current_epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch":
            self._batches += 1
            if self._batches >= self.save_freq:
                self._batches = 0
                self._save(self._current_epoch)  # a batch backup resumes at the start of its epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch + 1)

    def _save(self, epoch: int) -> None:
        from .run import atomic_write_json, atomic_write_npz, weight_keys

        os.makedirs(self.backup_dir, exist_ok=True)
        if self.double_checkpoint:
            for path in (self.weights_path, self.metadata_path):
                if os.path.exists(path):
                    os.replace(path, path + ".bkp")
        engine = self.trainer.engine
        arrays = dict(zip(weight_keys(engine), [w for s in engine.steps for w in s.weights]))
        arrays.update({f"optimizer/{k}": np.asarray(v) for k, v in self.trainer.optimizer.state_arrays().items()})
        atomic_write_npz(self.weights_path, arrays)
        atomic_write_json(self.metadata_path, {"epoch": epoch, "batch": 0})

    def on_train_end(self, logs=None):
        import shutil

        if self.delete_checkpoint and os.path.isdir(self.backup_dir):
            shutil.rmtree(self.backup_dir)


class TensorBoard(Callback):
    """`log_dir` is relative to the run directory (specc train) or to the working directory (the API)."""

    def __init__(self, cfg):
        self.log_dir = cfg.log_dir
        self.histogram_freq = cfg.histogram_freq
        self.write_graph = cfg.write_graph
        self.update_freq = cfg.update_freq  # "epoch", "batch" or every N batches
        self.writers: dict = {}
        self.batches = 0  # batches trained so far, over epochs: the x axis of batch_* scalars
        _tensorboard_writer()  # a missing writer is an error before training starts, not after an epoch

    def _directory(self) -> str:
        run_dir = getattr(self.trainer, "run_dir", None)
        return os.path.join(run_dir, self.log_dir) if run_dir and not os.path.isabs(self.log_dir) else self.log_dir

    def _writer(self, part: str):
        if part not in self.writers:
            self.writers[part] = _tensorboard_writer()(os.path.join(self._directory(), part))
        return self.writers[part]

    def on_train_begin(self, logs=None) -> None:
        if self.write_graph:
            from ..summary import summary_text

            graph = self.trainer.engine.graph
            # Markdown renders a table's box-drawing lines as text only inside a code block.
            text = "    " + summary_text(graph).replace("\n", "\n    ")
            self._writer("train").add_text("model_summary", text, 0)

    def on_batch_end(self, step, logs=None) -> None:
        self.batches += 1
        every = 1 if self.update_freq == "batch" else self.update_freq
        if every == "epoch" or self.batches % every:
            return
        writer = self._writer("train")
        for key, value in (logs or {}).items():
            writer.add_scalar(f"batch_{key}", float(value), self.batches)
        writer.add_scalar("batch_learning_rate", float(self.trainer.learning_rate), self.batches)

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs or {}
        train, val = self._writer("train"), None
        for key, value in logs.items():
            if key.startswith("val_"):
                val = val or self._writer("validation")
                val.add_scalar(f"epoch_{key[4:]}", float(value), epoch)
            else:
                train.add_scalar(f"epoch_{key}", float(value), epoch)
        train.add_scalar("epoch_learning_rate", float(self.trainer.learning_rate), epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            engine = self.trainer.engine
            for s in engine.steps:
                for spec, w in zip(s.specs, s.weights):
                    train.add_histogram(f"{s.name}/{spec.name}", w.ravel(), epoch)
        for writer in self.writers.values():
            writer.flush()

    def on_train_end(self, logs=None) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}

    def state(self) -> dict:
        return {"batches": self.batches}

    def load_state(self, state: dict) -> None:
        self.batches = int(state.get("batches", 0))


def _tensorboard_writer():
    from .tensorboard import writer_class

    return writer_class()


BY_TYPE = {c.__name__: c for c in (EarlyStopping, ReduceLROnPlateau, ModelCheckpoint, CSVLogger, TerminateOnNaN,
                                   TensorBoard)}


def build(cfg) -> Callback:
    cls = BY_TYPE[cfg.type]
    return cls() if cls is TerminateOnNaN else cls(cfg)
