"""The TensorBoard callback: scalars (losses, metrics, learning rate) per epoch and optionally per batch,
weight histograms every `histogram_freq` epochs, and the model summary as text, in event files TensorBoard
reads. The writer is tensorboardX (no TensorFlow), an optional extra: `pip install "specc[tensorboard]"`.

Keras's layout is kept: `<log_dir>/train` holds the training scalars (`epoch_loss`, `epoch_accuracy`,
`epoch_learning_rate`, `batch_loss`...), `<log_dir>/validation` the validation ones under the same tags, so
TensorBoard draws both on one chart.
"""

from __future__ import annotations

import os

from .callbacks import Callback

INSTALL = 'pip install "specc[tensorboard]"  (or: pip install tensorboardX)'


class MissingWriter(ImportError):
    """tensorboardX is not installed: the message says how to install it."""


def writer_class():
    try:
        from tensorboardX import SummaryWriter
    except ImportError as exc:
        raise MissingWriter(f"the TensorBoard callback writes event files with tensorboardX, which is not "
                            f"installed: {INSTALL}") from exc
    return SummaryWriter


class TensorBoard(Callback):
    """`log_dir` is relative to the run directory (specc train) or to the working directory (the API)."""

    def __init__(self, cfg):
        self.log_dir = cfg.log_dir
        self.histogram_freq = cfg.histogram_freq
        self.write_graph = cfg.write_graph
        self.update_freq = cfg.update_freq  # "epoch", "batch" or every N batches
        self.writers: dict = {}
        self.batches = 0  # batches trained so far, over epochs: the x axis of batch_* scalars
        writer_class()  # a missing writer is an error before training starts, not after an epoch

    def _directory(self) -> str:
        run_dir = getattr(self.trainer, "run_dir", None)
        return os.path.join(run_dir, self.log_dir) if run_dir and not os.path.isabs(self.log_dir) else self.log_dir

    def _writer(self, part: str):
        if part not in self.writers:
            self.writers[part] = writer_class()(os.path.join(self._directory(), part))
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
