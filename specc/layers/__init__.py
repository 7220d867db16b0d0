"""Every layer family, registered by its YAML `type` (a family's module loads when one of its types is first
looked up).

Two faces of one registry: `REGISTRY[type]` is the LayerSpec class a YAML spec validates against, and
`specc.layers.Dense`, `specc.layers.Conv2D`, ... (one per registered type, plus `Input`, `InputLayer` and
`Layer`) are the Python API's layer classes built on those specs (specc.api.layer). The API classes load
on first access, so validating a spec never imports them.
"""

# The family modules (core, conv, ...) are not imported here: REGISTRY imports each on first use, so that
# validating a spec builds only the layer classes it uses.
from .base import REGISTRY, LayerSpec, ShapeError, WeightSpec, snake_case

__all__ = ["REGISTRY", "LayerSpec", "ShapeError", "WeightSpec", "snake_case"]

_API_EXTRAS = ("Input", "InputLayer", "Layer")


def __getattr__(name: str):
    # PEP 562: `specc.layers.Dense` and `from specc.layers import Dense` resolve here.
    if name in REGISTRY and name != "Sequential" or name in _API_EXTRAS:
        from ..api import layer as _api

        value = _api.LAYER_CLASSES[name] if name in _api.LAYER_CLASSES else getattr(_api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'specc.layers' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {t for t in REGISTRY if t != "Sequential"} | set(_API_EXTRAS))
