"""The TensorBoard callback's event writer; the callback (train/callbacks.py) writes scalars (losses,
metrics, learning rate) per epoch and optionally per batch, weight histograms every `histogram_freq` epochs,
and the model summary as text, in event files TensorBoard reads. The writer is tensorboardX (no
TensorFlow), an optional extra: `pip install "specc[tensorboard]"`; it is imported only when used.

Keras's layout is kept: `<log_dir>/train` holds the training scalars (`epoch_loss`, `epoch_accuracy`,
`epoch_learning_rate`, `batch_loss`...), `<log_dir>/validation` the validation ones under the same tags, so
TensorBoard draws both on one chart.
"""

from __future__ import annotations

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
