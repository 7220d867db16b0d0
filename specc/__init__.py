"""specc: a declarative deep-learning model compiler.

Public surface: load and validate specs, infer graphs, print summaries (the CLI's front door), and the
Python API with Keras 3's semantics on the same schema, graph, engine and training loop:
`Sequential`, `Model`, `Input`, `layers.*`, `load`, and Keras's `optimizers`, `losses`, `metrics`,
`callbacks`. Heavy runtime modules (Numba) are imported lazily, when a model first runs.
"""

import os as _os
import sys as _sys

# OpenBLAS's idle workers spin for ~0.1 s after each call before they sleep, holding a core that the
# convolutions' own threads then need (the CNN step at 2 threads ran at 1-thread speed). OpenBLAS reads
# this when it loads, i.e. when NumPy is first imported, so it is set here, before anything imports NumPy
# (the CLI imports specc first); 2^4 cycles lets the workers sleep at once. A value the user set wins.
# If NumPy came first, its OpenBLAS keeps spinning, and kernels.configure_threads routes multi-threaded
# products to SciPy's OpenBLAS instead (loaded later, with this setting; see kernels/gemm.matmul_blas).
_numpy_blas_sleeps = "numpy" not in _sys.modules or "OPENBLAS_THREAD_TIMEOUT" in _os.environ
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

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
