"""compile() arguments -> the spec's CompileDef, and the training loop the API runs (specc.train.fit.Trainer).

Keras lets `loss` and `metrics` be a name, an object, a list (one per output) or a dict (by output name);
the spec's `compile` section takes names, or mappings by output name. `resolve()` turns the first into the
second for a model's outputs, keeping what names cannot say (a loss's `from_logits`, the label a metric
is logged under — Keras logs `metrics=["mae"]` as "mae") beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..spec.schema import CompileDef
from . import losses as L
from . import metrics as Mt
from .layer import validate


@dataclass
class CompileConfig:
    """What compile() was given, checked as far as it can be before the model's outputs are known."""

    optimizer: Any  # a specc.optimizers.Optimizer: model.optimizer
    loss: Any
    metrics: Any
    loss_weights: Any
    weighted_metrics: Any = None


@dataclass
class Resolved:
    compile_def: CompileDef
    loss_objects: list[L.Loss | None]  # per output: the loss object when it carries options, else None
    labels: list[list[str]]  # per output: the name each metric is logged under
    # per output: (metric name or function, label, weighted), what the Trainer builds its metrics from
    metric_specs: list[list[tuple[Any, str, bool]]] = None


# Keras 3's "crossentropy" / "ce" loss: binary for one-unit outputs, sparse for class-index targets,
# categorical otherwise (keras.src.trainers.compile_utils.get_loss).
CROSSENTROPY = ("crossentropy", "ce")


def _is_ce(name: str) -> bool:
    return name.lower() in CROSSENTROPY


def crossentropy_for(output_units: int | None, sparse_targets: bool) -> str:
    if output_units == 1:
        return "binary_crossentropy"
    return "sparse_categorical_crossentropy" if sparse_targets else "categorical_crossentropy"


def _per_output(value: Any, outputs: list[str], what: str) -> list[Any]:
    n = len(outputs)
    if isinstance(value, dict):
        unknown = [k for k in value if k not in outputs]
        if unknown:
            raise ValueError(f"compile(): {what} names {unknown[0]!r}, which is not a model output; outputs: "
                             f"{', '.join(outputs)}")
        return [value.get(o) for o in outputs]
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"compile(): {what} is a list of {len(value)} for a model with {n} output(s) "
                             f"({', '.join(outputs)}); give one per output, or a dict by output name")
        return list(value)
    return [value] * n


def check_loss(entry: Any, what: str = "compile(): a loss") -> None:
    """A loss compile() can train: a name, a specc.losses object (or a weighted sum of them), or None."""
    if entry is None or isinstance(entry, (str, L.Loss)):
        return
    if callable(entry):
        raise TypeError(f"{what} given as a Python function ({getattr(entry, '__name__', type(entry).__name__)}) "
                        f"is not supported: {L.CUSTOM_LOSS_HELP}")
    raise TypeError(f"{what} must be a name or a specc.losses object, got {type(entry).__name__}")


def _loss_entry(entry: Any, output: str, ce: str) -> tuple[str, L.Loss | None]:
    """(the spec's loss name, the loss object when it carries what a name cannot). `ce` is what Keras's
    "crossentropy" means for this output."""
    check_loss(entry)
    if isinstance(entry, str):
        return (ce if entry.lower() in CROSSENTROPY else entry), None
    if isinstance(entry, L.Loss):
        return entry.key, entry if entry.has_options else None
    raise ValueError(f"compile(): no loss for output '{output}'")


def _metric_entries(entry: Any, what: str = "metrics") -> list[tuple[Any, str]]:
    """(spec metric name as written, or a function; label) for each metric of one output."""
    items = entry if isinstance(entry, (list, tuple)) else ([] if entry is None else [entry])
    out = []
    for m in items:
        if isinstance(m, str):
            out.append((m, m))
        elif isinstance(m, Mt.Metric):
            out.append((m.key, m.name))
        elif callable(m):
            out.append((m, getattr(m, "__name__", type(m).__name__)))  # Keras names it after the function
        else:
            raise TypeError(f"compile(): {what} must be names, specc.metrics objects or functions "
                            f"(y_true, y_pred) -> array, got {type(m).__name__}")
    return out


def _metrics_per_output(metrics: Any, outputs: list[str], what: str = "metrics") -> list[list[tuple[Any, str]]]:
    if metrics is None:
        return [[] for _ in outputs]
    if isinstance(metrics, dict):
        per = _per_output(metrics, outputs, what)
    elif isinstance(metrics, (list, tuple)) and len(outputs) > 1 and len(metrics) == len(outputs) \
            and any(isinstance(m, (list, tuple)) for m in metrics):
        per = list(metrics)  # Keras: one list per output
    else:
        per = [metrics] * len(outputs)  # tf.keras: the same metrics on every output
    return [_metric_entries(e, what) for e in per]


def resolve(cfg: CompileConfig, outputs: list[str], crossentropy: list[str] | None = None) -> Resolved:
    """`crossentropy`: per output, the loss "crossentropy"/"ce" stands for (crossentropy_for)."""
    if cfg.loss is None:
        raise ValueError("compile() was called without a loss, so the model cannot be trained or evaluated; "
                         "call model.compile(optimizer=..., loss='mse') (or another loss)")
    ce = crossentropy or ["categorical_crossentropy"] * len(outputs)
    entries = [_loss_entry(e, o, c) for e, o, c in zip(_per_output(cfg.loss, outputs, "loss"), outputs, ce)]
    metrics = _metrics_per_output(cfg.metrics, outputs)
    weighted = _metrics_per_output(cfg.weighted_metrics, outputs, "weighted_metrics")
    weights = cfg.loss_weights
    if isinstance(weights, tuple):
        weights = list(weights)
    # Names go through the spec's schema (same checks and messages as YAML); functions do not.
    named = [[m for m, _ in ms + ws if isinstance(m, str) and not _is_ce(m)] for ms, ws in zip(metrics, weighted)]
    if len(outputs) == 1:  # the spec's plain forms: `loss: mse`, `metrics: [mae]`
        raw = {"optimizer": cfg.optimizer.definition, "loss": entries[0][0], "metrics": named[0]}
    else:
        raw = {"optimizer": cfg.optimizer.definition, "loss": {o: name for o, (name, _) in zip(outputs, entries)},
               "metrics": {o: names for o, names in zip(outputs, named)}}
    if weights is not None:
        raw["loss_weights"] = weights
    compile_def = validate(CompileDef, raw, "compile()")
    if isinstance(weights, list) and len(weights) != len(outputs):
        raise ValueError(f"compile(): loss_weights has {len(weights)} weights for {len(outputs)} model outputs")
    canonical = compile_def.metrics
    specs = []
    for o, ms, ws in zip(outputs, metrics, weighted):
        names = iter(canonical.get(o, []) if isinstance(canonical, dict) else canonical)
        out = []
        for group, flag in ((ms, False), (ws, True)):
            for m, label in group:
                if isinstance(m, str) and _is_ce(m):
                    m = "crossentropy"
                elif isinstance(m, str):
                    m = next(names)
                out.append((m, label, flag))
        specs.append(out)
    return Resolved(compile_def, [obj for _, obj in entries], [[label for _, label in ms] for ms in metrics], specs)


def metrics_names(resolved: Resolved, outputs: list[str]) -> list[str]:
    """The keys fit()/evaluate() log, in order (tf.keras's `metrics_names`; Trainer._metric_logs names them)."""
    names = ["loss"]
    multi = len(outputs) > 1
    if multi:
        names += [f"{o}_loss" for o in outputs]
    for weighted in (False, True):
        for o, specs in zip(outputs, resolved.metric_specs):
            for _, label, flag in specs:
                if flag != weighted:
                    continue
                key = f"{o}_{label}" if multi else label
                if weighted and key in names:
                    key = f"{o}_weighted_{label}" if multi else f"weighted_{label}"
                names.append(key)
    return names


def make_trainer(engine: Any, resolved: Resolved, seed: int | None):
    """A specc Trainer for the API: losses with options, metrics logged under the user's labels."""
    from ..train.fit import Trainer

    trainer = Trainer(engine, resolved.compile_def, seed)
    trainer.metric_specs = resolved.metric_specs
    for k, obj in enumerate(resolved.loss_objects):
        if obj is not None:
            trainer.losses[k] = obj.to_train()
            if trainer.losses[k].fuses_with is None:
                trainer.fused[k] = None  # the loss takes logits itself, or is a sum: nothing to fuse
    # Callbacks that write files (ModelCheckpoint, CSVLogger) join their paths to run_dir: "" keeps them
    # relative to the current directory, as in Keras.
    trainer.run_dir = ""
    return trainer
