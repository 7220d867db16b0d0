"""Time from launching `specc train SPEC` to the end of its first training step, from an empty Numba cache
(a fresh NUMBA_CACHE_DIR) and then warm (the same cache, several runs), and what the cold run compiled.

    python bench/coldstart.py                                   # ResNet-50 at 64x64x3, batch 32, 2 threads
    python bench/coldstart.py --spec bench/workloads/cnn_train.yaml --threads 1 --warm-runs 5

Issue 21's targets for ResNet-50: <= 15 s cold, <= 1 s warm. The cold run is made with NUMBA_DEBUG_CACHE=1,
so Numba names every function it saves: the report counts the compiled signatures per kernel (a kernel
listed with many is compiled once per shape or layout it meets). Results go to
bench/results/coldstart-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from run import FIRST_STEP, machine, thread_env  # noqa: E402

SAVED = re.compile(r"\[cache\] data saved to '?(?P<path>[^'\s]+)")


def first_step(spec: str, threads: int, cache: str, tmp: str, debug: bool) -> dict:
    """Seconds from process start to the end of the first training step; the process stops there."""
    mark = os.path.join(tmp, "first-step.mark")
    if os.path.exists(mark):
        os.remove(mark)
    extra = {"NUMBA_CACHE_DIR": cache, "BENCH_MARK": mark, "BENCH_STOP_AFTER_FIRST": "1"}
    if debug:
        extra["NUMBA_DEBUG_CACHE"] = "1"
    cmd = [sys.executable, "-c", FIRST_STEP, "train", spec, "--quiet", "--out", os.path.join(tmp, "runs"),
           "--threads", str(threads), "--set", "fit.epochs=1"]
    t0 = time.time()
    proc = subprocess.run(cmd, env=thread_env(threads, extra), capture_output=True, text=True, timeout=3600)
    if not os.path.exists(mark):
        return {"error": proc.stderr[-3000:]}
    with open(mark, encoding="utf-8") as fh:
        result = {"first_step_s": float(fh.read()) - t0}
    if debug:
        saved = [m.group("path") for m in SAVED.finditer(proc.stdout + proc.stderr)]
        # <module>.<function>-<line>.py311.<n>.nbc: one file per compiled signature
        per_kernel = collections.Counter(re.sub(r"\.\d+\.nbc$", "", os.path.basename(p)) for p in saved)
        result["signatures_compiled"] = len(saved)
        result["per_kernel"] = dict(per_kernel.most_common())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=os.path.join(HERE, "workloads", "resnet50_train.yaml"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warm-runs", type=int, default=5)
    parser.add_argument("--out", default=None, help="result JSON (default: bench/results/coldstart-<time>.json)")
    args = parser.parse_args()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="specc-coldstart-") as tmp:
        cache = os.path.join(tmp, "numba-cache")
        os.makedirs(cache)
        cold = first_step(args.spec, args.threads, cache, tmp, debug=True)
        if "error" in cold:
            raise SystemExit(cold["error"])
        print(f"cold (empty NUMBA_CACHE_DIR): first step at {cold['first_step_s']:.1f} s, "
              f"{cold['signatures_compiled']} signatures compiled")
        warm = [first_step(args.spec, args.threads, cache, tmp, debug=False) for _ in range(args.warm_runs)]
        errors = [w["error"] for w in warm if "error" in w]
        if errors:
            raise SystemExit(errors[0])
        warm_s = [w["first_step_s"] for w in warm]
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
