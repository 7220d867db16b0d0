"""Callbacks with Keras 3's semantics: EarlyStopping, ReduceLROnPlateau, ModelCheckpoint, CSVLogger,
TerminateOnNaN. Each is built from its validated spec entry (specc.spec.schema) and sees the trainer
through a small interface: `get_weights()`, `set_weights()`, `learning_rate`, `stop_training`, and
`run_dir` for files.
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
    trainer = None

    def on_train_begin(self) -> None: ...

    def on_batch_end(self, step: int, logs: dict) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def on_train_end(self) -> None: ...

    def state(self) -> dict:
        """What a resumed run needs to continue exactly (JSON-serialisable)."""
        return {}

    def load_state(self, state: dict) -> None: ...


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

    def on_train_end(self):
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


from .tensorboard import TensorBoard  # noqa: E402 - it derives from Callback above

BY_TYPE = {c.__name__: c for c in (EarlyStopping, ReduceLROnPlateau, ModelCheckpoint, CSVLogger, TerminateOnNaN,
                                   TensorBoard)}


def build(cfg) -> Callback:
    cls = BY_TYPE[cfg.type]
    return cls() if cls is TerminateOnNaN else cls(cfg)
