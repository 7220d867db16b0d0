"""The model as a graph: a Sequential chain or a Functional DAG of named nodes, in topological order, with
every shape inferred and every weight declared. No Numba here; the runtime walks this same graph.

Graph errors (unknown references, cycles, unused nodes, wrong input counts, shape mismatches) are reported
through `report(path, message)` so each one points at the spec node that caused it, and all of them are
found in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .layers.base import LayerSpec, ShapeError, WeightSpec, fmt_shape, snake_case
from .spec.errors import Path, suggest
from .spec.types import MAX_INT64, MAX_RANK, limit_text

Report = Callable[[Path, str], None]

BLOCK_TYPES = ("Sequential", "Functional")  # layers that hold layers (specc.layers.container)


@dataclass
class Node:
    name: str
    layer: LayerSpec | None  # None for a model input
    inbound: list[str]
    path: Path  # where the node is defined in the spec, for error positions
    input_shape: Any = None  # a shape, or a list of shapes for merge layers
    output_shape: tuple | None = None
    weights: list[WeightSpec] = field(default_factory=list)
    trainable: bool = True  # False when the layer or a block around it is frozen
    # The layers inside a nested block: a chain for a Sequential block; for a Functional block a graph in
    # topological order whose `inbound` names the block's own input (standing for this node's inbound) or
    # each other.
    children: list[Node] = field(default_factory=list)

    @property
    def type(self) -> str:
        return "InputLayer" if self.layer is None else self.layer.type

    def params(self, trainable: bool | None = None) -> int:
        """Parameter count (of this node and its children); trainable=True/False selects one kind."""
        own = sum(w.size for w in self.weights if trainable is None or (self.trainable and w.trainable) == trainable)
        return own + sum(c.params(trainable) for c in self.children)

    def leaves(self) -> list[Node]:
        """The node itself, or the flat chain of layers inside a nested block (recursively)."""
        return [leaf for c in self.children for leaf in c.leaves()] if self.children else [self]


@dataclass
class Graph:
    name: str
    kind: str  # "sequential" or "functional"
    inputs: list[Node]
    nodes: list[Node]  # topological order, inputs excluded
    outputs: list[str]
    # A batch size fixed when the model was built (the Python API, called on an array); specs leave it None.
    batch_size: int | None = None

    def node(self, name: str) -> Node:
        return next(n for n in self.inputs + self.nodes if n.name == name)

    def params(self, trainable: bool | None = None) -> int:
        return sum(n.params(trainable) for n in self.nodes)

    def macs(self) -> int:
        """Forward multiply-adds per sample (0 where a size is unknown until run time)."""
        total = 0
        for n in self.nodes:
            for leaf in n.leaves():
                try:
                    total += leaf.layer.macs(leaf.input_shape, leaf.output_shape) or 0
                except TypeError:  # a None size
                    pass
        return total

    def activation_values(self) -> int:
        """Values each sample produces across all layer outputs (what training must keep for backward)."""
        total = 0
        for n in self.nodes:
            for leaf in n.leaves():
                if leaf.output_shape and None not in leaf.output_shape:
                    total += math.prod(leaf.output_shape)
        return total


def assign_names(layers: list[LayerSpec], taken: set[str]) -> None:
    """Keras's auto-names (dense, dense_1, ...), skipping names the spec already uses.

    Keras numbers layers per Python session; in a spec the counter is per file, which makes names stable.
    """
    counters: dict[str, int] = {}

    def walk(chain: list[LayerSpec]) -> None:
        for layer in chain:
            if layer.name is None:
                base = snake_case(layer.type)
                while True:
                    k = counters.get(base, 0)
                    counters[base] = k + 1
                    candidate = base if k == 0 else f"{base}_{k}"
                    if candidate not in taken:
                        break
                layer.name = candidate
                taken.add(candidate)
            if layer.type in BLOCK_TYPES:
                walk(layer.layers)

    walk(layers)


def _infer(node: Node, report: Report, frozen: bool) -> None:
    """Fill in output shape, weights and children of one node whose input shape is known."""
    layer = node.layer
    node.trainable = layer.trainable and not frozen
    try:
        if layer.type == "Sequential":
            shape = node.input_shape
            for i, child_layer in enumerate(layer.layers):
                child = Node(child_layer.name, child_layer, [], node.path + ("layers", i), input_shape=shape)
                node.children.append(child)
                if child_layer.inputs is not None:
                    report(child.path + ("inputs",), "`inputs` is not used inside a nested Sequential block: "
                                                     "each layer takes the one before it")
                if child_layer.is_merge:
                    report(child.path, f"{child_layer.type} merges several inputs and cannot be used inside a "
                                       f"nested Sequential block; use a Functional model")
                    return
                _infer(child, report, frozen=not node.trainable)
                if child.output_shape is None:
                    return
                shape = child.output_shape
            node.output_shape = shape
            return
        if layer.type == "Functional":
            _infer_block_graph(node, report)
            return
        node.output_shape = tuple(layer.compute_output_shape(node.input_shape))
        node.weights = layer.weight_specs(node.input_shape)
        _check_sizes(node)
    except ShapeError as exc:
        shown = (" and ".join(fmt_shape(s) for s in node.input_shape) if layer.is_merge
                 else fmt_shape(node.input_shape))
        report(node.path, f"{layer.type} '{layer.name}' cannot take input {shown}: {exc}")
        node.output_shape, node.weights = None, []


def _infer_block_graph(node: Node, report: Report) -> None:
    """A Functional block's children: each layer's input shapes from the block's input or the layers
    before it (the block's layers come in a topological order)."""
    layer = node.layer
    shapes: dict[str, Any] = {layer.block_input: node.input_shape}
    for i, child_layer in enumerate(layer.layers):
        path = node.path + ("layers", i)
        refs = list(child_layer.inputs or ())
        unknown = [r for r in refs if r not in shapes]
        if unknown or not _check_arity(child_layer, len(refs), path + ("inputs",), report):
            if unknown:
                report(path + ("inputs",), f"unknown input {unknown[0]!r} inside block '{layer.name}'; known: "
                                           f"{', '.join(shapes)}")
            return
        args = [shapes[r] for r in refs]
        child = Node(child_layer.name, child_layer, refs, path,
                     input_shape=args if child_layer.is_merge else args[0])
        node.children.append(child)
        _infer(child, report, frozen=not node.trainable)
        if child.output_shape is None:
            return
        shapes[child.name] = child.output_shape
    if layer.output not in shapes:
        report(node.path, f"block '{layer.name}' has no layer named {layer.output!r} for its output")
        return
    node.output_shape = shapes[layer.output]


def _check_sizes(node: Node) -> None:
    """Raises ShapeError when the layer's output, weights or work per sample exceed what specc counts with
    (NumPy's int64), so that anything validation accepts can be summarised. Sizes the user writes are
    bounded by the schema (MAX_SIZE); sizes a layer computes (Flatten's) only by these products."""
    shape, layer = node.output_shape, node.layer
    if len(shape) > MAX_RANK:
        raise ShapeError(f"its output {fmt_shape(shape)} would have {len(shape)} axes besides the batch axis; "
                         f"at most {MAX_RANK}")
    values = math.prod(d for d in shape if d is not None)
    if values > MAX_INT64:
        raise ShapeError(f"its output {fmt_shape(shape)} would hold {values:,} values per sample; at most "
                         f"{limit_text(MAX_INT64)}")
    params = sum(w.size for w in node.weights)
    if params > MAX_INT64:
        raise ShapeError(f"it would have {params:,} parameters; a model has at most {limit_text(MAX_INT64)}")
    try:
        macs = layer.macs(node.input_shape, shape) or 0
    except TypeError:  # a size known only at run time
        macs = 0
    if macs > MAX_INT64:
        raise ShapeError(f"it would take {macs:,} multiply-adds per sample; at most {limit_text(MAX_INT64)}")


def _check_total_params(nodes: list[Node], report: Report) -> None:
    """The model's parameter count fits int64 (the engine's flat buffer); reported at the layer that
    crosses the limit."""
    total = 0
    for node in nodes:
        total += node.params()
        if total > MAX_INT64:
            report(node.path, f"with layer '{node.name}' the model would have {total:,} parameters; a model has "
                              f"at most {limit_text(MAX_INT64)}")
            return


def _check_arity(layer: LayerSpec, n: int, path: Path, report: Report) -> bool:
    lo, hi = layer.min_inputs, layer.max_inputs
    if n < lo or (hi is not None and n > hi):
        want = f"exactly {lo}" if lo == hi else (f"{lo} to {hi}" if hi else f"at least {lo}")
        report(path, f"{layer.type} takes {want} input{'s' if want != 'exactly 1' else ''}, got {n}")
        return False
    return True


def build_sequential(name: str, input_name: str, input_shape: tuple, layers: list[LayerSpec],
                     report: Report) -> Graph:
    inp = Node(input_name, None, [], ("model", "input"), output_shape=tuple(input_shape))
    nodes: list[Node] = []
    prev, shape = inp, inp.output_shape
    for i, layer in enumerate(layers):
        path = ("model", "layers", i)
        if layer.inputs is not None:
            report(path + ("inputs",), "`inputs` is only used in Functional models (model.inputs + "
                                       "model.outputs); in a Sequential model each layer takes the one before it")
        node = Node(layer.name, layer, [prev.name], path, input_shape=shape)
        nodes.append(node)
        if shape is None:
            continue  # an earlier layer failed; its error is already reported
        if layer.is_merge:
            report(path, f"{layer.type} merges several inputs and cannot be used in a Sequential model; "
                         f"use a Functional model (model.inputs, layers with `inputs`, model.outputs)")
            shape = None
            continue
        _infer(node, report, frozen=False)
        prev, shape = node, node.output_shape
    _check_total_params(nodes, report)
    return Graph(name, "sequential", [inp], nodes, [nodes[-1].name] if nodes else [input_name])


def build_functional(name: str, inputs: dict[str, tuple], layers: list[LayerSpec], outputs: list[str],
                     report: Report) -> Graph:
    input_nodes = [Node(k, None, [], ("model", "inputs", k), output_shape=tuple(s)) for k, s in inputs.items()]
    by_name: dict[str, Node] = {n.name: n for n in input_nodes}
    nodes: list[Node] = []
    missing_inputs = False  # then reachability errors would only be follow-ons
    for i, layer in enumerate(layers):
        path = ("model", "layers", i)
        if layer.inputs is None:
            report(path, f"{layer.type} '{layer.name}' needs `inputs` in a Functional model: the names of "
                         f"the model inputs or layers it takes, e.g. inputs: {input_nodes[0].name}")
            inbound: list[str] = []
            missing_inputs = True
        else:
            inbound = list(layer.inputs)
        node = Node(layer.name, layer, inbound, path)
        nodes.append(node)
        by_name.setdefault(layer.name, node)

    ok_refs = True
    for node in nodes:
        for j, ref in enumerate(node.inbound):
            if ref not in by_name:
                report(node.path + ("inputs", j), f"unknown input {ref!r}{suggest(ref, by_name)}; known: {', '.join(by_name)}")
                ok_refs = False
            elif ref == node.name:
                report(node.path + ("inputs",), f"layer '{node.name}' takes itself as input")
                ok_refs = False
    for j, out in enumerate(outputs):
        if out not in by_name:
            report(("model", "outputs", j), f"unknown output {out!r}{suggest(out, by_name)}; "
                                            f"known: {', '.join(by_name)}")
            ok_refs = False
    order = _topological(nodes, report)
    if order is None or not ok_refs or missing_inputs:
        return Graph(name, "functional", input_nodes, nodes, outputs)

    # Everything must lie on a path from an input to an output, as in a Keras Functional model.
    used = set()
    stack = list(outputs)
    while stack:
        n = stack.pop()
        if n not in used:
            used.add(n)
            stack.extend(by_name[n].inbound)
    for node in input_nodes:
        if node.name not in used:
            report(node.path, f"input '{node.name}' is not used by any output")
    for node in nodes:
        if node.name not in used:
            report(node.path, f"layer '{node.name}' does not lead to any output in model.outputs "
                              f"({', '.join(outputs)}); connect it or remove it")

    for node in order:
        if not _check_arity(node.layer, len(node.inbound), node.path + ("inputs",), report):
            continue
        shapes = [by_name[r].output_shape for r in node.inbound]
        if any(s is None for s in shapes):
            continue
        node.input_shape = shapes if node.layer.is_merge else shapes[0]
        _infer(node, report, frozen=False)
    _check_total_params(order, report)
    return Graph(name, "functional", input_nodes, order, outputs)


def _topological(nodes: list[Node], report: Report) -> list[Node] | None:
    """Nodes in dependency order, stable to file order; reports each cycle with its members."""
    by_name = {n.name: n for n in nodes}
    state: dict[str, int] = {}  # 1 visiting, 2 done
    order: list[Node] = []
    cyclic = False

    def visit(node: Node, stack: list[str]) -> None:
        # stack: the consumers being visited, ending with `node`
        nonlocal cyclic
        state[node.name] = 1
        for ref in node.inbound:
            dep = by_name.get(ref)
            if dep is None or dep is node:
                continue
            if state.get(ref) == 1:
                cycle = (stack[stack.index(ref):] + [ref])[::-1]  # in data-flow direction
                report(node.path + ("inputs",), "cycle in the model graph: " + " -> ".join(cycle))
                cyclic = True
            elif ref not in state:
                visit(dep, stack + [ref])
        state[node.name] = 2
        order.append(node)

    for node in nodes:
        if node.name not in state:
            visit(node, [node.name])
    return None if cyclic else order



def engine_graph(graph: Graph) -> Graph:
    """The graph the engine runs. The engine runs a nested block's children as a chain, so every block
    holding a Functional block (a graph, not a chain) is laid out inline in the enclosing graph: its layers
    in the block's order, its input name replaced by its inbound tensor, and one node named after the block
    holding only its output layer, so the block's name still stands for its output tensor (the engine
    resolves a block's name to its last child's output). A graph without Functional blocks is returned as it
    is. (Engine._flatten following each child's own `inbound` would make this unnecessary.)"""
    if not any(_has_graph_block(n) for n in graph.nodes):
        return graph
    nodes: list[Node] = []
    for node in graph.nodes:
        nodes.extend(_inline(node, list(node.inbound), {}))
    return Graph(graph.name, graph.kind, graph.inputs, nodes, graph.outputs, graph.batch_size)


def _has_graph_block(node: Node) -> bool:
    return node.layer is not None and node.layer.type == "Functional" or any(map(_has_graph_block, node.children))


def _inline(node: Node, inbound: list[str], rename: dict[str, str]) -> list[Node]:
    """`node`, reading `inbound` (names inside blocks renamed by `rename`), as the nodes the engine runs."""
    inbound = [rename.get(r, r) for r in inbound]
    if not _has_graph_block(node):
        return [Node(node.name, node.layer, inbound, node.path, node.input_shape, node.output_shape, node.weights,
                     node.trainable, node.children)]
    nodes: list[Node] = []
    if node.layer.type == "Functional":
        inner = {**rename, node.layer.block_input: inbound[0]}
        for child in node.children:
            nodes.extend(_inline(child, child.inbound, inner))
    else:  # a Sequential block: each child reads the one before it
        prev = inbound
        for child in node.children:
            nodes.extend(_inline(child, prev, rename))
            prev = [child.name]
    last = nodes.pop()  # the block's output layer (a block's output is its last layer, see Functional)
    nodes.append(Node(node.name, node.layer, last.inbound, node.path, node.input_shape, node.output_shape, [],
                      node.trainable, [last]))
    return nodes
