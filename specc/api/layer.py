"""Layers of the Python API: thin objects around the pydantic LayerSpec of each registered type.

`specc.layers.Dense(3, activation="relu")` validates its arguments with the same LayerSpec class a YAML
spec uses (so the error messages are the same), owns its weights once it knows its input shape, and can
be called on a KerasTensor (recording a call in a graph) or on NumPy arrays (running it now, on the same
engine as everything else).

One class per registered type is generated here from `specc.layers.REGISTRY`; positional arguments follow
Keras's constructor signatures, taken from the POSITIONAL table (or, for a type missing from it, the
spec's required fields in declaration order).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..layers.base import REGISTRY, LayerSpec, ShapeError, snake_case
from . import backend
from .tensors import CallNode, KerasTensor, flatten, is_symbolic, shape_str

# Keras 3's constructor signatures, in order, up to the first argument specc does not implement (so a
# positional argument can never land on the wrong parameter).
POSITIONAL: dict[str, tuple[str, ...]] = {
    "Dense": ("units", "activation", "use_bias", "kernel_initializer", "bias_initializer"),
    "Embedding": ("input_dim", "output_dim", "embeddings_initializer"),
    "Dropout": ("rate", "noise_shape", "seed"),
    "Activation": ("activation",),
    "Conv1D": ("filters", "kernel_size", "strides", "padding"),
    "Conv2D": ("filters", "kernel_size", "strides", "padding"),
    "Conv2DTranspose": ("filters", "kernel_size", "strides", "padding", "output_padding"),
    "DepthwiseConv2D": ("kernel_size", "strides", "padding", "depth_multiplier"),
    "SeparableConv2D": ("filters", "kernel_size", "strides", "padding"),
    "MaxPooling1D": ("pool_size", "strides", "padding"),
    "MaxPooling2D": ("pool_size", "strides", "padding"),
    "AveragePooling1D": ("pool_size", "strides", "padding"),
    "AveragePooling2D": ("pool_size", "strides", "padding"),
    "GlobalMaxPooling1D": (),  # Keras: (data_format, keepdims)
    "GlobalMaxPooling2D": (),
    "GlobalAveragePooling1D": (),
    "GlobalAveragePooling2D": (),
    "BatchNormalization": ("axis", "momentum", "epsilon", "center", "scale", "beta_initializer",
                           "gamma_initializer", "moving_mean_initializer", "moving_variance_initializer"),
    "LayerNormalization": ("axis", "epsilon", "center", "scale"),  # Keras: then rms_scaling
    "SimpleRNN": ("units", "activation", "use_bias", "kernel_initializer", "recurrent_initializer",
                  "bias_initializer"),
    "LSTM": ("units", "activation", "recurrent_activation", "use_bias", "kernel_initializer",
             "recurrent_initializer", "bias_initializer", "unit_forget_bias"),
    "GRU": ("units", "activation", "recurrent_activation", "use_bias", "kernel_initializer",
            "recurrent_initializer", "bias_initializer"),
    "Flatten": (),  # Keras: (data_format,)
    "Reshape": ("target_shape",),
    "Permute": ("dims",),
    "RepeatVector": ("n",),
    "ZeroPadding1D": ("padding",),
    "ZeroPadding2D": ("padding",),
    "Cropping1D": ("cropping",),
    "Cropping2D": ("cropping",),
    "UpSampling1D": ("size",),
    "UpSampling2D": ("size",),  # Keras: then data_format, interpolation
    "Concatenate": ("axis",),
    "Add": (), "Subtract": (), "Multiply": (), "Average": (), "Maximum": (), "Minimum": (),
    "ReLU": ("max_value", "negative_slope", "threshold"),
    "LeakyReLU": ("negative_slope",),
    "PReLU": ("alpha_initializer",),  # Keras: then alpha_regularizer, alpha_constraint, shared_axes
    "ELU": ("alpha",),
    "Softmax": ("axis",),
    "Rescaling": ("scale", "offset"),
    "Normalization": ("axis", "mean", "variance", "invert"),
    "SpatialDropout1D": ("rate", "seed"),
    "SpatialDropout2D": ("rate",),  # Keras: then data_format, seed
    "GaussianNoise": ("stddev", "seed"),
    "MultiHeadAttention": ("num_heads", "key_dim", "value_dim", "dropout", "use_bias", "output_shape",
                           "attention_axes"),
    "Bidirectional": ("layer", "merge_mode"),  # Keras: then weights, backward_layer
    "TimeDistributed": ("layer",),
    "Conv3D": ("filters", "kernel_size", "strides", "padding"),
    "MaxPooling3D": ("pool_size", "strides", "padding"),
    "AveragePooling3D": ("pool_size", "strides", "padding"),
    "GlobalMaxPooling3D": (),  # Keras: (data_format, keepdims)
    "GlobalAveragePooling3D": (),
}

# Keras arguments specc does not implement; passing them at their Keras default changes nothing, so they
# are dropped, and a Keras call that spells out its defaults runs unchanged.
_DEFAULT_ONLY = {"data_format": "channels_last", "groups": 1, "dtype": "float32"}


class ArgumentError(ValueError, TypeError):
    """Bad layer/optimizer/loss arguments. A ValueError (Keras raises those for bad values) and a TypeError
    (Python raises those for missing arguments), so either `except` catches it."""


def positional_order(type_name: str) -> tuple[str, ...]:
    if type_name in POSITIONAL:
        return POSITIONAL[type_name]
    cls = REGISTRY[type_name]
    return tuple(k for k, f in cls.model_fields.items() if f.is_required() and k != "type")


def _as_yaml_value(value: Any) -> Any:
    """A Python argument as YAML would give it: tuples as lists, NumPy scalars as Python numbers."""
    if isinstance(value, (tuple, list)):
        return [_as_yaml_value(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(getattr(value, "_spec", None), LayerSpec):  # a layer given to a wrapper: its spec
        return value._spec.model_copy(update={"inputs": None})
    return value


def validate(model_cls: type, raw: dict, what: str) -> Any:
    """`model_cls.model_validate(raw)` with the spec's error messages (the same as in a YAML file)."""
    from ..spec.validate import UNSUPPORTED_KERAS_ARGS, Collector
    from ..spec.yamlpos import Positions

    raw = {k: _as_yaml_value(v) for k, v in raw.items()}
    for key in [k for k in raw if k in UNSUPPORTED_KERAS_ARGS or k in _DEFAULT_ONLY]:
        value = raw[key]
        if value is None or value is False or _DEFAULT_ONLY.get(key) == value or value in ("float32", np.float32):
            del raw[key]
    collector = Collector("<python>", Positions())
    result = collector.validate(model_cls, raw, (), what=what)
    if result is None:
        lines = [f"{e.path}: {e.message}" if e.path != "<root>" else e.message for e in collector.errors]
        raise ArgumentError(f"{what}: " + "; ".join(lines))
    return result


def check_name(name: Any, what: str = "name") -> str:
    from ..spec.types import _check_name

    try:
        return _check_name(name)
    except Exception as exc:  # PydanticCustomError: its str is the message
        raise ArgumentError(f"{what}: {exc}") from None


def as_shape(shape: Any, what: str = "shape") -> tuple:
    """A shape without the batch axis, as a spec's `input` takes it; an int n means (n,)."""
    from ..spec.types import shape_list

    try:
        return tuple(shape_list(list(shape) if isinstance(shape, tuple) else shape))
    except Exception as exc:
        raise ArgumentError(f"{what}: {exc}") from None


class Variable:
    """One weight of a layer, as Keras shows it: `path` 'dense/kernel', `shape`, `numpy()`, `assign()`.

    It reads the layer's current array each time, so it stays valid when the array moves between engines.
    """

    def __init__(self, layer: SpecLayer, index: int):
        self._layer, self._index = layer, index

    @property
    def _array(self) -> np.ndarray:
        return self._layer._weights[self._index]

    @property
    def name(self) -> str:
        return self._layer._wspecs[self._index].name

    @property
    def path(self) -> str:
        return f"{self._layer.name}/{self.name}"

    @property
    def shape(self) -> tuple:
        return tuple(self._array.shape)

    @property
    def dtype(self) -> str:
        return "float32"

    @property
    def trainable(self) -> bool:
        return self._layer.trainable and self._layer._wspecs[self._index].trainable

    @property
    def value(self) -> np.ndarray:
        return self.numpy()

    def numpy(self) -> np.ndarray:
        return self._array.copy()

    def assign(self, value: Any) -> None:
        from ..train.checks import numeric_array

        a = numeric_array(f"the value assigned to {self.path}", value)
        if a.shape != self.shape:
            raise ValueError(f"cannot assign a value of shape {a.shape} to variable {self.path} of shape {self.shape}")
        self._array[...] = a

    def __array__(self, dtype=None, copy=None):
        return np.array(self._array, dtype=dtype)

    def __repr__(self) -> str:
        return f"<Variable path={self.path}, shape={self.shape}, dtype=float32, value={self._array!r}>"


class Layer:
    """What every layer and model has: a name, `trainable`, weights, calls on tensors or arrays."""

    _is_model = False
    _held = 0  # fit()s running on an engine that holds this layer's weights (functional.hold)

    def _init_layer(self) -> None:
        self._nodes: list[CallNode] = []  # calls of this layer on KerasTensors
        self._input_shape_arg: tuple | None = None  # `input_shape=` (no batch axis), for a Sequential's first layer
        self._batch_size_arg: int | None = None
        self._eager: dict = {}  # input shapes -> (plan, engine) for calls on arrays

    # --- identity ----------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def trainable(self) -> bool:
        raise NotImplementedError

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._set_trainable(bool(value))
        for model in list(backend.compiled_models):
            model._warn_if_trainable_changed(self)

    def _set_trainable(self, value: bool) -> None:
        raise NotImplementedError

    def _all_layers(self) -> list[Layer]:
        """This layer and, for a model, every layer inside it (recursively)."""
        return [self]

    def _leaves(self) -> list[SpecLayer]:
        """The layers that own weights, in Keras's weight order."""
        return []

    def _structure_key(self) -> Any:
        return id(self)

    # --- weights ------------------------------------------------------------------------------------

    def _require_built(self, what: str) -> None:
        pass

    @property
    def weights(self) -> list[Variable]:
        self._require_built("weights")
        return [Variable(leaf, i) for leaf in self._leaves() if leaf._weights is not None
                for i in range(len(leaf._weights))]

    @property
    def trainable_weights(self) -> list[Variable]:
        return [v for v in self.weights if v.trainable] if self.trainable else []

    @property
    def non_trainable_weights(self) -> list[Variable]:
        if not self.trainable:
            return self.weights
        return [v for v in self.weights if not v.trainable]

    @property
    def variables(self) -> list[Variable]:
        return self.weights

    def get_weights(self) -> list[np.ndarray]:
        """Copies of every weight, in Keras's order (layer by layer, each layer's `weights` order)."""
        return [v.numpy() for v in self.weights]

    def set_weights(self, weights: list) -> None:
        """Every weight from a list of arrays in get_weights() order; all are checked before any is written."""
        from ..train.checks import numeric_array

        variables = self.weights
        if not isinstance(weights, (list, tuple)):
            raise ArgumentError(f"set_weights() on layer '{self.name}' takes a list of NumPy arrays, as get_weights() "
                                f"returns; got {type(weights).__name__}")
        if len(weights) != len(variables):
            raise ValueError(f"You called `set_weights(weights)` on layer '{self.name}' with a weight list of length "
                             f"{len(weights)}, but the layer was expecting {len(variables)} weights "
                             f"({', '.join(v.path for v in variables) or 'none'}).")
        arrays = [numeric_array(f"weights[{k}] ({v.path})", w) for k, (v, w) in enumerate(zip(variables, weights))]
        for v, a in zip(variables, arrays):  # check everything before writing anything
            if a.shape != v.shape:
                raise ValueError(f"Layer '{self.name}' weight shape {v.shape} ({v.path}) is not compatible with "
                                 f"provided weight shape {a.shape}.")
        for v, a in zip(variables, arrays):
            v.assign(a)

    def count_params(self) -> int:
        self._require_built("count_params")
        return int(sum(int(np.prod(v.shape)) for v in self.weights))

    # --- connections --------------------------------------------------------------------------------

    def _single_node(self, what: str) -> CallNode:
        if not self._nodes:
            raise ValueError(f"Layer '{self.name}' has never been called and thus has no defined {what}. Call it on "
                             f"a tensor (e.g. layer(specc.Input(shape=...))) or add it to a model that knows its "
                             f"input shape.")
        if len(self._nodes) > 1:
            raise ValueError(f"Layer '{self.name}' has been called {len(self._nodes)} times, so its {what} is "
                             f"ill-defined; use the tensor each call returned instead.")
        return self._nodes[0]

    @property
    def input(self) -> Any:
        node = self._single_node("input")
        return node.inputs if node.merge else node.inputs[0]

    @property
    def output(self) -> Any:
        node = self._single_node("output")
        return node.outputs[0] if len(node.outputs) == 1 else list(node.outputs)

    def __call__(self, inputs: Any = None, training: bool | None = None, mask: Any = None, **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError(f"{type(self).__name__}.__call__() got unexpected argument(s) {', '.join(kwargs)}")
        if mask is not None:
            raise NotImplementedError("masks are not supported by specc")
        if is_symbolic(inputs):
            return self._call_symbolic(inputs)
        if any(isinstance(t, KerasTensor) for t in flatten(inputs)):
            raise TypeError(f"Layer '{self.name}' was called on a mix of symbolic tensors and arrays; pass either "
                            f"KerasTensors (to build a model) or NumPy arrays (to compute values)")
        return self._call_eager(inputs, bool(training))

    def _call_symbolic(self, inputs: Any, owner: Any = None) -> Any:
        raise NotImplementedError

    def _call_eager(self, inputs: Any, training: bool) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"


class SpecLayer(Layer):
    """A registered layer type: hyperparameters in `self._spec` (the type's LayerSpec), weights once built."""

    _spec_cls: ClassVar[type[LayerSpec]]

    def __init__(self, *args: Any, **kwargs: Any):
        type_name = self._spec_cls.model_fields["type"].default
        order = positional_order(type_name)
        if len(args) > len(order):
            raise ArgumentError(f"{type_name}() takes at most {len(order)} positional argument(s) "
                                f"({', '.join(order) or 'none'}), got {len(args)}")
        raw = dict(zip(order, args))
        for key in raw:
            if key in kwargs:
                raise ArgumentError(f"{type_name}() got multiple values for argument '{key}'")
        raw.update(kwargs)
        if "inputs" in raw:
            raise ArgumentError(f"{type_name}() has no argument 'inputs' (that key is for Functional YAML specs); in "
                                f"Python, call the layer on its input: {type_name}(...)(x)")
        input_shape = raw.pop("input_shape", None)
        # tf.keras 2: Dense(32, input_dim=784) means input_shape=(784,) (Embedding's input_dim is its own)
        input_dim = None if "input_dim" in self._spec_cls.model_fields else raw.pop("input_dim", None)
        batch_input_shape = raw.pop("batch_input_shape", None)
        batch_size = raw.pop("batch_size", None)
        if input_dim is not None and input_shape is None:
            input_shape = (input_dim,)
        if batch_input_shape is not None:
            batch_size, input_shape = batch_input_shape[0], tuple(batch_input_shape[1:])
        spec = validate(self._spec_cls, {"type": type_name, **raw}, type_name)
        if spec.name is None:
            spec.name = backend.auto_name(snake_case(type_name))
        self._setup(spec)
        if input_shape is not None:
            self._input_shape_arg = as_shape(input_shape, "input_shape")
            self._batch_size_arg = batch_size

    @classmethod
    def _from_spec(cls, spec: LayerSpec) -> SpecLayer:
        """A layer around an already validated spec (from a YAML file)."""
        layer = cls.__new__(cls)
        layer._setup(spec.model_copy(update={"inputs": None}))
        return layer

    def _setup(self, spec: LayerSpec) -> None:
        self._init_layer()
        self._spec = spec
        self._weights: list[np.ndarray] | None = None  # float32 arrays in weight_specs order
        self._wspecs: list | None = None
        self._built_shape: Any = None  # the input shape (no batch axis) the weights were made for

    # Hyperparameters read like Keras attributes: layer.units, layer.activation, ...
    def __getattr__(self, key: str) -> Any:
        spec = self.__dict__.get("_spec")
        if spec is not None and key in type(spec).model_fields and key not in ("inputs", "type"):
            return getattr(spec, key)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'")

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def trainable(self) -> bool:
        return self._spec.trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        Layer.trainable.fset(self, value)

    def _set_trainable(self, value: bool) -> None:
        self._spec.trainable = value
        backend.structure_changed()

    @property
    def built(self) -> bool:
        return self._weights is not None

    def _leaves(self) -> list[SpecLayer]:
        return [self]

    def get_config(self) -> dict:
        return self._spec.model_dump(exclude={"type", "inputs"})

    @classmethod
    def from_config(cls, config: dict) -> SpecLayer:
        return cls(**config)

    # --- shapes and weights -------------------------------------------------------------------------

    def _shown(self, shape: Any) -> str:
        """An input shape (no batch axis; a list for merge layers) as the summary shows it."""
        if self._spec.is_merge:
            return " and ".join(shape_str((None, *s)) for s in shape)
        return shape_str((None, *shape))

    def _output_shape(self, shape: Any) -> tuple:
        """Output shape (no batch axis) for `shape` (a list of shapes for merge layers), or ValueError."""
        try:
            return tuple(self._spec.compute_output_shape(shape))
        except ShapeError as exc:
            raise ValueError(f"{self._spec.type} '{self.name}' cannot take input {self._shown(shape)}: {exc}") from None

    def _build(self, shape: Any) -> None:
        """Create the weights for input `shape` (no batch axis), or check that existing weights fit it."""
        wspecs = self._spec.weight_specs(shape)
        if self._weights is None:
            rng = backend.rng()
            self._wspecs = wspecs
            self._weights = [np.ascontiguousarray(np.asarray(self._spec.initial_value(w, rng), np.float32)
                                                  .reshape(w.shape)) for w in wspecs]
            self._built_shape = shape
        elif [w.shape for w in wspecs] != [w.shape for w in self._wspecs]:
            raise ValueError(f"{self._spec.type} '{self.name}' was built for input {self._shown(self._built_shape)} "
                             f"(weights {', '.join(str(w.shape) for w in self._wspecs)}) and cannot take input "
                             f"{self._shown(shape)}; use a new layer for this input")

    def build(self, input_shape: Any) -> None:
        """Keras's build: `input_shape` has the batch axis, e.g. (None, 4)."""
        shapes = input_shape if self._spec.is_merge and isinstance(input_shape, (list, tuple)) else [input_shape]
        if not all(isinstance(s, (list, tuple)) for s in shapes):
            raise ValueError(f"build() of {self._spec.type} '{self.name}' takes the input shape as a tuple with the "
                             f"batch axis first, e.g. build((None, 16)){' (one per input)' if self._spec.is_merge else ''}"
                             f"; got {input_shape!r}")
        shape = [tuple(s)[1:] for s in input_shape] if self._spec.is_merge else tuple(input_shape)[1:]
        self._output_shape(shape)
        self._build(shape)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        if self._spec.is_merge:
            return (input_shape[0][0],) + self._output_shape([tuple(s)[1:] for s in input_shape])
        return (input_shape[0],) + self._output_shape(tuple(input_shape)[1:])

    def _arity(self, items: list, is_list: bool) -> None:
        spec = self._spec
        if spec.is_merge:
            if not is_list or len(items) < spec.min_inputs or (spec.max_inputs and len(items) > spec.max_inputs):
                want = f"exactly {spec.min_inputs}" if spec.min_inputs == spec.max_inputs else f"at least {spec.min_inputs}"
                raise ValueError(f"A merge layer ({spec.type} '{self.name}') should be called on a list of {want} "
                                 f"inputs, e.g. {spec.type}()([a, b]); got {len(items) if is_list else 'one tensor'}")
        elif len(items) != 1:
            raise ValueError(f"{spec.type} '{self.name}' takes one input, got {len(items)}; only merge layers "
                             f"(Add, Concatenate, ...) take several")

    # --- calls --------------------------------------------------------------------------------------

    def _call_symbolic(self, inputs: Any, owner: Any = None) -> KerasTensor:
        tensors = flatten(inputs)
        self._arity(tensors, isinstance(inputs, (list, tuple)))
        shapes = [t.shape[1:] for t in tensors]
        shape = shapes if self._spec.is_merge else shapes[0]
        out = self._output_shape(shape)
        self._build(shape)
        node = CallNode(self, tensors, [(tensors[0].shape[0],) + out], self._spec.is_merge, owner)
        self._nodes.append(node)
        return node.outputs[0]

    def _call_eager(self, inputs: Any, training: bool) -> np.ndarray:
        from ..train.checks import numeric_array
        from .functional import claim, layer_plan, make_engine

        items = flatten(inputs)
        arrays = [numeric_array("x" if len(items) == 1 else f"x[{k}]", a) for k, a in enumerate(items)]
        self._arity(arrays, isinstance(inputs, (list, tuple)))
        if any(a.ndim < 1 for a in arrays):
            raise ValueError(f"{self._spec.type} '{self.name}' needs inputs with a batch axis, got shape "
                             f"{arrays[0].shape}")
        shapes = [tuple(a.shape[1:]) for a in arrays]
        shape = shapes if self._spec.is_merge else shapes[0]
        self._output_shape(shape)
        self._build(shape)
        key = tuple(shapes)
        if key not in self._eager:
            plan = layer_plan(self, shapes)
            self._eager[key] = (plan, make_engine(plan))
        plan, engine = self._eager[key]
        claim(engine, plan)
        (y,) = engine.forward(arrays, training=training, rng=backend.rng())
        return y.copy()


def _layer_class(type_name: str) -> type[SpecLayer]:
    spec_cls = REGISTRY[type_name]
    order = positional_order(type_name)
    doc = (f"Keras's `{type_name}` layer on specc: {type_name}({', '.join(order + ('...',)) if order else '...'}). "
           f"Arguments and defaults: see `{type_name}` in the README's layer table.")
    return type(type_name, (SpecLayer,), {"_spec_cls": spec_cls, "__doc__": doc, "__module__": "specc.layers"})


# Every registered type except the nested-block container, whose Python counterpart is specc.Sequential.
LAYER_CLASSES: dict[str, type[SpecLayer]] = {t: _layer_class(t) for t in REGISTRY if t != "Sequential"}
# MultiHeadAttention takes Keras's call signature (query, value, key, attention_mask, use_causal_mask).
from .attention import MultiHeadAttention as _MultiHeadAttention  # noqa: E402 - it subclasses SpecLayer

LAYER_CLASSES["MultiHeadAttention"] = _MultiHeadAttention


class _Normalization(LAYER_CLASSES["Normalization"]):
    """Keras's Normalization, with `adapt(data)`: the mean and variance of `data` (samples, ...) over every
    axis but `axis`, before the layer is used (the layer is built for the data's sample shape)."""

    def adapt(self, data: Any, batch_size: Any = None, steps: Any = None) -> None:
        from ..train.checks import numeric_array

        if self._spec.mean is not None:
            raise ValueError(f"Normalization '{self.name}' was given `mean` and `variance`; adapt() computes them "
                             f"instead: create the layer without them")
        x = numeric_array("adapt() data", data)
        if x.ndim < 2 or len(x) == 0:
            raise ValueError(f"adapt() takes a batch of samples (samples, ...), got an array of shape {x.shape}")
        if steps is not None:
            x = x[: int(steps) * int(batch_size or 32)]
        self._output_shape(tuple(x.shape[1:]))
        self._build(tuple(x.shape[1:]))
        for w, value in zip(self._weights, self._spec.adapted(x)):
            w[...] = value


_Normalization.__name__ = _Normalization.__qualname__ = "Normalization"
LAYER_CLASSES["Normalization"] = _Normalization


class InputLayer(Layer):
    """The layer behind `specc.Input(shape=...)`: no weights, one output tensor."""

    def __init__(self, shape: Any = None, batch_size: int | None = None, dtype: Any = None, batch_shape: Any = None,
                 name: str | None = None, **kwargs: Any):
        if kwargs.get("sparse") or kwargs.get("ragged"):
            raise NotImplementedError("sparse and ragged inputs are not supported by specc")
        input_shape = kwargs.pop("input_shape", None)
        unknown = set(kwargs) - {"sparse", "ragged", "tensor", "optional"}
        if unknown:
            raise TypeError(f"Input() got unexpected argument(s) {', '.join(sorted(unknown))}")
        if batch_shape is not None:
            batch_size, shape = tuple(batch_shape)[0], tuple(batch_shape)[1:]
        shape = shape if shape is not None else input_shape
        if shape is None:
            raise ValueError("Input needs a shape without the batch axis, e.g. specc.Input(shape=(784,)); "
                             "use None for a size known only at run time")
        self._init_layer()
        self._shape = as_shape(shape, "Input shape")
        self._batch_size = batch_size
        self._dtype = dtype
        self._name = check_name(name, "Input name") if name is not None else backend.auto_name("input_layer")
        node = CallNode(self, [], [(batch_size,) + self._shape], False)
        self._nodes.append(node)
        self._tensor = node.outputs[0]

    @property
    def name(self) -> str:
        return self._name

    @property
    def trainable(self) -> bool:
        return True

    @trainable.setter
    def trainable(self, value: bool) -> None:
        pass  # no weights: nothing to freeze

    def _set_trainable(self, value: bool) -> None:
        pass

    @property
    def built(self) -> bool:
        return True

    @property
    def batch_shape(self) -> tuple:
        return (self._batch_size,) + self._shape

    @property
    def output(self) -> KerasTensor:
        return self._tensor

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"InputLayer '{self.name}' is not callable: it is where a model starts. Use its tensor: "
                        f"x = specc.Input(shape=...), then layer(x)")

    def get_config(self) -> dict:
        return {"batch_shape": self.batch_shape, "name": self.name}


def Input(shape: Any = None, batch_size: int | None = None, dtype: Any = None, batch_shape: Any = None,
          name: str | None = None, **kwargs: Any) -> KerasTensor:
    """A symbolic model input, as keras.Input: `shape` without the batch axis (an int n means (n,))."""
    return InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, batch_shape=batch_shape, name=name,
                      **kwargs).output
