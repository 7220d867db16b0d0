"""specc: a declarative deep-learning model compiler.

Public surface: load and validate specs, infer graphs, print summaries (the CLI's front door), and the
Python API with Keras 3's semantics on the same schema, graph, engine and training loop:
`Sequential`, `Model`, `Input`, `layers.*`, `load`, and Keras's `optimizers`, `losses`, `metrics`,
`callbacks`. Heavy runtime modules (Numba) are imported lazily, when a model first runs.
"""

import os as _os
import sys as _sys

# OpenBLAS's idle workers spin for 2^28 cycles (~0.07 s) after each multi-threaded call before they sleep.
# Between the products of an MLP step that is what you want (no wake-up per product), but so long a spin
# holds a core that other work needs: the convolutions' own threads (engine.Engine._thread_limits keeps BLAS on
# one thread in such models), the user's code. 2^22 cycles (~1 ms) kept the MLP's gain (2 threads: 93k ->
# 111k samples/s against 2^4, which sleeps at once) at no cost to the CNN. OpenBLAS reads the variable
# once, when it loads, i.e. when NumPy is first imported, so it is set here, before anything imports NumPy
# (the CLI imports specc first). A value the user set wins. If NumPy came first, its OpenBLAS spins for
# the default time, and kernels.configure_threads routes multi-threaded products to SciPy's OpenBLAS
# instead (loaded later, with this setting; see kernels/gemm.matmul_blas).
_numpy_blas_timeout_set = "numpy" not in _sys.modules or "OPENBLAS_THREAD_TIMEOUT" in _os.environ
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")
# The same for Numba's OpenMP workers (GNU libgomp, read when Numba first starts its thread pool): by
# default they spin 300,000 rounds (several ms) after each parallel loop. The convolution + pooling
# kernels run on them, and the layers that follow split their work over Python threads, which then found
# the second core taken: the benchmark CNN's second convolution's backward took 7.2 ms on 2 threads
# instead of 4.4 ms with 20,000 rounds (which is still long enough for the gaps between an MLP's products).
_os.environ.setdefault("GOMP_SPINCOUNT", "20000")

# Everything here loads on first use (PEP 562): `import specc.cli` runs this file before any command, and
# the command decides what it needs — `specc --help` needs neither pydantic nor YAML, `specc summary` not
# the Python API.
_FROM = {
    "Spec": "spec", "SpecError": "spec", "SpecInvalid": "spec", "load_spec": "spec", "load_spec_text": "spec",
    **{name: "api" for name in ("Input", "InputLayer", "KerasTensor", "Model", "Sequential", "callbacks",
                                "clear_session", "load", "losses", "metrics", "optimizers", "set_random_seed")},
}


def __getattr__(name: str):
    import importlib

    if name in _FROM:
        value = getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
    elif name == "layers":
        value = importlib.import_module(".layers", __name__)
    else:
        raise AttributeError(f"module 'specc' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = ["Input", "InputLayer", "KerasTensor", "Model", "Sequential", "Spec", "SpecError", "SpecInvalid",
           "__version__", "callbacks", "clear_session", "layers", "load", "load_spec", "load_spec_text", "losses",
           "metrics", "optimizers", "set_random_seed"]
