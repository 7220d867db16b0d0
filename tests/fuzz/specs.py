"""Spec mutants: every spec in specs/ (and a few seeds that reach the rest of the format) changed by one to
three operators, on the parsed tree or on the text and bytes.

`spec_mutant(rng)` returns (file name, bytes, description); the description names the seed and each
operator with what it did, so a report line says what the file was.
"""

from __future__ import annotations

import copy
import functools
import random
from pathlib import Path

import yaml

from .values import HUGE_DECIMAL, HUGE_HEX, INT_TOKEN, UNICODE, Raw, deep, dump, hostile, value_of_other_type

SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"

# Seeds beyond specs/: the parts of the format the examples do not use (callbacks, schedules, every layer
# family, CSV and .npz sources), so mutations start next to them.
EXTRA_SEEDS = {
    "callbacks.yaml": """\
specc: 1
name: callbacks
seed: 3
model:
  input: [6]
  layers:
    - {type: Dense, units: 5, activation: tanh, kernel_initializer: he_normal}
    - {type: LayerNormalization}
    - {type: Dense, units: 2, activation: sigmoid}
data: {source: synthetic, samples: 64, classes: 2}
compile:
  optimizer: {type: sgd, learning_rate: {type: ExponentialDecay, initial_learning_rate: 0.1, decay_steps: 10, decay_rate: 0.9}, momentum: 0.9, nesterov: true, clipnorm: 1.0}
  loss: binary_crossentropy
  metrics: [binary_accuracy, auc, precision, recall]
fit:
  batch_size: 16
  epochs: 2
  validation_split: 0.25
  class_weight: {0: 1.0, 1: 2.0}
  callbacks:
    - {type: EarlyStopping, monitor: val_loss, patience: 1, min_delta: 0.001, restore_best_weights: true}
    - {type: ModelCheckpoint, filepath: "ckpt/e{epoch:03d}-{val_loss:.2f}.npz", save_best_only: true}
    - {type: ReduceLROnPlateau, factor: 0.5, patience: 1}
    - {type: CSVLogger, filename: log.csv, separator: ";"}
    - {type: TerminateOnNaN}
""",
    "families.yaml": """\
specc: 1
model:
  input: [12, 12, 2]
  layers:
    - {type: ZeroPadding2D, padding: [[1, 0], [0, 1]]}
    - {type: SeparableConv2D, filters: 4, kernel_size: [3, 3], depth_multiplier: 2, dilation_rate: 1}
    - {type: DepthwiseConv2D, kernel_size: 2, strides: 2, padding: same}
    - {type: Conv2DTranspose, filters: 3, kernel_size: 3, strides: 2, output_padding: 1}
    - {type: Cropping2D, cropping: 1}
    - {type: UpSampling2D, size: [2, 1], interpolation: bilinear}
    - {type: AveragePooling2D, pool_size: 2, strides: [2, 1], padding: same}
    - {type: BatchNormalization, momentum: 0.9, epsilon: 0.01}
    - {type: Reshape, target_shape: [-1, 3]}
    - {type: Conv1D, filters: 4, kernel_size: 3, padding: causal}
    - {type: MaxPooling1D, pool_size: 2}
    - {type: ZeroPadding1D, padding: 2}
    - {type: Cropping1D, cropping: [1, 0]}
    - {type: UpSampling1D, size: 2}
    - {type: SimpleRNN, units: 4, return_sequences: true, go_backwards: true}
    - {type: Permute, dims: [2, 1]}
    - {type: GlobalMaxPooling1D}
    - {type: RepeatVector, n: 3}
    - {type: GlobalAveragePooling1D, keepdims: true}
    - {type: Flatten}
    - {type: Dense, units: 3, activation: softmax}
compile:
  optimizer: {type: adamw, learning_rate: {type: PiecewiseConstantDecay, boundaries: [10], values: [0.01, 0.001]}}
  loss: categorical_crossentropy
  metrics: [categorical_accuracy, top_k_categorical_accuracy]
""",
    "merges.yaml": """\
specc: 1
name: merges
model:
  inputs: {a: [4], b: {shape: [4]}}
  layers:
    - {type: Subtract, name: sub, inputs: [a, b]}
    - {type: Multiply, name: mul, inputs: [a, b]}
    - {type: Average, name: avg, inputs: [sub, mul]}
    - {type: Maximum, name: mx, inputs: [avg, a]}
    - {type: Minimum, name: mn, inputs: [mx, b]}
    - {type: Embedding, name: emb, input_dim: 10, output_dim: 2, inputs: mn}
    - {type: GRU, name: gru, units: 3, reset_after: false, inputs: emb}
    - {type: Dropout, name: drop, rate: 0.5, noise_shape: [null, 3], seed: 1, inputs: gru}
    - {type: Dense, name: out, units: 1, inputs: drop}
    - {type: Dense, name: out2, units: 2, activation: log_softmax, inputs: gru}
  outputs: [out, out2]
data: {source: {path: data.npz, x: inputs, y: targets}, test_split: 0.1, normalize: true}
compile:
  optimizer: {type: nadam, global_clipnorm: 2.0}
  loss: {out: huber, out2: kl_divergence}
  loss_weights: [1.0, 0.5]
  metrics: {out: [mae, rmse], out2: [accuracy]}
fit: {batch_size: 8, epochs: 1, shuffle: false, verbose: 2}
""",
    "csv_source.yaml": """\
specc: 1
name: csv_source
model:
  input: [3]
  layers:
    - {type: Dense, units: 2, activation: relu}
    - {type: Dense, units: 1}
data:
  source: {path: table.csv, target: price}
compile:
  optimizer: {type: rmsprop, rho: 0.8, centered: true}
  loss: mse
  metrics: [mean_squared_error]
""",
}


@functools.lru_cache(maxsize=1)
def seeds() -> dict[str, str]:
    """{file name: text} of every seed: specs/*.yaml, then the extra ones."""
    found = {p.name: p.read_text(encoding="utf-8") for p in sorted(SPECS_DIR.glob("*.y*ml"))}
    return found | EXTRA_SEEDS


@functools.cache
def _parsed(name: str):
    return yaml.safe_load(seeds()[name])


try:  # one source of truth for layer types; a static fallback keeps the generator usable on its own
    from specc.layers import REGISTRY

    LAYER_TYPES = sorted(REGISTRY)
except Exception:  # noqa: BLE001
    LAYER_TYPES = ["Dense", "Conv2D", "LSTM", "Flatten", "Add", "Sequential", "BatchNormalization"]


# --- the parsed tree ------------------------------------------------------------------------------------


def _nodes(data, path=()):
    """Every (path, value) in the tree, the root included."""
    yield path, data
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _nodes(v, path + (i,))


def _get(data, path):
    for p in path:
        data = data[p]
    return data


def _show(path) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def _short(value) -> str:
    text = value.text if isinstance(value, Raw) else repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= 60 else f"{text[:40]}… ({len(text):,} chars)"


def _pick(rng, data, want=None):
    """A random non-root (path, value); `want` filters by value type."""
    nodes = [(p, v) for p, v in _nodes(data) if p and (want is None or isinstance(v, want))]
    return rng.choice(nodes) if nodes else (None, None)


def op_delete(rng, data):
    path, _ = _pick(rng, data)
    if path is None:
        return "nothing to delete"
    parent = _get(data, path[:-1])
    del parent[path[-1]]
    return f"delete {_show(path)}"


def op_replace(rng, data):
    path, old = _pick(rng, data)
    if path is None:
        return "nothing to replace"
    new = hostile(rng)
    _get(data, path[:-1])[path[-1]] = new
    return f"{_show(path)} = {_short(new)} (was {_short(old)})"


def op_swap_type(rng, data):
    path, old = _pick(rng, data)
    if path is None:
        return "nothing to swap"
    new = value_of_other_type(rng, old)
    _get(data, path[:-1])[path[-1]] = new
    return f"{_show(path)}: {type(old).__name__} -> {_short(new)}"


def op_numbers(rng, data):
    """A number at or past a limit where a size, count or rate is expected."""
    path, old = _pick(rng, data, (int, float))
    if path is None:
        return "no number"
    new = rng.choice([0, -1, -(2**31), 2**31 - 1, 2**31, 2**62, 2**63 - 1, 2**63, 10**30, 0.0, 1e-45, 1e308,
                      Raw(HUGE_HEX), Raw(HUGE_DECIMAL), Raw(".nan"), Raw(".inf"), Raw("-.inf"), 1.5, -0.5,
                      old * 1000 if isinstance(old, int) and not isinstance(old, bool) else 7])
    _get(data, path[:-1])[path[-1]] = new
    return f"{_show(path)} = {_short(new)} (was {_short(old)})"


def op_add_key(rng, data):
    path, node = _pick(rng, {"root": data}, dict)
    node = data if path == ("root",) else node
    key = rng.choice(["unknown", "Units", "units ", "type", "name", "inputs", "trainable", "kernel_regularizer",
                      "data_format", "return_state", "__class__", "<<", rng.choice(UNICODE), "", "1", "null"])
    value = hostile(rng)
    node[key] = value
    return f"add key {key!r} = {_short(value)}"


def op_rename_key(rng, data):
    path, node = _pick(rng, {"root": data}, dict)
    node = data if path == ("root",) else node
    if not node:
        return "empty mapping"
    key = rng.choice(list(node))
    new = rng.choice([str(key).upper(), str(key) + "s", str(key)[:-1], f" {key}", rng.choice(UNICODE), 3, True])
    items = [(new if k == key else k, v) for k, v in node.items()]
    node.clear()
    node.update(items)
    return f"rename key {key!r} -> {new!r}"


def op_layer_type(rng, data):
    layers = [v for p, v in _nodes(data) if isinstance(v, dict) and "type" in v and p and "layers" in p]
    if not layers:
        return "no layers"
    layer = rng.choice(layers)
    old = layer["type"]
    layer["type"] = rng.choice(LAYER_TYPES + ["dense", "Dnese", "InputLayer", "Lambda", "", "Model"])
    return f"layer {layer.get('name', '?')}: type {old} -> {layer['type']}"


def op_duplicate_item(rng, data):
    path, node = _pick(rng, data, list)
    if path is None or not node:
        return "no list"
    i = rng.randrange(len(node))
    copies = rng.choice([1, 1, 5, 500])
    node[i:i] = [copy.deepcopy(node[i]) for _ in range(copies)]
    return f"repeat {_show(path)}[{i}] {copies}x"


def op_graph(rng, data):
    """Rewire a Functional graph: self-loops, cycles, unknown and repeated names."""
    model = data.get("model") if isinstance(data, dict) else None
    layers = model.get("layers") if isinstance(model, dict) else None
    if not isinstance(layers, list) or not layers:
        return "no layers"
    names = [layer.get("name") for layer in layers if isinstance(layer, dict)] + ["nope", "", None]
    layer = rng.choice([x for x in layers if isinstance(x, dict)] or [{}])
    choice = rng.random()
    if choice < 0.4:
        layer["inputs"] = rng.choice([layer.get("name"), names[-4] if len(names) > 3 else "x",
                                      [rng.choice(names) for _ in range(rng.randint(0, 4))]])
        return f"layer {layer.get('name')}: inputs = {layer['inputs']!r}"
    if choice < 0.7 and isinstance(model, dict):
        model["outputs"] = rng.choice([[], [rng.choice(names)] * 2, rng.choice(names), {"a": "b"}])
        return f"outputs = {model['outputs']!r}"
    layer["name"] = rng.choice(names)
    return f"layer name -> {layer['name']!r}"


TREE_OPS = [op_delete, op_replace, op_replace, op_swap_type, op_numbers, op_numbers, op_add_key, op_rename_key,
            op_layer_type, op_duplicate_item, op_graph]


# --- the text and the bytes -----------------------------------------------------------------------------


def op_truncate(rng, raw: bytes):
    cut = rng.randrange(len(raw) + 1)
    return raw[:cut], f"truncate at byte {cut} of {len(raw)}"


def op_garbage(rng, raw: bytes):
    at = rng.randrange(len(raw) + 1)
    junk = rng.choice([bytes(rng.randrange(256) for _ in range(rng.choice([1, 8, 300]))), b"\x00", b"\xff\xfe",
                       b"\xc3", b"\xed\xa0\x80", b"\t", b"\r", b"\x85", "\u2028".encode(), b"\x1b[2J", b"%TAG ! x\n",
                       b"\n---\n", b"\n...\n", b"&a ", b"*a", b"!!python/object:os.system ", b": ", b"- ",
                       b"{", b"]", b"'", b'"', b"#", b"\xef\xbb\xbf"])
    return raw[:at] + junk + raw[at:], f"insert {junk[:20]!r} at byte {at}"


def op_lines(rng, raw: bytes):
    lines = raw.split(b"\n")
    i = rng.randrange(len(lines))
    kind = rng.choice(["duplicate", "delete", "indent", "dedent", "swap"])
    if kind == "duplicate":  # a duplicated key, or a repeated list item
        lines.insert(i, lines[i])
    elif kind == "delete":
        del lines[i]
    elif kind == "indent":
        lines[i] = b" " * rng.choice([1, 2, 3, 8]) + lines[i]
    elif kind == "dedent":
        lines[i] = lines[i].lstrip()
    else:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines), f"{kind} line {i + 1}"


def op_int_text(rng, raw: bytes):
    text = raw.decode("utf-8", "replace")
    matches = list(INT_TOKEN.finditer(text))
    if not matches:
        return raw, "no integer"
    m = rng.choice(matches)
    new = rng.choice([HUGE_HEX, "-" + HUGE_HEX, HUGE_DECIMAL, "0x" + "f" * 16, "1e400", "9" * 19, "-0", "00012",
                      "0o17", "1_0", "0b11"])
    return (text[: m.start()] + new + text[m.end():]).encode(), f"integer {m.group()} -> {_short(Raw(new))}"


def op_alias_bomb(rng, raw: bytes):
    """Billion laughs, bounded in bytes (a few hundred) and unbounded in expansion; or a merge/recursive alias."""
    levels, width = rng.randint(3, 12), rng.randint(2, 10)
    kind = rng.choice(["bomb", "bomb", "merge", "recursive"])
    if kind == "bomb":
        anchors = ["x0: &a0 [" + ", ".join(["lol"] * width) + "]"]
        anchors += [f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
        block = "\n".join(anchors) + "\n"
        target = f"*a{levels - 1}"
    elif kind == "merge":
        block, target = "x0: &m {type: Dense, units: 3}\n", rng.choice(["{<<: *m, name: merged}", "{<<: [*m, *m]}",
                                                                        "{<<: *m, <<: *m}", "{<<: 3}"])
    else:
        block, target = "", rng.choice(["&r [*r]", "&r {k: *r}", "&r [1, [2, *r]]"])
    text = raw.decode("utf-8", "replace")
    matches = list(INT_TOKEN.finditer(text))
    if matches and rng.random() < 0.7:
        m = rng.choice(matches)
        text = text[: m.start()] + target + text[m.end():]
    else:
        text += f"\nextra: {target}\n"
    return (block + text).encode(), f"alias {kind} ({levels} levels x {width})" if kind == "bomb" else f"alias {kind}"


def op_encoding(rng, raw: bytes):
    text = raw.decode("utf-8", "replace")
    kind = rng.choice(["utf-16", "utf-32", "latin-1", "bom", "crlf", "cr", "nel", "tabs"])
    if kind in ("utf-16", "utf-32"):
        return text.encode(kind), f"encode as {kind}"
    if kind == "latin-1":
        return ("# Größe\n" + text).encode("latin-1", "replace"), "latin-1 with an ö"
    if kind == "bom":
        return b"\xef\xbb\xbf" + raw, "UTF-8 BOM"
    if kind == "tabs":
        return raw.replace(b"  ", b"\t"), "indent with tabs"
    ending = {"crlf": b"\r\n", "cr": b"\r", "nel": "\u0085".encode()}[kind]
    return raw.replace(b"\n", ending), f"line ends {kind}"


def op_documents(rng, raw: bytes):
    extra = rng.choice([b"---\n" + raw, raw + b"\n---\n" + raw, b"--- !!python/object:os.system\n" + raw,
                        raw + b"\n...\n", b"%YAML 1.2\n---\n" + raw, b"%YAML 9.9\n---\n" + raw,
                        b"%TAG !e! tag:example.com,2000:\n---\n" + raw])
    return extra, "multiple documents / directives"


def op_replace_file(rng, raw: bytes):
    new = rng.choice([b"", b" \n\t\n", b"null", b"[]", b"{}", b"specc: 1", b"specc: 1\nmodel:", b"42", b"'str'",
                      b"specc: 1\nmodel: {input: [4], layers: []}", b"- a\n- b", b"? [a]\n: b",
                      bytes(rng.randrange(256) for _ in range(rng.choice([1, 64, 4096]))),
                      b"PK\x03\x04" + bytes(100), b"\x93NUMPY\x01\x00", b"a: " + b"b" * 3_000_000,
                      b"x: 1\n" * 200_000, b"#" * 100 + b"\n", b"[" * 300 + b"]" * 300,
                      b"specc: " + HUGE_HEX.encode()])
    return new, f"whole file = {_short(Raw(new.decode('latin-1')))}"


def op_deep(rng, raw: bytes):
    text = raw.decode("utf-8", "replace")
    matches = list(INT_TOKEN.finditer(text))
    tower = deep(rng).text
    if not matches:
        return (text + "\nx: " + tower).encode(), "deep value appended"
    m = rng.choice(matches)
    return (text[: m.start()] + tower + text[m.end():]).encode(), f"integer {m.group()} -> nested {len(tower)} chars"


def op_block_deep(rng, raw: bytes):
    depth = rng.choice([150, 250, 2000])
    lines = [" " * i + "- " for i in range(0, 2 * depth, 2)]
    block = "\n".join(lines) + "1\n"
    return raw + b"\nx:\n" + block.encode(), f"block sequences nested {depth} deep"


TEXT_OPS = [op_truncate, op_garbage, op_garbage, op_lines, op_lines, op_int_text, op_alias_bomb, op_alias_bomb,
            op_encoding, op_documents, op_replace_file, op_deep, op_block_deep]

NAMES = ["spec.yaml", "spec.yml", "spec.YAML", "spec", "a b.yaml", "mü.yaml", "a:1:2.yaml", ".hidden.yaml",
         "-dash.yaml", "x" * 150 + ".yaml", "spec.yaml.yaml", "名前.yaml"]


def spec_mutant(rng: random.Random) -> tuple[str, bytes, str]:
    """(file name, content, description) of one mutant of a random seed."""
    all_seeds = seeds()
    seed_name = rng.choice(sorted(all_seeds))
    text = all_seeds[seed_name]
    steps = []
    raw = text.encode()
    if rng.random() < 0.6:
        data = copy.deepcopy(_parsed(seed_name))
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            steps.append(rng.choice(TREE_OPS)(rng, data))
        try:
            raw = dump(data).encode("utf-8", "surrogatepass")
        except (ValueError, yaml.YAMLError) as exc:  # a value the writer cannot write: keep the text
            steps.append(f"(not written: {type(exc).__name__})")
    if rng.random() < 0.5 or not steps:
        for _ in range(rng.choice([1, 1, 2])):
            raw, step = rng.choice(TEXT_OPS)(rng, raw)
            steps.append(step)
    name = rng.choice(NAMES) if rng.random() < 0.15 else "spec.yaml"
    return name, raw, f"{seed_name}: " + "; ".join(steps)
