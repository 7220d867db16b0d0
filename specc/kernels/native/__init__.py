"""Native code: the one place in specc that writes LLVM IR, registers symbols with LLVM, or reaches into
Numba's and llvmlite's private names.

The rest of specc calls a portable interface (`kernels.gemm`'s products, `kernels.conv_pool`,
`kernels.thread_count`, `kernels.product_threads`) whose own implementation is plain `@njit` code and
BLAS. When this package loads, those entry points use what it offers instead:

- `internals`: Numba's thread-count function callable from compiled code and a float64-from-bits
  bitcast (target-independent IR; any CPU);
- `products`: matrix products lowered as one call of a C callable per dtype, over NumPy's or SciPy's
  OpenBLAS by symbol (any CPU);
- `sgemm`: float32 matrix products on register tiles of 512-bit vectors where Numba compiles for this
  very CPU and it has AVX-512, else of 256-bit vectors where the CPU Numba compiles for has AVX2 and FMA
  (one variant per process: the other is never compiled);
- `conv_pool_tiles`: convolution + pooling tiles on the vectors sgemm is built for (its IR helpers);
- `conv_tiles`: direct convolution tiles (forward, input and kernel gradients) on those vectors.

`SPECC_NATIVE=0` turns the package off, but for `cache`, which only asks Numba where its cache is (the
kernel cache's stamp needs that in every mode). A failure while it loads (a Numba or llvmlite that moved
what it uses) leaves the portable path in place, with one warning; `import specc` never breaks because of
it.
"""

from __future__ import annotations

import functools
import importlib
import os
import platform
import re
import warnings

import numba

ENABLED = False  # internals and products loaded
AVX512 = False  # sgemm and conv_pool_tiles on 512-bit vectors loaded
AVX2 = False  # sgemm and conv_pool_tiles on 256-bit vectors loaded
REASON = ""  # why a part is off

# The loaded modules, None until loaded (the names shadow the submodules: import them with importlib).
internals = products = sgemm = conv_pool_tiles = conv_tiles = None


def _warn(error: Exception) -> None:
    global REASON
    REASON = f"native kernels failed to load ({type(error).__name__}: {error}); using portable kernels"
    warnings.warn(f"specc: {REASON}", RuntimeWarning, stacklevel=4)


# Functions whose machine code shows which vectors a target compiles to: a 512-bit FMA stays in zmm
# registers only with AVX-512; a 256-bit FMA and a 256-bit integer add need FMA and AVX2.
_PROBE_IR = """
declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
declare <8 x float> @llvm.fma.v8f32(<8 x float>, <8 x float>, <8 x float>)
define <16 x float> @wide(<16 x float> %a, <16 x float> %b, <16 x float> %c) {
  %r = call <16 x float> @llvm.fma.v16f32(<16 x float> %a, <16 x float> %b, <16 x float> %c)
  ret <16 x float> %r
}
define <8 x float> @fma(<8 x float> %a, <8 x float> %b, <8 x float> %c) {
  %r = call <8 x float> @llvm.fma.v8f32(<8 x float> %a, <8 x float> %b, <8 x float> %c)
  ret <8 x float> %r
}
define <8 x i32> @add(<8 x i32> %a, <8 x i32> %b) {
  %r = add <8 x i32> %a, %b
  ret <8 x i32> %r
}
"""


def _target_isas(cpu: str, features: str) -> set[str]:
    """{'avx512', 'avx2'} or a part of it: what LLVM compiles to for this CPU name and feature string (a
    partial string leaves the rest to the named CPU's own features, which only LLVM knows)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    machine = llvm.Target.from_default_triple().create_target_machine(cpu=cpu, features=features)
    parts = re.split(r"^(wide|fma|add):$", machine.emit_assembly(llvm.parse_assembly(_PROBE_IR)), flags=re.M)
    code = dict(zip(parts[1::2], parts[2::2]))
    isas = {"avx512"} if "%zmm" in code["wide"] else set()
    if re.search(r"vfmadd\w*\s+%ymm", code["fma"]) and re.search(r"vpaddd\s+%ymm", code["add"]):
        isas.add("avx2")
    return isas


@functools.cache
def vector_isa() -> str | None:
    """The vectors sgemm is built for: 'avx512' where Numba compiles for this very CPU and it has AVX-512,
    'avx2' where the CPU Numba compiles for has AVX2 and FMA, else None.

    Numba compiles for NUMBA_CPU_NAME (default: this CPU) with NUMBA_CPU_FEATURES (default: this CPU's
    feature list, whatever the name) and keys its cache on the pair, so the answer depends on that pair
    alone and a cached kernel never meets another variant's. NUMBA_CPU_NAME=haswell on an AVX-512 CPU
    still compiles AVX-512 instructions; with NUMBA_CPU_FEATURES="" it compiles for a Haswell."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    import llvmlite.binding

    host = llvmlite.binding.get_host_cpu_name()
    cpu = numba.config.CPU_NAME if numba.config.CPU_NAME not in (None, "host") else host
    features = numba.config.CPU_FEATURES
    try:
        from numba.core.codegen import get_host_cpu_features

        host_features = get_host_cpu_features()  # as Numba passes them (less AVX with NUMBA_ENABLE_AVX=0)
    except Exception:  # pragma: no cover - Numba moved it: the list it passes by default
        host_features = llvmlite.binding.get_host_cpu_features().flatten()
    if features is None or features == host_features:  # a full list: every feature named
        named = {f[1:] for f in host_features.split(",") if f.startswith("+")}
        isas = {"avx512"} if "avx512f" in named else set()
        isas |= {"avx2"} if {"avx2", "fma"} <= named else set()
    else:
        try:
            isas = _target_isas(cpu, features)
        except Exception:  # pragma: no cover - llvmlite moved what the probe uses: no micro-kernels
            isas = set()
    if "avx512" in isas and cpu == host and features in (None, "", host_features):  # this very CPU
        return "avx512"
    return "avx2" if "avx2" in isas else None


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
    """The mode load_kernels aims at: 'avx512' (sgemm and conv_pool_tiles on 512-bit vectors), 'avx2'
    (on 256-bit vectors), 'native' (IR products over BLAS, no micro-kernels) or 'portable'."""
    if internals is None:
        return "portable"
    return vector_isa() or "native"


def load_kernels() -> None:
    """Loads products, and sgemm and conv_pool_tiles where the CPU has AVX-512 or AVX2 and FMA; on a failure
    of sgemm or products, none of them."""
    global ENABLED, AVX512, AVX2, REASON, products, sgemm, conv_pool_tiles, conv_tiles
    if internals is None:
        return
    target = intended_mode()
    try:
        if target in ("avx512", "avx2"):
            # products' float32 dispatch links sgemm when it is here, so sgemm loads first
            sgemm = importlib.import_module(f"{__name__}.sgemm")
        else:
            REASON = "neither AVX-512 nor AVX2 with FMA on the CPU Numba compiles for"
        products = importlib.import_module(f"{__name__}.products")
    except Exception as error:  # pragma: no cover - depends on the installed Numba/llvmlite
        products = sgemm = None
        _warn(error)
        return
    if target in ("avx512", "avx2"):
        try:  # after products: it imports kernels/conv.py, whose products must be the native ones
            conv_pool_tiles = importlib.import_module(f"{__name__}.conv_pool_tiles")
        except Exception as error:  # pragma: no cover - depends on the installed Numba/llvmlite
            _warn(error)
        try:
            conv_tiles = importlib.import_module(f"{__name__}.conv_tiles")
        except Exception as error:  # pragma: no cover - depends on the installed Numba/llvmlite
            _warn(error)
    ENABLED = True
    AVX512 = target == "avx512"
    AVX2 = target == "avx2"


def mode() -> str:
    """What load_kernels loaded: part of the kernel cache's stamp, since machine code compiled in one mode
    calls symbols another mode does not register."""
    return "avx512" if AVX512 else "avx2" if AVX2 else "native" if ENABLED else "portable"


_load_internals()
