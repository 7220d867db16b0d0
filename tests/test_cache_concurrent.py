"""Several processes share one kernel cache: a start-up compile worker (specc/train/warmup.py) and the
process that trains save into it at the same time.

A save into a Numba cache index reads the index, adds its entry and writes it back: two writers at once
must keep both entries, and never give two signatures one data file (native/cache.py, lock_cache_writes).
With SPECC_COMPILE_CLAIMS, a process that misses a signature another process is compiling waits for it and
loads its machine code instead of compiling it too (claim_compiles)."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading

import pytest

import specc
import specc.kernels  # noqa: F401 - installs the locked save

PACKAGE = os.path.dirname(os.path.abspath(specc.__file__))


def test_two_writers_of_one_index_keep_both_entries(tmp_path):
    from numba.core.caching import IndexDataCacheFile

    first = IndexDataCacheFile(str(tmp_path), "kernel-1.py311", "stamp")
    second = IndexDataCacheFile(str(tmp_path), "kernel-1.py311", "stamp")
    has_read, go = threading.Event(), threading.Event()
    read = first._load_index

    def slow_read():  # the first writer stops between reading the index and writing it back
        overloads = read()
        has_read.set()
        go.wait(10)
        return overloads

    first._load_index = slow_read
    writer = threading.Thread(target=first.save, args=(("float32",), "machine code for float32"))
    writer.start()
    assert has_read.wait(10)
    other = threading.Thread(target=second.save, args=(("float64",), "machine code for float64"))
    other.start()
    other.join(0.5)
    assert other.is_alive(), "the second writer did not wait for the first one's index"
    go.set()
    writer.join(10)
    other.join(10)
    reader = IndexDataCacheFile(str(tmp_path), "kernel-1.py311", "stamp")
    assert reader.load(("float32",)) == "machine code for float32"
    assert reader.load(("float64",)) == "machine code for float64"


CALLEE = "import numba\n\n\n@numba.njit(cache=True)\ndef increment():\n    return 1\n"
CALLER = (
    "import numba\n\nfrom ._probe_callee import increment\n\n\n"
    "@numba.njit(cache=True)\ndef bump(x):\n    return x + increment()\n"
)
# Prints a line when a compile starts and when it ends; with PAUSE set, waits for a line on stdin at the
# start of its first compile (bump's: its claim is held from before that event until its machine code is
# saved).
RUN = (
    "import os, sys\n"
    "from numba.core import event\n"
    "class Report(event.Listener):\n"
    "    paused = False\n"
    "    def on_start(self, ev):\n"
    "        name = ev.data['dispatcher'].py_func.__name__\n"
    "        if name == '<lambda>':\n"
    "            return\n"
    "        print('compiling', name, flush=True)\n"
    "        if os.environ.get('PAUSE') and not Report.paused:\n"
    "            Report.paused = True\n"
    "            sys.stdin.readline()\n"
    "    def on_end(self, ev):\n"
    "        pass\n"
    "event.register('numba:compile', Report())\n"
    "import numba\n"
    "numba.njit(lambda: 1)()  # Numba's compiler set up (seconds on a loaded machine): bump's compile is next\n"
    "import specc.kernels._probe_caller as probe\n"
    "print('imported', flush=True)\n"
    "if os.environ.get('DEFER'):\n"
    "    import specc.kernels\n"
    "    specc.kernels.defer_held_claims(True)\n"
    "    try:\n"
    "        probe.bump(10)\n"
    "    except Exception:\n"
    "        print('put off', flush=True)\n"
    "    specc.kernels.defer_held_claims(False)\n"
    "    sys.stdin.readline()\n"
    "print('result', probe.bump(10), flush=True)\n"
)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "site"
    shutil.copytree(PACKAGE, root / "specc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    kernels = root / "specc" / "kernels"
    (kernels / "_probe_callee.py").write_text(CALLEE)
    (kernels / "_probe_caller.py").write_text(CALLER)
    return root


def start(root, claims, pause: bool, defer: bool = False) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH", "PAUSE", "DEFER")}
    env.update(PYTHONPATH=str(root), SPECC_NATIVE="0", NUMBA_NUM_THREADS="1", SPECC_COMPILE_CLAIMS=str(claims))
    if pause:
        env["PAUSE"] = "1"
    if defer:  # first a call with held claims put off, then (after a line on stdin) the call as usual
        env["DEFER"] = "1"
    process = subprocess.Popen([sys.executable, "-c", RUN], env=env, cwd=root, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    process.lines = queue.Queue()
    threading.Thread(target=lambda: [process.lines.put(line.strip()) for line in process.stdout],
                     daemon=True).start()
    return process


def next_line(process: subprocess.Popen, timeout: float) -> str | None:
    """The process's next line of output, or None if it prints none within `timeout` seconds."""
    try:
        return process.lines.get(timeout=timeout)
    except queue.Empty:
        return None


@pytest.mark.parametrize("defer", [False, True], ids=["waits", "defers_then_waits"])
def test_a_signature_another_process_compiles_is_waited_for_and_loaded(tree, tmp_path, defer):
    # With defer (the compile worker's first pass, warmup.exercise), the held kernel raises at once instead
    # of being waited for; with deferring off again it is waited for and loaded, as without.
    claims = tmp_path / "claims"
    first = start(tree, claims, pause=True)
    second = None
    try:
        assert next_line(first, 120) == "imported"
        assert next_line(first, 120) == "compiling bump"  # and now paused, holding bump's claim
        second = start(tree, claims, pause=False, defer=defer)
        assert next_line(second, 120) == "imported"
        if defer:
            assert next_line(second, 30) == "put off"
            second.stdin.write("go\n")
            second.stdin.flush()
        assert next_line(second, 5) is None, "the second process did not wait for the first one's bump"
        first.stdin.write("go\n")
        first.stdin.flush()
        assert next_line(first, 120) == "compiling increment"
        assert next_line(first, 120) == "result 11"
        # loaded from the cache: no compile
        assert next_line(second, 120) == "result 11", "the second process compiled bump instead of loading it"
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.communicate()
