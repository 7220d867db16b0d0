"""The TensorBoard callback as users run it: a spec through `specc train` and `model.fit` in the API; the
event files are read back with TensorBoard's own reader. Skipped without tensorboardX / tensorboard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

import specc  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def read(folder: Path):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"histograms": 0, "tensors": 0,
                                                                         "scalars": 0})
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


SPEC = """specc: 1
name: tb_iris
seed: 3
model:
  input: [4]
  layers:
    - {type: Dense, units: 8, activation: relu}
    - {type: Dense, units: 3, activation: softmax}
data:
  source: iris
  normalize: true
compile:
  optimizer: {type: adam, learning_rate: 0.01}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
fit:
  batch_size: 16
  epochs: 4
  validation_split: 0.2
  callbacks:
    - {type: TensorBoard, histogram_freq: 2, update_freq: 3}
    - {type: CSVLogger}
"""


def test_cli_run_writes_events_inside_the_run_directory(tmp_path):
    spec = tmp_path / "tb.yaml"
    spec.write_text(SPEC)
    r = subprocess.run([sys.executable, "-m", "specc.cli", "train", str(spec), "--out", str(tmp_path / "runs"), "-q"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    run = next((tmp_path / "runs" / "tb_iris").iterdir())
    train, val = read(run / "tensorboard" / "train"), read(run / "tensorboard" / "validation")
    # The epoch scalars are the run's own history, as CSVLogger wrote it.
    rows = [line.split(",") for line in (run / "log.csv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        acc, tag = (val, f"epoch_{key[4:]}") if key.startswith("val_") else (train, f"epoch_{key}")
        got = scalars(acc, tag)
        assert [s for s, _ in got] == [0, 1, 2, 3]
        np.testing.assert_allclose([v for _, v in got], [float(r[header.index(key)]) for r in rows], rtol=1e-6)
    assert [v for _, v in scalars(train, "epoch_learning_rate")] == pytest.approx([0.01] * 4)
    # 150 samples - 20% test - 20% validation = 96 to train on, 6 batches of 16 an epoch, 24 in all:
    # batch scalars every 3rd batch, numbered across epochs.
    assert [s for s, _ in scalars(train, "batch_loss")] == list(range(3, 25, 3))
    hist = train.Tags()["histograms"]
    assert {"dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias"} <= set(hist)
    assert [e.step for e in train.Histograms("dense/kernel")] == [0, 2]
    assert any("model_summary" in t for t in train.Tags()["tensors"])


def test_api_fit_with_tensorboard(tmp_path):
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    model = specc.Sequential([specc.Input((4,)), specc.layers.Dense(6, activation="relu"),
                              specc.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    logs = tmp_path / "logs"
    hist = model.fit(x.astype("float32"), y, epochs=3, batch_size=50, verbose=0,
                     callbacks=[specc.callbacks.TensorBoard(log_dir=str(logs), update_freq="batch")])
    train = read(logs / "train")
    np.testing.assert_allclose([v for _, v in scalars(train, "epoch_loss")], hist.history["loss"], rtol=1e-6)
    assert [s for s, _ in scalars(train, "batch_loss")] == list(range(1, 10))
    assert not (logs / "validation").exists()


def test_api_rejects_what_it_cannot_write():
    with pytest.raises(ValueError, match="write_images"):
        specc.callbacks.TensorBoard(write_images=True)
    with pytest.raises(ValueError, match="update_freq"):
        specc.callbacks.TensorBoard(update_freq="sometimes")


def test_spec_errors_are_positioned(tmp_path):
    bad = SPEC.replace("histogram_freq: 2, update_freq: 3", "histogram_freq: -1, update_freq: often, log_dir: ../x")
    spec = tmp_path / "bad.yaml"
    spec.write_text(bad)
    r = subprocess.run([sys.executable, "-m", "specc.cli", "validate", str(spec)], capture_output=True, text=True)
    assert r.returncode == 1
    line = bad.splitlines().index(next(l for l in bad.splitlines() if "TensorBoard" in l)) + 1
    for field in ("histogram_freq", "update_freq", "log_dir"):
        assert f"bad.yaml:{line}:" in r.stdout and f"callbacks[0].{field}" in r.stdout, r.stdout


def test_missing_writer_is_refused_before_training(tmp_path):
    spec = tmp_path / "tb.yaml"
    spec.write_text(SPEC)
    # tensorboardX hidden from the child: a module that fails to import, first on its path.
    hide = tmp_path / "hide"
    (hide / "tensorboardX").mkdir(parents=True)
    (hide / "tensorboardX" / "__init__.py").write_text("raise ImportError('hidden for the test')\n")
    env = {"PYTHONPATH": f"{hide}:{REPO}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "specc.cli", "train", str(spec), "--out", str(tmp_path / "runs")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 1, r.stderr
    assert "tensorboardX" in r.stderr and "pip install" in r.stderr and "Traceback" not in r.stderr
    assert "tb.yaml:" in r.stderr
    assert not (tmp_path / "runs").exists()
