"""Keras's callbacks for `fit()`: the training loop's own callbacks (specc.train.callbacks) with Keras's
constructors, plus `Callback`, the base for your own (it sees the model as `self.model`).

    specc.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)

Arguments are validated by the spec's callback schemas, so the messages match a YAML `fit.callbacks`.
ModelCheckpoint and CSVLogger write relative to the current directory.
"""

from __future__ import annotations

import os
from typing import Any

from ..spec.schema import CALLBACKS
from ..train import callbacks as C
from .layer import ArgumentError, validate

# Keras's positional order, where people use it.
_POSITIONAL = {"EarlyStopping": ("monitor", "min_delta", "patience"),
               "ReduceLROnPlateau": ("monitor", "factor", "patience"),
               "ModelCheckpoint": ("filepath", "monitor"),
               "CSVLogger": ("filename", "separator", "append"),
               "TensorBoard": ("histogram_freq",)}


class Callback(C.Callback):
    """Base for your own callbacks, with every Keras hook (specc.train.callbacks.Callback): `self.model` is
    the model (`self.model.optimizer.learning_rate`, `self.model.stop_training`), `self.params` Keras's
    {"verbose", "epochs", "steps"}."""

    model = None
    params: dict = {}

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        self.params = params


class LearningRateScheduler(C.LearningRateScheduler, Callback):
    """Keras's LearningRateScheduler(schedule, verbose=0): `schedule(epoch, lr) -> float` at each epoch start."""


class BackupAndRestore(C.BackupAndRestore, Callback):
    """Keras's BackupAndRestore(backup_dir, save_freq="epoch", double_checkpoint=False, delete_checkpoint=True)."""


class History(C.History, Callback):
    """Keras's History: fit() returns one (`history.history`, `history.epoch`, `history.params`) and sets
    `model.history` to it."""


class ProgbarLogger(Callback):
    """Keras's ProgbarLogger: the progress bar fit() shows at `verbose=1` (on by default). Passing one
    shows the same bar, once: fit() then adds none of its own. `count_mode="steps"` only (Keras 3's)."""

    def __init__(self, count_mode: str = "steps", stateful_metrics: Any = None):
        if count_mode != "steps":
            raise ValueError(f"ProgbarLogger counts steps (Keras 3 has no other mode); got count_mode={count_mode!r}")


def _callback_class(name: str) -> type:
    base = C.BY_TYPE[name]
    schema = CALLBACKS[name]
    order = _POSITIONAL.get(name, ())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(order):
            raise ArgumentError(f"{name}() takes at most {len(order)} positional argument(s), got {len(args)}")
        kwargs = {**dict(zip(order, args)), **kwargs}
        kwargs.pop("verbose", None)  # progress messages follow fit()'s verbose
        if kwargs.get("save_weights_only") is not None:
            kwargs.pop("save_weights_only")  # specc checkpoints are weights (.npz)
        if kwargs.get("save_freq", "epoch") == "epoch":
            kwargs.pop("save_freq", None)
        cfg = validate(schema, {"type": name, **kwargs}, name)
        if base is C.TerminateOnNaN:
            base.__init__(self)
        else:
            base.__init__(self, cfg)

    return type(name, (base,), {"__init__": __init__, "__module__": "specc.callbacks", "model": None,
                                "__doc__": f"Keras's {name} callback."})


EarlyStopping = _callback_class("EarlyStopping")
ReduceLROnPlateau = _callback_class("ReduceLROnPlateau")
ModelCheckpoint = _callback_class("ModelCheckpoint")
CSVLogger = _callback_class("CSVLogger")
TerminateOnNaN = _callback_class("TerminateOnNaN")


class TensorBoard(_callback_class("TensorBoard")):
    """Keras's TensorBoard callback: event files under `log_dir` ("logs" by default, as Keras; any path,
    absolute ones included), read by `tensorboard --logdir logs`. Needs tensorboardX."""

    def __init__(self, log_dir: str = "logs", *args: Any, **kwargs: Any) -> None:
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ArgumentError(f"TensorBoard: log_dir must be a folder path, got {log_dir!r}")
        for unsupported in ("write_images", "write_steps_per_second", "profile_batch", "embeddings_freq",
                            "embeddings_metadata"):
            if kwargs.get(unsupported) not in (None, False, 0):
                raise ArgumentError(f"TensorBoard: {unsupported} is not supported by specc (scalars, weight "
                                    f"histograms and the model summary are written)")
            kwargs.pop(unsupported, None)
        super().__init__(*args, **kwargs)
        self.log_dir = os.fspath(log_dir)


__all__ = ["Callback", "EarlyStopping", "ReduceLROnPlateau", "ModelCheckpoint", "CSVLogger", "TerminateOnNaN",
           "TensorBoard", "LearningRateScheduler", "BackupAndRestore", "History", "ProgbarLogger"]
