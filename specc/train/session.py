"""`specc train`: a spec in, a run directory out.

Order of work: validate the spec (with --set overrides) -> load and check the data -> build and
initialise the model -> create the run directory -> fit, checkpointing after every epoch -> final
weights, test metrics, curves. Ctrl-C stops after the current step and writes a checkpoint that
`--resume` continues from, reaching the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from dataclasses import dataclass

import numpy as np

from ..spec import SpecError, render
from ..spec.validate import Spec

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Failed(Exception):
    """A problem the user can fix; the message is printed as is and the exit code returned."""

    def __init__(self, message: str, code: int = EXIT_INVALID):
        self.message, self.code = message, code
        super().__init__(message)


@dataclass
class Options:
    spec_path: str
    overrides: list[str]
    out: str = "runs"
    resume: str | None = None
    seed: int | None = None
    threads: int | None = None
    quiet: bool = False


def apply_overrides(text: str, overrides: list[str], filename: str) -> tuple[Spec | None, list[SpecError]]:
    """Load the spec text with `--set a.b=value` overrides applied (values parsed as YAML scalars)."""
    from ..spec.validate import validate_data
    from ..spec.yamlpos import load_yaml, parse_scalar

    data, positions, errors = load_yaml(text.encode() if isinstance(text, str) else text, filename)
    if errors:
        return None, errors
    bad = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        path = [p for p in key.strip().split(".") if p]
        if not sep or not path:
            bad.append(SpecError("--set", 0, 0, key, f"expected KEY.PATH=VALUE, got {item!r}"))
            continue
        value = parse_scalar(raw)
        node = data
        for i, part in enumerate(path[:-1]):
            index = int(part) if part.isdigit() and isinstance(node, list) else part
            try:
                node = node[index]
            except (KeyError, IndexError, TypeError):
                if isinstance(node, dict):
                    node[index] = {}
                    node = node[index]
                else:
                    bad.append(SpecError("--set", 0, 0, key, f"{'.'.join(path[: i + 1])} does not exist"))
                    break
        else:
            last = int(path[-1]) if path[-1].isdigit() and isinstance(node, list) else path[-1]
            try:
                node[last] = value
            except (IndexError, TypeError):
                bad.append(SpecError("--set", 0, 0, key, f"cannot set {key} here"))
    if bad:
        return None, bad
    return validate_data(data, positions, filename)


def _print_errors(errors: list[SpecError]) -> None:
    print(render(errors, "text"), file=sys.stderr)


def _spec_error(spec: Spec, path: tuple, message: str) -> SpecError:
    """A training-time problem (data, callbacks) positioned in the spec like a validation error."""
    from ..spec.validate import Collector

    collector = Collector(spec.file, spec.positions)
    collector.add(path, message)
    return collector.errors[0]


def _check_monitors(spec: Spec, has_validation: bool) -> list[SpecError]:
    """A callback watching val_* needs validation data; say so before training, not after."""
    errors = []
    for i, cb in enumerate(spec.callbacks):
        monitor = getattr(cb, "monitor", None)
        if monitor and monitor.startswith("val_") and not has_validation:
            errors.append(_spec_error(spec, ("fit", "callbacks", i, "monitor"),
                                      f"{cb.type} monitors {monitor!r}, but there is no validation data; set "
                                      f"fit.validation_split (e.g. 0.1) or monitor {monitor[4:]!r}"))
    return errors


class _CtrlC:
    """First Ctrl-C: finish the current step, checkpoint, exit 130. Second: stop at once."""

    def __init__(self, trainer):
        self.trainer, self.previous = trainer, None

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.trainer.interrupt_requested:
            raise KeyboardInterrupt
        self.trainer.interrupt_requested = True
        print("\nInterrupted: stopping after the current step (Ctrl-C again to stop at once)...",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)
        return False


def _rng_state(rng) -> dict:
    return rng.bit_generator.state


def write_checkpoint(run_dir: str, trainer, history, callbacks) -> None:
    """checkpoint/state.json + checkpoint/arrays.npz, each written atomically; state.json last, so a
    checkpoint is complete whenever state.json names its arrays file."""
    import io

    from .run import atomic_write_bytes, atomic_write_json

    ckpt = os.path.join(run_dir, "checkpoint")
    arrays = {"params": trainer.engine.params, **{f"opt/{k}": v for k, v in trainer.optimizer.state_arrays().items()}}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(os.path.join(ckpt, "arrays.npz"), buf.getvalue())
    state = {
        "loop": trainer.loop_state,
        "history": {"epoch": history.epoch, "history": history.history},
        "rng": _rng_state(trainer.rng),
        "dropout_rng": _rng_state(trainer.dropout_rng),
        "callbacks": [_jsonable_state(cb.state()) for cb in callbacks],
    }
    atomic_write_json(os.path.join(ckpt, "state.json"), state)


def _jsonable_state(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if isinstance(v, list) and v and isinstance(v[0], np.ndarray):
            v = {"__arrays__": [a.tolist() for a in v], "dtypes": [str(a.dtype) for a in v]}
        elif isinstance(v, float) and not np.isfinite(v):
            v = {"__float__": repr(v)}
        out[k] = v
    return out


def _restore_state(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if isinstance(v, dict) and "__arrays__" in v:
            v = [np.asarray(a, d) for a, d in zip(v["__arrays__"], v["dtypes"])]
        elif isinstance(v, dict) and "__float__" in v:
            v = float(v["__float__"])
        out[k] = v
    return out


def train(opts: Options) -> int:
    try:
        return _train(opts)
    except Failed as exc:
        print(exc.message, file=sys.stderr)
        return exc.code


def _train(opts: Options) -> int:
    from ..data.prepare import load as load_data
    from ..data.sources import DataError

    run_dir = None
    overrides = list(opts.overrides)
    if opts.resume:
        run_dir = opts.resume
        meta_path = os.path.join(run_dir, "checkpoint", "state.json")
        if not os.path.exists(meta_path):
            raise Failed(f"specc: error: {run_dir} has no checkpoint to resume (expected {meta_path})", EXIT_USAGE)
        with open(os.path.join(run_dir, "environment.json"), encoding="utf-8") as fh:
            env = json.load(fh)
        spec_file = os.path.join(run_dir, "spec.yaml")
        overrides = env.get("overrides", []) + overrides
        opts.seed = env["seed"] if opts.seed is None else opts.seed
        opts.threads = opts.threads or env.get("threads")
        source_name = env.get("spec_path", spec_file)
    else:
        spec_file = opts.spec_path
        if not os.path.isfile(spec_file):
            raise Failed(f"specc: error: no such file: {spec_file}", EXIT_USAGE)
        source_name = spec_file
    with open(spec_file, "rb") as fh:
        raw = fh.read()
    # The original path even on --resume: relative data paths start at the spec's own folder.
    spec, errors = apply_overrides(raw, overrides, source_name)
    if errors:
        _print_errors(errors)
        return EXIT_INVALID
    if opts.seed is not None:
        spec.seed = opts.seed
    if spec.compile is None:
        _print_errors([_spec_error(spec, (), "the spec has no `compile` section (optimizer, loss); add one to "
                                             "train it")])
        return EXIT_INVALID
    try:
        data = load_data(spec)
    except DataError as exc:
        _print_errors([_spec_error(spec, exc.path, exc.message)])
        return EXIT_INVALID
    fit = spec.fit
    from .fit import History
    has_val = bool(fit and fit.validation_split > 0)
    errors = _check_monitors(spec, has_val)
    if errors:
        _print_errors(errors)
        return EXIT_INVALID

    # The heavy part starts here: Numba, the engine, the optimizer.
    from ..engine import Engine
    from ..kernels import configure_threads
    from ..spec.resolve import resolved_yaml
    from . import callbacks as C
    from .fit import Diverged, Interrupted, Trainer
    from .progress import Progress
    from .run import (
        atomic_write_bytes,
        atomic_write_json,
        atomic_write_text,
        environment,
        new_run_dir,
        plot_curves,
        save_weights,
        write_history,
    )

    threads = configure_threads(opts.threads)
    engine = Engine(spec.graph)
    engine.initialize(spec.seed)
    trainer = Trainer(engine, spec.compile, spec.seed)
    callbacks = [C.build(cfg) for cfg in spec.callbacks]
    history = History()
    resume_loop = None
    initial_epoch = 0
    if opts.resume:
        with open(os.path.join(run_dir, "checkpoint", "state.json"), encoding="utf-8") as fh:
            state = json.load(fh)
        with np.load(os.path.join(run_dir, "checkpoint", "arrays.npz"), allow_pickle=False) as arrays:
            engine.params[...] = arrays["params"]
            trainer.optimizer.load_state_arrays({k[4:]: arrays[k] for k in arrays.files if k.startswith("opt/")})
        trainer.rng.bit_generator.state = state["rng"]
        trainer.dropout_rng.bit_generator.state = state["dropout_rng"]
        for cb, cb_state in zip(callbacks, state["callbacks"]):
            cb.trainer = trainer
            cb.load_state(_restore_state(cb_state))
        history.epoch = state["history"]["epoch"]
        history.history = state["history"]["history"]
        loop = state["loop"]
        initial_epoch = loop["epoch"]
        resume_loop = loop if loop.get("step") else None
        print(f"Resuming {run_dir} at epoch {initial_epoch + 1}" +
              (f", step {loop['step'] + 1}" if resume_loop else ""), flush=True)
    else:
        run_dir = new_run_dir(opts.out, spec.name)
        atomic_write_bytes(os.path.join(run_dir, "spec.yaml"), raw)
        atomic_write_text(os.path.join(run_dir, "resolved.yaml"), resolved_yaml(spec))
        env = environment(spec.seed, threads) | {"spec_path": os.path.abspath(source_name), "overrides": overrides}
        atomic_write_json(os.path.join(run_dir, "environment.json"), env)
        if data.normalization:
            atomic_write_json(os.path.join(run_dir, "normalization.json"), data.normalization)
    trainer.run_dir = run_dir

    best = {"value": None}
    monitor = "val_loss" if has_val else "loss"

    def epoch_done(epoch, hist):
        value = hist.history[monitor][-1]
        if best["value"] is None or value < best["value"]:
            best["value"] = value
            save_weights(os.path.join(run_dir, "weights.best.npz"), engine)
        write_history(run_dir, hist)
        write_checkpoint(run_dir, trainer, hist, callbacks)

    trainer.epoch_done = epoch_done
    if opts.resume and history.history.get(monitor):
        best["value"] = min(history.history[monitor])
    verbose = 0 if opts.quiet else (fit.verbose if fit else "auto")
    try:
        with _CtrlC(trainer):
            trainer.fit(data.x_train, data.y_train, batch_size=fit.batch_size if fit else 32,
                        epochs=fit.epochs if fit else 1, validation_split=fit.validation_split if fit else 0.0,
                        shuffle=fit.shuffle if fit else True, class_weight=fit.class_weight if fit else None,
                        callbacks=callbacks, verbose=verbose, initial_epoch=initial_epoch, history=history,
                        resume=resume_loop)
    except Interrupted:
        write_checkpoint(run_dir, trainer, history, callbacks)
        if history.epoch:
            write_history(run_dir, history)
        print(f"Stopped. Checkpoint written to {os.path.join(run_dir, 'checkpoint')}\n"
              f"Resume with: specc train --resume {run_dir}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"Stopped at once; the last checkpoint (end of the last epoch) is in {run_dir}.\n"
              f"Resume with: specc train --resume {run_dir}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Diverged as exc:
        write_history(run_dir, history) if history.epoch else None
        print(f"specc: error: the loss became {exc.value} at epoch {exc.epoch + 1}, step {exc.step}: training "
              f"diverged.\nCheck the learning rate (try 10x smaller), the input scaling (data.normalize: true), "
              f"and the data for extreme values. Run directory: {run_dir}", file=sys.stderr)
        return EXIT_INVALID

    save_weights(os.path.join(run_dir, "weights.final.npz"), engine)
    if not os.path.exists(os.path.join(run_dir, "weights.best.npz")):
        save_weights(os.path.join(run_dir, "weights.best.npz"), engine)
    test = trainer.evaluate(data.x_test, data.y_test, fit.batch_size if fit else 32) if len(data.x_test[0]) else {}
    atomic_write_json(os.path.join(run_dir, "test_metrics.json"),
                      {"samples": int(len(data.x_test[0])), **test})
    if history.epoch:
        write_history(run_dir, history)
        plot_curves(run_dir, history, spec.name)
    shutil.rmtree(os.path.join(run_dir, "checkpoint"), ignore_errors=True)  # finished: nothing to resume
    progress = Progress(0 if opts.quiet else 1)
    if test:
        progress.message("Test: " + " - ".join(f"{k}: {v:.4f}" for k, v in test.items()))
    print(f"Run saved to {run_dir}", flush=True)
    return EXIT_OK


# --- evaluate / predict ----------------------------------------------------------------------------------


def _model_from_run(spec_path: str, weights: str):
    """(spec, engine, trainer-or-None, normalization) for a spec and a run directory or weights file."""
    from ..spec import load_spec

    spec, errors = load_spec(spec_path)
    if errors:
        _print_errors(errors)
        raise Failed(f"{len(errors)} error(s) in {spec_path}")
    weights_file = os.path.join(weights, "weights.final.npz") if os.path.isdir(weights) else weights
    if not os.path.isfile(weights_file):
        raise Failed(f"specc: error: no weights at {weights_file}", EXIT_USAGE)
    from ..engine import Engine
    from ..kernels import configure_threads
    from .run import load_weights

    configure_threads(None)
    engine = Engine(spec.graph)
    try:
        load_weights(weights_file, engine)
    except ValueError as exc:
        raise Failed(f"specc: error: {exc}") from None
    norm_file = os.path.join(weights if os.path.isdir(weights) else os.path.dirname(weights), "normalization.json")
    normalization = None
    if os.path.isfile(norm_file):
        with open(norm_file, encoding="utf-8") as fh:
            normalization = json.load(fh)
    return spec, engine, normalization


def _read_inputs(path: str, spec: Spec, normalization) -> tuple[list[np.ndarray], np.ndarray | None]:
    """x (and y if present) from an .npz with arrays `x`[, `y`], shaped and normalised like training."""
    if not os.path.isfile(path):
        raise Failed(f"specc: error: no such file: {path}", EXIT_USAGE)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise Failed(f"specc: error: {path} has no array 'x' (it has: {', '.join(archive.files)})")
            x = archive["x"].astype(np.float32)
            y = archive["y"] if "y" in archive.files else None
    except (OSError, ValueError) as exc:
        raise Failed(f"specc: error: cannot read {path} as .npz: {exc}") from None
    shape = spec.graph.inputs[0].output_shape
    if None not in shape and x.shape[1:] != tuple(shape):
        if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
            raise Failed(f"specc: error: {path}: samples of shape {x.shape[1:]} do not fit the model input {shape}")
        x = x.reshape(len(x), *shape)
    if normalization:
        stats = normalization["inputs"][0]
        x = ((x - np.asarray(stats["mean"], np.float32)) / np.asarray(stats["std"], np.float32)).astype(np.float32)
    return [x], y


def evaluate(spec_path: str, weights: str, input_path: str | None, fmt: str = "text") -> int:
    try:
        spec, engine, normalization = _model_from_run(spec_path, weights)
        from .fit import Trainer

        if spec.compile is None:
            raise Failed("specc: error: the spec has no `compile` section, so there is no loss to evaluate")
        trainer = Trainer(engine, spec.compile, spec.seed)
        if input_path:
            x, y = _read_inputs(input_path, spec, normalization)
            if y is None:
                raise Failed(f"specc: error: {input_path} has no array 'y' to evaluate against")
            ys = [y]
        else:
            from ..data.prepare import load as load_data
            from ..data.sources import DataError

            try:
                data = load_data(spec)
            except DataError as exc:
                _print_errors([_spec_error(spec, exc.path, exc.message)])
                return EXIT_INVALID
            x, ys = data.x_test, data.y_test
        results = trainer.evaluate(x, ys, spec.fit.batch_size if spec.fit else 32)
    except Failed as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    if fmt == "json":
        print(json.dumps({"samples": int(len(x[0])), **results}, indent=2))
    else:
        print(f"{len(x[0])} samples - " + " - ".join(f"{k}: {v:.4f}" for k, v in results.items()))
    return EXIT_OK


def predict(spec_path: str, weights: str, input_path: str, out: str | None) -> int:
    from .run import atomic_write_bytes, atomic_write_text

    try:
        spec, engine, normalization = _model_from_run(spec_path, weights)
        x, _ = _read_inputs(input_path, spec, normalization)
        from .fit import Trainer

        preds = Trainer.predict_with(engine, x)
        out = out or os.path.splitext(input_path)[0] + ".predictions.npz"
        if os.path.exists(out):
            raise Failed(f"specc: error: {out} exists; choose another --out (specc never overwrites files)",
                         EXIT_USAGE)
        arrays: dict[str, np.ndarray] = {}
        for name, p in zip(spec.graph.outputs, preds):
            step = next(s for s in engine.steps if s.name == engine._resolve(name))
            act = step.layer.output_activation()
            arrays[f"{name}_probabilities" if act in ("softmax", "sigmoid") else name] = p
            if act == "softmax":
                arrays[f"{name}_label"] = np.argmax(p, axis=-1)
            elif act == "sigmoid" and p.shape[-1] == 1:
                arrays[f"{name}_label"] = (p[..., 0] > 0.5).astype(np.int64)
        if out.endswith(".csv"):
            columns, cols = [], []
            for key, a in arrays.items():
                a2 = a.reshape(len(a), -1)
                names = [key] if a2.shape[1] == 1 else [f"{key}_{j}" for j in range(a2.shape[1])]
                columns += names
                cols.append(a2)
            table = np.concatenate([c.astype(np.float64) for c in cols], axis=1)
            lines = [",".join(columns)] + [",".join(repr(float(v)) if not float(v).is_integer() else str(int(v))
                                                    for v in row) for row in table]
            atomic_write_text(out, "\n".join(lines) + "\n")
        else:
            import io

            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write_bytes(out, buf.getvalue())
    except Failed as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    print(f"Predictions for {len(x[0])} samples written to {out}")
    return EXIT_OK
