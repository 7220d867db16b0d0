"""Export a model to ONNX: `specc export SPEC --weights RUN -o model.onnx` and `model.export(path)`.

The exporter walks the engine's steps (nested blocks flattened, layers unfused) and turns each into ONNX
nodes through one table keyed by the layer's YAML `type` (specc/export/to_onnx.py, `CONVERTERS`): adding a
layer type is one entry there. The model is built and checked (`onnx.checker` with shape inference) in
memory, so a layer that cannot be exported is an error before any file exists, and the file is written
atomically without replacing an existing one.

The `onnx` package is optional (`pip install 'specc[onnx]'`); nothing here imports it until an export runs.
"""

from __future__ import annotations

from .errors import ExportError

__all__ = ["ExportError", "build_onnx", "export_onnx"]


def build_onnx(engine, name: str, normalization: dict | None = None):
    """The ModelProto of `engine`'s graph and weights (checked), without writing anything."""
    from .to_onnx import build_model

    return build_model(engine, name, normalization)


def export_onnx(engine, path: str, name: str, normalization: dict | None = None) -> None:
    """Build, check and write `path` (never replacing an existing file)."""
    from .to_onnx import build_model, write_new

    write_new(path, build_model(engine, name, normalization))
