"""`specc train` / `evaluate` / `predict` under bad input, faults and signals: every case ends in a clear
message and a known exit code, never an internal error, and no run is lost.

Damaged weights and inputs, unusable --out paths, a full disk mid-run (the last complete checkpoint is kept
and resumes to the uninterrupted result), two processes on one run (a lock), a resume with a changed spec,
SIGTERM, models too big for memory, and a bad $SPECC_THREADS.

Faults that cannot be produced for real in a test (a full disk, a read-only file system as root, a
MemoryError) are patched into an in-process CLI call (`in_process`: specc.cli.main with sys.argv set). Cases
a real process shows best (signals, two processes, a bad environment) run in subprocesses. Every run is the
tiny 4-feature spec on 300 samples.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from .test_train_cli import (
    ENV,
    TINY_SPEC,
    assert_same_arrays,
    finish,
    no_tmp_files,
    no_traceback,
    npz,
    output,
    run,
    start,
    write_tiny_data,
)

ARGS = ("--threads", "1", "-q")


def in_process(*args, patches=()) -> subprocess.CompletedProcess:
    """`specc ARGS` run by specc.cli.main in this process, with `patches` (functions of a MonkeyPatch)
    applied for the call, so a test can put a fault where no real one can be made."""
    import numba

    from specc.cli import main
    from specc.kernels import configure_threads

    threads = numba.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", ["specc", *map(str, args)])
        for patch in patches:
            patch(mp)
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
    configure_threads(threads)  # as it was for the tests that follow in this process
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def no_internal_error(proc) -> None:
    no_traceback(proc)
    assert "internal error" not in proc.stderr, output(proc)


def saved_dir(proc) -> Path:
    m = re.search(r"^Run saved to (.+)$", proc.stdout, re.M)
    assert m, output(proc)
    return Path(m.group(1))


def resume_dir(proc) -> Path:
    m = re.search(r"Resume with: specc train --resume (\S+)", proc.stderr)
    assert m, output(proc)
    return Path(m.group(1))


def checkpoint_loop(run_dir: Path) -> dict:
    return json.loads((run_dir / "checkpoint" / "state.json").read_text())["loop"]


def enospc_writing(name: str, nth: int = 1):
    """A patch: the nth write of a file called `name` fails with ENOSPC in fsync, as on a full disk, inside
    the real atomic writer (so its clean-up runs as it would)."""

    def patch(mp):
        from specc.train import run as run_module

        real = run_module.atomic_write
        seen = []

        def full_disk(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def write(path, fill):
            if os.path.basename(path) == name:
                seen.append(path)
                if len(seen) == nth:
                    with pytest.MonkeyPatch.context() as inner:
                        inner.setattr(os, "fsync", full_disk)
                        return real(path, fill)
            return real(path, fill)

        mp.setattr(run_module, "atomic_write", write)

    return patch


def signal_self_in_epoch(epoch: int, signum=signal.SIGINT):
    """A patch: the process sends itself `signum` as epoch `epoch` (0-based) begins, as a user's Ctrl-C
    would, at a known point."""

    def patch(mp):
        from specc.train.progress import Progress

        real = Progress.epoch_begin

        def epoch_begin(self, e, epochs, steps):
            real(self, e, epochs, steps)
            if e == epoch:
                os.kill(os.getpid(), signum)

        mp.setattr(Progress, "epoch_begin", epoch_begin)

    return patch


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    write_tiny_data(root)
    (root / "tiny.yaml").write_text(TINY_SPEC)
    return root


@pytest.fixture(scope="module")
def reference(project) -> Path:
    """The tiny spec trained without a fault: 3 epochs."""
    proc = in_process("train", project / "tiny.yaml", "--out", project / "reference", *ARGS)
    assert proc.returncode == 0, output(proc)
    return saved_dir(proc)


@pytest.fixture(scope="module")
def interrupted(project) -> Path:
    """The tiny spec stopped by Ctrl-C after the first step of epoch 2: a run with a checkpoint."""
    proc = in_process("train", project / "tiny.yaml", "--out", project / "interrupted", *ARGS,
                      patches=[signal_self_in_epoch(1)])
    assert proc.returncode == 130, output(proc)
    run_dir = resume_dir(proc)
    assert checkpoint_loop(run_dir)["epoch"] == 1 and checkpoint_loop(run_dir)["step"] == 1
    return run_dir


def copy_run(run_dir: Path, dest: Path) -> Path:
    target = dest / "copy" / run_dir.name
    shutil.copytree(run_dir, target)
    return target


# --- 1. weights and inputs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(project, reference):
    """evaluate/predict with broken --weights and --input, two at a time."""
    spec = project / "tiny.yaml"
    truncated = project / "truncated_run"
    shutil.copytree(reference, truncated)
    data = (truncated / "weights.final.npz").read_bytes()
    (truncated / "weights.final.npz").write_bytes(data[: len(data) // 2])
    wrong = npz(reference / "weights.final.npz")
    wrong["dense/kernel"] = np.zeros((4, 9), np.float32)
    np.savez(project / "wrong_shape.npz", **wrong)
    (project / "inputs_dir").mkdir()
    jobs = {
        "truncated": ("evaluate", spec, "--weights", truncated),
        "spec_as_weights": ("predict", spec, "--weights", spec, "--input", project / "tiny.npz",
                            "--out", project / "p1.npz"),
        "wrong_shape": ("evaluate", spec, "--weights", project / "wrong_shape.npz"),
        "input_dir_evaluate": ("evaluate", spec, "--weights", reference, "--input", project / "inputs_dir"),
        "input_dir_predict": ("predict", spec, "--weights", reference, "--input", project / "inputs_dir",
                              "--out", project / "p2.npz"),
        "spec_as_input": ("predict", spec, "--weights", reference, "--input", spec, "--out", project / "p3.npz"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(run, *args, cwd=project) for k, args in jobs.items()}
        return {k: f.result() for k, f in futures.items()}, truncated


def test_truncated_weights_file_is_named(served):
    results, truncated = served
    proc = results["truncated"]
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    assert str(truncated / "weights.final.npz") in proc.stderr and "truncated" in proc.stderr, output(proc)


def test_spec_given_as_weights_is_named_not_unpickled(served):
    proc = served[0]["spec_as_weights"]
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    assert "tiny.yaml is not a weights .npz" in proc.stderr and "text file" in proc.stderr, output(proc)
    assert "pickle" not in proc.stderr, output(proc)


def test_wrong_shaped_weight_names_layer_weight_and_shapes(served):
    proc = served[0]["wrong_shape"]
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    assert "wrong_shape.npz" in proc.stderr, output(proc)
    assert "'kernel' of layer 'dense'" in proc.stderr and "(4, 9)" in proc.stderr and "(4, 8)" in proc.stderr, \
        output(proc)


@pytest.mark.parametrize("case", ["input_dir_evaluate", "input_dir_predict"])
def test_input_that_is_a_directory(served, project, case):
    proc = served[0][case]
    assert proc.returncode == 2, output(proc)
    no_internal_error(proc)
    assert f"{project / 'inputs_dir'} is a directory" in proc.stderr, output(proc)


def test_spec_given_as_input_is_named(served):
    proc = served[0]["spec_as_input"]
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    assert "tiny.yaml is not an .npz" in proc.stderr and "pickle" not in proc.stderr, output(proc)


# --- 2. output locations, a full disk, the seed ------------------------------------------------------------


def test_out_under_a_regular_file(project, reference):
    blocker = project / "a_file"
    blocker.write_text("not a folder\n")
    jobs = [("train", project / "tiny.yaml", "--out", blocker / "runs"),
            ("predict", project / "tiny.yaml", "--weights", reference, "--input", project / "tiny.npz",
             "--out", blocker / "predictions.npz")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for proc in pool.map(lambda args: run(*args, cwd=project), jobs):
            assert proc.returncode == 2, output(proc)
            no_internal_error(proc)
            assert f"{blocker} is a file, not a directory" in proc.stderr, output(proc)
            assert "Epoch 1/" not in proc.stdout
    assert blocker.read_text() == "not a folder\n"


def test_out_on_a_read_only_file_system(project, tmp_path):
    """Root may write anywhere, so the read-only file system is patched in: mkdir fails with EROFS."""
    read_only = tmp_path / "mounted_ro"
    read_only.mkdir()

    def patch(mp):
        real = os.mkdir

        def mkdir(path, *args, **kwargs):
            if str(path).startswith(str(read_only)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, *args, **kwargs)

        mp.setattr(os, "mkdir", mkdir)

    proc = in_process("train", project / "tiny.yaml", "--out", read_only / "runs", *ARGS, patches=[patch])
    assert proc.returncode == 2, output(proc)
    no_internal_error(proc)
    assert "Read-only file system" in proc.stderr and str(read_only / "runs") in proc.stderr, output(proc)
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("name, nth, kept", [
    ("state.json", 2, "the end of epoch 1"),  # the checkpoint after epoch 2: epoch 1's must survive whole
    ("weights.final.npz", 1, "the end of epoch 3"),  # training done, the results not written
])
def test_disk_full_mid_run_keeps_the_last_checkpoint(project, reference, tmp_path, name, nth, kept):
    proc = in_process("train", project / "tiny.yaml", "--out", tmp_path, *ARGS, patches=[enospc_writing(name, nth)])
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    assert "No space left on device" in proc.stderr and name in proc.stderr, output(proc)
    assert f"The last complete checkpoint ({kept})" in proc.stderr, output(proc)
    run_dir = resume_dir(proc)
    no_tmp_files(run_dir)
    assert not (run_dir / "weights.final.npz").exists()

    resumed = in_process("train", "--resume", run_dir, *ARGS)
    assert resumed.returncode == 0, output(resumed)
    assert_same_arrays(npz(run_dir / "weights.final.npz"), npz(reference / "weights.final.npz"))
    assert json.loads((run_dir / "history.json").read_text()) == json.loads((reference / "history.json").read_text())
    assert not (run_dir / "checkpoint").exists()
    no_tmp_files(run_dir)


def test_disk_full_while_creating_the_run_leaves_nothing(project, tmp_path):
    proc = in_process("train", project / "tiny.yaml", "--out", tmp_path, *ARGS,
                      patches=[enospc_writing("environment.json")])
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    assert "No space left on device" in proc.stderr and "nothing was trained" in proc.stderr, output(proc)
    assert list((tmp_path / "tiny").iterdir()) == []


def test_negative_seed_is_a_usage_error(project):
    proc = run("train", project / "tiny.yaml", "--seed", "-5", "--out", project / "seed", cwd=project)
    assert proc.returncode == 2, output(proc)
    no_internal_error(proc)
    assert "--seed" in proc.stderr and "-5" in proc.stderr and "non-negative" in proc.stderr, output(proc)


def test_spec_name_cannot_move_the_run_out_of_out(project, tmp_path):
    # a name is a file name: one that climbs out of --out is refused at its line, and nothing is written
    spec = project / "escape.yaml"
    spec.write_text(TINY_SPEC.replace("name: tiny", "name: ../../escaped").replace("epochs: 3", "epochs: 1"))
    proc = in_process("train", spec, "--out", tmp_path / "out", *ARGS)
    assert proc.returncode == 1, output(proc)
    assert f"{spec}:2:7: error: name: must be a file name" in proc.stderr, output(proc)
    assert list(tmp_path.iterdir()) == []


# --- 3. one process per run --------------------------------------------------------------------------------


def wait_for(proc: subprocess.Popen, marker: str, timeout: float = 120) -> str:
    """stdout of `proc` up to the line starting with `marker` (the process keeps running)."""
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(marker):
                return "".join(seen)
        pytest.fail(f"{marker!r} never came:\n" + "".join(seen) + proc.stderr.read())
    finally:
        watchdog.cancel()


def stop(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    proc.send_signal(signal.SIGINT)
    return finish(proc)


LONG = ("--set", "fit.epochs=100000", "--set", "fit.batch_size=1", "--threads", "1")


def test_a_second_process_on_a_run_is_refused(project, tmp_path):
    first = start("train", project / "tiny.yaml", "--out", tmp_path, *LONG, cwd=project)
    try:
        wait_for(first, "Epoch 2/")  # epoch 1 is checkpointed: there is something to resume
        run_dir = next((tmp_path / "tiny").iterdir())
        second = run("train", "--resume", run_dir, cwd=project)
    finally:
        stopped = stop(first)
    assert second.returncode == 2, output(second)
    no_internal_error(second)
    assert f"{run_dir} is being trained by another specc process (pid {first.pid}:" in second.stderr, output(second)
    assert stopped.returncode == 130, output(stopped)

    # two resumes of the same run: the later one is refused while the first holds the run
    first = start("train", "--resume", run_dir, "--threads", "1", cwd=project)
    try:
        wait_for(first, "Resuming")
        second = run("train", "--resume", run_dir, cwd=project)
    finally:
        stopped = stop(first)
    assert second.returncode == 2, output(second)
    assert f"(pid {first.pid}: specc train --resume {run_dir}" in second.stderr, output(second)
    assert stopped.returncode == 130, output(stopped)
    assert "Resume with" in stopped.stderr, output(stopped)


# --- 4. resume with a changed spec -------------------------------------------------------------------------


def test_resume_refuses_an_edited_spec(interrupted, tmp_path):
    run_dir = copy_run(interrupted, tmp_path)
    spec = run_dir / "spec.yaml"
    spec.write_text(spec.read_text().replace("units: 8", "units: 16"))
    state = (run_dir / "checkpoint" / "state.json").read_bytes()
    proc = run("train", "--resume", run_dir, cwd=tmp_path)
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    assert "model.layers[0].units: 8 -> 16" in proc.stderr and str(run_dir) in proc.stderr, output(proc)
    assert (run_dir / "checkpoint" / "state.json").read_bytes() == state


@pytest.mark.parametrize("args, change", [
    (("--set", "compile.optimizer.learning_rate=0.5"), "compile.optimizer.learning_rate: 0.01 -> 0.5"),
    (("--seed", "7"), "seed: 0 -> 7"),
])
def test_resume_refuses_changed_settings(interrupted, tmp_path, args, change):
    run_dir = copy_run(interrupted, tmp_path)
    proc = run("train", "--resume", run_dir, *args, cwd=tmp_path)
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    assert change in proc.stderr, output(proc)


def test_resume_with_more_epochs_is_recorded(interrupted, tmp_path):
    run_dir = copy_run(interrupted, tmp_path)
    proc = in_process("train", "--resume", run_dir, "--set", "fit.epochs=4", *ARGS)
    assert proc.returncode == 0, output(proc)
    assert json.loads((run_dir / "history.json").read_text())["epoch"] == [1, 2, 3, 4]
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["overrides"][-1] == "fit.epochs=4"
    assert env["resumes"][-1]["changes"] == ["fit.epochs: 3 -> 4"]
    from specc.spec import load_spec

    resolved, errors = load_spec(str(run_dir / "resolved.yaml"))
    assert not errors and resolved.fit.epochs == 4


def test_resume_refuses_fewer_epochs_than_started(interrupted, tmp_path):
    run_dir = copy_run(interrupted, tmp_path)  # stopped in epoch 2
    proc = run("train", "--resume", run_dir, "--set", "fit.epochs=1", cwd=tmp_path)
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    assert "fit.epochs=1" in proc.stderr and "at least 2" in proc.stderr, output(proc)


# --- 5. SIGTERM --------------------------------------------------------------------------------------------


def test_sigterm_checkpoints_like_ctrl_c(project, tmp_path):
    proc = start("train", project / "tiny.yaml", "--out", tmp_path, *LONG, cwd=project)
    try:
        wait_for(proc, "Epoch 2/")
    finally:
        proc.send_signal(signal.SIGTERM)
        stopped = finish(proc)
    assert stopped.returncode == 130, output(stopped)
    no_internal_error(stopped)
    assert "Terminated (SIGTERM)" in stopped.stderr, output(stopped)
    run_dir = resume_dir(stopped)
    loop = checkpoint_loop(run_dir)
    assert loop["epoch"] >= 1
    no_tmp_files(run_dir)
    # finish the epoch it stopped in, not the 100000 it was started with
    resumed = run("train", "--resume", run_dir, "--set", f"fit.epochs={loop['epoch'] + 1}", cwd=project)
    assert resumed.returncode == 0, output(resumed)
    assert (run_dir / "weights.final.npz").is_file()


# --- 6. memory ---------------------------------------------------------------------------------------------


def huge_spec(path: Path, layer: str, input_shape: str, batch: int = 16) -> Path:
    path.write_text(TINY_SPEC.replace("input: [4]", f"input: {input_shape}")
                    .replace("- {type: Dense, units: 8, activation: relu}", layer)
                    .replace("batch_size: 16", f"batch_size: {batch}"))
    return path


def test_model_too_big_for_any_memory_is_refused_before_training(project, tmp_path):
    layer = "- {type: Dense, units: 10000000, name: wide}"
    spec = huge_spec(project / "huge.yaml", layer, "[100000]")
    proc = run("train", spec, "--out", tmp_path, cwd=project)
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    text = spec.read_text()
    line = text[: text.index(layer)].count("\n") + 1
    assert f"{spec}:{line}:7: error: model.layers[0]: training this model needs about" in proc.stderr, output(proc)
    assert "The largest layer is wide (Dense" in proc.stderr and "no batch size fits" in proc.stderr, output(proc)
    assert not tmp_path.joinpath("tiny").exists()


def test_refusal_names_the_largest_batch_that_fits(project, tmp_path):
    from specc.spec import load_spec
    from specc.summary import estimates

    spec = huge_spec(project / "big_batch.yaml", "- {type: Dense, units: 4000, name: wide}", "[1000]", batch=100000)
    graph = load_spec(str(spec))[0].graph
    available = 2**30

    def patch(mp):
        from specc.train import session

        mp.setattr(session, "available_memory", lambda: (available, "available (patched)"))

    proc = in_process("train", spec, "--out", tmp_path, *ARGS, patches=[patch])
    assert proc.returncode == 1, output(proc)
    m = re.search(r"the largest batch size that fits is ([\d,]+) \(--set fit.batch_size=(\d+)\)", proc.stderr)
    assert m, output(proc)
    fits = int(m.group(2))
    assert estimates(graph, fits)["training_bytes"] <= available < estimates(graph, fits + 1)["training_bytes"]
    assert "The largest layer is wide (Dense" in proc.stderr, output(proc)


def test_memory_error_during_training_keeps_the_checkpoint(project, tmp_path):
    def patch(mp):
        from specc.train.fit import Trainer

        real = Trainer.train_step

        def train_step(self, *args):
            if self.loop_state["epoch"] == 1:  # in epoch 2
                raise MemoryError
            return real(self, *args)

        mp.setattr(Trainer, "train_step", train_step)

    proc = in_process("train", project / "tiny.yaml", "--out", tmp_path, *ARGS, patches=[patch])
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    assert "out of memory" in proc.stderr and "The last complete checkpoint (the end of epoch 1)" in proc.stderr, \
        output(proc)
    assert checkpoint_loop(resume_dir(proc)) == {"epoch": 1, "step": 0}


def test_memory_error_elsewhere_is_reported_as_such(project, reference):
    def patch(mp):
        import specc.engine

        def engine(*args, **kwargs):
            raise MemoryError

        mp.setattr(specc.engine, "Engine", engine)

    proc = in_process("evaluate", project / "tiny.yaml", "--weights", reference, patches=[patch])
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    assert "out of memory" in proc.stderr, output(proc)


# --- 7. SPECC_THREADS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0", "-2"])
def test_bad_specc_threads_is_a_usage_error(project, tmp_path, value):
    env = dict(ENV, SPECC_THREADS=value)
    proc = subprocess.run([sys.executable, "-m", "specc.cli", "train", str(project / "tiny.yaml"), "--out",
                           str(tmp_path)], capture_output=True, text=True, cwd=project, env=env, timeout=180)
    assert proc.returncode == 2, output(proc)
    no_internal_error(proc)
    assert f"SPECC_THREADS={value!r}" in proc.stderr, output(proc)
    assert not (tmp_path / "tiny").exists()


def test_weights_stream_to_their_file_without_a_copy_in_memory(tmp_path):
    """A checkpoint is the weights and two optimizer moments: a copy of it in memory at every epoch end
    would double what a big model needs, past what the memory check allowed."""
    import tracemalloc

    from specc.engine import Engine
    from specc.spec import load_spec_text
    from specc.train.run import save_weights

    spec, errors = load_spec_text("specc: 1\nmodel:\n  input: [1000]\n  layers:\n    - {type: Dense, units: 8000}\n",
                                  "wide.yaml")
    assert not errors
    engine = Engine(spec.graph)
    tracemalloc.start()
    try:
        save_weights(str(tmp_path / "w.npz"), engine)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < engine.params.nbytes, (peak, engine.params.nbytes)
    assert npz(tmp_path / "w.npz")["dense/kernel"].shape == (1000, 8000)
