"""From API objects to the one engine: a model's layers become a specc Graph (the same Graph a YAML spec
becomes, built by specc.graph.build_sequential / build_functional), which specc.engine.Engine runs.

    plan = sequential_plan(model) | functional_plan(model) | layer_plan(layer, shapes)
    engine = make_engine(plan)        # Engine(engine_graph(plan.graph)), shared calls bound to their weights
    claim(engine, plan)               # the layers' weights now live in engine.params
    with hold(plan): ...              # fit(): they stay there while other engines run

Weights belong to the layers (Keras's model: a layer's variables are shared by every model using it).
The engine keeps all parameters in one flat buffer, so `claim` copies each layer's current arrays into the
engine that is about to run and makes the layer's arrays views into that buffer: a model used alone never
copies again, and a layer shared by two models carries its values from one engine to the other.

A nested Sequential model becomes a `{type: Sequential}` block (its chain of layers), as in a spec; a
nested Functional model a `Functional` block (its graph, specc.layers.container). A layer called several
times in one Functional graph becomes one graph node per call (named `dense`, `dense_1`, ... as Keras
names the outputs); the first call declares the weights and every call runs on them (SharedCall).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph import Graph, build_functional, build_sequential, engine_graph
from ..layers.base import REGISTRY, LayerSpec
from ..layers.container import Functional


@dataclass
class SharedGroup:
    """The calls of one layer inside one graph. `weights`/`grads` are the first call's engine views."""

    layer: Any
    names: list[str] = field(default_factory=list)  # graph node names, first call first
    weights: list = field(default_factory=list)
    grads: list = field(default_factory=list)
    fresh: bool = False  # a forward pass started and no backward has reset `grads` yet


class SharedCall:
    """One call of a layer that its graph calls several times: a LayerSpec stand-in for graph and engine.

    Graph and engine see a layer named after the call; only the first call declares weights (so the
    parameters and the summary count them once). Each call's backward computes its weight gradients into
    scratch arrays and adds them into the first call's gradient views; the first backward after a forward
    pass zeroes those views first, because the layer kernels overwrite rather than accumulate.
    """

    def __init__(self, spec: LayerSpec, name: str, inputs: list[str], group: SharedGroup, first: bool):
        self._spec, self.name, self.inputs, self._group, self._first = spec, name, inputs, group, first

    def __getattr__(self, key: str) -> Any:
        return getattr(self._spec, key)

    def weight_specs(self, input_shape: Any) -> list:
        return self._spec.weight_specs(input_shape) if self._first else []

    def forward(self, w, x, training, rng):
        if self._first:
            self._group.fresh = True
        return self._spec.forward(self._group.weights, x, training, rng)

    def backward(self, w, g, saved, dy, need_dx=True):
        group = self._group
        scratch = [None if gv is None else np.zeros_like(gv) for gv in group.grads]
        dx = self._spec.backward(group.weights, scratch, saved, dy, need_dx)
        if group.fresh:
            for gv in group.grads:
                if gv is not None:
                    gv[...] = 0
            group.fresh = False
        for gv, s in zip(group.grads, scratch):
            if gv is not None:
                gv += s
        return dx


@dataclass
class Plan:
    graph: Graph
    leaves: dict[str, Any]  # engine step name -> the API layer whose weights that step uses
    groups: list[SharedGroup] = field(default_factory=list)


def _raise(errors: list[str], model_name: str) -> None:
    if errors:
        raise ValueError(f"model '{model_name}': " + "\n".join(errors))


def _flag(layer: Any, flags: dict | None) -> bool:
    """The trainable flag to build with: compile-time snapshot when given (Keras keeps it until recompile)."""
    return flags.get(id(layer), layer.trainable) if flags else layer.trainable


def _register(leaves: dict[str, Any], name: str, layer: Any, model_name: str) -> None:
    other = leaves.get(name)
    if other is layer:
        raise NotImplementedError(f"model '{model_name}' uses layer '{name}' in two places (inside a nested model "
                                  f"and outside it, or a nested model twice); specc shares a layer only between "
                                  f"calls in one Functional graph")
    if other is not None:
        raise ValueError(f"The name \"{name}\" is used 2 times in model '{model_name}' (a nested model counts: "
                         f"its layers run inline). All layer names should be unique; pass name=... to rename one.")
    leaves[name] = layer


def leaf_spec(layer: Any, name: str, inputs: list[str] | None, flags: dict | None) -> LayerSpec:
    return layer._spec.model_copy(update={"name": name, "inputs": inputs, "trainable": _flag(layer, flags)})


def block_spec(model: Any, name: str, inputs: list[str] | None, flags: dict | None, leaves: dict,
               top: str) -> LayerSpec:
    """A nested model as a block: a Sequential model as a spec's `{type: Sequential, layers: [...]}`, a
    Functional model as a Functional block holding its graph."""
    if not model._is_sequential:
        spec = graph_block_spec(model, name, flags, leaves, top)
        spec.inputs = inputs
        return spec
    children = []
    for layer in model.layers:
        if layer._is_model:
            children.append(block_spec(layer, layer.name, None, flags, leaves, top))
        else:
            _register(leaves, layer.name, layer, top)
            children.append(leaf_spec(layer, layer.name, None, flags))
    _register(leaves, name, model, top)
    spec = REGISTRY["Sequential"](name=name, trainable=_flag(model, flags), layers=children)
    spec.inputs = inputs
    return spec


def graph_block_spec(model: Any, name: str, flags: dict | None, leaves: dict, top: str) -> Functional:
    """A nested Functional model (one input, one output; each layer called once) as a Functional block:
    its layers in Keras's order (so its weights keep the order of model.weights), each naming its inputs
    inside the block."""
    if len(model._inputs) != 1 or len(model._outputs) != 1:
        raise NotImplementedError(f"model '{model.name}' has {len(model._inputs)} inputs and {len(model._outputs)} "
                                  f"outputs; specc nests Functional models with one input and one output. Call its "
                                  f"layers on your tensors directly instead.")
    inp = model._inputs[0].node.layer
    nodes = {id(n.layer): n for n in model._graph_nodes}
    if len(nodes) != len(model._graph_nodes):
        raise NotImplementedError(f"model '{model.name}' calls one of its layers more than once; specc shares a "
                                  f"layer between calls only in the outermost model")

    def tensor_name(t) -> str:
        return inp.name if t.node.layer is inp else t.node.layer.name

    children = []
    for layer in model._sublayers():
        node = nodes[id(layer)]
        inbound = [tensor_name(t) for t in node.inputs]
        if layer._is_model:
            children.append(block_spec(layer, layer.name, inbound, flags, leaves, top))
        else:
            _register(leaves, layer.name, layer, top)
            children.append(leaf_spec(layer, layer.name, inbound, flags))
    output = tensor_name(model._outputs[0])
    if not children or children[-1].name != output:
        raise NotImplementedError(f"model '{model.name}': its output must be the output of its last layer")
    _register(leaves, name, model, top)
    return Functional(name=name, trainable=_flag(model, flags), block_input=inp.name, input_shape=inp._shape,
                      layers=children, output=output)


def sequential_plan(model: Any, flags: dict | None = None) -> Plan:
    inp = model._input_layer()
    leaves: dict[str, Any] = {}
    _register(leaves, inp.name, inp, model.name)
    specs = []
    for layer in model.layers:
        if layer._is_model:
            specs.append(block_spec(layer, layer.name, None, flags, leaves, model.name))
        else:
            _register(leaves, layer.name, layer, model.name)
            specs.append(leaf_spec(layer, layer.name, None, flags))
    del leaves[inp.name]
    errors: list[str] = []
    graph = build_sequential(model.name, inp.name, inp._shape, specs, lambda path, msg: errors.append(msg))
    _raise(errors, model.name)
    graph.batch_size = inp.batch_shape[0]  # Keras shows (1, 2) for a model built by a call on a (1, 4) batch
    return Plan(graph, leaves)


def functional_plan(model: Any, flags: dict | None = None) -> Plan:
    inputs = model._input_layers()
    leaves: dict[str, Any] = {}
    for inp in inputs:
        _register(leaves, inp.name, inp, model.name)
    calls: dict[int, int] = {}
    for node in model._graph_nodes:
        calls[id(node.layer)] = calls.get(id(node.layer), 0) + 1
    names: dict[int, str] = {}  # node id -> graph node name
    taken = set(leaves)
    groups: dict[int, SharedGroup] = {}
    specs: list[Any] = []

    def tensor_name(t) -> str:
        return t.node.layer.name if t.node.layer in inputs else names[t.node.id]

    for node in model._graph_nodes:
        layer = node.layer
        inbound = [tensor_name(t) for t in node.inputs]
        if calls[id(layer)] == 1:
            name = layer.name
            if layer._is_model:
                specs.append(block_spec(layer, name, inbound, flags, leaves, model.name))
            else:
                _register(leaves, name, layer, model.name)
                specs.append(leaf_spec(layer, name, inbound, flags))
            taken.add(name)
        else:
            if layer._is_model:
                raise NotImplementedError(f"model '{layer.name}' is called {calls[id(layer)]} times in model "
                                          f"'{model.name}'; specc can share layers between calls, not whole models")
            group = groups.get(id(layer))
            if group is None:
                group = groups[id(layer)] = SharedGroup(layer)
                name = layer.name
                _register(leaves, name, layer, model.name)
            else:
                k = len(group.names)
                name = f"{layer.name}_{k}"
                while name in taken:
                    k += 1
                    name = f"{layer.name}_{k}"
            taken.add(name)
            specs.append(SharedCall(leaf_spec(layer, name, inbound, flags), name, inbound, group, not group.names))
            group.names.append(name)
        names[node.id] = name
    for inp in inputs:
        del leaves[inp.name]
    # The graph's order (and so the engine's weight order) follows Keras's layer order wherever the
    # dependencies allow; build_functional's topological sort is stable to this order.
    rank = {id(layer): k for k, layer in enumerate(model._sublayers())}
    order = sorted(range(len(specs)), key=lambda i: (rank[id(model._graph_nodes[i].layer)], i))
    specs = [specs[i] for i in order]
    outputs = [tensor_name(t) for t in model._outputs]
    errors: list[str] = []
    graph = build_functional(model.name, {inp.name: inp._shape for inp in inputs}, specs, outputs,
                             lambda path, msg: errors.append(msg))
    _raise(errors, model.name)
    return Plan(graph, leaves, list(groups.values()))


def layer_plan(layer: Any, shapes: list[tuple]) -> Plan:
    """A one-layer graph, for calling a layer on arrays."""
    names = [f"{layer.name}__input_{i}" for i in range(len(shapes))]
    errors: list[str] = []
    graph = build_functional(layer.name, dict(zip(names, shapes)), [leaf_spec(layer, layer.name, names, None)],
                             [layer.name], lambda path, msg: errors.append(msg))
    _raise(errors, layer.name)
    return Plan(graph, {layer.name: layer})


def make_engine(plan: Plan):
    from ..engine import Engine  # lazy: keeps `specc validate` / `specc summary` light

    engine = Engine(engine_graph(plan.graph))
    steps = {s.name: s for s in engine.steps}
    for group in plan.groups:
        owner = steps[group.names[0]]
        group.weights, group.grads = owner.weights, owner.grads
    return engine


def claim(engine: Any, plan: Plan) -> None:
    """Copy each layer's current weights into `engine` and (unless a fit() holds them) move them there."""
    for step in engine.steps:
        layer = plan.leaves.get(step.name)
        if layer is None or not step.weights:
            continue
        arrays = layer._weights
        for i, view in enumerate(step.weights):
            if arrays[i] is view:
                continue
            view[...] = arrays[i]
            if not layer._held:
                arrays[i] = view


@contextlib.contextmanager
def hold(plan: Plan):
    """While a fit() runs on `plan`'s engine, that engine keeps its layers' weights: another engine the
    layers are claimed by meanwhile (a callback predicting with a second model) copies their values but
    does not take them over. A count per layer, as fits may nest (a callback calling fit)."""
    leaves = list({id(leaf): leaf for leaf in plan.leaves.values()}.values())
    for leaf in leaves:
        leaf._held += 1
    try:
        yield
    finally:
        for leaf in leaves:
            leaf._held -= 1
