"""Start-up stays light: what `specc summary` / `specc validate` import, the lazy layer registry, the
summary table drawn without rich (checked against rich itself), and the plain summary/validate call parsed
without typer (checked against typer).

Times are measured by bench/run.py, not here: a shared machine makes timing tests flaky. These tests pin
the structure that makes start-up fast instead.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.main import get_command
from typer.testing import CliRunner

from specc import cli
from specc.layers.base import FAMILIES, REGISTRY
from specc.summary import _rich_table, box_table

REPO = Path(__file__).resolve().parents[1]

_IMPORTS = """
import runpy, sys
sys.argv = ["specc"] + sys.argv[1:]
try:
    runpy.run_module("specc.cli", run_name="__main__")
except SystemExit as exc:
    print("EXIT", exc.code, file=sys.stderr)
print("LOADED", *sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "numpy", "rich", "typer", "specc")),
      file=sys.stderr)
"""


def loaded_modules(*args: str) -> tuple[str, set[str]]:
    proc = subprocess.run([sys.executable, "-c", _IMPORTS, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    line = next(x for x in proc.stderr.splitlines() if x.startswith("LOADED"))
    return proc.stderr, set(line.split()[1:])


@pytest.mark.parametrize("args", [["summary", "specs/digits_mlp.yaml"],
                                  ["summary", "--format", "json", "specs/digits_mlp.yaml"],
                                  ["validate", "specs/digits_mlp.yaml", "specs/functional_two_inputs.yaml"]])
def test_summary_and_validate_import_neither_numba_nor_numpy_nor_rich_nor_typer(args):
    stderr, loaded = loaded_modules(*args)
    assert "EXIT 0" in stderr, stderr
    assert not {m.split(".")[0] for m in loaded} & {"numba", "numpy", "rich", "typer"}, sorted(loaded)
    assert "specc.api" not in loaded  # the Python API loads on first use only


def test_a_spec_loads_only_the_layer_families_it_uses():
    stderr, loaded = loaded_modules("summary", "specs/digits_mlp.yaml")  # Dense layers only
    assert "EXIT 0" in stderr, stderr
    families = {m.rsplit(".", 1)[1] for m in loaded if m.startswith("specc.layers.")}
    assert "core" in families
    assert not families & {"conv", "pooling", "recurrent", "merging", "normalization", "reshaping"}


def test_the_family_table_lists_exactly_the_registered_layers_in_order():
    for family in FAMILIES:
        importlib.import_module(f"specc.layers.{family}")
    registered = {name: REGISTRY[name] for name in REGISTRY}
    assert list(registered) == [t for types in FAMILIES.values() for t in types]
    for family, types in FAMILIES.items():
        for type_name in types:
            cls = registered[type_name]
            assert cls.__module__ == f"specc.layers.{family}"
            assert cls.model_fields["type"].default == type_name


def test_the_registry_reads_like_a_dict():
    assert "Dense" in REGISTRY and "Dens" not in REGISTRY
    assert len(REGISTRY) == len(list(REGISTRY)) == sum(map(len, FAMILIES.values()))
    with pytest.raises(KeyError):
        REGISTRY["NoSuchLayer"]
    assert REGISTRY.get("Conv2D").__name__ == "Conv2D"


# --- the summary table without rich --------------------------------------------------------------------


def _layout(functional: bool, trainable: bool) -> tuple[list[str], list[str], list[int], int]:
    """The four table shapes summary_text draws (same arithmetic)."""
    if functional:
        line_length, positions = 108, [0.3, 0.56, 0.74, 1.0]
        header, justify = ["Layer (type)", "Output Shape", "Param #", "Connected to"], ["left", "left", "right", "left"]
    else:
        line_length, positions = 88, [0.45, 0.80, 1.0]
        header, justify = ["Layer (type)", "Output Shape", "Param #"], ["left", "left", "right"]
    if trainable:
        line_length += 12
        positions = [p * 0.90 for p in positions] + [1.0]
        header, justify = header + ["Trainable"], justify + ["center"]
    widths, current = [], 0
    for pos in positions:
        widths.append(int(pos * line_length) - current)
        current += widths[-1]
    return header, justify, widths, line_length


_word = st.text(alphabet=st.sampled_from("abcxyz_-./0189ABZ()[],"), min_size=1, max_size=45)
_cell = st.lists(st.tuples(st.sampled_from(["", " ", "  ", "   └ ", "      └ "]), _word), max_size=5).map(
    lambda parts: "".join(space + word for space, word in parts)) | st.sampled_from(["", " ", "-", "Y", "N"])


@settings(max_examples=300, deadline=None)
@given(functional=st.booleans(), trainable=st.booleans(), data=st.data())
def test_box_table_draws_what_rich_draws(functional, trainable, data):
    header, justify, widths, line_length = _layout(functional, trainable)
    rows = data.draw(st.lists(st.lists(_cell, min_size=len(header), max_size=len(header)), max_size=4))
    assert box_table(header, justify, widths, line_length, rows) == _rich_table(header, justify, widths,
                                                                                line_length, rows)


@pytest.mark.parametrize("functional", [False, True])
@pytest.mark.parametrize("trainable", [False, True])
def test_box_table_edge_cells(functional, trainable):
    header, justify, widths, line_length = _layout(functional, trainable)
    edge = ["", " " * 50, "x" * 36, "x" * 37, "x" * 38, "x" * 120, "a " * 40, "word " + "y" * 60 + " tail",
            "   └ " + "n" * 33 + " (BatchNormalization)", "(None, 12, 12, 64)", "123,456,789", "-"]
    rows = [[edge[(i + k) % len(edge)] for k in range(len(header))] for i in range(len(edge))]
    assert box_table(header, justify, widths, line_length, rows) == _rich_table(header, justify, widths,
                                                                                line_length, rows)


# --- the plain summary/validate call that skips typer -------------------------------------------------

BAD = "specc: 1\nmodel:\n  input: [8]\n  layers:\n    - {type: Dnese, units: 4}\n    - {type: Dense, units: -3}\n"


def test_the_fast_table_matches_the_typer_commands():
    group = get_command(cli.app)
    for name, (function, valued, flags, positional, several) in cli._FAST.items():
        command = group.commands[name]
        assert command.callback.__wrapped__ is function
        options = {p.name: p for p in command.params if p.param_type_name == "option" and p.name != "help"}
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        assert [a.name for a in arguments] == [positional] and (arguments[0].nargs == -1) == several
        assert {opt: p.name for p in options.values() if p.is_flag for opt in p.opts + p.secondary_opts} == flags
        valued_typer = {opt: p.name for p in options.values() if not p.is_flag for opt in p.opts + p.secondary_opts}
        assert valued_typer == {opt: parameter for opt, (parameter, _) in valued.items()}
        hints = typing.get_type_hints(function, vars(cli), include_extras=True)
        for parameter, choices in valued.values():
            if choices is list:  # a repeatable text option: typer's list[str] | None
                assert list[str] in typing.get_args(hints[parameter].__origin__)
            else:
                assert hints[parameter].__origin__ is choices  # typer offers this Enum's values, as the fast path


@pytest.mark.parametrize("args", [
    ["summary", "--help"], ["summary"], ["summary", "a.yaml", "b.yaml"], ["summary", "-fjson", "a.yaml"],
    ["summary", "--format", "JSON", "a.yaml"], ["summary", "-f", "json", "-f", "text", "a.yaml"],
    ["summary", "--format"], ["summary", "--", "a.yaml"], ["summary", "-", "x"], ["summary", "--expand-nested=1", "a"],
    ["summary", "--expand-nested", "--expand-nested", "a"], ["summary", "--no-expand-nested", "a"],
    ["validate"], ["validate", "--format", "json"], ["validate", "-h", "a"], ["validate", "--show-trainable", "a"],
    ["validate", "a", "--exclude"], ["validate", "a", "--exclude", "--format"],
    ["train", "a.yaml"], ["--help"], [], ["schema"],
])
def test_anything_but_a_plain_call_goes_to_typer(args):
    assert cli._fast_call(args) is None


CALLS = [
    ["summary", "specs/digits_mlp.yaml"], ["summary", "-f", "json", "specs/functional_two_inputs.yaml"],
    ["summary", "specs/transfer_frozen_base.yaml", "--expand-nested", "--show-trainable"],
    ["summary", "--format=json", "--expand-nested", "specs/transfer_frozen_base.yaml"],
    ["summary", "specs/text_lstm.yaml"], ["summary", "no/such.yaml"], ["summary", "specs"], ["summary", "BAD"],
    ["summary", "--format", "json", "BAD"], ["summary", ""],
    ["validate", "specs"], ["validate", "specs/digits_cnn.yaml", "specs/*.yml", "--format", "json"],
    ["validate", "BAD", "specs/digits_mlp.yaml"], ["validate", "-f", "github", "BAD"], ["validate", "--format=json", "BAD"],
    ["validate", "no/such.yaml"], ["validate", "specs/*.nothing"], ["validate", "specs/iris_mlp.yaml", "specs"],
    ["validate", "specs", "--exclude", "specs/digits_*", "--exclude=text_lstm.yaml"],
    ["validate", "--exclude", "*.yaml", "specs"],
]


@pytest.mark.parametrize("args", CALLS, ids=[" ".join(a) for a in CALLS])
def test_a_plain_call_does_what_typer_does(args, tmp_path):
    (tmp_path / "BAD").write_text(BAD)
    args = [str(tmp_path / "BAD") if a == "BAD" else a for a in args]
    assert cli._fast_call(args) is not None
    fast = subprocess.run([sys.executable, "-m", "specc.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        typer_run = CliRunner().invoke(cli.app, args)
    assert (fast.returncode, fast.stdout, fast.stderr) == (typer_run.exit_code, typer_run.stdout, typer_run.stderr)


def test_a_closed_pipe_ends_a_plain_call_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "specc.cli", "validate", "--format", "json", "specs"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.close()  # the reader is gone before the first write
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and b"Traceback" not in err and b"Exception ignored" not in err, err


# --- train: SciPy's BLAS without scipy.linalg's package init ------------------------------------------

_BLAS = """
import sys
import numba, numpy as np
from specc.kernels import configure_threads
configure_threads(1)
print("LINALG_INIT", "scipy.linalg" in sys.modules)

@numba.njit
def product(a, b, out):
    np.dot(a, b, out)  # through scipy.linalg.cython_blas

out = np.empty((2, 2))
product(np.eye(2), np.full((2, 2), 3.0), out)
print("DOT", out.tolist())
from threadpoolctl import threadpool_info
print("THREADS", sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}))
import scipy.linalg
from scipy.linalg import cython_blas
print("LATER", scipy.linalg.solve(np.eye(2), np.ones(2)).tolist(), cython_blas is sys.modules["scipy.linalg.cython_blas"])
"""


def test_configure_threads_loads_scipys_blas_without_scipy_linalg():
    proc = subprocess.run([sys.executable, "-c", _BLAS], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines["LINALG_INIT"] == "False"  # the ~130 ms package init was skipped
    assert lines["DOT"] == "[[3.0, 3.0], [3.0, 3.0]]"
    assert lines["THREADS"] == "[1]"  # NumPy's and SciPy's BLAS are both capped
    assert lines["LATER"] == "[1.0, 1.0] True"  # scipy.linalg still imports as usual afterwards
