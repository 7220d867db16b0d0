"""The kernel cache never serves machine code compiled from other sources than the ones on disk.

Numba checks a cached function against its own file only (numba/numba#1833), while a kernel's machine code
includes the callees it inlined from other kernel modules. Each test runs on a copy of the `specc` package
with two probe kernels added to `specc/kernels/` (a caller, and the callee it imports from another module),
in fresh processes, so a test compiles two tiny functions and nothing else (SPECC_NATIVE=0)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

import specc

PACKAGE = os.path.dirname(os.path.abspath(specc.__file__))

CALLEE = "import numba\n\n\n@numba.njit(cache=True)\ndef increment():\n    return {value}\n"
CALLER = (
    "import numba\n\nfrom ._probe_callee import increment\n\n\n"
    "@numba.njit(cache=True)\ndef bump(x):\n    return x + increment()\n"
)
# Prints bump(10); with a line on stdin first, waits for one after importing (before compiling).
RUN = (
    "import sys\n"
    "import specc.kernels._probe_caller as probe\n"
    "if len(sys.argv) > 1:\n"
    "    print('imported', flush=True)\n"
    "    sys.stdin.readline()\n"
    "print(probe.bump(10), flush=True)\n"
)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "site"
    shutil.copytree(PACKAGE, root / "specc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    kernels = root / "specc" / "kernels"
    (kernels / "_probe_callee.py").write_text(CALLEE.format(value=1))
    (kernels / "_probe_caller.py").write_text(CALLER)
    return root


def environment(root) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(root), SPECC_NATIVE="0", NUMBA_NUM_THREADS="1")
    return env


def bump(root) -> int:
    out = subprocess.run(
        [sys.executable, "-c", RUN],
        env=environment(root),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def change_callee(root, value: int) -> None:
    path = root / "specc" / "kernels" / "_probe_callee.py"
    before = path.stat().st_mtime_ns
    path.write_text(CALLEE.format(value=value))
    if path.stat().st_mtime_ns == before:  # a coarse file-system clock: make the change visible
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def test_a_changed_callee_in_another_module_is_recompiled(tree):
    assert bump(tree) == 11
    assert bump(tree) == 11  # from the cache
    change_callee(tree, 2)
    assert bump(tree) == 12


def test_a_process_that_outlives_a_change_does_not_poison_the_cache(tree):
    """A process that imported the old callee and compiles its caller after another process has seen the
    new sources (a test run across a merge) must not leave its machine code for later processes."""
    assert bump(tree) == 11
    old = subprocess.Popen(
        [sys.executable, "-c", RUN, "wait"],
        env=environment(tree),
        cwd=tree,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert old.stdout.readline().strip() == "imported"
        change_callee(tree, 2)
        # a process that sees the new sources and uses other kernels only
        subprocess.run(
            [sys.executable, "-c", "import specc.kernels"],
            env=environment(tree),
            cwd=tree,
            check=True,
            timeout=120,
        )
        old.stdin.write("\n")
        old.stdin.flush()
        assert int(old.stdout.readline()) == 11  # compiled from the old sources it imported, and saved
        assert old.wait(timeout=120) == 0
    finally:
        if old.poll() is None:
            old.kill()
    assert bump(tree) == 12


def test_an_upgrade_in_place_with_the_same_mtimes_drops_the_cache(tree):
    """A package manager may install files with their recorded mtimes: a changed file of the same size and
    mtime still changes the stamp."""
    assert bump(tree) == 11
    path = tree / "specc" / "kernels" / "_probe_callee.py"
    info = path.stat()
    path.write_text(CALLEE.format(value=3))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    time.sleep(0.01)
    assert path.stat().st_size == info.st_size and path.stat().st_mtime_ns == info.st_mtime_ns
    assert bump(tree) == 13
