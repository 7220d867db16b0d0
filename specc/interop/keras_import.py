"""`specc import`: a Keras 3 model (a `.keras` archive, or the JSON of `model.to_json()` / its config.json)
as a specc spec, and its weights in specc's `.npz` format.

Every Keras layer whose class is a specc layer type converts argument by argument: an argument specc
has is carried over (initializers by name, tuples as lists), one specc does not have is dropped only when
its value is the one that changes nothing (null regularizers and constraints, `groups: 1`, channels_last,
float32...), and anything else is a Problem naming the layer and the argument with its place in the Keras
config (`$.config.layers[12].config.kernel_regularizer`). All problems are found in one pass; nothing is
written unless there are none. The spec is then validated like any other, so shapes and parameter counts
are checked by the same code that checks hand-written specs.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from typing import Any

from ..layers.base import REGISTRY, snake_case

MAX_CONFIG_BYTES = 64 << 20  # a config larger than this is not a model description


@dataclass
class Problem:
    where: str  # JSON path in the Keras config
    layer: str  # "name (Class)" or "" for the model itself
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.layer + ': ' if self.layer else ''}{self.message}"


class ImportFailed(Exception):
    """The source cannot be read as a Keras model, or holds something specc cannot express."""

    def __init__(self, source: str, problems: list[Problem]):
        super().__init__(f"{source}: {len(problems)} problem(s)")
        self.source, self.problems = source, problems


# Arguments specc has no field for, and the values at which leaving them out changes nothing.
NEUTRAL: dict[str, tuple] = {
    "groups": (1,), "data_format": ("channels_last", None), "sparse": (False,), "ragged": (False,),
    "optional": (False,), "synchronized": (False,), "renorm": (False,), "renorm_clipping": (None,),
    "renorm_momentum": (0.99,), "seed": (None,), "noise_shape": (None,), "lora_rank": (None,),
    "lora_alpha": (None,), "quantization_config": (None,), "unroll": (False,), "stateful": (False,),
    "time_major": (False,), "zero_output_for_mask": (False,), "use_cudnn": ("auto",), "implementation": (1, 2),
    "mask_zero": (False,), "input_length": (None,), "keepdims": (False,), "autocast": (True,),
    "return_state": (False,), "input_dim": (), "output_mode": ("int",),
}
# Extras in every layer's config that never change the computation.
IGNORED = {"name", "trainable", "dtype", "registered_name", "module", "build_config"}
_REG = re.compile(r"_(regularizer|constraint)$")


def _float32_dtype(v: Any) -> bool:
    if v in (None, "float32"):
        return True
    if isinstance(v, dict):
        return (v.get("config") or {}).get("name") in ("float32", None)
    return False


# Keras's initializer arguments at their defaults, which specc's initializers of the same name use.
INITIALIZER_DEFAULTS = {
    "random_uniform": {"minval": -0.05, "maxval": 0.05}, "random_normal": {"mean": 0.0, "stddev": 0.05},
    "truncated_normal": {"mean": 0.0, "stddev": 0.05}, "orthogonal": {"gain": 1.0},
}
# VarianceScaling (scale, mode, distribution) that is one of the named initializers.
VARIANCE_SCALING = {
    (1.0, "fan_avg", "uniform"): "glorot_uniform", (1.0, "fan_avg", "truncated_normal"): "glorot_normal",
    (2.0, "fan_in", "uniform"): "he_uniform", (2.0, "fan_in", "truncated_normal"): "he_normal",
    (1.0, "fan_in", "uniform"): "lecun_uniform", (1.0, "fan_in", "truncated_normal"): "lecun_normal",
}


def _initializer(v: Any) -> tuple[Any, str | None]:
    """(specc's name for a Keras initializer, or None; why not)."""
    if isinstance(v, str):
        return v, None
    if isinstance(v, dict) and isinstance(v.get("class_name"), str):
        name = snake_case(v["class_name"])
        cfg = {k: x for k, x in (v.get("config") or {}).items() if x is not None and k != "seed"}
        if name == "variance_scaling":
            key = (float(cfg.pop("scale", 1.0)), cfg.pop("mode", "fan_in"), cfg.pop("distribution", "truncated_normal"))
            if key in VARIANCE_SCALING and not cfg:
                return VARIANCE_SCALING[key], None
            cfg.update(zip(("scale", "mode", "distribution"), key))
        elif name == "constant" and set(cfg) <= {"value"} and cfg.get("value", 0.0) in (0.0, 1.0):
            return ("zeros", "ones")[int(cfg.get("value", 0.0))], None
        for key, default in INITIALIZER_DEFAULTS.get(name, {}).items():
            if cfg.get(key) == default:
                del cfg[key]
        if cfg:
            return None, f"an initializer with arguments ({', '.join(f'{k}={x!r}' for k, x in cfg.items())})"
        return name, None
    return None, f"an initializer given as {v!r}"


def _plain(v: Any) -> Any:
    """Keras's serialised tuples and values as YAML-ready lists and scalars."""
    if isinstance(v, dict) and v.get("class_name") == "__tuple__":
        return [_plain(x) for x in v.get("config", {}).get("value", [])]
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def convert_layer(entry: dict, where: str, problems: list[Problem]) -> dict | None:
    """One Keras layer entry as a specc layer mapping (without `inputs`), or None with problems added."""
    cls = entry.get("class_name")
    cfg = entry.get("config") or {}
    name = cfg.get("name") or entry.get("name") or ""
    label = f"{name} ({cls})"
    if cls in ("Sequential",):
        return _nested_sequential(entry, where, problems)
    if not isinstance(cls, str) or cls not in REGISTRY or cls == "Sequential":
        problems.append(Problem(f"{where}.class_name", label, f"layer type {cls!r} has no specc equivalent"))
        return None
    fields = REGISTRY[cls].model_fields
    out: dict[str, Any] = {"type": cls, "name": name}
    if cfg.get("trainable") is False:
        out["trainable"] = False
    if not _float32_dtype(cfg.get("dtype")):
        problems.append(Problem(f"{where}.config.dtype", label, "specc computes in float32; this layer's dtype "
                                                                f"policy is {cfg.get('dtype')!r}"))
    ok = True
    for key, value in cfg.items():
        at = f"{where}.config.{key}"
        if key in IGNORED:
            continue
        if key in fields and key not in ("type", "name", "inputs", "trainable"):
            if key.endswith("initializer"):
                value, why = _initializer(value)
                if why:
                    problems.append(Problem(at, label, f"{key} is {why}; specc takes an initializer by name"))
                    ok = False
                    continue
            value = _plain(value)
            default = fields[key].default
            if not fields[key].is_required() and value == (list(default) if isinstance(default, tuple) else default):
                continue  # specc's default is Keras's: the spec stays as short as one written by hand
            out[key] = value
        elif _REG.search(key) or key == "activity_regularizer":
            if value is not None:
                problems.append(Problem(at, label, f"{key} is not supported by specc (got {value!r})"))
                ok = False
        elif key in NEUTRAL:
            if value not in NEUTRAL[key] and not (key == "data_format" and value == "channels_last"):
                problems.append(Problem(at, label, f"{key}={value!r} cannot be expressed in specc "
                                                   f"(specc's behaviour is {key}={NEUTRAL[key][0]!r})"))
                ok = False
        elif value not in (None, False):
            problems.append(Problem(at, label, f"argument {key}={value!r} cannot be expressed in specc"))
            ok = False
    return out if ok else None


def _nested_sequential(entry: dict, where: str, problems: list[Problem]) -> dict | None:
    cfg = entry.get("config") or {}
    out: dict[str, Any] = {"type": "Sequential", "name": cfg.get("name")}
    if cfg.get("trainable") is False:
        out["trainable"] = False
    layers = []
    for k, child in enumerate(cfg.get("layers") or []):
        if child.get("class_name") == "InputLayer":
            continue
        converted = convert_layer(child, f"{where}.config.layers[{k}]", problems)
        if converted is not None:
            layers.append(converted)
    out["layers"] = layers
    return out


def _input_shape(cfg: dict) -> list | None:
    shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
    if isinstance(shape, list) and len(shape) >= 2:
        return _plain(shape[1:])
    return None


def convert(model: dict) -> tuple[dict, list[Problem]]:
    """(the specc spec as a mapping, problems) for a Keras model's serialised form."""
    problems: list[Problem] = []
    cls = model.get("class_name")
    cfg = model.get("config")
    if cls not in ("Sequential", "Functional", "Model") or not isinstance(cfg, dict):
        problems.append(Problem("$.class_name", "", f"expected a Keras Sequential or Functional model, got "
                                                    f"{cls!r}"))
        return {}, problems
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(cfg.get("name") or "imported"))
    spec: dict[str, Any] = {"specc": 1, "name": name}
    layers = cfg.get("layers") or []
    if cls == "Sequential":
        body = [(k, e) for k, e in enumerate(layers) if e.get("class_name") != "InputLayer"]
        first = next((e for e in layers if e.get("class_name") == "InputLayer"), None)
        shape = _input_shape(first["config"]) if first else None
        if shape is None:
            built = (model.get("build_config") or {}).get("input_shape")
            shape = _plain(built[1:]) if isinstance(built, list) else None
        if shape is None:
            problems.append(Problem("$.config.layers", "", "the model has no input shape (no InputLayer and not "
                                                           "built); build it or give it an Input first"))
        converted = [convert_layer(e, f"$.config.layers[{k}]", problems) for k, e in body]
        spec["model"] = {"input": shape, "layers": [c for c in converted if c is not None]}
        return spec, problems

    inputs: dict[str, Any] = {}
    out_layers = []
    for k, e in enumerate(layers):
        where = f"$.config.layers[{k}]"
        lname = e.get("name") or (e.get("config") or {}).get("name")
        if e.get("class_name") == "InputLayer":
            inputs[lname] = _input_shape(e.get("config") or {})
            continue
        nodes = e.get("inbound_nodes") or []
        if len(nodes) != 1:
            problems.append(Problem(f"{where}.inbound_nodes", f"{lname} ({e.get('class_name')})",
                                    f"the layer is called {len(nodes)} times (a shared layer); specc layers "
                                    f"are applied once"))
            continue
        refs = _node_inputs(nodes[0], f"{where}.inbound_nodes[0]", f"{lname} ({e.get('class_name')})", problems)
        converted = convert_layer(e, where, problems)
        if converted is None or refs is None:
            continue
        converted["inputs"] = refs if len(refs) > 1 else refs[0]
        out_layers.append(converted)
    refs = cfg.get("output_layers") or []
    if refs and isinstance(refs[0], str):  # one output: Keras writes the reference itself, not a list of them
        refs = [refs]
    outputs = [ref[0] for ref in refs if isinstance(ref, list) and ref and isinstance(ref[0], str)]
    if not outputs:
        problems.append(Problem("$.config.output_layers", "", "the model names no output layer"))
    spec["model"] = {"inputs": inputs, "layers": out_layers, "outputs": outputs if len(outputs) > 1 else
                     (outputs[0] if outputs else None)}
    return spec, problems


def _node_inputs(node: dict, where: str, label: str, problems: list[Problem]) -> list[str] | None:
    """The layer names a call node consumes (each tensor's keras_history), or None with a problem."""
    refs: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict) and v.get("class_name") == "__keras_tensor__":
            history = (v.get("config") or {}).get("keras_history") or []
            if len(history) == 3 and history[1:] == [0, 0]:
                refs.append(history[0])
            else:
                refs.append(None)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(node.get("args") or [])
    extra = {k: v for k, v in (node.get("kwargs") or {}).items() if v is not None}
    if extra.get("training") is False and "Dropout" in label:
        extra.pop("training")  # Keras's MobileNet: a Dropout never active; specc's is off outside training too
    if extra:
        problems.append(Problem(f"{where}.kwargs", label, f"call arguments {extra!r} cannot be expressed in specc"))
        return None
    if not refs or None in refs:
        problems.append(Problem(f"{where}.args", label, "takes a tensor specc cannot name (an output of a "
                                                        "layer called several times, or of a nested model)"))
        return None
    return refs


# --- reading the source ----------------------------------------------------------------------------------


def read_source(path: str) -> tuple[dict, bytes | None]:
    """(the model's serialised form, the bytes of its weights file or None) from a `.keras` archive or a
    JSON file. Raises ImportFailed with one Problem when the file is neither."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                if "config.json" not in names:
                    raise ImportFailed(path, [Problem("$", "", "a zip file without config.json: not a .keras "
                                                               "archive")])
                info = z.getinfo("config.json")
                if info.file_size > MAX_CONFIG_BYTES:
                    raise ImportFailed(path, [Problem("$", "", "config.json is larger than 64 MB")])
                text = z.read("config.json")
                weights = z.read("model.weights.h5") if "model.weights.h5" in names else None
        else:
            with open(path, "rb") as fh:
                text = fh.read(MAX_CONFIG_BYTES + 1)
            if len(text) > MAX_CONFIG_BYTES:
                raise ImportFailed(path, [Problem("$", "", "larger than 64 MB: not a model config")])
            weights = None
        model = json.loads(text)
    except (OSError, zipfile.BadZipFile, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ImportFailed):
            raise
        raise ImportFailed(path, [Problem("$", "", f"not a .keras archive or Keras JSON config ({exc})")]) from None
    if isinstance(model, str):  # model.to_json() written with json.dump: a JSON string holding the JSON
        try:
            model = json.loads(model)
        except ValueError:
            pass
    if not isinstance(model, dict):
        raise ImportFailed(path, [Problem("$", "", "the JSON is not a Keras model (not an object)")])
    return model, weights


def to_yaml(spec: dict) -> str:
    """The spec as YAML: one flow mapping per layer, as the examples in specs/ are written."""
    import yaml

    def scalar(v: Any) -> str:
        return yaml.safe_dump(v, default_flow_style=True, width=1 << 20).strip().removesuffix("...").strip()

    def flow(d: dict) -> str:
        return "{" + ", ".join(f"{k}: {scalar(v)}" for k, v in d.items()) + "}"

    lines = ["# Imported from Keras by `specc import`.", f"specc: {spec['specc']}", f"name: {spec['name']}",
             "model:"]
    model = spec["model"]

    def layer_lines(layers: list[dict], indent: str) -> None:
        for layer in layers:
            if layer.get("type") == "Sequential":
                head = {k: v for k, v in layer.items() if k != "layers"}
                lines.append(f"{indent}- " + f"\n{indent}  ".join(f"{k}: {scalar(v)}" for k, v in head.items()))
                lines.append(f"{indent}  layers:")
                layer_lines(layer["layers"], indent + "    ")
            else:
                lines.append(f"{indent}- {flow(layer)}")

    if "input" in model:
        lines.append(f"  input: {scalar(model['input'])}")
        lines.append("  layers:")
        layer_lines(model["layers"], "    ")
    else:
        lines.append("  inputs:")
        lines.extend(f"    {k}: {scalar(v)}" for k, v in model["inputs"].items())
        lines.append("  layers:")
        layer_lines(model["layers"], "    ")
        lines.append(f"  outputs: {scalar(model['outputs'])}")
    return "\n".join(lines) + "\n"


@dataclass
class Imported:
    spec_text: str
    spec: Any  # the validated specc Spec
    weights: dict | None  # `layer/weight` -> array, when the source carried weights
    params: int


def import_model(path: str, weights_path: str | None = None, file_label: str = "spec.yaml") -> Imported:
    """Convert, validate and (with weights) read the arrays. Raises ImportFailed listing every problem."""
    from ..spec import load_spec_text

    model, archived = read_source(path)
    spec_dict, problems = convert(model)
    if problems:
        raise ImportFailed(path, problems)
    text = to_yaml(spec_dict)
    spec, errors = load_spec_text(text, file_label)
    if errors:
        raise ImportFailed(path, [Problem("$", "", f"the converted spec is invalid: {e.path or 'model'}: "
                                                   f"{e.message}") for e in errors])
    weights = None
    if weights_path is not None or archived is not None:
        from . import keras_h5

        source = weights_path or io.BytesIO(archived)
        try:
            weights = _read_weights(keras_h5, source, spec.graph, weights_path or f"{path}:model.weights.h5")
        except ValueError as exc:
            raise ImportFailed(path, [Problem("weights", "", str(exc))]) from None
    return Imported(text, spec, weights, spec.graph.params())


def _read_weights(keras_h5, source, graph, label: str) -> dict:
    if isinstance(source, io.BytesIO):
        h5py = keras_h5._h5py()
        with h5py.File(source, "r") as f:
            return keras_h5._read_file(f, label, graph)
    return keras_h5.read(source, graph)

