"""Keras 3's `.weights.h5` layout, both ways (h5py, an optional extra: `pip install "specc[h5]"`).

Keras 3 writes one HDF5 group per layer, `layers/<key>/vars/<i>` for the layer's i-th weight in its own
`weights` order; recurrent layers keep theirs on the cell (`layers/<key>/cell/vars/<i>`), nested models
nest (`layers/<key>/layers/<child key>/...`). A key is the layer's class in snake_case, numbered within its
container in the order of the container's `layers` (`dense`, `dense_1`, ...), not the layer's name; the
`vars` group carries the name as an attribute. specc's weight layouts are Keras's, so the arrays move as
they are. Keras's container order is `model.layers`: a Sequential's chain, or for a Functional model the
order its summary shows (summary.keras_order), inputs included.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..graph import Graph, Node
from ..layers.base import snake_case

INSTALL = 'pip install "specc[h5]"  (or: pip install h5py)'
RECURRENT = ("SimpleRNN", "LSTM", "GRU")  # weights on the layer's cell, as Keras keeps them


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(f"Keras weight files (.weights.h5) are read and written with h5py, which is not "
                          f"installed: {INSTALL}") from exc
    return h5py


@dataclass
class Entry:
    """One layer's group in the file: its h5 path (where the `vars` group lies) and its specc node."""

    group: str  # e.g. "layers/sequential/layers/dense_1"
    node: Node

    @property
    def vars_path(self) -> str:
        cell = "/cell" if self.node.layer is not None and self.node.layer.type in RECURRENT else ""
        return f"{self.group}{cell}/vars"


def _keys(nodes: list[Node]) -> Iterator[tuple[str, Node]]:
    used: dict[str, int] = {}
    for node in nodes:
        base = snake_case(node.type)
        if base in used:
            used[base] += 1
            yield f"{base}_{used[base]}", node
        else:
            used[base] = 0
            yield base, node


def entries(graph: Graph) -> list[Entry]:
    """Every layer's group, in Keras's order (inputs of a Functional model included: they have no weights,
    but Keras numbers them among the layers and writes their empty groups)."""
    from ..summary import keras_order

    top = keras_order(graph) if graph.kind == "functional" else graph.nodes
    out: list[Entry] = []

    def children(node: Node) -> list[Node]:
        """A nested Sequential's chain, or a nested Functional model's layers in Keras's order (its
        input layer first among them, as Keras lists it)."""
        if node.layer.type != "Functional":
            return node.children
        inner = Node(node.layer.block_input, None, [], node.path)
        return keras_order(Graph(node.name, "functional", [inner], node.children, [node.layer.output]))

    def walk(nodes: list[Node], prefix: str) -> None:
        for key, node in _keys(nodes):
            group = f"{prefix}layers/{key}"
            out.append(Entry(group, node))
            if node.children:
                walk(children(node), group + "/")

    walk(top, "")
    return out


def _leaf_weights(node: Node) -> list[str]:
    return [w.name for w in node.weights] if not node.children else []


def specc_keys(graph: Graph) -> dict[str, list[str]]:
    """`layer/weight` keys (specc's .npz naming, train/run.weight_keys) per h5 `vars` path."""
    return {e.vars_path: [f"{e.node.name}/{w}" for w in _leaf_weights(e.node)] for e in entries(graph)}


def read(path: str | os.PathLike, graph: Graph) -> dict[str, np.ndarray]:
    """The weights of a Keras `.weights.h5` (or a `.keras` archive's model.weights.h5) for `graph`, keyed
    `layer/weight` in specc's order. Layers are matched by the names Keras stores on each `vars` group
    when every name is the model's, else by Keras's keys. A ValueError names the file and the first layer
    or weight that does not fit."""
    h5py = _h5py()
    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path} is not a readable HDF5 file ({exc})") from None
    with f:
        return _read_file(f, path, graph)


def _read_file(f, path: str, graph: Graph) -> dict[str, np.ndarray]:
    found = {}

    def collect(name: str, obj) -> None:  # h5py stops visiting at the first callback that returns a value
        if name.endswith("/vars"):
            found[name] = obj

    f.visititems(collect)
    by_name = {}
    for name, group in found.items():
        stored = group.attrs.get("name")
        if isinstance(stored, bytes):
            stored = stored.decode()
        if stored is not None:
            by_name.setdefault(stored, []).append(name)
    ours = entries(graph)
    weighted = [e for e in ours if _leaf_weights(e.node)]
    use_names = all(len(by_name.get(e.node.name, [])) == 1 for e in weighted)
    out: dict[str, np.ndarray] = {}
    for e in weighted:
        where = e.vars_path
        if use_names:  # the named group is the layer's own `vars`; the weights may sit on its cell
            where = by_name[e.node.name][0].removesuffix("vars") + e.vars_path[len(e.group) + 1:]
        if where not in f:
            raise ValueError(f"{path} has no weights for layer '{e.node.name}' ({e.node.type}): expected the "
                             f"group {where!r}; is it a weights file of this architecture?")
        group = f[where]
        names = _leaf_weights(e.node)
        stored = sorted(group.keys(), key=lambda k: int(k) if k.isdigit() else 1 << 30)
        if len(stored) != len(names):
            raise ValueError(f"{path}: layer '{e.node.name}' ({e.node.type}) has {len(stored)} weights in the "
                             f"file, the model has {len(names)} ({', '.join(names)})")
        for k, (weight, spec) in enumerate(zip(names, e.node.weights)):
            array = np.asarray(group[stored[k]])
            if array.shape != tuple(spec.shape):
                raise ValueError(f"{path}: weight {weight!r} of layer '{e.node.name}' has shape {array.shape} "
                                 f"in the file, the model expects {tuple(spec.shape)}")
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"{path}: weight {weight!r} of layer '{e.node.name}' is {array.dtype}, not "
                                 f"floating point")
            out[f"{e.node.name}/{weight}"] = array
    return out


def write(path: str | os.PathLike, graph: Graph, weights: dict[str, np.ndarray]) -> None:
    """Write `weights` (keyed `layer/weight`) as Keras 3 writes `model.save_weights`, atomically: the file
    appears complete or not at all."""
    h5py = _h5py()
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.create_group("vars").attrs["name"] = graph.name
            f.require_group("layers")
            for e in entries(graph):
                group = f.require_group(e.group)
                if e.node.children:
                    group.create_group("vars").attrs["name"] = e.node.name
                    continue
                if e.node.layer is not None and e.node.layer.type in RECURRENT:
                    # The layer's own vars are empty and carry its name; the cell holds the weights.
                    group.create_group("vars").attrs["name"] = e.node.name
                    group.create_group("cell")
                    vars_group = f.create_group(e.vars_path)
                    vars_group.attrs["name"] = f"{e.node.name}_cell"
                else:
                    vars_group = f.create_group(e.vars_path)
                    vars_group.attrs["name"] = e.node.name
                for k, w in enumerate(_leaf_weights(e.node)):
                    vars_group.create_dataset(str(k), data=np.asarray(weights[f"{e.node.name}/{w}"]))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- the Python API's save_weights / load_weights for a `.weights.h5` path ----------------------------------


def _graph(model) -> Graph:
    """The model's graph as built, nested Functional models kept whole (the engine runs them inlined)."""
    return model._make_plan().graph


def save_weights(model, path: str | os.PathLike) -> None:
    from ..train.run import weight_keys

    engine = model._engine()
    write(path, _graph(model), dict(zip(weight_keys(engine), engine.get_weights())))


def load_weights(model, path: str | os.PathLike) -> None:
    from ..train.run import weight_keys

    engine = model._engine()
    arrays = read(path, _graph(model))
    engine.set_weights([arrays[k] for k in weight_keys(engine)])
