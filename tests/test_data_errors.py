"""Data files a user can get wrong, through `specc train`: each is an error at the spec line that names the
data (`data.source.path`, or the split's field), naming the file and its array or column, before any
run directory exists; never an internal error.

All invocations fail before Numba loads, so they are cheap; they run two at a time in one fixture.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ERROR_AT = re.compile(r"^(?P<file>\S+?):(?P<line>\d+):(?P<col>\d+): error: (?P<path>[^:]+): (?P<message>.*)$", re.M)
ENV = dict(os.environ, PYTHONIOENCODING="utf-8", COLUMNS="100", NO_COLOR="1")


def spec(source: str, data_extra: str = "", fit: str = "fit: {epochs: 1}\n") -> str:
    return ("specc: 1\nmodel:\n  input: [2]\n  layers: [{type: Dense, units: 2, activation: softmax}]\n"
            f"data: {{source: {source}{data_extra}}}\n"
            "compile: {loss: sparse_categorical_crossentropy}\n" + fit)


def good_xy(n: int = 40):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 2)).astype(np.float32), np.arange(n) % 2


def write_npz(folder: Path, name: str, **arrays) -> None:
    np.savez(folder / name, **arrays)


def write_damaged_npz(folder: Path, name: str) -> None:
    """An .npz whose x.npy member has one flipped byte: the zip's CRC check fails when it is read."""
    x, y = good_xy()
    np.savez(folder / name, x=x, y=y)
    with zipfile.ZipFile(folder / name) as z:
        info = z.getinfo("x.npy")
    data = bytearray((folder / name).read_bytes())
    data[info.header_offset + 30 + len("x.npy") + 200] ^= 0xFF  # inside x's values, past the local header
    (folder / name).write_bytes(bytes(data))


def write_files(root: Path) -> None:
    x, y = good_xy()
    write_npz(root, "object.npz", x=np.array([[1, 2]] * 4, dtype=object), y=np.arange(4) % 2)
    write_npz(root, "string_y.npz", x=x[:4], y=np.array(["a", "b", "a", "b"]))
    write_npz(root, "empty.npz", x=np.ones((0, 2)), y=np.array([], np.int64))
    write_npz(root, "scalar.npz", x=np.array(3.0), y=np.array(1))
    write_npz(root, "complex.npz", x=x.astype(np.complex64) * (1 + 2j), y=y)
    write_npz(root, "timedelta_y.npz", x=x, y=y.astype("timedelta64[s]"))  # NumPy counts it as an integer
    write_npz(root, "good.npz", x=x, y=y)
    write_damaged_npz(root, "damaged.npz")
    np.save(root / "lone.npy", x)
    os.replace(root / "lone.npy", root / "lone.npz")
    (root / "long_cell.csv").write_text("a,b,label\n1,2,0\n3," + "4" * 140_000 + ",1\n")
    (root / "latin1.csv").write_bytes("a,b,label\n1,2,0\n3,4,caf\xe9\n".encode("latin-1"))
    (root / "ok.csv").write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))


# case: (spec text, the spec token the error points at, its spec path, words the message must hold)
CASES = {
    "object": (spec("{path: object.npz}"), "{path:", "data.source.path", ["object.npz", "'x'", "dtype=object"]),
    "object_named": (spec("{path: object.npz, x: x}"), "x: x}", "data.source.x", ["object.npz", "'x'", "object"]),
    "string_y": (spec("{path: string_y.npz}"), "{path:", "data.source.path", ["string_y.npz", "'y'", "strings"]),
    "empty": (spec("{path: empty.npz}"), "{path:", "data.source.path", ["empty.npz", "'x'", "empty"]),
    "scalar": (spec("{path: scalar.npz}"), "{path:", "data.source.path", ["scalar.npz", "'x'", "single value"]),
    "complex": (spec("{path: complex.npz}"), "{path:", "data.source.path", ["complex.npz", "'x'", "complex"]),
    "timedelta_y": (spec("{path: timedelta_y.npz}"), "{path:", "data.source.path",
                    ["timedelta_y.npz", "'y'", "must hold numbers"]),
    "damaged": (spec("{path: damaged.npz}"), "{path:", "data.source.path", ["damaged.npz", "'x'", "CRC"]),
    "lone_npy": (spec("{path: lone.npz}"), "{path:", "data.source.path", ["lone.npz", ".npy"]),
    "long_cell": (spec("{path: long_cell.csv}"), "{path:", "data.source.path",
                  ["long_cell.csv:3", "column 'b'", "131,072"]),
    "latin1": (spec("{path: latin1.csv}"), "{path:", "data.source.path", ["latin1.csv:3", "UTF-8"]),
    "test_split_1": (spec("{path: ok.csv}", ", test_split: 1"), "test_split", "data.test_split",
                     ["all 40 samples", "none to train on"]),
    "test_split_0999": (spec("{path: good.npz}", ", test_split: 0.999"), "test_split", "data.test_split",
                        ["none to train on"]),
    "synthetic_classes": (spec("synthetic", ", samples: 32, classes: 2147483647"), "classes", "data.classes",
                          ["2,147,483,647 classes", "2 units"]),
    "synthetic_variable_size": ("specc: 1\nmodel:\n  input: [null, 3]\n  layers: [{type: Conv1D, filters: 2, "
                                "kernel_size: 3}]\ndata: {source: synthetic, samples: 32}\ncompile: {loss: mse}\n",
                                "synthetic", "data.source", ["(None, None, 2)", "fixed sizes"]),
    "validation_split": (spec("{path: ok.csv}", fit="fit: {epochs: 1, validation_split: 0.999}\n"),
                         "validation_split", "fit.validation_split", ["none to train on"]),
}


def run(*args, cwd, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specc.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """name -> (CompletedProcess, spec text, the --out folder) for every case."""
    root = tmp_path_factory.mktemp("data_errors")
    write_files(root)
    jobs = {}
    for name, (text, *_) in CASES.items():
        (root / f"{name}.yaml").write_text(text)
        jobs[name] = ["train", f"{name}.yaml", "--out", root / "out" / name, "-q"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run, *args, cwd=root) for name, args in jobs.items()}
        return {name: (f.result(), CASES[name][0], root / "out" / name) for name, f in futures.items()}


def output(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_is_a_positioned_error_before_the_run_directory(trained, case):
    proc, text, out = trained[case]
    _, token, path, words = CASES[case]
    assert proc.returncode == 1, output(proc)
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, output(proc)
    m = ERROR_AT.search(proc.stderr)
    assert m and m["file"] == f"{case}.yaml" and m["path"] == path, output(proc)
    assert int(m["line"]) == text[: text.index(token)].count("\n") + 1, output(proc)
    for w in words:
        assert w in m["message"], output(proc)
    assert not out.exists(), list(out.rglob("*"))  # no run directory, no normalization.json of NaN


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_as_data_file_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "fifo.npz")
    text = spec("{path: fifo.npz}")
    (tmp_path / "fifo.yaml").write_text(text)
    try:
        proc = run("train", "fifo.yaml", "--out", tmp_path / "out", "-q", cwd=tmp_path, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("specc train waited on a FIFO given as its data file")
    assert proc.returncode == 1, output(proc)
    m = ERROR_AT.search(proc.stderr)
    assert m and m["path"] == "data.source.path" and int(m["line"]) == 5, output(proc)
    assert "fifo.npz" in m["message"] and "not a regular file" in m["message"], output(proc)
    assert not (tmp_path / "out").exists()


def test_valid_npz_still_trains(tmp_path):
    """The checks refuse only what they should: a plain float/int .npz trains."""
    x, y = good_xy()
    np.savez(tmp_path / "good.npz", x=x.astype(np.float64), y=y.astype(np.int32))
    (tmp_path / "good.yaml").write_text(spec("{path: good.npz}"))
    proc = run("train", "good.yaml", "--out", tmp_path / "out", "-q", "--threads", "1", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, output(proc)
