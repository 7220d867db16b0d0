"""Mutants of every target, and the small trained runs the file faults start from.

A `Mutant` is reproducible from its key `target:seed:index` alone: `make(key, fixtures)` draws everything
from `random.Random(key)`. Its files go in a directory of their own (relative paths only, so no command
writes outside it); `setup` then damages what was copied there.

Targets:
- spec: a mutated spec through `validate` (batched) and `summary` (see specs.py).
- data: data files (.npz, .csv, paths that are not files) for `train`; `--input` files for `evaluate` and
  `predict`; the training settings of a tiny spec (compile, fit, callbacks) for `train`.
- weights: `--weights` files and directories for `evaluate` and `predict`.
- rundir: damaged run directories (an interrupted one, a killed one, a finished one) for `train --resume`,
  `evaluate --weights RUN` and `predict --weights RUN`.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from . import specs as S
from .arrays import damage, npy, npy_header, npz, npz_members, odd_array, odd_csv
from .runner import Outcome, cli_env, run_cli
from .values import hostile

TARGETS = ("spec", "data", "weights", "rundir")
# Seconds before a run counts as a hang: far beyond a tiny run on a loaded machine (train ~2-8 s, evaluate
# and predict ~1-3 s, validate and summary under 1 s); the fixtures' first training may compile kernels.
TIMEOUT = {"validate": 30.0, "summary": 30.0, "train": 120.0, "evaluate": 60.0, "predict": 60.0}
FIXTURE_TIMEOUT = 900.0

# The model every file fault is about: 4 features -> 3 classes, normalised inputs (so runs have
# normalization.json), one small epoch.
BASE_SPEC = """\
specc: 1
name: fuzz_base
seed: 0
model:
  input: [4]
  layers:
    - {type: Dense, units: 5, activation: relu}
    - {type: Dense, units: 3, activation: softmax, name: label}
data:
  source: {path: data.npz}
  test_split: 0.25
  normalize: true
compile:
  optimizer: adam
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
fit:
  batch_size: 4
  epochs: 1
"""
CSV_SPEC = """\
specc: 1
name: fuzz_csv
seed: 0
model:
  input: [3]
  layers:
    - {type: Dense, units: 2, activation: softmax}
data:
  source: {path: table.csv, target: label}
  test_split: 0.25
compile:
  optimizer: sgd
  loss: sparse_categorical_crossentropy
fit:
  batch_size: 4
  epochs: 1
"""
# The interrupted run: the same model on enough synthetic samples (one per step) that an epoch lasts long
# enough to be interrupted; `--set fit.epochs=2` so its environment.json holds an override.
LONG_SPEC = BASE_SPEC.replace("name: fuzz_base", "name: fuzz_long").replace(
    "source: {path: data.npz}", "source: synthetic\n  samples: {samples}\n  classes: 3").replace(
    "batch_size: 4", "batch_size: 1")


def base_arrays(samples: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((samples, 4)).astype(np.float32), "y": rng.integers(0, 3, samples)}


def csv_table(samples: int = 16) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(0)
    rows = [[f"{rng.uniform(-1, 1):.3f}" for _ in range(3)] + [str(rng.randrange(2))] for _ in range(samples)]
    return ["a", "b", "c", "label"], rows


@dataclass
class Mutant:
    key: str  # target:seed:index; make(key) rebuilds the same mutant
    target: str
    description: str
    args: list[str]  # after `specc`; paths relative to the mutant's directory
    files: dict[str, bytes] = field(default_factory=dict)
    base: str | None = None  # a fixture run copied to ./run first: finished, interrupted or killed
    setup: Callable[[Path], None] | None = None  # changes made after the files are written
    needs: tuple[str, ...] = ()  # fixtures referenced by absolute path in args
    env: dict[str, str] = field(default_factory=dict)  # extra environment variables

    @property
    def command(self) -> str:
        return self.args[0]

    def prepare(self, directory: Path, fixtures: Fixtures) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self.base:
            shutil.copytree(fixtures.run(self.base), directory / "run", symlinks=True)
        for name, data in self.files.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if self.setup:
            self.setup(directory)

    def reproduce(self) -> str:
        return f"python -m tests.fuzz --replay {self.key} --keep /tmp/specc-fuzz-{self.key.replace(':', '-')}"


class FixtureError(RuntimeError):
    def __init__(self, what: str, outcome: Outcome | None = None):
        super().__init__(what + (f"\n{outcome.tail(30)}" if outcome else ""))


class Fixtures:
    """Trained runs the file faults start from, made once per fuzzing session under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self._runs: dict[str, Path] = {}

    def base_dir(self) -> Path:
        d = self.root / "base"
        if not d.exists():
            d.mkdir(parents=True)
            (d / "spec.yaml").write_text(BASE_SPEC)
            (d / "data.npz").write_bytes(npz(**base_arrays()))
            (d / "x.npz").write_bytes(npz(**base_arrays(8, seed=1)))
        return d

    def run(self, kind: str) -> Path:
        if kind not in self._runs:
            self._runs[kind] = {"finished": self._finished, "interrupted": self._interrupted,
                                "killed": self._killed}[kind]()
        return self._runs[kind]

    def _finished(self) -> Path:
        d = self.base_dir()
        out = run_cli(["train", "spec.yaml", "--out", "runs", "--quiet", "--threads", "1"], d, FIXTURE_TIMEOUT)
        if out.code != 0 or out.problems:
            raise FixtureError("training the base spec failed", out)
        return self._only_run(d / "runs" / "fuzz_base")

    @staticmethod
    def _only_run(parent: Path) -> Path:
        runs = sorted(p for p in parent.iterdir() if p.is_dir())
        return runs[-1]

    def _interrupted(self) -> Path:
        return self._stopped("interrupted", signal.SIGINT, "Epoch 1/")

    def _killed(self) -> Path:
        return self._stopped("killed", signal.SIGKILL, "Epoch 2/")

    def _stopped(self, name: str, sig: int, marker: str) -> Path:
        """A run stopped by `sig` once `marker` is printed: with SIGINT it checkpoints mid-epoch and exits 130,
        with SIGKILL it keeps the end-of-epoch checkpoint. More samples on each try if it finished first."""
        samples = 20_000
        for _ in range(4):
            d = self.root / f"{name}-{samples}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "spec.yaml").write_text(LONG_SPEC.replace("{samples}", str(samples)))
            argv = [sys.executable, "-m", "specc.cli", "train", "spec.yaml", "--out", "runs", "--threads", "1",
                    "--set", "fit.epochs=2"]
            proc = subprocess.Popen(argv, cwd=d, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, text=True)
            watchdog = threading.Timer(FIXTURE_TIMEOUT, proc.kill)  # only this child, if it never prints
            watchdog.start()
            try:
                for line in proc.stdout:
                    if line.startswith(marker):
                        proc.send_signal(sig)
                        break
                out, err = proc.communicate(timeout=FIXTURE_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise FixtureError(f"the {name} fixture run did not stop") from None
            finally:
                watchdog.cancel()
            runs = d / "runs" / "fuzz_long"
            if runs.is_dir() and any((r / "checkpoint" / "state.json").is_file() for r in runs.iterdir()):
                return self._only_run(runs)
            if proc.returncode not in (0, 130, -signal.SIGKILL):
                raise FixtureError(f"the {name} fixture run failed with exit {proc.returncode}:\n{err[-2000:]}")
            samples *= 4
        raise FixtureError(f"no checkpoint was left by the {name} fixture run")


# --- spec ------------------------------------------------------------------------------------------------


def spec_mutant(key: str, rng: random.Random) -> Mutant:
    name, raw, description = S.spec_mutant(rng)
    return Mutant(key, "spec", description, ["validate", name], {name: raw})


def summary_args(rng: random.Random, name: str) -> list[str]:
    args = ["summary", name]
    for option, p in (("--expand-nested", 0.3), ("--show-trainable", 0.3)):
        if rng.random() < p:
            args.append(option)
    if rng.random() < 0.3:
        args += ["--format", "json"]
    return args


# --- data ------------------------------------------------------------------------------------------------


def _path_fault(rng: random.Random, name: str) -> tuple[Callable[[Path], None], str]:
    """`name` made into something that is not a readable file."""
    kind = rng.choice(["directory", "fifo", "dev-zero", "dev-null", "loop", "dangling", "missing-parent"])

    def setup(d: Path) -> None:
        p = d / name
        if p.exists() or p.is_symlink():
            p.unlink()
        if kind == "directory":
            p.mkdir()
            (p / "x.npy").write_bytes(npy(np.zeros(3)))
        elif kind == "fifo":
            os.mkfifo(p)
        elif kind == "dev-zero":
            p.symlink_to("/dev/zero")
        elif kind == "dev-null":
            p.symlink_to("/dev/null")
        elif kind == "loop":
            p.symlink_to(p.name)
        elif kind == "dangling":
            p.symlink_to("nowhere/file")
        # missing-parent: the file is simply not there
    return setup, f"{name} is {kind}"


def _impossible_member(rng: random.Random, name: str) -> bytes:
    """A .npy member whose header claims an impossible or enormous array (and holds a few bytes)."""
    shape = rng.choice([(10**10,), (2**31, 4), (10**6, 10**6), (-1, 4), (3, 4, 5, 6, 7, 8, 9, 10), (), (2**63,)])
    dtype = rng.choice(["<f4", "<f8", "|O", "<c8", "|u1", "<U10", "bogus", "<f4"])
    return npy_header(shape, dtype, rng.random() < 0.3, b"\0" * rng.choice([0, 16, 96]))


def _odd_npz(rng: random.Random, arrays: dict[str, np.ndarray]) -> tuple[bytes, str]:
    """An .npz standing for `arrays`, with one fault: an odd array, a missing or extra one, damaged bytes, a
    lone .npy, an impossible header."""
    kind = rng.choice(["array", "array", "array", "missing", "extra", "renamed", "damaged", "damaged", "npy",
                       "header", "empty-zip", "compressed", "member-name", "not-npy-member", "pickle"])
    arrays = dict(arrays)
    if kind == "array":
        name = rng.choice(list(arrays))
        arrays[name], what = odd_array(rng, arrays[name])
        return npz(**arrays), f"{name} {what}"
    if kind == "missing":
        name = rng.choice(list(arrays))
        del arrays[name]
        return npz(**arrays), f"no {name}"
    if kind == "extra":
        arrays["extra"] = np.zeros(3)
        return npz(**arrays), "an extra array"
    if kind == "renamed":
        name = rng.choice(list(arrays))
        arrays[name.upper() + " "] = arrays.pop(name)
        return npz(**arrays), f"{name} renamed"
    if kind == "damaged":
        raw, what = damage(rng, npz(compressed=rng.random() < 0.3, **arrays))
        return raw, f"damaged .npz: {what}"
    if kind == "npy":
        return npy(next(iter(arrays.values()))), "a lone .npy"
    if kind == "header":
        name = rng.choice(list(arrays))
        members = {f"{k}.npy": npy(v) for k, v in arrays.items()}
        members[f"{name}.npy"] = _impossible_member(rng, name)
        return npz_members(members), f"{name}: impossible .npy header"
    if kind == "empty-zip":
        return npz_members({}), "an empty zip"
    if kind == "compressed":
        return npz(compressed=True, **arrays), "compressed (valid)"
    if kind == "member-name":
        members = {f"{rng.choice(['../', '/', 'a/b/', ''])}{k}.npy": npy(v) for k, v in arrays.items()}
        return npz_members(members), "member names with folders"
    if kind == "not-npy-member":
        return npz_members({f"{k}.npy": b"not a numpy file" for k in arrays}), "members are not .npy"
    return npz(**{k: np.array([v, None], dtype=object) for k, v in arrays.items()}), "object arrays (pickled)"


def _settings_spec(rng: random.Random) -> tuple[str, str]:
    """The base spec with its data, compile or fit section mutated by the spec operators."""
    data = yaml.safe_load(BASE_SPEC)
    section = rng.choice(["compile", "fit", "data"])
    if section == "fit" and rng.random() < 0.5:
        data["fit"]["callbacks"] = copy.deepcopy(yaml.safe_load(S.EXTRA_SEEDS["callbacks.yaml"])["fit"]["callbacks"])
        data["fit"]["validation_split"] = 0.25
    steps = []
    for _ in range(rng.choice([1, 1, 2])):
        sub = data.get(section)
        if not isinstance(sub, dict):
            data[section] = sub = {}
        op = rng.choice([S.op_replace, S.op_numbers, S.op_swap_type, S.op_delete, S.op_add_key, S.op_rename_key])
        wrapper = {section: sub}
        steps.append(op(rng, wrapper))
        data[section] = wrapper.get(section, {})
    return S.dump(data), f"{section}: " + "; ".join(steps)


SET_KEYS = ["fit.epochs", "fit.batch_size", "model.layers[0].units", "model.layers.0.units", "model.layers[9].units",
            "model.layers[-1].activation", "model.input", "model", "data.source", "data.source.path", "data.test_split",
            "compile.optimizer", "compile.optimizer.learning_rate", "compile.loss", "seed", "name", "specc", "fit",
            "a..b", ".", "", "model.layers[x]", "model.layers[0][1]", "fit.class_weight.0", "x" * 300, "名前",
            "fit.callbacks[0].type", "model.layers[99999999999999999999]"]
SET_VALUES = ["1", "0", "-1", "2147483647", "1e-3", "nan", ".nan", "[8, 8]", "{a: 1}", "relu", "", "null", "~",
              "[[[[1]]]]", "[" * 300, "&a [*a]", "!!python/object/apply:os.getcwd []", "0x" + "f" * 400,
              "9" * 5000, "a: b: c", "'unterminated", "\x01\x7f", "/dev/zero", "../../x", "iris", "synthetic",
              "{path: data.npz}", "{path: /dev/zero.npz}", "- a", "|", "---", "Dense"]


def _options(rng: random.Random) -> tuple[list[str], dict[str, str], str]:
    """Hostile command-line options and environment for `train`; the epochs stay 1 so nothing runs long."""
    args: list[str] = []
    env: dict[str, str] = {}
    kind = rng.choice(["set", "set", "set", "seed", "threads", "env-threads", "out"])
    if kind == "set":
        for _ in range(rng.choice([1, 1, 2])):
            key, value = rng.choice(SET_KEYS), rng.choice(SET_VALUES)
            args += ["--set", rng.choice([f"{key}={value}", f"{key}={value}", key, f"={value}", f"{key}=={value}"])]
    elif kind == "seed":
        args += ["--seed", rng.choice(["-1", "0", "18446744073709551616", "9" * 5000, "1.5", "x", "", "0x10"])]
    elif kind == "threads":
        args += ["--threads", rng.choice(["0", "-1", "1000000", "2147483648", "x", "", "1.0"])]
    elif kind == "env-threads":
        env["SPECC_THREADS"] = rng.choice(["0", "-1", "1000000", "x", "", " 2 ", "1e3", "9" * 100, "\u0663"])
    else:
        args += ["--out", rng.choice(["spec.yaml", "data.npz/sub", "", ".", "out/../out", "a" * 300, "out\nx",
                                      "-", "--quiet"])]
    args += ["--set", "fit.epochs=1"]
    return args, env, " ".join(args[:-2]) + "".join(f" {k}={v!r}" for k, v in env.items())


def data_mutant(key: str, rng: random.Random) -> Mutant:
    kind = rng.choice(["train-npz", "train-npz", "train-npz", "train-csv", "train-csv", "train-path", "settings",
                       "options", "evaluate-input", "predict-input", "predict-out"])
    train = ["train", "spec.yaml", "--out", "out", "--threads", "1", "--set", "fit.epochs=1"] + (
        ["--quiet"] if rng.random() < 0.5 else [])
    spec = BASE_SPEC.encode()
    if kind == "train-npz":
        raw, what = _odd_npz(rng, base_arrays())
        return Mutant(key, "data", f"train, data.npz: {what}", train, {"spec.yaml": spec, "data.npz": raw})
    if kind == "train-csv":
        raw, what = odd_csv(rng, *csv_table())
        return Mutant(key, "data", f"train, table.csv: {what}", train, {"spec.yaml": CSV_SPEC.encode(),
                                                                        "table.csv": raw})
    if kind == "train-path":
        name = rng.choice(["data.npz", "table.csv"])
        setup, what = _path_fault(rng, name)
        text = CSV_SPEC if name == "table.csv" else BASE_SPEC
        return Mutant(key, "data", f"train, {what}", train, {"spec.yaml": text.encode()}, setup=setup)
    if kind == "options":
        options, env, what = _options(rng)
        args = ["train", "spec.yaml", "--quiet"]
        if "--out" not in options:
            args += ["--out", "out"]
        if "--threads" not in options and "SPECC_THREADS" not in env:
            args += ["--threads", "1"]
        args += options
        return Mutant(key, "data", f"train {what}", args,
                      {"spec.yaml": spec, "data.npz": npz(**base_arrays())}, env=env)
    if kind == "settings":
        text, what = _settings_spec(rng)
        return Mutant(key, "data", f"train, spec settings: {what}", train,
                      {"spec.yaml": text.encode(), "data.npz": npz(**base_arrays())})
    files = {"spec.yaml": spec, "data.npz": npz(**base_arrays())}
    arrays = base_arrays(8, seed=1)
    if kind == "predict-out":
        out = rng.choice(["p.npz", "p.csv", "p.txt", "p", "x.npz", "sub/p.npz", "dir", "p.npz/", ".", "",
                          "p" * 300 + ".npz", "名前.csv", "-p.npz"])
        files["x.npz"] = npz(**arrays)
        setup = (lambda d: (d / "dir").mkdir()) if out == "dir" else None
        return Mutant(key, "data", f"predict --out {out!r}", ["predict", "spec.yaml", "--weights", "RUN",
                                                             "--input", "x.npz", "--out", out],
                      files, setup=setup, needs=("finished",))
    command = "evaluate" if kind == "evaluate-input" else "predict"
    if rng.random() < 0.15:
        setup, what = _path_fault(rng, "x.npz")
    else:
        files["x.npz"], what = _odd_npz(rng, arrays if command == "evaluate" or rng.random() < 0.5
                                        else {"x": arrays["x"]})
        setup = None
    args = [command, "spec.yaml", "--weights", "RUN", "--input", "x.npz"]
    if command == "evaluate" and rng.random() < 0.3:
        args += ["--format", "json"]
    return Mutant(key, "data", f"{command} --input x.npz: {what}", args, files, setup=setup, needs=("finished",))


# --- weights ---------------------------------------------------------------------------------------------


def _final_weights(fixtures: Fixtures) -> dict[str, np.ndarray]:
    with np.load(fixtures.run("finished") / "weights.final.npz") as archive:
        return {k: archive[k] for k in archive.files}


def weights_mutant(key: str, rng: random.Random, fixtures: Fixtures) -> Mutant:
    weights = _final_weights(fixtures)
    command = rng.choice(["evaluate", "predict"])
    files = {"spec.yaml": BASE_SPEC.encode(), "data.npz": npz(**base_arrays()), "x.npz": npz(**base_arrays(8, 1))}
    kind = rng.choice(["npz", "npz", "npz", "npz", "keys", "text", "path", "dir", "other-model", "values"])
    target, setup = "w.npz", None
    if kind == "npz":
        files["w.npz"], what = _odd_npz(rng, weights)
    elif kind == "keys":
        keys = list(weights)
        how = rng.choice(["reversed", "renamed", "prefixed", "duplicate-shape", "none"])
        if how == "reversed":
            arrays = dict(reversed(list(weights.items())))
        elif how == "renamed":
            arrays = {k.replace("dense", "dense_9"): v for k, v in weights.items()}
        elif how == "prefixed":
            arrays = {f"model/{k}": v for k, v in weights.items()}
        elif how == "duplicate-shape":
            arrays = {k: weights[keys[0]] for k in keys}
        else:
            arrays = {}
        files["w.npz"], what = npz(**arrays), f"keys {how}"
    elif kind == "text":
        files["w.npz"], what = rng.choice([(BASE_SPEC.encode(), "the spec as weights"),
                                           (b"weights\n", "a text file"), (b"", "an empty file"),
                                           (bytes(rng.randrange(256) for _ in range(512)), "random bytes"),
                                           (b"PK\x05\x06" + bytes(18), "an empty zip directory")])
        if rng.random() < 0.3:
            target = rng.choice(["spec.yaml", "data.npz", "x.npz"])
            what = f"--weights {target}"
    elif kind == "path":
        setup, what = _path_fault(rng, "w.npz")
        if rng.random() < 0.2:
            target, what = rng.choice(["", ".", "nope/w.npz", "w.npz/", "/"]), "an odd --weights path"
    elif kind == "dir":
        how = rng.choice(["empty", "final-is-dir", "final-damaged", "norm-damaged", "norm-odd"])
        run = {"weights.final.npz": npz(**weights),
               "normalization.json": (fixtures.run("finished") / "normalization.json").read_bytes()}
        if how == "empty":
            run = {".keep": b""}
        elif how == "final-damaged":
            run["weights.final.npz"], detail = damage(rng, run["weights.final.npz"])
            how += f" ({detail})"
        elif how == "norm-damaged":
            run["normalization.json"], detail = damage(rng, run["normalization.json"])
            how += f" ({detail})"
        elif how == "norm-odd":
            norm = json.loads(run["normalization.json"])
            run["normalization.json"], detail = _odd_json(rng, norm)
            how += f" ({detail})"
        files.update({f"wdir/{k}": v for k, v in run.items()})
        if how == "final-is-dir":
            files.pop("wdir/weights.final.npz")
            setup = lambda d: (d / "wdir" / "weights.final.npz").mkdir()  # noqa: E731
        target, what = "wdir", f"a run directory: {how}"
    elif kind == "other-model":
        arrays = {"dense/kernel": np.zeros((4, 7), np.float32), "dense/bias": np.zeros(7, np.float32),
                  "label/kernel": np.zeros((7, 3), np.float32), "label/bias": np.zeros(3, np.float32)}
        files["w.npz"], what = npz(**arrays), "weights of another model (5 -> 7 units)"
    else:
        value = rng.choice([np.nan, np.inf, 3e38, 0.0])
        arrays = {k: np.full_like(v, value) for k, v in weights.items()}
        files["w.npz"], what = npz(**arrays), f"every weight {value}"
    args = [command, "spec.yaml", "--weights", target]
    if command == "predict" or rng.random() < 0.4:
        args += ["--input", "x.npz"]
    return Mutant(key, "weights", f"{command} --weights {target}: {what}", args, files, setup=setup)


# --- run directories -------------------------------------------------------------------------------------


def _odd_json(rng: random.Random, data) -> tuple[bytes, str]:
    """`data` with one value replaced (or deleted), as JSON text; mostly a key near the top (what a reader
    looks up by name), sometimes any value."""
    data = copy.deepcopy(data)
    depth = 2 if rng.random() < 0.7 else 10**9
    nodes = [(p, v) for p, v in S._nodes(data) if 0 < len(p) <= depth]
    if not nodes:
        return json.dumps(hostile_json(rng)).encode(), "replaced whole"
    path, old = rng.choice(nodes)
    parent = S._get(data, path[:-1])
    if rng.random() < 0.2:
        del parent[path[-1]]
        return json.dumps(data).encode(), f"delete {S._show(path)}"
    new = hostile_json(rng)
    parent[path[-1]] = new
    return json.dumps(data).encode(), f"{S._show(path)} = {S._short(new)} (was {S._short(old)})"


def hostile_json(rng: random.Random):
    value = hostile(rng)
    if isinstance(value, (dict, list, str, int, float, bool)) or value is None:
        try:
            json.dumps(value)
            return value
        except (TypeError, ValueError):
            pass
    return rng.choice([None, -1, 0, 2**64, 1e308, float("nan"), "x", [], {}, True, [1, 2], {"a": None}])


RUN_FILES = ["checkpoint/state.json", "checkpoint/arrays.npz", "environment.json", "spec.yaml", "resolved.yaml",
             "history.csv", "history.json", "weights.final.npz", "weights.best.npz", "normalization.json",
             "test_metrics.json", ".lock", "checkpoint"]
# Spec edits a resume may meet: allowed ones (epochs, verbose) and changes it must refuse, all small.
SPEC_EDITS = [("fit.epochs", 3), ("fit.epochs", 1), ("fit.epochs", 0), ("fit.verbose", 2), ("fit.batch_size", 8),
              ("model.layers.0.units", 6), ("compile.loss", "mse"), ("seed", 5), ("name", "other"),
              ("data.samples", 10), ("data.source", "iris")]


def _run_fault(rng: random.Random, files: list[str]) -> tuple[Callable[[Path], None], str]:
    name = rng.choice(files)
    kind = rng.choice(["delete", "damage", "damage", "json", "json", "dir", "file", "spec-edit", "arrays",
                       "symlink"])
    if kind == "spec-edit":
        name = "spec.yaml"
    elif kind == "arrays":
        name = rng.choice(["checkpoint/arrays.npz", "weights.final.npz"])
    elif kind == "json":
        name = rng.choice([f for f in files if f.endswith(".json")])
    edit = rng.choice(SPEC_EDITS)
    choice = rng.random()
    draws = random.Random(rng.random())  # the fault's own values, drawn when it is applied

    def setup(d: Path) -> None:
        p = d / "run" / name
        if name == "checkpoint/arrays.npz":  # its name is in state.json (arrays-<epoch>-<step>.npz)
            p = next(iter(sorted((d / "run" / "checkpoint").glob("arrays*.npz"))), p)
        if kind == "delete":
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        elif kind == "damage" and p.is_file():
            p.write_bytes(damage(draws, p.read_bytes())[0])
        elif kind == "json" and p.is_file():
            try:
                data = json.loads(p.read_text())
            except ValueError:
                data = {}
            p.write_bytes(_odd_json(draws, data)[0])
        elif kind == "dir":
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            p.mkdir(parents=True)
        elif kind == "file":
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"not what it should be\n")
        elif kind == "spec-edit" and p.is_file():
            data = yaml.safe_load(p.read_text())
            keys = edit[0].split(".")
            node = data
            for k in keys[:-1]:
                node = node.setdefault(int(k) if k.isdigit() else k, {}) if isinstance(node, dict) else node[int(k)]
            node[keys[-1]] = edit[1]
            p.write_text(S.dump(data))
        elif kind == "arrays" and p.is_file():
            with np.load(p) as archive:
                arrays = {k: archive[k] for k in archive.files}
            p.write_bytes(_odd_npz(draws, arrays)[0])
        elif kind == "symlink":
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.symlink_to(["/dev/zero", p.name, "../nowhere", "/"][int(choice * 4)])

    what = f"{name}: {kind}" + (f" {edit[0]}={edit[1]}" if kind == "spec-edit" else "")
    return setup, what


def rundir_mutant(key: str, rng: random.Random) -> Mutant:
    base = rng.choice(["interrupted", "interrupted", "killed", "finished"])
    faults = [_run_fault(rng, RUN_FILES) for _ in range(rng.choice([1, 1, 1, 2]))]

    def setup(d: Path) -> None:
        for fault, _ in faults:
            fault(d)

    what = "; ".join(w for _, w in faults)
    command = rng.choice(["train"] * 8 + ["evaluate", "predict"] if base != "finished"
                         else ["train", "evaluate", "evaluate", "predict", "predict"])
    spec = rng.choice(["run/spec.yaml", "spec.yaml"])
    files = {"spec.yaml": BASE_SPEC.encode() if base == "finished" else b"", "x.npz": npz(**base_arrays(8, 1)),
             "data.npz": npz(**base_arrays())}
    if base != "finished":  # the interrupted runs' spec (synthetic data) for evaluate/predict
        files["spec.yaml"] = LONG_SPEC.replace("{samples}", "64").encode()
    if command == "train":
        args = ["train", "--resume", "run", "--threads", "1"] + (["--quiet"] if rng.random() < 0.5 else [])
        if rng.random() < 0.15:
            args += rng.choice([["--set", "fit.epochs=3"], ["--set", "fit.batch_size=2"], ["--seed", "5"],
                                ["--set", "fit.verbose=2"]])
    elif command == "evaluate":
        args = ["evaluate", spec, "--weights", "run"] + (["--input", "x.npz"] if rng.random() < 0.5 else [])
    else:
        args = ["predict", spec, "--weights", "run", "--input", "x.npz", "--out", rng.choice(["p.npz", "p.csv"])]
    return Mutant(key, "rundir", f"{base} run, {' '.join(args[:2])}: {what}", args, files, base=base, setup=setup)


# --- by key ----------------------------------------------------------------------------------------------


def make(key: str, fixtures: Fixtures) -> Mutant:
    """The mutant `target:seed:index`, the same every time."""
    target = key.split(":", 1)[0]
    rng = random.Random(key)
    if target == "spec":
        m = spec_mutant(key, rng)
    elif target == "data":
        m = data_mutant(key, rng)
    elif target == "weights":
        m = weights_mutant(key, rng, fixtures)
    elif target == "rundir":
        m = rundir_mutant(key, rng)
    else:
        raise ValueError(f"unknown target {target!r}; targets: {', '.join(TARGETS)}")
    m.args = [str(fixtures.run("finished")) if a == "RUN" else a for a in m.args]
    return m
