"""Where Numba caches a module's kernels, as Numba itself chooses it (its cache locators are private).

Loaded even with SPECC_NATIVE=0: it asks Numba a question and compiles nothing, and the kernel cache's
stamp (kernels/__init__.py) needs the answer in every mode, or machine code compiled with the native
kernels could be loaded by a portable process that does not register their symbols.
"""

from __future__ import annotations


def cache_directory(function, source_file: str) -> str | None:
    """The directory Numba caches `function` (defined in `source_file`) in: the first of its cache
    locators that applies."""
    from numba.core.caching import CacheImpl

    for locator_class in CacheImpl._locator_classes:
        locator = locator_class.from_function(function, source_file)
        if locator is not None:
            return locator.get_cache_path()
    return None
