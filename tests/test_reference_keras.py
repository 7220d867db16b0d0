"""Whole example models against Keras 3 itself: the weights Keras creates, loaded unchanged through
`Engine.set_weights` (Keras's get_weights order and layouts), give the same predictions.

Skips cleanly when Keras (with the torch backend) is not installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from specc.engine import Engine
from specc.spec import load_spec
from specc.spec.resolve import resolved_dict

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.yaml"))
SKIP_KEYS = {"type", "inputs", "layers"}


def _keras_layer(cfg: dict):
    kwargs = {k: v for k, v in cfg.items() if k not in SKIP_KEYS and k != "use_causal_mask"}
    for key in ("layer", "backward_layer"):  # wrappers: the wrapped layer entries
        if isinstance(kwargs.get(key), dict):
            kwargs[key] = _keras_layer({k: v for k, v in kwargs[key].items() if k != "name" or v is not None})
    if cfg["type"] in ("SpatialDropout1D", "SpatialDropout2D"):  # Keras's __init__ takes no `trainable`
        kwargs.pop("trainable", None)
    if cfg["type"] == "Sequential":
        return keras.Sequential([_keras_layer(c) for c in cfg["layers"]], name=cfg["name"],
                                trainable=cfg["trainable"])
    if cfg["type"] == "Dropout" and kwargs.get("noise_shape") is None:
        kwargs.pop("noise_shape", None)
    for key in ("kernel_size", "strides", "pool_size", "dilation_rate", "size"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    return getattr(keras.layers, cfg["type"])(**kwargs)


def keras_model(spec):
    resolved = resolved_dict(spec)["model"]
    if "input" in resolved:
        inp = keras.Input(shape=tuple(resolved["input"]["shape"]), name=resolved["input"]["name"])
        model = keras.Sequential([inp] + [_keras_layer(c) for c in resolved["layers"]])
        return model, [inp]
    tensors = {name: keras.Input(shape=tuple(shape), name=name) for name, shape in resolved["inputs"].items()}
    inputs = list(tensors.values())
    order = {n.name: n for n in spec.graph.nodes}
    by_name = {c["name"]: c for c in resolved["layers"]}
    for node in spec.graph.nodes:  # topological order
        cfg = by_name[node.name]
        args = [tensors[r] for r in node.inbound]
        if cfg["type"] == "MultiHeadAttention":  # Keras's call: (query, value, key=..., attention_mask=...)
            roles = node.layer.input_roles or ("query", "value", "key")[: len(args)]
            named = dict(zip(roles, args))
            tensors[node.name] = _keras_layer(cfg)(named.pop("query"), named.pop("value"), **named,
                                                   use_causal_mask=cfg["use_causal_mask"])
            continue
        tensors[node.name] = _keras_layer(cfg)(args if len(args) > 1 else args[0])
    assert set(order) <= set(tensors)
    return keras.Model(inputs, [tensors[o] for o in resolved["outputs"]]), inputs


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_keras_weights_load_unchanged_and_predict_the_same(path):
    spec, errors = load_spec(path)
    assert not errors
    model, _ = keras_model(spec)
    engine = Engine(spec.graph, np.float64)
    keras_weights = model.get_weights()
    engine.set_weights(keras_weights)  # raises on any count or shape mismatch
    rng = np.random.default_rng(0)
    xs = []
    for node in spec.graph.inputs:
        shape = (4, *node.output_shape)
        if spec.layers and spec.layers[0].type == "Embedding":
            xs.append(rng.integers(0, spec.layers[0].input_dim, shape).astype(np.float64))
        else:
            xs.append(rng.standard_normal(shape))
    ours = engine.forward(xs, training=False)
    theirs = model.predict([x.astype(np.float32) for x in xs] if len(xs) > 1 else xs[0].astype(np.float32),
                           verbose=0)
    theirs = theirs if isinstance(theirs, list) else [theirs]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, np.asarray(b, np.float64), rtol=2e-4, atol=2e-5)


import json  # noqa: E402

from .modelspec import model_yaml  # noqa: E402

CASES = [c for c in json.loads((Path(__file__).parent / "fixtures" / "keras_layers.json").read_text())
         if "error" not in c]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_every_layer_case_computes_what_keras_computes(case):
    """Each recorded layer case: Keras's freshly initialised weights (biases and BN statistics perturbed so
    they matter) loaded into specc give Keras's forward output."""
    from specc.spec import load_spec_text

    shapes = case.get("input_shapes") or [case["input_shape"]]
    spec, errors = load_spec_text(model_yaml(case["layer"], shapes), "case.yaml")
    if errors:
        pytest.skip("deliberately rejected by specc: " + errors[0].message)
    rng = np.random.default_rng(0)
    is_embedding = case["layer"]["type"] == "Embedding"
    xs = [rng.integers(0, case["layer"]["input_dim"], (3, *s)).astype(np.float32) if is_embedding
          else rng.standard_normal((3, *[d or 5 for d in s])).astype(np.float32) for s in shapes]
    kwargs = {k: (tuple(v) if isinstance(v, list) and k != "target_shape" and k != "dims" else v)
              for k, v in case["layer"].items() if k != "type"}
    layer = getattr(keras.layers, case["layer"]["type"])(**kwargs)
    out = layer(xs if len(xs) > 1 else xs[0])  # builds the weights
    weights = [w + rng.standard_normal(w.shape).astype(w.dtype) * 0.1 if w.ndim else w for w in layer.get_weights()]
    if case["layer"]["type"] == "BatchNormalization":
        weights[-1] = np.abs(weights[-1]) + 0.5  # a valid moving variance
    layer.set_weights(weights)
    expected = np.asarray(keras.ops.convert_to_numpy(layer(xs if len(xs) > 1 else xs[0])), np.float64)
    del out
    engine = Engine(spec.graph, np.float64)
    engine.set_weights(weights)
    got = engine.forward([x.astype(np.float64) for x in xs], training=False)[0]
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)
