"""Elementwise maths written as arithmetic so that LLVM vectorises the loops around it
(specc/kernels/recurrent.py: the LSTM's default gates), against NumPy over its whole range."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from specc.kernels import recurrent


@numba.njit(cache=True)
def _apply(which, x, out):
    for i in range(x.size):
        if which == 0:
            out[i] = recurrent._exp(x[i])
        elif which == 1:
            out[i] = recurrent._sigmoid_v(x[i])
        else:
            out[i] = recurrent._tanh_v(x[i])


def _run(which, x):
    out = np.empty_like(x)
    _apply(which, x, out)
    return out


def test_exp_is_within_1e13_relative_over_its_range_and_clamps_outside():
    x = np.concatenate([np.linspace(-708, 709, 400_001), np.random.default_rng(0).standard_normal(10_000),
                        [0.0, -0.0, 1e-300, -1e-300, 0.5 * np.log(2), -0.5 * np.log(2)]])
    np.testing.assert_allclose(_run(0, x), np.exp(x), rtol=1e-13, atol=0)
    # clamped outside, not 0, inf or a wrapped exponent
    np.testing.assert_allclose(_run(0, np.array([-1000.0, 1000.0])), np.exp([-708.0, 709.0]), rtol=1e-13)


def _sigmoid(x):
    """The logistic function as the LSTM's scalar path computes it: its input clamped to [-700, 700]."""
    return 1 / (1 + np.exp(-np.clip(x, -700, 700)))


@pytest.mark.parametrize("which,reference", [(1, _sigmoid), (2, np.tanh)], ids=["sigmoid", "tanh"])
def test_gates_match_numpy(which, reference):
    x = np.concatenate([np.linspace(-800, 800, 200_001), np.linspace(-1, 1, 100_001), [0.0, -0.0, 1e-20]])
    np.testing.assert_allclose(_run(which, x), reference(x), rtol=1e-13, atol=0)
    assert np.signbit(_run(2, np.array([-0.0]))[0])  # tanh(-0) = -0
    f32 = np.random.default_rng(1).standard_normal(1000).astype(np.float32) * 5
    np.testing.assert_allclose(_run(which, f32), reference(f32.astype(np.float64)).astype(np.float32), rtol=1e-6)


def test_python_versions_agree_with_the_compiled_ones():
    """run_eagerly runs these as Python: the bit trick of _exp has a NumPy version there."""
    x = np.array([-708.0, -30.5, -1.0, -1e-9, 0.0, 0.3, 2.0, 40.0, 709.0])
    for which, fn in enumerate((recurrent._exp, recurrent._sigmoid_v, recurrent._tanh_v)):
        python = np.array([fn.py_func(v) for v in x])
        np.testing.assert_allclose(python, _run(which, x), rtol=1e-13, atol=0)
