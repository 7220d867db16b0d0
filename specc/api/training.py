"""compile() arguments -> the spec's CompileDef, and the training loop the API runs (specc.train.fit.Trainer).

Keras lets `loss` and `metrics` be a name, an object, a list (one per output) or a dict (by output name);
the spec's `compile` section takes names, or mappings by output name. `resolve()` turns the first into the
second for a model's outputs, keeping what names cannot say (a loss's `from_logits`, the label a metric
is logged under — Keras logs `metrics=["mae"]` as "mae") beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..spec.schema import CompileDef, OptimizerDef
from . import losses as L
from . import metrics as Mt
from .layer import validate


@dataclass
class CompileConfig:
    """What compile() was given, checked as far as it can be before the model's outputs are known."""

    optimizer: OptimizerDef
    loss: Any
    metrics: Any
    loss_weights: Any


@dataclass
class Resolved:
    compile_def: CompileDef
    loss_objects: list[L.Loss | None]  # per output: the loss object when it carries options, else None
    labels: list[list[str]]  # per output: the name each metric is logged under


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


def _loss_entry(entry: Any, output: str) -> tuple[str, L.Loss | None]:
    if isinstance(entry, str):
        return entry, None
    if isinstance(entry, L.Loss):
        options = entry.from_logits or entry.delta != 1.0
        return entry.key, entry if options else None
    if entry is None:
        raise ValueError(f"compile(): no loss for output '{output}'")
    if callable(entry):
        raise NotImplementedError("custom loss functions are not supported: specc computes each loss and its "
                                  "gradient in one kernel. Use a loss name (e.g. 'mse') or a specc.losses object")
    raise TypeError(f"compile(): a loss must be a name or a specc.losses object, got {type(entry).__name__}")


def _metric_entries(entry: Any) -> list[tuple[str, str]]:
    """(spec metric name as written, label) for each metric of one output."""
    items = entry if isinstance(entry, (list, tuple)) else ([] if entry is None else [entry])
    out = []
    for m in items:
        if isinstance(m, str):
            out.append((m, m))
        elif isinstance(m, Mt.Metric):
            out.append((m.key, m.name))
        elif callable(m):
            raise NotImplementedError("custom metric functions are not supported; use a metric name (e.g. "
                                      "'accuracy') or a specc.metrics object")
        else:
            raise TypeError(f"compile(): a metric must be a name or a specc.metrics object, got {type(m).__name__}")
    return out


def _metrics_per_output(metrics: Any, outputs: list[str]) -> list[list[tuple[str, str]]]:
    if metrics is None:
        return [[] for _ in outputs]
    if isinstance(metrics, dict):
        per = _per_output(metrics, outputs, "metrics")
    elif isinstance(metrics, (list, tuple)) and len(outputs) > 1 and len(metrics) == len(outputs) \
            and any(isinstance(m, (list, tuple)) for m in metrics):
        per = list(metrics)  # Keras: one list per output
    else:
        per = [metrics] * len(outputs)  # tf.keras: the same metrics on every output
    return [_metric_entries(e) for e in per]


def resolve(cfg: CompileConfig, outputs: list[str]) -> Resolved:
    if cfg.loss is None:
        raise ValueError("compile() was called without a loss, so the model cannot be trained or evaluated; "
                         "call model.compile(optimizer=..., loss='mse') (or another loss)")
    entries = [_loss_entry(e, o) for e, o in zip(_per_output(cfg.loss, outputs, "loss"), outputs)]
    metrics = _metrics_per_output(cfg.metrics, outputs)
    weights = cfg.loss_weights
    if isinstance(weights, tuple):
        weights = list(weights)
    if len(outputs) == 1:  # the spec's plain forms: `loss: mse`, `metrics: [mae]`
        raw = {"optimizer": cfg.optimizer, "loss": entries[0][0], "metrics": [name for name, _ in metrics[0]]}
    else:
        raw = {"optimizer": cfg.optimizer, "loss": {o: name for o, (name, _) in zip(outputs, entries)},
               "metrics": {o: [name for name, _ in ms] for o, ms in zip(outputs, metrics)}}
    if weights is not None:
        raw["loss_weights"] = weights
    compile_def = validate(CompileDef, raw, "compile()")
    if isinstance(weights, list) and len(weights) != len(outputs):
        raise ValueError(f"compile(): loss_weights has {len(weights)} weights for {len(outputs)} model outputs")
    return Resolved(compile_def, [obj for _, obj in entries], [[label for _, label in ms] for ms in metrics])


def metrics_names(resolved: Resolved, outputs: list[str]) -> list[str]:
    """The keys fit()/evaluate() log, in order (tf.keras's `metrics_names`)."""
    names = ["loss"]
    multi = len(outputs) > 1
    if multi:
        names += [f"{o}_loss" for o in outputs]
    for o, labels in zip(outputs, resolved.labels):
        names += [f"{o}_{lbl}" if multi else lbl for lbl in labels]
    return names


def make_trainer(engine: Any, resolved: Resolved, seed: int | None):
    """A specc Trainer for the API: losses with options, metrics logged under the user's labels."""
    from ..train.fit import Trainer
    from ..train.losses import get_loss

    class APITrainer(Trainer):
        def _make_metrics(self, y):
            made = super()._make_metrics(y)
            for ms, labels in zip(made, resolved.labels):
                for m, label in zip(ms, labels):
                    m.name = label
            return made

    trainer = APITrainer(engine, resolved.compile_def, seed)
    for k, obj in enumerate(resolved.loss_objects):
        if obj is not None:
            trainer.losses[k] = get_loss(obj.key, from_logits=obj.from_logits, delta=obj.delta)
            if obj.from_logits:
                trainer.fused[k] = None  # the loss takes logits itself; nothing to fuse
    # Callbacks that write files (ModelCheckpoint, CSVLogger) join their paths to run_dir: "" keeps them
    # relative to the current directory, as in Keras.
    trainer.run_dir = ""
    return trainer
