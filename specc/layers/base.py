"""The layer contract and the registry keyed by the YAML `type`.

A layer class is a pydantic model of its hyperparameters (the Keras constructor arguments, with Keras's
defaults) plus the rules that depend only on shapes: `compute_output_shape` (the single shape rule),
`weight_specs` (names, shapes, initializers and trainability in Keras's order) and `macs` (multiply-adds
per sample, for the summary). The runtime adds forward/backward next to these in the same class; nothing
here imports Numba, so validation and summaries stay light.

Shapes never include the batch axis; `None` marks a size known only at run time.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, field_validator

from ..spec.types import Bool, Name

Shape = tuple  # tuple[int | None, ...]


class ShapeError(ValueError):
    """A layer cannot accept its input shape; the message says why in the user's terms."""


@dataclass(frozen=True)
class WeightSpec:
    name: str  # Keras's variable name: kernel, bias, gamma, moving_mean, ...
    shape: tuple[int, ...]
    initializer: str
    trainable: bool = True  # False for statistics such as moving_mean, whatever the layer's flag

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class LayerSpec(BaseModel):
    """Base of every layer. Subclasses declare `type: Literal["Name"] = "Name"` and their arguments."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    type: str
    name: Name | None = None
    trainable: Bool = True
    # Functional graphs only: the names of the inputs/layers this layer consumes.
    inputs: list[Name] | None = None

    # How many input tensors the layer takes (merge layers take 2 or more).
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1
    # Whether the layer's kernels split the batch over the threads themselves (convolutions, pooling); the
    # engine then runs every product of the model (BLAS and sgemm) on one thread (see Engine._thread_limits).
    runs_own_threads: ClassVar[bool] = False

    @field_validator("inputs", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @property
    def is_merge(self) -> bool:
        return self.max_inputs != 1

    def compute_output_shape(self, input_shape: Any) -> Shape:
        """Output shape for `input_shape` (a tuple, or a list of tuples for merge layers)."""
        return input_shape

    def weight_specs(self, input_shape: Any) -> list[WeightSpec]:
        return []

    def macs(self, input_shape: Any, output_shape: Shape) -> int:
        """Forward multiply-adds per sample; 0 for layers that only move or compare data."""
        return 0

    # --- runtime -------------------------------------------------------------------------------------
    # The engine (specc.engine) calls these with arrays that carry the batch axis. Kernels are imported
    # inside the methods so that validation and summaries never load Numba.

    def initial_value(self, spec: WeightSpec, rng: Any):
        """The starting value of one weight (Keras's initializer; LSTM overrides for unit_forget_bias)."""
        from .initializers import initialize

        return initialize(spec.initializer, spec.shape, rng)

    def output_activation(self) -> str:
        """Activation the engine applies to this layer's output (fused with the loss when it can)."""
        return "linear"

    def applies_activation(self) -> bool:
        """True when forward already applied `output_activation` and backward takes the gradient of the
        activated output (the engine then does neither)."""
        return False

    def forward(self, w: list, x: Any, training: bool, rng: Any) -> tuple[Any, Any]:
        """(y, saved): the output before `output_activation`, and what backward needs.
        `w` are this layer's weights in `weight_specs` order (views into the model's flat buffer)."""
        raise NotImplementedError(f"{self.type} has no runtime yet")

    def backward(self, w: list, g: list, saved: Any, dy: Any, need_dx: bool = True) -> Any:
        """Writes d(loss)/d(weight) into `g` (views, same order as `w`; None for statistics that have no
        gradient) and returns d(loss)/d(input) (a list for merge layers). With need_dx=False (the input is
        a model input in training) a layer may skip that product and return None."""
        raise NotImplementedError(f"{self.type} has no runtime yet")

    # Keras's `get_config()` equivalent, only what differs from the defaults.
    def config(self) -> dict:
        return self.model_dump(exclude_defaults=True, exclude={"inputs"}) | {"type": self.type}


# The module (in specc.layers) that defines each layer type, in the registry's order. Building a pydantic
# class costs about a millisecond, so importing all ~40 on every start-up was a fifth of `specc summary`'s
# time; with this table a spec imports only the families it uses. `register` checks every class against
# it, and tests/test_startup.py checks that it lists exactly the registered types.
FAMILIES: dict[str, tuple[str, ...]] = {
    "attention": ("MultiHeadAttention",),
    "activations": ("Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax"),
    "container": ("Sequential",),
    "conv": ("Conv1D", "Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D"),
    "conv3d": ("Conv3D", "MaxPooling3D", "AveragePooling3D", "GlobalMaxPooling3D", "GlobalAveragePooling3D"),
    "core": ("Dense", "Embedding", "Dropout"),
    "merging": ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"),
    "noise": ("SpatialDropout1D", "SpatialDropout2D", "GaussianNoise"),
    "normalization": ("BatchNormalization", "LayerNormalization"),
    "pooling": ("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "GlobalMaxPooling1D",
                "GlobalMaxPooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D"),
    "preprocessing": ("Rescaling", "Normalization"),
    "recurrent": ("SimpleRNN", "LSTM", "GRU"),
    "wrappers": ("Bidirectional", "TimeDistributed"),
    "reshaping": ("Flatten", "Reshape", "Permute", "RepeatVector", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D",
                  "Cropping2D", "UpSampling1D", "UpSampling2D"),
}


class Registry(Mapping):
    """YAML `type` -> LayerSpec class. Reads like a dict of every layer type; a family's module is imported
    the first time one of its classes is looked up."""

    def __init__(self, families: dict[str, tuple[str, ...]]):
        self._family = {t: family for family, types in families.items() for t in types}
        self._classes: dict[str, type[LayerSpec]] = {}

    def __getitem__(self, type_name: str) -> type[LayerSpec]:
        cls = self._classes.get(type_name)
        if cls is None:
            family = self._family[type_name]  # KeyError for an unknown type, as from a dict
            importlib.import_module(f"{__package__}.{family}")
            cls = self._classes[type_name]
        return cls

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._family

    def __iter__(self) -> Iterator[str]:
        return iter(self._family)

    def __len__(self) -> int:
        return len(self._family)

    def add(self, cls: type[LayerSpec]) -> None:
        type_name = cls.model_fields["type"].default
        family = cls.__module__.rpartition(".")[2]
        assert self._family.get(type_name) == family, f"{type_name} ({cls.__module__}) is not in FAMILIES[{family!r}]"
        assert type_name not in self._classes, type_name
        self._classes[type_name] = cls


REGISTRY = Registry(FAMILIES)


def register(cls: type[LayerSpec]) -> type[LayerSpec]:
    REGISTRY.add(cls)
    return cls


def snake_case(class_name: str) -> str:
    """Keras's auto-name rule: Conv2DTranspose -> conv2d_transpose, SimpleRNN -> simple_rnn."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def prod(shape: Shape) -> int | None:
    """Number of elements, or None if any size is unknown."""
    return None if any(d is None for d in shape) else math.prod(shape)


def spatial_axes(rank: int) -> tuple[str, ...]:
    """Axis names of channels_last samples with `rank` spatial axes (1: a sequence, 2: an image)."""
    return ("steps", "channels") if rank == 1 else ("height", "width", "channels")


def require_rank(layer_type: str, s: Shape, axes: tuple[str, ...]) -> None:
    """The one rank check: `s` (no batch axis) must have one size per named axis."""
    if len(s) != len(axes):
        raise ShapeError(f"{layer_type} expects samples of rank {len(axes)} (batch, {', '.join(axes)}), "
                         f"got {fmt_shape(s)}")


def fmt_shape(shape: Shape) -> str:
    """A shape as the summary shows it, with the batch axis: (None, 26, 26, 32)."""
    return "(" + ", ".join("None" if d is None else str(d) for d in (None, *shape)) + ")"
