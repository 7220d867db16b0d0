"""From a YAML file to a validated spec and its inferred graph, collecting every error with its position.

    spec, errors = load_spec("model.yaml")

Nothing here raises on bad input: YAML problems, schema problems, graph and shape problems all become
`SpecError`s. Checks continue past an error wherever the later checks still make sense, so a user sees
all of a file's mistakes in one run.
"""

from __future__ import annotations

import json
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from ..graph import Graph, assign_names, build_functional, build_sequential
from ..layers import REGISTRY, LayerSpec
from .errors import SHOWN_DIGITS, Path, SpecError, cut_text, format_path, show_value, suggest
from .expand import Instance, Origin, expand, find_origin, locate
from .files import NotRegularFile, open_regular_file
from .schema import (
    BLOCK_TOP_LEVEL_KEYS,
    CALLBACKS,
    COMMON_OPTIMIZER_ARGS,
    KNOWN_VERSIONS,
    OPTIMIZER_ARGS,
    SECTIONS,
    TOP_LEVEL_KEYS,
    CompileDef,
    DataDef,
    FitDef,
    FunctionalModelDef,
    SequentialModelDef,
)
from .shared import SharedGroup, SharedOwner, SharedUse
from .types import MAX_INT64, limit_text
from .yamlpos import Positions, load_yaml

# Keras arguments a user may reasonably write that specc v1 does not implement: say so, instead of the
# generic "unknown key".
UNSUPPORTED_KERAS_ARGS = {
    "kernel_regularizer", "bias_regularizer", "activity_regularizer", "recurrent_regularizer",
    "embeddings_regularizer", "beta_regularizer", "gamma_regularizer", "depthwise_regularizer",
    "pointwise_regularizer", "kernel_constraint", "bias_constraint", "recurrent_constraint",
    "embeddings_constraint", "beta_constraint", "gamma_constraint", "depthwise_constraint",
    "pointwise_constraint", "data_format", "groups", "dtype", "return_state", "stateful", "unroll",
    "lora_rank", "lora_alpha", "synchronized", "rms_scaling", "use_cudnn", "time_major", "weights",
    "input_length", "sparse", "implementation", "quantization_config", "mask_zero",
}


@dataclass
class Spec:
    """A validated spec: its sections, the layers as LayerSpec objects and the inferred graph."""

    file: str
    version: int
    name: str
    seed: int | None
    model: SequentialModelDef | FunctionalModelDef
    layers: list[LayerSpec]
    graph: Graph
    compile: CompileDef | None = None
    fit: FitDef | None = None
    data: DataDef | None = None
    callbacks: list[BaseModel] = field(default_factory=list)
    positions: Positions = field(default_factory=Positions)
    # Block instances (one summary row each) and the expanded spec, when the spec uses blocks, repeats,
    # variables, includes or shared layers (specc/spec/expand.py); else [] and None.
    instances: list[Instance] = field(default_factory=list)
    expanded: dict | None = None
    read: Any = None  # the spec as read (after --set overrides), before expansion


class Collector:
    """Turns paths and pydantic errors into positioned SpecErrors for one file."""

    def __init__(self, file: str, positions: Positions, origins: dict[Path, Origin] | None = None):
        self.file, self.positions, self.errors = file, positions, []
        self.origins = origins or {}

    def line_of(self, path: Path) -> str:
        """`line N`, or `FILE:N` for a value that an included block made, for "first used at" notes."""
        origin = find_origin(self.origins, path) if self.origins else None
        if origin is None:
            return f"line {self.positions.of(path)[0]}"
        e = locate(origin, "")
        return f"line {e.line}" if e.file == self.file else f"{e.file}:{e.line}"

    def add(self, path: Path, message: str, at_key: bool = False) -> None:
        origin = find_origin(self.origins, path) if self.origins else None
        if origin is not None:
            self.errors.append(locate(origin, message, at_key))
            return
        source = self.positions.source_of(path)
        if source is not None:  # the value came from the command line: point there, line 0
            self.errors.append(SpecError(source, 0, 0, format_path(path), message))
            return
        line, col = self.positions.of(path, prefer_key=at_key)
        self.errors.append(SpecError(self.file, line, col, format_path(path), message))

    def _data_at(self, loc: list) -> Any:
        node = self._data
        for item in loc:
            try:
                node = node[item]
            except (KeyError, IndexError, TypeError):
                return None
        return node

    def validate(self, model: type[BaseModel], data: Any, prefix: Path, what: str = "") -> Any:
        self._model, self._data = model, data
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            fields = list(model.model_fields) if hasattr(model, "model_fields") else []
            for err in exc.errors():
                self._pydantic(err, prefix, fields, what)
            return None

    def _pydantic(self, err: dict, prefix: Path, fields: list[str], what: str) -> None:
        loc = [x for x in err["loc"] if not (isinstance(x, str) and (x.startswith("~") or x == "[key]"))]
        path = prefix + tuple(loc)
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden":
            key = loc[-1] if loc else "?"
            nested = _model_at(self._model, loc[:-1]) if len(loc) > 1 else None
            if nested is not None:
                # name the mapping by its key (`optimizer`), or by its model for a list item
                key_of_mapping = loc[-2]
                fields = list(nested.model_fields)
                what = nested.__name__ if isinstance(key_of_mapping, int) else str(key_of_mapping)
            if key in UNSUPPORTED_KERAS_ARGS:
                message = f"`{key}` is a Keras argument that specc does not support yet"
            elif key in ("input_shape", "batch_input_shape", "input_dim") and what:
                message = f"`{key}` is not a layer argument in a spec; the model's input shape goes in `model.input`"
            else:
                allowed = [f for f in fields if f != "type"]
                if what == "optimizer" and isinstance(self._data_at(loc[:-1]), dict):
                    chosen = self._data_at(loc[:-1]).get("type")
                    if isinstance(chosen, str) and chosen in OPTIMIZER_ARGS:
                        allowed, what = list(OPTIMIZER_ARGS[chosen] + COMMON_OPTIMIZER_ARGS), chosen
                message = f"unknown key {_show(key)}{suggest(key, allowed) if isinstance(key, str) else ''}"
                if what:
                    message += f"; {what} takes: {', '.join(allowed)}"
            self.add(path, message, at_key=True)
        elif kind == "missing":
            self.add(path, f"missing required key `{loc[-1]}`" + (f" for {what}" if what else ""))
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            self.add(path, f"must be a mapping, got {_kind(err.get('input'))}")
        elif kind == "list_type":
            self.add(path, f"must be a list, got {_kind(err.get('input'))}")
        elif kind in ("string_type",):
            self.add(path, f"must be a string, got {_kind(err.get('input'))}")
        else:
            self.add(path, msg.removeprefix("Value error, "))


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside a field's annotation (through Optional, unions, Annotated, lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found.extend(_submodels(arg))
    return found


def _model_at(model: type[BaseModel], loc: list) -> type[BaseModel] | None:
    """The pydantic model that validated the mapping at `loc` (field names and list indices)."""
    for item in loc:
        if isinstance(item, int):
            continue
        field = model.model_fields.get(item) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        models = _submodels(field.annotation) + [m for meta in field.metadata for m in _submodels(meta)]
        if not models:
            return None
        model = models[0]
    return model


def _show(key: Any) -> str:
    """A key for a one-line message: `name`, or JSON-quoted when it holds newlines or other controls."""
    text = cut_text(key) if isinstance(key, str) else show_value(key)
    return f"`{text}`" if text.isprintable() else json.dumps(text)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {show_value(value)}"
    if isinstance(value, int) and abs(value) >= 10**SHOWN_DIGITS:
        return show_value(value)  # "an integer of 1,205 digits"
    return f"{type(value).__name__} {show_value(value)}"


MAX_NAME = 100  # characters of a model name: it becomes a directory name under --out
SAFE_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{MAX_NAME - 1}}}")


def safe_name(name: str) -> str:
    """A file stem made into a model name that passes `SAFE_NAME` (the default of `name`)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".-")[:MAX_NAME]
    return name or "model"


def _validate_layer(raw: Any, path: Path, c: Collector, top: bool = False) -> LayerSpec | None:
    if not isinstance(raw, dict):
        c.add(path, f"each layer must be a mapping like {{type: Dense, units: 10}}, got {_kind(raw)}")
        return None
    if "use" in raw:
        return _validate_use(raw, path, c, top)
    if "type" not in raw:
        c.add(path, "layer is missing `type` (the Keras layer class, e.g. Dense, Conv2D)")
        return None
    type_name = raw["type"]
    if not isinstance(type_name, str) or type_name not in REGISTRY:
        hint = suggest(str(type_name), REGISTRY) if isinstance(type_name, str) else ""
        c.add(path + ("type",), f"unknown layer type {show_value(type_name)}{hint}; see `specc schema` or the "
                                f"README for the {len(REGISTRY)} layer types")
        return None
    cls = REGISTRY[type_name]
    if type_name == "Sequential":
        children_raw = raw.get("layers")
        if not isinstance(children_raw, list) or not children_raw:
            c.add(path + ("layers",), "a nested Sequential block needs a non-empty list of `layers`")
            return None
        children = [_validate_layer(x, path + ("layers", i), c) for i, x in enumerate(children_raw)]
        if any(ch is None for ch in children):
            c.validate(cls, {**raw, "layers": []}, path, what=type_name)  # still report the block's own keys
            return None
        return c.validate(cls, {**raw, "layers": children}, path, what=type_name)
    # Wrappers (Bidirectional, TimeDistributed): their wrapped layer entries are validated as layers.
    wrapped = {k: raw[k] for k in getattr(cls, "wrapped_layer_keys", ()) if isinstance(raw.get(k), dict)}
    if wrapped:
        inner = {k: _validate_layer(v, path + (k,), c) for k, v in wrapped.items()}
        if any(v is None for v in inner.values()):
            return None
        return c.validate(cls, {**raw, **inner}, path, what=type_name)
    return c.validate(cls, raw, path, what=type_name)


def _validate_use(raw: dict, path: Path, c: Collector, top: bool) -> SharedUse | None:
    """`{use: encoder, name: ..., inputs: ...}`: a shared layer; bound to its owner in _bind_shared."""
    if not top:
        c.add(path + ("use",), "a shared layer (`use`) is a node of the model's graph; it cannot be used inside "
                               "a nested Sequential block", at_key=True)
        return None
    ok = True
    for key in raw:
        if key not in ("use", "name", "inputs"):
            c.add(path + (key,), "a shared layer `{use: layer, inputs: ...}` takes only use, name and inputs; "
                                 "its arguments are the used layer's", at_key=True)
            ok = False
    owner, name, inputs = raw.get("use"), raw.get("name"), raw.get("inputs")
    if not isinstance(owner, str) or not owner:
        c.add(path + ("use",), f"must name a layer of the model, got {_kind(owner)}")
        ok = False
    if not isinstance(name, str) or not name:
        c.add(path + ("name",) if "name" in raw else path, f"a shared layer needs a `name`, got {_kind(name)}")
        ok = False
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if inputs is not None and (not isinstance(inputs, list) or not all(isinstance(x, str) and x for x in inputs)):
        c.add(path + ("inputs",), f"must be a name or a list of names, got {_kind(raw.get('inputs'))}")
        ok = False
    return SharedUse(name, inputs, owner) if ok else None


def _bind_shared(layers: list, c: Collector) -> bool:
    """Each `use` bound to the layer it names (a top-level layer of the model, not a nested block), and
    that layer wrapped as the group's owner. False after an error."""
    owners = {layer.name: layer for layer in layers if not isinstance(layer, SharedUse) and layer.name}
    groups: dict[str, SharedGroup] = {}
    ok = True
    for i, layer in enumerate(layers):
        if not isinstance(layer, SharedUse):
            continue
        owner_name = layer.owner
        target = owners.get(owner_name)
        if target is None:
            uses = {u.name: u.owner for u in layers if isinstance(u, SharedUse)}
            if owner_name in uses:
                owner_name = uses[owner_name]  # a use of a use shares the same layer
                target = owners.get(owner_name)
        path = ("model", "layers", i, "use")
        if target is None:
            known = list(owners)
            c.add(path, f"unknown layer {owner_name!r}{suggest(owner_name, known)}; `use` names a layer of the "
                        f"model (not one inside a nested Sequential block)")
            ok = False
            continue
        if getattr(target, "type", None) == "Sequential":
            c.add(path, f"'{owner_name}' is a nested Sequential block; `use` shares a single layer")
            ok = False
            continue
        group = groups.setdefault(owner_name, SharedGroup())
        layer.bind(target if not isinstance(target, SharedOwner) else target.layer, group)
    for i, layer in enumerate(layers):
        if not isinstance(layer, SharedUse) and layer.name in groups:
            layers[i] = SharedOwner(layer, groups[layer.name])
    return ok


def _check_shared_order(graph: Graph, layers: list, c: Collector) -> None:
    """Each use takes an input its layer's weights fit, and comes after the layer itself (see shared.py)."""
    position = {node.name: k for k, node in enumerate(graph.nodes)}
    by_name = {node.name: node for node in graph.nodes}
    for i, layer in enumerate(layers):
        if isinstance(layer, SharedUse):
            owner = layer._spec.name
            own = by_name.get(owner)
            if own is not None and own.output_shape is not None and layer._specs:
                for mine, theirs in zip(layer._specs, own.weights):
                    if tuple(mine.shape) != tuple(theirs.shape):
                        c.add(("model", "layers", i, "use"),
                              f"'{layer.name}' applies '{owner}' to an input whose {mine.name} would be "
                              f"{tuple(mine.shape)}, but '{owner}' has {theirs.name} {tuple(theirs.shape)}: a shared "
                              f"layer takes inputs of the shape it was built for")
                        break
            if position.get(owner, -1) > position.get(layer.name, 1 << 62):
                c.add(("model", "layers", i, "use"), f"'{layer.name}' uses layer '{owner}' before that layer's own "
                                                     f"place in the graph; list the layer before its uses, on a "
                                                     f"path that does not depend on them")


def _validate_callback(raw: Any, path: Path, c: Collector) -> BaseModel | None:
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        c.add(path, "each callback must be a mapping with a `type`, e.g. {type: EarlyStopping, patience: 3}")
        return None
    cls = CALLBACKS.get(raw["type"])
    if cls is None:
        c.add(path + ("type",), f"unknown callback {show_value(raw['type'])}{suggest(raw['type'], CALLBACKS)}; "
                                f"expected one of: {', '.join(CALLBACKS)}")
        return None
    return c.validate(cls, raw, path, what=raw["type"])


def _check_names(layers: list[LayerSpec], c: Collector, reserved: dict[str, Path]) -> None:
    seen = dict(reserved)

    def walk(chain: list[LayerSpec], prefix: Path) -> None:
        for i, layer in enumerate(chain):
            path = prefix + (i,)
            if layer.name is not None:
                if layer.name in seen:
                    c.add(path + ("name",), f"duplicate name {layer.name!r} (first used at "
                                            f"{c.line_of(seen[layer.name])}); names must be unique in a model")
                else:
                    seen[layer.name] = path + ("name",)
            if layer.type == "Sequential":
                walk(layer.layers, path + ("layers",))

    walk(layers, ("model", "layers"))


def validate_data(data: Any, positions: Positions, file: str) -> tuple[Spec | None, list[SpecError]]:
    c = Collector(file, positions)
    if not isinstance(data, dict):
        c.add((), f"a spec must be a mapping with `specc: 1` and a `model`, got {_kind(data)}")
        return None, c.errors
    read = data
    expansion = expand(data, positions, file)
    if expansion.errors:
        return None, _sorted(expansion.errors)
    data = expansion.data
    c.origins = expansion.origins

    for key in data:
        if key not in TOP_LEVEL_KEYS:
            hint = suggest(key, TOP_LEVEL_KEYS + BLOCK_TOP_LEVEL_KEYS) if isinstance(key, str) else ""
            c.add((key,), f"unknown top-level key {_show(key)}{hint}; expected: "
                          f"{', '.join(TOP_LEVEL_KEYS + BLOCK_TOP_LEVEL_KEYS)}",
                  at_key=True)

    version = data.get("specc")
    if "specc" not in data:
        c.add((), "missing `specc: 1` (the spec format version) at the top of the file")
    elif type(version) is not int or version not in KNOWN_VERSIONS:
        c.add(("specc",), f"unknown spec format version {show_value(version)}; known versions: "
                          f"{', '.join(map(str, KNOWN_VERSIONS))}")

    default_name = safe_name(os.path.splitext(os.path.basename(file))[0])
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        c.add(("name",), f"must be a non-empty string, got {_kind(name)}")
        name = default_name
    elif not SAFE_NAME.fullmatch(name):
        # `specc train` makes a directory of it under --out: no path separators, no `..`, no hidden file
        c.add(("name",), f"must be a file name of at most {MAX_NAME} ASCII letters, digits, '_', '-' or '.', "
                         f"not starting with '.' or '-', got {show_value(name)}")
        name = default_name
    seed = data.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        c.add(("seed",), f"must be a non-negative integer, got {_kind(seed)}")
        seed = None
    elif seed is not None and seed > MAX_INT64:
        c.add(("seed",), f"must be at most {limit_text(MAX_INT64)}, got {show_value(seed)}")
        seed = None

    sections = {}
    for key, model in SECTIONS.items():
        if key in data:
            sections[key] = c.validate(model, data[key], (key,), what=key)
    _check_optimizer_args(data.get("compile"), sections.get("compile"), c)
    callbacks = []
    if sections.get("fit") is not None:
        callbacks = [_validate_callback(cb, ("fit", "callbacks", i), c) for i, cb in enumerate(sections["fit"].callbacks)]

    model_raw = data.get("model")
    model_def, layers, graph = _validate_model(model_raw, name, c)

    if c.errors or graph is None:
        return None, _sorted(c.errors)
    _check_outputs(graph, sections.get("compile"), c)
    if c.errors:
        return None, _sorted(c.errors)
    return Spec(file, version, name, seed, model_def, layers, graph, sections.get("compile"), sections.get("fit"),
                sections.get("data"), [cb for cb in callbacks if cb is not None], positions,
                expansion.instances, data if expansion.expanded else None, read), []


def _check_optimizer_args(raw: Any, compile_def: CompileDef | None, c: Collector) -> None:
    """Each argument the chosen optimizer does not take, reported at its own key."""
    if compile_def is None or not isinstance(raw, dict) or not isinstance(raw.get("optimizer"), dict):
        return
    kind = compile_def.optimizer.type
    takes = OPTIMIZER_ARGS[kind] + COMMON_OPTIMIZER_ARGS
    for key in raw["optimizer"]:
        if key != "type" and key not in takes:
            c.add(("compile", "optimizer", key), f"{kind} has no argument `{key}`; it takes {', '.join(takes)}",
                  at_key=True)


def _sorted(errors: list[SpecError]) -> list[SpecError]:
    """In file order, as a compiler lists them."""
    return sorted(errors, key=lambda e: (e.line, e.column))


def _validate_model(model_raw: Any, name: str, c: Collector):
    if model_raw is None:
        c.add((), "missing `model`: a Sequential model has `input` and `layers`; a Functional model has "
                  "`inputs`, `layers` and `outputs`")
        return None, [], None
    if not isinstance(model_raw, dict):
        c.add(("model",), f"must be a mapping with `input` and `layers` (Sequential) or `inputs`, `layers` "
                          f"and `outputs` (Functional), got {_kind(model_raw)}")
        return None, [], None
    functional = "inputs" in model_raw or "outputs" in model_raw
    if functional and "input" in model_raw:
        c.add(("model", "input"), "use either `input` (Sequential) or `inputs` + `outputs` (Functional), not both",
              at_key=True)
        return None, [], None
    model_cls = FunctionalModelDef if functional else SequentialModelDef
    model_def = c.validate(model_cls, model_raw, ("model",), what="Functional model" if functional else "model")
    raw_layers = model_raw.get("layers")
    if not isinstance(raw_layers, list):
        return None, [], None
    if not raw_layers:
        c.add(("model", "layers"), "a model needs at least one layer")
        return None, [], None
    layers = [_validate_layer(raw, ("model", "layers", i), c, top=True) for i, raw in enumerate(raw_layers)]
    if model_def is None or any(layer is None for layer in layers):
        return model_def, [], None
    if any(isinstance(layer, SharedUse) for layer in layers) and not _bind_shared(layers, c):
        return model_def, [], None

    if functional:
        reserved = {k: ("model", "inputs", k) for k in model_def.inputs}
    else:
        input_name = model_def.input.name or "input_layer"
        reserved = {input_name: ("model", "input")}
    n_before = len(c.errors)
    _check_names(layers, c, reserved)
    if len(c.errors) > n_before:
        return model_def, layers, None
    assign_names(layers, set(reserved) | _all_names(layers))

    if functional:
        graph = build_functional(name, {k: v.shape for k, v in model_def.inputs.items()}, layers,
                                 model_def.outputs, c.add)
        _check_shared_order(graph, layers, c)
    else:
        graph = build_sequential(name, input_name, model_def.input.shape, layers, c.add)
    return model_def, layers, graph


def _all_names(layers: list[LayerSpec]) -> set[str]:
    names = set()
    for layer in layers:
        if layer.name:
            names.add(layer.name)
        if layer.type == "Sequential":
            names |= _all_names(layer.layers)
    return names


def _check_outputs(graph: Graph, compile_def: CompileDef | None, c: Collector) -> None:
    """Per-output mappings in `compile` must name real outputs."""
    if compile_def is None:
        return
    outputs = graph.outputs
    for key in ("loss", "metrics", "loss_weights"):
        value = getattr(compile_def, key)
        if isinstance(value, dict):
            for out in value:
                if out not in outputs:
                    c.add(("compile", key, out), f"{out!r} is not a model output{suggest(out, outputs)}; "
                                                 f"outputs: {', '.join(outputs)}", at_key=True)
        elif key == "loss_weights" and isinstance(value, list) and len(value) != len(outputs):
            c.add(("compile", key), f"has {len(value)} weights for {len(outputs)} model outputs")


def load_spec_text(text: str | bytes, file: str = "<spec>") -> tuple[Spec | None, list[SpecError]]:
    data, positions, errors = load_yaml(text, file)
    if errors:
        return None, errors
    return contained(validate_data, data, positions, file)


def contained(check, data: Any, positions: Positions, file: str) -> tuple[Spec | None, list[SpecError]]:
    """`check(data, positions, file)`, with a bug in a check reported as an error of this file instead of
    raised: `specc validate a.yaml b.yaml` still checks and reports b.yaml."""
    try:
        return check(data, positions, file)
    except (RecursionError, MemoryError):
        return None, [SpecError(file, 1, 1, "", "the spec is too large or too deeply nested to check")]
    except Exception as exc:  # noqa: BLE001 - reported, not hidden: the message says it is specc's bug
        if os.environ.get("SPECC_DEBUG"):
            raise
        return None, [SpecError(file, 1, 1, "", f"specc could not check this file (a bug in specc: "
                                                f"{type(exc).__name__}; run with SPECC_DEBUG=1 for the traceback)")]


def load_spec(path: str | os.PathLike) -> tuple[Spec | None, list[SpecError]]:
    file = os.fspath(path)
    try:
        with open_regular_file(file) as fh:
            text = fh.read(4_000_000)
    except NotRegularFile as exc:
        return None, [SpecError(file, 1, 1, "", f"{exc}; expected a YAML spec file")]
    except OSError as exc:
        return None, [SpecError(file, 1, 1, "", f"cannot read the file: {exc.strerror or exc}")]
    return load_spec_text(text, file)
