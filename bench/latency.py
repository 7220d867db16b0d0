"""Single-sample latency and batch-1024 throughput: specc's predict paths against ONNX Runtime running the
model specc exports, on the benchmark MLP (784-256-128-10) and CNN (bench/workloads/*.yaml).

    python bench/latency.py                       # threads 1 and 2, 3 process runs per cell
    python bench/latency.py --threads 1 --runs 1  # a quick look

Per workload x thread count x run, one fresh process (bench/run.py's thread environment) builds the model
from its spec with the spec's seeded initial weights (`specc.load`), exports it (`specc.export.build_onnx`)
into an ONNX Runtime session with that many intra-op threads (one inter-op thread, sequential execution,
all graph optimisations), checks that both give the same outputs, then times, interleaved round by round:

- batch 1: ONNX Runtime's `session.run`, specc's `model.predict(x[:1])` and `model(x[:1])`: the median
  time of a call, every call timed, over rounds of back-to-back calls on the same sample;
- batch 1024: samples/s from the fastest call of `session.run` on 1024 samples and of
  `model.predict(x[:1024], batch_size=1024)` (a call of several milliseconds on a shared machine is rarely
  left alone: its median measures the neighbours; the medians are in the file too); for the MLP also of its
  fused kernel alone (`DenseChain.predict`, "fused chain" in the file), which shows what predict adds.

Then, on one thread, the command line: the wall time of a whole `specc predict` process on one sample
against a Python process that imports ONNX Runtime, opens the exported file, runs it and saves the output
(`specc export` writes that file). Results go to bench/results/latency-<UTC time>.json.
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
sys.path.insert(0, ROOT)

WORKLOADS = {"mlp": "mlp_predict.yaml", "cnn": "cnn_train.yaml"}
ORT_SCRIPT = """import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions(); options.intra_op_num_threads = 1; options.inter_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])["x"]
np.savez(sys.argv[3], y=session.run(None, {session.get_inputs()[0].name: x})[0])
"""


def child(workload: str, threads: int, rounds: int, calls: int) -> dict:
    """One process's measurements (started by main with the thread environment set)."""
    import specc.runtime  # isort: skip

    specc.runtime.prepare_process()
    import numpy as np
    import onnxruntime as ort

    import specc
    from specc.export import build_onnx
    from specc.kernels import configure_threads
    from specc.train.fused import DenseChain

    configure_threads(threads)
    model = specc.load(os.path.join(HERE, "workloads", WORKLOADS[workload]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    onnx_model = build_onnx(model._engine(), model.name)
    session = ort.InferenceSession(onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shape = tuple(model.inputs[0].shape[1:])
    x = np.random.default_rng(0).standard_normal((1024, *shape)).astype(np.float32)
    x1 = x[:1]
    feed1, feed_big = {name: x1}, {name: x[:1024]}

    reference = session.run(None, {name: x[:64]})[0]
    ours = model.predict(x[:64], verbose=0)
    max_rel = float(np.max(np.abs(ours - reference) / np.maximum(np.abs(reference), 1e-6)))

    single = {
        "onnxruntime": lambda: session.run(None, feed1),
        "predict": lambda: model.predict(x1, verbose=0),
        "call": lambda: model(x1),
    }
    big = {
        "onnxruntime": lambda: session.run(None, feed_big),
        "predict": lambda: model.predict(x[:1024], batch_size=1024, verbose=0),
    }
    chain = DenseChain.cached(model._engine())
    if chain is not None:  # the MLP's fused kernel alone: what predict adds is the difference
        big["fused chain"] = lambda: chain.predict(x[:1024])
    per_call = _interleaved(single, rounds, calls)
    per_batch = _interleaved(big, rounds, max(calls // 60, 3))
    throughput = {k: [1024 / (t * 1e-6) for t in v] for k, v in per_batch.items()}
    return {"workload": workload, "threads": threads, "max_rel_diff": max_rel,
            "batch1_us": {k: statistics.median(v) for k, v in per_call.items()},
            "batch1_us_mean": {k: statistics.fmean(v) for k, v in per_call.items()},
            "batch1024_samples_per_s": {k: max(v) for k, v in throughput.items()},
            "batch1024_samples_per_s_median": {k: statistics.median(v) for k, v in throughput.items()},
            "onnxruntime": ort.__version__, "specc": specc.__version__}


def _interleaved(functions: dict, rounds: int, calls: int) -> dict[str, list[float]]:
    """Microseconds of every call, the functions taking turns round by round (after a warm-up). Each call is
    timed on its own so that the medians drop the calls another process on the machine interrupted: on a
    shared machine those make the mean several times the median, for every framework alike."""
    for f in functions.values():  # warm-up: kernels loaded, buffers made, caches hot
        for _ in range(max(calls // 4, 3)):
            f()
    clock = time.perf_counter
    times: dict[str, list[float]] = {k: [] for k in functions}
    for _ in range(rounds):
        for k, f in functions.items():
            out = times[k]
            for _ in range(calls):
                t = clock()
                f()
                out.append((clock() - t) * 1e6)
    return times


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                "SPECC_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_child(workload: str, threads: int, rounds: int, calls: int) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", workload, str(threads),
                           str(rounds), str(calls)], env=thread_env(threads), capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        return {"workload": workload, "threads": threads, "error": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def command_line(workload: str, runs: int, tmp: str) -> dict:
    """Wall seconds of a `specc predict` process on one sample vs a minimal ONNX Runtime script, one thread."""
    import numpy as np

    import specc

    spec = os.path.join(HERE, "workloads", WORKLOADS[workload])
    model = specc.load(spec)
    weights = os.path.join(tmp, f"{workload}.weights.npz")
    onnx_path = os.path.join(tmp, f"{workload}.onnx")
    model.save_weights(weights)
    env = thread_env(1)
    subprocess.run([sys.executable, "-m", "specc.cli", "export", spec, "--weights", weights, "-o", onnx_path],
                   env=env, check=True, capture_output=True)
    x = os.path.join(tmp, f"{workload}.x.npz")
    np.savez(x, x=np.random.default_rng(0).standard_normal((1, *model.inputs[0].shape[1:])).astype(np.float32))
    commands = {
        "specc predict": lambda out: [sys.executable, "-m", "specc.cli", "predict", spec, "--weights", weights,
                                      "--input", x, "--out", out],
        "onnxruntime script": lambda out: [sys.executable, "-c", ORT_SCRIPT, onnx_path, x, out],
    }
    import resource

    seconds: dict[str, list[float]] = {k: [] for k in commands}
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    for run in range(runs + 1):  # the first of each warms the file cache and Numba's cache; not counted
        for k, make in commands.items():
            out = os.path.join(tmp, f"{workload}-{k.replace(' ', '_')}-{run}.npz")
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(make(out), env=env, check=True, capture_output=True)
            wall = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if run:
                seconds[k].append(wall)
                cpu[k].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return ({k: statistics.median(v) for k, v in seconds.items()} |
            {"cpu_s": {k: statistics.median(v) for k, v in cpu.items()}, "wall_runs": seconds, "cpu_runs": cpu})


def table(results: list[dict], cli: dict) -> str:
    lines = ["| model | threads | ONNX Runtime batch 1 | specc predict(x[:1]) | specc model(x[:1]) | ONNX Runtime "
             "batch 1024 | specc predict batch 1024 |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['threads']} | failed | | | | |")
            continue
        b1, big = r["batch1_us"], r["batch1024_samples_per_s"]
        ort1 = b1["onnxruntime"]
        lines.append(f"| {r['workload'].upper()} | {r['threads']} | {ort1:.0f} µs | {b1['predict']:.0f} µs "
                     f"({b1['predict'] / ort1:.2f}x) | {b1['call']:.0f} µs ({b1['call'] / ort1:.2f}x) | "
                     f"{big['onnxruntime']:,.0f}/s | {big['predict']:,.0f}/s "
                     f"({big['predict'] / big['onnxruntime']:.2f}x) |")
    for workload, c in cli.items():
        lines.append(f"\n`specc predict` on one sample, whole process, {workload.upper()}: {c['specc predict']:.2f} s "
                     f"({c['cpu_s']['specc predict']:.2f} s CPU); a Python script running the exported model in "
                     f"ONNX Runtime: {c['onnxruntime script']:.2f} s ({c['cpu_s']['onnxruntime script']:.2f} s CPU)")
    return "\n".join(lines)


def measure(threads_list: list[int], runs: int, rounds: int, calls: int, workloads: list[str],
            cli_runs: int, log=print) -> tuple[list[dict], dict]:
    """Per workload x threads the median over `runs` processes of each figure, and the command-line times."""
    results = []
    for threads in threads_list:
        for workload in workloads:
            per_run = []
            for run in range(runs):
                r = run_child(workload, threads, rounds, calls)
                per_run.append(r)
                if "error" in r:
                    log(f"{workload} {threads}t run {run + 1}: FAILED\n{r['error']}")
                    continue
                log(f"{workload} {threads}t run {run + 1}/{runs}: batch 1 " +
                    ", ".join(f"{k} {v:.0f} us" for k, v in r["batch1_us"].items()) + "; batch 1024 " +
                    ", ".join(f"{k} {v:,.0f}/s" for k, v in r["batch1024_samples_per_s"].items()))
            ok = [r for r in per_run if "error" not in r]
            if not ok:
                results.append(per_run[0])
                continue
            results.append({
                "workload": workload, "threads": threads, "runs": per_run,
                "max_rel_diff": max(r["max_rel_diff"] for r in ok),
                "batch1_us": {k: statistics.median(r["batch1_us"][k] for r in ok) for k in ok[0]["batch1_us"]},
                "batch1024_samples_per_s": {k: statistics.median(r["batch1024_samples_per_s"][k] for r in ok)
                                            for k in ok[0]["batch1024_samples_per_s"]}})
    cli = {}
    if cli_runs:
        with tempfile.TemporaryDirectory(prefix="specc-latency-") as tmp:
            for workload in workloads:
                cli[workload] = command_line(workload, cli_runs, tmp)
                log(f"{workload} command line: " + ", ".join(f"{k} {cli[workload][k]:.2f} s ({v:.2f} s CPU)"
                                                             for k, v in cli[workload]["cpu_s"].items()))
    return results, cli


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        workload, threads, rounds, calls = sys.argv[2], *map(int, sys.argv[3:6])
        print(json.dumps(child(workload, threads, rounds, calls)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per cell (default 3)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds per process (default 9)")
    parser.add_argument("--calls", type=int, default=300, help="batch-1 calls per round (default 300; a hundredth "
                                                              "of it, at least 3, at batch 1024)")
    parser.add_argument("--workloads", default="mlp,cnn", help="comma-separated: mlp, cnn")
    parser.add_argument("--cli-runs", type=int, default=5, help="command-line process runs (0: skip)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    threads_list = sorted({int(t) for t in args.threads.split(",")})
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {sorted(unknown)}; known: {', '.join(WORKLOADS)}")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    from run import machine  # bench/run.py's description of the machine

    info = machine()
    started = dt.datetime.now(dt.timezone.utc)
    results, cli = measure(threads_list, args.runs, args.rounds, args.calls, workloads, args.cli_runs, log)
    text = table(results, cli)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"latency-{started.strftime('%Y%m%dT%H%M%SZ')}.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"command": " ".join(["python", "bench/latency.py", *sys.argv[1:]]), "machine": info,
                   "started": started.isoformat(), "results": results, "command_line": cli, "table": text},
                  fh, indent=1)
    log(f"results: {path}")


if __name__ == "__main__":
    main()
