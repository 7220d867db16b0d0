"""The specc side of bench/run.py: one workload in one fresh process, through the public path a user
takes — the workload's spec -> Engine -> specc.train.fit.Trainer.fit / predict — on the arrays and initial
weights that every framework gets.

    python bench/specc_workloads.py CONFIG.json RESULT.json   (started by bench/run.py)
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(1, os.path.join(os.path.dirname(__file__), ".."))

import _child  # noqa: E402


def main() -> None:
    config, result_path = _child.read_args()
    t0 = time.perf_counter()
    # specc's process settings before NumPy loads, as `specc train` applies them (specc/runtime.py).
    import specc.runtime  # isort: skip

    specc.runtime.prepare_process()
    import numpy as np

    from specc.engine import Engine
    from specc.kernels import configure_threads
    from specc.spec import load_spec
    from specc.train.callbacks import Callback
    from specc.train.fit import Trainer

    threads = configure_threads(config["threads"])
    assert threads == config["threads"], f"specc runs {threads} threads, asked for {config['threads']}"
    import_s = time.perf_counter() - t0

    spec, errors = load_spec(config["spec_path"])
    assert not errors, errors
    x, y, weights = _child.load_data(config)
    engine = Engine(spec.graph)
    engine.set_weights(weights)
    batch = config["batch_size"]
    result = {"framework": "specc", "version": specc.__version__ if hasattr(specc, "__version__") else None,
              "threads": threads, "import_s": import_s}

    if config["kind"] == "predict":
        Trainer.predict_with(engine, x[: 2 * batch], batch_size=batch)  # warm-up: cache loads, allocator
        seconds, passes, out = _child.time_predict(
            lambda xs: Trainer.predict_with(engine, xs, batch_size=batch)[0], x)
        result.update(seconds=seconds, passes_s=passes, samples=len(x), samples_per_s=len(x) / seconds,
                      pred_head=out[:256].astype(float).tolist(), pred_sum=float(out.astype(np.float64).sum()))
        _child.write_result(result_path, result)
        return

    class Record(Callback):
        """The running epoch mean of the loss after every step, as Keras's callbacks see it."""

        def __init__(self):
            self.means: list[list[float]] = []

        def on_batch_end(self, step, logs):
            if step == 0:
                self.means.append([])
            self.means[-1].append(float(logs["loss"]))

    # Warm-up on the same engine (Numba cache loads, first allocations), then the initial weights back and a
    # fresh Trainer (fresh optimizer state): the timed fit starts from exactly the state the others start from.
    warm = config["warmup_steps"] * batch
    Trainer(engine, spec.compile, spec.seed).fit(x[:warm], y[:warm], batch_size=batch, epochs=1, shuffle=False,
                                                 verbose=0)
    engine.set_weights(weights)
    trainer = Trainer(engine, spec.compile, spec.seed)
    record = Record()
    epochs = config["epochs"]
    t = time.perf_counter()
    trainer.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, callbacks=[record], verbose=0)
    seconds = time.perf_counter() - t
    steps = _child.steps_from_running_means(record.means, _child.batch_sizes(len(x), batch))
    result.update(seconds=seconds, samples=len(x) * epochs, samples_per_s=len(x) * epochs / seconds,
                  steps=len(steps), step_losses=steps)
    result.update(step_alloc_bytes=step_allocations(trainer, x, y, batch))
    _child.write_result(result_path, result)


def step_allocations(trainer, x, y, batch: int, steps: int = 20) -> int:
    """The most memory any steady-state step allocated beyond what the previous step held, by tracemalloc
    (which sees every NumPy array): after the timed fit, so every batch size has its buffers already.
    Python objects (the logs dict, floats, views) account for the ~1-2 KB a step shows at best."""
    import tracemalloc

    from specc.train.callbacks import Callback

    class StepPeak(Callback):
        def __init__(self):
            self.peaks, self.base = [], tracemalloc.get_traced_memory()[0]

        def on_batch_end(self, step, logs):
            current, peak = tracemalloc.get_traced_memory()
            self.peaks.append(peak - self.base)
            tracemalloc.reset_peak()
            self.base = current

    n = min(len(x), steps * batch)
    tracemalloc.start()
    try:
        record = StepPeak()
        trainer.fit(x[:n], y[:n], batch_size=batch, epochs=1, shuffle=False, callbacks=[record], verbose=0)
    finally:
        tracemalloc.stop()
    return max(record.peaks[1:] or [0])


if __name__ == "__main__":
    main()
