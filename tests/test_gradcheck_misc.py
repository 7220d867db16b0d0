"""Normalisation, reshaping, merging and Embedding layers against finite differences (float64, through the
engine), plus the runtime behaviours a gradient check cannot see (moving statistics, ties, bad ids)."""

from __future__ import annotations

import numpy as np
import pytest

from .gradcheck import build, check

BN = {"type": "BatchNormalization"}
LN = {"type": "LayerNormalization"}
TRAIN = {"training": True}

NORM_CASES = [
    ("bn_training", BN, [[5]], TRAIN),
    ("bn_inference", BN, [[5]], {}),
    ("bn_3d_training", BN, [[4, 3]], TRAIN),
    ("bn_3d_inference", BN, [[4, 3]], {}),
    ("bn_image_training", BN, [[3, 3, 2]], TRAIN),
    ("bn_axis1_training", dict(BN, axis=1), [[4, 3]], TRAIN),
    ("bn_axis1_inference", dict(BN, axis=1), [[4, 3]], {}),
    ("bn_axis_neg2_training", dict(BN, axis=-2), [[2, 4, 3]], TRAIN),
    ("bn_no_scale_training", dict(BN, scale=False), [[5]], TRAIN),
    ("bn_no_center_training", dict(BN, center=False), [[5]], TRAIN),
    ("bn_no_affine_training", dict(BN, center=False, scale=False), [[5]], TRAIN),
    ("bn_no_affine_inference", dict(BN, center=False, scale=False), [[5]], {}),
    ("bn_epsilon_momentum_training", dict(BN, epsilon=0.1, momentum=0.5), [[5]], TRAIN),
    # A frozen BN runs in inference mode even when the model trains (Keras's rule, applied by the engine).
    ("bn_frozen_training", dict(BN, trainable=False), [[5]], TRAIN),
    ("ln", LN, [[5]], {}),
    ("ln_3d", LN, [[4, 6]], {}),
    ("ln_training", LN, [[4, 6]], TRAIN),
    ("ln_axis1", dict(LN, axis=1), [[4, 6]], {}),
    ("ln_no_scale", dict(LN, scale=False), [[4, 6]], {}),
    ("ln_no_center", dict(LN, center=False), [[4, 6]], {}),
    ("ln_no_affine", dict(LN, center=False, scale=False), [[4, 6]], {}),
    ("ln_epsilon", dict(LN, epsilon=0.5), [[6]], {}),
]

RESHAPE_CASES = [
    ("flatten", {"type": "Flatten"}, [[2, 3, 4]], {}),
    ("reshape", {"type": "Reshape", "target_shape": [3, 4]}, [[2, 6]], {}),
    ("reshape_infer", {"type": "Reshape", "target_shape": [-1, 2]}, [[2, 6]], {}),
    ("permute", {"type": "Permute", "dims": [3, 1, 2]}, [[2, 3, 4]], {}),
    ("permute_2d", {"type": "Permute", "dims": [2, 1]}, [[3, 4]], {}),
    ("repeat_vector", {"type": "RepeatVector", "n": 3}, [[4]], {}),
    ("zero_padding1d", {"type": "ZeroPadding1D"}, [[4, 2]], {}),
    ("zero_padding1d_pair", {"type": "ZeroPadding1D", "padding": [0, 2]}, [[4, 2]], {}),
    ("zero_padding2d", {"type": "ZeroPadding2D"}, [[3, 3, 2]], {}),
    ("zero_padding2d_pairs", {"type": "ZeroPadding2D", "padding": [[1, 0], [2, 1]]}, [[3, 2, 2]], {}),
    ("zero_padding2d_ints", {"type": "ZeroPadding2D", "padding": [0, 2]}, [[3, 2, 2]], {}),
    ("cropping1d", {"type": "Cropping1D"}, [[5, 2]], {}),
    ("cropping1d_pair", {"type": "Cropping1D", "cropping": [0, 2]}, [[5, 2]], {}),
    ("cropping2d_default", {"type": "Cropping2D"}, [[3, 3, 2]], {}),
    ("cropping2d_pairs", {"type": "Cropping2D", "cropping": [[1, 0], [2, 1]]}, [[4, 5, 2]], {}),
    ("cropping2d_ints", {"type": "Cropping2D", "cropping": 1}, [[4, 5, 2]], {}),
    ("upsampling1d", {"type": "UpSampling1D"}, [[3, 2]], {}),
    ("upsampling1d_size3", {"type": "UpSampling1D", "size": 3}, [[3, 2]], {}),
    ("upsampling2d", {"type": "UpSampling2D"}, [[3, 2, 2]], {}),
    ("upsampling2d_size", {"type": "UpSampling2D", "size": [2, 3]}, [[3, 2, 2]], {}),
    ("upsampling2d_bilinear", {"type": "UpSampling2D", "interpolation": "bilinear"}, [[3, 4, 2]], {}),
    ("upsampling2d_bilinear_size", {"type": "UpSampling2D", "interpolation": "bilinear", "size": [3, 2]},
     [[3, 2, 2]], {}),
    ("upsampling2d_bilinear_1px", {"type": "UpSampling2D", "interpolation": "bilinear", "size": 3},
     [[1, 2, 1]], {}),
]

MERGE_SHAPES = {
    "2": [[3, 4], [3, 4]],
    "3": [[3, 4], [3, 4], [3, 4]],
    "broadcast": [[3, 4], [1, 4]],
    "broadcast_rank": [[3, 4], [4]],  # Keras inserts size-1 axes after the batch axis
    "broadcast_3": [[2, 1, 3], [1, 4, 3], [2, 4, 1]],
}
MERGE_CASES = [
    (f"{op.lower()}_{k}", {"type": op}, shapes, {})
    for op in ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"]
    for k, shapes in MERGE_SHAPES.items()
    if not (op == "Subtract" and len(shapes) != 2)
] + [
    ("concatenate_last", {"type": "Concatenate"}, [[3, 2], [3, 4]], {}),
    ("concatenate_axis1", {"type": "Concatenate", "axis": 1}, [[2, 3], [4, 3]], {}),
    ("concatenate_axis_neg2_3", {"type": "Concatenate", "axis": -2}, [[2, 3], [1, 3], [3, 3]], {}),
    ("concatenate_image_axis2", {"type": "Concatenate", "axis": 2}, [[2, 1, 2], [2, 3, 2]], {}),
]

EMB = {"type": "Embedding", "input_dim": 7, "output_dim": 3}
EMBEDDING_CASES = [
    ("embedding", EMB, [[5]], {"integer_inputs": 7}),
    ("embedding_2d_ids", EMB, [[2, 4]], {"integer_inputs": 7}),
    ("embedding_few_ids", dict(EMB, input_dim=3), [[6]], {"integer_inputs": 3}),  # many repeats: scatter-add
]

CASES = NORM_CASES + RESHAPE_CASES + MERGE_CASES + EMBEDDING_CASES


@pytest.mark.parametrize("layer,shapes,options", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gradient_matches_finite_differences(layer, shapes, options):
    check(layer, shapes, **options)


# --- what finite differences do not see --------------------------------------------------------------


def _weights(engine):
    return dict(zip((s.name for s in engine.steps[0].specs), engine.steps[0].weights, strict=True))


def test_batchnorm_updates_moving_statistics_only_in_training():
    engine = build(dict(BN, momentum=0.9), [[2, 3]])
    w = _weights(engine)
    w["moving_mean"][...] = [0.5, -1.0, 2.0]
    w["moving_variance"][...] = [1.0, 2.0, 0.5]
    x = np.random.default_rng(0).standard_normal((4, 2, 3)) * 2 + 1
    engine.forward([x], training=False)
    np.testing.assert_array_equal(w["moving_mean"], [0.5, -1.0, 2.0])
    engine.forward([x], training=True)
    rows = x.reshape(-1, 3)
    np.testing.assert_allclose(w["moving_mean"], 0.9 * np.array([0.5, -1.0, 2.0]) + 0.1 * rows.mean(0))
    np.testing.assert_allclose(w["moving_variance"], 0.9 * np.array([1.0, 2.0, 0.5]) + 0.1 * rows.var(0))  # biased


def test_frozen_batchnorm_keeps_its_statistics():
    engine = build(dict(BN, trainable=False), [[3]])
    before = engine.get_weights()
    engine.forward([np.random.default_rng(0).standard_normal((4, 3)) + 3], training=True)
    for a, b in zip(before, engine.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op,first", [("Maximum", 2.0), ("Minimum", 1.0)])
def test_max_min_ties_send_the_gradient_to_the_first_input(op, first):
    engine = build({"type": op}, [[2], [2], [2]])
    xs = [np.array([[first, 0.0]]), np.array([[first, 0.5]]), np.array([[1.5, 0.5]])]
    engine.forward(xs)
    engine.backward([np.array([[1.0, 10.0]])])
    grads = [engine._input_grads[n] for n in engine.input_names]
    np.testing.assert_array_equal(grads[0], [[1.0, 10.0 if op == "Minimum" else 0.0]])
    np.testing.assert_array_equal(grads[1], [[0.0, 0.0 if op == "Minimum" else 10.0]])
    np.testing.assert_array_equal(grads[2], [[0.0, 0.0]])


def test_embedding_looks_up_rows_and_accepts_float_or_int_ids():
    engine = build(EMB, [[3]])
    table = engine.steps[0].weights[0]
    for ids in (np.array([[0, 6, 2]]), np.array([[0.0, 6.0, 2.0]])):
        y, _ = engine.steps[0].layer.forward(engine.steps[0].weights, ids, False, None)
        np.testing.assert_array_equal(y, table[[0, 6, 2]][None])


@pytest.mark.parametrize("bad", [7, -1, 2.5, np.nan])
def test_embedding_rejects_ids_out_of_range(bad):
    engine = build(EMB, [[3]])
    with pytest.raises(ValueError, match=r"\[0, 6\]"):
        engine.forward([np.array([[1.0, bad, 2.0]])])


def test_embedding_has_no_input_gradient():
    engine = build(EMB, [[3]])
    engine.forward([np.array([[1.0, 1.0, 4.0]])])
    engine.backward([np.ones((1, 3, 3))])
    np.testing.assert_array_equal(engine._input_grads[engine.input_names[0]], np.zeros((1, 3)))
    table_grad = engine.grads.reshape(7, 3)
    np.testing.assert_array_equal(table_grad[1], [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(table_grad[4], [1.0, 1.0, 1.0])
    assert table_grad.sum() == 9.0
