"""Models -> plain data: the spec (format v1) of a model, its `get_config()`, and its compile settings.

Nothing here builds a model (that is specc.api.io), so model.py can use this module without importing
the code that constructs models: the dependency runs one way, model -> config -> functional.

A model's config is the spec's model section (`input` + `layers` for a Sequential model, `inputs` +
`layers` + `outputs` for a Functional one) plus its `name` and `trainable`. A nested Functional model is an
entry `{type: Functional, name, trainable, inputs, model: {inputs, layers, outputs}}`: the form proposed
for spec format v1, which the YAML validator does not read yet (see Model.to_yaml).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..spec.resolve import _plain, layer_dict
from . import losses as L
from . import metrics as Mt


def _has_graph_block(layer: Any) -> bool:
    return layer.type == "Functional" or any(_has_graph_block(c) for c in getattr(layer, "layers", None) or ())


def layer_entry(layer: Any) -> dict:
    """One LayerSpec (a layer or a nested block) as its spec entry, every default filled in."""
    if not _has_graph_block(layer):
        return layer_dict(layer)
    out = {"type": layer.type, "name": layer.name, "trainable": layer.trainable}
    if layer.type == "Sequential":
        out["layers"] = [layer_entry(child) for child in layer.layers]
    else:
        out["model"] = {"inputs": {layer.block_input: list(layer.input_shape)},
                        "layers": [layer_entry(child) for child in layer.layers], "outputs": [layer.output]}
    if layer.inputs is not None:
        out["inputs"] = list(layer.inputs)
    return out


def has_graph_blocks(model: Any) -> bool:
    """Whether the model holds a nested Functional model (which spec format v1 cannot say yet)."""
    return any(_has_graph_block(node.layer) for node in model._make_plan().graph.nodes)


def layers_entries(model: Any) -> list[dict]:
    """The `layers` entries of an unbuilt Sequential model; unlike the whole spec they need no input shape."""
    from .functional import block_spec, leaf_spec

    leaves: dict[str, Any] = {}
    return [layer_entry(block_spec(layer, layer.name, None, None, leaves, model.name) if layer._is_model
                        else leaf_spec(layer, layer.name, None, None)) for layer in model.layers]


def model_section(model: Any, graph: Any = None) -> dict:
    """The spec's `model` section for a built model (whose graph may be given)."""
    from .functional import SharedCall

    graph = graph or model._make_plan().graph
    layers = []
    for node in graph.nodes:
        if isinstance(node.layer, SharedCall) and node.layer.name != node.layer._group.names[0]:
            # A later call of a shared layer: the spec's `use` applies the first call's layer again.
            layers.append({"use": node.layer._group.names[0], "name": node.name})
        else:
            layers.append(layer_entry(node.layer._spec if isinstance(node.layer, SharedCall) else node.layer))
    if graph.kind == "sequential":
        inp = graph.inputs[0]
        return {"input": {"shape": list(inp.output_shape), "name": inp.name}, "layers": layers}
    for entry, node in zip(layers, graph.nodes):
        entry.pop("inputs", None)
        roles = getattr(node.layer, "input_roles", None)  # MultiHeadAttention with an attention mask
        entry["inputs"] = dict(zip(roles, node.inbound)) if roles else list(node.inbound)
    return {"inputs": {n.name: list(n.output_shape) for n in graph.inputs}, "layers": layers,
            "outputs": list(graph.outputs)}


def model_config(model: Any) -> dict:
    """Keras's `get_config()` of a model: its name, `trainable`, and its spec model section (only `layers`
    for a Sequential model not built yet, as Keras 3's config of one has no build_input_shape)."""
    section = model_section(model) if model.built else {"layers": layers_entries(model)}
    return {"name": model.name, "trainable": model.trainable, **section}


def model_dict(model: Any) -> dict:
    """The spec (format v1) of `model` as a mapping: name, seed, model, and the data, compile and fit
    sections it was loaded with (compile as compile() was last given, when a spec can say it)."""
    from ..spec.validate import safe_name

    graph = model._make_plan().graph
    section = model_section(model, graph)
    # a spec's name is a file name (the run directory's); Keras allows more in a model's name
    out: dict[str, Any] = {"specc": 1, "name": safe_name(model.name)}
    if model.seed is not None:
        out["seed"] = model.seed
    out["model"] = section
    source = model.source_spec
    if source is not None and source.data is not None:
        out["data"] = _plain(source.data.model_dump(exclude_none=True))
    compile_section = compile_dict(model.compile_settings, list(graph.outputs))
    if compile_section is not None:
        out["compile"] = compile_section
    if source is not None and source.fit is not None:
        fit = _plain(source.fit.model_dump(exclude_none=True))
        fit["callbacks"] = [_plain(cb.model_dump(exclude_none=True)) for cb in source.callbacks]
        out["fit"] = fit
    return out


def compile_dict(settings: Any, outputs: list[str]) -> dict | None:
    """The spec's compile section, when compile() was given what a spec can say (names; no from_logits)."""
    from .training import resolve

    if settings is None or settings.loss is None:
        return None
    try:
        resolved = resolve(settings, outputs)
    except (NotImplementedError, TypeError, ValueError):
        return None  # something only Python can say (a custom function): the spec has no compile section
    if any(obj is not None for obj in resolved.loss_objects):
        return None
    return _plain(resolved.compile_def.model_dump(exclude_none=True))


def model_yaml(model: Any) -> str:
    import yaml

    return yaml.safe_dump(model_dict(model), sort_keys=False, default_flow_style=None, width=110)


# --- compile settings as data (Keras 3's get_compile_config / compile_from_config) ---------------------------


class NotSerializable(ValueError):
    """A compile() argument that has no data form (a Python function, an unknown object)."""


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise NotSerializable(f"{where}: keys must be output names")
        return {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    for module, base in ((L, L.Loss), (Mt, Mt.Metric)):
        cls = type(value)
        if isinstance(value, base) and getattr(module, cls.__name__, None) is cls:
            config = {"name": value.name}
            if isinstance(value, L.Loss):
                if "from_logits" in _init_args(cls):
                    config["from_logits"] = value.from_logits
                if "delta" in _init_args(cls):
                    config["delta"] = value.delta
            return {"class_name": f"{module.__name__.rsplit('.', 1)[1]}.{cls.__name__}", "config": config}
    raise NotSerializable(f"{where}: {value!r} has no saved form (only names and specc.losses / specc.metrics "
                          f"objects do)")


def _init_args(cls: type) -> tuple[str, ...]:
    import inspect

    return tuple(inspect.signature(cls.__init__).parameters)


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict) and set(value) == {"class_name", "config"}:
        module_name, _, class_name = str(value["class_name"]).partition(".")
        module = {"losses": L, "metrics": Mt}.get(module_name)
        base = {"losses": L.Loss, "metrics": Mt.Metric}.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if not (isinstance(cls, type) and issubclass(cls, base)) or not isinstance(value["config"], dict):
            raise ValueError(f"unknown loss or metric {value['class_name']!r}")
        return cls(**value["config"])
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    return value


def compile_config(settings: Any, run_eagerly: bool) -> dict | None:
    """compile()'s arguments as JSON-able data, or None if the model was not compiled. NotSerializable
    names an argument that has no data form."""
    if settings is None:
        return None
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name == "optimizer":
            # compile() keeps the optimizer object (model.optimizer); its validated entry is the data.
            # warnings=False: a schedule's tagged union serialises fine, but pydantic warns about it
            definition = getattr(value, "definition", value)
            out["optimizer"] = _plain(definition.model_dump(exclude_none=True, warnings=False))
        else:
            out[f.name] = _encode(value, f.name)
    out["run_eagerly"] = bool(run_eagerly)
    return out


def compile_arguments(config: dict) -> dict:
    """The keyword arguments of compile() that compile_config() recorded."""
    if not isinstance(config, dict):
        raise ValueError(f"compile settings must be a mapping, got {type(config).__name__}")
    return {k: (v if k in ("optimizer", "run_eagerly") else _decode(v)) for k, v in config.items()}
