"""This machine's memory-bandwidth bounds, and the memory-bound layers' forward+backward as a share of them:
BatchNormalization in training (with and without its fused ReLU/ReLU6), DepthwiseConv2D and
SeparableConv2D at MobileNetV2/ResNet-20 sizes, float32, batch 32.

    python bench/bandwidth.py [--threads 1,2] [--repeats 30]

The bounds: STREAM's kernels (copy a = b, scale a = s*b, add a = b + c, triad a = b + s*c) in Numba, split
over the threads as the layers split their work, at a ladder of footprints (the arrays together) from
1 MiB to 512 MiB; bytes counted as STREAM counts them (each array read or written once: copy and scale 2 x
4 bytes per value, add and triad 3 x 4; write-allocate traffic is not counted). Each kernel's time is the
minimum over many repeats (the machine is shared: the minimum is the least disturbed run); a footprint's
rate is the best of the four kernels, and its bound the best rate at that footprint or any larger one (a
larger footprint cannot truly stream faster: a lower figure is a disturbed one). The DRAM bound is the
largest footprint's (far beyond the caches); a footprint that fits a cache level streams faster.

A layer's bytes are the least its pass must move between memory and the cores: every input and output tensor
once (weights are small), e.g. BatchNormalization training forward reads x and writes y, backward reads dy
and x and writes dx (two-pass algorithms read their inputs twice: the figures count once). Its working set
is the largest of the two passes' tensors together. BatchNormalization in training needs its batch
statistics before it can write an output (and its two gradient sums before dx), so it reads x twice forward
and dy and x twice backward: 8 tensor passes where the figure counts 5, so it can reach at most 5/8 of a
bound (the printed "ceiling"). DepthwiseConv2D moves each tensor once from memory (its second reads of a
chunk come from cache): its ceiling is the bound itself; SeparableConv2D also writes and reads back its
depthwise output, which the figure does not count either. Each layer is compared against two bounds: the
DRAM bound, and the bound STREAM reaches at the smallest ladder footprint that holds the layer's working set
(the right bound for a layer whose tensors partly stay in cache, as they do in a training step at these
sizes).
Layer times are minimum times over the repeats. At one thread every time (STREAM's, in a serial build of
its kernels, and the layers') is the calling thread's CPU time (time.thread_time), so time that other
processes on a shared machine take the core away is not counted (their traffic through the shared caches
and memory still is); at two threads, wall time. Writes bench/results/bandwidth-<threads>t.json.
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

# Footprints (MiB, the STREAM arrays together) at which the bound is measured; the last is the DRAM bound.
LADDER_MIB = (1, 2, 4, 8, 16, 32, 64, 128, 512)
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


@numba.njit(**JIT)
def _stream_serial(kind, a, b, c, s):
    n = a.shape[0]
    if kind == 0:
        for i in range(n):
            a[i] = b[i]
    elif kind == 1:
        for i in range(n):
            a[i] = s * b[i]
    elif kind == 2:
        for i in range(n):
            a[i] = b[i] + c[i]
    else:
        for i in range(n):
            a[i] = b[i] + s * c[i]


def stream(mib: int, repeats: int) -> dict:
    """GB/s of copy, scale, add, triad with the arrays together taking `mib` MiB (each kernel's 2 or 3 arrays)."""
    out = {}
    kernel = _stream if numba.get_num_threads() > 1 else _stream_serial
    for kind, name, arrays in ((0, "copy", 2), (1, "scale", 2), (2, "add", 3), (3, "triad", 3)):
        n = mib * 1024 * 1024 // (4 * arrays)
        a = np.ones(n, np.float32)
        b = np.full(n, 2.0, np.float32)
        c = np.full(n, 0.5, np.float32)
        kernel(kind, a, b, c, np.float32(3))
        reps = max(10, repeats * 8 // max(mib, 8))  # small footprints are quick: more repeats
        best = min(_timed(lambda k=kind, a=a, b=b, c=c: kernel(k, a, b, c, np.float32(3))) for _ in range(reps))
        out[name] = arrays * 4 * n / best / 1e9
    return out


def bounds(repeats: int) -> tuple[dict, dict]:
    """(measured, bound): measured {MiB: best STREAM GB/s at that footprint} over LADDER_MIB, and the bound
    at each footprint, the best measured at that footprint or any larger one: a larger footprint cannot
    truly stream faster, so a footprint measured below a larger one was disturbed."""
    measured = {mib: max(stream(mib, repeats).values()) for mib in LADDER_MIB}
    bound, best = {}, 0.0
    for mib in sorted(measured, reverse=True):
        best = max(best, measured[mib])
        bound[mib] = best
    return measured, dict(sorted(bound.items()))


def bound_for(ladder: dict, working_set: int) -> tuple[int, float]:
    """(footprint MiB, GB/s) of the smallest ladder footprint that holds `working_set` bytes."""
    for mib in sorted(ladder):
        if mib * 1024 * 1024 >= working_set:
            return mib, ladder[mib]
    return max(ladder), ladder[max(ladder)]


def _clock():
    """The calling thread's CPU time at one thread (everything then runs on it: time other processes take
    the core away is not counted), else wall time."""
    return time.thread_time if numba.get_num_threads() == 1 else time.perf_counter


def _timed(fn) -> float:
    clock = _clock()
    t = clock()
    fn()
    return clock() - t


BN = {"type": "BatchNormalization", "momentum": 0.9, "epsilon": 1e-5}


def _act(name):
    return {"type": "Activation", "activation": name}


def _dw(**kw):
    return {"type": "DepthwiseConv2D", "kernel_size": 3, "use_bias": False, **kw}


# (name, layers, input shape)
CASES = [
    ("BatchNormalization 32x32x16 (ResNet-20)", [BN], (32, 32, 16)),
    ("BatchNormalization+ReLU 32x32x16", [BN, _act("relu")], (32, 32, 16)),
    ("BatchNormalization 48x48x48", [BN], (48, 48, 48)),
    ("BatchNormalization+ReLU6 48x48x48 (MobileNetV2)", [BN, _act("relu6")], (48, 48, 48)),
    ("BatchNormalization+ReLU6 12x12x144 (MobileNetV2)", [BN, _act("relu6")], (12, 12, 144)),
    ("DepthwiseConv2D 3x3 48x48x16 (MobileNetV2 dw0)", [_dw(padding="same")], (48, 48, 16)),
    ("DepthwiseConv2D 3x3 48x48x48", [_dw(padding="same")], (48, 48, 48)),
    ("DepthwiseConv2D 3x3 /2 98x98x48 (MobileNetV2 dw1)", [_dw(strides=2)], (98, 98, 48)),
    ("DepthwiseConv2D 3x3 12x12x144 (MobileNetV2 dw7)", [_dw(padding="same")], (12, 12, 144)),
    ("DepthwiseConv2D 3x3 m2 24x24x24", [_dw(padding="same", depth_multiplier=2)], (24, 24, 24)),
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
    n_in, n_out = x.size * 4, out.size * 4
    # forward: read x, write y; backward: read dy and x, write dx (a fused activation's mask is recomputed
    # from x)
    bytes_fwd = n_in + n_out
    bytes_bwd = n_out + n_in + n_in
    # what the passes read from memory: BatchNormalization in training reads x again forward, dy and x again
    # backward (its statistics and gradient sums come first); the other layers each tensor once
    two_pass = any(t in ("BatchNormalization", "BatchNormAct") for t in types)
    moved = bytes_fwd + bytes_bwd + ((n_in + n_out + n_in) if two_pass else 0)
    return {"plan": types, "forward_ms": min(fwd) * 1e3, "backward_ms": min(bwd) * 1e3,
            "bytes_forward": bytes_fwd, "bytes_backward": bytes_bwd, "working_set": max(bytes_fwd, bytes_bwd),
            "gb_per_s": (bytes_fwd + bytes_bwd) / (min(fwd) + min(bwd)) / 1e9,
            "ceiling_percent": 100 * (bytes_fwd + bytes_bwd) / moved}


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
        measured, ladder = bounds(args.repeats)
        dram = ladder[max(ladder)]
        print(f"{threads} thread(s): STREAM best of copy/scale/add/triad by footprint: " +
              ", ".join(f"{mib} MiB {v:.1f}" for mib, v in measured.items()) +
              " GB/s; bound by footprint " + ", ".join(f"{mib} MiB {v:.1f}" for mib, v in ladder.items()) +
              f" GB/s; DRAM bound {dram:.1f} GB/s (load average {os.getloadavg()[0]:.1f})")
        rows = {}
        for name, layers, shape in CASES:
            r = layer_case(layers, shape, args.batch, args.repeats)
            mib, near = bound_for(ladder, r["working_set"])
            r["percent_of_dram_bound"] = 100 * r["gb_per_s"] / dram
            r["footprint_bound_mib"] = mib
            r["footprint_bound_gb_per_s"] = near
            r["percent_of_footprint_bound"] = 100 * r["gb_per_s"] / near
            rows[name] = r
            print(f"  {name:50} fwd {r['forward_ms']:7.3f} bwd {r['backward_ms']:7.3f} ms  {r['gb_per_s']:5.1f} GB/s  "
                  f"{r['percent_of_dram_bound']:4.0f}% of DRAM bound, {r['percent_of_footprint_bound']:4.0f}% of the "
                  f"{mib} MiB bound (ceiling {r['ceiling_percent']:.0f}%; {r['working_set'] / 2**20:.1f} MiB working set; {'+'.join(r['plan'])})")
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"bandwidth-{threads}t.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"command": " ".join(sys.argv), "threads": threads, "batch": args.batch,
                       "loadavg": os.getloadavg(), "stream_gb_per_s_by_footprint_mib": measured,
                       "bound_gb_per_s_by_footprint_mib": ladder,
                       "dram_bound_gb_per_s": dram,
                       "layers": rows}, fh, indent=1)
        print(f"  written {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
