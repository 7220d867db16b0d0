"""specc: a declarative deep-learning model compiler.

Public surface: load and validate specs, infer graphs, print summaries. Heavy runtime modules (Numba)
are imported lazily by the commands that need them.
"""

from .spec import Spec, SpecError, SpecInvalid, load_spec, load_spec_text

__version__ = "0.1.0"

__all__ = ["Spec", "SpecError", "SpecInvalid", "__version__", "load_spec", "load_spec_text"]
