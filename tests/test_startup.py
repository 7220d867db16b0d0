"""Start-up stays light: what `specc summary` / `specc validate` import, the lazy layer registry, and the
summary table drawn without rich (checked against rich itself).

Times are measured by bench/run.py, not here: a shared machine makes timing tests flaky. These tests pin
the structure that makes start-up fast instead.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
print("LOADED", *sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "numpy", "rich", "specc")),
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
def test_summary_and_validate_import_neither_numba_nor_numpy_nor_rich(args):
    stderr, loaded = loaded_modules(*args)
    assert "EXIT 0" in stderr, stderr
    assert not {m.split(".")[0] for m in loaded} & {"numba", "numpy", "rich"}, sorted(loaded)
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
