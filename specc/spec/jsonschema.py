"""A JSON Schema of spec format v1 for editors (yaml-language-server's `$schema` comment).

Built from the same pydantic models and layer registry that validation uses, so it cannot drift.
"""

from __future__ import annotations

from pydantic.json_schema import models_json_schema

from ..layers import REGISTRY
from .schema import CALLBACKS, SECTIONS, FunctionalModelDef, SequentialModelDef
from .types import MAX_INT64
from .validate import SAFE_NAME

_LAYER = {"$ref": "#/$defs/Layer"}


def _retarget(node):
    """Point every list of raw layers (typed Any in the schema models) at the Layer union."""
    if isinstance(node, dict):
        for key, value in node.items():
            # `layers: [...]`, or (references allowed) `layers: {anyOf: [[...], ${...}]}`
            arrays = [value] if isinstance(value, dict) and value.get("type") == "array" else \
                [v for v in value.get("anyOf", []) if isinstance(v, dict) and v.get("type") == "array"] \
                if isinstance(value, dict) and key == "layers" else []
            if key == "layers" and arrays:
                for array in arrays:
                    array["items"] = _LAYER
            else:
                _retarget(value)
    elif isinstance(node, list):
        for item in node:
            _retarget(item)


REFERENCE = {"type": "string", "pattern": r"^\$\{[^{}]*\}$",
             "description": "a variable or block parameter, or arithmetic on them: ${width * 2}"}
_NAMES = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


def _allow_references(node, inside_properties: bool = False):
    """Every property value may also be a `${...}` reference (vars, block parameters)."""
    if isinstance(node, dict):
        if inside_properties:
            for key, value in node.items():
                if isinstance(value, dict) and key not in ("type", "inputs"):
                    _allow_references(value)
                    node[key] = {"anyOf": [value, {"$ref": "#/$defs/Reference"}]} if "$ref" not in value \
                        or value["$ref"] != "#/$defs/Reference" else value
            return
        for key, value in list(node.items()):
            _allow_references(value, key == "properties")
            if key == "items" and isinstance(value, dict) and "$ref" not in value:
                node[key] = {"anyOf": [value, {"$ref": "#/$defs/Reference"}]}  # [${size}, ${size}, 3]
    elif isinstance(node, list):
        for item in node:
            _allow_references(item)


def _template_defs() -> dict:
    """Blocks, their instances (`block` / `repeat`) and shared layers (`use`): specc/spec/expand.py."""
    param = {"anyOf": [{"type": "string"}, {"type": "object", "minProperties": 1, "maxProperties": 1}]}
    return {
        "Reference": REFERENCE,
        "Block": {
            "type": "object", "additionalProperties": False, "required": ["layers"],
            "description": "a named, parameterised sub-graph; instantiate with {block: name, <param>: value}",
            "properties": {
                "params": {"anyOf": [{"type": "array", "items": param}, {"type": "object"}],
                           "description": "names, with defaults as {name: default}: [filters, {strides: 1}]"},
                "inputs": {**_NAMES, "description": "the block's input names (default: x)"},
                "layers": {"type": "array", "minItems": 1, "items": _LAYER},
                "outputs": {**_NAMES, "description": "the layers it returns (default: its last layer)"},
            },
        },
        "BlockInstance": {
            "type": "object", "required": ["block"],
            "description": "an instance of a block; every other key is one of its parameters",
            "properties": {
                "block": {"type": "string"},
                "repeat": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "array", "items": {"type": "object"}},
                                     {"$ref": "#/$defs/Reference"}],
                           "description": "copies chained one after the other, or one per parameter set"},
                "name": {"type": "string"},
                "inputs": _NAMES,
            },
        },
        "SharedUse": {
            "type": "object", "additionalProperties": False, "required": ["use"],
            "description": "the named layer applied again, on the same weights",
            "properties": {"use": {"type": "string"}, "name": {"type": "string"}, "inputs": _NAMES},
        },
    }


def spec_json_schema() -> dict:
    layer_models = list(REGISTRY.values())
    models = [SequentialModelDef, FunctionalModelDef, *SECTIONS.values(), *CALLBACKS.values(), *layer_models]
    refs, top = models_json_schema([(m, "validation") for m in models], ref_template="#/$defs/{model}")
    defs = top["$defs"]
    for cls in layer_models:
        props = defs[cls.__name__]["properties"]
        props["type"] = {"const": cls.model_fields["type"].default}
        defs[cls.__name__]["required"] = sorted(set(defs[cls.__name__].get("required", [])) | {"type"})
        props["inputs"] = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                           "description": "Functional models only: the inputs/layers this layer takes"}
        props["repeat"] = {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "array", "items": {"type": "object"}},
                                     {"type": "string", "pattern": REFERENCE["pattern"]}],
                           "description": "copies of this layer, each taking the one before it"}
        roles = getattr(cls, "named_inputs", ())  # MultiHeadAttention: inputs by name
        if roles:
            props["inputs"]["anyOf"].append({"type": "object", "properties": {r: {"type": "string"} for r in roles},
                                             "required": list(roles[:2]), "additionalProperties": False})
        for key in getattr(cls, "wrapped_layer_keys", ()):  # Bidirectional, TimeDistributed: layer entries
            props[key] = _LAYER if key in defs[cls.__name__]["required"] else {"anyOf": [_LAYER, {"type": "null"}]}
    from .schema import OPTIMIZERS

    # `optimizer: adam` is shorthand for `optimizer: {type: adam}`
    defs["CompileDef"]["properties"]["optimizer"] = {
        "anyOf": [{"$ref": "#/$defs/OptimizerDef"}, {"enum": list(OPTIMIZERS)}]}
    _allow_references(defs)
    defs.update(_template_defs())
    defs["Layer"] = {"oneOf": [refs[(cls, "validation")] for cls in layer_models]
                     + [{"$ref": "#/$defs/BlockInstance"}, {"$ref": "#/$defs/SharedUse"}]}
    defs["Sequential"]["properties"]["layers"] = {"type": "array", "items": _LAYER, "minItems": 1}
    fit = defs["FitDef"]["properties"]
    fit["callbacks"] = {"type": "array", "items": {"oneOf": [refs[(c, "validation")] for c in CALLBACKS.values()]}}
    # `input: [8, 8, 1]` is shorthand for `input: {shape: [8, 8, 1]}`
    either = {"anyOf": [{"$ref": "#/$defs/InputDef"}, defs["InputDef"]["properties"]["shape"]]}
    defs["SequentialModelDef"]["properties"]["input"] = either
    defs["FunctionalModelDef"]["properties"]["inputs"] = {"type": "object", "minProperties": 1,
                                                          "additionalProperties": either}
    defs["FunctionalModelDef"]["properties"]["outputs"] = {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
    _retarget(defs)
    defs["Block"]["properties"]["layers"]["items"] = _LAYER
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://specc.dev/schema/v1.json",
        "title": "specc model spec, format v1",
        "type": "object",
        "additionalProperties": False,
        "required": ["specc", "model"],
        "properties": {
            "specc": {"const": 1, "description": "spec format version"},
            "name": {"type": "string", "pattern": f"^{SAFE_NAME.pattern}$"},
            "seed": {"type": "integer", "minimum": 0, "maximum": MAX_INT64},
            "model": {"oneOf": [refs[(SequentialModelDef, "validation")], refs[(FunctionalModelDef, "validation")]]},
            **{k: refs[(m, "validation")] for k, m in SECTIONS.items()},
            "vars": {"type": "object", "description": "values for ${name} references anywhere in the spec"},
            "blocks": {"type": "object", "additionalProperties": {"$ref": "#/$defs/Block"}},
            "include": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                        "description": "files of blocks and vars, relative to this file"},
        },
        "$defs": defs,
    }
