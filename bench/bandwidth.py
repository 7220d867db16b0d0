"""This machine's memory-bandwidth bound, and the memory-bound layers' forward+backward as a share of it:
BatchNormalization in training (with and without its fused ReLU), DepthwiseConv2D and SeparableConv2D at
MobileNetV2/ResNet-20 sizes, float32, batch 32.

    python bench/bandwidth.py [--threads 1,2] [--repeats 30]

The bound: STREAM's kernels (copy a = b, scale a = s*b, add a = b + c, triad a = b + s*c) in Numba over
float32 arrays of 32 Mi values (128 MiB each, far beyond the caches), split over the threads as the
layers split their work; bytes counted as STREAM counts them (each array read or written once: copy and
scale 2 x 4 bytes per value, add and triad 3 x 4; write-allocate traffic is not counted). The bound is
the best of the four (minimum time over the repeats).

A layer's bytes are the least its pass must move between memory and the cores: every input and output
tensor once (weights are small), e.g. BatchNormalization training forward reads x and writes y, backward
reads dy and x (and y, for the fused ReLU's mask) and writes dx. A layer whose tensors fit in the caches
can beat the bound; the figures below use the layer's own working set, as a training step meets it.
Times are minimum wall times over the repeats (the machine is shared: the minimum is the least disturbed).
Writes bench/results/bandwidth-<threads>t.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import specc.runtime  # noqa: E402, I001

specc.runtime.prepare_process()
import numba  # noqa: E402
import numpy as np  # noqa: E402

from specc.engine import Engine  # noqa: E402
from specc.kernels import JIT, configure_threads  # noqa: E402
from specc.spec import load_spec_text  # noqa: E402

N_STREAM = 32 * 1024 * 1024


@numba.njit(**dict(JIT, parallel=True))
def _stream(kind, a, b, c, s):
    n = a.shape[0]
    if kind == 0:
        for i in numba.prange(n):
            a[i] = b[i]
    elif kind == 1:
        for i in numba.prange(n):
            a[i] = s * b[i]
    elif kind == 2:
        for i in numba.prange(n):
            a[i] = b[i] + c[i]
    else:
        for i in numba.prange(n):
            a[i] = b[i] + s * c[i]


def stream(repeats: int) -> dict:
    a = np.ones(N_STREAM, np.float32)
    b = np.full(N_STREAM, 2.0, np.float32)
    c = np.full(N_STREAM, 0.5, np.float32)
    out = {}
    for kind, name, arrays in ((0, "copy", 2), (1, "scale", 2), (2, "add", 3), (3, "triad", 3)):
        _stream(kind, a, b, c, np.float32(3))
        best = min(_timed(lambda k=kind: _stream(k, a, b, c, np.float32(3))) for _ in range(max(5, repeats // 3)))
        out[name] = arrays * 4 * N_STREAM / best / 1e9
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# (name, layers, input shape, the tensors a pass moves, in units of the layer's input/output size)
CASES = [
    ("BatchNormalization 32x32x16 (ResNet-20)", [{"type": "BatchNormalization"}], (32, 32, 16)),
    ("BatchNormalization+ReLU 32x32x16", [{"type": "BatchNormalization"}, {"type": "Activation", "activation": "relu"}],
     (32, 32, 16)),
    ("BatchNormalization+ReLU6 48x48x48 (MobileNetV2)", [{"type": "BatchNormalization"},
                                                        {"type": "Activation", "activation": "relu6"}], (48, 48, 48)),
    ("DepthwiseConv2D 3x3 48x48x48 (MobileNetV2)", [{"type": "DepthwiseConv2D", "kernel_size": 3, "padding": "same",
                                                     "use_bias": False}], (48, 48, 48)),
    ("DepthwiseConv2D 3x3 /2 48x48x48", [{"type": "DepthwiseConv2D", "kernel_size": 3, "strides": 2,
                                          "padding": "same", "use_bias": False}], (48, 48, 48)),
    ("SeparableConv2D 3x3 24x24x48->16", [{"type": "SeparableConv2D", "filters": 16, "kernel_size": 3,
                                           "padding": "same"}], (24, 24, 48)),
]


def layer_case(layers, shape, batch: int, repeats: int) -> dict:
    spec, errors = load_spec_text(json.dumps({"specc": 1, "seed": 0, "model": {"input": list(shape), "layers": layers}}),
                                  "case.yaml")
    assert not errors, errors
    engine = Engine(spec.graph)
    engine.initialize(0)
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    out = engine.forward([x], training=True, reuse=True)[0]
    dy = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    fwd, bwd = [], []
    with engine.held_threads():
        for _ in range(3):
            engine.forward([x], training=True, reuse=True)
            engine.backward([dy], reuse=True)
        for _ in range(repeats):
            fwd.append(_timed(lambda: engine.forward([x], training=True, reuse=True)))
            bwd.append(_timed(lambda: engine.backward([dy], reuse=True)))
    types = [type(s.layer).__name__ for s in engine.plan]
    fused_act = any(t == "BatchNormAct" for t in types)
    n_in, n_out = x.size * 4, out.size * 4
    # forward: read x, write y; backward: read dy and x (and y for a fused activation's mask), write dx
    bytes_fwd = n_in + n_out
    bytes_bwd = n_out + n_in + (n_out if fused_act else 0) + n_in
    return {"plan": types, "forward_ms": min(fwd) * 1e3, "backward_ms": min(bwd) * 1e3,
            "bytes_forward": bytes_fwd, "bytes_backward": bytes_bwd,
            "gb_per_s": (bytes_fwd + bytes_bwd) / (min(fwd) + min(bwd)) / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    for threads in [int(t) for t in args.threads.split(",")]:
        configure_threads(threads)
        numba.set_num_threads(threads)
        bound = stream(args.repeats)
        best = max(bound.values())
        print(f"{threads} thread(s): STREAM " + ", ".join(f"{k} {v:.1f}" for k, v in bound.items()) +
              f" GB/s; bound {best:.1f} GB/s (load average {os.getloadavg()[0]:.1f})")
        rows = {}
        for name, layers, shape in CASES:
            r = layer_case(layers, shape, args.batch, args.repeats)
            r["percent_of_bound"] = 100 * r["gb_per_s"] / best
            rows[name] = r
            print(f"  {name:48} fwd {r['forward_ms']:7.3f} ms  bwd {r['backward_ms']:7.3f} ms  "
                  f"{r['gb_per_s']:6.1f} GB/s  {r['percent_of_bound']:5.0f}% of bound  ({'+'.join(r['plan'])})")
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"bandwidth-{threads}t.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"command": " ".join(sys.argv), "threads": threads, "batch": args.batch,
                       "loadavg": os.getloadavg(), "stream_gb_per_s": bound, "bound_gb_per_s": best,
                       "layers": rows}, fh, indent=1)
        print(f"  written {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
