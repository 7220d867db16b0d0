"""The OpenBLAS libraries NumPy's and SciPy's wheels bundle, through ctypes: their thread counts, and
whether each is here (a NumPy or SciPy built against MKL, Accelerate or a system BLAS has none).

NumPy's bundled OpenBLAS (libscipy_openblas64_) is the newer build and its CBLAS interface takes 64-bit
integers; SciPy's (libscipy_openblas) is the one Numba's np.dot reaches through scipy.linalg.cython_blas.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os


def _openblas(package: str, pattern: str):
    """ctypes handle of the OpenBLAS a wheel bundles in <site-packages>/<package>.libs, or None."""
    spec = importlib.util.find_spec(package)
    for directory in (spec.submodule_search_locations or []) if spec else []:
        for path in glob.glob(os.path.join(directory, "..", package + ".libs", pattern)):
            try:
                return ctypes.CDLL(path)  # loaded already (NumPy) or now: the same handle threadpoolctl limits
            except OSError:
                pass
    return None


NUMPY_OPENBLAS = _openblas("numpy", "libscipy_openblas64_*.so")
SCIPY_OPENBLAS = _openblas("scipy", "libscipy_openblas-*.so")
HAVE_NUMPY_BLAS = NUMPY_OPENBLAS is not None and all(
    hasattr(NUMPY_OPENBLAS, name) for name in ("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_",
                                               "scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"))
HAVE_SCIPY_BLAS = SCIPY_OPENBLAS is not None and all(
    hasattr(SCIPY_OPENBLAS, name) for name in ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"))


def set_numpy_blas_threads(n: int) -> None:
    """Caps the threads of NumPy's own OpenBLAS only (threadpoolctl would cap every BLAS)."""
    if HAVE_NUMPY_BLAS:
        NUMPY_OPENBLAS.scipy_openblas_set_num_threads64_(ctypes.c_int(n))


class OneOpenblasThread:
    """A context in which NumPy's and SciPy's bundled OpenBLAS run on one thread, restored on exit: four
    calls into them, where threadpoolctl's limit inspects every loaded library each time it is entered and
    left, twice per training step of a convolutional model. Only where both are found
    (conv.one_blas_thread falls back to threadpoolctl)."""

    def __enter__(self):
        self._before = (NUMPY_OPENBLAS.scipy_openblas_get_num_threads64_(),
                        SCIPY_OPENBLAS.scipy_openblas_get_num_threads())
        NUMPY_OPENBLAS.scipy_openblas_set_num_threads64_(ctypes.c_int(1))
        SCIPY_OPENBLAS.scipy_openblas_set_num_threads(ctypes.c_int(1))
        return self

    def __exit__(self, *exc):
        NUMPY_OPENBLAS.scipy_openblas_set_num_threads64_(ctypes.c_int(self._before[0]))
        SCIPY_OPENBLAS.scipy_openblas_set_num_threads(ctypes.c_int(self._before[1]))
