"""The native boundary (specc/kernels/native/) and the process-wide settings (specc/runtime.py):

- outside the native package no specc module imports llvmlite, numba.core, numba.np.ufunc or any
  underscore name of Numba;
- `import specc` (and loading the kernels) changes no environment variable; runtime.prepare_process does;
- SPECC_NATIVE=0 gives the portable kernels, with the same numbers as the native ones to float32 rounding;
- a native package that fails to load falls back to the portable kernels with one warning;
- SPECC_THREADS is a positive integer or an error.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECC = ROOT / "specc"
NATIVE = SPECC / "kernels" / "native"
FORBIDDEN_MODULES = ("llvmlite", "numba.core", "numba.np.ufunc")


def _run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=600)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _forbidden_uses(path: Path) -> list[tuple[int, str]]:
    """(line, what) for each import of a forbidden module and each use of a private Numba name in path."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.startswith(FORBIDDEN_MODULES) or (name.startswith("numba.")
                                                        and any(_private(part) for part in name.split("."))):
                found.append((node.lineno, f"imports {name}"))
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "numba"
                and (_private(node.attr) or node.attr in ("core", "np"))):
            found.append((node.lineno, f"uses numba.{node.attr}"))
    return found


def test_only_the_native_package_reaches_into_numba_and_llvmlite():
    offenders = []
    for path in sorted(SPECC.rglob("*.py")):
        if NATIVE not in path.parents:
            offenders += [f"{path.relative_to(ROOT)}:{line} {what}" for line, what in _forbidden_uses(path)]
    assert not offenders, "\n".join(offenders)


def test_the_check_finds_what_it_looks_for(tmp_path):
    # the scan above must be able to fail: each form it forbids, and what it allows
    sample = tmp_path / "sample.py"
    sample.write_text("import llvmlite.binding\nfrom numba.core import cgutils\nimport numba\nnumba._helperlib\n"
                      "from numba.np.ufunc import parallel\nnumba.__version__\nfrom numba.extending import overload\n",
                      encoding="utf-8")
    assert {line for line, _ in _forbidden_uses(sample)} == {1, 2, 4, 5}


def test_importing_specc_and_its_kernels_sets_no_environment_variable():
    code = ("import os, json; [os.environ.pop(k, None) for k in ('OPENBLAS_THREAD_TIMEOUT', 'GOMP_SPINCOUNT')]; "
            "before = dict(os.environ); import specc, specc.kernels, specc.api; "
            "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))")
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_prepare_process_sets_the_spin_times_and_the_users_values_win():
    code = ("import os; os.environ.pop('GOMP_SPINCOUNT', None); os.environ['OPENBLAS_THREAD_TIMEOUT'] = '9'; "
            "import specc.runtime as r; r.prepare_process(); "
            "print(os.environ['OPENBLAS_THREAD_TIMEOUT'], os.environ['GOMP_SPINCOUNT'], r.numpy_blas_spins_long())")
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["9", "20000", "False"]


@pytest.mark.parametrize("value,expected", [("", None), ("  ", None), ("3", 3), ("1", 1)])
def test_specc_threads_accepts_positive_integers(monkeypatch, value, expected):
    from specc import runtime

    monkeypatch.setenv("SPECC_THREADS", value)
    assert runtime.threads_from_environment() == expected


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5", "2x"])
def test_specc_threads_rejects_anything_else(monkeypatch, value):
    from specc import runtime

    monkeypatch.setenv("SPECC_THREADS", value)
    with pytest.raises(ValueError, match="SPECC_THREADS"):
        runtime.threads_from_environment()


_PREDICT = """
import json, warnings
import numpy as np
import specc
from specc.kernels import native
rng = np.random.default_rng(0)
model = specc.Sequential([specc.layers.Input((9, 9, 2)), specc.layers.Conv2D(4, 3, activation="relu"),
                          specc.layers.MaxPooling2D(), specc.layers.Flatten(), specc.layers.Dense(5),
                          specc.layers.Dense(3, activation="softmax")])
model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
x = rng.standard_normal((40, 9, 9, 2)).astype(np.float32)
y = rng.integers(0, 3, 40)
weights = [rng.standard_normal(w.shape).astype(np.float32) * 0.3 for w in model.get_weights()]
model.set_weights(weights)
model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
print(json.dumps({"mode": native.mode(), "out": model.predict(x, verbose=0).tolist()}))
"""


def _predict(env: dict) -> tuple[str, object, str]:
    import numpy as np

    proc = _run(_PREDICT, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["mode"], np.array(result["out"]), proc.stderr


def test_portable_kernels_give_the_native_numbers():
    import numpy as np

    native_mode, native_out, _ = _predict({"SPECC_NATIVE": "1"})
    portable_mode, portable_out, _ = _predict({"SPECC_NATIVE": "0"})
    assert portable_mode == "portable"
    if native_mode == "portable":
        pytest.skip("the native kernels do not load here")
    np.testing.assert_allclose(portable_out, native_out, rtol=1e-4, atol=1e-5)


def test_a_native_package_that_fails_to_load_falls_back_with_one_warning():
    # importlib.import_module is how native/__init__.py loads its modules: make the first one fail
    failing = ("import importlib; _real = importlib.import_module\n"
               "def _fail(name, *args, **kwargs):\n"
               "    if name.endswith('native.internals'):\n"
               "        raise ImportError('simulated: an llvmlite without typed pointers')\n"
               "    return _real(name, *args, **kwargs)\n"
               "importlib.import_module = _fail\n")
    proc = _run(failing + _PREDICT, {"SPECC_NATIVE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["mode"] == "portable"
    assert proc.stderr.count("native kernels failed to load") == 1, proc.stderr[-3000:]
    assert "simulated" in proc.stderr
