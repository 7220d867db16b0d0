"""Process-wide settings, owned here and applied only when the CLI or the user asks.

`import specc` changes nothing global. The CLI (and the benchmark's processes) call `prepare_process()`
before NumPy loads and `configure()` before training; a Python API user may call both the same way.

- OPENBLAS_THREAD_TIMEOUT=22: OpenBLAS's idle workers spin ~1 ms (2^22 cycles) after a multi-threaded
  product instead of ~0.07 s, so they do not hold a core the convolutions' threads need next, while an
  MLP's chain of products still finds them awake. OpenBLAS reads it once, when it loads (with NumPy).
- GOMP_SPINCOUNT=20000: the same for Numba's OpenMP workers, read when Numba starts its thread pool
  (libgomp's default, 300,000 rounds, held the second core through the next layer of a CNN).
- SPECC_THREADS: the thread count (default: the cores this process may run on).
A value the user set in the environment always wins.
"""

from __future__ import annotations

import os
import sys

SPIN_SETTINGS = {"OPENBLAS_THREAD_TIMEOUT": "22", "GOMP_SPINCOUNT": "20000"}

# Whether NumPy's OpenBLAS loaded with a short spin: decided when prepare_process runs (None: not run).
_numpy_blas_spin_short: bool | None = None


def prepare_process() -> None:
    """Set the thread libraries' spin times for this process and its children, where the user has not.
    Effective for a library only if it has not loaded yet: call before importing NumPy."""
    global _numpy_blas_spin_short
    if _numpy_blas_spin_short is None:
        _numpy_blas_spin_short = "numpy" not in sys.modules or "OPENBLAS_THREAD_TIMEOUT" in os.environ
    for name, value in SPIN_SETTINGS.items():
        os.environ.setdefault(name, value)


def numpy_blas_spins_long() -> bool:
    """Whether NumPy's OpenBLAS loaded without a short OPENBLAS_THREAD_TIMEOUT: its idle workers then spin
    ~0.07 s after each multi-threaded product, and multi-threaded products are better sent elsewhere."""
    if _numpy_blas_spin_short is None:
        return "OPENBLAS_THREAD_TIMEOUT" not in os.environ
    return not _numpy_blas_spin_short


def threads_from_environment() -> int | None:
    """SPECC_THREADS as a positive integer, None when unset or empty; ValueError for anything else."""
    raw = os.environ.get("SPECC_THREADS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"SPECC_THREADS must be a positive integer (a thread count), not {raw!r}")
    return int(raw)


def configure(threads: int | None = None) -> int:
    """Use `threads` threads (default: SPECC_THREADS, else the cores available) for Numba, matrix
    products and BLAS; returns the count. Loads the kernels (Numba)."""
    if threads is None:
        threads = threads_from_environment()
    elif threads < 1:
        raise ValueError(f"threads must be a positive integer, not {threads}")
    from .kernels import configure_threads

    return configure_threads(threads)
