"""Every layer type and every option that changes its maths, checked against finite differences
(float64, central differences) through the engine. One table, one test."""

from __future__ import annotations

import pytest

from .gradcheck import check

ACTIVATIONS = ["linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "sigmoid", "hard_sigmoid",
               "tanh", "softmax", "log_softmax", "softplus", "softsign", "silu", "exponential"]

# (id, layer, input shapes, options)
CASES = [
    ("dense", {"type": "Dense", "units": 4}, [[5]], {}),
    ("dense_no_bias", {"type": "Dense", "units": 3, "use_bias": False}, [[5]], {}),
    ("dense_3d", {"type": "Dense", "units": 3}, [[4, 5]], {}),
    *[(f"dense_{a}", {"type": "Dense", "units": 4, "activation": a}, [[5]], {}) for a in ACTIVATIONS],
    *[(f"activation_{a}", {"type": "Activation", "activation": a}, [[2, 6]], {}) for a in ACTIVATIONS],
    ("dropout_training", {"type": "Dropout", "rate": 0.4}, [[6]], {"training": True}),
    ("dropout_inference", {"type": "Dropout", "rate": 0.4}, [[6]], {}),
]


@pytest.mark.parametrize("layer,shapes,options", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gradient_matches_finite_differences(layer, shapes, options):
    check(layer, shapes, **options)
