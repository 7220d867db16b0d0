"""Property tests: whatever the input, `load_spec_text` returns (spec, []) or (None, [errors with positions])
and never raises.

(1) random text (YAML-flavoured and arbitrary) and random bytes;
(2) random mutations of every valid spec in specs/: delete a key or item, replace a value with a random
    JSON-like value, duplicate a layer, swap a layer's type, insert a random YAML fragment into the text.

Runs are derandomized (the same examples every run) so a failure is reproducible and CI is not flaky.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specc.layers import REGISTRY
from specc.spec import SpecError, load_spec_text

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
SPEC_FILES = sorted(SPECS_DIR.glob("*.yaml"))
FILE = "fuzz.yaml"
YAML_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # what YAML (and editors) count as line ends

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None, report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Mutation properties run once per spec file; split a fixed budget between the files so the run time does not
# grow with specs/ (5 files: 160 examples each per mutation kind).
FUZZ_SPECS = settings(FUZZ, max_examples=max(50, 800 // max(len(SPEC_FILES), 1)))


def check_result(text: str | bytes, result) -> None:
    spec, errors = result
    assert isinstance(errors, list)
    if spec is None:
        assert errors, "no spec and no errors"
    else:
        assert errors == [], errors
    for e in errors:
        assert isinstance(e, SpecError)
        assert e.file == FILE
        assert isinstance(e.line, int) and isinstance(e.column, int)
        assert e.line >= 1 and e.column >= 1, e
        assert isinstance(e.path, str) and isinstance(e.message, str) and e.message
    if isinstance(text, str):
        n_lines = len(YAML_LINE_BREAK.split(text))
        for e in errors:
            assert e.line <= n_lines + 1, (e, n_lines)


def load(text: str | bytes):
    result = load_spec_text(text, FILE)
    check_result(text, result)
    return result


# --- (1) random text and bytes -------------------------------------------------------------------------

YAML_CHARS = list("{}[]:,-?!&*|>'\"#%@` \n\t\r.~_=<") + list("abcdefkmnsuxyz") + list("0123456789") + ["\u00e9",
                                                                                                      "\ufeff"]
YAML_TOKENS = ["specc: 1\n", "model:\n", "  input: [8]\n", "  inputs:\n", "  layers:\n", "    - ",
               "{type: Dense, units: 4}", "type: ", "units: ", "outputs: ", "&a ", "*a", "<<: ", "!!str ",
               "!!python/name:os.getcwd ''", "!!int ", "!!float ", "!!null ", "---\n", "...\n", "? ", ": ",
               "- ", "[", "]", "{", "}", ", ", "\n", "  ", "'", '"', "#", "|\n", ">\n", "null", "true", "-3",
               "1e-3", "0x1F", "1:30", ".inf", ".nan", "2024-01-01", "~"]


@FUZZ
@given(st.text(alphabet=st.sampled_from(YAML_CHARS), max_size=300))
def test_random_yaml_flavoured_text_never_raises(text):
    load(text)


@FUZZ
@given(st.lists(st.sampled_from(YAML_TOKENS), max_size=60).map("".join))
def test_random_token_soup_never_raises(text):
    load(text)


@FUZZ
@given(st.text(max_size=300))
def test_random_unicode_text_never_raises(text):
    load(text)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data):
    load(data)


@FUZZ
@given(st.sampled_from(SPEC_FILES), st.binary(min_size=1, max_size=20), st.data())
def test_valid_spec_with_random_bytes_spliced_in_never_raises(path, junk, data):
    raw = path.read_bytes()
    at = data.draw(st.integers(0, len(raw)), label="offset")
    load(raw[:at] + junk + raw[at:])


# --- (2) mutations of the valid specs -----------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True)
           | st.text(max_size=12) | st.sampled_from(sorted(REGISTRY)) | st.sampled_from(
               ["relu", "same", "valid", "adam", "mse", "x", "input_layer", "head", "-1", "1e-3"]))
json_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=10) | st.sampled_from(
                             ["type", "units", "name", "inputs", "layers", "shape", "filters", "kernel_size",
                              "rate", "activation", "loss", "optimizer"]), inner, max_size=4),
                         max_leaves=10)
LAYER_TYPES = sorted(REGISTRY)


def all_paths(node, prefix=()):
    """Every path into a nested dict/list structure (the root excluded)."""
    out = []
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return out
    for k, v in items:
        out.append(prefix + (k,))
        out.extend(all_paths(v, prefix + (k,)))
    return out


def get(node, path):
    for k in path:
        node = node[k]
    return node


def layer_lists(node, prefix=()):
    """Paths of every `layers` list (the model's and nested Sequential blocks')."""
    return [p for p in [()] + all_paths(node) if isinstance(get(node, p), list) and p and p[-1] == "layers"]


def mutate(data, draw):
    kind = draw(st.sampled_from(["delete", "replace", "duplicate_layer", "swap_type", "swap_values",
                                 "rename_key"]), label="mutation")
    paths = all_paths(data)
    if kind in ("delete", "replace", "rename_key"):
        path = draw(st.sampled_from(paths), label="path")
        parent, key = get(data, path[:-1]), path[-1]
        if kind == "delete":
            del parent[key]
        elif kind == "replace":
            parent[key] = draw(json_like, label="value")
        elif isinstance(parent, dict):
            new = draw(st.text(max_size=10) | st.sampled_from(["unit", "input", "output", "layer", "Type"]),
                       label="new key")
            parent[new] = parent.pop(key)
    elif kind == "duplicate_layer":
        lists = [p for p in layer_lists(data) if get(data, p)]
        if lists:
            layers = get(data, draw(st.sampled_from(lists), label="layers"))
            i = draw(st.integers(0, len(layers) - 1), label="layer")
            j = draw(st.integers(0, len(layers)), label="insert at")
            layers.insert(j, copy.deepcopy(layers[i]))
    elif kind == "swap_type":
        typed = [p for p in all_paths(data) if p[-1] == "type" and isinstance(get(data, p[:-1]), dict)]
        if typed:
            path = draw(st.sampled_from(typed), label="type path")
            get(data, path[:-1])["type"] = draw(st.sampled_from(LAYER_TYPES) | st.text(max_size=8), label="type")
    else:  # swap two values
        a = draw(st.sampled_from(paths), label="a")
        b = draw(st.sampled_from(paths), label="b")
        if a[: len(b)] != b and b[: len(a)] != a:  # neither contains the other
            pa, pb = get(data, a[:-1]), get(data, b[:-1])
            pa[a[-1]], pb[b[-1]] = pb[b[-1]], pa[a[-1]]
    return data


@functools.cache
def _parsed(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def parsed(path: Path):
    """The spec file as plain data (a fresh copy to mutate)."""
    return copy.deepcopy(_parsed(path))


def dump(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)


def spec_params():
    return [pytest.param(p, id=p.stem) for p in SPEC_FILES]


@pytest.mark.parametrize("path", spec_params())
def test_bundled_spec_is_valid_before_mutation(path):
    spec, errors = load_spec_text(path.read_text(encoding="utf-8"), FILE)
    assert errors == [] and spec is not None
    # and still valid after a YAML round trip, which the structural mutations below rely on
    spec, errors = load_spec_text(dump(parsed(path)), FILE)
    assert errors == [] and spec is not None


@pytest.mark.parametrize("path", spec_params())
@FUZZ_SPECS
@given(data=st.data())
def test_structural_mutations_never_raise(path, data):
    tree = parsed(path)
    n = data.draw(st.integers(1, 3), label="mutations")
    for _ in range(n):
        tree = mutate(tree, data.draw)
    load(dump(tree))


FRAGMENTS = ["{", "}", "[", "]", ": ", "- ", "  ", "\t", "&x ", "*x", "<<: *x\n", "!!python/name:os.system ''",
             "!!set {a}", "? [a]\n: b\n", "---\n", "'", '"', "#", "|\n", "    - {type: Add}\n",
             "    - {type: Dense, units: 4, inputs: nowhere}\n", "    - type: Sequential\n      layers: []\n",
             "  outputs: [zzz]\n", "  inputs: {q: [2]}\n", "specc: 2\n", "model: null\n", "name: name\n",
             "units: 1e-3\n", "\ufeff", "\x85", "\u2028", "\r", "\x00"]


@pytest.mark.parametrize("path", spec_params())
@FUZZ_SPECS
@given(data=st.data())
def test_text_mutations_never_raise(path, data):
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        edit = data.draw(st.sampled_from(["insert", "delete_line", "duplicate_line", "swap_lines", "splice"]),
                         label="edit")
        i = data.draw(st.integers(0, max(len(lines) - 1, 0)), label="line")
        if edit == "insert":
            frag = data.draw(st.sampled_from(FRAGMENTS) | st.text(alphabet=st.sampled_from(YAML_CHARS), max_size=20),
                             label="fragment")
            lines.insert(i, frag)
        elif edit == "delete_line" and lines:
            del lines[i]
        elif edit == "duplicate_line" and lines:
            lines.insert(i, lines[i])
        elif edit == "swap_lines" and len(lines) > 1:
            j = data.draw(st.integers(0, len(lines) - 1), label="other line")
            lines[i], lines[j] = lines[j], lines[i]
        elif edit == "splice" and lines:
            col = data.draw(st.integers(0, len(lines[i])), label="column")
            frag = data.draw(st.sampled_from(FRAGMENTS), label="fragment")
            lines[i] = lines[i][:col] + frag + lines[i][col:]
    load("".join(lines))
