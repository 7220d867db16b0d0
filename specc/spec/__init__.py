"""Spec loading and validation (no Numba): YAML with positions, the pydantic schema, error rendering."""

from .errors import SpecError, SpecInvalid, render

# The validator loads on first use (PEP 562): it needs the graph and the layer registry, which themselves
# import the field types from this package, so loading it here would be an import cycle for anyone who
# starts from a layer module.
_VALIDATE = ("Spec", "load_spec", "load_spec_text")


def __getattr__(name: str):
    if name in _VALIDATE:
        from . import validate

        value = getattr(validate, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'specc.spec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = ["Spec", "SpecError", "SpecInvalid", "load_spec", "load_spec_text", "render"]
