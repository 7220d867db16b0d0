"""specc: a declarative deep-learning model compiler.

Public surface: load and validate specs, infer graphs, print summaries (the CLI's front door), and the
Python API with Keras 3's semantics on the same schema, graph, engine and training loop:
`Sequential`, `Model`, `Input`, `layers.*`, `load`, and Keras's `models` (`load_model`), `saving`,
`optimizers`, `losses`, `metrics`, `callbacks`. Heavy runtime modules (Numba) are imported lazily, when a model first runs. Importing specc changes
nothing process-wide: `specc.runtime` holds the settings the CLI applies (thread count, spin times).
"""

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
    elif name in ("distributed", "layers", "models", "runtime", "saving"):
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'specc' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = ["Input", "InputLayer", "KerasTensor", "Model", "Sequential", "Spec", "SpecError", "SpecInvalid",
           "__version__", "callbacks", "clear_session", "distributed", "layers", "load", "load_spec", "load_spec_text", "losses",
           "metrics", "models", "optimizers", "runtime", "saving", "set_random_seed"]
