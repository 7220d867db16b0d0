"""The resolved spec: the user's spec with every default filled in and every auto-name assigned. It is
what a run directory records, and it validates and loads back to the same model."""

from __future__ import annotations

from typing import Any

from .validate import Spec


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def layer_dict(layer) -> dict:
    from .shared import SharedOwner, SharedUse

    if isinstance(layer, SharedUse):  # `{use: encoder}` applies that layer again, on its weights
        return {"use": layer._spec.name, "name": layer.name,
                **({"inputs": list(layer.inputs)} if layer.inputs is not None else {})}
    if isinstance(layer, SharedOwner):
        layer = layer.layer
    out = {"type": layer.type}
    for key, value in layer.model_dump(exclude={"type", "layers", "inputs"}).items():
        out[key] = _plain(value)
    if layer.inputs is not None:
        roles = getattr(layer, "input_roles", None)  # MultiHeadAttention with an attention mask names its inputs
        out["inputs"] = dict(zip(roles, layer.inputs)) if roles else list(layer.inputs)
    if layer.type == "Sequential":
        out["layers"] = [layer_dict(child) for child in layer.layers]
    return out


def resolved_dict(spec: Spec) -> dict:
    graph = spec.graph
    if graph.kind == "sequential":
        model = {"input": {"shape": list(graph.inputs[0].output_shape), "name": graph.inputs[0].name},
                 "layers": [layer_dict(layer) for layer in spec.layers]}
    else:
        model = {"inputs": {n.name: list(n.output_shape) for n in graph.inputs},
                 "layers": [layer_dict(layer) for layer in spec.layers], "outputs": list(graph.outputs)}
    out: dict[str, Any] = {"specc": spec.version, "name": spec.name}
    if spec.seed is not None:
        out["seed"] = spec.seed
    out["model"] = model
    for key in ("data", "compile", "fit"):
        section = getattr(spec, key)
        if section is not None:
            # warnings=False: the tagged union of data.source serialises fine but pydantic warns about it
            dumped = _plain(section.model_dump(exclude_none=True, warnings=False))
            if key == "compile":
                from .schema import OPTIMIZER_DEFAULTS

                opt = dumped["optimizer"]
                defaults = {k: v for k, v in OPTIMIZER_DEFAULTS[opt["type"]].items()
                            if k != "weight_decay" or opt["type"] == "adamw"}
                dumped["optimizer"] = {"type": opt["type"], **defaults, **opt}
            if key == "fit":
                dumped["callbacks"] = [_plain(cb.model_dump(exclude_none=True)) for cb in spec.callbacks]
            out[key] = dumped
    return out


def resolved_yaml(spec: Spec) -> str:
    import yaml

    return yaml.safe_dump(resolved_dict(spec), sort_keys=False, default_flow_style=None, width=110)
