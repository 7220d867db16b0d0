"""Time from launching `specc train SPEC` to the end of its first training step, from an empty Numba cache
(a fresh NUMBA_CACHE_DIR) and then warm (the same cache, several runs), and what the cold run compiled.

    python bench/coldstart.py                                   # ResNet-50 at 64x64x3, batch 32, 2 threads
    python bench/coldstart.py --spec bench/workloads/cnn_train.yaml --threads 1 --warm-runs 5

Issue 21's targets for ResNet-50: <= 15 s cold, <= 1 s warm. The time runs from launching the process to
the end of the first call of Trainer.train_step (batch 1's forward, backward and optimizer update, with
everything before it: Python's start, imports, spec, data, model build and weight init, compiles); the
process exits there. The report also gives the CPU seconds of that process (on a machine other jobs load,
they move less than the wall time; a compile worker's own CPU time is not in them) and counts the cache's
data files per kernel after the cold run: one per compiled signature, so a kernel listed with several is
compiled once per layout or dtype it meets. Results go to bench/results/coldstart-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from run import machine, thread_env  # noqa: E402

# `specc train` as a user runs it, with the end of its first training step marked: the hook goes in once the
# CLI has built the model (session._build), so this harness imports nothing before the CLI does (importing
# specc.train.fit up front would import Numba and the kernels before `specc train` starts its compile worker).
# The mark is the end of Trainer.train_step's first call (forward, backward and optimizer update of batch 1,
# its compiles included); the process exits there, before callbacks and run files.
FIRST_STEP = r"""
import os, sys, time
import specc.train.session as S
_build = S._build
def build(*args, **kwargs):
    job = _build(*args, **kwargs)
    F = sys.modules["specc.train.fit"]
    step = F.Trainer.train_step
    def train_step(self, *a, **k):
        out = step(self, *a, **k)
        with open(os.environ["BENCH_MARK"], "w") as fh:
            fh.write(repr(time.time()))
        sys.stdout.flush()
        os._exit(0)
    F.Trainer.train_step = train_step
    return job
S._build = build
from specc.cli import main
sys.argv = ["specc"] + sys.argv[1:]
main()
"""

def first_step(spec: str, threads: int, cache: str, tmp: str, debug: bool, worker: bool = True) -> dict:
    """Seconds from process start to the end of the first training step; the process stops there."""
    mark = os.path.join(tmp, "first-step.mark")
    if os.path.exists(mark):
        os.remove(mark)
    extra = {"NUMBA_CACHE_DIR": cache, "BENCH_MARK": mark}
    cmd = [sys.executable, "-c", FIRST_STEP, "train", spec, "--quiet", "--out", os.path.join(tmp, "runs"),
           "--threads", str(threads), "--set", "fit.epochs=1"]
    if not worker:
        extra["SPECC_COMPILE_WORKER"] = "0"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run(cmd, env=thread_env(threads, extra), capture_output=True, text=True, timeout=3600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not os.path.exists(mark):
        return {"error": proc.stderr[-3000:]}
    with open(mark, encoding="utf-8") as fh:
        result = {"first_step_s": float(fh.read()) - t0, "loadavg_1min": os.getloadavg()[0],
                  # CPU seconds of the `specc train` process itself (a compile worker's are not included)
                  "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}
    if debug:
        # <module>.<function>-<line>.py311.<n>.nbc: one file per compiled signature, whichever process
        # compiled it (the compile worker's output is not this process's)
        saved = [name for _, _, names in os.walk(cache) for name in names if name.endswith(".nbc")]
        per_kernel = collections.Counter(re.sub(r"\.\d+\.nbc$", "", name) for name in saved)
        result["signatures_compiled"] = len(saved)
        result["per_kernel"] = dict(per_kernel.most_common())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=os.path.join(HERE, "workloads", "resnet50_train.yaml"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warm-runs", type=int, default=5)
    parser.add_argument("--no-worker", action="store_true",
                        help="SPECC_COMPILE_WORKER=0: no compile worker (specc/train/warmup.py) on the cold run")
    parser.add_argument("--out", default=None, help="result JSON (default: bench/results/coldstart-<time>.json)")
    args = parser.parse_args()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="specc-coldstart-") as tmp:
        cache = os.path.join(tmp, "numba-cache")
        os.makedirs(cache)
        cold = first_step(args.spec, args.threads, cache, tmp, debug=True, worker=not args.no_worker)
        if "error" in cold:
            raise SystemExit(cold["error"])
        print(f"cold (empty NUMBA_CACHE_DIR): first step at {cold['first_step_s']:.1f} s "
              f"({cold['cpu_s']:.1f} CPU s in `specc train` itself), {cold['signatures_compiled']} signatures "
              f"compiled")
        warm = [first_step(args.spec, args.threads, cache, tmp, debug=False) for _ in range(args.warm_runs)]
        errors = [w["error"] for w in warm if "error" in w]
        if errors:
            raise SystemExit(errors[0])
        warm_s = [w["first_step_s"] for w in warm]
        cold["warm_cpu_s"] = [w["cpu_s"] for w in warm]
        print(f"warm: first step at {statistics.median(warm_s):.2f} s median of {len(warm_s)} "
              f"(min {min(warm_s):.2f}, max {max(warm_s):.2f})")
    print("kernels compiled more than once (signatures):")
    for name, n in cold["per_kernel"].items():
        if n > 1:
            print(f"  {n:3d}  {name}")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or os.path.join(HERE, "results", f"coldstart-{stamp}.json")
    record = {"command": " ".join(["python", "bench/coldstart.py"] + sys.argv[1:]), "spec": os.path.relpath(args.spec, ROOT),
              "threads": args.threads, "cold": cold,
              "warm": {"runs": warm_s, "median": statistics.median(warm_s)}, "machine": info,
              "loadavg_end": os.getloadavg()}
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1)
    print(f"-> {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
