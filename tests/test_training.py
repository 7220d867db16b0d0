"""Training in-process with Engine + Trainer: the examples reach their accuracy, multi-output losses are
weighted as Keras weights them, callbacks (EarlyStopping, ReduceLROnPlateau) and class_weight follow
Keras 3, and metrics resolve and compute as Keras / scikit-learn do.

Everything runs with one thread so results do not depend on the machine's load.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from specc.data.prepare import Dataset
from specc.data.prepare import load as load_data
from specc.engine import Engine
from specc.kernels import configure_threads
from specc.spec import load_spec_text
from specc.train import callbacks as C
from specc.train import metrics as M
from specc.train.fit import History, Trainer
from specc.train.session import apply_overrides

SPECS = Path(__file__).resolve().parent.parent / "specs"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    configure_threads(1)


@dataclass
class Trained:
    spec: object
    data: Dataset
    engine: Engine
    trainer: Trainer
    history: History
    test: dict


def spec_of(path: Path, overrides=()):
    spec, errors = apply_overrides(path.read_bytes(), list(overrides), str(path))
    assert not errors, errors
    return spec


def train(spec) -> Trained:
    """What `specc train` does, minus the run directory."""
    configure_threads(1)
    data = load_data(spec)
    engine = Engine(spec.graph)
    engine.initialize(spec.seed)
    trainer = Trainer(engine, spec.compile, spec.seed)
    fit = spec.fit
    history = trainer.fit(data.x_train, data.y_train, batch_size=fit.batch_size, epochs=fit.epochs,
                          validation_split=fit.validation_split, shuffle=fit.shuffle, class_weight=fit.class_weight,
                          callbacks=[C.build(c) for c in spec.callbacks], verbose=0)
    test = trainer.evaluate(data.x_test, data.y_test, fit.batch_size)
    return Trained(spec, data, engine, trainer, history, test)


@functools.cache
def trained_example(name: str) -> Trained:
    return train(spec_of(SPECS / f"{name}.yaml"))


# --- the examples reach their accuracy with their own settings -------------------------------------------


@pytest.mark.parametrize("name, target", [("digits_mlp", 0.95), ("digits_cnn", 0.97), ("iris_mlp", 0.93),
                                          ("breast_cancer", 0.95)])
def test_example_reaches_its_test_accuracy(name, target):
    t = trained_example(name)
    assert t.test["accuracy"] >= target, t.test
    assert np.isfinite(t.test["loss"])
    losses = t.history.history["loss"]
    assert losses[-1] < losses[0]
    assert len(t.history.epoch) <= t.spec.fit.epochs


# --- two outputs and loss_weights ------------------------------------------------------------------------


@functools.cache
def two_outputs() -> Trained:
    return train(spec_of(SPECS / "two_outputs.yaml", ["fit.epochs=3"]))


def test_two_outputs_history_has_per_output_losses():
    t = two_outputs()
    h = t.history.history
    assert list(h) == ["loss", "label_loss", "score_loss", "label_accuracy", "score_mean_absolute_error",
                       "val_loss", "val_label_loss", "val_score_loss", "val_label_accuracy",
                       "val_score_mean_absolute_error"]
    for prefix in ("", "val_"):
        for total, a, b in zip(h[f"{prefix}loss"], h[f"{prefix}label_loss"], h[f"{prefix}score_loss"], strict=True):
            assert total == pytest.approx(a + 0.5 * b, rel=1e-9)
    assert h["label_loss"][-1] < h["label_loss"][0] and h["score_loss"][-1] < h["score_loss"][0]


@pytest.mark.parametrize("batch_size", [7, 64, 10_000])
def test_two_outputs_evaluate_is_the_weighted_sum(batch_size):
    t = two_outputs()
    r = t.trainer.evaluate(t.data.x_test, t.data.y_test, batch_size)
    assert set(r) == {"loss", "label_loss", "score_loss", "label_accuracy", "score_mean_absolute_error"}
    assert r["loss"] == pytest.approx(r["label_loss"] + 0.5 * r["score_loss"], rel=1e-9)
    # the per-output parts are the plain losses of each output
    label_p, score_p = t.trainer.predict(t.data.x_test)
    y_label, y_score = t.data.y_test
    ce = -np.log(np.clip(label_p[np.arange(len(y_label)), y_label].astype(np.float64), 1e-7, 1 - 1e-7))
    assert r["label_loss"] == pytest.approx(ce.mean(), rel=1e-5)
    assert r["score_loss"] == pytest.approx(np.mean((score_p.astype(np.float64) - y_score) ** 2), rel=1e-5)
    assert r["score_mean_absolute_error"] == pytest.approx(np.mean(np.abs(score_p - y_score)), rel=1e-5)
    assert r["label_accuracy"] == pytest.approx(np.mean(label_p.argmax(1) == y_label))


def test_two_outputs_train_step_weights_losses_and_gradients():
    t = two_outputs()
    trainer, engine = t.trainer, t.engine
    xb = [a[:32] for a in t.data.x_train]
    yb = [a[:32] for a in t.data.y_train]
    values, grads, _ = trainer._losses(xb, yb, None, training=True)
    assert sum(w * v for w, v in zip(trainer.loss_weights, values, strict=True)) == pytest.approx(values[0] + 0.5 * values[1])

    def gradient(weights):
        trainer.loss_weights = list(weights)
        _, g, _ = trainer._losses(xb, yb, None, training=True)
        engine.backward(g, pre_activation=[f is not None for f in trainer.fused])
        per_layer = {s.name: np.concatenate([a.ravel() for a in s.grads]).astype(np.float64) for s in engine.steps}
        return engine.grads.astype(np.float64).copy(), per_layer

    try:
        (g_label, l_label), (g_score, l_score), (g_both, _) = (gradient([1.0, 0.0]), gradient([0.0, 1.0]),
                                                               gradient([1.0, 0.5]))
    finally:
        trainer.loss_weights = [1.0, 0.5]
    np.testing.assert_allclose(g_both, g_label + 0.5 * g_score, rtol=1e-4, atol=1e-6)
    # each head gets gradient only from its own loss
    assert np.all(l_label["score"] == 0) and np.any(l_score["score"] != 0)
    assert np.all(l_score["label"] == 0) and np.any(l_label["label"] != 0)


def test_loss_weights_as_a_list():
    spec = spec_of(SPECS / "two_outputs.yaml", ["compile.loss_weights=[2.0, 0.25]"])
    trainer = Trainer(Engine(spec.graph), spec.compile, 0)
    assert trainer.loss_weights == [2.0, 0.25]


# --- callbacks -------------------------------------------------------------------------------------------

TINY = """\
specc: 1
seed: 0
model:
  input: [6]
  layers:
    - {{type: Dense, units: 8, activation: tanh}}
    - {{type: Dense, units: 3, activation: softmax, name: out}}
compile:
  optimizer: {optimizer}
  loss: {loss}
  metrics: [accuracy]
fit:
  batch_size: 16
  callbacks: {callbacks}
"""


def tiny(callbacks="[]", optimizer="{type: sgd, learning_rate: 0.1}", loss="sparse_categorical_crossentropy"):
    spec, errors = load_spec_text(TINY.format(callbacks=callbacks, optimizer=optimizer, loss=loss), "tiny.yaml")
    assert not errors, errors
    engine = Engine(spec.graph)
    engine.initialize(0)
    return spec, engine, Trainer(engine, spec.compile, 0)


def tiny_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((6, 3)), axis=1).astype(np.int64)
    return x, y


class Recorder(C.Callback):
    def __init__(self):
        self.weights, self.lrs = [], []

    def on_epoch_end(self, epoch, logs):
        self.weights.append(self.trainer.get_weights())
        self.lrs.append(self.trainer.learning_rate)


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_early_stopping_stops_after_patience_and_restores_best():
    # min_delta so large that only the first epoch counts as an improvement
    spec, engine, trainer = tiny("[{type: EarlyStopping, monitor: loss, min_delta: 1.0e9, patience: 2, "
                                 "restore_best_weights: true}]")
    x, y = tiny_data()
    cbs = [C.build(c) for c in spec.callbacks]
    rec = Recorder()
    history = trainer.fit(x, y, batch_size=16, epochs=20, callbacks=[rec, *cbs], verbose=0)
    assert history.epoch == [0, 1, 2]  # best at 0, then 2 epochs without improvement
    assert cbs[0].stopped_epoch == 2 and cbs[0].best_epoch == 0
    assert not same(rec.weights[0], rec.weights[-1])
    assert same(engine.get_weights(), rec.weights[0])


def test_early_stopping_without_restore_keeps_the_last_weights():
    spec, engine, trainer = tiny("[{type: EarlyStopping, monitor: loss, min_delta: 1.0e9, patience: 1}]")
    x, y = tiny_data()
    rec = Recorder()
    history = trainer.fit(x, y, batch_size=16, epochs=20, callbacks=[rec, *map(C.build, spec.callbacks)],
                          verbose=0)
    assert history.epoch == [0, 1]
    assert same(engine.get_weights(), rec.weights[-1])


def test_early_stopping_restores_best_even_without_stopping():
    """Keras 3 restores the best weights at the end of training whether or not it stopped early."""
    spec, engine, trainer = tiny("[{type: EarlyStopping, monitor: loss, min_delta: 1.0e9, patience: 50, "
                                 "restore_best_weights: true}]")
    x, y = tiny_data()
    rec = Recorder()
    history = trainer.fit(x, y, batch_size=16, epochs=3, callbacks=[rec, *map(C.build, spec.callbacks)], verbose=0)
    assert history.epoch == [0, 1, 2]
    assert same(engine.get_weights(), rec.weights[0])


def test_early_stopping_real_plateau_on_validation_loss():
    """Overfit a tiny noisy set: val_loss stops improving, training stops before `epochs`, and the final
    weights are those of the best val_loss epoch."""
    spec, engine, trainer = tiny("[{type: EarlyStopping, monitor: val_loss, patience: 3, "
                                 "restore_best_weights: true}]", optimizer="{type: adam, learning_rate: 0.05}")
    x, y = tiny_data(96, seed=3)
    y[::3] = (y[::3] + 1) % 3  # label noise
    rec = Recorder()
    history = trainer.fit(x, y, batch_size=16, epochs=200, validation_split=0.5,
                          callbacks=[rec, *map(C.build, spec.callbacks)], verbose=0)
    val = history.history["val_loss"]
    best = int(np.argmin(val))
    assert len(val) < 200 and len(val) == best + 1 + 3
    assert same(engine.get_weights(), rec.weights[best])


def test_early_stopping_mode_auto():
    for monitor, mode in (("val_loss", "min"), ("loss", "min"), ("accuracy", "max"), ("val_auc", "max"),
                          ("mean_absolute_error", "min")):
        spec, _, _ = tiny(f"[{{type: EarlyStopping, monitor: {monitor}}}]")
        assert C.build(spec.callbacks[0]).mode == mode, monitor


def test_reduce_lr_on_plateau_lowers_the_rate():
    spec, _, trainer = tiny("[{type: ReduceLROnPlateau, monitor: loss, min_delta: 1.0e9, patience: 1, "
                            "factor: 0.5}]")
    x, y = tiny_data()
    history = trainer.fit(x, y, batch_size=16, epochs=4, callbacks=[C.build(c) for c in spec.callbacks], verbose=0)
    # Keras logs the rate the epoch ran with, then reduces it
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert trainer.learning_rate == pytest.approx(0.0125)
    assert trainer.optimizer.learning_rate_now() == pytest.approx(0.0125)

    # and the optimizer uses it: plain SGD moves by exactly lr * gradient
    before = trainer.engine.params[: trainer.engine.n_trainable].copy()
    trainer.train_step([x[:16]], [y[:16]], None)
    step = before - trainer.engine.params[: trainer.engine.n_trainable]
    np.testing.assert_allclose(step, 0.0125 * trainer.engine.grads, rtol=1e-4, atol=2e-7)  # float32 rounding of w


def test_reduce_lr_on_plateau_min_lr_and_cooldown():
    spec, _, trainer = tiny("[{type: ReduceLROnPlateau, monitor: loss, min_delta: 1.0e9, patience: 1, "
                            "factor: 0.5, min_lr: 0.06}]")
    x, y = tiny_data()
    h = trainer.fit(x, y, batch_size=16, epochs=4, callbacks=[C.build(c) for c in spec.callbacks], verbose=0)
    assert h.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.06, 0.06])

    spec, _, trainer = tiny("[{type: ReduceLROnPlateau, monitor: loss, min_delta: 1.0e9, patience: 1, "
                            "factor: 0.5, cooldown: 2}]")
    h = trainer.fit(x, y, batch_size=16, epochs=6, callbacks=[C.build(c) for c in spec.callbacks], verbose=0)
    # reduce after epoch 2, two cooldown epochs (the second ends the cooldown and counts), reduce again
    assert h.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


# --- class_weight ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("one_hot", [False, True])
def test_class_weight_scales_each_sample_loss_as_keras(one_hot):
    """Keras turns class_weight into per-sample weights; the loss is sum(w_i * loss_i) / batch_size. Keras 3
    weights only `weighted_metrics` with them: plain `metrics` stay unweighted (keras 3.15: accuracy 0.35,
    weighted_accuracy 0.366 on a case like this one)."""
    loss = "categorical_crossentropy" if one_hot else "sparse_categorical_crossentropy"
    spec, engine, trainer = tiny(loss=loss, optimizer="{type: sgd, learning_rate: 1.0e-9}")
    x, y = tiny_data(48)
    targets = np.eye(3, dtype=np.float32)[y] if one_hot else y
    probs = trainer.predict(x)[0].astype(np.float64)
    ce = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1 - 1e-7))
    correct = (probs.argmax(1) == y).astype(np.float64)
    cw = {0: 3.0, 2: 0.5}  # class 1 is missing: weight 1
    w = np.array([cw.get(int(c), 1.0) for c in y])

    weighted = trainer.fit(x, targets, batch_size=len(x), epochs=1, shuffle=False, class_weight=cw, verbose=0)
    assert weighted.history["loss"][0] == pytest.approx(np.sum(w * ce) / len(y), rel=1e-5)
    assert weighted.history["accuracy"][0] == pytest.approx(correct.mean(), rel=1e-9)

    _, _, plain_trainer = tiny(loss=loss, optimizer="{type: sgd, learning_rate: 1.0e-9}")
    plain = plain_trainer.fit(x, targets, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert plain.history["loss"][0] == pytest.approx(ce.mean(), rel=1e-5)
    assert plain.history["loss"][0] != pytest.approx(weighted.history["loss"][0], rel=1e-3)


def test_class_weight_changes_the_gradient_proportionally():
    """Weighting every class by 2 doubles the gradient (the reduction divides by the batch size, not by
    the sum of the weights)."""
    x, y = tiny_data(32)
    grads = []
    for cw in (None, {0: 2.0, 1: 2.0, 2: 2.0}):
        _, engine, trainer = tiny()
        sw = None if cw is None else np.array([cw[int(c)] for c in y])
        trainer.train_step([x], [y], sw)
        grads.append(engine.grads.astype(np.float64).copy())
    np.testing.assert_allclose(grads[1], 2 * grads[0], rtol=1e-5, atol=1e-8)


# --- metrics ---------------------------------------------------------------------------------------------


def test_accuracy_resolution():
    assert type(M.resolve("accuracy", (1,), sparse_targets=False)) is M.BinaryAccuracy
    assert type(M.resolve("accuracy", (10,), sparse_targets=True)) is M.SparseCategoricalAccuracy
    assert type(M.resolve("accuracy", (10,), sparse_targets=False)) is M.CategoricalAccuracy
    assert M.resolve("accuracy", (10,), True).name == "accuracy"  # keeps the name the user wrote


@pytest.mark.parametrize("kind", ["sparse", "sparse_column", "one_hot"])
def test_accuracy_resolution_from_the_targets(kind):
    _, _, trainer = tiny()
    x, y = tiny_data(40)
    targets = {"sparse": y, "sparse_column": y.reshape(-1, 1), "one_hot": np.eye(3, dtype=np.float32)[y]}[kind]
    if kind == "one_hot":
        trainer.losses[0] = type(trainer.losses[0])("categorical_crossentropy")
    metric = trainer._make_metrics([targets])[0][0]
    assert type(metric) is (M.CategoricalAccuracy if kind == "one_hot" else M.SparseCategoricalAccuracy)
    result = trainer.evaluate(x, targets, batch_size=16)
    assert result["accuracy"] == pytest.approx(np.mean(trainer.predict(x)[0].argmax(1) == y))


def test_binary_accuracy_for_one_unit():
    spec, errors = load_spec_text(TINY.format(callbacks="[]", optimizer="sgd", loss="binary_crossentropy")
                                  .replace("units: 3, activation: softmax", "units: 1, activation: sigmoid"), "b.yaml")
    assert not errors
    engine = Engine(spec.graph)
    engine.initialize(1)
    trainer = Trainer(engine, spec.compile, 0)
    x, y = tiny_data(40)
    yb = (y == 0).astype(np.float32).reshape(-1, 1)
    assert type(trainer._make_metrics([yb])[0][0]) is M.BinaryAccuracy
    p = trainer.predict(x)[0]
    assert trainer.evaluate(x, yb)["accuracy"] == pytest.approx(np.mean((p > 0.5) == (yb > 0.5)))


def _batched(metric, y_true, y_pred, sizes=(7, 30, 1, 100)):
    """Feed a metric in uneven batches, as an epoch does."""
    metric.reset()
    start = 0
    for n in sizes * 100:
        if start >= len(y_true):
            break
        metric.update(y_true[start: start + n], y_pred[start: start + n])
        start += n
    return metric.result()


def test_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.3).astype(np.float32).reshape(-1, 1)
    scores = np.round(rng.random(500) * 0.6 + 0.4 * y[:, 0], 2).astype(np.float32).reshape(-1, 1)  # many ties
    assert _batched(M.AUC(), y, scores) == pytest.approx(roc_auc_score(y[:, 0], scores[:, 0]), abs=1e-12)


@pytest.mark.parametrize("name", ["precision", "recall", "f1_score"])
def test_binary_counts_match_sklearn(name):
    from sklearn import metrics as S

    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.4).astype(np.float32).reshape(-1, 1)
    p = np.clip(rng.random(300) * 0.7 + 0.3 * y[:, 0], 0, 1).astype(np.float32).reshape(-1, 1)
    ref = {"precision": S.precision_score, "recall": S.recall_score, "f1_score": S.f1_score}[name]
    got = _batched(M.BY_NAME[name](), y, p)
    assert got == pytest.approx(ref(y[:, 0] > 0.5, p[:, 0] > 0.5), abs=1e-12)
    # with sample weights
    w = rng.random(300) * 2
    m = M.BY_NAME[name]()
    m.update(y, p, w)
    assert m.result() == pytest.approx(ref(y[:, 0] > 0.5, p[:, 0] > 0.5, sample_weight=w), rel=1e-9)


def test_metrics_on_a_trained_binary_classifier_match_sklearn():
    from sklearn import metrics as S

    t = trained_example("breast_cancer")
    y = t.data.y_test[0][:, 0]
    p = t.trainer.predict(t.data.x_test)[0][:, 0]
    assert t.test["auc"] == pytest.approx(S.roc_auc_score(y, p), abs=1e-12)
    assert t.test["precision"] == pytest.approx(S.precision_score(y, p > 0.5), abs=1e-12)
    assert t.test["recall"] == pytest.approx(S.recall_score(y, p > 0.5), abs=1e-12)
    assert t.test["accuracy"] == pytest.approx(S.accuracy_score(y, p > 0.5), abs=1e-12)
    compile_def = t.spec.compile.model_copy(update={"metrics": ["f1_score"]})
    f1 = Trainer(t.engine, compile_def, 0).evaluate(t.data.x_test, t.data.y_test, 17)["f1_score"]
    assert f1 == pytest.approx(S.f1_score(y, p > 0.5), abs=1e-12)


def test_metrics_on_a_trained_multiclass_classifier_match_sklearn():
    from sklearn import metrics as S

    t = trained_example("digits_mlp")
    y = t.data.y_test[0]
    p = t.trainer.predict(t.data.x_test)[0]
    compile_def = t.spec.compile.model_copy(update={"metrics": ["accuracy", "f1_score",
                                                                 "sparse_top_k_categorical_accuracy"]})
    r = Trainer(t.engine, compile_def, 0).evaluate(t.data.x_test, t.data.y_test, 32)
    assert r["accuracy"] == pytest.approx(S.accuracy_score(y, p.argmax(1)), abs=1e-12)
    assert r["f1_score"] == pytest.approx(S.f1_score(y, p.argmax(1), average="macro"), abs=1e-12)
    assert r["sparse_top_k_categorical_accuracy"] == pytest.approx(
        S.top_k_accuracy_score(y, p, k=5, labels=np.arange(10)), abs=1e-12)
    # precision/recall on one-hot targets threshold every unit at 0.5, as Keras does
    onehot = np.eye(10, dtype=np.float32)[y]
    for name, ref in (("precision", S.precision_score), ("recall", S.recall_score)):
        m = M.BY_NAME[name]()
        m.update(onehot, p)
        assert m.result() == pytest.approx(ref(onehot.ravel() > 0.5, p.ravel() > 0.5), abs=1e-12)


@pytest.mark.parametrize("name", ["precision", "recall", "auc"])
def test_per_unit_metrics_accept_class_indices_as_one_hot(name):
    """Integer labels on a softmax output count as one-hot targets (each unit a binary decision, as Keras
    counts one-hot labels), so `metrics: [precision]` works on a sparse classifier instead of crashing."""
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=50)
    labels = rng.integers(0, 3, 50)
    onehot = np.eye(3)[labels]
    m = M.BY_NAME[name]()
    m.update(labels, p)
    ref = {"precision": lambda t, q: precision_score(t.ravel(), q.ravel() > 0.5, zero_division=0),
           "recall": lambda t, q: recall_score(t.ravel(), q.ravel() > 0.5, zero_division=0),
           "auc": lambda t, q: roc_auc_score(t.ravel(), q.ravel())}[name]
    assert m.result() == pytest.approx(ref(onehot, p), abs=1e-12)


def test_precision_on_a_sparse_classifier_trains():
    path = SPECS / "iris_mlp.yaml"
    spec, errors = apply_overrides(path.read_bytes(), ["compile.metrics=[precision, recall, auc]", "fit.epochs=1"],
                                   str(path))
    assert not errors
    data = load_data(spec)
    engine = Engine(spec.graph)
    engine.initialize(0)
    history = Trainer(engine, spec.compile, 0).fit(data.x_train, data.y_train, batch_size=8, epochs=1, verbose=0)
    assert {"precision", "recall", "auc"} <= set(history.history)
