"""Build a one-layer spec around a layer under test (shared by the shape and gradient tests)."""

from __future__ import annotations

import yaml


def model_yaml(layer: dict | list[dict], input_shapes: list[list[int]], name: str = "under_test") -> str:
    """A spec with one layer: Sequential for one input, Functional (inputs in0, in1, ...) for merges. A
    list of layers is a Sequential stack of them on one input."""
    if isinstance(layer, list):
        model = {"input": input_shapes[0], "layers": layer}
        return yaml.safe_dump({"specc": 1, "seed": 0, "model": model}, sort_keys=False)
    layer = dict(layer, name=name)
    if len(input_shapes) == 1:
        model = {"input": input_shapes[0], "layers": [layer]}
    else:
        names = [f"in{i}" for i in range(len(input_shapes))]
        model = {"inputs": dict(zip(names, input_shapes)), "layers": [dict(layer, inputs=names)],
                 "outputs": name}
    return yaml.safe_dump({"specc": 1, "seed": 0, "model": model}, sort_keys=False)
