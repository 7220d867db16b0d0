"""`specc time SPEC`: where one training step of a spec goes, layer by layer, as Caffe's `caffe time`.

No data and no training: the model is built from the spec (seeded initial weights) and fed synthetic
inputs of its input shapes and targets its compiled loss accepts. After a few warm-up steps (which compile
the kernels), K steps run with the engine's clock on (Engine.clock: a reading at each plan step's start)
and K plain `Trainer.train_step`s between them; every figure is a median over the K steps:

    total = forward (per plan step) + loss + backward (per plan step) + optimizer + framework overhead

where the overhead is the time between the parts (entering and leaving the engine's passes); the time
between plan steps (the engine's bookkeeping between kernels) is in the step that follows. The plain
steps' median is what one training step costs without the clock.
A convolution that the engine runs fused with its max pooling (layers/fusion.py) is one row. GFLOP/s
count 2 x the layer's multiply-adds (LayerSpec.macs, as `specc summary`) forward and, backward, once more
for the weight gradient and once for the input gradient where it is computed. Bytes moved are an
estimate (each pass's inputs, outputs and weights, once each); the peak is measured (kernels/probe.py).
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np

UNKNOWN_SIZE = 32  # what a size known only at run time (None in a shape) is in the synthetic inputs
WARMUP = 3  # untimed steps first: the first compiles (or loads) the kernels, the next fill the workspace
DEFAULT_ITERS = 10
DEFAULT_LOSS = "mean_squared_error"  # for a spec without a compile section


@dataclass
class _Row:
    """One plan step: what it is and what it computes (for GFLOP/s and bytes)."""

    name: str
    type: str
    layers: list[str]  # the model's layers it runs (two for a fused convolution and pooling)
    forward_flops: int
    backward_flops: int
    forward_bytes: int
    backward_bytes: int


def _concrete(shape, size: int = UNKNOWN_SIZE) -> tuple:
    return tuple(size if d is None else int(d) for d in shape)


def _shapes(engine, inputs: dict[str, tuple]) -> dict[str, tuple]:
    """Every tensor's shape (no batch axis) for these input shapes, by the layers' shape rules."""
    shapes = dict(inputs)
    for s in engine.steps:
        x = [shapes[n] for n in s.inbound] if s.layer.is_merge else shapes[s.inbound[0]]
        shapes[s.name] = _concrete(s.layer.compute_output_shape(x))
    return shapes


def _macs(layer, input_shape, output_shape) -> int:
    try:
        return int(layer.macs(input_shape, output_shape) or 0)
    except TypeError:  # a size the rule cannot multiply
        return 0


def _rows(engine, shapes: dict[str, tuple], batch: int) -> list[_Row]:
    """The plan's steps with their flops and estimated bytes for a batch."""
    itemsize = engine.dtype.itemsize
    by_layer = {id(s.layer): s for s in engine.steps}  # a fused step's parts are steps of the model
    rows = []
    for s in engine.plan:
        parts = [by_layer[id(p)] for p in s.layer.fused_layers] if hasattr(s.layer, "fused_layers") else [s]
        macs = sum(_macs(p.layer, [shapes[n] for n in p.inbound] if p.layer.is_merge else shapes[p.inbound[0]],
                         shapes[p.name]) for p in parts)
        weights = sum(w.size for w in s.weights)
        in_values = sum(math.prod(shapes[n]) for n in s.inbound) * batch
        out_values = math.prod(shapes[s.name]) * batch
        input_gradient = engine.input_gradients or not s.inputs_only
        # Backward: the weight gradient and the input gradient each cost what forward does.
        products = (1 if weights else 0) + (1 if input_gradient else 0)
        rows.append(_Row(
            name=s.name, type="+".join(p.layer.type for p in parts), layers=[p.name for p in parts],
            forward_flops=2 * macs * batch, backward_flops=2 * macs * batch * max(products, 1),
            forward_bytes=(in_values + out_values + weights) * itemsize,
            # reads x, dy and the weights; writes dx (when computed) and the weight gradients
            backward_bytes=(in_values * (1 + input_gradient) + out_values + 2 * weights) * itemsize))
    return rows


def _synthetic(engine, trainer, batch: int, rng) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Inputs of the model's input shapes (token ids below input_dim for an input an Embedding reads)
    and targets of its outputs' shapes that its losses accept, checked as fit checks data."""
    vocab: dict[str, int] = {}
    for s in engine.steps:
        if s.layer.type == "Embedding":
            for n in s.inbound:
                vocab[n] = min(vocab.get(n, s.layer.input_dim), s.layer.input_dim)
    x = []
    for node in engine.graph.inputs:
        shape = (batch, *_concrete(node.output_shape))
        if node.name in vocab:
            x.append(rng.integers(0, vocab[node.name], shape).astype(engine.dtype))
        else:
            x.append(rng.standard_normal(shape, dtype=np.float32).astype(engine.dtype))
    shapes = _shapes(engine, {n.name: _concrete(n.output_shape) for n in engine.graph.inputs})
    y = []
    for name, loss in zip(engine.output_names, trainer.losses):
        shape = (batch, *shapes[name])
        if loss.name == "sparse_categorical_crossentropy":
            y.append(rng.integers(0, shape[-1], shape[:-1]))
        elif loss.name == "categorical_crossentropy":
            y.append(np.eye(shape[-1], dtype=np.float32)[rng.integers(0, shape[-1], shape[:-1])])
        elif loss.name in ("binary_crossentropy", "hinge"):
            y.append(rng.integers(0, 2, shape).astype(np.float32))
        elif loss.name == "kl_divergence":
            p = rng.random(shape, dtype=np.float32) + np.float32(0.1)
            y.append(p / p.sum(axis=-1, keepdims=True))
        else:
            y.append(rng.standard_normal(shape, dtype=np.float32))
    x, y, _ = trainer.check_data(x, y)
    return x, y


def _median(values: list[float]) -> float:
    return statistics.median(values) * 1e3  # seconds -> ms


def profile(spec, batch: int, iters: int = DEFAULT_ITERS, threads: int | None = None,
            peak: bool = True) -> dict[str, Any]:
    """The timing report of one training step of `spec` at batch size `batch` (see the module docstring
    and README's `specc time`): medians over `iters` steps, on `threads` threads (default: SPECC_THREADS,
    else every core the process may use)."""
    from .engine import Engine
    from .kernels import configure_threads
    from .kernels.probe import PeakProbe
    from .spec.schema import CompileDef
    from .train.fit import Trainer

    threads = configure_threads(threads)
    engine = Engine(spec.graph)
    engine.initialize(spec.seed)
    trainer = Trainer(engine, spec.compile or CompileDef(loss=DEFAULT_LOSS), spec.seed)
    x, y = _synthetic(engine, trainer, batch, np.random.default_rng(spec.seed))
    shapes = _shapes(engine, {n.name: tuple(a.shape[1:]) for n, a in zip(engine.graph.inputs, x)})
    rows = _rows(engine, shapes, batch)
    n = len(engine.plan)
    pre_activation = [f is not None for f in trainer.fused]
    trainable = engine.params[: engine.n_trainable]
    forward: list[list[float]] = [[] for _ in range(n)]
    backward: list[list[float]] = [[] for _ in range(n)]
    loss, optimizer, overhead, plain = [], [], [], []
    probe = PeakProbe(threads) if peak else None  # starts now: its start-up overlaps the warm-up
    try:
        with engine.held_threads():  # as fit holds them: once for the loop
            for _ in range(WARMUP):
                trainer.train_step(x, y, None)
            if probe is not None:
                probe.ready()  # nothing else runs while the model is timed
            for _ in range(iters):
                engine.clock = fc = []
                t0 = perf_counter()
                _, grads, _ = trainer.batch_losses(x, y, None, training=True)
                t1 = perf_counter()
                engine.clock = bc = []
                engine.backward(grads, pre_activation=pre_activation, reuse=True)
                t2 = perf_counter()
                engine.clock = None
                trainer.optimizer.step(trainable, engine.grads)
                t3 = perf_counter()
                for k in range(n):  # the backward clock runs in reverse plan order
                    forward[k].append(fc[k + 1] - fc[k])
                    backward[n - 1 - k].append(bc[k + 1] - bc[k])
                loss.append(t1 - fc[-1])
                optimizer.append(t3 - t2)
                # the gaps between the parts: entering forward, and entering and leaving backward
                overhead.append((fc[0] - t0) + (bc[0] - t1) + (t2 - bc[-1]))
                start = perf_counter()
                trainer.train_step(x, y, None)
                plain.append(perf_counter() - start)
            fused_ms = _fused_step_ms(trainer, x, y, iters)
        peak_gflops = probe.result() if probe is not None else None
    finally:
        engine.clock = None
        if probe is not None:
            probe.close()

    layers = []
    for row, f, b in zip(rows, forward, backward):
        f_ms, b_ms = _median(f), _median(b)
        flops = row.forward_flops + row.backward_flops
        gflops = flops / (f_ms + b_ms) / 1e6 if f_ms + b_ms > 0 else 0.0
        layers.append({
            "name": row.name, "type": row.type, "layers": row.layers,
            "forward_ms": f_ms, "backward_ms": b_ms,
            "forward_flops": row.forward_flops, "backward_flops": row.backward_flops,
            "forward_gflops": row.forward_flops / f_ms / 1e6 if f_ms > 0 else 0.0,
            "backward_gflops": row.backward_flops / b_ms / 1e6 if b_ms > 0 else 0.0,
            "gflops": gflops,
            "percent_of_peak": 100 * gflops / peak_gflops if peak_gflops else None,
            "forward_bytes": row.forward_bytes, "backward_bytes": row.backward_bytes,
        })
    loss_ms, optimizer_ms, overhead_ms = _median(loss), _median(optimizer), _median(overhead)
    # The sum of the medians: a step another process interrupted moves a median little, a sum of one step's
    # parts a lot.
    total_ms = sum(r["forward_ms"] + r["backward_ms"] for r in layers) + loss_ms + optimizer_ms + overhead_ms
    for r in layers:
        r["share"] = (r["forward_ms"] + r["backward_ms"]) / total_ms
    train_step_ms = _median(plain)
    return {
        "model": spec.graph.name,
        "spec": spec.file,
        "batch_size": batch,
        "iterations": iters,
        "warmup": WARMUP,
        "threads": threads,
        "inputs": {node.name: [batch, *shapes[node.name]] for node in engine.graph.inputs},
        "peak_gflops": peak_gflops,
        "layers": layers,
        "loss": {"ms": loss_ms, "share": loss_ms / total_ms, "names": [f.name for f in trainer.losses]},
        "optimizer": {"ms": optimizer_ms, "share": optimizer_ms / total_ms, "name": trainer.optimizer.name},
        "overhead": {"ms": overhead_ms, "share": overhead_ms / total_ms},
        "total_ms": total_ms,
        "train_step_ms": train_step_ms,
        "samples_per_second": batch / train_step_ms * 1e3,
        "fused_step_ms": fused_ms,
        "flops_per_step": sum(r["forward_flops"] + r["backward_flops"] for r in layers),
    }


def _fused_step_ms(trainer, x, y, iters: int) -> float | None:
    """The median of fit's one-call step for an MLP (train/fused.py), or None when fit does not use it:
    the per-layer rows time the general path, which such a model trains through only when fit cannot
    fuse it."""
    if trainer.chain is None or len(trainer.losses) != 1 or trainer.loss_weights != [1.0]:
        return None
    step = trainer.chain.trainer(trainer.losses[0], trainer.fused[0])
    if step is None:
        return None
    targets = step.targets(y[0])
    times = []
    for k in range(WARMUP + iters):
        start = perf_counter()
        step(x[0], targets, None)
        if k >= WARMUP:
            times.append(perf_counter() - start)
    return _median(times)


# --- output ------------------------------------------------------------------------------------------------


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}" if n < 1e8 else f"{n / 1e6:,.0f}"


def _rate(gflops: float) -> str:
    return f"{gflops:.1f}" if gflops >= 1 else f"{gflops:.3f}"


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def report_text(report: dict[str, Any]) -> str:
    from .summary import box_table

    header = ["Layer (type)", "Fwd ms", "Bwd ms", "Step ms", "GFLOP/s", "% peak", "MB moved", "Share"]
    justify = ["left"] + ["right"] * 7
    widths = [34, 7, 7, 7, 7, 6, 8, 6]
    line_length = sum(widths) + 3 * len(widths) + 1  # one space of padding a side, and the borders
    rows = []
    for r in report["layers"]:
        pct = r["percent_of_peak"]
        rows.append([f"{' + '.join(r['layers'])} ({r['type']})", _ms(r["forward_ms"]), _ms(r["backward_ms"]),
                     _ms(r["forward_ms"] + r["backward_ms"]), _rate(r["gflops"]) if r["gflops"] else "-",
                     f"{pct:.1f}" if pct is not None and r["gflops"] else "-",
                     _mb(r["forward_bytes"] + r["backward_bytes"]), _percent(r["share"])])
    loss, opt, over = report["loss"], report["optimizer"], report["overhead"]
    for label, part in ((f"loss ({', '.join(loss['names'])})", loss), (f"optimizer ({opt['name']})", opt),
                        ("framework overhead", over)):
        rows.append([label, "", "", _ms(part["ms"]), "", "", "", _percent(part["share"])])
    peak = report["peak_gflops"]
    threads = report["threads"]
    lines = [f'Model: "{report["model"]}": one training step at batch size {report["batch_size"]} on synthetic data, '
             f'{threads} thread{"s" * (threads != 1)}, medians of {report["iterations"]} steps',
             box_table(header, justify, widths, line_length, rows)]
    total, step = report["total_ms"], report["train_step_ms"]
    flops = report["flops_per_step"]
    lines.append(f" Total: {_ms(total)} ms per step, the sum of the rows; {_rate(flops / total / 1e6)} GFLOP/s")
    lines.append(f" One training step (Trainer.train_step, no clock): {_ms(step)} ms, "
                 f"{report['samples_per_second']:,.0f} samples/s")
    if report["fused_step_ms"] is not None:
        lines.append(f" fit trains this model with one fused call per step (an MLP): {_ms(report['fused_step_ms'])} "
                     f"ms; the rows above time the layer-by-layer path")
    if peak:
        lines.append(f" Peak (100% in % peak): {peak:.0f} GFLOP/s float32, {threads} x one core's measured FMA "
                     f"throughput")
    else:
        lines.append(" Peak: not measured (the probe's process failed); no % of peak")
    lines.append(" MB moved is an estimate: each pass's inputs, outputs and weights once each")
    return "\n".join(lines) + "\n"


def run(spec, batch: int | None, iters: int, threads: int | None, fmt: str) -> int:
    """`specc time`: print the report; the exit code (train/session.py's codes)."""
    import json

    from .spec import render
    from .train.session import EXIT_INVALID, EXIT_OK, Failed, check_memory, threads_from_environment

    try:
        threads = threads or threads_from_environment()
    except Failed as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    from .spec.schema import FitDef

    batch = batch or (spec.fit or FitDef()).batch_size  # the schema holds the default
    problem = check_memory(spec, batch)
    if problem:
        print(render([problem], "text"), file=sys.stderr)
        return EXIT_INVALID
    report = profile(spec, batch, iters, threads)
    if fmt == "json":
        print(json.dumps(report, indent=2))
    else:
        print(report_text(report), end="")
    return EXIT_OK
