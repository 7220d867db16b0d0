"""Numba kernels: the only package that imports Numba.

Kernels are array-in, array-out functions over preallocated outputs, decorated at module level with
`cache=True`, so a warm start loads machine code from the cache instead of compiling. Each module covers
one topic (activations, dense, conv, ...). `configure_threads` caps Numba's and BLAS's thread pools to
the same count, so the two never oversubscribe the cores.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import os
import sys

import numba
import numba.np.ufunc.parallel as _numba_parallel

# Compiled with fastmath so float32 loops vectorise; no kernel relies on NaN/inf propagation through
# reassociated sums (losses check for NaN explicitly). error_model="numpy": a division by zero gives inf
# as in NumPy instead of a Python exception check inside every loop, which would block vectorisation
# (about 3x on the optimizer step).
JIT = dict(cache=True, fastmath=True, nogil=True, error_model="numpy")


def _drop_stale_caches() -> None:
    """Delete this package's Numba cache when any kernel source changed since it was written.

    Numba checks a cached function against its own source file only, and a kernel's machine code
    includes the callees it inlined from other modules: after an edit to activations.py, fused.py's
    cached train step would keep running the old activation code. So a stamp of every source here
    (name, size, mtime, as Numba's own check uses) is kept in the directory Numba caches them in; when it
    differs, that directory's cache files go. A stat of each file: well under a millisecond."""
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(name for name in os.listdir(here) if name.endswith(".py"))
    stamp = repr([numba.__version__] + [(name, os.stat(os.path.join(here, name)).st_size,
                                        os.stat(os.path.join(here, name)).st_mtime_ns) for name in sources])
    try:  # the directory Numba will cache these modules in: the first of its locators that applies
        from numba.core.caching import CacheImpl

        for locator_class in CacheImpl._locator_classes:
            locator = locator_class.from_function(_drop_stale_caches, __file__)
            if locator is not None:
                directory = locator.get_cache_path()
                break
        else:
            return
    except Exception:  # pragma: no cover - Numba's internals moved: its own per-file check still applies
        return
    path = os.path.join(directory, "specc-sources.stamp")
    try:
        with open(path) as f:
            if f.read() == stamp:
                return
    except OSError:
        pass
    try:
        for name in os.listdir(directory):
            if name.endswith((".nbi", ".nbc")):
                os.remove(os.path.join(directory, name))
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w") as f:
            f.write(stamp)
        os.replace(temporary, path)
    except OSError:  # pragma: no cover - a directory Numba can write to, so unlikely
        pass


_drop_stale_caches()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _thread_count_function():
    """The C function behind numba.get_num_threads() (the calling thread's count), for thread_count and for
    compiled code (conv_pool_tiles registers it under our own symbol). Numba's Python function takes its
    process-wide lock on every call (~0.7 us warm, several right after a kernel has flushed the caches).
    It is private to Numba: where it moved, a callback into the public function stands in. Starts Numba's
    threading layer, which provides it."""
    numba.get_num_threads()
    read = getattr(_numba_parallel, "_get_num_threads", None)
    if read is None:  # pragma: no cover - Numba's internals moved
        read = ctypes.CFUNCTYPE(ctypes.c_int)(numba.get_num_threads)
    return read


THREAD_COUNT_FUNCTION = _thread_count_function()  # kept here: compiled code calls it by address


def thread_count() -> int:
    """numba.get_num_threads(), for code run between kernels at every pass (see _thread_count_function)."""
    return THREAD_COUNT_FUNCTION()


def configure_threads(n: int | None = None) -> int:
    """Use `n` threads for Numba, sgemm and BLAS; default: $SPECC_THREADS, else the cores this process may
    run on (its CPU affinity, which is what a container or `taskset` gives it)."""
    if n is None and os.environ.get("SPECC_THREADS", "").isdigit():
        n = int(os.environ["SPECC_THREADS"])
    n = max(1, min(n or available_cores(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    from .sgemm import set_threads

    set_threads(n)
    try:
        load_scipy_blas()  # the BLAS Numba's np.dot calls: loaded now, so it is limited too
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    from .. import _numpy_blas_timeout_set

    if n > 1 and not _numpy_blas_timeout_set:
        # NumPy's OpenBLAS loaded before OPENBLAS_THREAD_TIMEOUT was set (NumPy imported before specc), so
        # its idle workers would spin for ~0.07 s after each product: keep it at one thread, and
        # gemm.matmul_blas sends multi-threaded products to SciPy's (at n threads), as it does whenever
        # SciPy's may use more threads.
        from .gemm import set_numpy_blas_threads

        set_numpy_blas_threads(1)
    return n


def load_scipy_blas() -> None:
    """Import scipy.linalg.cython_blas, the module through which Numba reaches BLAS (its CPU target imports
    it before the first kernel runs, cached or not), without running scipy.linalg's package __init__.

    That __init__ loads SciPy's array-API layer, which walks every attribute of NumPy and so imports
    numpy.f2py, numpy.testing and numpy.ma: ~130 ms, an eighth of `specc train`'s time to its first step,
    for nothing Numba uses. The extension module itself needs only the `scipy` package (loaded normally).
    Numba imports it by its full name, which sys.modules then answers; a later `import scipy.linalg` runs
    as usual. If anything about SciPy's layout differs, this falls back to the plain import."""
    name = "scipy.linalg.cython_blas"
    if name in sys.modules:
        return
    if "scipy.linalg" not in sys.modules:
        scipy_spec = importlib.util.find_spec("scipy")
        for directory in (scipy_spec.submodule_search_locations or []) if scipy_spec else []:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(directory, "linalg", "cython_blas" + suffix)
                if os.path.isfile(path):
                    spec = importlib.util.spec_from_file_location(name, path)
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[name] = module
                    try:
                        spec.loader.exec_module(module)
                    except BaseException:
                        del sys.modules[name]
                        raise
                    return
    importlib.import_module(name)
