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

    def _chain(self) -> list[Layer]:
        """The layers as one chain, for nesting this model inside another as a block."""
        nodes = self._graph_nodes
        chain_ok = len(self._inputs) == 1 and len(self._outputs) == 1 and nodes and \
            nodes[-1].outputs[0] is self._outputs[0] and len({id(n.layer) for n in nodes}) == len(nodes)
        prev = self._inputs[0] if self._inputs else None
        for node in nodes if chain_ok else []:
            if len(node.inputs) != 1 or node.inputs[0] is not prev:
                chain_ok = False
                break
            prev = node.outputs[0]
        if not chain_ok:
            raise NotImplementedError(f"model '{self.name}' is a Functional graph with branches or several "
                                      f"inputs/outputs; specc nests only chains of layers inside another model. "
                                      f"Call its layers on your tensors directly instead.")
        return [n.layer for n in nodes]

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
        """Keras 3's summary table (specc.summary.summary_text on this model's graph), printed."""
        from ..summary import summary_text

        self._require_built("summary")
        text = summary_text(self._make_plan().graph, expand_nested=expand_nested, show_trainable=show_trainable)
        (print_fn or print)(text.rstrip("\n"))

    # --- weights ------------------------------------------------------------------------------------

    def save_weights(self, filepath: str | os.PathLike, overwrite: bool = True) -> None:
        """Every weight, in an .npz keyed `layer/weight` (the format `specc train` writes)."""
        from ..train.run import save_weights

        path = os.fspath(filepath)
        if not path.endswith(".npz"):
            raise ValueError(f"save_weights writes .npz files (the format of `specc train` runs); got {path!r}. "
                             f"Use a path ending in .npz, e.g. 'model.weights.npz'")
        if not overwrite and os.path.exists(path):
            raise FileExistsError(f"{path} exists and overwrite=False")
        self._require_built("save_weights")
        save_weights(path, self._engine())

    def load_weights(self, filepath: str | os.PathLike) -> None:
        """Load an .npz written by save_weights (or a `specc train` run's weights.*.npz).

        Arrays are matched by their `layer/weight` keys when the names agree, else by position, as Keras 3
        matches a weights file to the model's structure (so a model rebuilt in the same session, whose
        auto-names moved on to dense_4, still loads). Nothing is written unless every array fits.
        """
        from ..train.run import weight_keys

        path = os.fspath(filepath)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no weights file at {path}")
        self._require_built("load_weights")
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
                run_eagerly: bool = False, steps_per_execution: int = 1, jit_compile: Any = "auto",
                **kwargs: Any) -> None:
        """Keras's compile: names, objects, lists (one per output) or dicts (by output name)."""
        from . import optimizers
        from .training import CompileConfig, resolve

        if kwargs:
            raise TypeError(f"compile() got argument(s) specc does not support: {', '.join(sorted(kwargs))}")
        if steps_per_execution != 1:
            raise NotImplementedError("steps_per_execution must be 1 in specc")
        config = CompileConfig(optimizers.get(optimizer), loss, metrics, loss_weights)
        if loss is not None and self.built:
            resolve(config, self._output_names())  # report bad names now rather than at fit()
        self._compiled = config
        self.run_eagerly = bool(run_eagerly)
        self._compile_flags = {id(layer): layer.trainable for layer in self._all_layers()}
        self._warned = False
        self._trainer = self._trainer_key = self._resolved = None
        backend.compiled_models.add(self)

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

    def _get_trainer(self):
        from .training import make_trainer, resolve

        if self._compiled is None:
            raise RuntimeError("You must call `compile()` before using the model for training or evaluation: "
                               "model.compile(optimizer='adam', loss='mse')")
        self._require_built("fit")
        flags = self._compile_flags
        key = self._signature(flags)
        if self._trainer is None or self._trainer_key != key:
            outputs = self._output_names()
            self._resolved = resolve(self._compiled, outputs)
            plan, engine = self._plan_and_engine(flags)
            seed = self._seed if self._seed is not None else backend.draw_seed()
            self._trainer = make_trainer(engine, self._resolved, seed)
            self._trainer.api_plan = plan
            self._trainer_key = key
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

        from .functional import claim, pinned

        @contextlib.contextmanager
        def live():
            plan = trainer.api_plan
            claim(trainer.engine, plan)
            ids = {id(leaf) for leaf in plan.leaves.values()}
            added = ids - pinned
            pinned.update(added)
            try:
                with runtime(self.run_eagerly):
                    yield
            finally:
                pinned.difference_update(added)

        return live()

    def fit(self, x: Any = None, y: Any = None, batch_size: int | None = None, epochs: int = 1,
            verbose: Any = "auto", callbacks: Any = None, validation_split: float = 0.0,
            validation_data: Any = None, shuffle: bool = True, class_weight: dict | None = None,
            sample_weight: Any = None, initial_epoch: int = 0, steps_per_epoch: int | None = None,
            validation_steps: int | None = None, validation_batch_size: int | None = None,
            validation_freq: int = 1):
        """Keras's fit on NumPy arrays; returns a History (`history.history['loss']`, ...).

        Every array is checked before any work (shapes against the model, targets against the losses, the
        same number of samples everywhere, at least one), each error naming the array."""
        if sample_weight is not None:
            raise NotImplementedError("sample_weight is not supported by specc's fit(); use class_weight")
        if steps_per_epoch is not None or validation_steps is not None or validation_freq != 1:
            raise NotImplementedError("steps_per_epoch, validation_steps and validation_freq are not supported: "
                                      "specc trains on whole arrays, one pass per epoch")
        batch_size = _batch_size(batch_size)
        if validation_batch_size is not None:
            checks.check_positive_int("validation_batch_size", validation_batch_size)
        checks.check_non_negative_int("epochs", epochs)
        checks.check_non_negative_int("initial_epoch", initial_epoch)
        if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)) \
                or not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
        _check_class_weight(class_weight)
        cbs = _callback_list(callbacks)
        vx = vy = None
        if validation_data is not None:
            vx, vy = _unpack_validation_data(validation_data)
        xs = self._prepared_inputs(x)
        checks.check_non_empty(len(xs[0]), "x")
        trainer = self._get_trainer()
        ys = self._targets(y)
        val = None
        if validation_data is not None:
            val = (self._prepared_inputs(vx, "validation_data x"), self._targets(vy, "validation_data y"))
        for cb in cbs:
            cb.model = self
        if verbose is True:
            verbose = 1
        with self._run(trainer):
            history = trainer.fit(xs, ys, batch_size=batch_size, epochs=epochs,
                                  validation_split=validation_split, validation_data=val, shuffle=shuffle,
                                  class_weight=class_weight, callbacks=cbs, verbose=verbose,
                                  initial_epoch=initial_epoch, validation_batch_size=validation_batch_size)
        history.model = self
        n_train = len(xs[0]) if val is not None else int(len(xs[0]) * (1 - validation_split))
        history.params = {"verbose": verbose, "epochs": epochs, "steps": -(-n_train // batch_size)}
        return history

    def evaluate(self, x: Any = None, y: Any = None, batch_size: int | None = None, verbose: Any = "auto",
                 sample_weight: Any = None, steps: int | None = None, callbacks: Any = None,
                 return_dict: bool = False) -> Any:
        """Keras's evaluate: the loss (a float) if there is nothing else, else values in `metrics_names` order."""
        if sample_weight is not None or steps is not None:
            raise NotImplementedError("sample_weight and steps are not supported by specc's evaluate()")
        batch_size = _batch_size(batch_size)
        xs = self._prepared_inputs(x)
        checks.check_non_empty(len(xs[0]), "x")
        trainer = self._get_trainer()
        ys = self._targets(y)
        with self._run(trainer):
            logs = trainer.evaluate(xs, ys, batch_size=batch_size)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x: Any, batch_size: int | None = None, verbose: Any = "auto", steps: int | None = None,
                callbacks: Any = None) -> Any:
        """Outputs for `x`, computed in batches (an array, or a list for several outputs)."""
        if steps is not None:
            raise NotImplementedError("steps is not supported by specc's predict()")
        batch_size = _batch_size(batch_size)
        xs = self._prepared_inputs(x)
        checks.check_non_empty(len(xs[0]), "x")
        engine = self._engine()
        with runtime(self.run_eagerly):
            if len(xs[0]) <= min(batch_size, SMALL_BATCH):
                outs = self._predict_small(engine, xs)
            else:
                from ..train.fit import Trainer

                outs = Trainer.predict_with(engine, xs, batch_size)
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

    # --- specs --------------------------------------------------------------------------------------

    def to_yaml(self) -> str:
        """A spec (format v1) for this model: it validates, and specc.load() gives back the same model."""
        from .io import model_yaml

        self._require_built("to_yaml")
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
        from .io import model_dict

        return model_dict(self)["model"]


# Calls and predictions on at most this many samples run forward in the engine's workspace (reuse=True): the
# arrays of a call are kept per batch size and reused by the next call of that size instead of allocated
# (64-byte aligned) again, which was most of a single sample's time. Larger batches allocate as before, so
# inference at many batch sizes keeps no large arrays.
SMALL_BATCH = 64


def _batch_size(value: Any) -> int:
    """Keras's default (the spec's `fit.batch_size` default) for None, else a positive integer."""
    from ..spec.schema import FitDef

    return FitDef.model_fields["batch_size"].default if value is None else checks.check_positive_int("batch_size", value)


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


def _unpack_validation_data(data: Any) -> tuple[Any, Any]:
    """(x_val, y_val) from Keras's `validation_data` forms: (x, y) or (x, y, sample_weight=None)."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        got = f"a {type(data).__name__} of {len(data)} item{'' if len(data) == 1 else 's'}" if isinstance(data, (tuple, list)) else \
            f"a {type(data).__name__}"
        raise ValueError(f"validation_data must be a tuple (x_val, y_val) or (x_val, y_val, val_sample_weight); got "
                         f"{got}")
    if len(data) == 3 and data[2] is not None:
        raise NotImplementedError("validation sample weights are not supported")
    return data[0], data[1]


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
