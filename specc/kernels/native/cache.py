"""Where Numba caches a module's kernels, as Numba itself chooses it, and the kernels' stamp in every cache
index (both go through Numba's cache locators, which are private).

Loaded even with SPECC_NATIVE=0: it asks Numba a question and compiles nothing, and the kernel cache's
stamp (kernels/__init__.py) needs the answer in every mode, or machine code compiled with the native
kernels could be loaded by a portable process that does not register their symbols.
"""

from __future__ import annotations

import os


def cache_directory(function, source_file: str) -> str | None:
    """The directory Numba caches `function` (defined in `source_file`) in: the first of its cache
    locators that applies."""
    from numba.core.caching import CacheImpl

    for locator_class in CacheImpl._locator_classes:
        locator = locator_class.from_function(function, source_file)
        if locator is not None:
            return locator.get_cache_path()
    return None


def stamp_cache_indexes(package_directory: str, stamp) -> None:
    """Makes Numba record `stamp()` in the cache index of every function defined under `package_directory`
    (beside its own file's hash, which Numba keeps checking), and reject an index written with another.

    Numba checks a cached function against its own source file only, but its machine code includes the
    callees it inlined from other modules (numba/numba#1833). With the package's stamp in each index, an
    entry written by a process that imported other sources (one that ran across an edit, a merge or an
    upgrade) is recompiled by every process that sees the new ones, instead of loaded.
    Installs subclasses of Numba's file-backed cache locators ahead of its own; idempotent."""
    from numba.core import caching

    prefix = os.path.join(os.path.abspath(package_directory), "")

    def stamped(base):
        class Stamped(base):
            specc_stamped = True

            def get_source_stamp(self):
                return super().get_source_stamp(), stamp()

            @classmethod
            def from_function(cls, py_func, py_file):
                if not os.path.abspath(py_file).startswith(prefix):
                    return None
                return super().from_function(py_func, py_file)

        Stamped.__name__ = Stamped.__qualname__ = f"Stamped{base.__name__}"
        return Stamped

    classes = [c for c in caching.CacheImpl._locator_classes if not getattr(c, "specc_stamped", False)]
    wrapped = [stamped(c) for c in classes if issubclass(c, caching._SourceFileBackedLocatorMixin)]
    caching.CacheImpl._locator_classes = wrapped + classes
