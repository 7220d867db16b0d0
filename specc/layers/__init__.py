"""Every layer family, registered by its YAML `type` (a family's module loads when one of its types is first
looked up): `REGISTRY[type]` is the LayerSpec class a YAML spec validates against.

`specc.layers` is also the name users import the Python API's layer classes from (`specc.layers.Dense`,
`from specc.layers import Conv2D`, `Input`, ...). Those belong to the API: this package only forwards the
names it does not define to specc.api.layers, on first access, so validating a spec never loads the API.
"""

# The family modules (core, conv, ...) are not imported here: REGISTRY imports each on first use, so that
# validating a spec builds only the layer classes it uses.
from .base import REGISTRY, LayerSpec, ShapeError, WeightSpec, snake_case

__all__ = ["REGISTRY", "LayerSpec", "ShapeError", "WeightSpec", "snake_case"]


def __getattr__(name: str):
    # PEP 562: `specc.layers.Dense` and `from specc.layers import Dense` resolve here.
    if name.startswith("_"):  # tools probing dunders must not load the API
        raise AttributeError(f"module 'specc.layers' has no attribute '{name}'")
    from ..api.layers import public_name

    value = public_name(name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    from ..api.layers import names

    return sorted(set(globals()) | set(names()))
