"""`specc.Model`: a Functional model (Keras's `Model(inputs, outputs)`), and the model interface it shares
with `specc.Sequential`: construction, structure, calls and summary here; compile/fit/evaluate/predict in
specc.api.model_training and specs, configs, saving and weights files in specc.api.model_saving (two mixins
Model inherits).

Everything runs on the engine and training loop the CLI uses. A model turns into a specc Graph
(specc.api.functional) for summary() and for the Engine; fit/evaluate/predict hand arrays to
specc.train.fit.Trainer, which returns Keras's History and log names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..train import checks
from . import backend
from .eager import runtime
from .layer import InputLayer, Layer, check_name
from .model_saving import SavingMixin
from .model_training import SMALL_BATCH, TrainingMixin
from .tensors import CallNode, KerasTensor, flatten, shape_str


class Model(TrainingMixin, SavingMixin, Layer):
    """A Functional model: `Model(inputs=x, outputs=y)` for KerasTensors x (from specc.Input) and y."""

    _is_model = True
    _is_sequential = False

    def __init__(self, inputs: Any = None, outputs: Any = None, name: str | None = None, trainable: bool = True,
                 **kwargs: Any):
        if kwargs:
            raise TypeError(f"Model() got unexpected argument(s) {', '.join(sorted(kwargs))}")
        if inputs is None or outputs is None:
            raise TypeError("specc.Model needs `inputs` and `outputs`: x = specc.Input(shape=(3,)); "
                            "y = specc.layers.Dense(2)(x); model = specc.Model(inputs=x, outputs=y). "
                            "Subclassing Model is not supported (specc compiles a declared graph).")
        self._init_model(name, "functional", trainable)
        self._setup_functional(inputs, outputs)
        if not trainable:
            self._set_trainable(False)

    # --- construction -------------------------------------------------------------------------------

    def _init_model(self, name: str | None, prefix: str, trainable: bool) -> None:
        self._init_layer()
        self._name = check_name(name, "model name") if name is not None else backend.auto_name(prefix)
        self._trainable = bool(trainable)
        self._engines: dict = {}  # structure signature -> (plan, engine), the last two used
        self._compiled = None  # CompileConfig
        self._compile_flags: dict[int, bool] = {}  # trainable flags at compile time, by id(layer)
        self._warned = False
        self._trainer = None
        self._trainer_key = None
        self._resolved = None
        self.run_eagerly = False
        self.jit_compile = True
        self.history = None  # the History of the last fit()
        self._seed: int | None = None  # from a spec: weights, shuffling and dropout follow it
        self._source = None  # the Spec this model was loaded from, if any
        self._signatures: dict[int, tuple] = {}  # id(flags) -> (structure version, flags, signature)
        self._inference = None  # model_training._Inference: what the last small-batch prediction ran on

    def _setup_functional(self, inputs: Any, outputs: Any) -> None:
        self._input_struct = inputs
        self._inputs = flatten(inputs)
        self._output_struct = outputs
        self._outputs = flatten(outputs)
        for t in self._inputs:
            if not isinstance(t, KerasTensor) or not isinstance(t.node.layer, InputLayer):
                raise ValueError(f"Model inputs must come from specc.Input(...); got {t!r}")
        for t in self._outputs:
            if not isinstance(t, KerasTensor):
                raise ValueError(f"Model outputs must be tensors returned by layer calls; got {type(t).__name__}")
        self._graph_nodes = self._collect()
        self._layer_order = self._keras_layer_order()
        seen: dict[str, Any] = {}
        for layer in self._input_layers() + self._sublayers():
            if seen.get(layer.name, layer) is not layer:
                raise ValueError(f"The name \"{layer.name}\" is used 2 times in the model. All layer names should "
                                 f"be unique; pass name=... to rename one.")
            seen[layer.name] = layer
        self._make_plan()  # every shape and graph error now, as Keras raises them at construction

    def _collect(self) -> list[CallNode]:
        """The calls between the inputs and the outputs, in creation (= topological) order."""
        inputs = {id(t) for t in self._inputs}
        found: dict[int, CallNode] = {}
        stack = list(self._outputs)
        while stack:
            t = stack.pop()
            if id(t) in inputs:
                continue
            node = t.node
            if isinstance(node.layer, InputLayer):
                raise ValueError(f"Graph disconnected: cannot obtain value for tensor {t!r} (from input "
                                 f"'{node.layer.name}'): it is not among the model's inputs "
                                 f"({', '.join(i.name for i in self._inputs)}). Add it to `inputs`.")
            if node.id not in found:
                found[node.id] = node
                stack.extend(node.inputs)
        return [found[k] for k in sorted(found)]

    def _keras_layer_order(self) -> list[Layer]:
        """Keras's order of a Functional model's layers (keras.src.ops.function.map_graph): by depth
        (longest path to an output) descending, ties by depth-first pre-order from the outputs. It is the
        order of `layers` and therefore of `weights` / get_weights()."""
        inputs = {id(t) for t in self._inputs}
        first_seen: dict[int, int] = {}
        finished: set[int] = set()
        post: list[CallNode] = []  # Keras's nodes_in_decreasing_depth

        def visit(t: KerasTensor) -> None:
            node = t.node
            if node.id in finished:
                return
            first_seen.setdefault(id(node.layer), len(first_seen))
            if id(t) not in inputs:
                for x in node.inputs:
                    visit(x)
            finished.add(node.id)
            post.append(node)

        for t in self._outputs:
            visit(t)
        node_depth: dict[int, int] = {}
        layer_depth: dict[int, int] = {}
        layers: dict[int, Layer] = {}
        for node in reversed(post):
            depth = max(node_depth.setdefault(node.id, 0), layer_depth.get(id(node.layer), 0))
            node_depth[node.id] = layer_depth[id(node.layer)] = depth
            layers[id(node.layer)] = node.layer
            for x in node.inputs:  # a shared layer takes the depth of its deepest call
                node_depth[x.node.id] = max(depth + 1, node_depth.get(x.node.id, 0))
        return sorted(layers.values(), key=lambda layer: (-layer_depth[id(layer)], first_seen[id(layer)]))

    def _input_layers(self) -> list[InputLayer]:
        return [t.node.layer for t in self._inputs]

    def _sublayers(self) -> list[Layer]:
        """Layers directly inside this model (no InputLayers), each once, in Keras's order."""
        return [layer for layer in self._layer_order if not isinstance(layer, InputLayer)]

    def _make_plan(self, flags: dict | None = None):
        from .functional import functional_plan

        return functional_plan(self, flags)

    # --- identity and structure ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        Layer.trainable.fset(self, value)

    def _set_trainable(self, value: bool) -> None:
        # Keras: setting a model's `trainable` sets it on every layer inside.
        self._trainable = value
        for layer in self._sublayers():
            layer._set_trainable(value)

    @property
    def built(self) -> bool:
        return True

    def build(self, input_shape: Any = None) -> None:
        """A Functional model is built when it is created."""

    @property
    def layers(self) -> list[Layer]:
        """Keras 3's Functional `layers`: every layer, InputLayers included, in Keras's graph order."""
        return list(self._layer_order)

    def _all_layers(self) -> list[Layer]:
        out = [self]
        for layer in self._sublayers():
            out += layer._all_layers()
        return out

    def _leaves(self) -> list:
        self._require_built("weights")
        out: dict[int, Any] = {}
        for layer in self._sublayers():
            for leaf in layer._leaves():
                out.setdefault(id(leaf), leaf)
        return list(out.values())

    def _structure_key(self) -> Any:
        return (id(self), tuple(n.id for n in self._graph_nodes),
                tuple(layer._structure_key() for layer in self._sublayers()))

    def _signature(self, flags: dict | None) -> Any:
        """What decides the engine: the structure and the trainable flags (the compile-time ones when `flags`
        is given). Worked out again only after a structure change (backend.structure_changed)."""
        from .functional import _flag

        version = backend.structure_version()
        hit = self._signatures.get(id(flags))
        if hit is not None and hit[0] == version and hit[1] is flags:
            return hit[2]
        signature = (self._structure_key(), tuple((id(layer), _flag(layer, flags)) for layer in self._all_layers()))
        if any(v != version for v, _, _ in self._signatures.values()):
            self._signatures.clear()
        self._signatures[id(flags)] = (version, flags, signature)  # holds `flags`, so its id is not reused
        return signature

    @property
    def inputs(self) -> list[KerasTensor]:
        self._require_built("inputs")
        return list(self._inputs)

    @property
    def outputs(self) -> list[KerasTensor]:
        self._require_built("outputs")
        return list(self._outputs)

    @property
    def input(self) -> Any:
        self._require_built("input")
        return self._input_struct

    @property
    def output(self) -> Any:
        self._require_built("output")
        return self._output_struct

    @property
    def input_shape(self) -> Any:
        shapes = [t.shape for t in self.inputs]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_shape(self) -> Any:
        shapes = [t.shape for t in self.outputs]
        return shapes[0] if len(shapes) == 1 else shapes

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        """Keras's get_layer: by name or by index into `layers`."""
        if index is not None and name is not None:
            raise ValueError(f"Provide only a layer name or a layer index. Received: index={index}, name={name}.")
        if index is not None:
            if len(self.layers) <= index:
                raise ValueError(f"Was asked to retrieve layer at index {index} but model only has "
                                 f"{len(self.layers)} layers.")
            return self.layers[index]
        if name is not None:
            for layer in self.layers:
                if layer.name == name:
                    return layer
            raise ValueError(f"No such layer: {name}. Existing layers are: {[layer.name for layer in self.layers]}.")
        raise ValueError("Provide either a layer name or layer index at `get_layer`.")

    def _output_names(self) -> list[str]:
        return list(self._make_plan().graph.outputs)

    # --- the engine ---------------------------------------------------------------------------------

    def _engine(self, flags: dict | None = None):
        """The engine for this model's current structure (cached), holding the layers' weights."""
        return self._plan_and_engine(flags)[1]

    def _plan_and_engine(self, flags: dict | None = None):
        from .functional import claim, make_engine

        self._require_built("engine")
        key = self._signature(flags)
        hit = self._engines.pop(key, None)
        if hit is None:
            plan = self._make_plan(flags)
            hit = (plan, make_engine(plan))
        self._engines[key] = hit  # most recently used last; keep two (inference and training)
        while len(self._engines) > 2:
            self._engines.pop(next(iter(self._engines)))
        claim(hit[1], hit[0])
        return hit

    def _input_arrays(self, x: Any, n_inputs: int, what: str = "x") -> list[np.ndarray]:
        """One array per model input (a dict by input name, a list, or one array), each of real numbers with
        a batch axis (specc.train.checks); shapes are compared by _check_inputs once the model is built."""
        names = [layer.name for layer in self._input_layers()]
        if isinstance(x, dict):
            missing = [n for n in names if n not in x]
            if missing:
                raise ValueError(f"{what}: model '{self.name}' expects inputs {names}; missing {missing}")
            items = [x[n] for n in names]
        elif isinstance(x, (list, tuple)) and (n_inputs > 1 or all(isinstance(a, np.ndarray) for a in x)):
            items = list(x)  # one array per input (a plain nested list for one input is data, not a list)
        else:
            items = [x]
        if len(items) != n_inputs:
            raise ValueError(f"{what}: model '{self.name}' expects {n_inputs} input(s), but it received "
                             f"{len(items)} input arrays")
        arrays = []
        for k, item in enumerate(items):
            name = what if n_inputs == 1 else f"{what}['{names[k]}']" if names else f"{what}[{k}]"
            a = checks.numeric_array(name, item)
            checks.check_batch_axis(name, a)
            arrays.append(a)
        return arrays

    def _check_inputs(self, arrays: list[np.ndarray], what: str = "x") -> None:
        names = [layer.name for layer in self._input_layers()]
        for i, (t, a) in enumerate(zip(self._inputs, arrays)):
            name = what if len(arrays) == 1 else f"{what}['{names[i]}']"
            checks.check_shape(name, a, t.shape, self.name, i)

    def _ensure_built(self, arrays: list[np.ndarray], call: bool = False) -> None:
        """Sequential models build on their first data; a Functional model is always built."""

    def _structure(self, outs: list) -> Any:
        s = self._output_struct
        if isinstance(s, dict):
            return dict(zip(s, outs))
        if isinstance(s, (list, tuple)):
            return list(outs)
        return outs[0]

    # --- calls --------------------------------------------------------------------------------------

    def __call__(self, inputs: Any = None, training: bool | None = None, mask: Any = None, **kwargs: Any) -> Any:
        # An array of the shape the last small call had (the common `model(x)` in a loop) skips the general
        # checks, which it would pass (TrainingMixin._quick_predict).
        if type(inputs) is np.ndarray and (training is None or training is False) and mask is None and not kwargs:
            outs = self._quick_predict(inputs, SMALL_BATCH, calls=True)
            if outs is not None:
                return self._structure(outs)
        return Layer.__call__(self, inputs, training, mask, **kwargs)

    def _call_eager(self, inputs: Any, training: bool) -> Any:
        arrays = self._input_arrays(inputs, self._n_inputs())
        self._ensure_built(arrays, call=True)
        self._check_inputs(arrays)
        plan, engine = self._plan_and_engine()
        small = len(arrays[0]) <= SMALL_BATCH
        with runtime(self.run_eagerly):
            if small and not training:
                return self._structure(self._predict_small(plan, engine, arrays))
            outs = engine.forward(arrays, training=training, rng=backend.rng(), reuse=small)
        return self._structure([o.copy() for o in outs])

    def _n_inputs(self) -> int:
        return len(self._inputs)

    def _call_symbolic(self, inputs: Any, owner: Any = None) -> Any:
        tensors = flatten(inputs)
        self._ensure_built_symbolic(tensors)
        if len(tensors) != len(self._inputs):
            raise ValueError(f"model '{self.name}' expects {len(self._inputs)} input(s), got {len(tensors)}")
        for i, (t, x) in enumerate(zip(self._inputs, tensors)):
            if not checks.shape_compatible(t.shape, x.shape):
                raise ValueError(f"Input {i} of layer \"{self.name}\" is incompatible with the layer: expected "
                                 f"shape={shape_str(t.shape)}, found shape={shape_str(x.shape)}")
        batch = tensors[0].shape[0]
        node = CallNode(self, tensors, [(batch,) + t.shape[1:] for t in self._outputs], len(tensors) > 1, owner)
        self._nodes.append(node)
        return node.outputs[0] if len(node.outputs) == 1 else list(node.outputs)

    def _ensure_built_symbolic(self, tensors: list[KerasTensor]) -> None:
        pass

    # --- summary ------------------------------------------------------------------------------------

    def summary(self, line_length: int | None = None, positions: Any = None, print_fn: Any = None,
                expand_nested: bool = False, show_trainable: bool = False, layer_range: Any = None) -> None:
        """Keras 3's summary table (specc.summary.summary_text on this model's graph), printed: `line_length`
        and `positions` set the columns, `layer_range=["first", "last"]` (names matched as regular
        expressions at their start, both inclusive) shows those rows only, as Keras's do."""
        from ..summary import layer_range_bounds, summary_rows_names, summary_text

        self._require_built("summary")
        if line_length is not None:
            checks.check_positive_int("line_length", line_length)
        if positions is not None:
            if not isinstance(positions, (list, tuple)) or not positions or any(
                    isinstance(p, bool) or not isinstance(p, (int, float)) or p <= 0 for p in positions) \
                    or list(positions) != sorted(positions):
                raise ValueError(f"positions must be an increasing list of positive numbers: the right end of each "
                                 f"column, as fractions of line_length (the last 1.0) or as columns; got {positions!r}")
        graph = self._make_plan().graph
        bounds = None if layer_range is None else layer_range_bounds(summary_rows_names(graph), layer_range)
        text = summary_text(graph, expand_nested=expand_nested, show_trainable=show_trainable,
                            line_length=line_length, positions=positions, layer_range=bounds)
        (print_fn or print)(text.rstrip("\n"))
