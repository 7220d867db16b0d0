"""Blocks, repeats, variables, includes and shared layers, expanded into the flat v1 model.

    expansion = expand(data, positions, "model.yaml")
    expansion.data        # the spec as v1 states it: every instance's layers, generated names, `inputs`
    expansion.origins     # expanded path -> where it was written (file, path, block instances around it)
    expansion.instances   # each block instance and the layers it made, for the summary's one row
    expansion.errors      # positioned SpecErrors; the data is only meaningful without them

The validator, the graph and the runtime see only the expanded model, so every v1 check applies to what a
block makes; `locate` turns an error at an expanded path back into the place the user wrote it: the
instance's line in the spec, with the line in each block definition it came through.

A spec with none of these constructs is returned as it is (the same object), so v1 files mean exactly
what they meant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .errors import Path, SpecError, format_path, show_value, suggest
from .exprs import ExprError, substitute
from .files import NotRegularFile, open_regular_file
from .yamlpos import Positions, load_yaml

TEMPLATE_KEYS = ("blocks", "vars", "include")
BLOCK_KEYS = ("params", "inputs", "layers", "outputs")
INSTANCE_KEYS = ("block", "repeat", "name", "inputs")  # every other key of an instance is a parameter
USE_KEYS = ("use", "name", "inputs")
DEFAULT_BLOCK_INPUT = "x"
MAX_INCLUDES = 64  # files, all includes of one spec together
MAX_NESTING = 16  # blocks instantiating blocks
MAX_REPEAT = 1_000
MAX_LAYERS = 20_000  # layers after expansion (yamlpos.MAX_NODES bounds a file's own values)
INCLUDE_PATH_ENV = "SPECC_INCLUDE_PATH"


@dataclass(eq=False)
class Source:
    """One YAML file of the spec: the spec itself (top) or an included file."""

    file: str
    positions: Positions
    top: bool


@dataclass(frozen=True)
class Frame:
    """One block instance an expanded value lies in: the block, where it is defined, and the entry that
    instantiated it (in the spec or in an enclosing block's body)."""

    block: str
    source: Source
    def_path: Path
    at_source: Source
    at_path: Path


@dataclass(frozen=True)
class Origin:
    source: Source
    path: Path
    frames: tuple[Frame, ...] = ()
    # a block parameter's value: where the innermost block uses it (`units: ${units}`)
    used_at: tuple[Source, Path] | None = None


@dataclass
class Instance:
    """A block instance in the expanded model: one row of the summary."""

    name: str
    block: str
    inputs: list[str]
    outputs: list[str]
    layers: list[str] = field(default_factory=list)  # the layers it made directly, in order
    children: list[Instance] = field(default_factory=list)

    def members(self) -> list[str]:
        """Every layer the instance made, nested instances' included."""
        return self.layers + [n for c in self.children for n in c.members()]


@dataclass
class Expansion:
    data: Any
    origins: dict[Path, Origin] = field(default_factory=dict)
    instances: list[Instance] = field(default_factory=list)
    errors: list[SpecError] = field(default_factory=list)
    expanded: bool = False  # whether the spec used any construct (else `data` is the input itself)


@dataclass
class _Block:
    name: str
    source: Source
    path: Path
    params: dict[str, tuple[Any, Path] | None]  # name -> (default, where) or None (required)
    inputs: list[str]
    layers: list[Any]
    outputs: list[str] | None


@dataclass
class _Var:
    value: Any
    source: Source
    path: Path


class _Broken(Exception):
    """A reference to a variable whose own definition failed (reported there, once)."""


# --- positions --------------------------------------------------------------------------------------------


def _position(source: Source, path: Path, prefer_key: bool = False) -> tuple[str, int, int]:
    if source.top:
        override = source.positions.source_of(path)
        if override is not None:
            return override, 0, 0
    line, col = source.positions.of(path, prefer_key)
    return source.file, line, col


def _within(origin: Origin, frame: Frame) -> bool:
    return origin.source is frame.source and origin.path[: len(frame.def_path)] == frame.def_path


def locate(origin: Origin, message: str, prefer_key: bool = False) -> SpecError:
    """The error `message` about the value at `origin`: outside blocks at that value; inside a block
    instance at the instance in the spec, with `(in block 'b' defined at file:line)` for each block it
    came through, and the same positions as `context` (validate --format json)."""
    file, line, col = _position(origin.source, origin.path, prefer_key)
    if not origin.frames:
        return SpecError(file, line, col, format_path(origin.path), message)
    frames = origin.frames
    context = []
    for k, frame in enumerate(frames):
        if k + 1 < len(frames):
            where = _position(frame.source, frames[k + 1].at_path)
            at = frames[k + 1].at_path
        elif _within(origin, frame):
            where, at = (file, line, col), origin.path
        elif origin.used_at is not None:
            where, at = _position(*origin.used_at), origin.used_at[1]
        else:
            where, at = _position(frame.source, frame.def_path, True), frame.def_path
        context.append({"block": frame.block, "file": where[0], "line": where[1], "column": where[2],
                        "path": format_path(at)})
    if not (origin.source.top and origin.path[:1] != ("blocks",)):
        file, line, col = _position(frames[0].at_source, frames[0].at_path)
    note = ", ".join(f"in block '{c['block']}' defined at {c['file']}:{c['line']}" for c in context)
    return SpecError(file, line, col, format_path(origin.path), f"{message} ({note})", tuple(context))


def find_origin(origins: dict[Path, Origin], path: Path) -> Origin | None:
    """The origin of an expanded path: the longest recorded prefix, with the rest of the path appended."""
    path = tuple(path)
    for n in range(len(path), 0, -1):
        origin = origins.get(path[:n])
        if origin is not None:
            return Origin(origin.source, origin.path + path[n:], origin.frames, origin.used_at)
    return None


# --- the expander -------------------------------------------------------------------------------------------


def uses_templates(data: Any) -> bool:
    """Whether the spec uses blocks, repeats, variables, includes or shared layers at all."""
    if not isinstance(data, dict):
        return False
    if any(key in data for key in TEMPLATE_KEYS):
        return True
    model = data.get("model")
    layers = model.get("layers") if isinstance(model, dict) else None
    if isinstance(layers, list) and any(isinstance(e, dict) and ("block" in e or "repeat" in e or "use" in e)
                                        for e in layers):
        return True
    return _has_reference(data)


def _has_reference(value: Any) -> bool:
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, dict):
        return any(_has_reference(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_reference(v) for v in value)
    return False


def expand(data: Any, positions: Positions, file: str, include_path: list[str] | None = None) -> Expansion:
    if not uses_templates(data):
        return Expansion(data)
    expander = _Expander(Source(file, positions, True), include_path)
    return expander.run(data)


class _Scope:
    """Names a `${...}` may use: a block's parameters, then the spec's variables."""

    def __init__(self, expander: _Expander, params: dict[str, Any] | None = None,
                 param_origins: dict[str, Origin] | None = None):
        self.expander, self.params, self.param_origins = expander, params or {}, param_origins or {}

    def names(self) -> _Names:
        return _Names(self)


class _Names(dict):
    """A read-only mapping for the evaluator: parameters first, variables resolved on first use."""

    def __init__(self, scope: _Scope):
        super().__init__()
        self.scope = scope

    def __contains__(self, key: object) -> bool:
        return key in self.scope.params or key in self.scope.expander.vars

    def __getitem__(self, key: str) -> Any:
        if key in self.scope.params:
            return self.scope.params[key]
        return self.scope.expander.var(key)

    def __iter__(self):
        return iter(sorted(set(self.scope.params) | set(self.scope.expander.vars)))

    def __len__(self) -> int:
        return len(set(self.scope.params) | set(self.scope.expander.vars))

    def keys(self):
        return list(self)


class _Expander:
    def __init__(self, top: Source, include_path: list[str] | None):
        self.top = top
        self.errors: list[SpecError] = []
        self.origins: dict[Path, Origin] = {}
        self.blocks: dict[str, _Block] = {}
        self.vars: dict[str, _Var] = {}
        self.values: dict[str, Any] = {}
        self.resolving: list[str] = []
        self.broken: set[str] = set()
        self.loaded: set[str] = set()
        self.sources = 0
        self.counters: dict[str, int] = {}
        self.taken: set[str] = set()
        self.n_layers = 0
        self.instances_top: list[Instance] = []
        self.instance_outputs: dict[str, list[str]] = {}
        # the block instance being expanded: its input names, its Instance, its auto-name counters and the
        # names its body gives
        self._block_inputs: set[str] = set()
        self._current: Instance | None = None
        self._local_counters: dict[str, int] = {}
        self._local_taken: set[str] = set()
        if include_path is None:
            include_path = [p for p in os.environ.get(INCLUDE_PATH_ENV, "").split(os.pathsep) if p]
        top_dir = os.path.dirname(os.path.abspath(top.file)) if top.file and not top.file.startswith("<") \
            else os.getcwd()
        self.roots = [os.path.realpath(top_dir)] + [os.path.realpath(p) for p in include_path]

    def error(self, source: Source, path: Path, message: str, frames: tuple[Frame, ...] = (),
              at_key: bool = False) -> None:
        self.errors.append(locate(Origin(source, tuple(path), frames), message, at_key))

    # --- includes, blocks, vars -------------------------------------------------------------------------

    def run(self, data: dict) -> Expansion:
        self._read_file(data, self.top, [os.path.realpath(self.top.file) if not self.top.file.startswith("<")
                                         else self.top.file])
        for name in list(self.vars):
            try:
                self.var(name)
            except (_Broken, ExprError):
                pass
        out: dict = {}
        try:
            model = self._model(data["model"]) if "model" in data else None
        except _TooLarge as exc:
            self.errors.append(locate(exc.origin, f"the model expands to more than {MAX_LAYERS:,} layers"))
            return Expansion(None, self.origins, [], self.errors, True)
        for key, value in data.items():
            if key in TEMPLATE_KEYS:
                continue
            if key == "model":
                out[key] = model
            else:
                out[key] = self._subst_recorded(value, (key,))
                if key == "compile":
                    self._rename_outputs_in_compile(out[key])
        return Expansion(out, self.origins, self.instances_top, self.errors, True)

    def _read_file(self, data: Any, source: Source, chain: list[str]) -> None:
        """Blocks and vars of one file, its includes first (so the file's own definitions win)."""
        includes = data.get("include") if isinstance(data, dict) else None
        if includes is not None:
            items = [(includes, ("include",))] if isinstance(includes, str) else \
                [(x, ("include", i)) for i, x in enumerate(includes)] if isinstance(includes, list) else None
            if items is None:
                self.error(source, ("include",), f"must be a file name or a list of file names, got "
                                                 f"{show_value(includes)}")
                items = []
            for name, path in items:
                self._include(name, source, path, chain)
        blocks = data.get("blocks")
        if blocks is not None:
            if not isinstance(blocks, dict):
                self.error(source, ("blocks",), "must be a mapping of block names to definitions {params, "
                                                "inputs, layers, outputs}")
            else:
                for name, raw in blocks.items():
                    self._define_block(name, raw, source)
        variables = data.get("vars")
        if variables is not None:
            if not isinstance(variables, dict):
                self.error(source, ("vars",), f"must be a mapping of names to values, e.g. {{width: 64}}, got "
                                              f"{show_value(variables)}")
            else:
                for name, value in variables.items():
                    if not isinstance(name, str) or not name.isidentifier():
                        self.error(source, ("vars", name), f"variable name {show_value(name)} must be letters, "
                                                           f"digits and '_', not starting with a digit", at_key=True)
                        continue
                    self.vars[name] = _Var(value, source, ("vars", name))  # later files and the spec win

    def _include(self, name: Any, source: Source, path: Path, chain: list[str]) -> None:
        if not isinstance(name, str) or not name:
            self.error(source, path, f"must be a file name (relative to this file), got {show_value(name)}")
            return
        base = os.path.dirname(source.file) if not source.file.startswith("<") else ""
        shown = os.path.normpath(os.path.join(base, name))
        real = os.path.realpath(shown)
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots):
            self.error(source, path, f"include {name!r} is outside the spec's directory ({self.roots[0]}); a spec "
                                     f"includes only files below its own directory, or below a directory listed "
                                     f"in ${INCLUDE_PATH_ENV}")
            return
        if real in chain:
            cycle = chain[chain.index(real):] + [real]
            self.error(source, path, "include cycle: " + " -> ".join(_short(p) for p in cycle))
            return
        if real in self.loaded:
            return  # included twice along two paths: its definitions are already in
        self.sources += 1
        if self.sources > MAX_INCLUDES:
            self.error(source, path, f"more than {MAX_INCLUDES} included files")
            return
        try:
            with open_regular_file(shown) as fh:
                text = fh.read(4_000_000)
        except NotRegularFile as exc:
            self.error(source, path, f"cannot include {name!r}: {exc}")
            return
        except OSError as exc:
            self.error(source, path, f"cannot include {name!r}: {exc.strerror or exc}")
            return
        data, positions, errors = load_yaml(text, shown)
        if errors:
            self.errors.extend(errors)
            return
        self.loaded.add(real)
        included = Source(shown, positions, False)
        if not isinstance(data, dict):
            self.error(included, (), "an included file must be a mapping with `blocks`, `vars` or `include`")
            return
        for key in data:
            if key not in ("specc", "blocks", "vars", "include"):
                self.error(included, (key,), f"an included file holds only `blocks`, `vars` and `include` (and "
                                             f"`specc`); `{key}` belongs in the spec that includes it", at_key=True)
        self._read_file(data, included, chain + [real])

    def _define_block(self, name: Any, raw: Any, source: Source) -> None:
        path = ("blocks", name)
        if not isinstance(name, str) or not name.replace("_", "a").replace("-", "a").isalnum():
            self.error(source, path, f"block name {show_value(name)} must be letters, digits, '_' and '-'",
                       at_key=True)
            return
        if name in self.blocks:
            first = self.blocks[name]
            f, line, _ = _position(first.source, first.path, True)
            self.error(source, path, f"block '{name}' is already defined at {f}:{line}", at_key=True)
            return
        if not isinstance(raw, dict):
            self.error(source, path, "a block is a mapping with `layers` (and optional `params`, `inputs`, "
                                     f"`outputs`), got {show_value(raw)}")
            return
        ok = True
        for key in raw:
            if key not in BLOCK_KEYS:
                self.error(source, path + (key,), f"unknown key `{key}`{suggest(str(key), BLOCK_KEYS)}; a block "
                                                  f"takes: {', '.join(BLOCK_KEYS)}", at_key=True)
                ok = False
        params: dict[str, tuple[Any, Path] | None] = {}
        raw_params = raw.get("params", [])
        if isinstance(raw_params, dict):
            raw_params = [{k: v} for k, v in raw_params.items()]
            listed = False
        else:
            listed = True
        if not isinstance(raw_params, list):
            self.error(source, path + ("params",), "must be a list of parameter names, with defaults as "
                                                   "{name: default}: [filters, {strides: 1}]")
            raw_params, ok = [], False
        for i, item in enumerate(raw_params):
            where = path + ("params", i) if listed else path + ("params",)
            if isinstance(item, dict) and len(item) == 1:
                (pname, default), = item.items()
                ppath = (where + (pname,)) if listed else path + ("params", pname)
                value = (default, ppath)
            else:
                pname, value, ppath = item, None, where
            if not isinstance(pname, str) or not pname.isidentifier() or pname in INSTANCE_KEYS + ("type",):
                self.error(source, ppath, f"parameter {show_value(pname)} must be a name of letters, digits and "
                                          f"'_' other than {', '.join(INSTANCE_KEYS + ('type',))}", at_key=listed)
                ok = False
                continue
            params[pname] = value
        inputs = raw.get("inputs", [DEFAULT_BLOCK_INPUT])
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) and x for x in inputs):
            self.error(source, path + ("inputs",), "must be a name or a non-empty list of names")
            inputs, ok = [DEFAULT_BLOCK_INPUT], False
        layers = raw.get("layers")
        if not isinstance(layers, list) or not layers:
            self.error(source, path + ("layers",) if "layers" in raw else path,
                       "a block needs a non-empty list of `layers`")
            layers, ok = [], False
        outputs = raw.get("outputs")
        if outputs is not None:
            outputs = [outputs] if isinstance(outputs, str) else outputs
            if not isinstance(outputs, list) or not outputs or not all(isinstance(x, str) and x for x in outputs):
                self.error(source, path + ("outputs",), "must be a layer name or a non-empty list of names")
                outputs, ok = None, False
        block = _Block(name, source, path, params, inputs, layers, outputs)
        self.blocks[name] = block if ok else _Block(name, source, path, params, inputs, [], outputs)

    def var(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name in self.broken:
            raise _Broken(name)
        if name in self.resolving:
            cycle = self.resolving[self.resolving.index(name):] + [name]
            raise ExprError("variables refer to each other in a cycle: " + " -> ".join(cycle))
        definition = self.vars[name]
        self.resolving.append(name)
        try:
            value, _, failed = self._subst(definition.value, _Scope(self), definition.source, definition.path, (),
                                           report=True)
        finally:
            self.resolving.pop()
        if failed:
            self.broken.add(name)
            raise _Broken(name)
        self.values[name] = value
        return value

    # --- substitution ---------------------------------------------------------------------------------

    def _subst(self, value: Any, scope: _Scope, source: Source, path: Path, frames: tuple[Frame, ...],
               report: bool = True, rel: Path | None = None, origins: dict | None = None) -> tuple[Any, dict, bool]:
        """`value` with every `${...}` replaced: (value, {relative path: origin} for values taken whole from
        a parameter, failed)."""
        origins = {} if origins is None else origins
        rel = () if rel is None else rel
        failed = False
        if isinstance(value, str):
            if "${" not in value:
                return value, origins, False
            try:
                result = substitute(value, scope.names())
            except _Broken:
                return None, origins, True
            except ExprError as exc:
                if report:
                    self.error(source, path, f"cannot evaluate {show_value(value)}: {exc}", frames)
                return None, origins, True
            whole = value.strip()[2:-1].strip() if value.startswith("${") and value.endswith("}") else None
            if whole is not None and whole in scope.param_origins:
                given = scope.param_origins[whole]
                origins[rel] = Origin(given.source, given.path, frames, (source, path)) if frames else given
            elif whole is not None and whole in self.vars and whole not in scope.params:
                var = self.vars[whole]
                if var.source.top and var.source.positions.source_of(var.path) is not None:
                    origins[rel] = Origin(var.source, var.path)  # `--set vars.width=...`: blame the command line
            return result, origins, False
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                out[k], _, bad = self._subst(v, scope, source, path + (k,), frames, report, rel + (k,), origins)
                failed |= bad
            return out, origins, failed
        if isinstance(value, list):
            out_list = []
            for i, v in enumerate(value):
                item, _, bad = self._subst(v, scope, source, path + (i,), frames, report, rel + (i,), origins)
                out_list.append(item)
                failed |= bad
            return out_list, origins, failed
        return value, origins, False

    def _subst_recorded(self, value: Any, path: Path) -> Any:
        """A value of the spec outside blocks, substituted; values taken whole from an overridden variable
        keep that origin (their errors point at the `--set`)."""
        value, rel, _ = self._subst(value, _Scope(self), self.top, path, ())
        for suffix, origin in rel.items():
            self.origins[path + suffix] = origin
        return value

    # --- the model ------------------------------------------------------------------------------------

    def _auto(self, base: str) -> str:
        while True:
            k = self.counters.get(base, 0)
            self.counters[base] = k + 1
            candidate = base if k == 0 else f"{base}_{k}"
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate

    def _model(self, model: Any) -> Any:
        if not isinstance(model, dict):
            return self._subst(model, _Scope(self), self.top, ("model",), ())[0]
        layers = model.get("layers")
        templated = isinstance(layers, list) and any(
            isinstance(e, dict) and ("block" in e or "repeat" in e or "use" in e) for e in layers)
        out = {}
        for key, value in model.items():
            if key != "layers":
                out[key] = self._subst_recorded(value, ("model", key))
        if not templated:
            if "layers" in model:
                out["layers"] = self._subst_recorded(layers, ("model", "layers"))
            return out
        sequential = "inputs" not in model and "outputs" not in model
        if sequential and not isinstance(out.get("input"), (dict, list)):
            # a chain of instances needs its input; the rest of the model is checked once it has one
            if "input" in out:
                self.error(self.top, ("model", "input"), f"must be a shape like [28, 28, 1] or {{shape: [28, 28, 1], "
                                                         f"name: image}}, got {show_value(out['input'])}")
            else:
                self.error(self.top, ("model",), "missing `input` (Sequential) or `inputs` + `outputs` (Functional)")
            return out
        # names the spec gives (instances' included), so generated and automatic names avoid them
        for entry in layers:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                self.taken.add(entry["name"])
        emitted: list[tuple[dict, Origin, dict]] = []
        instance_outputs = self.instance_outputs
        input_shape = out.pop("input", None) if sequential else None
        if sequential:
            input_name = input_shape.get("name") if isinstance(input_shape, dict) else None
            input_name = input_name if isinstance(input_name, str) else "input_layer"
            previous = [input_name]
            self.taken.add(input_name)
        for i, entry in enumerate(layers):
            path = ("model", "layers", i)
            if not isinstance(entry, dict):
                emitted.append((entry, Origin(self.top, path), {}))
                continue
            if sequential and "inputs" in entry:
                self.error(self.top, path + ("inputs",), "`inputs` is only used in Functional models (model.inputs "
                                                         "+ model.outputs); in a Sequential model each layer takes "
                                                         "the one before it", at_key=True)
                continue
            given = previous if sequential else None
            made = self._entry(entry, self.top, path, (), _Scope(self), None, given, emitted,
                               self.instances_top, instance_outputs)
            if sequential and made:
                previous = made[:1]
        # top-level references to an instance mean its (first) output
        for entry, _, _ in emitted:
            if isinstance(entry, dict) and isinstance(entry.get("inputs"), list):
                entry["inputs"] = [_resolve_top(r, instance_outputs) for r in entry["inputs"]]
            if isinstance(entry, dict) and isinstance(entry.get("use"), str):
                entry["use"] = _resolve_top(entry["use"], instance_outputs)
        names = self._name_unnamed([e for e, _, _ in emitted])

        def rename(instances: list[Instance]) -> None:
            for inst in instances:
                inst.inputs = [names.get(r, r) if isinstance(r, _Unnamed) else _resolve_top(r, instance_outputs)
                               for r in inst.inputs]
                rename(inst.children)

        rename(self.instances_top)
        if sequential:
            previous = [names.get(r, r) if isinstance(r, _Unnamed) else r for r in previous]
        for entry, origin, _ in emitted:
            name = entry.get("name") if isinstance(entry, dict) else None
            if isinstance(name, str) and name in instance_outputs:
                self.errors.append(locate(Origin(origin.source, origin.path + ("name",), origin.frames),
                                          f"name {name!r} is used by a layer and by a block instance; names must "
                                          f"be unique in a model"))
        if sequential:
            shape = input_shape.get("shape") if isinstance(input_shape, dict) else input_shape
            out = {"inputs": {input_name: shape}, **out}
            self.origins[("model", "inputs")] = Origin(self.top, ("model", "input"))
            self.origins[("model", "inputs", input_name)] = Origin(self.top, ("model", "input"))
            out["outputs"] = list(previous)
            self.origins[("model", "outputs")] = Origin(self.top, ("model", "layers"))
        else:
            outputs = out.get("outputs")
            if isinstance(outputs, str):
                outputs = [outputs]
            if isinstance(outputs, list):
                out["outputs"] = [_resolve_top(r, instance_outputs) for r in outputs]
        out["layers"] = []
        for j, (entry, origin, rel) in enumerate(emitted):
            out["layers"].append(entry)
            self.origins[("model", "layers", j)] = origin
            for suffix, o in rel.items():
                self.origins[("model", "layers", j) + suffix] = o
        return out

    def _rename_outputs_in_compile(self, compile_section: Any) -> None:
        """`compile.loss: {head: mse}` naming an instance means the instance's output layer."""
        outputs = getattr(self, "instance_outputs", {})
        if not outputs or not isinstance(compile_section, dict):
            return
        for key in ("loss", "metrics", "loss_weights"):
            value = compile_section.get(key)
            if isinstance(value, dict):
                compile_section[key] = {_resolve_top(k, outputs) if isinstance(k, str) else k: v
                                        for k, v in value.items()}

    def _name_unnamed(self, entries: list[Any]) -> dict:
        """Keras's auto-names for the spec's own unnamed layers, as graph.assign_names gives them; the
        placeholders standing for them in `inputs` are replaced."""
        names: dict[str, str] = {}

        def walk(chain: list[Any]) -> None:
            for entry in chain:
                if not isinstance(entry, dict):
                    continue
                placeholder = entry.get("name")
                if isinstance(placeholder, _Unnamed):
                    entry["name"] = names[placeholder] = self._auto(_snake(entry.get("type")))
                if entry.get("type") == "Sequential" and isinstance(entry.get("layers"), list):
                    walk(entry["layers"])

        walk(entries)
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("inputs"), list):
                entry["inputs"] = [names.get(r, r) if isinstance(r, _Unnamed) else r for r in entry["inputs"]]
        return names

    def _entry(self, entry: dict, source: Source, path: Path, frames: tuple[Frame, ...], scope: _Scope,
               prefix: str | None, given: list[str] | None, emitted: list, instances: list[Instance],
               locals_: dict[str, Any]) -> list[str] | None:
        """Expands one entry of the model's or a block's `layers`; returns the names of its outputs.

        `prefix`: the enclosing instance's name (None at the top level); `given`: the input the entry takes
        when it names none (the previous entry's output in a chain); `locals_`: names visible in the scope,
        mapping to tensor names (a block's) or an instance's outputs (the top level)."""
        if "block" in entry or "repeat" in entry:
            return self._instances(entry, source, path, frames, scope, prefix, given, emitted, instances, locals_)
        origin = Origin(source, path, frames)
        fixed = {k: v for k, v in entry.items() if k != "inputs"}
        value, rel, failed = self._subst(fixed, scope, source, path, frames)
        if failed:
            return None
        inputs = self._inputs(entry, source, path, frames, scope, given, locals_, prefix)
        if inputs is False:
            return None
        if "use" in entry:
            for key in entry:
                if key not in USE_KEYS:
                    self.error(source, path + (key,), f"a shared layer `{{use: layer, inputs: ...}}` takes only "
                                                      f"{', '.join(USE_KEYS)}; its arguments are the used layer's",
                               frames, at_key=True)
                    return None
            owner = value.get("use")
            if not isinstance(owner, str) or not owner:
                self.error(source, path + ("use",), f"must name a layer defined above, got {show_value(owner)}",
                           frames)
                return None
            if prefix is not None:
                if owner not in locals_ or not isinstance(locals_[owner], str) or owner in self._block_inputs:
                    known = [k for k, v in locals_.items() if isinstance(v, str) and k not in self._block_inputs]
                    self.error(source, path + ("use",), f"unknown layer {owner!r}{suggest(owner, known)}; a "
                                                        f"`use` in a block names a layer above it in the block "
                                                        f"(known: {', '.join(known) or 'none'})", frames)
                    return None
                value["use"] = locals_[owner]
        name = value.get("name")
        if isinstance(name, int) and not isinstance(name, bool):  # name: "${index + 1}"
            name = value["name"] = str(name)
        if prefix is not None:
            local = name if isinstance(name, str) and name else self._local_auto(_snake(
                value.get("type") if "use" not in value else value["use"]))
            if not isinstance(local, str):
                self.error(source, path + ("name",), f"must be a name, got {show_value(name)}", frames)
                return None
            if local in locals_:
                self.error(source, path + ("name",) if "name" in entry else path,
                           f"duplicate name {local!r} in block '{frames[-1].block}'", frames)
                return None
            generated = f"{prefix}_{local}"
            value["name"] = generated
            locals_[local] = generated
            self.taken.add(generated)
        elif name is None:
            value["name"] = generated = _Unnamed() if "use" not in value else self._auto(str(value["use"]))
        else:
            generated = name  # the validator checks it
        if inputs is not None:
            value["inputs"] = inputs
        if "use" in value:
            value = {"use": value["use"], "name": value["name"], **({"inputs": value["inputs"]}
                                                                  if "inputs" in value else {})}
        self.n_layers += 1
        if self.n_layers > MAX_LAYERS:
            raise _TooLarge(origin)
        emitted.append((value, origin, rel))
        if instances is not None and prefix is not None and self._current is not None:
            self._current.layers.append(value["name"])
        return [generated]

    def _local_auto(self, base: str) -> str:
        while True:
            k = self._local_counters.get(base, 0)
            self._local_counters[base] = k + 1
            candidate = base if k == 0 else f"{base}_{k}"
            if candidate not in self._local_taken:
                return candidate

    def _inputs(self, entry: dict, source: Source, path: Path, frames: tuple[Frame, ...], scope: _Scope,
                given: list[str] | None, locals_: dict[str, Any], prefix: str | None) -> list | None | bool:
        """The entry's inputs as tensor names: its `inputs` (resolved in the block), else `given`; None when
        neither (a plain layer of a Functional top level: the validator says what is missing); False after
        an error."""
        if "inputs" not in entry:
            return list(given) if given is not None else None
        raw, _, failed = self._subst(entry["inputs"], scope, source, path + ("inputs",), frames)
        if failed:
            return False
        refs = [raw] if isinstance(raw, str) else raw
        if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
            self.error(source, path + ("inputs",), f"must be a name or a list of names, got {show_value(raw)}",
                       frames)
            return False
        if prefix is None:
            return list(refs)
        out = []
        for j, ref in enumerate(refs):
            target = _resolve_local(ref, locals_)
            if target is None:
                known = list(locals_)
                self.error(source, path + ("inputs", j) if isinstance(raw, list) else path + ("inputs",),
                           f"unknown input {ref!r}{suggest(ref, known)} in block '{frames[-1].block}'; a layer "
                           f"in a block takes the block's inputs or layers above it (known: {', '.join(known)})",
                           frames)
                return False
            out.append(target)
        return out

    def _instances(self, entry: dict, source: Source, path: Path, frames: tuple[Frame, ...], scope: _Scope,
                   prefix: str | None, given: list[str] | None, emitted: list, instances: list[Instance],
                   locals_: dict[str, Any]) -> list[str] | None:
        block_name = entry.get("block")
        if "block" not in entry:
            if "type" in entry:
                return self._repeat_layer(entry, source, path, frames, scope, prefix, given, emitted, instances,
                                          locals_)
            self.error(source, path, "`repeat` needs the `block` (or the layer `type`) to repeat: {repeat: 3, "
                                     "block: name, ...}", frames)
            return None
        if not isinstance(block_name, str) or block_name not in self.blocks:
            known = sorted(self.blocks)
            hint = suggest(block_name, known) if isinstance(block_name, str) else ""
            self.error(source, path + ("block",), f"unknown block {show_value(block_name)}{hint}; defined blocks: "
                                                  f"{', '.join(known) or 'none (add a top-level `blocks:` section)'}",
                       frames)
            return None
        for frame in frames:
            if frame.block == block_name:
                chain = [f.block for f in frames[frames.index(frame):]] + [block_name]
                self.error(source, path + ("block",), "blocks instantiate each other in a cycle: "
                                                      + " -> ".join(chain), frames)
                return None
        if len(frames) >= MAX_NESTING:
            self.error(source, path, f"blocks nested more than {MAX_NESTING} deep", frames)
            return None
        block = self.blocks[block_name]
        if not block.layers:
            return None  # its definition's error is reported
        sets = self._copies(entry, {k: v for k, v in entry.items() if k not in INSTANCE_KEYS}, source, path,
                            frames, scope)
        if sets is None:
            return None
        raw_name = entry.get("name")
        if raw_name is not None and (not isinstance(raw_name, str) or not raw_name):
            self.error(source, path + ("name",), f"must be a name, got {show_value(raw_name)}", frames)
            return None
        inputs = self._inputs(entry, source, path, frames, scope, given, locals_, prefix)
        if inputs is False:
            return None
        if inputs is None:
            self.error(source, path, "block instance needs `inputs` in a Functional model: the names of the "
                                     "inputs or layers it takes", frames)
            return None
        outputs = inputs
        for k, (args, where) in enumerate(sets):
            # in a repeat, `${index}` is the copy's number from 0 (in its name and parameters)
            copy_scope = _Scope(self, {**scope.params, "index": k}, scope.param_origins) if "repeat" in entry \
                else scope
            local = raw_name
            if isinstance(raw_name, str) and "${" in raw_name:
                local, _, failed = self._subst(raw_name, copy_scope, source, path + ("name",), frames)
                if failed:
                    return None
                if isinstance(local, int) and not isinstance(local, bool):
                    local = str(local)
                if not isinstance(local, str) or not local:
                    self.error(source, path + ("name",), f"must give a name, got {show_value(local)}", frames)
                    return None
            elif raw_name and "repeat" in entry:
                local = f"{raw_name}_{k + 1}"
            if prefix is None:
                inst_name = local if local else self._auto(block_name)
                self.taken.add(inst_name)
                if inst_name in locals_:
                    self.error(source, path + ("name",) if "name" in entry else path,
                               f"duplicate block instance name {inst_name!r}", frames)
                    return None
            else:
                local = local or self._local_auto(block_name)
                inst_name = f"{prefix}_{local}"
            if prefix is not None and local in locals_:
                self.error(source, path + ("name",) if "name" in entry else path,
                           f"duplicate name {local!r} in block '{frames[-1].block}'", frames)
                return None
            made = self._instance(block, args, where, source, path, frames, copy_scope, inst_name, outputs,
                                  emitted, instances)
            if made is None:
                return None
            key = inst_name if prefix is None else local
            locals_[key] = made if prefix is None else made[0]
            for out_name, tensor in zip(block.outputs or [], made):
                locals_[f"{key}.{out_name}"] = [tensor] if prefix is None else tensor
            outputs = made[:1]
            if k + 1 < len(sets) and len(block.inputs) != 1:
                self.error(source, path + ("repeat",), f"`repeat` chains copies, so block '{block.name}' must take "
                                                       f"one input; it takes {len(block.inputs)}", frames)
                return None
        return made

    def _copies(self, entry: dict, common: dict, source: Source, path: Path, frames: tuple[Frame, ...],
                scope: _Scope) -> list[tuple[dict, dict]] | None:
        """The arguments of each copy an entry makes, with where each was written: one copy, or one per
        repeat (`repeat: 3`, or `repeat: [{filters: 64}, {filters: 128}]` merged over the entry's own)."""
        where = {k: path + (k,) for k in common}
        if "repeat" not in entry:
            return [(common, where)]
        count = entry["repeat"]
        if isinstance(count, str) and "${" in count:
            count, _, failed = self._subst(count, scope, source, path + ("repeat",), frames)
            if failed:
                return None
        if isinstance(count, list):
            if not count or not all(isinstance(x, dict) for x in count):
                self.error(source, path + ("repeat",), "must be a count or a non-empty list of parameter "
                                                       "mappings, one per copy", frames)
                return None
            if len(count) > MAX_REPEAT:
                self.error(source, path + ("repeat",), f"at most {MAX_REPEAT} copies, got {len(count)}", frames)
                return None
            bad = [key for x in count for key in x if key in INSTANCE_KEYS + ("type",)]
            if bad:
                self.error(source, path + ("repeat",), f"a parameter set cannot set `{bad[0]}`; it gives the "
                                                       f"copy's parameters", frames)
                return None
            return [({**common, **x}, {**where, **{key: path + ("repeat", k, key) for key in x}})
                    for k, x in enumerate(count)]
        if isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= MAX_REPEAT:
            return [(common, where)] * count
        self.error(source, path + ("repeat",), f"must be a count from 1 to {MAX_REPEAT} or a non-empty list of "
                                               f"parameter mappings, got {show_value(count)}", frames)
        return None

    def _repeat_layer(self, entry: dict, source: Source, path: Path, frames: tuple[Frame, ...], scope: _Scope,
                      prefix: str | None, given: list[str] | None, emitted: list, instances: list[Instance],
                      locals_: dict[str, Any]) -> list[str] | None:
        """`{repeat: 3, type: Dense, units: 64}`: copies of one layer, each taking the one before it."""
        common = {k: v for k, v in entry.items() if k not in ("repeat", "inputs", "name")}
        sets = self._copies(entry, common, source, path, frames, scope)
        if sets is None:
            return None
        made = given
        raw_name = entry.get("name")
        for k, (args, _) in enumerate(sets):
            copy = dict(args)
            if isinstance(raw_name, str) and raw_name:
                copy["name"] = raw_name if "${" in raw_name else f"{raw_name}_{k + 1}"
            elif raw_name is not None:
                copy["name"] = raw_name
            if k == 0 and "inputs" in entry:
                copy["inputs"] = entry["inputs"]
            copy_scope = _Scope(self, {**scope.params, "index": k}, scope.param_origins)
            made = self._entry(copy, source, path, frames, copy_scope, prefix, made, emitted, instances, locals_)
            if made is None:
                return None
        return made

    def _instance(self, block: _Block, args: dict, args_path: dict, source: Source, path: Path,
                  frames: tuple[Frame, ...], caller: _Scope, inst_name: str, inputs: list[str], emitted: list,
                  instances: list[Instance]) -> list[str] | None:
        frame = Frame(block.name, block.source, block.path, source, path)
        inner = frames + (frame,)
        ok = True
        params: dict[str, Any] = {}
        param_origins: dict[str, Origin] = {}
        for key, raw in args.items():
            key_path = args_path[key]
            if key not in block.params:
                takes = ", ".join(block.params) or "no parameters"
                self.error(source, key_path, f"block '{block.name}' has no parameter {show_value(key)}"
                                             f"{suggest(str(key), block.params)}; it takes: {takes}", frames,
                           at_key=True)
                ok = False
                continue
            value, rel, failed = self._subst(raw, caller, source, key_path, frames)
            if failed:
                ok = False
                continue
            params[key] = value
            param_origins[key] = rel.get((), Origin(source, key_path, frames))
        for pname, default in block.params.items():
            if pname in params:
                continue
            if default is None:
                self.error(source, path, f"block '{block.name}' needs parameter `{pname}`", frames)
                ok = False
                continue
            value, _, failed = self._subst(default[0], _Scope(self), block.source, default[1], inner)
            if failed:
                ok = False
                continue
            params[pname] = value
            param_origins[pname] = Origin(block.source, default[1], inner)
        if len(inputs) != len(block.inputs):
            self.error(source, path + ("inputs",) if "inputs" in (args or {}) else path,
                       f"block '{block.name}' takes {len(block.inputs)} input{'s' * (len(block.inputs) != 1)} "
                       f"({', '.join(block.inputs)}), got {len(inputs)}", frames)
            ok = False
        if not ok:
            return None
        scope = _Scope(self, params, param_origins)
        instance = Instance(inst_name, block.name, list(inputs), [])
        instances.append(instance)
        locals_: dict[str, Any] = dict(zip(block.inputs, inputs))
        saved = (self._block_inputs, self._current, self._local_counters, self._local_taken)
        self._block_inputs, self._current, self._local_counters = set(block.inputs), instance, {}
        self._local_taken = {e["name"] for e in block.layers if isinstance(e, dict) and isinstance(e.get("name"), str)}
        try:
            previous = [inputs[0]] if len(inputs) == 1 else None
            for j, entry in enumerate(block.layers):
                body_path = block.path + ("layers", j)
                if not isinstance(entry, dict):
                    self.error(block.source, body_path, f"each layer must be a mapping like {{type: Dense, "
                                                        f"units: 10}}, got {show_value(entry)}", inner)
                    return None
                given = previous
                if "inputs" not in entry and given is None:
                    self.error(block.source, body_path, f"block '{block.name}' takes several inputs "
                                                        f"({', '.join(block.inputs)}): name the ones this layer "
                                                        f"takes with `inputs`", inner)
                    return None
                made = self._entry(entry, block.source, body_path, inner, scope, inst_name, given, emitted,
                                   instance.children, locals_)
                if made is None:
                    return None
                previous = made[:1]
            outs = block.outputs or [None]
            result = []
            for k, out in enumerate(outs):
                if out is None:
                    result.append(previous[0])
                    continue
                target = _resolve_local(out, locals_)
                if target is None or out in block.inputs:
                    known = [k for k in locals_ if k not in block.inputs]
                    self.error(block.source, block.path + ("outputs", k) if block.outputs and len(outs) > 1
                               else block.path + ("outputs",), f"unknown output {out!r}{suggest(out, known)}; a "
                               f"block's outputs are layers of the block (known: {', '.join(known)})", inner)
                    return None
                result.append(target)
            instance.outputs = result
            return result
        finally:
            self._block_inputs, self._current, self._local_counters, self._local_taken = saved


class _TooLarge(Exception):
    def __init__(self, origin: Origin):
        self.origin = origin


class _Unnamed(str):
    """A top-level layer the spec leaves unnamed: named after expansion, as the validator would."""

    count = 0

    def __new__(cls):
        cls.count += 1
        return super().__new__(cls, f"<unnamed {cls.count}>")

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


def _resolve_local(ref: str, locals_: dict[str, Any]) -> str | None:
    target = locals_.get(ref)
    if isinstance(target, list):
        return target[0]
    return target


def _resolve_top(ref: Any, instance_outputs: dict[str, list[str]]) -> Any:
    if not isinstance(ref, str) or isinstance(ref, _Unnamed):
        return ref
    return instance_outputs[ref][0] if ref in instance_outputs else ref


def _snake(type_name: Any) -> str:
    from ..layers.base import snake_case

    return snake_case(type_name) if isinstance(type_name, str) and type_name.isidentifier() else "layer"


def _short(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return path



def expanded_yaml(spec: Any) -> str:
    """`specc expand`: a validated spec with its blocks, repeats, variables, includes and shared layers
    expanded, as YAML (a spec without them: the same values, as it was read)."""
    import yaml

    from .resolve import _plain

    return yaml.safe_dump(_plain(spec.expanded if spec.expanded is not None else spec.read),
                          sort_keys=False, default_flow_style=None, width=110)
