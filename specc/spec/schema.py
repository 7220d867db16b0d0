"""The spec format, version 1: every top-level section and its pydantic schema, in one place.

Layers are validated one by one through the layer registry (specc.layers) so each error keeps its own
position; the model section here holds them as raw mappings until then. The `compile`, `fit` and `data`
sections are part of v1 so that training specs validate today.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .errors import cut_text, show_value
from .types import (
    Bool,
    Fraction,
    Name,
    NonNegFloat,
    NonNegInt,
    Number,
    OpenFraction,
    PositiveFloat,
    PositiveInt,
    Rate,
    Shape,
    by_kind,
    choice,
)

KNOWN_VERSIONS = (1,)
TOP_LEVEL_KEYS = ("specc", "name", "seed", "model", "compile", "fit", "data")
# expanded away before the checks of the v1 sections (specc/spec/expand.py)
BLOCK_TOP_LEVEL_KEYS = ("blocks", "vars", "include")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


# --- model --------------------------------------------------------------------------------------------


class InputDef(Strict):
    shape: Shape
    name: Name | None = None


def _input_def(v: Any) -> Any:
    return v if isinstance(v, dict) else {"shape": v}


class SequentialModelDef(Strict):
    """`input` + a chain of `layers`."""

    input: InputDef
    layers: list[Any]

    @field_validator("input", mode="before")
    @classmethod
    def _wrap_input(cls, v):
        return _input_def(v)


class FunctionalModelDef(Strict):
    """Named `inputs`, `layers` that each name their `inputs`, and `outputs`."""

    inputs: dict[Name, InputDef]
    layers: list[Any]
    outputs: list[Name]

    @field_validator("inputs", mode="before")
    @classmethod
    def _wrap_inputs(cls, v):
        if not isinstance(v, dict) or not v:
            raise ValueError("must be a mapping of input names to shapes, e.g. {image: [28, 28, 1]}")
        return {k: _input_def(s) for k, s in v.items()}

    @field_validator("outputs", mode="before")
    @classmethod
    def _listify(cls, v):
        if v == []:
            raise ValueError("must name at least one output (a layer name or a list of layer names)")
        return [v] if isinstance(v, str) else v


# --- data ---------------------------------------------------------------------------------------------

BUILTIN_DATASETS = ("digits", "iris", "wine", "breast_cancer", "synthetic")


class FileSource(Strict):
    path: str
    x: str | None = None  # array names inside an .npz
    y: str | None = None
    target: str | None = None  # the label column of a .csv

    @model_validator(mode="after")
    def _kind(self):
        if self.path.endswith(".npz") and self.target is not None:
            raise ValueError("`target` names a CSV column; for an .npz file give the array names `x` and `y`")
        if self.path.endswith(".csv") and (self.x or self.y):
            raise ValueError("`x`/`y` name arrays in an .npz file; for a CSV give the label column as `target`")
        if not self.path.endswith((".npz", ".csv")):
            raise ValueError(f"path must end in .npz or .csv, got {self.path!r}")
        return self


class DataDef(Strict):
    source: by_kind("a built-in dataset name or a mapping {path: data.npz, x: x, y: y}",
                    str=choice(BUILTIN_DATASETS, "dataset"), map=FileSource)
    test_split: Fraction = 0.2
    normalize: Bool = False
    # synthetic data only: how many samples and, for classification, how many classes
    samples: PositiveInt = 1024
    classes: PositiveInt | None = None


# --- compile ------------------------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "nadam")
LOSSES = ("mean_squared_error", "mean_absolute_error", "huber", "binary_crossentropy",
          "categorical_crossentropy", "sparse_categorical_crossentropy", "kl_divergence", "hinge")
LOSS_ALIASES = {"mse": "mean_squared_error", "mae": "mean_absolute_error", "kld": "kl_divergence",
                "huber_loss": "huber", "kullback_leibler_divergence": "kl_divergence"}
METRICS = ("accuracy", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy",
           "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy", "mean_squared_error",
           "mean_absolute_error", "root_mean_squared_error", "auc", "precision", "recall", "f1_score")
METRIC_ALIASES = {"acc": "accuracy", "mse": "mean_squared_error", "mae": "mean_absolute_error",
                  "rmse": "root_mean_squared_error", "f1": "f1_score"}

LossName = choice(LOSSES, "loss", aliases=LOSS_ALIASES)
MetricName = choice(METRICS, "metric", aliases=METRIC_ALIASES)


class Schedule(Strict):
    type: choice(("ExponentialDecay", "CosineDecay", "PiecewiseConstantDecay"), "learning-rate schedule")
    initial_learning_rate: PositiveFloat | None = None
    decay_steps: PositiveInt | None = None
    decay_rate: PositiveFloat | None = None
    staircase: Bool = False
    alpha: NonNegFloat = 0.0
    boundaries: list[PositiveInt] | None = None
    values: list[PositiveFloat] | None = None

    @model_validator(mode="after")
    def _required(self):
        need = {"ExponentialDecay": ("initial_learning_rate", "decay_steps", "decay_rate"),
                "CosineDecay": ("initial_learning_rate", "decay_steps"),
                "PiecewiseConstantDecay": ("boundaries", "values")}[self.type]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"{self.type} needs {', '.join(missing)}")
        if self.type == "PiecewiseConstantDecay" and len(self.values) != len(self.boundaries) + 1:
            raise ValueError("PiecewiseConstantDecay needs one more value than boundaries")
        return self


class OptimizerDef(Strict):
    """Keras optimizer arguments; each optimizer uses the ones its update rule has (Keras defaults)."""

    type: choice(OPTIMIZERS, "optimizer")
    learning_rate: by_kind("a positive number or a schedule {type: ExponentialDecay, ...}",
                           number=PositiveFloat, map=Schedule) | None = None
    momentum: Rate | None = None
    nesterov: Bool | None = None
    beta_1: Rate | None = None
    beta_2: Rate | None = None
    epsilon: PositiveFloat | None = None
    amsgrad: Bool | None = None
    rho: Rate | None = None
    centered: Bool | None = None
    initial_accumulator_value: NonNegFloat | None = None
    weight_decay: NonNegFloat | None = None
    clipnorm: PositiveFloat | None = None
    clipvalue: PositiveFloat | None = None
    global_clipnorm: PositiveFloat | None = None

    @model_validator(mode="after")
    def _one_clipping(self):
        if sum(x is not None for x in (self.clipnorm, self.clipvalue, self.global_clipnorm)) > 1:
            raise ValueError("use only one of clipnorm, clipvalue and global_clipnorm (Keras allows one)")
        return self


# Keras 3's defaults for each optimizer (the one table: specc.train.optimizers and the resolved spec use it).
OPTIMIZER_DEFAULTS = {
    "sgd": dict(learning_rate=0.01, momentum=0.0, nesterov=False),
    "adam": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False),
    "adamw": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, weight_decay=0.004),
    "rmsprop": dict(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False),
    "adagrad": dict(learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7),
    "adadelta": dict(learning_rate=0.001, rho=0.95, epsilon=1e-7),
    "nadam": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
}

# Which OptimizerDef arguments each optimizer's update rule has, derived from its defaults (checked per key
# in validate.py, so an argument the chosen optimizer does not take is reported on its own line).
COMMON_OPTIMIZER_ARGS = ("learning_rate", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm")
OPTIMIZER_ARGS = {name: tuple(k for k in defaults if k not in COMMON_OPTIMIZER_ARGS)
                  for name, defaults in OPTIMIZER_DEFAULTS.items()}


class CompileDef(Strict):
    optimizer: OptimizerDef = OptimizerDef(type="rmsprop")  # Keras's compile() default
    loss: by_kind("a loss name or a mapping of output names to losses",
                  str=LossName, map=dict[Name, LossName])
    metrics: by_kind("a list of metric names or a mapping of output names to metric lists",
                     list=list[MetricName], map=dict[Name, list[MetricName]]) = []
    loss_weights: by_kind("a mapping of output names to weights or a list of weights",
                          map=dict[Name, NonNegFloat], list=list[NonNegFloat]) | None = None

    @field_validator("optimizer", mode="before")
    @classmethod
    def _name_only(cls, v):
        return {"type": v} if isinstance(v, str) else v

    @field_validator("metrics", mode="before")
    @classmethod
    def _listify(cls, v):
        if isinstance(v, str):
            return [v]
        if isinstance(v, dict):
            return {k: [m] if isinstance(m, str) else m for k, m in v.items()}
        return v


# --- fit ----------------------------------------------------------------------------------------------

Monitor = Name

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a file or folder name: no separators, no `..`, not hidden
_FORMAT_SPEC = re.compile(r"0?\d{0,2}(?:\.\d{1,2})?(?P<kind>[defgEG%]?)")  # {epoch:03d}, {val_loss:.2f}
MAX_RUN_FILE = 200  # characters


def _run_file(v: Any) -> str:
    """A file a callback writes inside the run directory: a relative path of plain names (letters, digits,
    '_', '-', '.'; not starting with '.'), which may hold `{epoch}` / `{loss:.2f}` fields. Anything that could
    leave the run directory (`..`, an absolute path) or fail when formatted is refused here, before training."""
    expected = ("a relative path inside the run directory, of names made of letters, digits, '_', '-' and '.' "
                "(not starting with '.'), with optional {epoch:03d} / {val_loss:.2f} fields")
    if not isinstance(v, str) or not v or len(v) > MAX_RUN_FILE:
        raise PydanticCustomError("spec", "must be {expected}, got {got}", {"expected": expected, "got": show_value(v)})
    try:
        pieces = list(string.Formatter().parse(v))
    except ValueError as exc:  # an unmatched brace
        raise PydanticCustomError("spec", "is not a valid file name pattern: {why}", {"why": str(exc)}) from None
    literal = ""
    for text, field, spec, conversion in pieces:
        literal += text
        if field is None:
            continue
        m = _FORMAT_SPEC.fullmatch(spec or "")
        kinds = ("", "d") if field == "epoch" else ("", "e", "f", "g", "E", "G", "%")  # an int, or a float metric
        if not field.isidentifier() or conversion or m is None or m["kind"] not in kinds:
            shown = "{" + field + ("!" + conversion if conversion else "") + (":" + spec if spec else "") + "}"
            raise PydanticCustomError("spec", "has the field {field}; a field is {epoch} or {epoch:03d}, or a metric "
                                      "like {loss} or {val_loss:.2f}", {"field": cut_text(shown)})
        literal += "x"
    if not all(_PART.fullmatch(part) for part in literal.split("/")):
        raise PydanticCustomError("spec", "must be {expected}, got {got}", {"expected": expected, "got": show_value(v)})
    return v


RunFile = Annotated[str, BeforeValidator(_run_file), WithJsonSchema({"type": "string", "minLength": 1})]


class EarlyStopping(Strict):
    type: Literal["EarlyStopping"]
    monitor: Monitor = "val_loss"
    min_delta: NonNegFloat = 0.0
    patience: NonNegInt = 0
    mode: choice(("auto", "min", "max"), "mode") = "auto"
    baseline: Number | None = None
    restore_best_weights: Bool = False
    start_from_epoch: NonNegInt = 0


class ModelCheckpoint(Strict):
    type: Literal["ModelCheckpoint"]
    monitor: Monitor = "val_loss"
    save_best_only: Bool = False
    mode: choice(("auto", "min", "max"), "mode") = "auto"
    filepath: RunFile | None = None  # inside the run directory; defaults to checkpoints/epoch_{epoch:03d}.npz


class ReduceLROnPlateau(Strict):
    type: Literal["ReduceLROnPlateau"]
    monitor: Monitor = "val_loss"
    factor: OpenFraction = 0.1  # Keras rejects factor >= 1
    patience: NonNegInt = 10
    mode: choice(("auto", "min", "max"), "mode") = "auto"
    min_delta: NonNegFloat = 1e-4
    cooldown: NonNegInt = 0
    min_lr: NonNegFloat = 0.0


class CSVLogger(Strict):
    type: Literal["CSVLogger"]
    filename: RunFile = "log.csv"
    separator: str = ","
    append: Bool = False


class TerminateOnNaN(Strict):
    type: Literal["TerminateOnNaN"]


class TensorBoard(Strict):
    type: Literal["TensorBoard"]
    log_dir: RunFile = "tensorboard"  # inside the run directory (the API: relative to the working directory)
    histogram_freq: NonNegInt = 0  # weight histograms every N epochs; 0: none
    write_graph: Bool = True  # the model summary, as text (specc has no TensorFlow graph to show)
    update_freq: by_kind("'epoch', 'batch' or a positive number of batches",
                         str=choice(("epoch", "batch"), "update_freq"), number=PositiveInt) = "epoch"


CALLBACKS: dict[str, type[Strict]] = {
    c.__name__: c for c in (EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, CSVLogger, TerminateOnNaN,
                            TensorBoard)
}


class FitDef(Strict):
    batch_size: PositiveInt = 32
    epochs: PositiveInt = 1
    validation_split: Rate = 0.0
    shuffle: Bool = True
    class_weight: dict[NonNegInt, NonNegFloat] | None = None
    callbacks: list[Any] = []
    verbose: choice(("auto", "0", "1", "2"), "verbosity") = "auto"

    @field_validator("verbose", mode="before")
    @classmethod
    def _as_text(cls, v):
        return str(v) if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 9 else v


SECTIONS: dict[str, type[Strict]] = {"data": DataDef, "compile": CompileDef, "fit": FitDef}
