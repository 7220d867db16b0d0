"""Data-parallel training on MPI (specc/distributed.py): 2 ranks give the weights and history of one
process, one writer, sharded evaluation, BatchNormalization across ranks, faults that stop every rank,
resume with another rank count, `--procs`, and MPI never loaded without need.

Multi-rank cases run through the bundled `mpiexec -n 2` (skipped without mpi4py); data sets are small and
runs a few epochs, so each case takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from .test_train_cli import ENV, cmd, npz, output, run, run_dirs, saved_dir

REPO = Path(__file__).resolve().parent.parent

# An MLP without Dropout (each rank draws its own masks) on the bundled digits: 1294 training samples in
# global batches of 61, each split 31 + 30, the last (13 rows) 7 + 6.
SPEC = """\
specc: 1
name: dp
seed: 3
model:
  input: {shape: [64], name: pixels}
  layers:
    - {type: Dense, units: 32, activation: relu}
    - {type: Dense, units: 10, activation: softmax, name: digit}
data: {source: digits, test_split: 0.2, normalize: true}
compile:
  optimizer: {type: adam, learning_rate: 0.01}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
fit: {batch_size: 61, epochs: 3, validation_split: 0.1}
"""


def mpiexec() -> str:
    pytest.importorskip("mpi4py")
    from specc.distributed import find_mpiexec

    found = find_mpiexec()
    if found is None:
        pytest.skip("no mpiexec")
    return found


def run_mpi(*args, cwd, n=2, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([mpiexec(), "-n", str(n), *cmd(*args)], capture_output=True, text=True, cwd=cwd,
                          env=env or ENV, timeout=timeout)


def relative_difference(a: dict, b: dict) -> float:
    assert list(a) == list(b)
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-12)) for k in a)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dp")
    (root / "dp.yaml").write_text(SPEC)
    return root


@pytest.fixture(scope="module")
def one_process(project) -> Path:
    proc = run("train", "dp.yaml", "--out", "one", "-q", "--threads", "1", cwd=project)
    assert proc.returncode == 0, output(proc)
    return project / saved_dir(proc)


def test_two_ranks_reach_the_weights_and_history_of_one_process(project, one_process):
    proc = run_mpi("train", "dp.yaml", "--out", "two", cwd=project)
    assert proc.returncode == 0, output(proc)
    two = project / saved_dir(proc)
    assert relative_difference(npz(one_process / "weights.final.npz"), npz(two / "weights.final.npz")) <= 1e-5
    h1, h2 = (json.loads((d / "history.json").read_text()) for d in (one_process, two))
    assert list(h1) == list(h2) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    for key in h1:
        assert np.round(h1[key], 4).tolist() == np.round(h2[key], 4).tolist(), key
    t1, t2 = (json.loads((d / "test_metrics.json").read_text()) for d in (one_process, two))
    assert t1["samples"] == t2["samples"] and t1["accuracy"] == t2["accuracy"]
    assert t1["loss"] == pytest.approx(t2["loss"], rel=1e-5)
    # one writer: one run directory, one progress output, one result line
    assert run_dirs(project / "two", "dp") == [two]
    assert proc.stdout.count("Epoch 1/3") == 1 and proc.stdout.count("Run saved to") == 1, output(proc)
    env = json.loads((two / "environment.json").read_text())
    cores = len(os.sched_getaffinity(0))
    assert env["processes"] == 2 and env["threads"] == max(1, cores // 2)  # the cores shared by the ranks


def test_procs_launches_the_ranks_itself(project, one_process):
    mpiexec()
    proc = run("train", "dp.yaml", "--out", "procs", "-q", "--procs", "2", "--set", "fit.epochs=1", cwd=project)
    assert proc.returncode == 0, output(proc)
    env = json.loads((project / saved_dir(proc) / "environment.json").read_text())
    assert env["processes"] == 2, output(proc)
    assert len(run_dirs(project / "procs", "dp")) == 1


API_SCRIPT = """\
import json, sys
import numpy as np
import specc
from specc import distributed, layers

if sys.argv[1] == "mpi":
    distributed.init()
specc.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.standard_normal((101, 6)).astype(np.float32)
y = x[:, :3].argmax(axis=1)
model = specc.Sequential([specc.Input(shape=(6,)), layers.Dense(16, activation="relu"),
                          layers.Dense(3, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
# 80 training samples in batches of 20, then 79 in batches of 26: the last batch is one row, so one rank
# has none at that step
history = model.fit(x, y, epochs=3, batch_size=20, validation_split=0.2, verbose=0)
history2 = model.fit(x[:79], y[:79], epochs=2, batch_size=26, verbose=0)
result = model.evaluate(x, y, verbose=0)
weights = model.get_weights()
out = {"history": history.history, "history2": history2.history, "evaluate": [float(v) for v in result],
       "rank": distributed.rank(), "checksum": float(sum(np.abs(w).sum() for w in weights))}
np.savez(sys.argv[2] + f".{distributed.rank()}.npz", *weights)
with open(sys.argv[2] + f".{distributed.rank()}.json", "w") as fh:  # not stdout: mpiexec interleaves the ranks'
    json.dump(out, fh)
"""


def api_results(prefix: Path) -> list[dict]:
    """The results each rank of a script wrote to PREFIX.<rank>.json, in rank order."""
    found = sorted(prefix.parent.glob(prefix.name + ".*.json"))
    return [json.loads(p.read_text()) for p in found]


def test_api_fit_under_mpiexec_matches_one_process(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(API_SCRIPT)
    one = subprocess.run([sys.executable, str(script), "one", str(tmp_path / "one")], capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert one.returncode == 0, output(one)
    two = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(script), "mpi", str(tmp_path / "two")],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert two.returncode == 0, output(two)
    [single], ranks = api_results(tmp_path / "one"), api_results(tmp_path / "two")
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # every rank holds the same weights
    for key in ("history", "history2"):
        for name, values in single[key].items():
            assert np.round(values, 4).tolist() == np.round(ranks[0][key][name], 4).tolist(), (key, name)
    assert ranks[0]["evaluate"] == pytest.approx(single["evaluate"], rel=1e-5)
    a, b = npz(tmp_path / "one.0.npz"), npz(tmp_path / "two.0.npz")
    assert relative_difference(a, b) <= 1e-5


BN_SCRIPT = """\
import json, sys
import numpy as np
import specc
from specc import distributed, layers

if sys.argv[1] == "mpi":
    distributed.init()
specc.set_random_seed(0)
rng = np.random.default_rng(1)
x = (rng.standard_normal((9, 4)) * [1, 2, 3, 4] + [0, 1, 2, 3]).astype(np.float32)
y = rng.standard_normal((9, 1)).astype(np.float32)
model = specc.Sequential([specc.Input(shape=(4,)), layers.BatchNormalization(momentum=0.5), layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
model.fit(x, y, epochs=1, batch_size=9, shuffle=False, verbose=0)  # one step over all 9 rows
w = model.layers[0].get_weights()
with open(sys.argv[2] + f".{distributed.rank()}.json", "w") as fh:
    json.dump({"rank": distributed.rank(), "mean": w[2].tolist(), "var": w[3].tolist()}, fh)
"""


def test_batch_normalization_uses_each_ranks_statistics_and_averages_the_moving_ones(tmp_path):
    """Per-rank batch statistics (Keras/Horovod's default); the moving statistics averaged over the ranks,
    weighted by rows: the moving mean is one process's, the moving variance the mean of the ranks'."""
    script = tmp_path / "bn.py"
    script.write_text(BN_SCRIPT)
    two = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(script), "mpi", str(tmp_path / "bn")],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert two.returncode == 0, output(two)
    ranks = api_results(tmp_path / "bn")
    assert ranks[0]["mean"] == ranks[1]["mean"] and ranks[0]["var"] == ranks[1]["var"]
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((9, 4)) * [1, 2, 3, 4] + [0, 1, 2, 3]).astype(np.float32).astype(np.float64)
    first, second = x[:5], x[5:]  # rank 0 takes 5 rows, rank 1 four
    np.testing.assert_allclose(ranks[0]["mean"], 0.5 * x.mean(axis=0), rtol=1e-5)
    per_rank = (5 * first.var(axis=0) + 4 * second.var(axis=0)) / 9
    np.testing.assert_allclose(ranks[0]["var"], 0.5 + 0.5 * per_rank, rtol=1e-5)
    assert not np.allclose(per_rank, x.var(axis=0), rtol=1e-3)  # the case tells the two apart


@pytest.mark.parametrize("fault", ["raise", "kill"])
def test_a_failing_rank_stops_every_rank_within_seconds(project, fault):
    env = dict(ENV, SPECC_TEST_FAULT=f"1:3:{fault}")
    started = time.monotonic()
    proc = run_mpi("train", "dp.yaml", "--out", f"fault-{fault}", "-q", "--set", "fit.epochs=50", cwd=project,
                   env=env, timeout=60)
    assert proc.returncode != 0, output(proc)
    assert time.monotonic() - started < 45
    if fault == "raise":
        assert "rank 1 of 2" in proc.stderr and "fault injected" in proc.stderr, output(proc)
    else:
        assert "Killed" in proc.stdout + proc.stderr, output(proc)


def test_a_spec_error_is_reported_once_with_its_position(project):
    (project / "bad.yaml").write_text(SPEC.replace("units: 32", "units: -32"))
    proc = run_mpi("train", "bad.yaml", "--out", "bad", cwd=project)
    assert proc.returncode == 1, output(proc)
    lines = [line for line in proc.stderr.splitlines() if re.match(r"\S*bad\.yaml:\d+:\d+: error", line)]
    assert len(lines) == 1 and "units" in lines[0], output(proc)
    assert not (project / "bad").exists()


def test_a_data_error_is_reported_once(project):
    (project / "nodata.yaml").write_text(SPEC.replace("{source: digits,", "{source: {path: none.npz},"))
    proc = run_mpi("train", "nodata.yaml", "--out", "nodata", cwd=project)
    assert proc.returncode == 1, output(proc)
    assert proc.stderr.count("none.npz") == 1 and re.search(r"nodata\.yaml:\d+:\d+: error", proc.stderr), \
        output(proc)


def test_interrupted_on_two_ranks_resumes_on_one_and_on_two(project, one_process):
    """A stop asked of one rank (its Ctrl-C) stops both after the same step; rank 0 checkpoints; the run
    (and a copy of it) resumes with one process and with two, and both end with the uninterrupted run's
    weights."""
    import shutil

    env = dict(ENV, SPECC_TEST_FAULT="1:30:sigint")  # the 9th step of epoch 2 (22 steps an epoch)
    proc = run_mpi("train", "dp.yaml", "--out", "stopped", "-q", cwd=project, env=env)
    assert proc.returncode == 130, output(proc)
    assert proc.stderr.count("Stopped. Checkpoint written") == 1, output(proc)
    run_dir = project / re.search(r"Resume with: specc train --resume (\S+)", proc.stderr).group(1)
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["loop"]["epoch"] == 1 and state["loop"]["step"] == 9, state["loop"]
    copy = run_dir.with_name(run_dir.name + "-copy")
    shutil.copytree(run_dir, copy)
    for directory, processes in ((run_dir, 1), (copy, 2)):
        if processes == 1:
            resumed = run("train", "--resume", directory, "-q", "--threads", "1", cwd=project)
        else:
            resumed = run_mpi("train", "--resume", directory, "-q", cwd=project)
        assert resumed.returncode == 0, output(resumed)
        final = npz(directory / "weights.final.npz")
        assert relative_difference(npz(one_process / "weights.final.npz"), final) <= 1e-5
        env_json = json.loads((directory / "environment.json").read_text())
        assert env_json["resumes"][-1].get("processes", 1) == processes


def test_procs_without_mpi4py_says_how_to_install(project):
    code = textwrap.dedent("""
        import importlib.util, sys
        real = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == "mpi4py" else real(name, *a)
        sys.argv = ["specc", "train", "dp.yaml", "--procs", "2"]
        from specc.cli import main
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=project, env=ENV,
                          timeout=120)
    assert proc.returncode == 2, output(proc)
    assert 'pip install -e ".[mpi]"' in proc.stderr and "Traceback" not in proc.stderr, output(proc)


def test_import_and_validate_never_load_mpi(project):
    code = textwrap.dedent("""
        import sys
        import specc, specc.distributed
        assert "mpi4py" not in sys.modules
        sys.argv = ["specc", "validate", "dp.yaml"]
        from specc.cli import main
        try:
            main()
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        print("mpi4py" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=project, env=ENV,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("False"), output(proc)


def test_ctrl_c_to_mpiexec_stops_every_rank_after_one_step_with_a_checkpoint(project):
    """mpiexec forwards a Ctrl-C (SIGINT) to every rank: they stop after the same step, rank 0 writes the
    checkpoint and says how to resume, once; exit 130."""
    import signal

    proc = subprocess.Popen([mpiexec(), "-n", "2", *cmd("train", "dp.yaml", "--out", "ctrl-c", "--set",
                                                         "fit.epochs=2000")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=project, env=ENV)
    try:
        for line in proc.stdout:
            if line.startswith("Epoch 3/"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, f"{out}\n{err}"
    assert err.count("Stopped. Checkpoint written") == 1, err
    run_dir = project / re.search(r"Resume with: specc train --resume (\S+)", err).group(1)
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["loop"]["epoch"] >= 2


def test_data_only_one_rank_cannot_read_stops_all_and_rank_0_names_it(tmp_path):
    """Rank 1 runs in a folder without the data file (as on a machine that does not see it): every rank
    stops before training, nothing is written, and rank 0 prints rank 1's error once."""
    spec = SPEC.replace("{source: digits,", "{source: {path: data.npz},")
    here, there = tmp_path / "here", tmp_path / "there"
    for folder in (here, there):
        folder.mkdir()
        (folder / "s.yaml").write_text(spec)
    rng = np.random.default_rng(0)
    np.savez(here / "data.npz", x=rng.standard_normal((50, 64)).astype(np.float32), y=rng.integers(0, 10, 50))
    args = cmd("train", "s.yaml", "--out", "runs", "-q")
    proc = subprocess.run([mpiexec(), "-n", "1", "-wdir", str(here), *args, ":", "-n", "1", "-wdir", str(there),
                           *args], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 1, output(proc)
    assert proc.stderr.count("rank 1 of 2:") == 1 and proc.stderr.count("data.npz") == 1, output(proc)
    assert not (here / "runs").exists() and not (there / "runs").exists()


def test_api_under_mpiexec_without_init_warns_that_each_process_trains_alone(tmp_path):
    script = tmp_path / "alone.py"
    script.write_text(API_SCRIPT)
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(script), "alone", str(tmp_path / "a")],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, output(proc)
    assert "specc.distributed.init() was not called" in proc.stderr, output(proc)  # (mpiexec may interleave the two)
    assert [r["rank"] for r in api_results(tmp_path / "a")] == [0]  # each process is its world's rank 0
