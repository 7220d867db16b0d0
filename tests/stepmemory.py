"""Memory each training step allocates, as tracemalloc sees it (every NumPy array allocation is traced).

    record = StepPeak()
    with record:                       # starts and stops tracemalloc
        trainer.fit(..., callbacks=[record])
    record.peaks                       # one value per step
"""

from __future__ import annotations

import tracemalloc

from specc.train.callbacks import Callback


class StepPeak(Callback):
    """After each step: the most memory held during it beyond what was held when the previous step ended
    (so a buffer made in a step and kept shows up in that step, and transient arrays in theirs)."""

    def __init__(self):
        self.peaks: list[int] = []
        self.base = 0

    def __enter__(self):
        tracemalloc.start()
        self.base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc):
        tracemalloc.stop()

    def on_batch_end(self, step, logs):
        current, peak = tracemalloc.get_traced_memory()
        self.peaks.append(peak - self.base)
        tracemalloc.reset_peak()
        self.base = current
