"""Shared helpers for the spec-error, CLI and fuzz tests.

Fixtures (all return plain functions, so tests read as `errors_of(text)` / `at(text, "-3")`):
- write_spec(text, name="spec.yaml") -> pathlib.Path   writes str or bytes under tmp_path
- errors_of(text, file="spec.yaml") -> list[SpecError]  runs load_spec_text; checks the (spec, errors) contract
- at(text, needle, nth=1) -> (line, column)              1-based position of the nth occurrence of needle
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# One thread per test unless the test asks for more (configure_threads, --threads, SPECC_THREADS): pytest's
# workers already take every core, and a parallel loop compiles only in the tests that exercise it. The CLI
# processes the tests start inherit this; specc.kernels reads it when it loads.
os.environ.setdefault("SPECC_THREADS", "1")

from specc.spec import SpecError, load_spec_text

FILE = "spec.yaml"  # the file name errors_of() reports


def position_of(text: str, needle: str, nth: int = 1) -> tuple[int, int]:
    """1-based (line, column) of the nth occurrence of `needle` in `text` (columns count characters)."""
    idx = -1
    for _ in range(nth):
        idx = text.index(needle, idx + 1)
    line = text.count("\n", 0, idx) + 1
    col = idx - (text.rfind("\n", 0, idx) + 1) + 1
    return line, col


def spec_errors(text: str | bytes, file: str = FILE) -> list[SpecError]:
    """Errors of `text`; also checks load_spec_text's contract: a spec xor a non-empty error list."""
    spec, errors = load_spec_text(text, file)
    assert (spec is None) == bool(errors), (spec, errors)
    for e in errors:
        assert isinstance(e, SpecError)
    return errors


@pytest.fixture
def write_spec(tmp_path):
    def write(text: str | bytes, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def errors_of():
    return spec_errors


@pytest.fixture(scope="session")
def at():
    return position_of


@pytest.fixture(autouse=True)
def _threads_back_to_the_default():
    """A test that changed the thread count leaves the next one at $SPECC_THREADS."""
    yield
    kernels = sys.modules.get("specc.kernels")
    if kernels is not None:
        import numba

        want = min(int(os.environ["SPECC_THREADS"]), numba.config.NUMBA_NUM_THREADS)
        if numba.get_num_threads() != want or kernels.product_threads() != want:
            kernels.configure_threads(want)
