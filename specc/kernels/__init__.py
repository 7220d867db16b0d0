"""Numba kernels: the only package that imports Numba.

Kernels are array-in, array-out functions over preallocated outputs, decorated at module level with
`cache=True`, so a warm start loads machine code from the cache instead of compiling. Each module covers
one topic (activations, dense, conv, ...). `configure_threads` caps Numba's and BLAS's thread pools to
the same count, so the two never oversubscribe the cores.
"""

from __future__ import annotations

import os

import numba

# Compiled with fastmath so float32 loops vectorise; no kernel relies on NaN/inf propagation through
# reassociated sums (losses check for NaN explicitly). error_model="numpy": a division by zero gives inf
# as in NumPy instead of a Python exception check inside every loop, which would block vectorisation
# (about 3x on the optimizer step).
JIT = dict(cache=True, fastmath=True, nogil=True, error_model="numpy")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def configure_threads(n: int | None = None) -> int:
    """Use `n` threads for Numba and for BLAS; default: $SPECC_THREADS, else the cores this process may
    run on (its CPU affinity, which is what a container or `taskset` gives it)."""
    if n is None and os.environ.get("SPECC_THREADS", "").isdigit():
        n = int(os.environ["SPECC_THREADS"])
    n = max(1, min(n or available_cores(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    try:
        import scipy.linalg.cython_blas  # noqa: F401 - load the BLAS Numba's np.dot calls, so it is limited too
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    return n
