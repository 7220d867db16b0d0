"""The fuzzers of tests/fuzz/ in CI: a fixed, derandomised set of mutants through the real CLI.

Spec mutants (every spec in specs/ and the fuzzer's own seeds, mutated) through `validate` and `summary`;
data files, `--input` files and options through `train` / `evaluate` / `predict`; `--weights` files and
directories through `evaluate` / `predict`; damaged run directories through `train --resume`, `evaluate`
and `predict`. Each run must end within its timeout, without a traceback, an internal error or a signal,
with an exit code of the CLI's contract (tests/fuzz/runner.py). A failure shows the mutant and the command
that replays it. The mutant keys are fixed (seed 0), so every run tries the same mutants; the longer, random
run is `python -m tests.fuzz --minutes 30` (README, "Fuzzing"). About 50 s on 2 cores.
"""

from __future__ import annotations

import sys

import pytest

from tests.fuzz.mutants import Fixtures, make
from tests.fuzz.runner import run_cli
from tests.fuzz.session import BATCH, Session

SEED = 0
SPEC_MUTANTS = 3 * BATCH
COUNTS = {"data": 10, "weights": 6, "rundir": 5}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    s = Session(tmp_path_factory.mktemp("fuzz"), SEED, log=lambda _: None, debug_failures=False)
    s.summary_share, s.text_share = 0.2, 0.1  # of the spec mutants, beside the valid ones (all of them)
    return s


def broken(session: Session, target: str) -> str:
    found = [f for f in session.failures.values() if f.key.startswith(f"{target}:")]
    return f"{len(found)} distinct failures:\n\n" + "\n\n".join(f.text() for f in found)


def test_spec_mutants_through_validate_and_summary(session):
    for _ in range(SPEC_MUTANTS // BATCH):
        session.run_target("spec", BATCH)
    st = session.stats["spec"]
    assert not any(f.key.startswith("spec:") for f in session.failures.values()), broken(session, "spec")
    assert st.tried == SPEC_MUTANTS
    # The mutants reach both sides of both commands: some still valid, most not.
    assert {"validate 0", "validate 1", "summary 0", "summary 1"} <= set(st.exits), st.exits


@pytest.mark.parametrize("target", list(COUNTS))
def test_file_faults_through_train_evaluate_predict(session, target):
    session.run_target(target, COUNTS[target])
    assert not any(f.key.startswith(f"{target}:") for f in session.failures.values()), broken(session, target)
    st = session.stats[target]
    assert st.tried == COUNTS[target]
    assert any(k.endswith((" 1", " 2")) for k in st.exits), st.exits  # the faults are refused, not ignored


def test_mutants_are_reproducible_from_their_key(tmp_path):
    fixtures = Fixtures(tmp_path)
    for key in ("spec:0:3", "spec:7:11", "data:0:1"):
        a, b = make(key, fixtures), make(key, fixtures)
        assert (a.description, a.args, a.files) == (b.description, b.args, b.files)
    assert make("spec:0:1", fixtures).files != make("spec:0:2", fixtures).files


# The judge itself: each kind of break of the contract, made on purpose, is caught.
JUDGED = [
    ("raise ValueError('boom')", ["traceback"]),
    ("import sys; print('specc: internal error: KeyError: 3', file=sys.stderr); sys.exit(1)", ["internal error"]),
    ("import time; time.sleep(30)", ["hang"]),
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", ["killed by signal SIGSEGV"]),
    ("import sys; sys.exit(3)", ["exit code 3 (the contract allows [0, 1, 2])"]),
    ("import sys; sys.exit(1)", ["exit 1 without a message", "an error without file:line:column: (no error lines)"]),
    ("import sys; print('bad spec'); sys.exit(1)", ["an error without file:line:column: bad spec"]),
    ("import sys; print('a.yaml:0:1: error: x'); sys.exit(1)", ["an error without file:line:column: a.yaml:0:1: error: x"]),
    ("import sys; print('a.yaml:3:1: error: x'); sys.exit(1)", []),
]


@pytest.mark.parametrize("code, problems", JUDGED)
def test_the_judge_catches_each_break_of_the_contract(tmp_path, code, problems):
    o = run_cli(["summary"], tmp_path, timeout=3, prefix=[sys.executable, "-c", code])
    assert o.problems == problems, o.tail()
    assert bool(o.signature) == bool(problems)
