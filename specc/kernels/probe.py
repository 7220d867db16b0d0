"""The machine's float32 peak, measured: what `specc time` reports each layer's GFLOP/s against.

`fma_probe` runs 8 independent chains of 16 dependent FMAs per element over an L1-resident array of a
few vectors, so it is bound by FMA throughput alone. `PeakProbe(threads)` runs it in a fresh process:
there LLVM may be told to use the CPU's widest vectors (on AVX-512 CPUs it prefers 256-bit ones unless
told otherwise, and specc's native products use 512-bit ones), which cannot change in a process whose
kernels are already compiled. This module imports nothing from specc, so that process
loads only Numba and this file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numba
import numpy as np

# Only "contract" (a * c + d -> one FMA) of the fast-math flags: with reassociation LLVM may fold a chain
# of FMAs by constants into fewer, and the probe would count work it did not do.
PROBE = dict(cache=True, fastmath={"contract"}, nogil=True, error_model="numpy")
CHAINS, STEPS = 8, 16  # independent chains per element, dependent FMAs per chain
WIDTH = 256  # elements: 1 KB in, 1 KB out, in L1
REPS = 2000  # blocks per call: ~1 ms at 64 FLOP/cycle
BUDGET = 0.3  # seconds of probing; the best call counts (the machine may be shared)


@numba.njit(**PROBE)
def fma_block(x, out, c, d):
    """x (n,) float32 -> out (n,): per element 8 independent chains of STEPS = 16 FMAs, written out (not a
    loop) so that the element loop is the innermost one and vectorises. The chains start from different values and their
    results are combined, so none can be merged or dropped."""
    for i in range(x.shape[0]):
        v = x[i]
        a0 = v; a1 = v + d; a2 = v * c; a3 = v - d; a4 = v * d; a5 = v + c; a6 = v - c; a7 = v * v  # noqa: E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        a0 = a0 * c + d; a1 = a1 * c + d; a2 = a2 * c + d; a3 = a3 * c + d; a4 = a4 * c + d; a5 = a5 * c + d; a6 = a6 * c + d; a7 = a7 * c + d  # noqa: E501, E702
        out[i] = a0 * a1 + a2 * a3 + a4 * a5 + a6 * a7


@numba.njit(**PROBE)
def fma_probe(x, out, reps, c, d):
    """x, out (WIDTH,): fma_block `reps` times on the same L1-resident elements."""
    for _ in range(reps):
        fma_block(x, out, c, d)


def load() -> None:
    """Compile fma_probe, or load it from the cache."""
    x = np.ones(WIDTH, np.float32)
    fma_probe(x, np.empty_like(x), 1, np.float32(1), np.float32(0))


def probe() -> float:
    """The best float32 GFLOP/s `fma_probe` reaches on one core in BUDGET seconds (in this process)."""
    c, d = np.float32(0.9999), np.float32(1e-5)
    x = np.random.default_rng(0).random(WIDTH, dtype=np.float32)
    out = np.empty_like(x)
    load()
    flops = 2 * CHAINS * STEPS * REPS * WIDTH
    best = float("inf")
    end = time.perf_counter() + BUDGET
    while time.perf_counter() < end:
        start = time.perf_counter()
        fma_probe(x, out, REPS, c, d)
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def _has_avx512() -> bool:
    """Whether the CPU has AVX-512 (Linux's /proc/cpuinfo; elsewhere LLVM's default width is used)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


class PeakProbe:
    """The machine's float32 FMA peak on `threads` threads, in GFLOP/s: one core's, measured in a fresh
    process compiled for the CPU's widest vectors, times `threads`. (One core, because on a shared machine
    a probe over several threads waits at its barrier for whichever core another process holds.)

        probe = PeakProbe(threads)   # the process starts, loads Numba and the kernel, and waits
        probe.ready()                # before timing anything else: its start-up no longer competes
        ...                          # time the model
        peak = probe.result()        # then it probes (BUDGET seconds); None if it failed

    Starting it early hides its second or so of start-up behind the caller's own."""

    def __init__(self, threads: int, timeout: float = 120.0):
        self.threads, self.timeout = threads, timeout
        env = dict(os.environ)
        if _has_avx512() and not env.get("NUMBA_CPU_FEATURES"):
            # Features given replace the host's; the CPU's name (Numba's default, the host's) implies them.
            env["NUMBA_CPU_FEATURES"] = "-prefer-256-bit"
        # Loaded by its file alone (not `import specc...`): the child needs neither specc nor its kernels.
        # Registered in sys.modules: Numba's cache finds a cached kernel's module by its name.
        code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('specc_probe', sys.argv[1]); "
                "m = sys.modules['specc_probe'] = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
                "m.load(); print('ready', flush=True); sys.stdin.readline(); print(m.probe(), flush=True)")
        try:
            self.process = subprocess.Popen([sys.executable, "-c", code, os.path.abspath(__file__)], env=env,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.process = None

    def ready(self) -> None:
        """Wait until the process has loaded the kernel (or failed)."""
        if self.process is not None and self.process.stdout.readline().strip() != "ready":
            self.close()

    def result(self) -> float | None:
        if self.process is None:
            return None
        try:
            out, _ = self.process.communicate("go\n", timeout=self.timeout)
            value = float(out.strip().splitlines()[-1])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            self.close()
            return None
        return value * self.threads if value > 0 and np.isfinite(value) else None

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
