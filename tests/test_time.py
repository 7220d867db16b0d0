"""`specc time SPEC`: the per-layer profile of one training step, through the real CLI (text and JSON),
its figures consistent with each other and with `specc summary`, and its errors (positioned, exit 1)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from specc.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "specs"
FAST = ("--batch", "8", "--iters", "2")


def run(*args, env=None, timeout=300):
    env = dict(os.environ, PYTHONIOENCODING="utf-8", COLUMNS="100", NO_COLOR="1", **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "specc.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def time_json(spec, *args) -> dict:
    proc = run("time", spec, *FAST, "--format", "json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def leaves(spec_path) -> list[str]:
    spec, errors = load_spec(str(spec_path))
    assert not errors
    return [leaf.name for node in spec.graph.nodes for leaf in node.leaves()]


def test_json_report_is_consistent():
    spec = SPECS / "digits_cnn.yaml"
    report = time_json(spec)
    assert report["model"] == "digits_cnn" and report["batch_size"] == 8 and report["iterations"] == 2
    assert report["inputs"] == {"input_layer": [8, 8, 8, 1]}
    layers = report["layers"]
    # every layer of the model in exactly one row; the convolution the engine fuses with its pooling is one
    covered = [name for row in layers for name in row["layers"]]
    assert sorted(covered) == sorted(leaves(spec))
    fused = [row for row in layers if len(row["layers"]) == 2]
    assert [row["type"] for row in fused] == ["Conv2D+MaxPooling2D"]
    for row in layers:
        assert row["forward_ms"] > 0 and row["backward_ms"] > 0, row
        assert row["forward_bytes"] > 0 and row["backward_bytes"] > 0, row
        assert 0 < row["share"] < 1
        if row["forward_flops"]:
            ms = row["forward_ms"] + row["backward_ms"]
            assert math.isclose(row["gflops"], (row["forward_flops"] + row["backward_flops"]) / ms / 1e6)
            if report["peak_gflops"]:
                assert math.isclose(row["percent_of_peak"], 100 * row["gflops"] / report["peak_gflops"])
    # forward flops are 2 x the multiply-adds `specc summary` counts, for the whole batch
    summary = json.loads(run("summary", spec, "--format", "json").stdout)
    assert sum(row["forward_flops"] for row in layers) == 2 * 8 * summary["macs_per_sample"]
    parts = sum(row["forward_ms"] + row["backward_ms"] for row in layers) + report["loss"]["ms"] + report["optimizer"]["ms"]
    assert report["total_ms"] >= parts > 0
    assert math.isclose(report["total_ms"], parts + report["overhead"]["ms"])
    shares = sum(row["share"] for row in layers)
    assert shares <= 1
    assert math.isclose(shares + report["loss"]["share"] + report["optimizer"]["share"] + report["overhead"]["share"], 1)
    assert report["loss"]["names"] == ["sparse_categorical_crossentropy"] and report["optimizer"]["name"] == "adam"
    assert report["train_step_ms"] > 0 and report["samples_per_second"] > 0
    assert report["peak_gflops"] is None or report["peak_gflops"] > 0
    assert report["fused_step_ms"] is None  # a CNN trains layer by layer


def test_text_report():
    proc = run("time", SPECS / "digits_cnn.yaml", *FAST, "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith('Model: "digits_cnn": one training step at batch size 8') and "1 thread," in out
    for name in leaves(SPECS / "digits_cnn.yaml"):
        assert re.search(rf"│ (\S+ \+ )?{re.escape(name)}(?!\w)", out), name
    for name in ("loss", "optimizer (adam)", "framework overhead"):
        assert f"│ {name} " in out, name
    for column in ("Fwd ms", "Bwd ms", "GFLOP/s", "% peak", "MB moved", "Share"):
        assert column in out
    assert "One training step" in out and "MB moved is an estimate" in out


@pytest.mark.parametrize("name, losses", [
    ("text_lstm.yaml", ["binary_crossentropy"]),  # token ids for the Embedding
    ("two_outputs.yaml", ["sparse_categorical_crossentropy", "mean_squared_error"]),
    ("functional_two_inputs.yaml", ["mean_squared_error"]),  # no compile section: a default loss
    ("transfer_frozen_base.yaml", ["sparse_categorical_crossentropy"]),  # a frozen nested block
])
def test_every_kind_of_spec(name, losses):
    report = time_json(SPECS / name)
    assert report["loss"]["names"] == losses
    assert sorted(n for row in report["layers"] for n in row["layers"]) == sorted(leaves(SPECS / name))


def test_mlp_reports_fits_fused_step():
    report = time_json(SPECS / "iris_mlp.yaml")
    assert report["fused_step_ms"] > 0


def test_unknown_sizes_and_no_compile(tmp_path):
    spec = tmp_path / "seq.yaml"
    spec.write_text("specc: 1\nname: seq\nmodel:\n  input: [null, 3]\n  layers:\n"
                    "    - {type: LSTM, units: 4}\n    - {type: Dense, units: 2}\n")
    report = time_json(spec)
    assert report["inputs"]["input_layer"][0] == 8 and report["inputs"]["input_layer"][2] == 3
    assert report["loss"]["names"] == ["mean_squared_error"]


def test_bad_spec_is_positioned_errors(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("specc: 1\nmodel:\n  input: [8]\n  layers:\n    - {type: Dense, units: -3}\n")
    proc = run("time", spec, *FAST)
    assert proc.returncode == 1
    assert f"{spec}:5:" in proc.stdout and "units" in proc.stdout
    proc = run("time", spec, *FAST, "--format", "json")
    assert proc.returncode == 1
    errors = json.loads(proc.stdout)
    assert errors[0]["line"] == 5 and errors[0]["path"].endswith("units")


def test_usage_errors(tmp_path):
    assert run("time", tmp_path / "missing.yaml").returncode == 2
    assert run("time", SPECS / "iris_mlp.yaml", "--batch", "0").returncode == 2
    proc = run("time", SPECS / "iris_mlp.yaml", *FAST, env={"SPECC_THREADS": "many"})
    assert proc.returncode == 2 and "SPECC_THREADS" in proc.stderr


def test_engine_clock_reads_each_plan_step():
    import numpy as np

    from specc.engine import Engine

    spec, _ = load_spec(str(SPECS / "digits_cnn.yaml"))
    engine = Engine(spec.graph)
    engine.initialize(0)
    x = np.zeros((2, 8, 8, 1), np.float32)
    rng = np.random.default_rng(0)
    (y,) = engine.forward([x], training=True, rng=rng)
    assert engine.clock is None  # off by default
    engine.clock = readings = []
    engine.forward([x], training=True, rng=rng)
    engine.backward([np.ones_like(y)])
    assert len(readings) == 2 * (len(engine.plan) + 1)
    assert readings == sorted(readings)
