"""A convolution and the max pooling that reads it, run as one step (specc/layers/fusion.py): the engine
fuses them only where nothing else reads the convolution's output, the pair gives bit for bit what the
two layers give apart (outputs, weight and input gradients; batches of several chunks, ReLU ties
included), the same at 1 and 2 threads, and its gradients match finite differences in float64."""

from __future__ import annotations

import os
import platform

import llvmlite.binding
import numba
import numpy as np
import pytest
import yaml

from specc.engine import Engine
from specc.kernels import native
from specc.layers.fusion import ConvPool
from specc.spec import load_spec_text

from .gradcheck import build, check

IMG1, IMG5 = [[12, 11, 1]], [[9, 8, 5]]  # one channel (tap-major windows) and five (row-major windows)


def conv2d(**kw):
    return {"type": "Conv2D", "filters": 4, "kernel_size": [3, 3], **kw}


def pool2d(**kw):
    return {"type": "MaxPooling2D", **kw}


# (id, [conv, pool], input shapes)
CASES = [
    ("c1_relu_pool2", [conv2d(activation="relu"), pool2d()], IMG1),
    ("c5_linear_pool2_odd", [conv2d(), pool2d()], IMG5),  # 7 x 6 -> 3 x 3: the last row is in no window
    ("c1_same_strided_pool3_same", [conv2d(activation="relu", padding="same", strides=2),
                                    pool2d(pool_size=3, strides=2, padding="same")], IMG1),
    ("c5_no_bias_dilated_overlapping", [conv2d(use_bias=False, dilation_rate=2, activation="relu"),
                                        pool2d(pool_size=2, strides=1)], IMG5),
    ("c5_pool_non_square", [conv2d(activation="relu", kernel_size=[2, 3]), pool2d(pool_size=[2, 3])], IMG5),
    ("conv1d_causal", [{"type": "Conv1D", "filters": 3, "kernel_size": 3, "padding": "causal",
                        "activation": "relu"}, {"type": "MaxPooling1D", "pool_size": 3, "strides": 2}], [[12, 2]]),
    # 'same' with stride 2 on an even side pads only below or right, none above or left: the direct path,
    # whose windows read the unpadded input, must not take these.
    ("c6_same_strided_even", [conv2d(padding="same", strides=2, activation="relu"), pool2d()], [[8, 8, 6]]),
    ("c2_same_strided_even_height", [conv2d(padding="same", strides=2), pool2d()], [[12, 10, 2]]),  # only the
    # last pooled row reads the padding
]
BATCH = 37  # odd, and large enough for several chunks

# The direct path (kernels/native/conv_pool_tiles.py): float32 on AVX-512 or AVX2, a convolution without padding and 2 x 2
# pooling with stride 2. Its forward gives the layers' bits; its kernel and bias gradients (taken when no
# input gradient is needed, as for a model's first layer in training) sum the same products in another order.
DIRECT = [
    ("c1_f32", [conv2d(filters=32, activation="relu"), pool2d()], [[14, 13, 1]]),  # full 32-filter strips
    ("c3_f20_linear", [conv2d(filters=20), pool2d()], [[10, 11, 3]]),  # a masked strip; 27 taps: 9 + 9 + 9
    ("c1_f48_5x5_strided", [conv2d(filters=48, kernel_size=5, strides=2, activation="relu"), pool2d()],
     [[17, 16, 1]]),  # 32 + 16 filters; 25 taps: 9 + 9 + 4 + 1 + 1 + 1
    ("c2_f16_dilated_no_bias_one_window", [conv2d(filters=16, dilation_rate=2, use_bias=False, activation="relu"),
                                           pool2d()], [[8, 7, 2]]),  # a pooled row of 1 window (< 3 per tile)
]
needs_direct = pytest.mark.skipif(native.conv_pool_tiles is None,
                                  reason="the direct path needs AVX-512 or AVX2 with FMA (native kernels)")


def engine_for(layers, shapes, fuse, dtype=np.float32):
    engine = build(layers, shapes, fuse)
    if dtype != np.float64:
        params = engine.params
        engine = Engine(engine.graph, dtype, fuse=fuse)
        engine.params[...] = params
    return engine


def run(engine, x, threads=None):
    """Output, parameter gradients and input gradient of loss = sum(R * y)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(threads or previous)
    try:
        out = engine.forward([x], training=True)[0].copy()
        r = np.random.default_rng(4).standard_normal(out.shape).astype(x.dtype)
        engine.backward([r])
    finally:
        numba.set_num_threads(previous)
    dx = engine._input_grads[engine.input_names[0]]
    return out, engine.grads.copy(), None if dx is None else dx.copy()


def sample(shapes, dtype=np.float32):
    return np.random.default_rng(3).standard_normal((BATCH, *shapes[0])).astype(dtype)


@pytest.mark.parametrize("layers,shapes", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_pair_runs_as_one_step(layers, shapes):
    engine = engine_for(layers, shapes, True)
    assert [type(s.layer) for s in engine.plan] == [ConvPool]
    assert engine.plan[0].name == engine.steps[1].name  # the pooling's output, under its name
    assert len(engine_for(layers, shapes, False).plan) == 2


@pytest.mark.parametrize("layers,shapes", [c[1:] for c in CASES + DIRECT], ids=[c[0] for c in CASES + DIRECT])
def test_same_bits_as_the_layers_apart(layers, shapes):
    """With the input gradient, the chunked path's results are the layers' bits; the direct path's output
    is (its gradients, taken from the winners, are checked in tests/test_conv_pool_dx.py)."""
    x = sample(shapes)
    engine = engine_for(layers, shapes, True)
    direct = engine.plan[0].layer._shapes_of(x).geometry.taps is not None
    fused = run(engine, x)
    apart = run(engine_for(layers, shapes, False), x)
    for a, b in zip(fused[:1] if direct else fused, apart):
        assert np.array_equal(a, b)


def test_relu_ties_route_no_gradient():
    """A kernel and bias that make every convolution output negative: each window is a tie of ReLU zeros,
    through which no gradient may pass, to the weights or to the input."""
    layers, shapes = CASES[0][1:]
    x = np.abs(sample(shapes))
    results = []
    for fuse in (True, False):
        engine = engine_for(layers, shapes, fuse)
        engine.params[...] = -1.0  # kernel and bias
        results.append(run(engine, x))
    for a, b in zip(results[0][:2], results[1][:2]):
        assert np.array_equal(a, b)
    assert not results[0][0].any() and not results[0][1].any() and not results[0][2].any()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("layers,shapes", [CASES[0][1:], CASES[2][1:]], ids=[CASES[0][0], CASES[2][0]])
def test_same_bits_at_one_and_two_threads(layers, shapes):
    x = sample(shapes)
    one = run(engine_for(layers, shapes, True), x, threads=1)
    two = run(engine_for(layers, shapes, True), x, threads=2)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("layers,shapes", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gradient_matches_finite_differences(layers, shapes):
    check(layers, shapes, batch=3, training=True)


def _plan_types(model: dict) -> list[str]:
    spec, errors = load_spec_text(yaml.safe_dump({"specc": 1, "model": model}), "m.yaml")
    assert not errors, [e.text() for e in errors]
    return [type(s.layer).__name__ for s in Engine(spec.graph).plan]


@pytest.mark.parametrize("model,expected", [
    # the convolution's output is also a model output
    ({"inputs": {"x": [8, 8, 1]}, "layers": [dict(conv2d(), name="c", inputs="x"), dict(pool2d(), name="p", inputs="c")],
      "outputs": ["c", "p"]}, ["Conv2D", "MaxPooling2D"]),
    # read by a second layer
    ({"inputs": {"x": [8, 8, 1]}, "layers": [dict(conv2d(), name="c", inputs="x"), dict(pool2d(), name="p", inputs="c"),
                                             {"type": "Flatten", "name": "f", "inputs": "c"}],
      "outputs": ["p", "f"]}, ["Conv2D", "MaxPooling2D", "Flatten"]),
    # an activation the engine applies after the layer, and average pooling
    ({"input": [8, 8, 1], "layers": [conv2d(activation="tanh"), pool2d()]}, ["Conv2D", "MaxPooling2D"]),
    ({"input": [8, 8, 1], "layers": [conv2d(), {"type": "AveragePooling2D", "pool_size": 2}]},
     ["Conv2D", "AveragePooling2D"]),
    # a functional graph where the pair is not adjacent in the layer list
    ({"inputs": {"x": [8, 8, 1]}, "layers": [dict(conv2d(), name="c", inputs="x"), dict(conv2d(), name="d", inputs="x"),
                                             dict(pool2d(), name="p", inputs="c")],
      "outputs": ["p", "d"]}, ["ConvPool", "Conv2D"]),
], ids=["conv_is_an_output", "conv_read_twice", "tanh", "average_pooling", "functional"])
def test_fused_only_where_nothing_else_reads_the_convolution(model, expected):
    assert _plan_types(model) == expected



def apart_float64(layers, shapes, fused):
    """The two layers apart in float64, with the float32 engine's weights."""
    engine = engine_for(layers, shapes, False, np.float64)
    engine.params[...] = fused.params
    engine.input_gradients = fused.input_gradients
    return engine


@needs_direct
@pytest.mark.parametrize("layers,shapes", [c[1:] for c in DIRECT], ids=[c[0] for c in DIRECT])
def test_direct_path_forward_bits_and_gradients(layers, shapes):
    x = sample(shapes)
    fused = engine_for(layers, shapes, True)
    fused.params[...] += np.random.default_rng(5).standard_normal(fused.params.shape).astype(np.float32) * 0.1
    assert fused.plan[0].layer._shapes_of(x).geometry.taps is not None  # the direct path
    fused.input_gradients = False
    apart = engine_for(layers, shapes, False)
    apart.params[...] = fused.params
    apart.input_gradients = False
    out, grads, _ = run(fused, x)
    out_apart, grads_apart, _ = run(apart, x)
    assert np.array_equal(out, out_apart)
    reference = run(apart_float64(layers, shapes, fused), x.astype(np.float64))[1]
    scale = np.abs(reference).max()
    np.testing.assert_allclose(grads, reference, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(grads_apart, reference, rtol=1e-4, atol=1e-5 * scale)  # the same bar for both


@needs_direct
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("layers,shapes", [c[1:] for c in DIRECT[:2]], ids=[c[0] for c in DIRECT[:2]])
def test_direct_path_same_bits_at_one_and_two_threads(layers, shapes):
    x = sample(shapes)
    results = []
    for threads in (1, 2):
        engine = engine_for(layers, shapes, True)
        engine.input_gradients = False
        results.append(run(engine, x, threads=threads))
    for a, b in zip(results[0][:2], results[1][:2]):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("input_gradients", [False, True], ids=["no_dx", "dx"])
@pytest.mark.parametrize("layers,shapes", [CASES[0][1:], CASES[5][1:], DIRECT[0][1:]],
                         ids=[CASES[0][0], CASES[5][0], DIRECT[0][0]])
def test_inputs_and_gradients_in_other_layouts(layers, shapes, input_gradients):
    """The pair takes its input and its output's gradient as they come (the kernels copy what is not
    C-contiguous): a reversed view of x and a transposed-back dy give what contiguous copies give."""
    x = sample(shapes)
    x_view = np.ascontiguousarray(x[::-1])[::-1]  # the same values, negative strides
    results = []
    for x_in, view in ((x, False), (x_view, True)):
        engine = engine_for(layers, shapes, True)
        engine.input_gradients = input_gradients
        out = engine.forward([x_in], training=True)[0].copy()
        r = np.random.default_rng(4).standard_normal(out.shape).astype(np.float32)
        if view:
            r = np.asfortranarray(r)  # not C-contiguous for any batch of several samples
            assert not r.flags.c_contiguous and not x_in.flags.c_contiguous
        engine.backward([r])
        dx = engine._input_grads[engine.input_names[0]]
        results.append((out, engine.grads.copy(), None if dx is None else dx.copy()))
    for a, b in zip(*results):
        assert (a is None and b is None) or np.array_equal(a, b)


def _tile_outputs(shape, aligned):
    """(out float32, code int8) of `shape`, starting on a 64-byte boundary (as the workspace's arrays do)
    or just past one."""
    from specc.workspace import aligned_empty

    size = int(np.prod(shape))
    out, code = aligned_empty(size + 16, np.float32), aligned_empty(size + 64, np.int8)
    if aligned:
        return out[:size].reshape(shape), code[:size].reshape(shape)
    return out[4 : 4 + size].reshape(shape), code[16 : 16 + size].reshape(shape)


# (c, f, k, stride, relu): filter counts give full and masked strips of both ISAs' widths (AVX-512: 32
# forward, 16 backward; AVX2: 8 and 8) and a strip narrower than one vector; a 3 x 3 kernel on one channel
# at stride 1 takes the backward tile on a patch (full and masked strips), at stride 2 it may not (its taps
# are not on the pixels' grid); 27 and 25 taps take 9-, 4- and 1-tap gradient tiles.
TILE_CASES = [(1, 32, 3, 1, True), (3, 20, 3, 1, False), (1, 48, 5, 2, True), (2, 16, 2, 1, True),
              (2, 64, 3, 1, False), (1, 20, 3, 1, False), (1, 36, 3, 2, True), (1, 8, 3, 1, True),
              (1, 5, 3, 1, True), (4, 13, 3, 1, False)]


def check_tiles(c, f, k, stride, relu, aligned):
    """conv_pool_tiles' compiled kernels against the NumPy code eager mode runs (an independent reference:
    im2col, a matrix product, argmax), with outputs aligned as the engine's are and not."""
    from specc.kernels import conv_pool

    conv_pool_tiles = native.conv_pool_tiles

    rng = np.random.default_rng(7)
    n, h, w = 9, 15, 12
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    kernel = rng.standard_normal((k * k * c, f)).astype(np.float32)
    bias = rng.standard_normal(f).astype(np.float32)
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    po, qo = ho // 2, wo // 2
    geometry = conv_pool.pair((n, h, w, c), np.float32, (k, k, stride, stride, 1, 1, 0, 0), (2, 2, 2, 2, 1, 1, 0, 0),
                              (ho, wo), (po, qo), f)
    taps, spc, chunks = geometry.taps, 2, 5
    results = []
    for run_forward, run_backward in ((conv_pool_tiles.run_forward, conv_pool_tiles.run_backward),
                                      (conv_pool_tiles.forward, conv_pool_tiles.backward)):
        out, code = _tile_outputs((n, po, qo, f), aligned)
        run_forward(x, kernel, bias, True, relu, stride, stride, taps, spc, out, code)
        dp = np.random.default_rng(8).standard_normal(out.shape).astype(np.float32)
        parts = np.full((chunks, k * k * c + 1, f), np.nan, np.float32)  # scratch: its contents must not matter
        dk, db = np.full((k * k * c, f), np.nan, np.float32), np.full(f, np.nan, np.float32)
        run_backward(x, dp, code, True, stride, stride, taps, spc, parts, dk, db)
        results.append((out, code, dk, db))
    (out, code, dk, db), (out_np, code_np, dk_np, db_np) = results
    np.testing.assert_allclose(out, out_np, rtol=1e-5, atol=1e-5)
    assert (code == code_np).mean() > 0.999  # winners differ only on near ties
    assert (code == conv_pool_tiles.BLOCKED).any() == relu
    np.testing.assert_allclose(dk, dk_np, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, db_np, rtol=1e-4, atol=1e-4)


@needs_direct
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("c,f,k,stride,relu", TILE_CASES)
def test_tiles_match_their_numpy_version(c, f, k, stride, relu, aligned):
    check_tiles(c, f, k, stride, relu, aligned)


_HOST = llvmlite.binding.get_host_cpu_features()


_AVX2_HOST = platform.machine().lower() in ("x86_64", "amd64") and bool(_HOST.get("avx2") and _HOST.get("fma"))


@pytest.mark.skipif(not _AVX2_HOST, reason="runs AVX2 code")
@pytest.mark.skipif(native.conv_pool_tiles is not None and native.conv_pool_tiles.ISA == "avx2",
                    reason="this run compiles for AVX2 already: test_tiles_match_their_numpy_version covers it")
@pytest.mark.skipif(os.environ.get("SPECC_NATIVE", "1").strip() == "0", reason="native kernels off")
def test_avx2_tiles_where_numba_compiles_for_a_haswell():
    # the 256-bit tiles on this CPU (AVX-512 or not), compiled as for a Haswell: every case above
    import subprocess
    import sys

    code = """
from specc.kernels import native
from tests.test_fusion import TILE_CASES, check_tiles
assert native.mode() == "avx2" and native.conv_pool_tiles.FORWARD_COLS == 8, native.mode()
for case in TILE_CASES:
    for aligned in (True, False):
        check_tiles(*case, aligned)
print("ok")
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "ok"
