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
import re
import shutil
import sys
import zipfile

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


# Bugs the fuzzers found that are not fixed yet (tests/fuzz/REPORT.md), by the signature of their failure.
# Each has a reproducer at the end of this file, marked xfail(strict=True): the fix makes it pass, and strict
# turns that into a failure asking to delete its marker and its entry here. The fixed set tolerates (as an
# xfail) only failures of these signatures.
KNOWN_BUGS = {
    "npz member not in .npy format": re.compile(r"'bytes' object has no attribute"),
    "structured weights": re.compile(r"Cannot cast array data from dtype\(\["),
    "normalization.json that does not fit the model": re.compile(r"operands could not be broadcast together|"
                                                                 r"IndexError: list index out of range"),
    "large spec is slow": re.compile(r"^(validate|summary): slow: "),
    "--input FIFO hangs": re.compile(r"^(evaluate|predict): hang$"),
}


def known_bug(signature: str) -> str | None:
    return next((name for name, pattern in KNOWN_BUGS.items() if pattern.search(signature)), None)


def check(session: Session, target: str) -> None:
    """No failures of `target` but known bugs (then xfail, naming them)."""
    found = [f for f in session.failures.values() if f.key.startswith(f"{target}:")]
    unknown = [f for f in found if not known_bug(f.signature)]
    assert not unknown, f"{len(unknown)} distinct failures:\n\n" + "\n\n".join(f.text() for f in unknown)
    if found:
        pytest.xfail("only known bugs: " + "; ".join(sorted({f"{known_bug(f.signature)} ({f.key})" for f in found})))


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


# --- reproducers of the known bugs (KNOWN_BUGS) -------------------------------------------------------------


@pytest.fixture(scope="module")
def base(session, tmp_path_factory):
    """A folder with the fuzzers' base spec, its data, inputs, and a trained run of it (`run`)."""
    d = tmp_path_factory.mktemp("known")
    (d / "spec.yaml").write_text(BASE_SPEC)
    np.savez(d / "data.npz", **base_arrays())
    np.savez(d / "x.npz", **base_arrays(8, seed=1))
    shutil.copytree(session.fixtures.run("finished"), d / "run")
    return d


def contract(args: list[str], cwd, timeout: float = 60.0) -> None:
    o = run_cli(args, cwd, timeout)
    assert not o.problems and o.code in (1, 2), f"specc {' '.join(args)}: {', '.join(o.problems)}\n{o.tail()}"


def not_npy(path, names) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name in names:
            z.writestr(f"{name}.npy", b"not a numpy file")


@pytest.mark.xfail(strict=True, reason="known bug: np.load gives the raw bytes of an .npz member that is not in .npy "
                                       "format, and specc uses them as an array (AttributeError) in "
                                       "data.sources._npz, run.load_weights and session._read_inputs")
@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_known_bug_npz_member_not_in_npy_format(base, command):
    if command == "train":
        not_npy(base / "bytes.npz", ["x", "y"])
        (base / "bytes.yaml").write_text(BASE_SPEC.replace("data.npz", "bytes.npz"))
        contract(["train", "bytes.yaml", "--out", "out", "--quiet"], base)
    elif command == "evaluate":
        with np.load(base / "run" / "weights.final.npz") as w:
            not_npy(base / "w_bytes.npz", w.files)
        contract(["evaluate", "spec.yaml", "--weights", "w_bytes.npz"], base)
    else:
        not_npy(base / "x_bytes.npz", ["x"])
        contract(["predict", "spec.yaml", "--weights", "run", "--input", "x_bytes.npz"], base)


@pytest.mark.xfail(strict=True, reason="known bug: a weight of a structured dtype reaches Engine.set_weights "
                                       "(TypeError: cannot cast); run.load_weights checks shapes, not dtypes")
def test_known_bug_structured_weights(base):
    with np.load(base / "run" / "weights.final.npz") as archive:
        w = {k: archive[k] for k in archive.files}
    w["dense/bias"] = np.zeros(5, dtype=[("a", "<f4"), ("b", "<i4")])
    np.savez(base / "structured.npz", **w)
    contract(["evaluate", "spec.yaml", "--weights", "structured.npz"], base)


@pytest.mark.xfail(strict=True, reason="known bug: a normalization.json with no `inputs` entry, or whose mean/std "
                                       "do not have one value per input feature, passes _model_from_run's check and "
                                       "fails in session._read_inputs (IndexError / ValueError: broadcast)")
@pytest.mark.parametrize("damage", ["mean too short", "no inputs"])
def test_known_bug_normalization_that_does_not_fit_the_model(base, damage):
    run = base / f"norm_run_{damage.replace(' ', '_')}"
    shutil.copytree(base / "run", run)
    norm = json.loads((run / "normalization.json").read_text())
    if damage == "no inputs":
        norm["inputs"] = []
    else:
        norm["inputs"][0]["mean"] = norm["inputs"][0]["mean"][:3]
    (run / "normalization.json").write_text(json.dumps(norm))
    contract(["predict", "spec.yaml", "--weights", run.name, "--input", "x.npz", "--out", "p.npz"], base)


@pytest.mark.xfail(strict=True, reason="known bug: --input naming a FIFO blocks for ever: session._read_inputs "
                                       "opens it through run.read_npz, not specc.spec.files.open_regular_file "
                                       "(which specs and data files go through)")
def test_known_bug_input_fifo_hangs(base):
    os.mkfifo(base / "fifo.npz")
    contract(["predict", "spec.yaml", "--weights", "run", "--input", "fifo.npz"], base, timeout=6)


@pytest.mark.xfail(strict=True, reason="known bug: a 1 MB spec of 200,000 lines takes ~10 s to be refused (PyYAML "
                                       "composes every node before the node limit is checked); README: hostile "
                                       "files are reported 'in well under a second'")
def test_known_bug_large_spec_is_slow(tmp_path):
    (tmp_path / "big.yaml").write_text("x: 1\n" * 200_000)
    o = run_cli(["validate", "big.yaml"], tmp_path, timeout=3)
    assert o.code == 1 and o.duration < 3, o.tail()
