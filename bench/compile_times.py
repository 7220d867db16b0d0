"""Seconds Numba spends compiling each function during `specc train SPEC`'s first training step, from an
empty Numba cache (a fresh NUMBA_CACHE_DIR), measured with a numba.core.event listener for "numba:compile".

    python bench/compile_times.py --spec bench/workloads/cnn_train.yaml --threads 1 [--isa avx2] [--top 30]

A function's compile event encloses the compile of every callee it meets first, so each function is
reported with its own CPU seconds (self: its event minus the callee events nested in it) and its total
(total: the whole event). Also reported: the wall time to the end of the first step. The child process
runs the specc next to this script (PYTHONPATH is set to its tree).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CHILD = r"""
import collections, json, os, sys, time
t0 = float(os.environ["PROBE_T0"])
from numba.core import event

# name -> [self, total, count] in CPU seconds of this process (less sensitive to other processes' load than
# wall time; the compiles run on the calling thread)
stack, rows = [], collections.defaultdict(lambda: [0.0, 0.0, 0])

class Listener(event.Listener):
    def on_start(self, ev):
        stack.append([time.process_time(), 0.0])

    def on_end(self, ev):
        start, inner = stack.pop()
        took = time.process_time() - start
        if stack:
            stack[-1][1] += took
        disp = ev.data.get("dispatcher")
        py = getattr(disp, "py_func", None)
        name = f"{py.__module__}.{py.__qualname__}" if py is not None else repr(disp)
        row = rows[name]
        row[0] += took - inner
        row[1] += took
        row[2] += 1

event.register("numba:compile", Listener())

import specc.train.fit as F
_step = F.Trainer.train_step
def train_step(self, *args, **kwargs):
    out = _step(self, *args, **kwargs)
    result = {"first_step_s": time.time() - t0, "cpu_s": time.process_time(),
              "functions": {k: {"self_s": v[0], "total_s": v[1], "compiles": v[2]} for k, v in rows.items()}}
    with open(os.environ["PROBE_OUT"], "w") as fh:
        json.dump(result, fh)
    sys.stdout.flush()
    os._exit(0)
F.Trainer.train_step = train_step
from specc.cli import main
sys.argv = ["specc"] + sys.argv[1:]
main()
"""

AVX2 = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "", "OPENBLAS_CORETYPE": "Haswell"}


def probe(spec: str, threads: int, isa: str) -> dict:
    import time

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "probe.json")
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(tmp, "cache"), PROBE_OUT=out, PYTHONPATH=ROOT)
        if isa == "avx2":
            env.update(AVX2)
        cmd = [sys.executable, "-c", CHILD, "train", spec, "--quiet", "--out", os.path.join(tmp, "runs"),
               "--threads", str(threads), "--set", "fit.epochs=1"]
        env["PROBE_T0"] = repr(time.time())
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        if not os.path.exists(out):
            raise SystemExit(f"the probe failed:\n{proc.stderr[-3000:]}")
        with open(out, encoding="utf-8") as fh:
            return json.load(fh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=os.path.join(HERE, "workloads", "cnn_train.yaml"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", help="also write the full result here")
    args = parser.parse_args()
    result = probe(args.spec, args.threads, args.isa)
    functions = result["functions"]
    print(f"first step {result['first_step_s']:.2f} s wall, {result['cpu_s']:.2f} s CPU; compiling {sum(v['self_s'] for v in functions.values()):.2f} s CPU "
          f"in {sum(v['compiles'] for v in functions.values())} compiles")
    print(f"{'self s':>7} {'total s':>8} {'n':>3}  function")
    for name, v in sorted(functions.items(), key=lambda kv: -kv[1]["self_s"])[: args.top]:
        print(f"{v['self_s']:7.2f} {v['total_s']:8.2f} {v['compiles']:3d}  {name}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
