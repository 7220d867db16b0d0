"""Specs <-> models: `specc.load("spec.yaml")` gives a model, `model.to_yaml()` writes a spec back.

Both directions go through the same objects the CLI uses: load() validates with specc.spec.load_spec (all
errors at once, as `specc validate` prints them) and builds the API model from the validated layers, then
initialises the weights exactly as `specc train` does (Engine.initialize(seed)). to_yaml() writes the
graph the model runs (specc.api.functional), every default filled in, as specc.spec.resolve does for a
run directory's resolved.yaml.
"""

from __future__ import annotations

import os
from typing import Any

from ..spec import SpecInvalid
from ..spec.resolve import _plain, layer_dict
from ..spec.validate import Spec


def load(source: str | os.PathLike | Spec):
    """A model from a spec file (or a validated Spec): weights initialised from the spec's seed, compiled
    if the spec has a `compile` section. Raises specc.SpecInvalid with every error of an invalid file."""
    from ..spec import load_spec

    if isinstance(source, Spec):
        spec = source
    else:
        spec, errors = load_spec(source)
        if errors:
            raise SpecInvalid(errors)
    return from_spec(spec)


def _layer(spec: Any):
    from .layer import LAYER_CLASSES
    from .sequential import Sequential

    if spec.type == "Sequential":
        return Sequential([_layer(child) for child in spec.layers], name=spec.name, trainable=spec.trainable)
    return LAYER_CLASSES[spec.type]._from_spec(spec)


def from_spec(spec: Spec):
    from .layer import Input, InputLayer
    from .model import Model
    from .sequential import Sequential

    graph = spec.graph
    if graph.kind == "sequential":
        inp = graph.inputs[0]
        model = Sequential([InputLayer(shape=inp.output_shape, name=inp.name)] + [_layer(s) for s in spec.layers],
                           name=spec.name)
    else:
        tensors = {n.name: Input(shape=n.output_shape, name=n.name) for n in graph.inputs}
        inputs = list(tensors.values())
        for node in graph.nodes:  # topological order
            args = [tensors[r] for r in node.inbound]
            tensors[node.name] = _layer(node.layer)(args if node.layer.is_merge else args[0])
        outputs = [tensors[o] for o in graph.outputs]
        model = Model(inputs=inputs[0] if len(inputs) == 1 else inputs,
                      outputs=outputs[0] if len(outputs) == 1 else outputs, name=spec.name)
    model._seed = spec.seed
    model._engine().initialize(spec.seed)  # the same draws as `specc train` makes for this spec
    if spec.compile is not None:
        c = spec.compile
        model.compile(optimizer=c.optimizer, loss=c.loss, metrics=c.metrics, loss_weights=c.loss_weights)
    model._source = spec
    return model


def layers_dicts(model: Any) -> list[dict]:
    """The `layers` entries of a Sequential model's spec; unlike the whole spec they need no input shape."""
    from .functional import block_spec, leaf_spec

    leaves: dict[str, Any] = {}
    return [layer_dict(block_spec(layer, layer.name, None, None, leaves, model.name) if layer._is_model
                       else leaf_spec(layer, layer.name, None, None)) for layer in model.layers]


def model_dict(model: Any) -> dict:
    """The spec (format v1) of `model` as a mapping."""
    from .functional import SharedCall

    graph = model._make_plan().graph
    for node in graph.nodes:
        if isinstance(node.layer, SharedCall):
            raise ValueError(f"model '{model.name}' calls layer '{node.layer._group.layer.name}' more than once; "
                             f"spec format v1 has no shared layers, so this model cannot be written as a spec")
    layers = [layer_dict(node.layer) for node in graph.nodes]
    if graph.kind == "sequential":
        inp = graph.inputs[0]
        section = {"input": {"shape": list(inp.output_shape), "name": inp.name}, "layers": layers}
    else:
        for entry in layers:
            entry.pop("inputs", None)
        for entry, node in zip(layers, graph.nodes):
            roles = getattr(node.layer, "input_roles", None)  # MultiHeadAttention with an attention mask
            entry["inputs"] = dict(zip(roles, node.inbound)) if roles else list(node.inbound)
        section = {"inputs": {n.name: list(n.output_shape) for n in graph.inputs}, "layers": layers,
                   "outputs": list(graph.outputs)}
    from ..spec.validate import safe_name

    # a spec's name is a file name (the run directory's); Keras allows more in a model's name
    out: dict[str, Any] = {"specc": 1, "name": safe_name(model.name)}
    if model._seed is not None:
        out["seed"] = model._seed
    out["model"] = section
    source = model._source
    if source is not None and source.data is not None:
        out["data"] = _plain(source.data.model_dump(exclude_none=True))
    compile_section = _compile_dict(model, list(graph.outputs))
    if compile_section is not None:
        out["compile"] = compile_section
    if source is not None and source.fit is not None:
        fit = _plain(source.fit.model_dump(exclude_none=True))
        fit["callbacks"] = [_plain(cb.model_dump(exclude_none=True)) for cb in source.callbacks]
        out["fit"] = fit
    return out


def _compile_dict(model: Any, outputs: list[str]) -> dict | None:
    """The compile section, when compile() was given what a spec can say (names; no from_logits)."""
    from .training import resolve

    if model._compiled is None or model._compiled.loss is None:
        return None
    resolved = resolve(model._compiled, outputs)
    if any(obj is not None for obj in resolved.loss_objects):
        return None
    return _plain(resolved.compile_def.model_dump(exclude_none=True))


def model_yaml(model: Any) -> str:
    import yaml

    return yaml.safe_dump(model_dict(model), sort_keys=False, default_flow_style=None, width=110)
