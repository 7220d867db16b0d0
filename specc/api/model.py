"""`specc.Model`: a Functional model (Keras's `Model(inputs, outputs)`), and the model interface it shares
with `specc.Sequential`: calls, summary, weights, compile/fit/evaluate/predict, save/load, YAML.

Everything runs on the engine and training loop the CLI uses. A model turns into a specc Graph
(specc.api.functional) for summary() and for the Engine; fit/evaluate/predict hand arrays to
specc.train.fit.Trainer, which returns Keras's History and log names.
"""

from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from typing import Any

import numpy as np

from ..train import checks
from . import backend
from .eager import runtime
from .layer import InputLayer, Layer, check_name
from .tensors import CallNode, KerasTensor, flatten, shape_str


class Model(Layer):
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
        self._fused_chain = None  # (engine, its DenseChain or None) for predict on small batches

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
        from .functional import _flag

        return (self._structure_key(), tuple((id(layer), _flag(layer, flags)) for layer in self._all_layers()))

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

    def _call_eager(self, inputs: Any, training: bool) -> Any:
        arrays = self._input_arrays(inputs, self._n_inputs())
        self._ensure_built(arrays, call=True)
        self._check_inputs(arrays)
        engine = self._engine()
        small = len(arrays[0]) <= SMALL_BATCH
        with runtime(self.run_eagerly):
            if small and not training:
                return self._structure(self._predict_small(engine, arrays))
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

    # --- weights ------------------------------------------------------------------------------------

    def save_weights(self, filepath: str | os.PathLike, overwrite: bool = True) -> None:
        """Every weight: in Keras 3's HDF5 layout for a `.weights.h5` path (specc.interop.keras_h5), else in
        an .npz keyed `layer/weight` (the format `specc train` writes)."""
        from ..train.run import save_weights

        path = os.fspath(filepath)
        if not path.endswith((".npz", ".weights.h5")):
            raise ValueError(f"save_weights writes Keras's '.weights.h5' files or specc's '.npz' (the format of "
                             f"`specc train` runs); got {path!r}. Use a path ending in .weights.h5 or .npz, e.g. "
                             f"'model.weights.h5'; a whole model goes to model.save('model.specc')")
        if not overwrite and os.path.exists(path):
            raise FileExistsError(f"{path} exists and overwrite=False")
        self._require_built("save_weights")
        if path.endswith(".weights.h5"):
            _keras_h5().save_weights(self, path)
            return
        save_weights(path, self._engine())

    def load_weights(self, filepath: str | os.PathLike) -> None:
        """Load Keras 3's `.weights.h5` (specc.interop.keras_h5), the weights of a `.specc` model file, or an
        .npz written by save_weights (or a `specc train` run's weights.*.npz).

        Arrays are matched by their `layer/weight` keys when the names agree, else by position, as Keras 3
        matches a weights file to the model's structure (so a model rebuilt in the same session, whose
        auto-names moved on to dense_4, still loads). Nothing is written unless every array fits.
        """
        from ..train.run import weight_keys

        path = os.fspath(filepath)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no weights file at {path}")
        self._require_built("load_weights")
        if path.endswith(".h5"):
            _keras_h5().load_weights(self, path)
            return
        if path.endswith(".specc"):
            from .saving import load_weights_from_archive

            load_weights_from_archive(self, path)
            return
        engine = self._engine()
        keys = weight_keys(engine)
        try:
            archive = np.load(path, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy array, not named weights
                raise ValueError("it holds one array, not named weights")
            with archive:
                files = list(archive.files)
                names = keys if sorted(files) == sorted(keys) else files
                arrays = [archive[k] for k in names]
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise ValueError(f"cannot load {path} into model '{self.name}': it is not a weights file written by "
                             f"save_weights (an .npz of `layer/weight` arrays) or it is damaged ({exc})") from None
        expected = [w.shape for s in engine.steps for w in s.weights]
        problem = None
        if len(arrays) != len(expected):
            problem = f"the file has {len(arrays)} weight arrays, the model has {len(expected)} ({', '.join(keys)})"
        else:
            for k, (a, shape) in enumerate(zip(arrays, expected)):
                if a.dtype.kind not in "biuf":
                    problem = f"array {k} ({names[k]}) has dtype {a.dtype}; weights are real numbers"
                    break
                if a.shape != shape:
                    problem = (f"array {k} ({names[k]}) has shape {a.shape}, but the model's weight {keys[k]} has "
                               f"shape {shape}")
                    break
        if problem:
            raise ValueError(f"cannot load {path} into model '{self.name}': {problem}. The weights must come "
                             f"from a model with the same layers (save_weights of the same architecture).")
        engine.set_weights(arrays)

    # --- training -----------------------------------------------------------------------------------

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, loss_weights: Any = None, metrics: Any = None,
                weighted_metrics: Any = None, run_eagerly: bool = False, steps_per_execution: int = 1,
                jit_compile: Any = "auto", auto_scale_loss: bool = True, **kwargs: Any) -> None:
        """Keras's compile: names, objects, lists (one per output) or dicts (by output name); metrics may be
        functions (y_true, y_pred) -> array. `jit_compile` (True, False or "auto") is accepted as Keras's:
        specc's kernels are always compiled by Numba (there is no XLA step to switch), and `run_eagerly=True`
        runs them as plain Python."""
        from . import optimizers
        from .training import CompileConfig, check_loss, resolve

        if kwargs:
            raise TypeError(f"compile() got argument(s) specc does not support: {', '.join(sorted(kwargs))}")
        if steps_per_execution != 1:
            raise NotImplementedError("steps_per_execution must be 1 in specc")
        if jit_compile not in (True, False, "auto"):
            raise ValueError(f"jit_compile must be True, False or \"auto\", got {jit_compile!r}")
        if jit_compile is True and run_eagerly:
            warnings.warn("If `run_eagerly` is True, then `jit_compile` cannot also be True. Disabling `jit_compile`.",
                          stacklevel=2)
            jit_compile = False
        if weighted_metrics is not None and not isinstance(weighted_metrics, (list, tuple, dict)):
            raise ValueError(f"Expected `weighted_metrics` argument to be a list, tuple, or dict. Received instead: "
                             f"weighted_metrics={weighted_metrics!r} of type {type(weighted_metrics).__name__}")
        for entry in (loss.values() if isinstance(loss, dict) else loss if isinstance(loss, (list, tuple)) else [loss]):
            check_loss(entry)
        config = CompileConfig(optimizers.get(optimizer), loss, metrics, loss_weights, weighted_metrics)
        if loss is not None and self.built:
            resolve(config, self._output_names())  # report bad names now rather than at fit()
        self._compiled = config
        self.run_eagerly = bool(run_eagerly)
        self.jit_compile = (not self.run_eagerly) if jit_compile == "auto" else jit_compile
        self._compile_flags = {id(layer): layer.trainable for layer in self._all_layers()}
        self._warned = False
        self._trainer = self._trainer_key = self._resolved = None
        backend.compiled_models.add(self)

    @property
    def optimizer(self) -> Any:
        """The optimizer compile() was given, as a specc.optimizers object (None before compile): its
        `learning_rate` is the training loop's, readable and settable between steps."""
        return None if self._compiled is None else self._compiled.optimizer

    @property
    def loss(self) -> Any:
        """What compile() was given as `loss` (a name, a loss object, a list or a dict), as Keras keeps it."""
        return None if self._compiled is None else self._compiled.loss

    def _warn_if_trainable_changed(self, layer: Layer) -> None:
        if self._warned or self._compiled is None:
            return
        for sub in layer._all_layers():
            if id(sub) in self._compile_flags and self._compile_flags[id(sub)] != sub.trainable:
                warnings.warn(f"`trainable` of '{layer.name}' changed after model '{self.name}' was compiled: "
                              f"fit() keeps the trainable state of compile time until you compile again. Call "
                              f"model.compile(...) for the change to take effect.", UserWarning, stacklevel=3)
                self._warned = True
                return

    @property
    def metrics_names(self) -> list[str]:
        """The names fit() and evaluate() log, in order: ['loss', ...] (tf.keras's definition)."""
        from .training import metrics_names, resolve

        if self._compiled is None or self._compiled.loss is None or not self.built:
            return []
        outputs = self._output_names()
        return metrics_names(resolve(self._compiled, outputs), outputs)

    @property
    def stop_training(self) -> bool:
        return bool(self._trainer and self._trainer.stop_training)

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        if self._trainer is not None:
            self._trainer.stop_training = bool(value)

    def _get_trainer(self, ys: list[np.ndarray] | None = None):
        """The training loop for the compiled settings and the current structure (cached). `ys` (the targets)
        decide what Keras's loss "crossentropy" / "ce" means: sparse for class-index targets."""
        from .training import crossentropy_for, make_trainer, resolve

        if self._compiled is None:
            raise RuntimeError("You must call `compile()` before using the model for training or evaluation: "
                               "model.compile(optimizer='adam', loss='mse')")
        self._require_built("fit")
        flags = self._compile_flags
        outputs = self._output_names()
        graph = self._make_plan(flags).graph
        ce = []
        for k, o in enumerate(outputs):
            shape = graph.node(o).output_shape
            sparse = ys is not None and (ys[k].ndim < len(shape) + 1 or (ys[k].shape[-1] == 1 and shape[-1] != 1))
            ce.append(crossentropy_for(shape[-1], sparse))
        # The targets matter only to a "crossentropy"/"ce" loss or metric; a call without them (evaluate's
        # loss reset, set_training_state) reuses the loop built with them rather than a fresh optimizer.
        key = (self._signature(flags), tuple(ce) if _mentions_crossentropy(self._compiled) else ())
        if ys is None and self._trainer is not None and self._trainer_key[0] == key[0]:
            key = self._trainer_key
        if self._trainer is None or self._trainer_key != key:
            self._resolved = resolve(self._compiled, outputs, ce)
            plan, engine = self._plan_and_engine(flags)
            seed = self._seed if self._seed is not None else backend.draw_seed()
            self._trainer = make_trainer(engine, self._resolved, seed)
            self._trainer.api_plan = plan
            self._trainer_key = key
        self._compiled.optimizer.bind(self._trainer.optimizer)
        return self._trainer

    def _prepared_inputs(self, x: Any, what: str = "x") -> list[np.ndarray]:
        """Input arrays checked against the model (which a deferred Sequential builds from first)."""
        if x is None:
            raise ValueError(f"{what} is None; pass the input data (an array, a list or a dict of arrays)")
        xs = self._input_arrays(x, self._n_inputs(), what)
        self._ensure_built(xs)
        self._check_inputs(xs, what)
        return xs

    def _targets(self, y: Any, what: str = "y") -> list[np.ndarray]:
        """One target array per output (a dict by output name, a list, or one array), of real numbers;
        their shapes against the outputs and losses are the Trainer's check (Trainer.check_data)."""
        outputs = self._output_names()
        if y is None:
            raise ValueError(f"{what} is None: fit() and evaluate() need targets, one array per model output "
                             f"({', '.join(outputs)})")
        if isinstance(y, dict):
            missing = [o for o in outputs if o not in y]
            if missing:
                raise ValueError(f"{what}: targets are missing output(s) {missing}; outputs: {outputs}")
            items = [y[o] for o in outputs]
        elif isinstance(y, (list, tuple)) and len(outputs) > 1:
            items = list(y)
        else:
            items = [y]
        if len(items) != len(outputs):
            raise ValueError(f"{what}: model '{self.name}' has {len(outputs)} outputs ({', '.join(outputs)}), got "
                             f"{len(items)} target arrays")
        arrays = []
        for k, item in enumerate(items):
            name = what if len(outputs) == 1 else f"{what}['{outputs[k]}']"
            a = checks.numeric_array(name, item)
            checks.check_batch_axis(name, a)
            arrays.append(a)
        return arrays

    def _run(self, trainer: Any):
        """Within fit(): the training engine holds the weights, and eager mode applies."""
        import contextlib

        from .functional import claim, hold

        @contextlib.contextmanager
        def live():
            plan = trainer.api_plan
            claim(trainer.engine, plan)
            with hold(plan), runtime(self.run_eagerly):
                yield

        return live()

    def _callbacks_for(self, callbacks: Any, params: dict) -> list:
        cbs = _callback_list(callbacks)
        for cb in cbs:
            cb.model = self
            if hasattr(cb, "set_params"):
                cb.set_params(params)
        return cbs

    def fit(self, x: Any = None, y: Any = None, batch_size: int | None = None, epochs: int = 1,
            verbose: Any = "auto", callbacks: Any = None, validation_split: float = 0.0,
            validation_data: Any = None, shuffle: bool = True, class_weight: dict | None = None,
            sample_weight: Any = None, initial_epoch: int = 0, steps_per_epoch: int | None = None,
            validation_steps: int | None = None, validation_batch_size: int | None = None,
            validation_freq: Any = 1):
        """Keras's fit on NumPy arrays; returns a History (`history.history['loss']`, ...), also `model.history`.

        Every array is checked before any work (shapes against the model, targets against the losses, the
        same number of samples everywhere, at least one), each error naming the array."""
        from ..train.fit import DEFAULT_BATCH_SIZE
        from .callbacks import History

        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else checks.check_positive_int("batch_size", batch_size)
        if validation_batch_size is not None:
            checks.check_positive_int("validation_batch_size", validation_batch_size)
        checks.check_non_negative_int("epochs", epochs)
        checks.check_non_negative_int("initial_epoch", initial_epoch)
        if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)) \
                or not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
        _check_class_weight(class_weight)
        _callback_list(callbacks)
        vx = vy = vsw = None
        if validation_data is not None:
            vx, vy, vsw = _unpack_validation_data(validation_data)
        xs = self._prepared_inputs(x)
        checks.check_non_empty(len(xs[0]), "x")
        ys = self._targets(y)
        trainer = self._get_trainer(ys)
        val = None
        if validation_data is not None:
            val = (self._prepared_inputs(vx, "validation_data x"), self._targets(vy, "validation_data y"), vsw)
        if verbose is True:
            verbose = 1
        n_train = len(xs[0]) if val is not None else int(len(xs[0]) * (1 - validation_split))
        history = History()
        history.model = self
        history.params = {"verbose": verbose, "epochs": epochs, "steps": steps_per_epoch or -(-n_train // batch_size)}
        cbs = self._callbacks_for(callbacks, history.params)
        with self._run(trainer):
            trainer.fit(xs, ys, batch_size=batch_size, epochs=epochs, validation_split=validation_split,
                        validation_data=val, shuffle=shuffle, class_weight=class_weight, callbacks=cbs,
                        verbose=verbose, initial_epoch=initial_epoch, validation_batch_size=validation_batch_size,
                        sample_weight=sample_weight, steps_per_epoch=steps_per_epoch,
                        validation_steps=validation_steps, validation_freq=validation_freq, history=history)
        self.history = history
        return history

    def _results(self, logs: dict, return_dict: bool) -> Any:
        """Keras's return forms: the dict, else the loss alone (a float) or the values in metrics_names order."""
        if return_dict:
            return logs
        values = [float(v) for v in logs.values()]
        return values[0] if len(values) == 1 else values

    def evaluate(self, x: Any = None, y: Any = None, batch_size: int | None = None, verbose: Any = "auto",
                 sample_weight: Any = None, steps: int | None = None, callbacks: Any = None,
                 return_dict: bool = False) -> Any:
        """Keras's evaluate: the loss (a float) if there is nothing else, else values in `metrics_names` order;
        `steps` batches at most; a progress bar at verbose=1 ("auto")."""
        xs = self._prepared_inputs(x)
        checks.check_non_empty(len(xs[0]), "x")
        ys = self._targets(y)
        trainer = self._get_trainer(ys)
        cbs = self._callbacks_for(callbacks, {"verbose": verbose, "epochs": 1, "steps": steps})
        with self._run(trainer):
            logs = trainer.evaluate(xs, ys, batch_size=batch_size, sample_weight=sample_weight, steps=steps,
                                    callbacks=cbs, verbose=_verbosity(verbose))
        return self._results(logs, return_dict)

    def train_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None, class_weight: dict | None = None,
                       return_dict: bool = False) -> Any:
        """Keras's train_on_batch: one optimizer step on this batch; the loss (computed before the step) and
        metrics of the batch, as a float, a list in `metrics_names` order, or a dict."""
        _check_class_weight(class_weight)
        xs = self._prepared_inputs(x)
        ys = self._targets(y)
        trainer = self._get_trainer(ys)
        with self._run(trainer):
            logs = trainer.train_on_batch(xs, ys, sample_weight=sample_weight, class_weight=class_weight)
        return self._results(logs, return_dict)

    def test_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None, return_dict: bool = False) -> Any:
        """Keras's test_on_batch: loss and metrics of this batch, in train_on_batch's forms."""
        xs = self._prepared_inputs(x)
        ys = self._targets(y)
        trainer = self._get_trainer(ys)
        with self._run(trainer):
            logs = trainer.test_on_batch(xs, ys, sample_weight=sample_weight)
        return self._results(logs, return_dict)

    def predict(self, x: Any, batch_size: int | None = None, verbose: Any = "auto", steps: int | None = None,
                callbacks: Any = None) -> Any:
        """Outputs for `x`, computed in batches (an array, or a list for several outputs); `steps` batches at
        most; a progress bar at verbose=1 ("auto"); callbacks get on_predict_* calls."""
        batch_size = _batch_size(batch_size)
        level = _verbosity(verbose)
        xs = self._prepared_inputs(x)
        checks.check_non_empty(len(xs[0]), "x")
        cbs = self._callbacks_for(callbacks, {"verbose": verbose, "epochs": 1, "steps": steps})
        engine = self._engine()
        with runtime(self.run_eagerly):
            if not cbs and steps is None and level == 0 and len(xs[0]) <= min(batch_size, SMALL_BATCH):
                outs = self._predict_small(engine, xs)  # no bar or hooks to serve: one pass, no batching
            else:
                from ..train.fit import Trainer

                outs = Trainer.predict_with(engine, xs, batch_size, steps=steps, callbacks=cbs, verbose=level)
        return self._structure(outs)

    def _predict_small(self, engine: Any, xs: list[np.ndarray]) -> list[np.ndarray]:
        """One small batch: an MLP's one fused call (its DenseChain kept with the engine it belongs to), else
        one forward pass in the engine's workspace; the outputs copied out of the buffers they are made in."""
        if len(xs) > 1:
            checks.check_cardinality({f"x['{layer.name}']": a for layer, a in zip(self._input_layers(), xs)})
        if self._fused_chain is None or self._fused_chain[0] is not engine:
            from ..train.fused import DenseChain

            self._fused_chain = (engine, DenseChain.of(engine))
        chain = self._fused_chain[1]
        if chain is not None:
            return [chain.predict(xs[0]).copy()]
        return [o.copy() for o in engine.forward(xs, training=False, reuse=True)]

    def predict_on_batch(self, x: Any) -> Any:
        return self(x)

    # --- specs, configs and saving (specc.api.config builds the data, specc.api.io and saving the models) --

    @property
    def seed(self) -> int | None:
        """The seed a spec gave this model (specc.load): its training loop's shuffling and dropout follow it,
        and to_yaml() writes it. None for a model built in Python (the session's generator seeds fit())."""
        return self._seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        self._seed = None if value is None else checks.check_non_negative_int("seed", value)

    @property
    def source_spec(self) -> Any:
        """The validated Spec this model was loaded from (specc.load), or None; to_yaml() keeps its data and
        fit sections."""
        return self._source

    @source_spec.setter
    def source_spec(self, spec: Any) -> None:
        self._source = spec

    @property
    def compile_settings(self) -> Any:
        """What compile() was last given (specc.api.training.CompileConfig), or None before compile()."""
        return self._compiled

    def to_yaml(self) -> str:
        """A spec (format v1) for this model: it validates, and specc.load() gives back the same model."""
        from .config import has_graph_blocks, model_yaml

        self._require_built("to_yaml")
        if has_graph_blocks(self):
            raise NotImplementedError(f"model '{self.name}' holds a nested Functional model, which spec format "
                                      f"v1 cannot say yet (a nested block there is a chain of layers). Save the "
                                      f"whole model with model.save('{self.name}.specc'), or get_config() for its "
                                      f"structure as data.")
        return model_yaml(self)

    def export(self, filepath: str | os.PathLike, format: str = "onnx", verbose: Any = None,
               input_signature: Any = None, **kwargs: Any) -> None:
        """Keras 3's export, for format="onnx" (the one format specc writes): the model with its current
        weights as an ONNX file with a dynamic batch axis (see specc/export). An existing file is never
        replaced (FileExistsError); a layer that cannot be exported is a ValueError naming it, before any
        file is written."""
        from ..export import ExportError
        from ..export.to_onnx import OPSET

        if format != "onnx":
            raise ValueError(f"Unrecognized format={format!r}: specc exports only format='onnx'")
        if input_signature is not None:
            raise NotImplementedError("input_signature is not supported: specc exports the model's own input "
                                      "shapes with a dynamic batch axis")
        opset = kwargs.pop("opset_version", None)
        if kwargs:
            raise TypeError(f"export() got unexpected argument(s) {', '.join(sorted(kwargs))}")
        if opset not in (None, OPSET):
            raise ValueError(f"opset_version={opset!r}: specc exports ONNX opset {OPSET}")
        path = os.fspath(filepath)
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists; specc's export never overwrites a file: remove it or choose "
                                  f"another path")
        self._require_built("export")
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise ImportError("model.export(format='onnx') needs the onnx package: pip install 'specc[onnx]'") \
                from None
        from ..export.to_onnx import build_model, write_new

        try:
            model = build_model(self._engine(), self.name)
        except ExportError as exc:
            raise ValueError(f"cannot export model '{self.name}': {exc}") from None
        write_new(path, model)
        if verbose:
            print(f"Saved artifact at '{path}'.")

    def get_config(self) -> dict:
        """Keras's get_config: `name`, `trainable` and the spec's model section (`input`/`inputs`, `layers`,
        `outputs`); weights are not part of it. `from_config` builds the same model from it."""
        from .config import model_config

        return model_config(self)

    @classmethod
    def from_config(cls, config: dict, custom_objects: Any = None) -> Model:
        """A new model (fresh weights) with the layers, names and arguments of `config` (get_config())."""
        from .io import model_from_config  # io builds models, so it imports this module: import it late

        if custom_objects:
            raise NotImplementedError("custom_objects: specc has no custom layers; every layer comes from its "
                                      "registry")
        return model_from_config(config, cls)

    def get_compile_config(self) -> dict | None:
        """Keras 3's get_compile_config: compile()'s arguments as data (None before compile()). A ValueError
        names an argument that has no data form (a custom function)."""
        from .config import compile_config

        return compile_config(self._compiled, self.run_eagerly)

    def compile_from_config(self, config: dict) -> None:
        """Keras 3's compile_from_config: compile() with what get_compile_config() returned."""
        from .config import compile_arguments

        self.compile(**compile_arguments(config))

    def get_training_state(self) -> dict | None:
        """What training needs to continue exactly where it stopped, beyond the weights: the optimizer's
        arrays (moments, iteration counter, a constant learning rate) and the training loop's random
        generators (shuffling, dropout), as copies; None before the first fit()/evaluate() built them."""
        trainer = self._trainer
        if trainer is None:
            return None
        return {"optimizer": {k: np.array(v) for k, v in trainer.optimizer.state_arrays().items()},
                "rng": trainer.rng.bit_generator.state, "dropout_rng": trainer.dropout_rng.bit_generator.state}

    def set_training_state(self, state: dict) -> None:
        """Restore get_training_state() into this compiled model (its training loop is built for it). Every
        array is checked against the optimizer's before any is written (a ValueError says which differs)."""
        trainer = self._get_trainer()
        trainer.optimizer.load_state_arrays(state["optimizer"])
        for name in ("rng", "dropout_rng"):
            generator = getattr(trainer, name)
            try:
                generator.bit_generator.state = state[name]
            except (TypeError, ValueError, KeyError) as exc:
                raise ValueError(f"the training loop's {name} state does not fit: {exc}") from None

    def initialize_weights(self, seed: int | None) -> None:
        """Draw every weight from Keras's initializers with a generator seeded `seed`, in layer order: the
        same draws `specc train` makes for a spec with this seed."""
        self._engine().initialize(seed)

    def save(self, filepath: str | os.PathLike, overwrite: bool = True, zipped: Any = None, **kwargs: Any) -> None:
        """The whole model in one `.specc` file (specc.api.saving): its config, weights, compile settings and
        optimizer and training-loop state, so that specc.models.load_model(filepath) predicts the same and
        continues training exactly. overwrite=False refuses an existing file (FileExistsError)."""
        from .saving import save_model

        if kwargs:
            raise TypeError(f"save() got unexpected argument(s) {', '.join(sorted(kwargs))}")
        if zipped is False:
            raise NotImplementedError("zipped=False: a .specc model is always one zip file")
        save_model(self, filepath, overwrite=overwrite)

def _mentions_crossentropy(compiled: Any) -> bool:
    """Whether compile() named Keras's "crossentropy"/"ce" (whose meaning depends on the targets)."""
    from .training import CROSSENTROPY

    def walk(v: Any) -> bool:
        if isinstance(v, str):
            return v in CROSSENTROPY
        if isinstance(v, dict):
            return any(map(walk, v.values()))
        if isinstance(v, (list, tuple)):
            return any(map(walk, v))
        return False

    return walk([compiled.loss, compiled.metrics, compiled.weighted_metrics])


def _keras_h5():
    """specc.interop.keras_h5 (Keras 3's `.weights.h5` layout), imported when a path asks for it."""
    try:
        from ..interop import keras_h5
    except ImportError as exc:
        if exc.name is not None and exc.name.startswith("specc.interop"):
            raise NotImplementedError("Keras '.weights.h5' files need specc.interop.keras_h5, which this specc "
                                      "does not have; use an '.npz' path (model.save_weights('model.weights.npz'))"
                                      ) from None
        raise ImportError(f"Keras '.weights.h5' files need h5py: pip install 'specc[h5]' ({exc})") from None
    return keras_h5


# Calls and predictions on at most this many samples run forward in the engine's workspace (reuse=True): the
# arrays of a call are kept per batch size and reused by the next call of that size instead of allocated
# (64-byte aligned) again, which was most of a single sample's time. Larger batches allocate as before, so
# inference at many batch sizes keeps no large arrays.
SMALL_BATCH = 64


def _batch_size(value: Any) -> int:
    """Keras's default (the spec's `fit.batch_size` default) for None, else a positive integer."""
    from ..spec.schema import FitDef

    return FitDef.model_fields["batch_size"].default if value is None else checks.check_positive_int("batch_size", value)


def _verbosity(verbose: Any) -> int:
    """Keras's verbose for evaluate/predict: "auto" and True are 1 (the bar), else 0, 1 or 2."""
    if verbose == "auto" or verbose is True:
        return 1
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1, 2 or \"auto\", got {verbose!r}")
    return int(verbose)


def _callback_list(callbacks: Any) -> list:
    """Keras 3 takes one callback or a list of them (it flattens what it is given)."""
    from ..train.callbacks import Callback

    if callbacks is None:
        return []
    items = [callbacks] if isinstance(callbacks, Callback) else callbacks
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"callbacks must be a specc.callbacks object or a list of them, got "
                        f"{type(callbacks).__name__}")
    for cb in items:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be specc.callbacks objects (or subclasses of "
                            f"specc.callbacks.Callback), got {type(cb).__name__}")
    return list(items)


def _unpack_validation_data(data: Any) -> tuple[Any, Any, Any]:
    """(x_val, y_val, val_sample_weight) from Keras's `validation_data` forms: (x, y) or (x, y, sample_weight)."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        got = f"a {type(data).__name__} of {len(data)} item{'' if len(data) == 1 else 's'}" if isinstance(data, (tuple, list)) else \
            f"a {type(data).__name__}"
        raise ValueError(f"validation_data must be a tuple (x_val, y_val) or (x_val, y_val, val_sample_weight); got "
                         f"{got}")
    return data[0], data[1], (data[2] if len(data) == 3 else None)


def _check_class_weight(class_weight: Any) -> None:
    if class_weight is None:
        return
    if not isinstance(class_weight, dict):
        raise ValueError(f"class_weight must be a dict mapping class indices to weights, got "
                         f"{type(class_weight).__name__}")
    for k, v in class_weight.items():
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or \
                isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"class_weight must map integer class indices to numbers, got {k!r}: {v!r}")
