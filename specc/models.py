"""Keras's `keras.models` namespace: `Sequential`, `Model`, and `load_model` for files written by
`model.save("m.specc")` (specc.api.saving describes the format)."""

from .api.model import Model
from .api.saving import load_model
from .api.sequential import Sequential

__all__ = ["Model", "Sequential", "load_model"]
