"""`specc train` / `evaluate` / `predict` end to end, through the real CLI in subprocesses.

Exit codes (0 ok, 1 invalid spec or data, 2 usage, 130 Ctrl-C), the run directory and its files,
never-overwrite and atomic writes, determinism, resume == uninterrupted, --set overrides, divergence,
data/model mismatches reported at the spec's file:line before the first step, frozen weights.

Every subprocess runs `python -m specc.cli` with cwd=tmp and --out under tmp. Runs that only check
mechanics use a few epochs via --set; the cheap failing invocations run two at a time in one fixture.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "specs"
MLP = SPECS / "digits_mlp.yaml"
CNN = SPECS / "digits_cnn.yaml"
FROZEN = SPECS / "transfer_frozen_base.yaml"
ERROR_AT = re.compile(r"^(?P<file>\S+?):(?P<line>\d+):(?P<col>\d+): error: (?P<rest>.*)$", re.M)
ENV = dict(os.environ, PYTHONIOENCODING="utf-8", COLUMNS="100", NO_COLOR="1")


def cmd(*args) -> list[str]:
    return [sys.executable, "-m", "specc.cli", *map(str, args)]


def run(*args, cwd, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run(cmd(*args), capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout)


def start(*args, cwd) -> subprocess.Popen:
    return subprocess.Popen(cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env=ENV)


def finish(proc: subprocess.Popen, timeout=180) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def output(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def no_traceback(proc) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, output(proc)


def run_dirs(out: Path, name: str) -> list[Path]:
    base = out / name
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def saved_dir(proc) -> Path:
    m = re.search(r"^Run saved to (.+)$", proc.stdout, re.M)
    assert m, output(proc)
    return Path(m.group(1))


def line_of(text: str, needle: str) -> int:
    """1-based line of the first occurrence of needle."""
    return text[: text.index(needle)].count("\n") + 1


def npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as a:
        return {k: a[k] for k in a.files}


def assert_same_arrays(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), f"{k} differs (max |diff| {np.max(np.abs(a[k] - b[k]))})"


def no_tmp_files(root: Path) -> None:
    leftovers = [str(p) for p in root.rglob("*") if p.name.startswith(".tmp")]
    assert not leftovers, leftovers


def interrupt_at(proc: subprocess.Popen, marker: str = "Epoch 2/", timeout: float = 120) -> tuple[str, str]:
    """Read stdout until `marker` appears, send one SIGINT, then collect the rest. A watchdog kills the
    child (only it) if it hangs."""
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(marker):
                proc.send_signal(signal.SIGINT)
                break
        else:
            pytest.fail(f"the run ended before printing {marker!r}:\n" + "".join(seen) + proc.stderr.read())
        out, err = proc.communicate(timeout=timeout)
    finally:
        watchdog.cancel()
    return "".join(seen) + out, err


KERAS_ORDER_MLP = ["dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias", "digit/kernel", "digit/bias"]
SHAPES_MLP = [(64, 128), (128,), (128, 64), (64,), (64, 10), (10,)]


# --- small data files and specs --------------------------------------------------------------------------

TINY_SPEC = """\
specc: 1
name: tiny
seed: 0
model:
  input: [4]
  layers:
    - {type: Dense, units: 8, activation: relu}
    - {type: Dense, units: 3, activation: softmax, name: out}
data:
  source:
    path: tiny.npz
  normalize: true
compile:
  optimizer: {type: adam, learning_rate: 0.01}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
fit:
  batch_size: 16
  epochs: 3
"""


def write_tiny_data(folder: Path, samples: int = 300) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 4)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((4, 3)), axis=1).astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "tiny.npz", x=x, y=y)
    bad = x.copy()
    bad[7, 2] = np.nan
    np.savez(folder / "with_nan.npz", x=bad, y=y)
    inf = x.copy()
    inf[3, 0] = np.inf
    np.savez(folder / "with_inf.npz", x=inf, y=y)
    lines = ["a,b,c,d,species"] + [",".join(f"{v:.5f}" for v in row) + f",{c}" for row, c in zip(x, y, strict=True)]
    (folder / "tiny.csv").write_text("\n".join(lines) + "\n")
    ten = (np.arange(samples) % 10).astype(np.int64)  # a 10-class dataset
    np.savez(folder / "ten.npz", x=x, y=ten)


def digits_spec(units=10, activation="softmax", loss="sparse_categorical_crossentropy", input_shape="[64]"):
    return f"""\
specc: 1
name: mismatch
seed: 0
model:
  input: {input_shape}
  layers:
    - {{type: Dense, units: 16, activation: relu}}
    - {{type: Dense, units: {units}, activation: {activation}, name: out}}
data:
  source: digits
compile:
  optimizer: adam
  loss: {loss}
fit:
  epochs: 1
"""


def file_spec(source_lines: str, extra_fit: str = "", loss="sparse_categorical_crossentropy", units=3,
              activation="softmax") -> str:
    return f"""\
specc: 1
name: mismatch
seed: 0
model:
  input: [4]
  layers:
    - {{type: Dense, units: {units}, activation: {activation}, name: out}}
data:
  source:
{source_lines}
compile:
  optimizer: adam
  loss: {loss}
fit:
  epochs: 1
{extra_fit}"""


# Each case: spec text, the needle whose line the error must point at (None: only a file:line), words
# the message must contain. All must exit 1 before the first step.
MISMATCHES = {
    "feature_shape_vs_input": (digits_spec(input_shape="[10]"), "input: [10]", ["(10,)", "64"]),
    "classes_vs_units": (digits_spec(units=5), "loss:", ["0..9", "5 units"]),
    "categorical_ce_with_integer_labels": (file_spec("    path: ten.npz", units=10, loss="categorical_crossentropy"),
                                           "loss:", ["one-hot", "sparse_categorical_crossentropy"]),
    "binary_ce_on_ten_classes": (file_spec("    path: ten.npz", units=1, activation="sigmoid",
                                           loss="binary_crossentropy"), "loss:", ["0/1", "0..9"]),
    "binary_ce_ten_units_on_ten_classes": (file_spec("    path: ten.npz", units=10, activation="sigmoid",
                                                     loss="binary_crossentropy"),
                                           "loss:", ["one output unit", "sparse_categorical_crossentropy"]),
    "nan_in_npz": (file_spec("    path: with_nan.npz"), None, ["NaN", "sample 7"]),
    "inf_in_npz": (file_spec("    path: with_inf.npz"), None, ["NaN or infinite", "sample 3"]),
    "missing_npz_file": (file_spec("    path: missing.npz"), "path: missing.npz", ["not found", "missing.npz"]),
    "missing_array_name": (file_spec("    path: tiny.npz\n    x: pixels"), "x: pixels", ["'pixels'", "x, y"]),
    "missing_csv_target": (file_spec("    path: tiny.csv\n    target: label"), "target: label",
                           ["'label'", "species"]),
    "early_stopping_val_loss_without_validation": (
        file_spec("    path: tiny.npz",
                  "  callbacks:\n    - type: EarlyStopping\n      monitor: val_loss\n      patience: 2\n"),
        "monitor: val_loss", ["validation_split", "val_loss"]),
    "reduce_lr_default_monitor_without_validation": (
        file_spec("    path: tiny.npz", "  callbacks:\n    - {type: ReduceLROnPlateau, patience: 2}\n"),
        "{type: ReduceLROnPlateau", ["validation_split", "val_loss"]),
}

INVALID_SPEC = """\
specc: 1
model:
  input: [4]
  layers:
    - {type: Dense, units: -3}
compile: {optimizer: adam, loss: mse}
"""

DIVERGING = """\
specc: 1
name: diverging
seed: 0
model:
  input: [8]
  layers:
    - {type: Dense, units: 16, activation: relu}
    - {type: Dense, units: 1}
data:
  source: synthetic
  samples: 256
compile:
  optimizer: {type: sgd, learning_rate: 1000000.0}
  loss: mse
fit:
  batch_size: 32
  epochs: 3
"""


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Every cheap failing invocation, run two at a time: name -> (CompletedProcess, spec path, text)."""
    root = tmp_path_factory.mktemp("quick")
    write_tiny_data(root)
    (root / "not_a_run").mkdir()
    jobs = {}
    for name, (text, _, _) in MISMATCHES.items():
        path = root / f"{name}.yaml"
        path.write_text(text)
        jobs[name] = (["train", path, "--out", root / "out" / name], path, text)
    (root / "invalid.yaml").write_text(INVALID_SPEC)
    (root / "diverging.yaml").write_text(DIVERGING)
    jobs.update({
        "invalid_spec": (["train", root / "invalid.yaml", "--out", root / "out" / "invalid"], root / "invalid.yaml",
                         INVALID_SPEC),
        "missing_spec": (["train", root / "nope.yaml", "--out", root / "out" / "missing"], None, None),
        "resume_not_a_run": (["train", "--resume", root / "not_a_run"], None, None),
        "threads_zero": (["train", MLP, "--threads", "0", "--out", root / "out" / "t0"], None, None),
        "set_negative_epochs": (["train", MLP, "--set", "fit.epochs=-1", "--out", root / "out" / "s1"], None, None),
        "set_unknown_key": (["train", MLP, "--set", "fit.epochz=3", "--out", root / "out" / "s2"], None, None),
        "diverging": (["train", root / "diverging.yaml", "--out", root / "out" / "diverging"],
                      root / "diverging.yaml", DIVERGING),
    })
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run, *args, cwd=root) for name, (args, _, _) in jobs.items()}
        results = {name: f.result() for name, f in futures.items()}
    return {name: (results[name], path, text, root) for name, (_, path, text) in jobs.items()}


# --- exit codes -----------------------------------------------------------------------------------------


def test_invalid_spec_exits_1_with_file_line(quick):
    proc, path, text, _ = quick["invalid_spec"]
    assert proc.returncode == 1, output(proc)
    no_traceback(proc)
    m = ERROR_AT.search(proc.stderr + proc.stdout)
    assert m and m.group("file") == str(path) and int(m.group("line")) == line_of(text, "units: -3"), output(proc)
    assert "units" in m.group("rest")


@pytest.mark.parametrize("case, needle", [
    ("missing_spec", "nope.yaml"),
    ("resume_not_a_run", "checkpoint"),
    ("threads_zero", "--threads"),
])
def test_usage_errors_exit_2(quick, case, needle):
    proc = quick[case][0]
    assert proc.returncode == 2, output(proc)
    assert needle in proc.stderr, output(proc)
    no_traceback(proc)


def test_usage_errors_create_no_run_directory(quick):
    root = quick["missing_spec"][3]
    for case in ("missing_spec", "threads_zero"):
        out = root / "out" / {"missing_spec": "missing", "threads_zero": "t0"}[case]
        assert not out.exists() or not any(out.rglob("*.json")), case


# --- --set ----------------------------------------------------------------------------------------------


def test_invalid_override_exits_1_naming_the_key(quick):
    proc = quick["set_negative_epochs"][0]
    assert proc.returncode == 1, output(proc)
    no_traceback(proc)
    # the error points at the --set argument that made it, not at the spec's line
    assert "--set fit.epochs=-1: error: fit.epochs: must be a positive integer, got -1" in proc.stderr, output(proc)
    assert "Epoch 1/" not in proc.stdout


def test_unknown_override_key_is_reported(quick):
    proc = quick["set_unknown_key"][0]
    assert proc.returncode == 1, output(proc)
    no_traceback(proc)
    assert "epochz" in proc.stderr and "epochs" in proc.stderr, output(proc)


def test_override_accepts_the_number_syntax_a_spec_file_accepts():
    """`learning_rate: 1e-3` is valid in a spec file, so `--set compile.optimizer.learning_rate=1e-3` should be."""
    from specc.spec import load_spec_text
    from specc.train.session import apply_overrides

    text = TINY_SPEC.replace("learning_rate: 0.01", "learning_rate: 1e-3")
    spec, errors = load_spec_text(text, "tiny.yaml")
    assert not errors and spec.compile.optimizer.learning_rate == pytest.approx(1e-3)
    spec, errors = apply_overrides(TINY_SPEC, ["fit.epochs=7", "compile.optimizer.learning_rate=0.5"], "tiny.yaml")
    assert not errors and spec.fit.epochs == 7 and spec.compile.optimizer.learning_rate == 0.5


def test_override_with_exponent_number():
    from specc.train.session import apply_overrides

    spec, errors = apply_overrides(TINY_SPEC, ["compile.optimizer.learning_rate=1e-3"], "tiny.yaml")
    assert not errors, errors
    assert spec.compile.optimizer.learning_rate == pytest.approx(1e-3)


# --- divergence -----------------------------------------------------------------------------------------


def test_diverging_loss_exits_1_naming_epoch_and_step(quick):
    proc, _, _, root = quick["diverging"]
    assert proc.returncode == 1, output(proc)
    no_traceback(proc)
    m = re.search(r"loss became (nan|inf|-inf) at epoch (\d+), step (\d+)", proc.stderr)
    assert m, output(proc)
    assert int(m.group(2)) == 1 and int(m.group(3)) >= 1
    assert "learning rate" in proc.stderr and "normalize" in proc.stderr, output(proc)
    assert not any((root / "out" / "diverging").rglob("weights.final.npz"))


# --- data / model mismatches ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_data_mismatch_exits_1_at_spec_line_before_training(quick, case):
    proc, path, text, root = quick[case]
    _, needle, words = MISMATCHES[case]
    assert proc.returncode == 1, output(proc)
    no_traceback(proc)
    m = ERROR_AT.search(proc.stderr)
    assert m, output(proc)
    assert m.group("file") == str(path), output(proc)
    line = int(m.group("line"))
    if needle is not None:
        assert line == line_of(text, needle), output(proc)
    else:  # NaN/inf: somewhere in the data section
        assert line_of(text, "data:") <= line < line_of(text, "compile:"), output(proc)
    for w in words:
        assert w in m.group("rest"), output(proc)
    # before the first step: no epoch started, no run directory
    assert "Epoch 1/" not in proc.stdout
    assert not list((root / "out" / case).rglob("environment.json"))


# --- a trained run: two identical runs started together --------------------------------------------------


@pytest.fixture(scope="module")
def mlp_runs(tmp_path_factory):
    """digits_mlp for 2 epochs with --threads 1, twice, started at the same moment into the same --out."""
    root = tmp_path_factory.mktemp("mlp")
    out = root / "runs"
    procs = [start("train", MLP, "--out", out, "--threads", "1", "--set", "fit.epochs=2", cwd=root)
             for _ in range(2)]
    results = [finish(p) for p in procs]
    for r in results:
        assert r.returncode == 0, output(r)
    dirs = [saved_dir(r) for r in results]
    dirs = [d if d.is_absolute() else root / d for d in dirs]
    return root, out, results, dirs


def test_two_runs_get_two_directories(mlp_runs):
    _, out, _, dirs = mlp_runs
    assert dirs[0] != dirs[1]
    assert sorted(dirs) == run_dirs(out, "digits_mlp")


def test_run_directory_contents(mlp_runs):
    run_dir = mlp_runs[3][0]
    names = {p.name for p in run_dir.iterdir()}
    assert {"spec.yaml", "resolved.yaml", "environment.json", "history.csv", "history.json", "weights.final.npz",
            "weights.best.npz", "test_metrics.json", "curves.png", "normalization.json"} <= names, names
    assert "checkpoint" not in names  # a finished run has nothing to resume
    no_tmp_files(run_dir)


def test_spec_copy_is_byte_identical(mlp_runs):
    for d in mlp_runs[3]:
        assert (d / "spec.yaml").read_bytes() == MLP.read_bytes()


def test_resolved_spec_validates_and_has_every_default(mlp_runs):
    root, _, _, dirs = mlp_runs
    resolved = dirs[0] / "resolved.yaml"
    proc = run("validate", resolved, cwd=root)
    assert proc.returncode == 0, output(proc)
    r = yaml.safe_load(resolved.read_text())
    assert r["specc"] == 1 and r["name"] == "digits_mlp" and r["seed"] == 0
    assert r["model"]["input"] == {"shape": [64], "name": "pixels"}
    layers = r["model"]["layers"]
    assert [layer["name"] for layer in layers] == ["dense", "dropout", "dense_1", "digit"]
    for layer in layers:
        assert layer["trainable"] is True
    dense_keys = {"type", "name", "trainable", "units", "activation", "use_bias", "kernel_initializer",
                  "bias_initializer"}
    assert dense_keys <= set(layers[0]) and layers[0]["use_bias"] is True
    assert layers[0]["kernel_initializer"] == "glorot_uniform" and layers[0]["bias_initializer"] == "zeros"
    assert {"rate", "noise_shape", "seed"} <= set(layers[1])
    assert r["data"]["test_split"] == 0.2 and r["data"]["normalize"] is True
    fit = r["fit"]
    assert fit["epochs"] == 2  # the --set override
    assert fit["batch_size"] == 32 and fit["shuffle"] is True and fit["validation_split"] == 0.1
    assert fit["verbose"] == "auto"
    es = fit["callbacks"][0]
    assert es["type"] == "EarlyStopping"
    assert es["min_delta"] == 0.0 and es["mode"] == "auto" and es["start_from_epoch"] == 0
    assert es["patience"] == 5 and es["restore_best_weights"] is True
    assert r["compile"]["optimizer"]["type"] == "adam" and r["compile"]["optimizer"]["learning_rate"] == 0.001
    assert r["compile"]["metrics"] == ["accuracy"]


def test_resolved_spec_fills_optimizer_defaults():
    from specc.spec import load_spec
    from specc.spec.resolve import resolved_dict

    spec, errors = load_spec(str(FROZEN))  # `optimizer: adam`
    assert not errors
    opt = resolved_dict(spec)["compile"]["optimizer"]
    assert opt.get("learning_rate") == 0.001
    assert opt.get("beta_1") == 0.9 and opt.get("beta_2") == 0.999
    assert opt.get("epsilon") == 1e-7 and opt.get("amsgrad") is False


def test_resolved_spec_builds_the_same_model(mlp_runs):
    from specc.engine import Engine
    from specc.spec import load_spec
    from specc.train.run import weight_keys

    spec, errors = load_spec(str(mlp_runs[3][0] / "resolved.yaml"))
    assert not errors
    assert weight_keys(Engine(spec.graph)) == KERAS_ORDER_MLP
    assert spec.fit.epochs == 2 and spec.seed == 0


def test_environment_json(mlp_runs):
    env = json.loads((mlp_runs[3][0] / "environment.json").read_text())
    for key in ("specc", "python", "numpy", "numba", "platform", "command", "started"):
        assert env.get(key), key
    assert env["numpy"] == np.__version__
    assert env["seed"] == 0 and env["threads"] == 1
    assert env["overrides"] == ["fit.epochs=2"]
    assert env["spec_path"] == str(MLP)


def test_history_has_one_row_per_epoch(mlp_runs):
    run_dir = mlp_runs[3][0]
    h = json.loads((run_dir / "history.json").read_text())
    assert h["epoch"] == [1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(h[key]) == 2 and all(np.isfinite(h[key])), key
    rows = (run_dir / "history.csv").read_text().strip().splitlines()
    assert rows[0].split(",") == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert len(rows) == 3
    for row, epoch in zip(rows[1:], (1, 2), strict=True):
        cells = row.split(",")
        assert int(cells[0]) == epoch
        assert float(cells[1]) == pytest.approx(h["loss"][epoch - 1], rel=1e-12)


def test_weights_are_keyed_layer_slash_weight_in_keras_order(mlp_runs):
    run_dir = mlp_runs[3][0]
    final, best = npz(run_dir / "weights.final.npz"), npz(run_dir / "weights.best.npz")
    for arrays in (final, best):
        assert list(arrays) == KERAS_ORDER_MLP
        assert [a.shape for a in arrays.values()] == SHAPES_MLP
        assert all(a.dtype == np.float32 and np.all(np.isfinite(a)) for a in arrays.values())
    # EarlyStopping(val_loss, restore_best_weights) and weights.best watch the same value: same weights
    assert_same_arrays(final, best)


def test_test_metrics(mlp_runs):
    m = json.loads((mlp_runs[3][0] / "test_metrics.json").read_text())
    assert m["samples"] == 359  # 20% of digits' 1797, stratified
    assert 0 < m["loss"] < 5 and 0.5 < m["accuracy"] <= 1


def test_curves_png_is_a_valid_png(mlp_runs):
    data = (mlp_runs[3][0] / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR" and data.rstrip(b"\x00")[-8:-4] == b"IEND"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100
    PIL = pytest.importorskip("PIL.Image")
    with PIL.open(io.BytesIO(data)) as img:
        img.verify()


def test_same_seed_and_one_thread_is_deterministic(mlp_runs):
    a, b = mlp_runs[3]
    assert_same_arrays(npz(a / "weights.final.npz"), npz(b / "weights.final.npz"))
    assert_same_arrays(npz(a / "weights.best.npz"), npz(b / "weights.best.npz"))
    assert json.loads((a / "history.json").read_text()) == json.loads((b / "history.json").read_text())
    assert json.loads((a / "test_metrics.json").read_text()) == json.loads((b / "test_metrics.json").read_text())


def test_progress_output(mlp_runs):
    proc = mlp_runs[2][0]
    assert "Epoch 1/2" in proc.stdout and "Epoch 2/2" in proc.stdout
    assert "Test: " in proc.stdout
    no_traceback(proc)


# --- never overwrite, atomic writes ---------------------------------------------------------------------


def test_new_run_dir_in_the_same_second(tmp_path, monkeypatch):
    import datetime as real

    from specc.train import run as run_mod

    class Frozen(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return real.datetime(2030, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(run_mod, "_dt", type("dt", (), {"datetime": Frozen, "timezone": real.timezone}))
    first = run_mod.new_run_dir(str(tmp_path), "m")
    (Path(first) / "keep.txt").write_text("mine")
    made = [first] + [run_mod.new_run_dir(str(tmp_path), "m") for _ in range(3)]
    assert len(set(made)) == 4
    assert [os.path.basename(p) for p in made] == ["20300102-030405", "20300102-030405-1", "20300102-030405-2",
                                                   "20300102-030405-3"]
    assert (Path(first) / "keep.txt").read_text() == "mine"
    assert all(os.listdir(p) == [] for p in made[1:])


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path, monkeypatch):
    from specc.train import run as run_mod

    target = tmp_path / "sub" / "f.json"
    run_mod.atomic_write_json(str(target), {"a": np.float32(1.5), "b": np.arange(2)})
    assert json.loads(target.read_text()) == {"a": 1.5, "b": [0, 1]}
    run_mod.atomic_write_bytes(str(target), b"new")
    assert target.read_bytes() == b"new"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # what open() gives, not mkstemp's private 0600

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(run_mod.os, "replace", failing_replace)
    with pytest.raises(OSError):
        run_mod.atomic_write_bytes(str(target), b"half-written")
    monkeypatch.undo()
    assert target.read_bytes() == b"new"  # the old file survives a failed write
    no_tmp_files(tmp_path)


# --- evaluate / predict ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_inputs(mlp_runs):
    from sklearn.datasets import load_digits

    root = mlp_runs[0]
    x, y = load_digits(return_X_y=True)
    path = root / "digits_input.npz"
    np.savez(path, x=x[:50].astype(np.float32), y=y[:50])
    return path, y[:50]


@pytest.fixture(scope="module")
def served(mlp_runs, digits_inputs):
    """evaluate, predict to .npz (weights from the run directory) and .csv (from the weights file), and a
    predict onto an existing file, two at a time."""
    root, _, _, dirs = mlp_runs
    inp, _ = digits_inputs
    existing = root / "existing.csv"
    existing.write_text("precious\n")
    jobs = {
        "evaluate": ("evaluate", MLP, "--weights", dirs[0], "--format", "json"),
        "npz": ("predict", MLP, "--weights", dirs[0], "--input", inp, "--out", root / "pred.npz"),
        "csv": ("predict", MLP, "--weights", dirs[0] / "weights.final.npz", "--input", inp, "--out",
                root / "pred.csv"),
        "overwrite": ("predict", MLP, "--weights", dirs[0], "--input", inp, "--out", existing),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(run, *args, cwd=root) for k, args in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


def test_evaluate_reproduces_test_metrics(mlp_runs, served):
    proc = served["evaluate"]
    assert proc.returncode == 0, output(proc)
    got = json.loads(proc.stdout)
    want = json.loads((mlp_runs[3][0] / "test_metrics.json").read_text())
    assert got["samples"] == want["samples"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-9)


def test_predict_npz_and_csv(mlp_runs, digits_inputs, served):
    root = mlp_runs[0]
    _, labels = digits_inputs
    for key in ("npz", "csv"):
        assert served[key].returncode == 0, output(served[key])
        assert "50 samples" in served[key].stdout
    arrays = npz(root / "pred.npz")
    assert list(arrays) == ["digit_probabilities", "digit_label"]
    probs, label = arrays["digit_probabilities"], arrays["digit_label"]
    assert probs.shape == (50, 10) and label.shape == (50,)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(label, probs.argmax(axis=1))
    assert np.mean(label == labels) > 0.7  # the run's normalisation is applied to the raw pixels

    lines = (root / "pred.csv").read_text().strip().splitlines()
    assert lines[0].split(",") == [f"digit_probabilities_{j}" for j in range(10)] + ["digit_label"]
    table = np.array([[float(v) for v in row.split(",")] for row in lines[1:]])
    assert table.shape == (50, 11)
    assert np.allclose(table[:, :10], probs, atol=1e-6)
    assert np.array_equal(table[:, 10].astype(int), label)
    no_tmp_files(root)


def test_predict_refuses_to_overwrite(mlp_runs, served):
    proc = served["overwrite"]
    target = mlp_runs[0] / "existing.csv"
    assert proc.returncode == 2, output(proc)
    assert "exists" in proc.stderr and str(target) in proc.stderr
    no_traceback(proc)
    assert target.read_text() == "precious\n"


# --- Ctrl-C and --resume ---------------------------------------------------------------------------------


def test_interrupt_then_resume_equals_uninterrupted(tmp_path):
    args = ("--threads", "1", "--set", "fit.epochs=3")
    reference = start("train", CNN, "--out", tmp_path / "whole", *args, cwd=tmp_path)
    proc = start("train", CNN, "--out", tmp_path / "parts", *args, cwd=tmp_path)
    out, err = interrupt_at(proc, "Epoch 2/")
    assert proc.returncode == 130, f"{out}\n{err}"
    assert "Traceback" not in err
    m = re.search(r"Resume with: specc train --resume (\S+)", err)
    assert m, err
    run_dir = Path(m.group(1))
    run_dir = run_dir if run_dir.is_absolute() else tmp_path / run_dir
    assert (run_dir / "checkpoint" / "state.json").is_file()
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert (run_dir / "checkpoint" / state["arrays"]).is_file()  # the arrays file this state names
    assert not (run_dir / "weights.final.npz").exists()
    assert json.loads((run_dir / "history.json").read_text())["epoch"] == [1]  # the completed epoch
    no_tmp_files(run_dir)

    resumed = run("train", "--resume", run_dir, cwd=tmp_path)
    assert resumed.returncode == 0, output(resumed)
    assert "Resuming" in resumed.stdout
    assert not (run_dir / "checkpoint").exists()
    whole = finish(reference)
    assert whole.returncode == 0, output(whole)
    whole_dir = run_dirs(tmp_path / "whole", "digits_cnn")[0]

    assert_same_arrays(npz(run_dir / "weights.final.npz"), npz(whole_dir / "weights.final.npz"))
    assert json.loads((run_dir / "history.json").read_text()) == json.loads((whole_dir / "history.json").read_text())
    assert run_dirs(tmp_path / "parts", "digits_cnn") == [run_dir]  # resumed in place, no new directory


def copy_run(run_dir: Path, dest: Path) -> Path:
    """A private copy of an interrupted run, so each test resumes its own."""
    import shutil

    target = dest / "copy" / run_dir.name
    shutil.copytree(run_dir, target)
    return target


@pytest.fixture(scope="module")
def interrupted_es(tmp_path_factory):
    """A tiny run whose EarlyStopping best epoch is the first, interrupted in epoch 2, and the same run
    uninterrupted. Data sits next to the spec and is named by a relative path."""
    root = tmp_path_factory.mktemp("es")
    write_tiny_data(root / "project")
    spec_text = TINY_SPEC.replace("  epochs: 3\n", "  epochs: 3\n  callbacks:\n    - {type: EarlyStopping, "
                                  "monitor: loss, min_delta: 100.0, patience: 10, restore_best_weights: true}\n")
    spec = root / "project" / "tiny.yaml"
    spec.write_text(spec_text)
    args = ("--threads", "1", "--set", "fit.batch_size=1")
    reference = start("train", spec, "--out", root / "whole", *args, cwd=root)
    proc = start("train", spec, "--out", root / "parts", *args, cwd=root)
    out, err = interrupt_at(proc, "Epoch 2/")
    whole = finish(reference)
    return root, spec, proc.returncode, out, err, whole


def test_resume_finds_data_relative_to_the_original_spec(interrupted_es, tmp_path):
    root, _, code, out, err, _ = interrupted_es
    assert code == 130, f"{out}\n{err}"
    run_dir = copy_run(run_dirs(root / "parts", "tiny")[0], tmp_path)
    resumed = run("train", "--resume", run_dir, cwd=root)
    assert resumed.returncode == 0, output(resumed)


def test_resume_keeps_early_stopping_best_weights(interrupted_es, tmp_path):
    """Resume with the data path made absolute (working around the relative-path bug)."""
    root, spec, code, out, err, whole = interrupted_es
    assert code == 130, f"{out}\n{err}"
    assert whole.returncode == 0, output(whole)
    run_dir = copy_run(run_dirs(root / "parts", "tiny")[0], tmp_path)
    env = json.loads((run_dir / "environment.json").read_text())
    data = str(spec.parent / "tiny.npz")
    # --set overrides given at resume are applied on top of the recorded ones
    resumed = run("train", "--resume", run_dir, "--set", f"data.source.path={data}", cwd=root)
    assert resumed.returncode == 0, output(resumed)
    assert env["overrides"] == ["fit.batch_size=1"]
    whole_dir = run_dirs(root / "whole", "tiny")[0]
    assert_same_arrays(npz(run_dir / "weights.final.npz"), npz(whole_dir / "weights.final.npz"))


def test_file_source_run_prints_no_warning(interrupted_es):
    whole = interrupted_es[5]
    assert whole.returncode == 0, output(whole)
    assert "Warning" not in whole.stderr, whole.stderr


# --- frozen base ----------------------------------------------------------------------------------------


def test_frozen_base_changes_only_the_head(tmp_path):
    from specc.engine import Engine
    from specc.spec import load_spec
    from specc.train.run import weight_keys

    proc = run("train", FROZEN, "--out", tmp_path, "--threads", "1", "--set", "fit.epochs=2", "-q", cwd=tmp_path)
    assert proc.returncode == 0, output(proc)
    run_dir = saved_dir(proc) if saved_dir(proc).is_absolute() else tmp_path / saved_dir(proc)
    final = npz(run_dir / "weights.final.npz")
    spec, errors = load_spec(str(FROZEN))
    assert not errors
    engine = Engine(spec.graph)
    engine.initialize(spec.seed)
    initial = dict(zip(weight_keys(engine), engine.get_weights(), strict=True))
    assert list(final) == list(initial)
    frozen = ["dense/kernel", "dense/bias", "batch_normalization/gamma", "batch_normalization/beta",
              "batch_normalization/moving_mean", "batch_normalization/moving_variance", "dense_1/kernel",
              "dense_1/bias"]
    assert list(initial)[: len(frozen)] == frozen
    for k in frozen:  # including the BN statistics: a frozen BN runs in inference mode
        assert np.array_equal(final[k], initial[k]), k
    for k in ("head/kernel", "head/bias"):
        assert not np.allclose(final[k], initial[k]), k

