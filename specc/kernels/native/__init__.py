"""Native code: the one place in specc that writes LLVM IR, registers symbols with LLVM, or reaches into
Numba's and llvmlite's private names.

The rest of specc calls a portable interface (`kernels.gemm`'s products, `kernels.conv_pool`,
`kernels.thread_count`, `kernels.cache_directory`) whose own implementation is plain `@njit` code and
BLAS. When this package loads, those entry points use what it offers instead:

- `internals`: Numba's thread-count function callable from compiled code and a float64-from-bits
  bitcast (target-independent IR; any CPU);
- `products`: matrix products lowered as one call of a C callable per dtype, over NumPy's or SciPy's
  OpenBLAS by symbol (any CPU);
- `sgemm` and `conv_pool_tiles`: float32 micro-kernels on 512-bit vectors (AVX-512 CPUs only, and only
  when Numba compiles for the host CPU: they are never compiled elsewhere).

`SPECC_NATIVE=0` turns the package off, but for `cache`, which only asks Numba where its cache is (the
kernel cache's stamp needs that in every mode). A failure while it loads (a Numba or llvmlite that moved what it
uses) leaves the portable path in place, with one warning; `import specc` never breaks because of it.
"""

from __future__ import annotations

import importlib
import os
import platform
import warnings

import numba

ENABLED = False  # internals and products loaded
AVX512 = False  # sgemm and conv_pool_tiles loaded
REASON = ""  # why a part is off

# The loaded modules, None until loaded (the names shadow the submodules: import them with importlib).
internals = products = sgemm = conv_pool_tiles = None


def _warn(error: Exception) -> None:
    global REASON
    REASON = f"native kernels failed to load ({type(error).__name__}: {error}); using portable kernels"
    warnings.warn(f"specc: {REASON}", RuntimeWarning, stacklevel=4)


def _host_has_avx512() -> bool:
    import llvmlite.binding

    features = llvmlite.binding.get_host_cpu_features()
    return (platform.machine().lower() in ("x86_64", "amd64") and bool(features.get("avx512f"))
            and numba.config.CPU_NAME in (None, "host") and not numba.config.CPU_FEATURES)


def _load_internals() -> None:
    global REASON, internals
    if os.environ.get("SPECC_NATIVE", "1").strip() == "0":
        REASON = "SPECC_NATIVE=0"
        return
    try:
        loaded = importlib.import_module(f"{__name__}.internals")
    except Exception as error:  # pragma: no cover - depends on the installed Numba/llvmlite
        _warn(error)
        return
    internals = loaded


def intended_mode() -> str:
    """The mode load_kernels aims at: 'avx512', 'native' (IR products, no AVX-512 kernels) or 'portable'."""
    if internals is None:
        return "portable"
    return "avx512" if _host_has_avx512() else "native"


def load_kernels() -> None:
    """Loads products, and sgemm and conv_pool_tiles where the CPU has AVX-512; on any failure, none."""
    global ENABLED, AVX512, REASON, products, sgemm, conv_pool_tiles
    if internals is None:
        return
    try:
        if intended_mode() == "avx512":
            # products' float32 dispatch links sgemm when it is here, so sgemm loads first
            sgemm = importlib.import_module(f"{__name__}.sgemm")
        else:
            REASON = "no AVX-512 (or Numba compiles for another CPU than this one)"
        products = importlib.import_module(f"{__name__}.products")
    except Exception as error:  # pragma: no cover - depends on the installed Numba/llvmlite
        products = sgemm = None
        _warn(error)
        return
    if sgemm is not None:
        try:  # after products: it imports kernels/conv.py, whose products must be the native ones
            conv_pool_tiles = importlib.import_module(f"{__name__}.conv_pool_tiles")
        except Exception as error:  # pragma: no cover - depends on the installed Numba/llvmlite
            _warn(error)
    ENABLED = True
    AVX512 = sgemm is not None


def mode() -> str:
    """What load_kernels loaded: part of the kernel cache's stamp, since machine code compiled in one mode
    calls symbols another mode does not register."""
    return "avx512" if AVX512 else "native" if ENABLED else "portable"


_load_internals()
