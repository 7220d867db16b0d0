"""Keras's `keras.saving` namespace: `save_model(model, "m.specc")` (the same as `model.save`) and
`load_model("m.specc")`; specc.api.saving describes the `.specc` format."""

from .api.saving import load_model, save_model

__all__ = ["load_model", "save_model"]
