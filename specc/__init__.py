"""specc: a declarative deep-learning model compiler.

Public surface: load and validate specs, infer graphs, print summaries (the CLI's front door), and the
Python API with Keras 3's semantics on the same schema, graph, engine and training loop:
`Sequential`, `Model`, `Input`, `layers.*`, `load`, and Keras's `optimizers`, `losses`, `metrics`,
`callbacks`. Heavy runtime modules (Numba) are imported lazily, when a model first runs.
"""

# The spec package first: importing it loads the layer registry in the one order that has no import cycle
# (specc.layers on its own would reach specc.spec, which needs the registry half-way through).
from .spec import Spec, SpecError, SpecInvalid, load_spec, load_spec_text

# isort: split
from . import layers

# The Python API loads on first use (PEP 562), so `specc validate` / `specc summary` do not pay for it.
_API = ("Input", "InputLayer", "KerasTensor", "Model", "Sequential", "callbacks", "clear_session", "load",
        "losses", "metrics", "optimizers", "set_random_seed")


def __getattr__(name: str):
    if name in _API:
        from . import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'specc' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = ["Input", "InputLayer", "KerasTensor", "Model", "Sequential", "Spec", "SpecError", "SpecInvalid",
           "__version__", "callbacks", "clear_session", "layers", "load", "load_spec", "load_spec_text", "losses",
           "metrics", "optimizers", "set_random_seed"]
