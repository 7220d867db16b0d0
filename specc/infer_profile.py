"""`specc time SPEC --inference`: where one inference batch goes (what predict runs), step by step.

The model is built from the spec (seeded initial weights) and fed synthetic inputs, as `specc time` does
for training. Each row is one step of what predict runs: for a convolutional network the inference plan
(specc/infer.py; a row then names every layer it covers: a convolution with its folded BatchNormalization,
its ReLU or residual Add), else the engine's forward in inference mode. After a few untimed batches, K
batches run with the engine's clock on and K without; every figure is a median over the K batches. GFLOP/s
count 2 x the covered layers' multiply-adds. The last lines compare the whole batch with the plan and with
the layers run by Engine.forward(training=False), each a median over K batches, alternating.
"""

from __future__ import annotations

import sys
from time import perf_counter
from typing import Any

import numpy as np

from .profile import DEFAULT_ITERS, WARMUP, _concrete, _macs, _median, _ms, _percent, _rate, _shapes

__all__ = ["DEFAULT_ITERS", "profile", "report_text", "run"]


def profile(spec, batch: int, iters: int = DEFAULT_ITERS, threads: int | None = None) -> dict[str, Any]:
    """The timing report of one inference batch of `spec` at batch size `batch` (see the module docstring)."""
    from .engine import Engine
    from .infer import InferencePlan, _Conv
    from .kernels import configure_threads

    threads = configure_threads(threads)
    engine = Engine(spec.graph)
    engine.initialize(spec.seed)
    rng = np.random.default_rng(spec.seed)
    x = []
    for node in engine.graph.inputs:
        shape = (batch, *_concrete(node.output_shape))
        x.append(rng.standard_normal(shape, dtype=np.float32).astype(engine.dtype))
    shapes = _shapes(engine, {n.name: tuple(a.shape[1:]) for n, a in zip(engine.graph.inputs, x)})
    plan = InferencePlan.cached(engine)
    by_name = {s.name: s for s in engine.steps}
    if plan is not None:
        plan.refresh()
        steps = [(s.name, "fused" if isinstance(s, _Conv) else type(s.step.layer).__name__, s.covers)
                 for s in plan.steps]
        run_batch = lambda: plan.predict(x)  # noqa: E731
    else:
        steps = [(s.name, type(s.layer).__name__, [p.name for p in _parts(s, by_name)]) for s in engine.plan]
        run_batch = lambda: engine.forward(x, training=False, reuse=True)  # noqa: E731
    times: list[list[float]] = [[] for _ in steps]
    with_plan, apart = [], []
    try:
        with engine.held_threads():  # as predict holds them: once for the loop
            for _ in range(WARMUP):
                run_batch()
                engine.forward(x, training=False, reuse=True)
            for _ in range(iters):
                engine.clock = clock = []
                run_batch()
                engine.clock = None
                for k in range(len(steps)):
                    times[k].append(clock[k + 1] - clock[k])
                start = perf_counter()
                run_batch()
                with_plan.append(perf_counter() - start)
                start = perf_counter()
                engine.forward(x, training=False, reuse=True)
                apart.append(perf_counter() - start)
    finally:
        engine.clock = None
    rows = []
    for (name, kind, covers), t in zip(steps, times):
        flops = 2 * batch * sum(_macs(by_name[c].layer, _input_shape(by_name[c], shapes), shapes[c]) for c in covers)
        ms = _median(t)
        rows.append({"name": name, "type": kind, "layers": covers, "ms": ms, "flops": flops,
                     "gflops": flops / ms / 1e6 if ms > 0 else 0.0})
    total = sum(r["ms"] for r in rows)
    for r in rows:
        r["share"] = r["ms"] / total if total > 0 else 0.0
    batch_ms, apart_ms = _median(with_plan), _median(apart)
    return {
        "model": spec.graph.name, "spec": spec.file, "batch_size": batch, "iterations": iters, "warmup": WARMUP,
        "threads": threads, "plan": plan is not None,
        "inputs": {node.name: [batch, *shapes[node.name]] for node in engine.graph.inputs},
        "steps": rows, "total_ms": total, "batch_ms": batch_ms, "samples_per_second": batch / batch_ms * 1e3,
        "forward_ms": apart_ms, "flops_per_batch": sum(r["flops"] for r in rows),
    }


def _parts(step, by_name: dict) -> list:
    """The model's layers a step of Engine.plan runs (two for a fused pair)."""
    if hasattr(step.layer, "fused_layers"):
        ids = {id(p) for p in step.layer.fused_layers}
        return [s for s in by_name.values() if id(s.layer) in ids]
    return [step]


def _input_shape(step, shapes: dict):
    return [shapes[n] for n in step.inbound] if step.layer.is_merge else shapes[step.inbound[0]]


def report_text(report: dict[str, Any]) -> str:
    from .summary import box_table

    header = ["Step (layers it runs)", "ms", "GFLOP/s", "Share"]
    justify = ["left", "right", "right", "right"]
    widths = [60, 8, 8, 6]
    line_length = sum(widths) + 3 * len(widths) + 1
    rows = [[f"{' + '.join(r['layers'])} ({r['type']})", _ms(r["ms"]), _rate(r["gflops"]) if r["gflops"] else "-",
             _percent(r["share"])] for r in report["steps"]]
    threads = report["threads"]
    how = "the inference plan (specc/infer.py)" if report["plan"] else "Engine.forward(training=False)"
    lines = [f'Model: "{report["model"]}": one inference batch of {report["batch_size"]} on synthetic data by {how}, '
             f'{threads} thread{"s" * (threads != 1)}, medians of {report["iterations"]} batches',
             box_table(header, justify, widths, line_length, rows)]
    total = report["total_ms"]
    lines.append(f" Total: {_ms(total)} ms per batch, the sum of the rows; "
                 f"{_rate(report['flops_per_batch'] / total / 1e6) if total > 0 else '-'} GFLOP/s")
    lines.append(f" One batch (no clock): {_ms(report['batch_ms'])} ms, {report['samples_per_second']:,.0f} samples/s")
    if report["plan"]:
        lines.append(f" The layers apart (Engine.forward, training=False): {_ms(report['forward_ms'])} ms")
    return "\n".join(lines) + "\n"


def run(spec, batch: int | None, iters: int, threads: int | None, fmt: str) -> int:
    """`specc time --inference`: print the report; the exit code (train/session.py's codes)."""
    import json

    from .spec import render
    from .train.session import EXIT_INVALID, EXIT_OK, Failed, check_memory, threads_from_environment

    try:
        threads = threads or threads_from_environment()
    except Failed as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    from .spec.schema import FitDef

    batch = batch or (spec.fit or FitDef()).batch_size
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
