"""What every benchmark child process shares (standard library and NumPy only, so that importing it costs
the same in the specc, PyTorch and Keras processes): thread environment, reading the prepared workload,
turning running-mean losses into per-step losses, peak RSS, writing the result.

A child is started as `python bench/<framework>_workloads.py CONFIG.json RESULT.json`; CONFIG is written
by bench/run.py and names the prepared data file (x, y and the initial weights w0, w1, ... in Keras's
layout, drawn by specc's Engine.initialize) and the hyperparameters read from the workload's spec.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

T_START = time.perf_counter()

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def read_args() -> tuple[dict, str]:
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} CONFIG.json RESULT.json (started by bench/run.py)")
    with open(sys.argv[1], encoding="utf-8") as fh:
        config = json.load(fh)
    return config, sys.argv[2]


def load_data(config: dict):
    """(x, y, initial weights) exactly as bench/run.py prepared them for every framework."""
    import numpy as np

    with np.load(config["data_path"], allow_pickle=False) as archive:
        x, y = archive["x"], archive["y"]
        weights = [archive[f"w{k}"] for k in range(config["n_weights"])]
    n = config["samples"]
    return x[:n], y[:n], weights


def steps_from_running_means(means: list[list[float]], batch_sizes: list[int]) -> list[float]:
    """Per-step losses from the running epoch means that Keras-style loops report after each step
    (mean_k * seen_k - mean_{k-1} * seen_{k-1}) / batch_k, epoch by epoch."""
    out = []
    for epoch in means:
        prev, seen = 0.0, 0
        for m, b in zip(epoch, batch_sizes):
            total = float(m) * (seen + b)
            out.append((total - prev) / b)
            prev, seen = total, seen + b
    return out


def batch_sizes(samples: int, batch: int) -> list[int]:
    return [min(batch, samples - s) for s in range(0, samples, batch)]


# A predict pass of the small workloads lasts ~0.15 s, short enough for one hiccup of the host to move a
# process's figure by 2x: passes repeat until PREDICT_SECONDS have gone by (at most PREDICT_PASSES), and the
# median pass is the figure. Long passes (ResNet-50 predict) still run once.
PREDICT_SECONDS = 1.0
PREDICT_PASSES = 9


def time_predict(predict, x) -> tuple[float, list[float], object]:
    """(median seconds of a pass over x, every pass's seconds, the last pass's output)."""
    passes: list[float] = []
    while not passes or (sum(passes) < PREDICT_SECONDS and len(passes) < PREDICT_PASSES):
        t = time.perf_counter()
        out = predict(x)
        passes.append(time.perf_counter() - t)
    return statistics.median(passes), passes, out


def peak_rss_mb() -> float:
    """This process image's peak resident set (VmHWM), in MiB.

    Not ru_maxrss alone: Linux carries the parent's high-water mark into a child across fork/vfork + exec,
    so every child of a big parent would report at least the parent's peak. VmHWM belongs to the address
    space created by exec, i.e. to this program only. Falls back to ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def write_result(path: str, result: dict) -> None:
    result = dict(result)
    result["peak_rss_mb"] = peak_rss_mb()
    result["ru_maxrss_mb"] = ru_maxrss_mb()  # includes the launching parent's peak on Linux, see above
    result["process_s"] = time.perf_counter() - T_START
    result["threads_env"] = {k: os.environ.get(k) for k in THREAD_VARS}
    result["loadavg_end"] = os.getloadavg()
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
