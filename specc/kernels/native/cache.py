"""Where Numba caches a module's kernels, as Numba itself chooses it, and the kernels' stamp in every cache
index (both go through Numba's cache locators, which are private).

Loaded even with SPECC_NATIVE=0: it asks Numba a question and compiles nothing, and the kernel cache's
stamp (kernels/__init__.py) needs the answer in every mode, or machine code compiled with the native
kernels could be loaded by a portable process that does not register their symbols.
"""

from __future__ import annotations

import itertools
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


def lock_cache_writes() -> None:
    """Makes every save into a Numba cache index a transaction under an exclusive lock on a file beside the
    index (flock), with the data file written before the index names it; idempotent.

    Numba saves an entry by reading the function's index, adding the entry and writing the index back. Two
    processes saving different signatures of one function at once (the start-up's compile workers and the
    process that trains, kernels.warm) would both read the same index: the later write drops the other's
    entry (compiled again next time), or both give their data the same file name, and the index then
    sends one signature to the other's machine code. Under the lock the second writer reads the first's
    index. Where flock does not exist (Windows) saves stay as Numba makes them."""
    from numba.core import caching

    save = caching.IndexDataCacheFile.save
    if getattr(save, "specc_locked", False):
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return

    def locked_save(self, key, data):
        try:
            fd = os.open(self._index_path + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:  # a read-only cache directory: Numba's own save fails as it would have
            return save(self, key, data)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            overloads = self._load_index()
            data_name = overloads.get(key)
            if data_name is None:
                taken = set(overloads.values())
                data_name = next(self._data_name(i) for i in itertools.count(1) if self._data_name(i) not in taken)
            self._save_data(data_name, data)  # before the index names it: a reader never finds a missing file
            if overloads.get(key) != data_name:
                overloads[key] = data_name
                self._save_index(overloads)
        finally:
            os.close(fd)  # releases the lock

    locked_save.specc_locked = True
    caching.IndexDataCacheFile.save = locked_save


_claims: dict = {}  # (index path, signature) -> the open lock file this process compiles it under
_defer = [False]  # claim_compiles: raise ClaimHeld instead of waiting for another process's compile


class ClaimHeld(RuntimeError):
    """A signature this process needs is being compiled by another one (raised instead of waiting, when
    deferring: the compile worker then moves on to other kernels and comes back)."""


def defer_held_claims(defer: bool) -> None:
    _defer[0] = defer


def claim_compiles(directory: str, timeout: float = 300.0) -> None:
    """Makes processes that share `directory` compile each kernel signature once between them: a cache miss
    takes an exclusive lock on `directory`/<digest of the function's index and the signature>.lock, looks in
    the cache again (the holder before it has saved the machine code there), and holds the lock until its
    own machine code is saved. A process that meets a signature another one is compiling waits for it
    instead of compiling it too (the start-up's compile worker, specc.train.warmup). After `timeout`
    seconds of waiting (a stuck holder) it compiles anyway. Idempotent; applies to specc's kernels only
    (the stamped locators of stamp_cache_indexes).

    No deadlock: a process waits only inside a compile, for a callee or a first kernel; two processes
    waiting on each other would need two functions that each call the other."""
    import fcntl
    import hashlib
    import time

    from numba.core import caching, event

    os.makedirs(directory, exist_ok=True)
    load, save = caching.Cache.load_overload, caching.Cache.save_overload
    if getattr(load, "specc_claims", None) is not None:
        load.specc_claims[0] = directory
        return
    where = [directory]

    def ours(cache) -> bool:
        return getattr(cache._impl.locator, "specc_stamped", False)

    def claim_key(cache, sig) -> tuple:
        return cache._cache_file._index_path, str(sig)

    def claimed_load(self, sig, target_context):
        data = load(self, sig, target_context)
        key = claim_key(self, sig) if ours(self) else None
        if data is not None or key is None or key in _claims:
            return data
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:40]
        try:
            fd = os.open(os.path.join(where[0], digest + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return None
        end = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if _defer[0]:
                    os.close(fd)
                    raise ClaimHeld(key[1]) from None
                if time.monotonic() > end:
                    os.close(fd)
                    return None
                time.sleep(0.005)
        data = load(self, sig, target_context)  # the previous holder saved it meanwhile
        if data is not None:
            os.close(fd)
            return data
        _claims[key] = fd
        return None

    def release(key) -> None:
        fd = _claims.pop(key, None)
        if fd is not None:
            os.close(fd)  # releases the lock

    def claimed_save(self, sig, data):
        try:
            save(self, sig, data)
        finally:
            if ours(self):
                release(claim_key(self, sig))

    class Failed(event.Listener):
        """A compile that raised saves nothing: its claim is released at once."""

        def on_start(self, ev):
            pass

        def on_end(self, ev):
            # not Event.is_failed: in Numba 0.61-0.68 it is true when there is *no* exception
            if ev.data is not None and getattr(ev, "_exc_details", None) is not None:
                dispatcher = ev.data["dispatcher"]
                cache = getattr(dispatcher, "_cache", None)
                if isinstance(cache, caching.Cache) and ours(cache):
                    release(claim_key(cache, ev.data["args"]))

    claimed_load.specc_claims = where
    caching.Cache.load_overload = claimed_load
    caching.Cache.save_overload = claimed_save
    event.register("numba:compile", Failed())
