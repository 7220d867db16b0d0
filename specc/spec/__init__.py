"""Spec loading and validation (no Numba): YAML with positions, the pydantic schema, error rendering."""

from .errors import SpecError, SpecInvalid, render
from .validate import Spec, load_spec, load_spec_text

__all__ = ["Spec", "SpecError", "SpecInvalid", "load_spec", "load_spec_text", "render"]
