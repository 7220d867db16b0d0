"""The training API Keras code uses, each case written from Keras 3's documented behaviour (keras.io's
Model training APIs, Callbacks API and Losses pages; keras 3.15's trainer where the docs are silent):
sample_weight, class_weight, weighted_metrics, train_on_batch / test_on_batch, validation_freq,
steps_per_epoch / validation_steps, initial_epoch, metric functions, loss sums and reductions,
model.optimizer's learning rate, every callback hook with its logs, LearningRateScheduler, History,
ProgbarLogger, BackupAndRestore, evaluate/predict progress, summary's layout arguments and jit_compile.

Expected values come from the predictions by the documented formulas, never from specc itself; the
Keras cross-checks at the end skip when Keras is absent."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import specc
from specc import layers


@pytest.fixture(autouse=True)
def fresh_session():
    specc.clear_session()
    specc.set_random_seed(0)


def data(n=24, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    return x, rng.integers(0, classes, n).astype(np.int64)


def classifier(classes=3, features=4, seed=0):
    specc.set_random_seed(seed)
    return specc.Sequential([specc.Input(shape=(features,)), layers.Dense(classes, activation="softmax")])


def regressor(units=2, features=4, seed=0):
    specc.set_random_seed(seed)
    return specc.Sequential([specc.Input(shape=(features,)), layers.Dense(units)])


def sparse_ce(probabilities, y):
    return -np.log(np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1 - 1e-7))


def close_weights(a, b, **kw):
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(u, v, **kw)


# --- item 3: sample_weight, class_weight, weighted_metrics --------------------------------------------------


def test_sample_weight_in_evaluate_weights_the_loss_and_only_weighted_metrics():
    """Keras: the loss is sum(w_i * loss_i) / batch size ("sum_over_batch_size"); `metrics` are unweighted and
    `weighted_metrics` weighted by the sample weights (sum(w_i * m_i) / sum(w_i))."""
    x, y = data()
    w = np.linspace(0.0, 2.0, len(x))
    model = classifier()
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"], weighted_metrics=["accuracy"])
    p = model.predict(x, verbose=0).astype(np.float64)
    correct = (p.argmax(1) == y).astype(np.float64)
    logs = model.evaluate(x, y, sample_weight=w, batch_size=7, verbose=0, return_dict=True)
    assert list(logs) == ["loss", "accuracy", "weighted_accuracy"] == model.metrics_names
    assert logs["loss"] == pytest.approx(np.sum(w * sparse_ce(p, y)) / len(y), rel=1e-5)
    assert logs["accuracy"] == pytest.approx(correct.mean())
    assert logs["weighted_accuracy"] == pytest.approx(np.sum(w * correct) / np.sum(w))


def test_a_weighted_metric_keeps_its_name_when_no_plain_metric_has_it():
    model = classifier()
    model.compile("sgd", "sparse_categorical_crossentropy", weighted_metrics=["acc"])
    x, y = data()
    assert list(model.fit(x, y, verbose=0).history) == ["loss", "acc"] == model.metrics_names


def test_sample_weight_in_fit_scales_the_gradient():
    """With SGD, weights 2 on every sample step exactly like the learning rate doubled."""
    x, y = data()
    a, b = classifier(), classifier()
    a.compile(specc.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    b.compile(specc.optimizers.SGD(0.2), "sparse_categorical_crossentropy")
    a.fit(x, y, sample_weight=np.full(len(x), 2.0), batch_size=8, epochs=2, shuffle=False, verbose=0)
    b.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    close_weights(a, b, rtol=1e-5, atol=1e-6)


def test_class_weight_and_sample_weight_multiply():
    """tf.keras multiplies them; Keras 3 refuses the pair (ValueError), so no Keras 3 script depends on either."""
    x, y = data()
    sw = np.linspace(0.5, 1.5, len(x))
    cw = {0: 2.0, 1: 0.5}  # class 2: weight 1
    a, b = classifier(), classifier()
    for m in (a, b):
        m.compile(specc.optimizers.SGD(0.1), "sparse_categorical_crossentropy", weighted_metrics=["accuracy"])
    ha = a.fit(x, y, sample_weight=sw, class_weight=cw, batch_size=8, epochs=2, shuffle=False, verbose=0)
    hb = b.fit(x, y, sample_weight=sw * np.array([cw.get(int(c), 1.0) for c in y]), batch_size=8, epochs=2,
               shuffle=False, verbose=0)
    close_weights(a, b, rtol=1e-6)
    assert ha.history == pytest.approx(hb.history)


def test_validation_data_takes_sample_weights_and_split_keeps_them_aligned():
    x, y = data(30)
    w = np.linspace(0.1, 3.0, len(x))
    model = classifier()
    model.compile(specc.optimizers.SGD(1e-9), "sparse_categorical_crossentropy")
    h = model.fit(x, y, sample_weight=w, validation_split=0.2, verbose=0)
    p = model.predict(x[24:], verbose=0).astype(np.float64)
    assert h.history["val_loss"][0] == pytest.approx(np.sum(w[24:] * sparse_ce(p, y[24:])) / 6, rel=1e-4)
    h = model.fit(x, y, validation_data=(x[24:], y[24:], w[24:]), verbose=0)
    assert h.history["val_loss"][0] == pytest.approx(np.sum(w[24:] * sparse_ce(p, y[24:])) / 6, rel=1e-4)


@pytest.mark.parametrize("bad, message", [
    (np.ones(5), "Data cardinality is ambiguous"),
    (np.full(24, -1.0), "non-negative"),
    (np.full(24, np.nan), "NaN"),
    (np.ones((24, 2, 2)), "one weight per sample"),
])
def test_bad_sample_weights_are_clear_errors(bad, message):
    x, y = data()
    model = classifier()
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, sample_weight=bad, verbose=0)


# --- item 3: train_on_batch / test_on_batch -----------------------------------------------------------------


def test_train_on_batch_return_forms_and_one_step():
    """Keras: a scalar loss without metrics, a list [loss, *metrics] with them, a dict with return_dict=True;
    the loss is the batch's before the update; the step is fit's on that batch."""
    x, y = data()
    plain = regressor()
    plain.compile("sgd", "mse")
    yr = np.random.default_rng(3).standard_normal((len(x), 2)).astype(np.float32)
    before = plain.test_on_batch(x, yr)
    assert isinstance(before, float)
    assert plain.train_on_batch(x, yr) == pytest.approx(before, rel=1e-6)
    assert plain.test_on_batch(x, yr) < before

    a, b = classifier(), classifier()
    for m in (a, b):
        m.compile(specc.optimizers.SGD(0.5), "sparse_categorical_crossentropy", metrics=["accuracy"])
    expected = b.evaluate(x, y, batch_size=len(x), verbose=0)
    got = a.train_on_batch(x, y)
    assert isinstance(got, list) and got == pytest.approx(expected)
    b.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    close_weights(a, b, rtol=1e-6)
    logs = a.test_on_batch(x, y, return_dict=True)
    assert logs == pytest.approx(dict(zip(b.metrics_names, b.evaluate(x, y, batch_size=len(x), verbose=0))))
    assert list(a.train_on_batch(x, y, return_dict=True)) == ["loss", "accuracy"]


def test_train_on_batch_takes_sample_and_class_weights():
    x, y = data()
    a, b = classifier(), classifier()
    for m in (a, b):
        m.compile(specc.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    a.train_on_batch(x, y, class_weight={0: 3.0})
    b.train_on_batch(x, y, sample_weight=np.where(y == 0, 3.0, 1.0))
    close_weights(a, b, rtol=1e-6)
    assert a.test_on_batch(x, y, sample_weight=np.zeros(len(x))) == 0.0


# --- item 3: validation_freq, steps, initial_epoch ----------------------------------------------------------


def test_validation_freq_int_and_list():
    """Keras: validate when (epoch + 1) % validation_freq == 0, or when epoch + 1 is in the list."""
    x, y = data()
    model = classifier()
    model.compile("sgd", "sparse_categorical_crossentropy")
    seen = []

    class Spy(specc.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, "val_loss" in logs))

    h = model.fit(x, y, epochs=5, validation_data=(x, y), validation_freq=2, callbacks=[Spy()], verbose=0)
    assert seen == [(0, False), (1, True), (2, False), (3, True), (4, False)]
    assert len(h.history["loss"]) == 5 and len(h.history["val_loss"]) == 2
    seen.clear()
    model.fit(x, y, epochs=4, validation_split=0.25, validation_freq=[1, 4], callbacks=[Spy()], verbose=0)
    assert seen == [(0, True), (1, False), (2, False), (3, True)]
    with pytest.raises(ValueError, match="validation_freq"):
        model.fit(x, y, validation_freq=0, verbose=0)


class BatchCounter(specc.callbacks.Callback):
    def __init__(self):
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_train_batch_begin(self, batch, logs=None):
        assert batch == self.per_epoch[-1]
        self.per_epoch[-1] += 1


@pytest.mark.parametrize("steps, epochs, expected, warns", [
    (2, 3, [2, 1, 2], True),   # 10 samples at 4 = 3 batches: the pass runs out in the second epoch
    (3, 2, [3, 3], False),     # exactly one pass per epoch
    (5, 2, [3, 3], True),      # more steps than batches: each epoch ends with its pass
    (1, 4, [1, 1, 1, 1], False),
])
def test_steps_per_epoch_with_arrays_follows_keras_data_stream(steps, epochs, expected, warns):
    """keras 3 EpochIterator: epochs draw batches from one pass over the arrays after another; an epoch ends
    after steps_per_epoch steps or where the pass runs out (a warning), the next epoch starting a new pass."""
    x, y = data(10)
    model = classifier()
    model.compile("sgd", "sparse_categorical_crossentropy")
    counter = BatchCounter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = model.fit(x, y, batch_size=4, epochs=epochs, steps_per_epoch=steps, callbacks=[counter], verbose=0)
    assert counter.per_epoch == expected
    assert any("ran out of data" in str(w.message) for w in caught) == warns
    assert h.params["steps"] == steps


def test_steps_per_epoch_continues_the_pass_in_order():
    """Without shuffling, two epochs of one step each see the first and second batch: the same weights as one
    epoch of two steps."""
    x, y = data(16)
    a, b = classifier(), classifier()
    for m in (a, b):
        m.compile(specc.optimizers.SGD(0.3), "sparse_categorical_crossentropy")
    a.fit(x, y, batch_size=8, epochs=2, steps_per_epoch=1, shuffle=False, verbose=0)
    b.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    close_weights(a, b, rtol=1e-6)


def test_validation_steps_and_evaluate_steps_take_the_first_batches():
    x, y = data(20)
    model = classifier()
    model.compile(specc.optimizers.SGD(1e-9), "sparse_categorical_crossentropy")
    h = model.fit(x, y, batch_size=4, validation_data=(x, y), validation_steps=2, verbose=0)
    assert h.history["val_loss"][0] == pytest.approx(model.evaluate(x[:8], y[:8], verbose=0), rel=1e-5)
    assert model.evaluate(x, y, batch_size=4, steps=2, verbose=0) == pytest.approx(
        model.evaluate(x[:8], y[:8], verbose=0), rel=1e-6)
    assert model.predict(x, batch_size=4, steps=2, verbose=0).shape == (8, 3)


def test_initial_epoch_numbers_callbacks_and_history():
    x, y = data()
    model = classifier()
    model.compile("sgd", "sparse_categorical_crossentropy")
    begun = []

    class Spy(specc.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            begun.append(epoch)

    h = model.fit(x, y, epochs=4, initial_epoch=2, callbacks=[Spy()], verbose=0)
    assert begun == [2, 3] and h.epoch == [2, 3] and len(h.history["loss"]) == 2
    assert h.params == {"verbose": 0, "epochs": 4, "steps": 1}


# --- item 4: custom metrics and losses ----------------------------------------------------------------------


def test_metric_function_is_averaged_like_a_builtin_and_weighted_in_weighted_metrics():
    x, _ = data()
    yr = np.random.default_rng(1).standard_normal((len(x), 2)).astype(np.float32)
    w = np.linspace(0.0, 1.0, len(x))

    def max_error(y_true, y_pred):
        assert isinstance(y_true, np.ndarray) and isinstance(y_pred, np.ndarray)
        return np.max(np.abs(y_true - y_pred), axis=-1)

    model = regressor()
    model.compile("sgd", "mse", metrics=[max_error, "mae"], weighted_metrics=[max_error])
    per_sample = np.max(np.abs(yr - model.predict(x, verbose=0)), axis=-1).astype(np.float64)
    logs = model.evaluate(x, yr, sample_weight=w, batch_size=5, verbose=0, return_dict=True)
    assert list(logs) == ["loss", "max_error", "mae", "weighted_max_error"] == model.metrics_names
    assert logs["max_error"] == pytest.approx(per_sample.mean(), rel=1e-5)
    assert logs["weighted_max_error"] == pytest.approx(np.sum(w * per_sample) / np.sum(w), rel=1e-5)
    assert "max_error" in model.fit(x, yr, verbose=0).history


def test_metric_function_with_a_wrong_shape_is_a_clear_error():
    x, y = data()
    model = classifier()
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=[lambda t, p: np.ones(3)])
    with pytest.raises(ValueError, match="must return one value per sample"):
        model.fit(x, y, verbose=0)


def test_plain_function_loss_is_a_type_error_saying_what_to_use():
    model = regressor()
    with pytest.raises(TypeError, match=r"Python function \(my_loss\).*gradient.*0.5 \* specc.losses.MeanSquaredError"):
        def my_loss(y_true, y_pred):
            return np.mean((y_true - y_pred) ** 2)
        model.compile("sgd", my_loss)
    with pytest.raises(TypeError, match="weighted sums"):
        specc.losses.MeanSquaredError() * "2"


def test_weighted_sum_of_losses_value_and_gradient():
    x, _ = data()
    yr = np.random.default_rng(2).standard_normal((len(x), 2)).astype(np.float32)
    combo = 0.5 * specc.losses.MeanSquaredError() + specc.losses.MeanAbsoluteError() / 4
    model = regressor()
    model.compile("sgd", combo)
    d = model.predict(x, verbose=0).astype(np.float64) - yr
    expected = 0.5 * np.mean(d ** 2) + 0.25 * np.mean(np.abs(d))
    assert model.evaluate(x, yr, verbose=0) == pytest.approx(expected, rel=1e-5)
    assert combo(yr, yr + d) == pytest.approx(expected, rel=1e-5)
    # the gradient of a sum is the sum of gradients: mse + mse with SGD(lr) steps like mse with SGD(2 lr)
    a, b = regressor(), regressor()
    a.compile(specc.optimizers.SGD(0.05), specc.losses.MeanSquaredError() + specc.losses.MeanSquaredError())
    b.compile(specc.optimizers.SGD(0.1), "mse")
    for m in (a, b):
        m.fit(x, yr, batch_size=6, epochs=2, shuffle=False, verbose=0)
    close_weights(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="cannot mix sparse_categorical_crossentropy"):
        specc.losses.SparseCategoricalCrossentropy() + specc.losses.MeanSquaredError()


def test_loss_sum_gradient_matches_finite_differences():
    from specc.train.losses import LossSum, get_loss

    rng = np.random.default_rng(0)
    t = rng.random((5, 3))
    p = rng.random((5, 3)) * 0.8 + 0.1
    loss = LossSum([(0.7, get_loss("huber")), (-0.2, get_loss("mae")), (1.5, get_loss("binary_crossentropy"))])
    value, grad = loss(t, p)
    eps = 1e-6
    for i in range(5):
        for j in range(3):
            q = p.copy()
            q[i, j] += eps
            up = loss(t, q)[0]
            q[i, j] -= 2 * eps
            down = loss(t, q)[0]
            assert grad[i, j] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-8)


def test_loss_reductions_as_keras():
    """Keras 3: "sum_over_batch_size" (= "mean") divides the weighted sum by the number of values, "sum" does
    not, "mean_with_sample_weight" divides by the sum of the weights, "none" keeps one value per sample."""
    rng = np.random.default_rng(0)
    t, p = rng.random((6, 3)), rng.random((6, 3))
    w = np.arange(6.0)
    per = np.mean((t - p) ** 2, axis=-1)
    mse = specc.losses.MeanSquaredError
    assert mse()(t, p) == pytest.approx(per.mean())
    assert mse(reduction="mean")(t, p, sample_weight=w) == pytest.approx(np.sum(w * per) / 6)
    assert mse(reduction="sum")(t, p, sample_weight=w) == pytest.approx(np.sum(w * per))
    assert mse(reduction="mean_with_sample_weight")(t, p, sample_weight=w) == pytest.approx(np.sum(w * per) / w.sum())
    np.testing.assert_allclose(mse(reduction="none")(t, p), per, rtol=1e-6)
    np.testing.assert_allclose(mse(reduction=None)(t, p, sample_weight=w), w * per, rtol=1e-6)
    labels = np.array([0, 2, 1])
    probs = rng.random((3, 3)) + 0.1
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(specc.losses.SparseCategoricalCrossentropy(reduction="none")(labels, probs),
                               sparse_ce(probs, labels), rtol=1e-5)
    with pytest.raises(ValueError, match="Invalid value for argument `reduction`"):
        mse(reduction="average")


def test_reduction_sum_trains_and_none_evaluates_but_cannot_train():
    x, _ = data()
    yr = np.random.default_rng(2).standard_normal((len(x), 2)).astype(np.float32)
    a, b = regressor(), regressor()
    a.compile(specc.optimizers.SGD(0.01), specc.losses.MeanSquaredError(reduction="sum"))
    b.compile(specc.optimizers.SGD(0.01 * len(x)), "mse")
    assert a.evaluate(x, yr, batch_size=len(x), verbose=0) == pytest.approx(
        len(x) * b.evaluate(x, yr, verbose=0), rel=1e-5)
    for m in (a, b):
        m.fit(x, yr, batch_size=len(x), epochs=2, verbose=0)
    close_weights(a, b, rtol=1e-5, atol=1e-7)
    none = regressor()
    none.compile("sgd", specc.losses.MeanSquaredError(reduction="none"))
    d = none.predict(x, verbose=0).astype(np.float64) - yr
    assert none.evaluate(x, yr, verbose=0) == pytest.approx(np.mean(d ** 2), rel=1e-5)  # Keras reports the mean
    with pytest.raises(ValueError, match="reduction='none'.*one number to minimise"):
        none.fit(x, yr, verbose=0)


@pytest.mark.parametrize("targets, units, expected", [
    ("sparse", 3, "sparse_categorical_crossentropy"),
    ("onehot", 3, "categorical_crossentropy"),
    ("binary", 1, "binary_crossentropy"),
])
@pytest.mark.parametrize("alias", ["crossentropy", "ce"])
def test_crossentropy_loss_alias_picks_the_keras_loss(targets, units, expected, alias):
    """keras.src.trainers.compile_utils.get_loss: "crossentropy"/"ce" are binary for one-unit outputs, sparse
    for class-index targets, categorical otherwise."""
    x, y = data(classes=3 if units == 3 else 2)
    target = {"sparse": y, "onehot": np.eye(3, dtype=np.float32)[y], "binary": y[:, None].astype(np.float32)}[targets]
    activation = "softmax" if units == 3 else "sigmoid"

    def build():
        specc.set_random_seed(0)
        return specc.Sequential([specc.Input(shape=(4,)), layers.Dense(units, activation=activation)])

    a, b = build(), build()
    a.compile("sgd", alias)
    b.compile("sgd", expected)
    assert a.evaluate(x, target, verbose=0) == pytest.approx(b.evaluate(x, target, verbose=0), rel=1e-6)


@pytest.mark.parametrize("alias", ["crossentropy", "ce"])
def test_crossentropy_metric_alias_as_tf_keras_documents(alias):
    """tf.keras.Model.compile: "we do a similar conversion [to 'accuracy'] for the strings 'crossentropy' and
    'ce'": binary for one unit, sparse for class indices, categorical for one-hot; logged under the name given."""
    x, y = data()
    model = classifier()
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=[alias])
    p = model.predict(x, verbose=0).astype(np.float64)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert logs[alias] == pytest.approx(sparse_ce(p, y).mean(), rel=1e-5)
    onehot = np.eye(3, dtype=np.float32)[y]
    model.compile("sgd", "categorical_crossentropy", metrics=[alias])
    logs = model.evaluate(x, onehot, verbose=0, return_dict=True)
    assert logs[alias] == pytest.approx(sparse_ce(p, y).mean(), rel=1e-5)
    binary = regressor(units=1)
    binary.compile("sgd", "mse", metrics=[alias])
    t = (y[:, None] > 0).astype(np.float32)
    q = np.clip(binary.predict(x, verbose=0).astype(np.float64), 1e-7, 1 - 1e-7)
    expected = -(t * np.log(q) + (1 - t) * np.log(1 - q)).mean()
    assert binary.evaluate(x, t, verbose=0, return_dict=True)[alias] == pytest.approx(expected, rel=1e-5)


# --- item 5: model.optimizer, model.loss, callbacks -----------------------------------------------------------


def test_model_optimizer_and_loss_are_what_compile_got():
    model = regressor()
    assert model.optimizer is None and model.loss is None
    opt = specc.optimizers.Adam(learning_rate=0.003)
    loss = specc.losses.Huber(delta=0.5)
    model.compile(opt, loss)
    assert model.optimizer is opt and model.loss is loss
    assert model.optimizer.learning_rate == pytest.approx(0.003)
    model.compile("sgd", "mse")
    assert isinstance(model.optimizer, specc.optimizers.SGD) and model.optimizer.learning_rate == pytest.approx(0.01)
    assert model.loss == "mse"


def test_learning_rate_set_from_a_callback_changes_the_next_steps():
    """SGD, one batch per epoch, no shuffling: a learning rate of 0 from epoch 1 on leaves the weights of
    epoch 0, and a rate read back is the one set."""
    x, y = data()
    read = []

    class Freeze(specc.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.model.optimizer.learning_rate = 0.0
            read.append(float(self.model.optimizer.learning_rate))

    a, b = classifier(), classifier()
    for m in (a, b):
        m.compile(specc.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    a.fit(x, y, batch_size=len(x), epochs=3, callbacks=[Freeze()], verbose=0)
    b.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    close_weights(a, b, rtol=1e-6, atol=1e-7)
    assert read == [0.5, 0.0, 0.0] and a.optimizer.iterations == 3


def test_learning_rate_set_before_fit_is_used():
    x, y = data()
    a, b = classifier(), classifier()
    a.compile("sgd", "sparse_categorical_crossentropy")
    a.optimizer.learning_rate = 0.3
    b.compile(specc.optimizers.SGD(0.3), "sparse_categorical_crossentropy")
    for m in (a, b):
        m.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    close_weights(a, b, rtol=1e-6, atol=1e-7)
    sched = specc.optimizers.SGD(learning_rate=specc.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5))
    with pytest.raises(TypeError, match="not settable"):
        sched.learning_rate = 0.1


def test_learning_rate_scheduler_sets_each_epochs_rate_and_logs_it():
    x, y = data()
    calls = []

    def schedule(epoch, lr):
        calls.append((epoch, round(lr, 6)))
        return 0.5 if epoch == 0 else 0.0

    a, b = classifier(), classifier()
    for m in (a, b):
        m.compile(specc.optimizers.SGD(0.2), "sparse_categorical_crossentropy")
    h = a.fit(x, y, batch_size=len(x), epochs=3, callbacks=[specc.callbacks.LearningRateScheduler(schedule)], verbose=0)
    b.compile(specc.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    b.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    close_weights(a, b, rtol=1e-6, atol=1e-7)
    assert calls == [(0, 0.2), (1, 0.5), (2, 0.0)]
    assert h.history["learning_rate"] == [0.5, 0.0, 0.0]
    # Keras's older one-argument form, and a non-float is an error
    h = a.fit(x, y, epochs=2, callbacks=[specc.callbacks.LearningRateScheduler(lambda e: 0.1 * (e + 1))], verbose=0)
    assert h.history["learning_rate"] == pytest.approx([0.1, 0.2])
    with pytest.raises(ValueError, match="should be a float"):
        a.fit(x, y, callbacks=[specc.callbacks.LearningRateScheduler(lambda e, lr: "fast")], verbose=0)


def test_every_callback_hook_gets_keras_logs():
    """The order and logs keras 3.15 gives (recorded from it): {} at begins, running logs after each batch,
    epoch logs with val_ after validation (which runs the test hooks), predict outputs per batch."""
    events = []

    class Recorder(specc.callbacks.Callback):
        pass

    for hook in ("on_train_begin", "on_train_end", "on_test_begin", "on_test_end", "on_predict_begin",
                 "on_predict_end"):
        setattr(Recorder, hook, lambda self, logs=None, _h=hook: events.append((_h, None, logs)))
    for hook in ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end",
                 "on_test_batch_begin", "on_test_batch_end", "on_predict_batch_begin", "on_predict_batch_end"):
        setattr(Recorder, hook, lambda self, i, logs=None, _h=hook: events.append((_h, i, logs)))

    x, y = data(10)
    model = classifier()
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    h = model.fit(x, y, batch_size=4, epochs=3, initial_epoch=1, validation_data=(x, y), validation_freq=2,
                  callbacks=[Recorder()], verbose=0)
    names = [(e[0], e[1]) for e in events]
    batches = [("on_train_batch_begin", 0), ("on_train_batch_end", 0), ("on_train_batch_begin", 1),
               ("on_train_batch_end", 1), ("on_train_batch_begin", 2), ("on_train_batch_end", 2)]
    tests = [("on_test_begin", None), ("on_test_batch_begin", 0), ("on_test_batch_end", 0),
             ("on_test_batch_begin", 1), ("on_test_batch_end", 1), ("on_test_batch_begin", 2),
             ("on_test_batch_end", 2), ("on_test_end", None)]
    assert names == [("on_train_begin", None), ("on_epoch_begin", 1), *batches, *tests, ("on_epoch_end", 1),
                     ("on_epoch_begin", 2), *batches, ("on_epoch_end", 2), ("on_train_end", None)]
    logs = {(name, i): entry for name, i, entry in events}
    assert logs[("on_train_begin", None)] == {} and logs[("on_epoch_begin", 1)] == {}
    assert logs[("on_train_batch_begin", 0)] == {} and set(logs[("on_train_batch_end", 0)]) == {"loss", "accuracy"}
    assert set(logs[("on_epoch_end", 1)]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert logs[("on_test_end", None)]["loss"] == logs[("on_epoch_end", 1)]["val_loss"]
    assert logs[("on_train_end", None)] == logs[("on_epoch_end", 2)] == {k: v[-1] for k, v in h.history.items()
                                                                           if not k.startswith("val_")}
    events.clear()
    out = model.predict(x, batch_size=4, callbacks=[Recorder()], verbose=0)
    assert [(e[0], e[1]) for e in events] == [("on_predict_begin", None)] + [
        (f"on_predict_batch_{w}", b) for b in range(3) for w in ("begin", "end")] + [("on_predict_end", None)]
    np.testing.assert_array_equal(np.concatenate([e[2]["outputs"] for e in events if e[0] == "on_predict_batch_end"]),
                                  out)
    events.clear()
    model.evaluate(x, y, batch_size=5, callbacks=[Recorder()], verbose=0)
    assert [e[0] for e in events] == ["on_test_begin"] + ["on_test_batch_begin", "on_test_batch_end"] * 2 + \
        ["on_test_end"]


def test_on_batch_end_is_the_older_name_of_on_train_batch_end():
    seen = []

    class Old(specc.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            seen.append(batch)

    x, y = data(8)
    model = classifier()
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=4, callbacks=[Old()], verbose=0)
    assert seen == [0, 1]


def test_history_is_model_history_with_params():
    x, y = data()
    model = classifier()
    model.compile("sgd", "sparse_categorical_crossentropy")
    h = model.fit(x, y, epochs=2, batch_size=10, verbose=0)
    assert isinstance(h, specc.callbacks.History) and model.history is h
    assert h.params == {"verbose": 0, "epochs": 2, "steps": 3} and h.epoch == [0, 1]
    mine = specc.callbacks.History()
    model.fit(x, y, epochs=2, callbacks=[mine], verbose=0)
    assert mine.epoch == [0, 1] and len(mine.history["loss"]) == 2


def test_progbar_logger_shows_one_bar(capsys):
    x, y = data()
    model = classifier()
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, callbacks=[specc.callbacks.ProgbarLogger()], verbose=1)
    out = capsys.readouterr().out
    assert out.count("Epoch 1/2") == 1 and out.count("Epoch 2/2") == 1
    model.fit(x, y, epochs=1, callbacks=[specc.callbacks.ProgbarLogger()], verbose=0)
    assert capsys.readouterr().out == ""


def test_backup_and_restore_resumes_an_interrupted_fit(tmp_path):
    """Keras: a backup after every epoch; a fit interrupted by an error keeps it, and the next fit with the
    same callback restores weights and optimizer state and continues at the next epoch; a fit that completes
    deletes the backup. Momentum SGD, no shuffling: the resumed run ends with the uninterrupted one's weights."""
    x, y = data()
    backup = tmp_path / "backup"

    class Interrupt(specc.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    def build():
        m = classifier()
        m.compile(specc.optimizers.SGD(0.2, momentum=0.9), "sparse_categorical_crossentropy")
        return m

    reference = build()
    reference.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0)
    model = build()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0,
                  callbacks=[specc.callbacks.BackupAndRestore(backup), Interrupt()])
    assert sorted(os.listdir(backup)) == ["latest.weights.npz", "training_metadata.json"]
    resumed = build()
    h = resumed.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0,
                    callbacks=[specc.callbacks.BackupAndRestore(backup)])
    assert h.epoch == [2, 3]
    close_weights(resumed, reference, rtol=1e-6, atol=1e-7)
    assert not backup.exists()
    with pytest.raises(ValueError, match="save_freq"):
        specc.callbacks.BackupAndRestore(backup, save_freq="batch")


def test_backup_and_restore_refuses_a_backup_of_another_model(tmp_path):
    x, y = data()
    m = classifier()
    m.compile("sgd", "sparse_categorical_crossentropy")
    keep = specc.callbacks.BackupAndRestore(tmp_path / "b", delete_checkpoint=False)
    m.fit(x, y, epochs=1, verbose=0, callbacks=[keep])
    other = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(5), layers.Dense(3)])
    other.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="BackupAndRestore cannot resume .*not this model's"):
        other.fit(x, y, verbose=0, callbacks=[specc.callbacks.BackupAndRestore(tmp_path / "b")])


# --- item 6: progress bars, summary arguments, jit_compile ---------------------------------------------------


def test_evaluate_and_predict_show_progress_at_verbose_1(capsys):
    x, y = data(20)
    model = classifier()
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.evaluate(x, y, batch_size=5, verbose=1)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("4/4") and "loss: " in out[0] and "accuracy: " in out[0]
    model.predict(x, batch_size=8, verbose=1)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("3/3") and "/step" in out[0]
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)
    assert capsys.readouterr().out == ""
    model.evaluate(x, y, verbose="auto")  # Keras: "auto" is 1 for evaluate and predict
    assert capsys.readouterr().out.startswith("1/1")
    with pytest.raises(ValueError, match="verbose must be"):
        model.predict(x, verbose=3)


def summary_lines(model, **kwargs):
    out = []
    model.summary(print_fn=out.append, **kwargs)
    return "\n".join(out).splitlines()


def test_summary_line_length_positions_and_layer_range():
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, name="d1"), layers.Dense(3, name="d2"),
                              layers.Dense(2, name="out")])
    table = [line for line in summary_lines(model, line_length=60) if line[:1] in "┏┃┡│├└"]
    assert table and {len(line) for line in table} == {60}
    default = [line for line in summary_lines(model) if line[:1] in "┏┃┡│├└"]
    assert {len(line) for line in default} == {88}
    relative = summary_lines(model, positions=[0.5, 0.8, 1.0], line_length=70)
    assert relative == summary_lines(model, positions=[35, 56, 70], line_length=70)  # Keras: fractions or columns
    assert relative != summary_lines(model, line_length=70)
    rows = [line for line in summary_lines(model, layer_range=["d2", "out"]) if line.startswith("│")]
    assert [r.split()[1] for r in rows] == ["d2", "out"]
    rows = [line for line in summary_lines(model, layer_range=["d", "d"]) if line.startswith("│")]
    assert [r.split()[1] for r in rows] == ["d1", "d2"]  # patterns match at the start of names, both ends inclusive
    assert any("Total params: 35" in line for line in summary_lines(model, layer_range=["out", "out"]))
    with pytest.raises(ValueError, match="do not match the layer names"):
        model.summary(layer_range=["zz", "out"])
    with pytest.raises(ValueError, match="list or tuple of length 2"):
        model.summary(layer_range=["d1"])
    with pytest.raises(ValueError, match="line_length"):
        model.summary(line_length=0)


def test_jit_compile_values():
    model = regressor()
    for value, expected in ((True, True), (False, False), ("auto", True)):
        model.compile("sgd", "mse", jit_compile=value)
        assert model.jit_compile is expected
    with pytest.warns(UserWarning, match="Disabling `jit_compile`"):
        model.compile("sgd", "mse", jit_compile=True, run_eagerly=True)
    assert model.jit_compile is False
    with pytest.raises(ValueError, match="jit_compile must be True, False or \"auto\""):
        model.compile("sgd", "mse", jit_compile="xla")


# --- the same calls on Keras 3 (skipped without it) ----------------------------------------------------------


@pytest.fixture
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


def test_sample_weighted_evaluate_matches_keras(keras):
    x, y = data()
    w = np.linspace(0.2, 2.0, len(x)).astype(np.float32)
    results = []
    for lib in (keras, specc):
        lib.utils.set_random_seed(0) if lib is keras else specc.set_random_seed(0)
        m = lib.Sequential([lib.Input(shape=(4,)), lib.layers.Dense(3, activation="softmax")])
        if lib is specc:
            m.set_weights(results[0][1])
        m.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"], weighted_metrics=["accuracy"])
        results.append((m.evaluate(x, y, sample_weight=w, batch_size=5, verbose=0, return_dict=True), m.get_weights()))
    (theirs, _), (ours, _) = results
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_train_on_batch_forms_and_step_counts_match_keras(keras):
    x, y = data(10)

    def run(lib):
        m = lib.Sequential([lib.Input(shape=(4,)), lib.layers.Dense(3, activation="softmax")])
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        forms = [type(m.train_on_batch(x, y)).__name__, sorted(m.train_on_batch(x, y, return_dict=True))]
        counts = []

        class Count(lib.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                counts.append(0)

            def on_train_batch_end(self, batch, logs=None):
                counts[-1] += 1

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = m.fit(x, y, batch_size=4, epochs=3, steps_per_epoch=2, callbacks=[Count()], verbose=0)
        return forms, counts, h.params["steps"]

    assert run(specc) == run(keras)
