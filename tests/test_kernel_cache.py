"""The Numba cache: a second process loads every kernel from the cache instead of compiling, and a
package directory where the cache cannot be written falls back to the user-wide cache location."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent

RUN_MODEL = r"""
import json, numpy as np
from specc.spec import load_spec_text
from specc.engine import Engine
import specc.kernels.dense as dense, specc.kernels.activations as act
spec, _ = load_spec_text("specc: 1\nmodel:\n  input: [6]\n  layers:\n    - {type: Dense, units: 3, activation: relu}\n", "m.yaml")
engine = Engine(spec.graph); engine.initialize(0)
out = engine.forward([np.ones((2, 6), np.float32)])[0]
engine.backward([np.ones_like(out)])
kernels = [dense.forward, dense.backward, act.forward, act.backward]
print(json.dumps({"hits": sum(sum(k.stats.cache_hits.values()) for k in kernels),
                  "misses": sum(sum(k.stats.cache_misses.values()) for k in kernels)}))
"""


def _run(env: dict, cwd: Path, pythonpath: Path) -> dict:
    env = {**os.environ, **env, "PYTHONPATH": str(pythonpath)}
    out = subprocess.run([sys.executable, "-c", RUN_MODEL], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_every_kernel_from_the_cache(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    first = _run(env, tmp_path, ROOT)
    second = _run(env, tmp_path, ROOT)
    assert first["misses"] > 0  # compiled (and stored) the first time
    assert second["misses"] == 0 and second["hits"] >= 4


def test_unwritable_package_cache_falls_back_to_the_user_cache(tmp_path):
    # A copy of the package whose kernels/__pycache__ cannot be created (a file is in the way; permission
    # bits would not stop root): Numba must fall back to the user-wide cache, not fail.
    copy = tmp_path / "site"
    shutil.copytree(ROOT / "specc", copy / "specc", ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    (copy / "specc" / "kernels" / "__pycache__").write_text("not a directory")
    home = tmp_path / "home"
    # NUMBA_CACHE_DIR empty = not set, so Numba chooses the location itself
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "NUMBA_CACHE_DIR": ""}
    first = _run(env, tmp_path, copy)
    second = _run(env, tmp_path, copy)
    assert first["misses"] > 0 and second["misses"] == 0
    assert list(home.rglob("*.nbi")), "expected the fallback cache under the user's cache directory"


def test_an_edited_kernel_source_drops_the_cache_of_every_kernel(tmp_path):
    # Numba checks a cached function against its own file only; fused/dense code inlines callees from
    # other files, so an edit anywhere in specc/kernels must drop the whole package's cache. The copy caches
    # beside its sources (NUMBA_CACHE_DIR empty = unset), where the stamp is kept in every mode.
    copy = tmp_path / "site"
    shutil.copytree(ROOT / "specc", copy / "specc", ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    env = {"NUMBA_CACHE_DIR": ""}
    first = _run(env, tmp_path, copy)
    assert first["misses"] > 0 and _run(env, tmp_path, copy)["misses"] == 0
    edited = copy / "specc" / "kernels" / "losses.py"  # none of the four kernels counted lives here
    stat = edited.stat()
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = _run(env, tmp_path, copy)
    assert after["misses"] == first["misses"] and after["hits"] == 0



RUN_FUSED = r"""
import hashlib, numpy as np
from specc.kernels import configure_threads
from specc.spec import load_spec_text
from specc.engine import Engine
configure_threads(1)
text = ("specc: 1\nmodel:\n  input: [28, 28, 1]\n  layers:\n"
        "    - {type: Conv2D, filters: 32, kernel_size: 3, activation: relu}\n    - {type: MaxPooling2D}\n")
spec, _ = load_spec_text(text, "m.yaml")
engine = Engine(spec.graph); engine.initialize(0)
engine.input_gradients = False  # the direct path's own backward
x = np.random.default_rng(0).standard_normal((128, 28, 28, 1)).astype(np.float32)  # the benchmark CNN's
out = engine.forward([x], training=True)[0]
engine.backward([np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)])
print(hashlib.md5(out.tobytes() + engine.grads.tobytes()).hexdigest())
"""


def test_kernels_give_the_same_bits_compiled_and_loaded_from_the_cache(tmp_path):
    """The first process compiles the fused convolution + pooling kernels, the second loads them. With
    fastmath reassociation, one of their sums once came out in other bits each way (kernels/conv.py,
    _sum_parts), so a benchmark's first run after a cache wipe trained differently from the rest."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    runs = [subprocess.run([sys.executable, "-c", RUN_FUSED], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    assert runs[0].stdout.split()[-1] == runs[1].stdout.split()[-1]


def test_importing_the_kernels_starts_numbas_thread_pool():
    # Cached machine code that links a parallel loop (products, Adam) calls the pool's entry points,
    # which Numba registers with LLVM only when it starts the pool; a kernel loaded from the cache before
    # that (here dense.forward, cached by a process whose pool was running) segfaulted on its first call.
    code = ("import numba.np.ufunc.parallel as p; import specc.kernels.dense; import specc.kernels.optim; "
            "print(p._is_initialized)")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"
