"""The public layer namespace, `specc.layers.*`: one API class per registered layer type (except the
nested-block container, whose Python counterparts are specc.Sequential and specc.Model), plus `Input`,
`InputLayer` and `Layer`. specc.layers (the core package, which also holds the registry) forwards the
names it does not define itself to `public_name` here.
"""

from __future__ import annotations

from typing import Any

from ..layers.base import REGISTRY

EXTRAS = ("Input", "InputLayer", "Layer")
BLOCKS = ("Sequential",)  # registered types that are models in Python


def names() -> list[str]:
    return [t for t in REGISTRY if t not in BLOCKS] + list(EXTRAS)


def public_name(name: str) -> Any:
    """The API object `specc.layers.<name>`, or AttributeError."""
    if name in EXTRAS or (name in REGISTRY and name not in BLOCKS):
        from . import layer

        return layer.LAYER_CLASSES[name] if name in layer.LAYER_CLASSES else getattr(layer, name)
    raise AttributeError(f"module 'specc.layers' has no attribute '{name}'")
