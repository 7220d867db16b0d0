"""specc's training benchmark: the workloads in bench/workloads/*.yaml, run by specc and by the equivalent
PyTorch (and, if installed, Keras 3 on the torch backend) code, side by side in one invocation.

    python bench/run.py                  # 6 process runs per framework x workload x thread count (1 and 2)
    python bench/run.py --quick          # 2 runs, fewer samples: a few minutes
    python bench/run.py --threads 2 --workloads mlp_train,cnn_train --frameworks specc,torch
    python bench/run.py --latency        # and single-sample latency vs ONNX Runtime (bench/latency.py)

Every framework x workload x thread count x run is a fresh subprocess (clean thread pools, clean peak RSS)
that loads the same arrays and the same initial weights (drawn by specc's Engine.initialize from the
spec's seed), warms up, then times one fit (shuffle off: the same batch order everywhere) or one predict.
The table shows samples/s min / median / max over the runs, the median over runs of the paired ratio
(run i of specc / run i of torch), and the loss-trajectory check: specc's and Keras's per-step losses,
averaged over windows of steps, against PyTorch's. Then start-up times and peak RSS. Everything, with
the machine's lscpu model and flags, goes to bench/results/train-<UTC time>.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# name: spec file, kind, the model the torch/keras code builds, (quick samples, quick epochs)
WORKLOADS = {
    "mlp_train": ("mlp_train.yaml", "train", "mlp", (12800, 1)),
    "cnn_train": ("cnn_train.yaml", "train", "cnn", (2560, 1)),
    "mlp_predict": ("mlp_predict.yaml", "predict", "mlp", (20480, 1)),
    "tiny_mlp_train": ("tiny_mlp_train.yaml", "train", "tiny", (20000, 1)),
    # real architectures (specs written by bench/zoo.py), on request only: --workloads resnet20,...
    "resnet20": ("resnet20_train.yaml", "train", "resnet20", (640, 1)),
    "mobilenetv2": ("mobilenetv2_train.yaml", "train", "mobilenetv2", (640, 1)),
    "resnet50": ("resnet50_train.yaml", "train", "resnet50", (320, 1)),
    "transformer": ("transformer_train.yaml", "train", "transformer", (640, 1)),
    # inference at the training spec's batch size (32), softmax outputs compared
    "resnet20_predict": ("resnet20_train.yaml", "predict", "resnet20", (640, 1)),
    "resnet50_predict": ("resnet50_train.yaml", "predict", "resnet50", (320, 1)),
    "transformer_predict": ("transformer_train.yaml", "predict", "transformer", (1280, 1)),
    # text models, on request only: token ids -> Embedding -> LSTM or GRU -> Dense (token_data below)
    "lstm_text": ("lstm_text.yaml", "train", "lstm_text", (1280, 1)),
    "gru_text": ("gru_text.yaml", "train", "gru_text", (1280, 1)),
}
DEFAULT_WORKLOADS = ("mlp_train", "cnn_train", "mlp_predict", "tiny_mlp_train")
KERAS_MODELS = ("mlp", "cnn", "tiny")  # what bench/keras_workloads.py builds
CHILD = {"specc": "specc_workloads.py", "torch": "torch_workloads.py", "keras": "keras_workloads.py"}
WARMUP_STEPS = {"train": 10, "predict": 2}
START_SPEC = os.path.join(ROOT, "specs", "digits_mlp.yaml")  # the README's default job
COMPILE_SPEC = os.path.join(HERE, "workloads", "cnn_train.yaml")


# --- the machine -------------------------------------------------------------------------------------------


def machine() -> dict:
    info: dict = {"platform": platform.platform(), "python": platform.python_version(),
                  "cpu_count": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
                  "loadavg_start": os.getloadavg()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
        info.update(cpu_model=fields.get("Model name"), cpu_flags=fields.get("Flags", "").split(),
                    cores_per_socket=fields.get("Core(s) per socket"), sockets=fields.get("Socket(s)"),
                    threads_per_core=fields.get("Thread(s) per core"), hypervisor=fields.get("Hypervisor vendor"),
                    caches={k: v for k, v in fields.items() if k.endswith("cache")})
    except (OSError, subprocess.CalledProcessError):
        info["cpu_model"] = platform.processor() or "unknown"
    versions = {}
    for dist in ("specc", "numpy", "numba", "llvmlite", "torch", "keras"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    info["versions"] = versions
    try:
        info["specc_git"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                                           text=True).stdout.strip() or None
        info["specc_git_dirty"] = bool(subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "specc"],
                                                      capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    return info


def keras_available() -> bool:
    if importlib.util.find_spec("keras") is None or importlib.util.find_spec("torch") is None:
        return False
    probe = subprocess.run([sys.executable, "-c", "import keras"], env=dict(os.environ, KERAS_BACKEND="torch"),
                           capture_output=True)
    return probe.returncode == 0


# --- preparing a workload: the same arrays and initial weights for every framework ------------------------


def prepare(name: str, samples: int, epochs: int, tmp: str) -> dict:
    """Loads the workload's spec, builds its data with specc's own loader (synthetic, fixed seed, test_split
    0), draws the initial weights with specc's Engine, and writes them to one .npz for all the children."""
    from specc.data.prepare import load
    from specc.engine import Engine
    from specc.spec import load_spec

    spec_file, kind, model, _ = WORKLOADS[name]
    path = os.path.join(HERE, "workloads", spec_file)
    spec, errors = load_spec(path)
    if errors:
        raise SystemExit("\n".join(str(e) for e in errors))
    full = spec.data.samples
    data = load(spec)
    x, y = data.x_train[0][:samples], data.y_train[0][:samples]
    engine = Engine(spec.graph)
    engine.initialize(spec.seed)
    x, y = token_data(engine, spec, x, y)
    weights = engine.get_weights()
    data_path = os.path.join(tmp, f"{name}-{samples}.npz")
    np.savez(data_path, x=x, y=y, **{f"w{k}": w for k, w in enumerate(weights)})
    from specc.train.optimizers import make_optimizer

    opt = spec.compile.optimizer
    opt_name = opt if isinstance(opt, str) else opt.type
    set_args = {} if isinstance(opt, str) else {k: v for k, v in opt.model_dump().items() if v is not None}
    extra = set(set_args) - {"type", "learning_rate", "beta_1", "beta_2", "epsilon", "momentum"}
    if opt_name not in ("adam", "sgd") or extra or set_args.get("nesterov"):
        raise SystemExit(f"{path}: torch_workloads.py/keras_workloads.py implement adam and sgd with a constant "
                         f"learning rate only (got {opt_name} with {sorted(extra)})")
    o = make_optimizer(opt, engine.variable_offsets, engine.dtype)  # Keras's defaults, resolved by specc
    optimizer = {"type": opt_name, "learning_rate": float(o.learning_rate),
                 **{k: float(getattr(o, k)) for k in ("beta_1", "beta_2", "epsilon", "momentum") if hasattr(o, k)}}
    return {"workload": name, "kind": kind, "model": model, "spec_path": path, "data_path": data_path,
            "n_weights": len(weights), "samples": int(len(x)), "spec_samples": full, "epochs": epochs,
            "batch_size": spec.fit.batch_size, "loss": spec.compile.loss, "optimizer": optimizer,
            "input_shape": list(spec.graph.inputs[0].output_shape), "warmup_steps": WARMUP_STEPS[kind]}


def token_data(engine, spec, x, y):
    """For a model whose input an Embedding reads, synthetic Gaussians are no ids: token ids uniform in
    [0, input_dim) from the spec's seed instead (as float32, what specc feeds its engine), each sample
    labelled by its last token's bucket of `data.classes` (something an LSTM or GRU can learn)."""
    vocab = [s.layer.input_dim for s in engine.steps if s.layer.type == "Embedding"
             and engine.graph.inputs[0].name in s.inbound]
    if not vocab:
        return x, y
    ids = np.random.default_rng(spec.seed).integers(0, vocab[0], x.shape)
    classes = spec.data.classes or int(y.max()) + 1
    return ids.astype(np.float32), (ids[:, -1] * classes // vocab[0]).astype(y.dtype)


# --- children ----------------------------------------------------------------------------------------------


# --isa avx2: every framework restricted to AVX2 (+FMA) on an AVX-512 machine, as on most laptops and AMD
# Zen 2/3 servers: Numba compiles for Haswell (and specc's BLAS uses its Haswell kernels); PyTorch's ATen
# dispatch, oneDNN and MKL (its Linear layers' products) stop at AVX2.
ISA_ENV = {
    "native": {},
    "avx2": {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "", "OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2",
             "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
ISA = "native"  # set by main from --isa


def thread_env(threads: int, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(ISA_ENV[ISA])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    env["KERAS_BACKEND"] = "torch"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def run_child(framework: str, config: dict, threads: int, tmp: str, timeout: float) -> dict:
    config = dict(config, threads=threads, framework=framework)
    stem = os.path.join(tmp, f"{framework}-{config['workload']}-{threads}t")
    with open(stem + ".config.json", "w", encoding="utf-8") as fh:
        json.dump(config, fh)
    if os.path.exists(stem + ".result.json"):
        os.remove(stem + ".result.json")
    load = os.getloadavg()[0]
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, os.path.join(HERE, CHILD[framework]), stem + ".config.json",
                               stem + ".result.json"], env=thread_env(threads), capture_output=True, text=True,
                              timeout=timeout)
        failed = proc.returncode != 0 or not os.path.exists(stem + ".result.json")
        err = proc.stderr[-3000:] if failed else None
    except subprocess.TimeoutExpired:
        failed, err = True, f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - t
    if failed:
        return {"framework": framework, "workload": config["workload"], "threads": threads, "error": err,
                "wall_s": wall}
    with open(stem + ".result.json", encoding="utf-8") as fh:
        result = json.load(fh)
    result.update(workload=config["workload"], wall_s=wall, loadavg_start=load)
    return result


# --- checks --------------------------------------------------------------------------------------------------


def windows(losses: list[float], n_windows: int = 20) -> tuple[int, list[float]]:
    size = max(1, len(losses) // n_windows)
    return size, [float(np.mean(losses[s: s + size])) for s in range(0, len(losses), size)]


def compare_losses(a: list[float], b: list[float]) -> dict:
    """a against the reference b: relative differences of step 1 and of every window mean."""
    if len(a) != len(b):
        return {"ok": False, "why": f"{len(a)} steps vs {len(b)}"}
    size, wa = windows(a)
    _, wb = windows(b)
    rel = [abs(p - q) / max(abs(q), 1e-12) for p, q in zip(wa, wb)]
    return {"window_steps": size, "step1_rel": abs(a[0] - b[0]) / max(abs(b[0]), 1e-12), "max_rel": max(rel),
            "last_rel": rel[-1], "first_window": wa[0], "last_window": wa[-1], "ref_last_window": wb[-1]}


def compare_predictions(a: dict, b: dict) -> dict:
    head_a, head_b = np.asarray(a["pred_head"]), np.asarray(b["pred_head"])
    return {"max_abs": float(np.max(np.abs(head_a - head_b))),
            "sum_rel": abs(a["pred_sum"] - b["pred_sum"]) / max(abs(b["pred_sum"]), 1e-12)}


def reference_noise(runs_ref: list[dict], runs_other: list[dict]) -> float | None:
    """How far the reference framework's own loss trajectory moves (worst pair) between runs that differ only
    in rounding: 1 vs n threads (float32 sums in another order), or float32 vs float64. Compounded over
    hundreds of optimizer steps, rounding differences grow: on the full MLP workload PyTorch's float32 and
    float64 trajectories differ by ~3e-3 of the loss (bench/README.md). Two correct float32 implementations
    can differ by as much, so a trajectory is not expected to match another framework's more closely than
    that framework's float32 matches its own float64."""
    pairs = [(a, b) for a, b in zip(runs_ref, runs_other) if "error" not in a and "error" not in b]
    rels = [compare_losses(a["step_losses"], b["step_losses"]).get("max_rel") for a, b in pairs]
    rels = [r for r in rels if r is not None]
    return max(rels) if rels else None


def check_row(kind: str, runs_fw: list[dict], runs_ref: list[dict], tol: float, pred_tol: float,
              noise: dict | None = None) -> dict:
    """Every paired run must agree; the worst pair is reported. The tolerance is the larger of `tol` and
    twice the reference's own noise (`noise`: its 1-thread vs n-thread difference, and its float32 vs
    float64 difference; see reference_noise). The first step is held to `tol` regardless: nothing has
    compounded yet, so a forward pass or loss that differs shows there."""
    pairs = [(a, b) for a, b in zip(runs_fw, runs_ref) if "error" not in a and "error" not in b]
    if not pairs:
        return {"status": "n/a"}
    if kind == "predict":
        cmp = [compare_predictions(a, b) for a, b in pairs]
        worst = max(c["max_abs"] for c in cmp)
        return {"status": "PASS" if worst <= pred_tol else "FAIL", "max_abs": worst, "tol": pred_tol,
                "pairs": cmp}
    cmp = [compare_losses(a["step_losses"], b["step_losses"]) for a, b in pairs]
    if any("why" in c for c in cmp):
        return {"status": "FAIL", "pairs": cmp}
    worst = max(c["max_rel"] for c in cmp)
    noise = noise or {}
    known = [v for v in noise.values() if v is not None]
    allowed = max([tol] + [2 * v for v in known])
    step1 = max(c["step1_rel"] for c in cmp)
    ok = worst <= allowed and step1 <= tol
    return {"status": "PASS" if ok else "FAIL", "max_rel": worst, "tol": allowed, "base_tol": tol,
            "reference_thread_noise": noise.get("threads"), "reference_float64_noise": noise.get("float64"),
            "step1_rel": step1, "pairs": cmp}


# --- start-up, compile time ---------------------------------------------------------------------------------

FIRST_STEP = r"""
import os, sys, time
import specc.train.fit as F
_step = F.Trainer.train_step
def train_step(self, *args, **kwargs):
    out = _step(self, *args, **kwargs)
    if not getattr(F, "_bench_first", False):
        F._bench_first = True
        with open(os.environ["BENCH_MARK"], "w") as fh:
            fh.write(repr(time.time()))
        if os.environ.get("BENCH_STOP_AFTER_FIRST") == "1":
            sys.stdout.flush()
            os._exit(0)
    return out
F.Trainer.train_step = train_step
from specc.cli import main
sys.argv = ["specc"] + sys.argv[1:]
main()
"""


def specc_command() -> list[str]:
    script = os.path.join(sysconfig.get_path("scripts"), "specc")
    return [script] if os.path.exists(script) else [sys.executable, os.path.join(ROOT, "cli.py")]


def time_train(spec: str, args: list[str], threads: int, tmp: str, stop_after_first: bool,
               extra_env: dict | None = None) -> dict:
    """Wall time from launching `specc train` to the end of its first training step (and to exit)."""
    mark = os.path.join(tmp, "first-step.mark")
    if os.path.exists(mark):
        os.remove(mark)
    env = thread_env(threads, dict(extra_env or {}, BENCH_MARK=mark,
                                   BENCH_STOP_AFTER_FIRST="1" if stop_after_first else "0"))
    cmd = [sys.executable, "-c", FIRST_STEP, "train", spec, "--quiet", "--out", os.path.join(tmp, "runs"),
           "--threads", str(threads), *args]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    total = time.time() - t0
    if proc.returncode != 0 or not os.path.exists(mark):
        return {"error": proc.stderr[-2000:]}
    with open(mark, encoding="utf-8") as fh:
        first = float(fh.read()) - t0
    return {"first_step_s": first, "total_s": total}


def startup(threads_list: list[int], runs: int, tmp: str, log) -> dict:
    out: dict = {}
    cmd = specc_command() + ["summary", START_SPEC]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, env=thread_env(threads_list[0]))
        times.append(time.perf_counter() - t)
    out["summary"] = {"command": " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd),
                      **stats(times)}
    log(f"start-up: specc summary {stats(times)['median']:.2f} s")

    # warm cache first (a throwaway run), then time to the first step
    time_train(START_SPEC, [], threads_list[0], tmp, stop_after_first=True)
    out["first_step_warm"] = {}
    for threads in threads_list:
        firsts = [time_train(START_SPEC, [], threads, tmp, stop_after_first=True) for _ in range(runs)]
        ok = [f["first_step_s"] for f in firsts if "error" not in f]
        out["first_step_warm"][str(threads)] = {"spec": os.path.relpath(START_SPEC, ROOT), **stats(ok),
                                                "errors": [f["error"] for f in firsts if "error" in f]}
        log(f"start-up: specc train -> first step, warm cache, {threads} thread(s): "
            f"{stats(ok)['median'] if ok else float('nan'):.2f} s")

    # cold compile: a fresh NUMBA_CACHE_DIR, the CNN spec on a few samples, then the same again warm
    threads = threads_list[-1]
    cache = tempfile.mkdtemp(prefix="numba-cache-", dir=tmp)
    args = ["--set", "data.samples=640", "--set", "fit.epochs=1"]
    cold = time_train(COMPILE_SPEC, args, threads, tmp, False, {"NUMBA_CACHE_DIR": cache})
    warm = time_train(COMPILE_SPEC, args, threads, tmp, False, {"NUMBA_CACHE_DIR": cache})
    entry = {"spec": os.path.relpath(COMPILE_SPEC, ROOT), "args": " ".join(args), "threads": threads,
             "cold": cold, "warm": warm}
    if "error" not in cold and "error" not in warm:
        entry["compile_s"] = cold["total_s"] - warm["total_s"]
        entry["cache_files"] = sum(len(f) for _, _, f in os.walk(cache))
        log(f"start-up: CNN spec, fresh NUMBA_CACHE_DIR: {cold['total_s']:.1f} s (first step at "
            f"{cold['first_step_s']:.1f} s), same again warm: {warm['total_s']:.1f} s")
    out["cold_compile_cnn"] = entry
    return out


# --- reporting -------------------------------------------------------------------------------------------------


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}


def fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--runs", type=int, default=None, help="process runs per cell (default 6; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="2 runs and fewer samples: a few minutes")
    parser.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                        help=f"comma-separated, of {', '.join(WORKLOADS)} (default {','.join(DEFAULT_WORKLOADS)})")
    parser.add_argument("--frameworks", default="specc,torch,keras",
                        help="comma-separated; torch/keras are skipped when not installed")
    parser.add_argument("--tol", type=float, default=1e-3, help="relative tolerance of the loss check")
    parser.add_argument("--pred-tol", type=float, default=1e-5, help="absolute tolerance on probabilities")
    parser.add_argument("--no-startup", action="store_true", help="skip start-up, compile and RSS extras")
    parser.add_argument("--latency", action="store_true",
                        help="also batch-1 latency and batch-1024 throughput of the MLP and CNN against ONNX "
                             "Runtime on the models specc exports (bench/latency.py; needs onnxruntime)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per child process")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--isa", choices=sorted(ISA_ENV), default="native",
                        help="avx2: every framework restricted to AVX2 (see ISA_ENV)")
    args = parser.parse_args()
    global ISA
    ISA = args.isa
    runs = args.runs or (2 if args.quick else 6)
    cores = len(os.sched_getaffinity(0))
    threads_list = sorted({int(t) for t in args.threads.split(",")})
    too_many = [t for t in threads_list if t > cores]
    if too_many:
        print(f"note: this process may use {cores} core(s); {too_many} thread(s) oversubscribe", file=sys.stderr)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    frameworks = ["specc"]
    wanted = [f.strip() for f in args.frameworks.split(",")]
    if "torch" in wanted:
        if importlib.util.find_spec("torch"):
            frameworks.append("torch")
        else:
            print("PyTorch not installed: timing specc alone (no ratios, no loss check)", file=sys.stderr)
    if "keras" in wanted:
        if keras_available():
            frameworks.append("keras")
        else:
            print("Keras 3 (torch backend) not importable: no Keras column", file=sys.stderr)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    info = machine()
    started = dt.datetime.now(dt.timezone.utc)
    log(f"{info.get('cpu_model')}, {cores} core(s) usable, load average {info['loadavg_start'][0]:.2f}; "
        f"{runs} run(s), threads {threads_list}, frameworks {frameworks}")
    tmp = tempfile.mkdtemp(prefix="specc-bench-")
    raw: list[dict] = []
    try:
        configs = {}
        for name in workloads:
            spec_samples_epochs = None
            if args.quick:
                spec_samples_epochs = WORKLOADS[name][3]
            configs[name] = prepare_with(name, spec_samples_epochs, tmp)
            log(f"prepared {name}: {configs[name]['samples']} samples x {configs[name]['epochs']} epoch(s), "
                f"batch {configs[name]['batch_size']}")
        for threads in threads_list:
            for name in workloads:
                for run in range(runs):
                    order = frameworks[run % len(frameworks):] + frameworks[: run % len(frameworks)]
                    for fw in order:
                        if fw == "keras" and configs[name]["model"] not in KERAS_MODELS:
                            continue  # interleaved and rotated, so drifting machine load hits all alike
                        r = run_child(fw, configs[name], threads, tmp, args.timeout)
                        r["run"] = run
                        raw.append(r)
                        log(f"{name:15} {threads}t run {run + 1}/{runs} {fw:6} " +
                            (f"{r['samples_per_s']:>10,.0f} samples/s  ({r['seconds']:.2f} s timed, "
                             f"{r['wall_s']:.1f} s process, RSS {r['peak_rss_mb']:.0f} MB)"
                             if "error" not in r else "FAILED:\n" + r["error"]))
                if "torch" in frameworks and configs[name]["kind"] == "train" and threads == threads_list[0]:
                    # one more PyTorch run, in float64: how far float32 rounding alone moves PyTorch's own
                    # loss trajectory over the whole job (see reference_noise and check_row)
                    r = run_child("torch", dict(configs[name], float64=True), threads, tmp, args.timeout)
                    r.update(run=0, framework="torch-float64")
                    raw.append(r)
                    log(f"{name:15} {threads}t reference noise: torch in float64" +
                        ("" if "error" not in r else " FAILED:\n" + r["error"]))

        extras: dict = {}
        if not args.no_startup:
            extras["startup"] = startup(threads_list, runs, tmp, log)
            # peak RSS of the MLP on the full spec data (60k samples): reuse the table's runs when they are
            # the full job, otherwise one dedicated run per framework at the largest thread count
            if "mlp_train" in workloads and not args.quick:
                mem_runs = [r for r in raw if r["workload"] == "mlp_train" and "error" not in r]
                mem_samples = configs["mlp_train"]["samples"]
            else:
                cfg = prepare_with("mlp_train", None, tmp)
                mem_samples = cfg["samples"]
                mem_runs = []
                for fw in [f for f in frameworks if f in ("specc", "torch")]:
                    r = run_child(fw, cfg, threads_list[-1], tmp, args.timeout)
                    mem_runs.append(r)
                    log(f"peak RSS, mlp_train on {mem_samples} samples, {fw}: " +
                        (f"{r['peak_rss_mb']:.0f} MB" if "error" not in r else "FAILED\n" + r["error"]))
            memory = {"samples": mem_samples}
            for fw in frameworks:
                for threads in threads_list:
                    vals = [r["peak_rss_mb"] for r in mem_runs
                            if r["framework"] == fw and r["threads"] == threads and "error" not in r]
                    if vals:
                        memory.setdefault(fw, {})[str(threads)] = stats(vals)
            extras["peak_rss_mlp_train"] = memory
        if args.latency:
            import latency  # bench/latency.py: each cell in fresh processes of its own

            results, cli = latency.measure(threads_list, min(runs, 3), 9, 300, list(latency.WORKLOADS),
                                           1 if args.quick else 3, log)
            extras["latency"] = {"results": results, "command_line": cli, "table": latency.table(results, cli)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # --- the table
    rows = []
    for threads in threads_list:
        for name in workloads:
            kind = configs[name]["kind"]
            by_fw = {fw: sorted([r for r in raw if r["workload"] == name and r["threads"] == threads and
                                 r["framework"] == fw], key=lambda r: r["run"]) for fw in frameworks}
            for fw in frameworks:
                ok = [r for r in by_fw[fw] if "error" not in r]
                rates = [r["samples_per_s"] for r in ok]
                row = {"workload": name, "threads": threads, "framework": fw,
                       "samples_per_s": stats(rates), "peak_rss_mb": stats([r["peak_rss_mb"] for r in ok]),
                       "failed_runs": len(by_fw[fw]) - len(ok)}
                if "torch" in by_fw and fw != "torch":
                    paired = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(by_fw[fw], by_fw["torch"])
                              if "error" not in a and "error" not in b]
                    row["ratio_vs_torch"] = stats(paired)
                    noise = {}
                    if kind == "train" and threads != 1 and 1 in threads_list:
                        torch_1t = sorted([r for r in raw if r["workload"] == name and r["threads"] == 1 and
                                           r["framework"] == "torch"], key=lambda r: r["run"])
                        noise["threads"] = reference_noise(by_fw["torch"], torch_1t)
                    if kind == "train":
                        wide = [r for r in raw if r["workload"] == name and r["framework"] == "torch-float64"]
                        noise["float64"] = reference_noise(by_fw["torch"][:1], wide)
                    row["check_vs_torch"] = check_row(kind, by_fw[fw], by_fw["torch"], args.tol, args.pred_tol,
                                                      noise)
                if fw == "specc" and kind == "train" and len(ok) > 1:
                    row["specc_repeatable"] = all(r["step_losses"] == ok[0]["step_losses"] for r in ok[1:])
                if fw == "specc" and kind == "train" and ok and "step_alloc_bytes" in ok[0]:
                    row["step_alloc_bytes_max"] = max(r["step_alloc_bytes"] for r in ok)
                rows.append(row)

    header = (f"{'workload':15} {'thr':>3} {'framework':9} {'samples/s min':>13} {'median':>10} {'max':>10} "
              f"{'÷ torch':>8} {'RSS MB':>7}  loss check vs torch")
    print()
    print(f"specc benchmark  {started:%Y-%m-%d %H:%M} UTC  cpu: {info.get('cpu_model')} ({cores} cores usable)  "
          f"runs: {runs}{'  (--quick)' if args.quick else ''}  load avg at start: {info['loadavg_start'][0]:.2f}")
    print(header)
    print("-" * len(header))
    for row in rows:
        s = row["samples_per_s"]
        ratio = row.get("ratio_vs_torch", {}).get("median")
        chk = row.get("check_vs_torch")
        if chk is None or chk["status"] == "n/a":
            check = ""
        elif "max_rel" in chk:
            check = f"{chk['status']} (max rel {chk['max_rel']:.1e}, step 1 {chk['step1_rel']:.0e}"
            if chk.get("reference_thread_noise") is not None:
                check += f", torch 1t vs {row['threads']}t {chk['reference_thread_noise']:.0e}"
            if chk.get("reference_float64_noise") is not None:
                check += f", torch f32 vs f64 {chk['reference_float64_noise']:.0e}"
            check += ")"
        elif "max_abs" in chk:
            check = f"{chk['status']} (max |Δp| {chk['max_abs']:.1e})"
        else:
            check = chk["status"]
        if row.get("specc_repeatable") is False:
            check += "  [specc NOT repeatable run to run]"
        if row["failed_runs"]:
            check += f"  [{row['failed_runs']} failed run(s)]"
        if "step_alloc_bytes_max" in row:
            check += f"  alloc/step {row['step_alloc_bytes_max'] / 1024:.1f} KB"
        print(f"{row['workload']:15} {row['threads']:>3} {row['framework']:9} {fmt_rate(s.get('min')):>13} "
              f"{fmt_rate(s.get('median')):>10} {fmt_rate(s.get('max')):>10} "
              f"{(f'{ratio:.2f}' if ratio is not None else ('1.00' if row['framework'] == 'torch' else '-')):>8} "
              f"{row['peak_rss_mb'].get('median', float('nan')):>7.0f}  {check}")
    if not args.no_startup:
        st = extras["startup"]
        print()
        print(f"start-up   specc summary {os.path.relpath(START_SPEC, ROOT)}: "
              f"median {st['summary']['median']:.2f} s (min {st['summary']['min']:.2f}, max {st['summary']['max']:.2f})")
        for threads, v in st["first_step_warm"].items():
            if v.get("n"):
                print(f"           specc train {v['spec']} -> end of first step, warm Numba cache, {threads}t: "
                      f"median {v['median']:.2f} s (min {v['min']:.2f}, max {v['max']:.2f})")
        cc = st["cold_compile_cnn"]
        if "compile_s" in cc:
            print(f"           specc train {cc['spec']} ({cc['args']}), fresh NUMBA_CACHE_DIR: {cc['cold']['total_s']:.1f} s "
                  f"(first step at {cc['cold']['first_step_s']:.1f} s); warm: {cc['warm']['total_s']:.1f} s "
                  f"(first step at {cc['warm']['first_step_s']:.1f} s) -> compile ≈ {cc['compile_s']:.1f} s")
        else:
            print(f"           cold compile run failed: {cc}")
        mem = extras["peak_rss_mlp_train"]
        parts = [f"{fw} {t}t {v['median']:.0f} MB" for fw in frameworks for t, v in mem.get(fw, {}).items()]
        print(f"peak RSS   mlp_train on {mem['samples']} samples (whole process, VmHWM): " + ", ".join(parts))

    if "latency" in extras:
        print("\nlatency vs ONNX Runtime (bench/latency.py):\n" + extras["latency"]["table"])

    # --- the file
    os.makedirs(args.out, exist_ok=True)
    for r in raw:  # keep the file small: window means instead of every step
        if "step_losses" in r:
            losses = r.pop("step_losses")
            r["loss_window_steps"], r["loss_windows"] = windows(losses)
            r["loss_first_steps"] = losses[:5]
        r.pop("pred_head", None)
    info["loadavg_end"] = os.getloadavg()
    info["isa"] = {"name": ISA, "environment": ISA_ENV[ISA]}
    doc = {"created_utc": started.isoformat(timespec="seconds"), "command": " ".join(sys.argv),
           "mode": "quick" if args.quick else "full", "runs": runs, "threads": threads_list,
           "frameworks": frameworks, "tolerance": {"loss_rel": args.tol, "pred_abs": args.pred_tol},
           "machine": info, "workloads": {k: {kk: vv for kk, vv in v.items() if kk != "data_path"}
                                          for k, v in configs.items()},
           "rows": rows, **extras, "raw": raw}
    path = os.path.join(args.out, f"train-{started:%Y%m%dT%H%M%SZ}{'-' + ISA if ISA != 'native' else ''}"
                        f"{'-quick' if args.quick else ''}.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    print(f"\nwritten {os.path.relpath(path, os.getcwd())}")
    # Exit 1 when a run failed, or when specc's loss check failed; Keras's check is reported, not enforced
    # (it is a second reference: on the full MLP job its float32 trajectory is further from PyTorch's than
    # PyTorch's own float32 is from its float64, and that says nothing about specc).
    failed = [r for r in rows if r["failed_runs"] or
              (r["framework"] == "specc" and r.get("check_vs_torch", {}).get("status") == "FAIL")]
    sys.exit(1 if failed else 0)


def prepare_with(name: str, quick: tuple[int, int] | None, tmp: str) -> dict:
    """prepare() at the spec's sizes, or at the --quick sizes, in a subprocess: the data would otherwise
    raise this process's peak RSS, which Linux passes on to every child's ru_maxrss."""
    args = [sys.executable, os.path.abspath(__file__), "_prepare", name, tmp] + [str(v) for v in (quick or ())]
    proc = subprocess.run(args, capture_output=True, text=True, env=thread_env(1))
    if proc.returncode != 0:
        raise SystemExit(f"preparing {name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _prepare_main(name: str, tmp: str, *quick: str) -> None:
    from specc.spec import load_spec

    spec, _ = load_spec(os.path.join(HERE, "workloads", WORKLOADS[name][0]))
    samples, epochs = (int(quick[0]), int(quick[1])) if quick else (spec.data.samples, spec.fit.epochs)
    print(json.dumps(prepare(name, samples, epochs, tmp)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_prepare":
        _prepare_main(*sys.argv[2:])
    else:
        main()
