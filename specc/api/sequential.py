"""`specc.Sequential`: a stack of layers, built as it grows when its input shape is known, or on first use.

As in Keras, `self._layers` may start with an InputLayer (from `specc.Input`, an `input_shape=` on the
first layer, a nested built model's input, or `build()` / the first call / the first fit); `layers` never
shows it. Once the input shape is known, every add()/pop() re-chains the layers on symbolic tensors, so
each layer has `.input`/`.output` and shape errors surface at add() time, and the graph for the summary
and the engine is specc.graph.build_sequential's, as for a YAML Sequential model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backend
from .layer import InputLayer, Layer, as_shape
from .model import Model
from .tensors import KerasTensor, shape_str


class Sequential(Model):
    """Keras's Sequential: `Sequential(layers=None, name=None)`, then add() / pop()."""

    _is_sequential = True

    def __init__(self, layers: list | None = None, name: str | None = None, trainable: bool = True, **kwargs: Any):
        if kwargs:
            raise TypeError(f"Sequential() got unexpected argument(s) {', '.join(sorted(kwargs))}")
        self._init_model(name, "sequential", trainable)
        self._layers: list[Layer] = []
        self._inputs: list[KerasTensor] = []
        self._outputs: list[KerasTensor] = []
        self._output_struct = None
        for layer in layers or []:
            self.add(layer, rebuild=False)
        self._maybe_rebuild()
        if not trainable:
            self._set_trainable(False)  # Keras: a frozen model freezes every layer inside it

    # --- add / pop ----------------------------------------------------------------------------------

    def add(self, layer: Any, rebuild: bool = True) -> None:
        """Add a layer on top of the stack (Keras's errors, each saying what to do)."""
        if isinstance(layer, KerasTensor):
            if not isinstance(layer.node.layer, InputLayer):
                raise TypeError(f"Only layers (and specc.Input tensors) can be added to a Sequential model; got "
                                f"the output tensor of layer '{layer.node.layer.name}'. Add the layer itself.")
            layer = layer.node.layer
        if not isinstance(layer, Layer):
            raise TypeError(f"The added layer must be an instance of class Layer. Received: layer={layer!r} of type "
                            f"{type(layer).__name__}. Add a layer such as specc.layers.Dense(8), a model, or "
                            f"specc.Input(shape=...).")
        if isinstance(layer, InputLayer):
            if self._layers:
                where = (f"already has the input shape {shape_str(self._layers[0].batch_shape)}"
                         if isinstance(self._layers[0], InputLayer) else "already has layers")
                raise ValueError(f"Sequential model '{self.name}' {where}, so it cannot take the Input "
                                 f"'{layer.name}' as its input shape. An Input must come first: "
                                 f"Sequential([specc.Input(shape=...), ...]), or give the first layer input_shape=.")
        else:
            if any(existing.name == layer.name for existing in self._layers):
                raise ValueError(f"All layers added to a Sequential model should have unique names. Name "
                                 f"'{layer.name}' is already the name of a layer in this model. Update the `name` "
                                 f"argument to pass a unique name.")
            if layer._is_model and len(layer._outputs if layer.built else []) > 1:
                raise ValueError(f"All layers in a Sequential model should have a single output tensor; model "
                                 f"'{layer.name}' has {len(layer._outputs)}. For multi-output layers, use the "
                                 f"Functional API (specc.Model(inputs, outputs)).")
            if getattr(layer, "_spec", None) is not None and layer._spec.is_merge:
                raise ValueError(f"{layer._spec.type} '{layer.name}' merges several inputs, and a Sequential model "
                                 f"passes one tensor from layer to layer. Use the Functional API: "
                                 f"{layer._spec.type}()([a, b]) with specc.Model(inputs, outputs).")
            foreign = [n for n in layer._nodes if n.owner is None]
            if foreign:
                raise ValueError(f"Layer '{layer.name}' is already connected somewhere else: it was called on "
                                 f"symbolic tensors (a Functional graph), which a Sequential model forbids. Use a new "
                                 f"layer instance here, or build the model with the Functional API to share it.")
        before = list(self._layers)
        self._layers.append(layer)
        if rebuild:
            try:
                self._maybe_rebuild()
            except Exception:
                self._layers = before  # keep the model as it was before this add()
                self._maybe_rebuild()
                raise
        else:
            self._drop_graph()

    def pop(self, rebuild: bool = True) -> Layer:
        """Remove and return the top layer."""
        if not self.layers:
            raise TypeError(f"There are no layers in the model '{self.name}' to pop; add() a layer first.")
        layer = self._layers.pop()
        self._drop_graph()
        if rebuild:
            self._maybe_rebuild()
        return layer

    @property
    def layers(self) -> list[Layer]:
        """The layers, without the InputLayer (Keras: an Input is not a layer of the model)."""
        return [layer for layer in self._layers if not isinstance(layer, InputLayer)]

    def _sublayers(self) -> list[Layer]:
        return self.layers

    # --- building -----------------------------------------------------------------------------------

    def _input_layer(self) -> InputLayer:
        return self._layers[0]

    def _input_layers(self) -> list[InputLayer]:
        return [self._layers[0]] if self.built else []

    @property
    def built(self) -> bool:
        return bool(self._layers) and isinstance(self._layers[0], InputLayer)

    def _require_built(self, what: str) -> None:
        if self.built:
            return
        if what == "weights":
            raise ValueError(f"Weights for model '{self.name}' have not yet been created. Weights are created when "
                             f"the model is first called on inputs or `build()` is called with an `input_shape`, "
                             f"e.g. model.build((None, 16)); or start the model with specc.Input(shape=...).")
        raise ValueError(f"This model ('{self.name}') has not yet been built, so `{what}` is not available. Build "
                         f"the model first by calling `build()` (e.g. model.build((None, 16))) or by calling the "
                         f"model on a batch of data; or start it with specc.Input(shape=...).")

    def _drop_graph(self) -> None:
        """Forget this model's symbolic calls (its layers' .input/.output) before re-chaining them."""
        backend.structure_changed()
        for layer in self._layers:
            layer._nodes = [n for n in layer._nodes if n.owner is not self]
        self._inputs, self._outputs, self._output_struct = [], [], None

    def _maybe_rebuild(self) -> None:
        """Chain the layers on symbolic tensors if the input shape is known (else stay deferred)."""
        self._drop_graph()
        if self._layers and not isinstance(self._layers[0], InputLayer):
            first = self._layers[0]
            if first._input_shape_arg is not None:
                self._layers.insert(0, InputLayer(shape=first._input_shape_arg, batch_size=first._batch_size_arg))
            elif first._is_model and first.built and len(first._inputs) == 1:
                self._layers.insert(0, InputLayer(batch_shape=first._inputs[0].shape))
        if not self.built:
            return
        inp = self._layers[0]
        x = inp.output
        for layer in self.layers:
            x = layer._call_symbolic(x, owner=self)
            if isinstance(x, list):
                raise ValueError(f"All layers in a Sequential model should have a single output tensor; "
                                 f"'{layer.name}' has {len(x)}. For multi-output layers, use the Functional API.")
        self._inputs, self._outputs, self._output_struct = [inp.output], [x], x
        self._input_struct = inp.output

    def build(self, input_shape: Any = None) -> None:
        """Build for `input_shape`, which includes the batch axis: model.build((None, 16))."""
        if not self.layers:
            raise ValueError(f"Sequential model '{self.name}' cannot be built because it has no layers. Call "
                             f"`model.add(layer)`.")
        if self.built:
            if isinstance(input_shape, (tuple, list)) and tuple(input_shape)[1:] != self._layers[0]._shape:
                raise ValueError(f"Sequential model '{self.name}' has already been configured to use input shape "
                                 f"{shape_str(self._layers[0].batch_shape)}; cannot build it for "
                                 f"{shape_str(tuple(input_shape))}.")
            return
        if input_shape is None:
            raise ValueError(f"Sequential model '{self.name}' needs an input shape to build: "
                             f"model.build((None, 16)) (the batch axis first)")
        if not isinstance(input_shape, (tuple, list)):
            # Keras 3 silently skips building here; an int is ambiguous (batch size or features?), so say so.
            example = f"(None, {input_shape})" if isinstance(input_shape, int) else "(None, 16)"
            raise ValueError(f"build() takes the input shape as a tuple with the batch axis first, e.g. "
                             f"model.build({example}); got {input_shape!r} of type {type(input_shape).__name__}")
        shape = tuple(input_shape)
        if len(shape) < 2:
            raise ValueError(f"build() takes the input shape with the batch axis first, e.g. (None, {shape[0] if shape else 16}); "
                             f"got {shape}")
        as_shape(shape[1:], "input_shape")
        self._layers.insert(0, InputLayer(batch_shape=shape))
        try:
            self._maybe_rebuild()
        except Exception:
            self._layers.pop(0)
            self._drop_graph()
            raise

    def _ensure_built(self, arrays: list[np.ndarray], call: bool = False) -> None:
        if not self.built:
            if len(arrays) != 1:
                raise ValueError(f"a Sequential model takes one input, got {len(arrays)}")
            if arrays[0].ndim < 2:
                raise ValueError(f"Sequential model '{self.name}' has no input shape yet and builds from its first "
                                 f"data, which needs a batch axis and at least one more, e.g. (samples, features); "
                                 f"got an array of shape {arrays[0].shape}. Reshape it (x.reshape(-1, 1) for one "
                                 f"feature per sample) or start the model with specc.Input(shape=...).")
            # Keras: a call builds for that batch's exact shape; fit/evaluate/predict for (None, ...).
            self.build(arrays[0].shape if call else (None, *arrays[0].shape[1:]))

    def _ensure_built_symbolic(self, tensors: list[KerasTensor]) -> None:
        if not self.built and len(tensors) == 1:
            self.build(tensors[0].shape)

    def _n_inputs(self) -> int:
        return 1

    def _make_plan(self, flags: dict | None = None):
        from .functional import sequential_plan

        self._require_built("graph")
        return sequential_plan(self, flags)

    def _structure_key(self) -> Any:
        shape = self._layers[0]._shape if self.built else None
        return (id(self), shape, tuple(layer._structure_key() for layer in self.layers))

    def _structure(self, outs: list) -> Any:
        return outs[0]

    # Everything else (summary, weights, compile/fit/evaluate/predict, save/load, to_yaml) is Model's.

    def __repr__(self) -> str:
        return f"<Sequential name={self.name}, built={self.built}>"
