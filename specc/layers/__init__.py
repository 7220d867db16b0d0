"""Every layer family, registered by its YAML `type` on import."""

from . import activations, container, conv, core, merging, normalization, pooling, recurrent, reshaping  # noqa: F401
from .base import REGISTRY, LayerSpec, ShapeError, WeightSpec, snake_case

__all__ = ["REGISTRY", "LayerSpec", "ShapeError", "WeightSpec", "snake_case"]
