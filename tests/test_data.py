"""Dataset sources: the bundled scikit-learn sets read straight from their files equal scikit-learn's
own loaders; splits are stratified and seeded; normalisation is fitted on the training part only."""

from __future__ import annotations

import numpy as np
import pytest

from specc.data.prepare import _split, load
from specc.data.sources import BUILTIN, builtin
from specc.spec import load_spec_text


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_bundled_files_equal_scikit_learn_loaders(name):
    import sklearn.datasets

    x, y = getattr(sklearn.datasets, BUILTIN[name])(return_X_y=True)
    got = builtin(name)
    np.testing.assert_array_equal(got.x, x.astype(np.float32))
    np.testing.assert_array_equal(got.y, y)


def test_split_is_stratified_and_seeded():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    test, train = _split(len(labels), 0.2, labels, np.random.default_rng(0))
    assert np.bincount(labels[test]).tolist() == [10, 6, 4]
    assert len(np.intersect1d(test, train)) == 0 and len(test) + len(train) == 100
    again, _ = _split(len(labels), 0.2, labels, np.random.default_rng(0))
    np.testing.assert_array_equal(test, again)


def test_normalization_uses_training_statistics_only():
    text = """
specc: 1
seed: 3
model:
  input: [64]
  layers: [{type: Dense, units: 10, activation: softmax}]
data: {source: digits, test_split: 0.25, normalize: true}
compile: {loss: sparse_categorical_crossentropy}
"""
    spec, errors = load_spec_text(text, "n.yaml")
    assert not errors
    ds = load(spec)
    x = ds.x_train[0]
    varying = x.std(axis=0) > 0
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0)[varying], 1, rtol=1e-4)
    # the test part is transformed with the training statistics, so it is not exactly standardised
    assert abs(ds.x_test[0].mean(axis=0)).max() > 1e-3
