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

import json
import os
import shutil
import sys

import numpy as np
import pytest

from tests.fuzz.mutants import BASE_SPEC, Fixtures, base_arrays, make
from tests.fuzz.runner import run_cli
from tests.fuzz.session import BATCH, Session

SEED = 0
SPEC_MUTANTS = 3 * BATCH
COUNTS = {"data": 10, "weights": 6, "rundir": 5}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    s = Session(tmp_path_factory.mktemp("fuzz"), SEED, log=lambda _: None, debug_failures=False)
    s.summary_share, s.text_share = 0.15, 0.1  # of the spec mutants, beside the valid ones (all of them)
    return s


def check(session: Session, target: str) -> None:
    found = [f for f in session.failures.values() if f.key.startswith(f"{target}:")]
    assert not found, f"{len(found)} distinct failures:\n\n" + "\n\n".join(f.text() for f in found)


def test_spec_mutants_through_validate_and_summary(session):
    for _ in range(SPEC_MUTANTS // BATCH):
        session.run_target("spec", BATCH)
    st = session.stats["spec"]
    assert st.tried == SPEC_MUTANTS
    # The mutants reach both sides of both commands: some still valid, most not.
    assert {"validate 0", "validate 1", "summary 0", "summary 1"} <= set(st.exits), st.exits
    check(session, "spec")


@pytest.mark.parametrize("target", list(COUNTS))
def test_file_faults_through_train_evaluate_predict(session, target):
    session.run_target(target, COUNTS[target])
    st = session.stats[target]
    assert st.tried == COUNTS[target]
    assert any(k.endswith((" 1", " 2")) for k in st.exits), st.exits  # the faults are refused, not ignored
    check(session, target)


def test_mutants_are_reproducible_from_their_key(tmp_path):
    fixtures = Fixtures(tmp_path)
    for key in ("spec:0:3", "spec:7:11", "data:0:1"):
        a, b = make(key, fixtures), make(key, fixtures)
        assert (a.description, a.args, a.files) == (b.description, b.args, b.files)
    assert make("spec:0:1", fixtures).files != make("spec:0:2", fixtures).files


def test_run_directory_faults_damage_the_same_way_every_time(session, tmp_path):
    # A failure is replayed (SPECC_DEBUG=1, --replay) by preparing the same mutant again.
    def contents(d):
        return {str(p.relative_to(d)): os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
                for p in sorted(d.rglob("*"))}

    for i in range(COUNTS["rundir"]):  # the fixed set's mutants: their fixture runs exist by now
        m = make(f"rundir:{SEED}:{i}", session.fixtures)
        m.prepare(tmp_path / f"{i}a", session.fixtures)
        described = m.description
        m.prepare(tmp_path / f"{i}b", session.fixtures)
        assert contents(tmp_path / f"{i}a") == contents(tmp_path / f"{i}b"), m.key
        assert m.description == described


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
    o = run_cli(["summary"], tmp_path, timeout=2, prefix=[sys.executable, "-c", code])
    assert o.problems == problems, o.tail()
    assert bool(o.signature) == bool(problems)


# --- bugs the fuzzers found (tests/fuzz/REPORT.md) ---------------------------------------------------------
# A fixed bug's reproducer guards its fix. An open one is marked xfail(strict=True): the fix makes it pass,
# and strict turns that into a failure asking to delete the marker.


@pytest.fixture(scope="module")
def base(session, tmp_path_factory):
    """A folder with the fuzzers' base spec, its inputs, a trained run of it (`run`) and a run killed after
    its first epoch (`killed`, with a checkpoint to resume)."""
    d = tmp_path_factory.mktemp("known")
    (d / "spec.yaml").write_text(BASE_SPEC)
    np.savez(d / "x.npz", **base_arrays(8, seed=1))
    shutil.copytree(session.fixtures.run("finished"), d / "run")
    shutil.copytree(session.fixtures.run("killed"), d / "killed")
    return d


def contract(args: list[str], cwd, timeout: float = 60.0) -> None:
    o = run_cli(args, cwd, timeout)
    assert not o.problems and o.code in (1, 2), f"specc {' '.join(args)}: {', '.join(o.problems)}\n{o.tail()}"


def edit_json(path, key: str, value) -> None:
    """Set `key` (dotted) of the JSON file at `path` to `value`."""
    data = json.loads(path.read_text())
    *parents, last = key.split(".")
    node = data
    for k in parents:
        node = node[k]
    node[last] = value
    path.write_text(json.dumps(data))


def test_fuzz_found_normalization_without_inputs(base):
    shutil.copytree(base / "run", base / "no_inputs")
    edit_json(base / "no_inputs" / "normalization.json", "inputs", [])
    contract(["predict", "spec.yaml", "--weights", "no_inputs", "--input", "x.npz", "--out", "p.npz"], base)


@pytest.mark.parametrize("key, value", [("arrays", ["x"]), ("history.epoch", "x"),
                                        ("dropout_rng.has_uint32", 2**64), ("loop", 3.0), ("history", True),
                                        ("callbacks", 5), ("history.history", {"loss": "x"})])
def test_fuzz_found_damaged_checkpoint_state(base, key, value):
    run = base / f"state_{key}"
    shutil.copytree(base / "killed", run)
    edit_json(run / "checkpoint" / "state.json", key, value)
    contract(["train", "--resume", run.name, "--quiet", "--threads", "1"], base)


@pytest.mark.parametrize("key, value", [("overrides", "fit.epochs=3"), ("threads", "x"), ("resumes", 3)])
def test_fuzz_found_damaged_environment_json(base, key, value):
    run = base / f"env_{key}"
    shutil.copytree(base / "killed", run)
    edit_json(run / "environment.json", key, value)
    contract(["train", "--resume", run.name, "--quiet"], base)


def test_fuzz_found_timedelta_labels(base):
    # NumPy files timedelta64 under the integers: it passed the data check as class labels (TypeError later)
    arrays = base_arrays()
    np.savez(base / "td.npz", x=arrays["x"], y=arrays["y"].astype("timedelta64[ms]"))
    (base / "td.yaml").write_text(BASE_SPEC.replace("data.npz", "td.npz"))
    contract(["train", "td.yaml", "--out", "out", "--quiet"], base)


def test_fuzz_found_resolved_yaml_not_utf8(base):
    shutil.copytree(base / "killed", base / "not_utf8")
    with open(base / "not_utf8" / "resolved.yaml", "ab") as fh:
        fh.write(b"\xff")
    # the spec is checked against the hash environment.json keeps, so the run resumes; only a changed spec
    # would need the record (and then cannot list what changed)
    o = run_cli(["train", "--resume", "not_utf8", "--quiet", "--threads", "1"], base, 60.0)
    assert not o.problems and o.code == 0, o.tail()
