"""The thread limits an engine pass sets for layers that run threads of their own (BLAS and sgemm on one thread,
Engine._thread_limits): set during the pass at several threads, restored after it (also when the pass fails and
after a loop that holds them), and none at one thread."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import specc
from specc import layers

pytestmark = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")


def cnn():
    return specc.Sequential([specc.Input(shape=(8, 8, 2)), layers.Conv2D(4, 3, activation="relu"),
                             layers.MaxPooling2D(), layers.Flatten(), layers.Dense(3, activation="softmax")])


@pytest.fixture
def two_threads():
    from specc.kernels import configure_threads, thread_count

    before = thread_count()
    configure_threads(2)
    try:
        yield
    finally:
        configure_threads(before)


def numpy_blas_threads():
    from specc.kernels import blas

    return blas.NUMPY_OPENBLAS.scipy_openblas_get_num_threads64_() if blas.HAVE_NUMPY_BLAS else None


def observed_limits(engine, seen):
    """Makes the engine's first layer record the product threads (and, where specc sets it directly,
    OpenBLAS's) while it runs."""
    from specc.kernels import product_threads

    step = engine.plan[0]
    layer = step.layer
    forward = layer.forward

    def spy(*args):
        seen.append((product_threads(), numpy_blas_threads()))
        return forward(*args)

    layer.forward = spy
    return lambda: setattr(layer, "forward", forward)


def test_a_pass_at_two_threads_limits_the_products_and_restores_them(two_threads):
    from specc.kernels import product_threads

    model = cnn()
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 2)).astype(np.float32)
    model.predict(x, verbose=0)
    engine = model._engine()
    seen = []
    undo = observed_limits(engine, seen)
    blas_before = numpy_blas_threads()
    try:
        assert product_threads() == 2
        model.predict(x, verbose=0)
        model(x)
        engine.forward([x], reuse=True)
        assert [s[0] for s in seen] == [1, 1, 1]
        assert all(s[1] in (None, 1) for s in seen)
        assert product_threads() == 2 and numpy_blas_threads() == blas_before
        with engine.held_threads():
            assert product_threads() == 1
            engine.forward([x])
        assert product_threads() == 2 and seen[-1][0] == 1 and numpy_blas_threads() == blas_before
    finally:
        undo()


def test_a_failing_pass_restores_the_limits(two_threads):
    from specc.kernels import product_threads

    model = cnn()
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 2)).astype(np.float32)
    model.predict(x, verbose=0)
    engine = model._engine()
    layer = engine.plan[0].layer

    def fail(*args):
        raise RuntimeError("inside the pass")

    layer.forward = fail
    try:
        with pytest.raises(RuntimeError, match="inside the pass"):
            engine.forward([x], reuse=True)
    finally:
        del layer.forward
    assert product_threads() == 2


def test_one_thread_sets_no_limits():
    from specc.kernels import configure_threads, thread_count

    before = thread_count()
    configure_threads(1)
    try:
        model = cnn()
        engine = model._engine()
        assert engine._own_threads and engine._thread_limits() is None
    finally:
        configure_threads(before)
