"""A convolution + 2 x 2 max pooling pair on the direct path (kernels/conv_pool.py) when its input gradient is
needed: the kernel, bias and input gradients come straight from the pooling windows' winners
(_codes_backward_range). They match the two layers run apart in float64 (the same bar as the pair's other
gradients), and are the same bits at one and two threads."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from specc.kernels import native

from .test_fusion import CASES, DIRECT, apart_float64, engine_for, run, sample

needs_direct = pytest.mark.skipif(native.conv_pool_tiles is None,
                                  reason="the direct path needs AVX-512 or AVX2 with FMA (native kernels)")


def _perturbed(layers, shapes):
    fused = engine_for(layers, shapes, True)
    fused.params[...] += np.random.default_rng(5).standard_normal(fused.params.shape).astype(np.float32) * 0.1
    fused.input_gradients = True
    return fused


@needs_direct
@pytest.mark.parametrize("layers,shapes", [c[1:] for c in DIRECT + CASES[:2]], ids=[c[0] for c in DIRECT + CASES[:2]])
def test_direct_path_input_gradient_matches_the_layers_apart(layers, shapes):
    x = sample(shapes)
    fused = _perturbed(layers, shapes)
    assert fused.plan[0].layer._shapes_of(x).geometry.taps is not None  # the direct path
    out, grads, dx = run(fused, x)
    _, grads64, dx64 = run(apart_float64(layers, shapes, fused), x.astype(np.float64))
    for got, want in ((grads, grads64), (dx, dx64)):
        scale = np.abs(want).max()
        assert scale > 0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


@needs_direct
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("layers,shapes", [c[1:] for c in DIRECT[:2]], ids=[c[0] for c in DIRECT[:2]])
def test_direct_path_input_gradient_same_bits_at_one_and_two_threads(layers, shapes):
    x = sample(shapes)
    results = [run(_perturbed(layers, shapes), x, threads=threads) for threads in (1, 2)]
    for a, b in zip(results[0], results[1]):
        assert np.array_equal(a, b)
