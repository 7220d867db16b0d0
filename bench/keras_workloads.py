"""The Keras 3 side of bench/run.py (KERAS_BACKEND=torch, set by run.py): the workloads as keras.Sequential
models, specc's initial weights loaded with set_weights (specc's weight layout is Keras's), trained with
model.fit(shuffle=False) / model.predict on the same arrays.

    python bench/keras_workloads.py CONFIG.json RESULT.json   (started by bench/run.py)
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("KERAS_BACKEND", "torch")

import _child  # noqa: E402


def build_model(keras, name: str, input_shape):
    L = keras.layers
    if name == "mlp":
        body = [L.Dense(256, activation="relu"), L.Dense(128, activation="relu"), L.Dense(10, activation="softmax")]
    elif name == "tiny":
        body = [L.Dense(16, activation="relu"), L.Dense(16, activation="relu"), L.Dense(1)]
    elif name == "cnn":
        body = [L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(2), L.Conv2D(64, 3, activation="relu"),
                L.MaxPooling2D(2), L.Flatten(), L.Dense(10, activation="softmax")]
    else:
        raise ValueError(f"unknown model {name!r}")
    return keras.Sequential([keras.Input(tuple(input_shape))] + body)


def make_optimizer(keras, opt: dict):
    if opt["type"] == "adam":
        return keras.optimizers.Adam(opt["learning_rate"], beta_1=opt["beta_1"], beta_2=opt["beta_2"],
                                     epsilon=opt["epsilon"])
    if opt["type"] == "sgd":
        return keras.optimizers.SGD(opt["learning_rate"])
    raise ValueError(opt["type"])


def main() -> None:
    config, result_path = _child.read_args()
    t0 = time.perf_counter()
    import keras
    import numpy as np
    import torch

    threads = config["threads"]
    torch.set_num_threads(threads)
    import_s = time.perf_counter() - t0
    keras.utils.set_random_seed(0)
    x, y, weights = _child.load_data(config)
    model = build_model(keras, config["model"], config["input_shape"])
    model.set_weights(weights)
    batch = config["batch_size"]
    result = {"framework": "keras", "version": keras.__version__, "backend": keras.backend.backend(),
              "threads": torch.get_num_threads(), "import_s": import_s}

    if config["kind"] == "predict":
        model.predict(x[: 2 * batch], batch_size=batch, verbose=0)  # warm-up
        seconds, passes, out = _child.time_predict(lambda xs: model.predict(xs, batch_size=batch, verbose=0), x)
        result.update(seconds=seconds, passes_s=passes, samples=len(x), samples_per_s=len(x) / seconds,
                      pred_head=out[:256].astype(float).tolist(), pred_sum=float(out.astype(np.float64).sum()))
        _child.write_result(result_path, result)
        return

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.means: list[list[float]] = []

        def on_train_batch_end(self, step, logs=None):
            if step == 0:
                self.means.append([])
            self.means[-1].append(float(logs["loss"]))

    loss = config["loss"]
    # Warm-up fit, then the initial weights back and a new optimizer (built before the timing starts).
    warm = config["warmup_steps"] * batch
    model.compile(optimizer=make_optimizer(keras, config["optimizer"]), loss=loss)
    model.fit(x[:warm], y[:warm], batch_size=batch, epochs=1, shuffle=False, verbose=0)
    model.set_weights(weights)
    model.compile(optimizer=make_optimizer(keras, config["optimizer"]), loss=loss)
    model.optimizer.build(model.trainable_variables)
    record = Record()
    epochs = config["epochs"]
    t = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0, callbacks=[record])
    seconds = time.perf_counter() - t
    steps = _child.steps_from_running_means(record.means, _child.batch_sizes(len(x), batch))
    result.update(seconds=seconds, samples=len(x) * epochs, samples_per_s=len(x) * epochs / seconds,
                  steps=len(steps), step_losses=steps)
    _child.write_result(result_path, result)


if __name__ == "__main__":
    main()
