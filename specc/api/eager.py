"""`run_eagerly=True`: the same engine, layers, losses and optimizers, with every Numba kernel replaced by
the plain Python function it was compiled from (`dispatcher.py_func`), so the whole step runs in the
interpreter on NumPy arrays and can be stepped through in a debugger.

Nothing is compiled on this path, and the arithmetic is the kernels' own source, so results match the
compiled path up to float rounding (the compiled kernels use fastmath, which may reorder sums).
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil

import numpy as np

_depth = 0
_saved: list = []


def _kernel_modules() -> list:
    """The kernels' modules, and the native package's that loaded (conv_pool calls its tiles' entry points)."""
    from .. import kernels
    from ..kernels import native

    modules = [importlib.import_module(f"{kernels.__name__}.{m.name}") for m in pkgutil.iter_modules(kernels.__path__)]
    return modules + [m for m in (native.internals, native.products, native.sgemm, native.conv_pool_tiles)
                      if m is not None]


@contextlib.contextmanager
def no_jit():
    """Within this block every specc kernel runs as Python (re-entrant; not thread-safe)."""
    global _depth
    from numba.extending import is_jitted

    if _depth == 0:
        for module in _kernel_modules():
            for key, value in list(vars(module).items()):
                if is_jitted(value):
                    _saved.append((module, key, value))
                    setattr(module, key, value.py_func)
    _depth += 1
    try:
        # Compiled kernels raise no floating-point warnings (an optimizer's clip bounds cast to float32
        # overflow harmlessly, for one); the same code run by NumPy would, so silence them here too.
        with np.errstate(all="ignore"):
            yield
    finally:
        _depth -= 1
        if _depth == 0:
            for module, key, value in _saved:
                setattr(module, key, value)
            _saved.clear()


def runtime(eager: bool):
    return no_jit() if eager else contextlib.nullcontext()
