"""Data-parallel training on this machine: samples/s of the MLP and CNN workloads (bench/workloads/) with
1 rank x 2 threads against 2 ranks x 1 thread, the time per step spent in the step's Allreduce, and the
loopback Allreduce latency and bandwidth the README's scaling model starts from.

    python bench/mpi.py                 # 5 interleaved runs of each configuration; a few minutes
    python bench/mpi.py --runs 3 --workloads mlp_train
    python bench/mpi.py --model bench/results/mpi-T.json [--steps-from bench/results/train-T.json]

Each run is a fresh process (or pair of processes under the bundled mpiexec) that fits the workload's
model on synthetic data (shuffle off) after a warm-up, as bench/run.py does. The configurations are run
alternately (A, B, A, B, ...) and medians reported: the machine is shared. Results go to
bench/results/mpi-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKLOADS = {"mlp_train": 12800, "cnn_train": 2560}  # samples timed per run
SIZES = [1, 1024, 16384, 131072, 1048576, 4194304]  # floats per Allreduce in the sweep


def child(args) -> None:
    """One run: fit the workload (under mpiexec when --mpi) and write rank 0's figures as JSON."""
    sys.path.insert(0, ROOT)
    import specc.runtime

    specc.runtime.prepare_process()
    import numpy as np

    from specc import distributed
    from specc.engine import Engine
    from specc.kernels import configure_threads
    from specc.spec import load_spec
    from specc.train.fit import Trainer

    if args.mpi:
        distributed.init()
    threads = configure_threads(args.threads)
    result: dict = {"ranks": distributed.size(), "threads": threads}
    if args.workload == "allreduce":
        w = distributed.init()
        from mpi4py import MPI

        sweep = {}
        for n in SIZES:
            buf = np.ones(n, np.float32)
            times = []
            for _ in range(max(5, min(200, 2 ** 24 // max(n, 1) // 8))):
                w.comm.Barrier()
                t = time.perf_counter()
                w.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
                times.append(time.perf_counter() - t)
            sweep[n] = statistics.median(times)
        result["allreduce_seconds"] = sweep
    else:
        spec, errors = load_spec(os.path.join(HERE, "workloads", f"{args.workload}.yaml"))
        assert not errors, errors
        rng = np.random.default_rng(0)
        n = args.samples
        x = rng.standard_normal((n, *spec.graph.inputs[0].output_shape)).astype(np.float32)
        y = rng.integers(0, 10, n)
        engine = Engine(spec.graph)
        engine.initialize(spec.seed)
        batch = spec.fit.batch_size
        warm = Trainer(engine, spec.compile, spec.seed)
        warm.fit(x[: 10 * batch], y[: 10 * batch], batch_size=batch, shuffle=False, verbose=0)
        trainer = Trainer(engine, spec.compile, spec.seed)
        t = time.perf_counter()
        trainer.fit(x, y, batch_size=batch, shuffle=False, verbose=0)
        seconds = time.perf_counter() - t
        parallel = trainer.parallel
        steps = -(-n // batch)
        result.update(samples_per_s=n / seconds, step_ms=1e3 * seconds / steps,
                      gradient_floats=int(engine.n_trainable),
                      allreduce_ms=(1e3 * parallel.reduce_seconds / parallel.steps) if parallel else 0.0)
    if distributed.rank() == 0:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh)


def run_once(workload: str, ranks: int, threads: int, samples: int) -> dict:
    from specc.distributed import find_mpiexec

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        command = [sys.executable, os.path.abspath(__file__), "--child", workload, "--threads", str(threads),
                   "--samples", str(samples), "--out", out]
        if ranks > 1:
            command = [find_mpiexec(), "-n", str(ranks), *command, "--mpi"]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run(command, check=True, env=env, cwd=ROOT)
        with open(out, encoding="utf-8") as fh:
            return json.load(fh)


# The scaling model's network: bandwidths (Gb/s) and an assumed per-message latency over TCP between
# machines (loopback's is far lower; a cluster's own figure belongs here when known).
NETWORKS_GBPS = (10, 25, 100)
NETWORK_LATENCY_S = 30e-6
MACHINES = (2, 8, 32, 128)


def ring_allreduce_seconds(n: int, nbytes: float, gbps: float, latency: float) -> float:
    """Ring allreduce of `nbytes` over n machines: reduce-scatter then all-gather, each n-1 steps that send
    nbytes/n: 2(n-1)/n x nbytes / bandwidth + 2(n-1) x latency."""
    return 2 * (n - 1) / n * nbytes / (gbps * 1e9 / 8) + 2 * (n - 1) * latency


def idle_steps(train_json: str) -> dict[str, float]:
    """Seconds per step of 128 samples of specc at 2 threads, from a bench/run.py result (taken on an idle
    machine, where this benchmark's own figures may not be)."""
    with open(train_json, encoding="utf-8") as fh:
        rows = json.load(fh)["rows"]
    return {r["workload"]: 128 / r["samples_per_s"]["median"] for r in rows
            if r["framework"] == "specc" and r["threads"] == 2}


def scaling_table(report: dict, steps: dict[str, float] | None = None) -> str:
    """Predicted step time and efficiency per workload, machine count and network, from the one-machine
    step (1 rank x 2 threads at the workload's batch per machine: weak scaling, the global batch growing
    with the machines; `steps` overrides the measured step), with no overlap of the Allreduce and the
    backward pass."""
    lines = []
    for workload, summary in report["workloads"].items():
        step = (steps or {}).get(workload, summary["1 rank x 2 threads"]["step_ms_median"] / 1e3)
        nbytes = 4 * summary["1 rank x 2 threads"]["gradient_floats"]
        lines.append(f"{workload}: {nbytes / 1e6:.2f} MB of gradients, {step * 1e3:.1f} ms a step on one machine")
        lines.append("  machines | " + " | ".join(f"{g:>3} Gb/s: step ms, efficiency" for g in NETWORKS_GBPS))
        for n in MACHINES:
            cells = []
            for g in NETWORKS_GBPS:
                t = step + ring_allreduce_seconds(n, nbytes, g, NETWORK_LATENCY_S)
                cells.append(f"{t * 1e3:19.1f} ms, {step / t:4.0%}")
            lines.append(f"  {n:>8} | " + " | ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--model", metavar="RESULT_JSON", help="print the scaling model of a saved result")
    parser.add_argument("--steps-from", metavar="TRAIN_JSON",
                        help="with --model: one machine's step time from a bench/run.py result instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--mpi", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.workload = args.child
        child(args)
        return
    if args.model:
        with open(args.model, encoding="utf-8") as fh:
            print(scaling_table(json.load(fh), idle_steps(args.steps_from) if args.steps_from else None))
        return
    sys.path.insert(0, ROOT)
    report: dict = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(), "workloads": {}}
    configs = {"1 rank x 2 threads": (1, 2), "2 ranks x 1 thread": (2, 1)}
    for workload in args.workloads.split(","):
        runs: dict[str, list[dict]] = {name: [] for name in configs}
        for _ in range(args.runs):
            for name, (ranks, threads) in configs.items():  # interleaved
                runs[name].append(run_once(workload, ranks, threads, WORKLOADS[workload]))
        summary = {}
        for name, results in runs.items():
            summary[name] = {
                "samples_per_s_median": statistics.median(r["samples_per_s"] for r in results),
                "samples_per_s": [round(r["samples_per_s"]) for r in results],
                "step_ms_median": statistics.median(r["step_ms"] for r in results),
                "allreduce_ms_median": statistics.median(r["allreduce_ms"] for r in results),
                "gradient_floats": results[0]["gradient_floats"]}
            s = summary[name]
            print(f"{workload:10s} {name:20s} {s['samples_per_s_median']:9.0f} samples/s  step "
                  f"{s['step_ms_median']:7.2f} ms  in Allreduce {s['allreduce_ms_median']:6.3f} ms  "
                  f"(runs: {s['samples_per_s']})", flush=True)
        report["workloads"][workload] = summary
    sweep = [run_once("allreduce", 2, 1, 0)["allreduce_seconds"] for _ in range(3)]
    report["allreduce_loopback_seconds"] = {n: statistics.median(s[str(n)] for s in sweep) for n in SIZES}
    for n, seconds in report["allreduce_loopback_seconds"].items():
        print(f"Allreduce of {n:>8} floats on 2 ranks (loopback): {seconds * 1e6:9.1f} us "
              f"({4 * n / seconds / 1e9:.2f} GB/s)")
    report["loadavg_end"] = os.getloadavg()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(HERE, "results", f"mpi-{stamp}.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    print(f"written to {path}")
    print(scaling_table(report))


if __name__ == "__main__":
    main()
