"""Numba kernels: the only package that imports Numba.

Kernels are array-in, array-out functions over preallocated outputs, decorated at module level with
`cache=True`, so a warm start loads machine code from the cache instead of compiling. Each module covers
one topic (activations, dense, conv, ...). `configure_threads` caps Numba's and BLAS's thread pools to
the same count, so the two never oversubscribe the cores.

Hand-written LLVM IR and Numba's private names live in `native/` only; every module here runs without it
(`SPECC_NATIVE=0`, or a CPU or Numba it does not support).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import os
import sys

import numba

# Compiled with fastmath so float32 loops vectorise; no kernel relies on NaN/inf propagation through
# reassociated sums (losses check for NaN explicitly). error_model="numpy": a division by zero gives inf
# as in NumPy instead of a Python exception check inside every loop, which would block vectorisation
# (about 3x on the optimizer step).
JIT = dict(cache=True, fastmath=True, nogil=True, error_model="numpy")


def load_scipy_blas() -> None:
    """Import scipy.linalg.cython_blas, the module through which Numba reaches BLAS (its CPU target imports
    it before the first kernel runs, cached or not), without running scipy.linalg's package __init__.

    That __init__ loads SciPy's array-API layer, which walks every attribute of NumPy and so imports
    numpy.f2py, numpy.testing and numpy.ma: a large share of `specc train`'s time to its first step, for
    nothing Numba uses. The extension module itself needs only the `scipy` package (loaded normally).
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


def _cache_directories() -> list[str]:
    """Where Numba caches this package's kernels and the native package's, as Numba chooses it
    (native/cache.py); else the __pycache__ beside the sources (Numba's first choice), unless
    NUMBA_CACHE_DIR moves the cache: then none is known, and only Numba's own per-file check applies."""
    found = []
    for source in (__file__, native.__file__):
        try:
            from .native.cache import cache_directory

            directory = cache_directory(_cache_directories, source)
        except Exception:  # pragma: no cover - Numba's internals moved
            directory = None
        if directory is None and not os.environ.get("NUMBA_CACHE_DIR"):
            directory = os.path.join(os.path.dirname(source), "__pycache__")
        if directory is not None:
            found.append(directory)
    return found


def _sources_stamp(mode: str) -> str:
    """A digest of every kernel source (name, size, mtime and contents), Numba's version and the mode
    (portable or native: machine code compiled with the native package calls symbols only it registers).
    The contents catch an upgrade that keeps sizes and mtimes; the mtimes, a file that changed between
    this digest and its module's (lazy) import and was then changed back."""
    here = os.path.dirname(os.path.abspath(__file__))
    kind = "portable" if mode == "portable" else "native"
    digest = hashlib.sha256(repr((numba.__version__, kind)).encode())
    for folder in (here, os.path.join(here, "native")):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    info = os.fstat(f.fileno())
                    content = f.read()
                digest.update(repr((os.path.relpath(path, here), info.st_size, info.st_mtime_ns)).encode())
                digest.update(hashlib.sha256(content).digest())
    # Only portable vs native matters: Numba keys each cached function on the CPU it was compiled for,
    # and the native mode (AVX-512, AVX2 or neither) follows from that CPU alone (native.vector_isa).
    return digest.hexdigest()


_stamp = ""  # _sources_stamp of the sources and mode this process runs: every cache index records it


def _drop_stale_caches(mode: str) -> None:
    """Stamp this process's kernel cache entries with the sources it imported, and delete the cache files
    when the sources, Numba or the mode changed since the last process saw them.

    Numba checks a cached function against its own source file only, while a kernel's machine code includes
    the callees it inlined from other modules. So each cache index records `_stamp` (native.cache), and an
    index written under another one is recompiled, not loaded: that also covers a process that imported the
    old sources and saves its machine code after the change (a test run across a merge). The stamp file
    beside the cache lets the first process to see new sources remove the old files at once."""
    global _stamp
    _stamp = _sources_stamp(mode)
    try:
        from .native.cache import lock_cache_writes, stamp_cache_indexes

        stamp_cache_indexes(os.path.dirname(os.path.abspath(__file__)), lambda: _stamp)
        lock_cache_writes()
        if os.environ.get("SPECC_COMPILE_CLAIMS"):  # a start-up compile worker shares this process's misses
            claim_compiles_in(os.environ["SPECC_COMPILE_CLAIMS"])
    except Exception:  # pragma: no cover - Numba's internals moved: the stamp file below still applies
        pass
    directories = _cache_directories()
    if not directories:  # pragma: no cover - see _cache_directories
        return
    path = os.path.join(directories[0], "specc-sources.stamp")
    try:
        with open(path) as f:
            if f.read() == _stamp:
                return
    except OSError:
        pass
    try:
        for directory in directories:
            if os.path.isdir(directory):
                for name in os.listdir(directory):
                    if name.endswith((".nbi", ".nbc", ".lock")):  # the locks of native/cache.py too
                        os.remove(os.path.join(directory, name))
        # the start-up compile worker's markers (specc.train.warmup): the models they name compile again
        markers = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                    "__pycache__")
        if os.path.isdir(markers):
            for name in os.listdir(markers):
                if name.startswith("specc-warm-"):
                    os.remove(os.path.join(markers, name))
        os.makedirs(directories[0], exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w") as f:
            f.write(_stamp)
        os.replace(temporary, path)
    except OSError:  # pragma: no cover - a read-only install: Numba then caches elsewhere or not at all
        pass


def claim_compiles_in(directory: str) -> None:
    """Compile each kernel signature once between the processes that name the same `directory` here (or
    in $SPECC_COMPILE_CLAIMS before importing this package): one compiles, the others wait and load it from
    the cache (native/cache.py, claim_compiles)."""
    from .native.cache import claim_compiles

    claim_compiles(directory)


def defer_held_claims(defer: bool) -> None:
    """With defer, a kernel signature another process is compiling raises (native.cache.ClaimHeld, through
    whatever Numba wraps it in) instead of being waited for: the compile worker does other work first."""
    from .native.cache import defer_held_claims as switch

    switch(defer)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def thread_count() -> int:
    """numba.get_num_threads() for the calling thread; through the native internals where they load, since
    Numba's Python function takes a process-wide lock (microseconds between kernels)."""
    if native.internals is not None:
        return native.internals.THREAD_COUNT_FUNCTION()
    return numba.get_num_threads()


_product_threads = 1  # threads a matrix product and an optimizer step may use (configure_threads sets it)


def product_threads() -> int:
    """The thread count for matrix products (gemm.matmul / affine) and the optimizers' update kernels."""
    return _product_threads


def _set_product_threads(n: int) -> None:
    global _product_threads
    _product_threads = max(1, int(n))
    if native.sgemm is not None:
        native.sgemm.set_threads(_product_threads)


@contextlib.contextmanager
def one_product_thread():
    """A context in which products and the optimizers run on the calling thread."""
    before = _product_threads
    _set_product_threads(1)
    try:
        yield
    finally:
        _set_product_threads(before)


def configure_threads(n: int | None = None) -> int:
    """Use `n` threads for Numba, matrix products and BLAS; default: $SPECC_THREADS, else the cores this
    process may run on (its CPU affinity, which is what a container or `taskset` gives it)."""
    from ..runtime import threads_from_environment

    if n is None:
        n = threads_from_environment()
    n = max(1, min(n or available_cores(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    _set_product_threads(n)
    try:
        load_scipy_blas()  # the BLAS Numba's np.dot calls: loaded now, so it is limited too
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    from ..runtime import numpy_blas_spins_long
    from .blas import set_numpy_blas_threads

    if n > 1 and numpy_blas_spins_long():
        # NumPy's OpenBLAS loaded before OPENBLAS_THREAD_TIMEOUT was set (see specc.runtime), so its idle
        # workers would spin for ~0.07 s after each product: keep it at one thread; gemm.matmul_blas then
        # sends multi-threaded products to SciPy's, as it does whenever SciPy's may use more threads.
        set_numpy_blas_threads(1)
    return n


# Start Numba's thread pool before any cached kernel is loaded: machine code that links a parallel loop
# calls the pool's entry points, which Numba registers with LLVM only when it starts the pool.
_default_threads = numba.get_num_threads()

# The native package loads last: its modules import the functions above.
from . import native  # noqa: E402

_drop_stale_caches(native.intended_mode())
native.load_kernels()
if native.mode() != native.intended_mode():  # pragma: no cover - the native kernels failed to load
    _drop_stale_caches(native.mode())
# Until configure_threads says otherwise: $SPECC_THREADS threads for Numba and the products (a bad value is
# left for configure_threads to report), else as many as Numba (and BLAS) use by default.
try:
    from ..runtime import threads_from_environment as _threads_from_environment

    _default_threads = min(_threads_from_environment() or _default_threads, numba.config.NUMBA_NUM_THREADS)
except ValueError:
    pass
numba.set_num_threads(_default_threads)
_set_product_threads(_default_threads)
