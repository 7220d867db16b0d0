"""Specs and configs -> models: `specc.load("spec.yaml")` and `Model.from_config(config)`.

load() validates with specc.spec.load_spec (all errors at once, as `specc validate` prints them), builds
the API model from the validated layers, then initialises the weights exactly as `specc train` does
(Engine.initialize(seed)). model_from_config() builds a model from plain data (get_config(), or the
`model` section of a spec), each layer validated by its own class as in Python code. The other direction,
model -> spec / config, is specc.api.config; this module sits above model.py and sequential.py and only
imports them.
"""

from __future__ import annotations

import os
from typing import Any

from ..spec import SpecInvalid
from ..spec.validate import Spec
from .layer import LAYER_CLASSES, ArgumentError, Input, InputLayer, Layer
from .model import Model
from .sequential import Sequential


def load(source: str | os.PathLike | Spec) -> Model:
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


def _layer(spec: Any) -> Layer:
    """A validated LayerSpec as an API layer; a nested block as a model."""
    if spec.type == "Sequential":
        return Sequential([_layer(child) for child in spec.layers], name=spec.name, trainable=spec.trainable)
    if spec.type == "Functional":  # layers in a topological order, each naming its inputs inside the block
        inp = Input(shape=spec.input_shape, name=spec.block_input)
        tensors = {spec.block_input: inp}
        for child in spec.layers:
            args = [tensors[r] for r in child.inputs]
            tensors[child.name] = _layer(child)(args if child.is_merge else args[0])
        return Model(inp, tensors[spec.output], name=spec.name, trainable=spec.trainable)
    return LAYER_CLASSES[spec.type]._from_spec(spec)


def from_spec(spec: Spec) -> Model:
    graph = spec.graph
    if graph.kind == "sequential":
        inp = graph.inputs[0]
        model = Sequential([InputLayer(shape=inp.output_shape, name=inp.name)] + [_layer(s) for s in spec.layers],
                           name=spec.name)
    else:
        from ..spec.shared import SharedOwner, SharedUse

        tensors = {n.name: Input(shape=n.output_shape, name=n.name) for n in graph.inputs}
        inputs = list(tensors.values())
        made: dict[str, Any] = {}  # layer name -> API layer, for the `use` entries that call it again
        for node in graph.nodes:  # topological order
            args = [tensors[r] for r in node.inbound]
            if isinstance(node.layer, SharedUse):
                layer = made[node.layer._spec.name]
            else:
                spec_layer = node.layer.layer if isinstance(node.layer, SharedOwner) else node.layer
                layer = made[node.name] = _layer(spec_layer)
            tensors[node.name] = layer(args if node.layer.is_merge else args[0])
        outputs = [tensors[o] for o in graph.outputs]
        model = Model(inputs=inputs[0] if len(inputs) == 1 else inputs,
                      outputs=outputs[0] if len(outputs) == 1 else outputs, name=spec.name)
    model.seed = spec.seed
    model.initialize_weights(spec.seed)  # the same draws as `specc train` makes for this spec
    if spec.compile is not None:
        c = spec.compile
        model.compile(optimizer=c.optimizer, loss=c.loss, metrics=c.metrics, loss_weights=c.loss_weights)
    model.source_spec = spec
    return model


# --- configs -> models ---------------------------------------------------------------------------------------


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list, got {type(value).__name__}")
    return value


def _input_shape(value: Any, where: str) -> Any:
    return _mapping(value, where).get("shape") if isinstance(value, dict) else value


def layer_from_entry(entry: Any, where: str) -> Layer:
    """One `layers` entry (a spec layer mapping, or a nested block) as a new layer or model."""
    entry = _mapping(entry, where)
    kind = entry.get("type")
    args = {k: v for k, v in entry.items() if k not in ("type", "inputs")}
    if kind == "Sequential":
        children = _list(args.pop("layers", None), f"{where}.layers")
        return Sequential([layer_from_entry(c, f"{where}.layers[{i}]") for i, c in enumerate(children)], **args)
    if kind == "Functional":
        section = _mapping(args.pop("model", None), f"{where}.model")
        return _functional(section, f"{where}.model", **args)
    if kind not in LAYER_CLASSES:
        raise ValueError(f"{where}: unknown layer type {kind!r}")
    try:
        return LAYER_CLASSES[kind](**args)
    except ArgumentError as exc:
        raise ArgumentError(f"{where}: {exc}") from None


def _sequential(config: dict, where: str, name: Any = None, trainable: bool = True) -> Sequential:
    entries = _list(config.get("layers"), f"{where}.layers")
    layers = [layer_from_entry(e, f"{where}.layers[{i}]") for i, e in enumerate(entries)]
    if "input" in config:
        spec = config["input"]
        shape = _input_shape(spec, f"{where}.input")
        layers.insert(0, InputLayer(shape=shape, name=spec.get("name") if isinstance(spec, dict) else None))
    return Sequential(layers, name=name, trainable=trainable)


def _functional(config: dict, where: str, name: Any = None, trainable: bool = True) -> Model:
    inputs = {k: Input(shape=_input_shape(v, f"{where}.inputs.{k}"), name=k)
              for k, v in _mapping(config.get("inputs"), f"{where}.inputs").items()}
    tensors: dict[str, Any] = dict(inputs)
    pending = list(enumerate(_list(config.get("layers"), f"{where}.layers")))
    while pending:  # entries may come in any order (as in a spec): call each once its inputs exist
        ready = [(i, e) for i, e in pending if all(r in tensors for r in _refs(e, f"{where}.layers[{i}]"))]
        if not ready:
            i, e = pending[0]
            missing = [r for r in _refs(e, f"{where}.layers[{i}]") if r not in tensors]
            raise ValueError(f"{where}.layers[{i}]: unknown input(s) {missing} (or a cycle); known: "
                             f"{', '.join(tensors)}")
        for i, entry in ready:
            layer = layer_from_entry(entry, f"{where}.layers[{i}]")
            args = [tensors[r] for r in _refs(entry, "")]
            merge = not layer._is_model and layer._spec.is_merge
            tensors[layer.name] = layer(args if merge else args[0])
        pending = [(i, e) for i, e in pending if (i, e) not in ready]
    outputs = [tensors[o] if o in tensors else _unknown_output(o, tensors, where)
               for o in _list(config.get("outputs"), f"{where}.outputs")]
    ins = list(inputs.values())
    return Model(ins[0] if len(ins) == 1 else ins, outputs[0] if len(outputs) == 1 else outputs, name=name,
                 trainable=trainable)


def _refs(entry: Any, where: str) -> list[str]:
    refs = _mapping(entry, where).get("inputs")
    refs = [refs] if isinstance(refs, str) else refs
    if not isinstance(refs, list) or not refs:
        raise ValueError(f"{where}: a layer of a Functional model needs `inputs` (the names it takes)")
    return refs


def _unknown_output(name: str, tensors: dict, where: str) -> Any:
    raise ValueError(f"{where}.outputs: unknown output {name!r}; known: {', '.join(tensors)}")


def model_from_config(config: Any, cls: type = Model) -> Model:
    """A new model from get_config()'s data. Sequential.from_config takes a Sequential model's config;
    Model.from_config either kind, as Keras's does."""
    config = _mapping(config, "config")
    name, trainable = config.get("name"), config.get("trainable", True)
    functional = "inputs" in config or "outputs" in config
    if issubclass(cls, Sequential) and functional:
        raise ValueError("Sequential.from_config takes a Sequential model's config (`layers`, and `input` once "
                         "built); this one is a Functional model's (`inputs`, `outputs`): use Model.from_config")
    if functional:
        return _functional(config, "config", name=name, trainable=trainable)
    return _sequential(config, "config", name=name, trainable=trainable)
