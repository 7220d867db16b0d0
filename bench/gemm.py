"""GFLOP/s of the matrix products behind Dense: sgemm's micro-kernels (through gemm.matmul, as Dense calls
them) against BLAS (NumPy's OpenBLAS from compiled code, and NumPy's own np.dot) and PyTorch, at the sizes
of the benchmark MLP, and of whole Dense forward+backward steps (specc's against Dense on BLAS alone); plus
this machine's measured float32 peak. Operands are 64-byte aligned, as the engine allocates them.

    python bench/gemm.py [--threads 1,2] [--repeats 31] [--isa avx2]

Writes bench/results/gemm-<threads>t.json. PyTorch is optional. `--isa avx2` runs everything as on an
AVX2 CPU (a Haswell: Numba compiles for it, so sgemm builds its AVX2 tile, and OpenBLAS uses its Haswell
kernels) and writes bench/results/gemm-avx2-<threads>t.json; its "sgemm kernel" column calls sgemm
directly, whether or not the products' dispatch sends that shape to it. Alternatives for one case are timed in
alternating rounds and reported as medians (see `round_robin`); each case waits until other processes
leave the cores alone, is run again (up to --attempts) if they did not, and records how busy they kept the
cores.

Peak: `fma_probe` runs 8 independent chains of 16 dependent FMAs per float32 element, vectorised over the
elements, so it is bound by FMA throughput alone (2 FMA pipes x 8 lanes x 2 = 32 FLOP/cycle per core with
AVX2, as on Zen 3; 64 with AVX-512 on 2 pipes, as on Xeons since Skylake-SP);
`clock_probe` runs one dependent scalar FMA chain, whose time per step is the FMA latency (4 cycles on
Zen 3/Zen 4, Intel Skylake and later), which gives the clock. Both are reported; "% of peak" uses the
measured FMA throughput at the same thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# --isa avx2: read before Numba and OpenBLAS load, since both read these variables once, at load. The CPU
# name alone would keep this CPU's feature list (and its AVX-512); an empty list gives Haswell's own.
if "--isa" in sys.argv[1:] and sys.argv[sys.argv.index("--isa") + 1:][:1] == ["avx2"]:
    os.environ.update(NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="", OPENBLAS_CORETYPE="Haswell")
AVX2_ONLY = os.environ.get("NUMBA_CPU_NAME") == "haswell" and os.environ.get("NUMBA_CPU_FEATURES") == ""

# The thread libraries' spin times as `specc train` sets them (specc.runtime), before NumPy's OpenBLAS and
# Numba's OpenMP load: idle workers then sleep after ~1 ms instead of ~70, so timing one pool does not
# leave the other's workers spinning on the cores.
from specc.runtime import prepare_process  # noqa: E402

prepare_process()
import specc  # noqa: E402, F401, I001
import numba  # noqa: E402
import numpy as np  # noqa: E402

from specc.kernels import configure_threads, dense, gemm, native  # noqa: E402
from specc.kernels.probe import fma_block  # noqa: E402
from specc.workspace import aligned_empty  # noqa: E402

# No cache: a parallel kernel in a script cannot be cached. Only "contract" (a * c + d -> one FMA) of the
# fast-math flags: with reassociation LLVM may fold a chain of FMAs by constants into fewer (it did, with
# 512-bit vectors, and "measured" 430 GFLOP/s on one core).
PROBE = dict(fastmath={"contract"}, nogil=True, error_model="numpy")
FMA_LATENCY_CYCLES = 4
PROBE_STEPS = 16  # dependent FMAs per chain per element in fma_probe
PROBE_CHAINS = 8


@numba.njit(parallel=True, **PROBE)
def fma_probe(x, out, reps, c, d):
    """x, out (threads * 256,): each thread repeats fma_block (specc/kernels/probe.py) on its own L1-resident 256 elements."""
    bands = numba.get_num_threads()
    width = x.shape[0] // bands
    for t in numba.prange(bands):
        for _ in range(reps):
            fma_block(x[t * width:(t + 1) * width], out[t * width:(t + 1) * width], c, d)


@numba.njit(**PROBE)
def clock_probe(n, c, d):
    """One dependent scalar FMA chain of n steps: n x FMA latency cycles."""
    y = np.float32(1)
    for _ in range(n):
        y = y * c + d
    return y


def _cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), for the results file."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def _cpu_features() -> str:
    import llvmlite.binding

    return llvmlite.binding.get_host_cpu_features().flatten()


def measure_peak(threads: int) -> dict:
    """The probes in a fresh process (`--peak-probe`), compiled for the widest vectors the CPU has: LLVM
    prefers 256-bit vectors on AVX-512 Intel CPUs (against frequency drops), so the probe is compiled with
    that preference turned off there, or it would report the AVX2 peak. specc's own kernels keep LLVM's
    default, which is why the probe does not run in this process."""
    import subprocess

    env = dict(os.environ)
    if "+avx512f" in _cpu_features() and not AVX2_ONLY:
        env["NUMBA_CPU_FEATURES"] = _cpu_features() + ",-prefer-256-bit"
    out = subprocess.run([sys.executable, __file__, "--peak-probe", str(threads)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _probe_peak(threads: int) -> dict:
    numba.set_num_threads(threads)
    lanes = 16 if "+avx512f" in _cpu_features() and not AVX2_ONLY else 8
    flops_per_cycle = 2 * lanes * 2  # float32 per core: 2 FMA pipes x lanes x 2 (multiply + add)
    c, d = np.float32(0.9999), np.float32(1e-5)
    clock_probe(10, c, d)
    steps = 100_000_000
    t = min(_timed(lambda: clock_probe(steps, c, d)) for _ in range(5))
    ghz = FMA_LATENCY_CYCLES * steps / t / 1e9
    x = np.random.default_rng(0).random(256 * threads, dtype=np.float32)
    out = np.empty_like(x)
    reps = 4000
    fma_probe(x, out, 1, c, d)
    flops = 2 * PROBE_CHAINS * PROBE_STEPS * reps * x.shape[0]
    theoretical = ghz * flops_per_cycle * threads
    times = []
    for _ in range(20):  # spaced bursts until one reaches 85% of the theoretical peak: a busy moment
        time.sleep(0.2)  # elsewhere stalls a multi-threaded probe at its barrier
        times += [_timed(lambda: fma_probe(x, out, reps, c, d)) for _ in range(5)]
        if flops / min(times) / 1e9 >= 0.85 * theoretical:
            break
    disturbed = flops / min(times) / 1e9 < 0.85 * theoretical
    if disturbed:
        print(f"warning: the peak probe reached only {flops / min(times) / 1e9:.0f} of {theoretical:.0f} GFLOP/s "
              "(other processes?): % of peak is overstated")
    return {"disturbed": disturbed,
            "method": f"fma_probe: 8 independent chains x 16 dependent FMAs per element, vectorised ({lanes} "
                      "float32 lanes), L1-resident; clock_probe: one dependent FMA chain, 4-cycle FMA latency",
            "clock_ghz": ghz, "theoretical_gflops": theoretical,
            "measured_gflops": flops / min(times) / 1e9, "measured_gflops_median": flops / statistics.median(times) / 1e9}


def _cpu_snapshot() -> tuple[float, float, float]:
    """(busy seconds of all cores, elapsed core-seconds, this process's CPU seconds) so far."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    own = os.times()
    return (sum(fields) - idle) / hz, sum(fields) / hz, own.user + own.system


def others_busy(before, after) -> float:
    """Fraction of the cores that *other* processes kept busy between two snapshots."""
    busy, total, own = (a - b for a, b in zip(after, before))
    return max(0.0, (busy - own) / total) if total > 0 else 0.0


def wait_for_quiet(max_busy: float, timeout: float) -> float:
    """Wait (up to `timeout` s) until other processes use less than `max_busy` of the cores over 1 s."""
    deadline = time.monotonic() + timeout
    while True:
        before = _cpu_snapshot()
        time.sleep(1.0)
        busy = others_busy(before, _cpu_snapshot())
        if busy <= max_busy or time.monotonic() > deadline:
            return busy


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def round_robin(candidates: dict, repeats: int, rounds: int = 3, pause: float = 0.5) -> tuple[dict, dict]:
    """{name: fn} -> ({name: median seconds}, {name: [median seconds of each round]}). `rounds` rounds; in
    each, every candidate gets a pause, two warm-up calls and repeats/rounds timed calls in a row, the
    candidates' order reversed every other round. In a row, not interleaved call by call: each thread pool
    (SciPy's OpenBLAS, NumPy's OpenBLAS, Numba's OpenMP, PyTorch's) keeps spinning for a while after a
    call, and would steal the cores from the next candidate's pool. The pause lets it go to sleep (0.2 s
    was too short after PyTorch's pool: the same SciPy BLAS then timed 20% slower right after it); the
    rounds spread a change in the machine's load over all candidates, and the per-round medians pair each
    candidate with the baseline timed next to it (`paired_speedup`)."""
    times = {name: [] for name in candidates}
    per_round = {name: [] for name in candidates}
    count = max(1, repeats // rounds)
    order = list(candidates.items())
    for index in range(rounds):
        for name, fn in (order if index % 2 == 0 else order[::-1]):
            time.sleep(pause)
            fn()
            fn()
            these = [_timed(fn) for _ in range(count)]
            times[name] += these
            per_round[name].append(statistics.median(these))
    return {name: statistics.median(ts) for name, ts in times.items()}, per_round


def paired_speedup(per_round: dict, name: str) -> float:
    """The median over rounds of the baseline's time / this candidate's, each pair timed in the same round."""
    return statistics.median(b / t for b, t in zip(per_round[BASELINE], per_round[name]))


MLP = [(784, 256), (256, 128), (128, 10)]
BASELINE = "blas (gemm.matmul_blas)"  # NumPy's OpenBLAS from compiled code: the "x" column is speed-up over it
SGEMM = "sgemm (gemm.matmul)"
KERNEL = "sgemm kernel (sgemm.matmul)"


@numba.njit(**PROBE)
def matmul_blas_njit(a, b, out):
    """gemm.matmul_blas as compiled code sees it; from Python it is np.dot."""
    gemm.matmul_blas(a, b, out)


@numba.njit(**PROBE)
def matmul_njit(a, b, out):
    """gemm.matmul as Dense's kernels call it: sgemm where it takes the layouts (on AVX-512), else BLAS."""
    gemm.matmul(a, b, out)


if native.sgemm is not None:
    _sgemm_matmul = native.sgemm.matmul

    @numba.njit(**PROBE)
    def sgemm_njit(a, b, out):
        """sgemm's micro-kernels on their own, whatever the products' dispatch would choose."""
        _sgemm_matmul(a, b, out, False, out[0], False, False)


@numba.njit(**PROBE)
def blas_dense_forward(x, kernel, bias, out):
    """Dense on BLAS alone (before sgemm): the product, then the bias."""
    gemm.matmul_blas(x, kernel, out)
    for r in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[r, j] += bias[j]


@numba.njit(**PROBE)
def blas_dense_backward(x, kernel, dz, need_dx, dkernel, dbias, dx):
    gemm.matmul_blas(x.T, dz, dkernel)
    dense.column_sums(dz, dbias)
    if need_dx:
        gemm.matmul_blas(dz, kernel.T, dx)


def _aligned(shape, rng=None):
    """A float32 array on a 64-byte boundary, as the engine allocates its weights and workspace."""
    a = aligned_empty(shape, np.float32)
    if rng is not None:
        a[...] = rng.standard_normal(shape)
    return a


def product_cases(rng, torch):
    """(name, flops, {candidate: fn}) for every product of Dense at the benchmark sizes."""
    cases = []
    for batch, products in ((128, ("x@W", "x.T@dz", "dz@W.T")), (1024, ("x@W",))):
        for fan_in, units in MLP:
            x, w, dz = _aligned((batch, fan_in), rng), _aligned((fan_in, units), rng), _aligned((batch, units), rng)
            for form in products:
                if form == "x@W":
                    a, b, out = x, w, _aligned((batch, units))
                elif form == "x.T@dz":
                    a, b, out = x.T, dz, _aligned((fan_in, units))
                else:
                    a, b, out = dz, w.T, _aligned((batch, fan_in))
                flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
                cands = {BASELINE: lambda a=a, b=b, o=out: matmul_blas_njit(a, b, o),
                         SGEMM: lambda a=a, b=b, o=out: matmul_njit(a, b, o),
                         "numpy np.dot (Python)": lambda a=a, b=b, o=out: np.dot(a, b, o)}
                if native.sgemm is not None and native.sgemm.supports(a, b, out):
                    cands[KERNEL] = lambda a=a, b=b, o=out: sgemm_njit(a, b, o)
                if torch is not None:
                    ta, tb, to = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
                    cands["torch"] = lambda ta=ta, tb=tb, to=to: torch.mm(ta, tb, out=to)
                name = f"{form:7} b{batch} {fan_in}->{units}"
                cases.append((name, flops, cands))
    return cases


def dense_cases(rng, torch):
    """Whole Dense steps as the engine runs them: MLP training (forward + backward of each layer at batch
    128, no input gradient for the first layer, as the engine skips it) and prediction (forwards, 1024)."""
    layers = []
    for fan_in, units in MLP:
        x = _aligned((1024, fan_in), rng)
        w = _aligned((fan_in, units))
        w[...] = rng.standard_normal((fan_in, units)) / np.sqrt(fan_in)
        bias = _aligned(units)
        bias[...] = 0
        layers.append((x, w, bias, _aligned((128, units), rng)))
    bufs = [(_aligned((1024, w.shape[1])), _aligned(w.shape), _aligned(b.shape), _aligned((128, w.shape[0])))
            for _, w, b, _ in layers]

    def train(fwd, bwd):
        def step():
            for (x, w, b, _), (y, *_) in zip(layers, bufs):
                fwd(x[:128], w, b, y[:128])
            for li in reversed(range(len(layers))):
                (x, w, _, dz), (_, dw, db, dx) = layers[li], bufs[li]
                bwd(x[:128], w, dz, li > 0, dw, db, dx)
        return step

    def predict(fwd):
        def step():
            for (x, w, b, _), (y, _, _, _) in zip(layers, bufs):
                fwd(x, w, b, y)
        return step

    new_f = lambda x, w, b, y: dense.forward(x, w, b, True, y)  # noqa: E731
    new_b = lambda x, w, dz, need_dx, dw, db, dx: dense.backward(x, w, dz, True, need_dx, dw, db, dx)  # noqa: E731
    train_cands = {BASELINE: train(blas_dense_forward, blas_dense_backward), "specc dense": train(new_f, new_b)}
    predict_cands = {BASELINE: predict(blas_dense_forward), "specc dense": predict(new_f)}
    if torch is not None:
        mods = [torch.nn.Linear(fan_in, units) for fan_in, units in MLP]
        tx = [torch.from_numpy(x[:128].copy()).requires_grad_(i > 0) for i, (x, *_ ) in enumerate(layers)]
        tdz = [torch.from_numpy(dz) for *_, dz in layers]
        tp = [torch.from_numpy(x) for x, *_ in layers]

        def torch_train():
            outs = [mod(t) for mod, t in zip(mods, tx)]
            for mod, t in zip(mods, tx):
                mod.zero_grad(set_to_none=True)
                t.grad = None
            torch.autograd.backward(outs, tdz)

        def torch_predict():
            with torch.no_grad():
                for mod, t in zip(mods, tp):
                    mod(t)

        train_cands["torch"] = torch_train
        predict_cands["torch"] = torch_predict
    train_flops = sum(2 * 128 * fi * u * (3 if i > 0 else 2) for i, (fi, u) in enumerate(MLP))
    predict_flops = sum(2 * 1024 * fi * u for fi, u in MLP)
    return [("Dense fwd+bwd MLP train b128 (3 layers)", train_flops, train_cands),
            ("Dense fwd MLP predict b1024 (3 layers)", predict_flops, predict_cands)]


def main() -> None:
    if sys.argv[1:2] == ["--peak-probe"]:  # measure_peak's child process
        print(json.dumps(_probe_peak(int(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    parser.add_argument("--quiet-busy", type=float, default=0.15,
                        help="before each case wait until other processes use less than this fraction of the cores")
    parser.add_argument("--quiet-timeout", type=float, default=30.0, help="seconds to wait for that (default 30)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between candidates (default 0.5)")
    parser.add_argument("--attempts", type=int, default=3, help="runs of a case disturbed by other processes (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per case (default 3; see round_robin)")
    parser.add_argument("--isa", choices=["host", "avx2"], default="host",
                        help="avx2: compile for a Haswell and use OpenBLAS's Haswell kernels (default: this CPU)")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
        print("PyTorch not installed: no torch column")
    if AVX2_ONLY and torch is not None:  # its kernels follow this CPU, not the emulated one
        torch = None
        print("--isa avx2: no torch column (PyTorch picks its kernels for this CPU)")
    for requested in [int(t) for t in args.threads.split(",")]:
        threads = configure_threads(requested)
        if torch is not None:
            torch.set_num_threads(threads)
        load_before = os.getloadavg()
        wait_for_quiet(args.quiet_busy, args.quiet_timeout)
        peak = measure_peak(threads)
        print(f"\nsgemm mode {native.mode()}  threads={threads}  load average {load_before[0]:.2f}  clock {peak['clock_ghz']:.2f} GHz  "
              f"peak measured {peak['measured_gflops']:.1f} GFLOP/s (theoretical {peak['theoretical_gflops']:.1f})")
        rows = []
        rng = np.random.default_rng(0)
        for name, flops, cands in product_cases(rng, torch) + dense_cases(rng, torch):
            if args.only and args.only not in name:
                continue
            for _attempt in range(args.attempts):  # a case disturbed by other processes is run again
                wait_for_quiet(args.quiet_busy, args.quiet_timeout)
                before = _cpu_snapshot()
                medians, per_round = round_robin(cands, args.repeats, rounds=args.rounds, pause=args.pause)
                busy = others_busy(before, _cpu_snapshot())
                if busy <= args.quiet_busy:
                    break
            best_blas = medians[BASELINE]
            print(f"{name}  ({flops / 1e6:.1f} MFLOP; other processes kept {100 * busy:.0f}% of the cores busy)")
            for cand, t in medians.items():
                gf = flops / t / 1e9
                paired = paired_speedup(per_round, cand)
                print(f"    {cand:28} {t * 1e6:9.1f} us {gf:8.1f} GFLOP/s {100 * gf / peak['measured_gflops']:5.1f}% peak"
                      f"  x{best_blas / t:.2f} (paired x{paired:.2f})")
                rows.append({"case": name, "candidate": cand, "flops": flops, "seconds": t, "gflops": gf,
                             "peak_fraction": gf / peak["measured_gflops"], "others_busy": busy,
                             "speedup": best_blas / t, "paired_speedup": paired,
                             "round_seconds": per_round[cand]})
        load_after = os.getloadavg()
        print(f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
        os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
        prefix = "gemm-avx2" if AVX2_ONLY else "gemm"
        path = os.path.join(os.path.dirname(__file__), "results", f"{prefix}-{threads}t.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"threads": threads, "repeats": args.repeats, "rounds": args.rounds, "peak": peak,
                       "sgemm_mode": native.mode(), "cpu": _cpu_name(),
                       "environment": {k: os.environ.get(k) for k in
                                       ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "OPENBLAS_CORETYPE")},
                       "load_before": load_before,
                       "load_after": load_after, "numba": numba.__version__, "numpy": np.__version__,
                       "torch": getattr(torch, "__version__", None), "rows": rows}, fh, indent=2)
        print(f"written {path}")


if __name__ == "__main__":
    main()
