"""The one error an export raises for a model it cannot write."""

from __future__ import annotations


class ExportError(ValueError):
    """A layer, argument or file the export cannot handle. `layer` is the layer's name (None when the
    problem is not one layer's), so the CLI can point at the layer's line in the spec."""

    def __init__(self, message: str, layer: str | None = None):
        super().__init__(message)
        self.layer = layer
