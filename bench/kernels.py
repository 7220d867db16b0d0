"""Forward+backward time of single layers through the specc engine, side by side with PyTorch (CPU),
at the sizes of the benchmark MLP and CNN and a text LSTM. Median of several timed repetitions after a
warm-up; ratios are PyTorch time / specc time (> 1 means specc is faster).

    python bench/kernels.py [--threads 2] [--repeats 7]

Writes bench/results/kernels-<threads>t.json with the machine's CPU model and its measured float32 peak (see
bench/gemm.py: an FMA-throughput probe at the same thread count), against which "% peak" is given.
PyTorch is optional.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# specc's process settings before NumPy loads, as `specc train` applies them (specc/runtime.py).
import specc.runtime  # noqa: E402, I001

specc.runtime.prepare_process()
import numpy as np  # noqa: E402
from gemm import measure_peak  # noqa: E402 - bench/gemm.py: this machine's float32 FMA peak, measured

from specc.engine import Engine  # noqa: E402
from specc.kernels import configure_threads  # noqa: E402
from specc.spec import load_spec_text  # noqa: E402

# name, layer spec, input shape (no batch), batch, forward multiply-adds per sample, and whether the
# input gradient is computed: as in the benchmark networks, where a first layer needs none (both
# frameworks skip it then) and the CNN's second convolution and pooling layers do.
CASES = [
    ("Dense 784->256", {"type": "Dense", "units": 256}, (784,), 128, 784 * 256, False),
    ("Conv2D 28x28x1->32 3x3", {"type": "Conv2D", "filters": 32, "kernel_size": 3}, (28, 28, 1), 128,
     26 * 26 * 9 * 1 * 32, False),
    ("Conv2D 13x13x32->64 3x3", {"type": "Conv2D", "filters": 64, "kernel_size": 3}, (13, 13, 32), 128,
     11 * 11 * 9 * 32 * 64, True),
    ("MaxPooling2D 2 on 26x26x32", {"type": "MaxPooling2D", "pool_size": 2}, (26, 26, 32), 128, 0, True),
    # The CNN's first block as its training step runs it: the engine fuses the pair (specc/layers/fusion.py).
    # GFLOP/s counts the convolution's products only.
    ("Conv2D 28x28x1->32 relu+MaxPool", [{"type": "Conv2D", "filters": 32, "kernel_size": 3, "activation": "relu"},
                                         {"type": "MaxPooling2D", "pool_size": 2}], (28, 28, 1), 128,
     26 * 26 * 9 * 1 * 32, False),
    ("LSTM 64 on 40x32", {"type": "LSTM", "units": 64}, (40, 32), 64, 40 * 4 * 64 * (32 + 64), False),
]


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # noqa: BLE001 - informational only
        return platform.processor() or "unknown"


def median_time(fn, repeats: int) -> float:
    fn()
    fn()  # warm-up: compile, caches, allocator
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def specc_case(layer: dict, shape, batch: int, need_dx: bool):
    import yaml

    layers = layer if isinstance(layer, list) else [layer]
    text = yaml.safe_dump({"specc": 1, "model": {"input": list(shape), "layers": layers}})
    spec, errors = load_spec_text(text, "bench.yaml")
    assert not errors, errors
    engine = Engine(spec.graph)
    engine.initialize(0)
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    engine.input_gradients = need_dx
    out = engine.forward([x], training=True)[0]
    dy = np.ones_like(out)

    def step():  # buffers reused across steps, as the Trainer does
        engine.forward([x], training=True, reuse=True)
        engine.backward([dy], reuse=True)

    return step, engine


def torch_case(layer: dict, shape, batch: int, need_dx: bool):
    import torch

    x = torch.randn(batch, *shape, requires_grad=need_dx)
    if isinstance(layer, list):  # Conv2D (relu) then MaxPooling2D
        conv, pool = layer
        mod = torch.nn.Sequential(torch.nn.Conv2d(shape[-1], conv["filters"], conv["kernel_size"]), torch.nn.ReLU(),
                                  torch.nn.MaxPool2d(pool["pool_size"]))
        x = torch.randn(batch, shape[-1], *shape[:2], requires_grad=need_dx)  # torch is channels_first
        fwd = mod
    elif layer["type"] == "Dense":
        mod = torch.nn.Linear(shape[-1], layer["units"])
        fwd = mod
    elif layer["type"] == "Conv2D":
        mod = torch.nn.Conv2d(shape[-1], layer["filters"], layer["kernel_size"])
        x = torch.randn(batch, shape[-1], *shape[:2], requires_grad=need_dx)  # torch is channels_first
        fwd = mod
    elif layer["type"] == "MaxPooling2D":
        mod = None
        x = torch.randn(batch, shape[-1], *shape[:2], requires_grad=need_dx)
        fwd = torch.nn.MaxPool2d(layer["pool_size"])
    elif layer["type"] == "LSTM":
        mod = torch.nn.LSTM(shape[-1], layer["units"], batch_first=True)

        def fwd(t):
            return mod(t)[0][:, -1]
    else:
        raise ValueError(layer["type"])
    out = fwd(x)
    dy = torch.ones_like(out)

    def step():
        x.grad = None
        if mod is not None:
            mod.zero_grad(set_to_none=True)  # the weight gradients are written, not accumulated, as in specc
        fwd(x).backward(dy)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        torch = None
        print("PyTorch not installed: timing specc alone")

    rows = []
    peak = measure_peak(threads)
    peak_gflops = peak["measured_gflops"]
    print(f"threads={threads}  cpu={lscpu_model()}  median of {args.repeats}  float32 peak {peak_gflops:.0f} GFLOP/s "
          f"(measured by bench/gemm.py's FMA probe; {peak['clock_ghz']:.2f} GHz)")
    header = f"{'layer (forward+backward)':32} {'batch':>5} {'specc ms':>9} {'torch ms':>9} {'ratio':>6} {'GFLOP/s':>8} {'% peak':>6}"
    print(header)
    print("-" * len(header))
    for name, layer, shape, batch, macs, need_dx in CASES:
        step, engine = specc_case(layer, shape, batch, need_dx)
        with engine.held_threads():  # thread limits set once for the loop, as the Trainer does per epoch
            t_specc = median_time(step, args.repeats)
        t_torch = median_time(torch_case(layer, shape, batch, need_dx), args.repeats) if torch else None
        # forward + weight gradient (+ input gradient): products of the same size (for the LSTM this leaves
        # out its gradient through the recurrent state, which it computes either way)
        gflops = (2 + need_dx) * 2 * macs * batch / t_specc / 1e9 if macs else None
        ratio = t_torch / t_specc if t_torch else None
        rows.append({"layer": name, "batch": batch, "specc_s": t_specc, "torch_s": t_torch, "ratio": ratio,
                     "gflops": gflops, "peak_fraction": gflops / peak_gflops if gflops else None})
        print(f"{name:32} {batch:>5} {t_specc * 1e3:>9.2f} "
              f"{(t_torch * 1e3 if t_torch else float('nan')):>9.2f} {(ratio or float('nan')):>6.2f} "
              f"{(gflops or float('nan')):>8.1f} {(100 * gflops / peak_gflops if gflops else float('nan')):>5.1f}%")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results", f"kernels-{threads}t.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"cpu": lscpu_model(), "threads": threads, "repeats": args.repeats, "peak": peak,
                   "torch": getattr(torch, "__version__", None), "rows": rows}, fh, indent=2)
    print(f"written {path}")


if __name__ == "__main__":
    main()
