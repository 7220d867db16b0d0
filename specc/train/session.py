"""`specc train`: a spec in, a run directory out.

Order of work: validate the spec (with --set overrides) -> load and check the data -> build and
initialise the model -> create the run directory -> fit, checkpointing after every epoch -> final
weights, test metrics, curves. Ctrl-C stops after the current step and writes a checkpoint that
`--resume` continues from, reaching the same weights as an uninterrupted run.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
import signal
import sys
from dataclasses import dataclass

import numpy as np

from ..spec import SpecError, render
from ..spec.overrides import apply_overrides
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


def _print_errors(errors: list[SpecError]) -> None:
    print(render(errors, "text"), file=sys.stderr)


def _spec_error(spec: Spec, path: tuple, message: str) -> SpecError:
    """A training-time problem (data, callbacks) positioned in the spec like a validation error."""
    from ..spec.validate import Collector

    collector = Collector(spec.file, spec.positions)
    collector.add(path, message)
    return collector.errors[0]


def _check_monitors(spec: Spec, has_validation: bool) -> list[SpecError]:
    """A callback watching val_* needs validation data, and TensorBoard its writer; say so before training,
    not after."""
    errors = []
    for i, cb in enumerate(spec.callbacks):
        if cb.type == "TensorBoard":
            from .tensorboard import MissingWriter, writer_class

            try:
                writer_class()
            except MissingWriter as exc:
                errors.append(_spec_error(spec, ("fit", "callbacks", i, "type"), str(exc)))
        monitor = getattr(cb, "monitor", None)
        if monitor and monitor.startswith("val_") and not has_validation:
            errors.append(_spec_error(spec, ("fit", "callbacks", i, "monitor"),
                                      f"{cb.type} monitors {monitor!r}, but there is no validation data; set "
                                      f"fit.validation_split (e.g. 0.1) or monitor {monitor[4:]!r}"))
    return errors


class _StopSignals:
    """The first SIGINT (Ctrl-C) or SIGTERM (what schedulers and containers send before they kill):
    finish the current step, checkpoint, exit 130. A second one stops at once."""

    def __init__(self, trainer):
        self.trainer, self.previous = trainer, {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.trainer.interrupt_requested:
            raise KeyboardInterrupt
        self.trainer.interrupt_requested = True
        what = "Interrupted" if signum == signal.SIGINT else f"Terminated ({signal.Signals(signum).name})"
        again = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{what}: stopping after the current step ({again} again to stop at once)...",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False


def _rng_state(rng) -> dict:
    return rng.bit_generator.state


CHECKPOINT = "checkpoint"


def write_checkpoint(run_dir: str, trainer, history, callbacks) -> None:
    """checkpoint/arrays-<epoch>-<step>.npz, then checkpoint/state.json naming it, each written atomically.
    Replacing state.json is the commit: until then the previous state.json and the arrays it names are
    untouched, so a write that fails (a full disk) or a kill at any moment leaves the last complete
    checkpoint. Arrays files no state.json names are removed afterwards."""
    from .run import atomic_write_json, atomic_write_npz

    ckpt = os.path.join(run_dir, CHECKPOINT)
    loop = trainer.loop_state
    arrays_name = f"arrays-{loop['epoch']}-{loop['step']}.npz"
    arrays = {"params": trainer.engine.params, **{f"opt/{k}": v for k, v in trainer.optimizer.state_arrays().items()}}
    atomic_write_npz(os.path.join(ckpt, arrays_name), arrays)
    state = {
        "arrays": arrays_name,
        "loop": loop,
        "history": {"epoch": history.epoch, "history": history.history},
        "rng": _rng_state(trainer.rng),
        "dropout_rng": _rng_state(trainer.dropout_rng),
        "callbacks": [_jsonable_state(cb.state()) for cb in callbacks],
    }
    atomic_write_json(os.path.join(ckpt, "state.json"), state)
    for name in os.listdir(ckpt):
        if name.startswith("arrays") and name.endswith(".npz") and name != arrays_name:
            try:
                os.remove(os.path.join(ckpt, name))
            except OSError:
                pass  # a stale arrays file costs space, not correctness


def _is_int(v) -> bool:
    return type(v) is int and v >= 0


def _is_number(v) -> bool:
    return type(v) in (int, float)


def _state_problem(state) -> bool:
    """Whether a checkpoint's state.json is not one write_checkpoint wrote: its fields reach the training
    loop, so each has the type the loop gives it (the file may have been edited or damaged)."""
    if not (isinstance(state, dict) and all(k in state for k in ("loop", "history", "rng", "dropout_rng", "callbacks"))
            and isinstance(state.get("arrays", ""), str) and isinstance(state["callbacks"], list)
            and all(isinstance(s, dict) for s in state["callbacks"])
            and isinstance(state["rng"], dict) and isinstance(state["dropout_rng"], dict)):
        return True
    loop, history = state["loop"], state["history"]
    if not (isinstance(loop, dict) and _is_int(loop.get("epoch")) and _is_int(loop.get("step", 0))):
        return True
    if loop.get("step", 0) and not (
            isinstance(loop.get("order"), list) and all(_is_int(i) for i in loop["order"])
            and _is_number(loop.get("total_sum")) and _is_int(loop.get("seen"))
            and isinstance(loop.get("out_sums"), list) and all(_is_number(v) for v in loop["out_sums"])
            and isinstance(loop.get("metrics"), list)
            and all(isinstance(ms, list) and all(isinstance(m, dict) for m in ms) for ms in loop["metrics"])):
        return True
    return not (isinstance(history, dict) and isinstance(history.get("epoch"), list)
                and all(_is_int(e) for e in history["epoch"]) and isinstance(history.get("history"), dict)
                and all(isinstance(v, list) and all(_is_number(x) for x in v) for v in history["history"].values()))


def _load_checkpoint(run_dir: str, state: dict, engine, trainer, callbacks) -> None:
    """The checkpoint's arrays, random generators and callback states into a freshly built model; a
    checkpoint that does not fit it (edited by hand, or damaged) is a Failed naming the checkpoint."""
    from .run import read_npz

    ckpt = os.path.join(run_dir, CHECKPOINT)
    path = os.path.join(ckpt, state.get("arrays", "arrays.npz"))  # arrays.npz: checkpoints before the name
    try:
        _, arrays = read_npz(path, "a checkpoint's arrays")
        params = arrays["params"]
        if params.shape != engine.params.shape:
            raise ValueError(f"it holds {params.size:,} parameters, the model has {engine.params.size:,}")
        engine.params[...] = params
        trainer.optimizer.load_state_arrays({k[4:]: a for k, a in arrays.items() if k.startswith("opt/")})
        trainer.rng.bit_generator.state = state["rng"]
        trainer.dropout_rng.bit_generator.state = state["dropout_rng"]
        if len(state["callbacks"]) != len(callbacks):
            raise ValueError(f"it has {len(state['callbacks'])} callback states, the spec {len(callbacks)} callbacks")
        for cb, cb_state in zip(callbacks, state["callbacks"]):
            cb.trainer = trainer
            cb.load_state(_restore_state(cb_state))
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise Failed(f"specc: error: the checkpoint in {ckpt} does not fit the model, or is damaged: {exc}\n"
                     f"Start a new run instead: specc train {os.path.join(run_dir, 'spec.yaml')}") from None


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


# --- the environment and the machine -----------------------------------------------------------------------


def threads_from_environment() -> int | None:
    """$SPECC_THREADS as a thread count (None when unset or empty); anything but a positive whole number is
    a usage error, never silently ignored."""
    from ..runtime import threads_from_environment as parse

    try:
        return parse()
    except ValueError:
        raw = os.environ.get("SPECC_THREADS")
        raise Failed(f"specc: error: SPECC_THREADS={raw!r} is not a thread count: set it to a positive whole "
                     f"number (e.g. SPECC_THREADS=2), or unset it to use every core this process may run on",
                     EXIT_USAGE) from None


def available_memory() -> tuple[int, str] | None:
    """(bytes this process may still allocate, where that figure comes from), or None when unknown: the
    kernel's MemAvailable, or the headroom under the memory limit of the process's cgroup (a container's
    limit) when that is smaller."""
    found = []
    meminfo = _meminfo_available()
    if meminfo is not None:
        found.append((meminfo, "available on this machine"))
    cgroup = _cgroup_headroom()
    if cgroup is not None:
        found.append((cgroup, "left under this process's cgroup memory limit"))
    return min(found) if found else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # other Unixes: free pages (less than Linux's MemAvailable, which counts reclaimable cache)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


def _cgroup_headroom() -> int | None:
    """The smallest limit - usage over the process's memory cgroup and its parents (v2 or v1). Usage
    counts inactive file cache, which the kernel drops before failing an allocation, so it is left out."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "":
            base, files = "/sys/fs/cgroup", ("memory.max", "memory.current", "inactive_file")
        elif "memory" in parts[1].split(","):
            base, files = "/sys/fs/cgroup/memory", ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                    "total_inactive_file")
        else:
            continue
        path = os.path.normpath(base + "/" + parts[2].lstrip("/"))
        while path.startswith(base):
            headroom = _headroom(path, *files)
            if headroom is not None:
                best = headroom if best is None else min(best, headroom)
            if path == base:
                break
            path = os.path.dirname(path)
    return best


def _headroom(folder: str, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        with open(os.path.join(folder, limit_file), encoding="ascii") as fh:
            raw = fh.read().strip()
        if raw == "max" or int(raw) >= _UNLIMITED:
            return None
        with open(os.path.join(folder, usage_file), encoding="ascii") as fh:
            usage = int(fh.read())
        inactive = 0
        with open(os.path.join(folder, "memory.stat"), encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    inactive = int(value)
        return max(0, int(raw) - max(0, usage - inactive))
    except (OSError, ValueError):
        return None


def check_memory(spec: Spec, batch_size: int) -> SpecError | None:
    """An error at the largest layer when the summary's training-memory estimate at `batch_size` exceeds
    the memory available, with the largest batch size that would fit; None when it fits or when the
    available memory is unknown. Checked before the data is loaded and anything is allocated."""
    import math

    from ..summary import BYTES_PER_VALUE, batch_shape, estimates, readable_size

    need = estimates(spec.graph, batch_size)["training_bytes"]
    found = available_memory()
    if found is None or need <= found[0]:
        return None
    available, where = found
    fixed = estimates(spec.graph, 0)["training_bytes"]  # weights, gradients, optimizer moments
    per_sample = estimates(spec.graph, 1)["training_bytes"] - fixed  # activations, their gradients, inputs
    fits = (available - fixed) // per_sample if available > fixed and per_sample else 0

    def layer_bytes(leaf) -> int:
        values = math.prod(d or 1 for d in leaf.output_shape or ())
        return (4 * sum(w.size for w in leaf.weights) + 2 * batch_size * values) * BYTES_PER_VALUE

    largest = max((leaf for node in spec.graph.nodes for leaf in node.leaves()), key=layer_bytes)
    if fits >= 1:
        advice = f"the largest batch size that fits is {fits:,} (--set fit.batch_size={fits})"
    else:
        advice = (f"no batch size fits: the weights, their gradients and the optimizer's moments alone need "
                  f"{readable_size(fixed)}, and one sample {readable_size(per_sample)} more; make the model smaller")
    return _spec_error(spec, largest.path, (
        f"training this model needs about {readable_size(need)} of memory at batch size {batch_size:,} (the "
        f"estimate `specc summary` prints), more than the {readable_size(available)} {where}. The largest layer "
        f"is {largest.name} ({largest.type}, output {batch_shape(largest.output_shape)}, "
        f"{sum(w.size for w in largest.weights):,} params) with about {readable_size(layer_bytes(largest))}; "
        f"{advice}"))


# --- train ----------------------------------------------------------------------------------------------


def train(opts: Options) -> int:
    from contextlib import ExitStack

    with ExitStack() as cleanup:  # the run directory's lock, released on every way out
        try:
            return _train(opts, cleanup)
        except Failed as exc:
            print(exc.message, file=sys.stderr)
            return exc.code
        except MemoryError:
            print("specc: error: out of memory before training started (a MemoryError while loading the data "
                  "or building the model). `specc summary SPEC` estimates the memory training needs; try a "
                  "smaller fit.batch_size, a smaller model or less data.", file=sys.stderr)
            return EXIT_INVALID


def _read_json(path: str, what: str, code: int = EXIT_USAGE) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except FileNotFoundError:
        raise Failed(f"specc: error: {path} is missing: this is not a complete {what}", code) from None
    except (OSError, ValueError) as exc:
        raise Failed(f"specc: error: cannot read {path} ({exc}); the {what} is damaged", code) from None
    if not isinstance(value, dict):
        raise Failed(f"specc: error: {path} is not a JSON object; the {what} is damaged", code)
    return value


def _out_error_code(exc: OSError) -> int:
    """A path the user gave that cannot hold a run is a usage error; a full or failing disk is not."""
    usage = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENAMETOOLONG,
             errno.ENOENT}
    return EXIT_USAGE if exc.errno in usage else EXIT_INVALID


def _os_problem(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    if exc.filename:
        text += f": {exc.filename}"
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        text += " (the disk is full: free some space)"
    return text


def _lock_run(run_dir: str, cleanup) -> None:
    from .run import RunBusy, RunLock

    try:
        lock = RunLock(run_dir).acquire()
    except RunBusy as exc:
        raise Failed(f"specc: error: {exc}", EXIT_USAGE) from None
    except OSError as exc:
        raise Failed(f"specc: error: cannot lock {run_dir}: {_os_problem(exc)}", _out_error_code(exc)) from None
    cleanup.callback(lock.release)


def _resume_changes(run_dir: str, env: dict, spec: Spec, loop: dict) -> tuple[str, list[str]]:
    """(the resolved spec to record, the changes to record) when resuming `spec` is safe; a Failed naming
    each change otherwise. The spec is RUN/spec.yaml with the run's --set overrides and the new ones, so an
    edit of that file, a new --set or a different --seed all show up here."""
    import yaml

    from ..spec.resolve import resolved_yaml
    from .run import RESUMABLE_CHANGES, spec_changes, text_hash

    text = resolved_yaml(spec)
    recorded_path = os.path.join(run_dir, "resolved.yaml")
    try:
        with open(recorded_path, encoding="utf-8") as fh:
            recorded = fh.read()
    except (OSError, UnicodeDecodeError):  # removed, or damaged: what changed cannot be listed from it
        recorded = None
    recorded_hash = env.get("resolved_sha256") or (text_hash(recorded) if recorded is not None else None)
    if recorded_hash is None or text_hash(text) == recorded_hash:
        return text, []
    if recorded is None or text_hash(recorded) != recorded_hash:
        raise Failed(f"specc: error: cannot resume {run_dir}: its spec changed since the run started, and "
                     f"{recorded_path} was changed or removed too, so what changed cannot be listed. A resumed "
                     f"run must train the same model; start a new run instead: specc train "
                     f"{os.path.join(run_dir, 'spec.yaml')}")
    changes = spec_changes(yaml.safe_load(recorded), yaml.safe_load(text))
    lines = [f"  {path}: {old!r} -> {new!r}" for path, old, new in changes]
    refused = [c for c in changes if c[0] not in RESUMABLE_CHANGES]
    if refused:
        shown = lines[:12] + ([f"  ... and {len(lines) - 12} more"] if len(lines) > 12 else [])
        raise Failed("\n".join([
            f"specc: error: cannot resume {run_dir}: the spec differs from the one the run started with "
            f"(its spec.yaml was edited, or --set/--seed changed it):", *shown,
            f"The checkpoint belongs to the original model and settings; a resume may change only "
            f"{', '.join(RESUMABLE_CHANGES)}. Undo the change, or start a new run: specc train "
            f"{os.path.join(run_dir, 'spec.yaml')}"]))
    epochs = spec.fit.epochs if spec.fit else 1
    done = loop["epoch"] + (1 if loop.get("step") else 0)  # an epoch in progress must be finished
    if epochs < done:
        raise Failed(f"specc: error: cannot resume {run_dir} with fit.epochs={epochs}: the run has "
                     f"{'completed' if not loop.get('step') else 'started'} {done} epoch(s); give at least {done}")
    return text, [line.strip() for line in lines]


def _train(opts: Options, cleanup) -> int:
    from ..data.prepare import load as load_data
    from ..data.sources import DataError
    from ..spec.resolve import resolved_yaml
    from .run import out_problem, text_hash

    env_threads = threads_from_environment()
    run_dir = None
    overrides = list(opts.overrides)
    if opts.resume:
        run_dir = opts.resume
        state_path = os.path.join(run_dir, CHECKPOINT, "state.json")
        if not os.path.exists(state_path):
            raise Failed(f"specc: error: {run_dir} has no checkpoint to resume (expected {state_path})", EXIT_USAGE)
        _lock_run(run_dir, cleanup)  # before reading the checkpoint: no other process writes it from here on
        env = _read_json(os.path.join(run_dir, "environment.json"), "run directory")
        state = _read_json(state_path, "checkpoint")
        if _state_problem(state):
            raise Failed(f"specc: error: {state_path} is damaged (not a checkpoint specc wrote); it cannot be "
                         f"resumed")
        # environment.json is the run's record, but a file the user can edit: its fields are checked
        recorded = env.get("overrides", [])
        if not (isinstance(recorded, list) and all(isinstance(o, str) for o in recorded)
                and isinstance(env.get("resumes", []), list)
                and (env.get("threads") is None or type(env.get("threads")) is int and env["threads"] > 0)
                and (env.get("seed") is None or type(env.get("seed")) is int)
                and isinstance(env.get("spec_path", ""), str)):
            raise Failed(f"specc: error: {os.path.join(run_dir, 'environment.json')} is damaged (overrides, "
                         f"resumes, threads, seed or spec_path of the wrong type); it cannot be resumed")
        spec_file = os.path.join(run_dir, "spec.yaml")
        overrides = recorded + overrides
        opts.seed = env.get("seed") if opts.seed is None else opts.seed
        threads = opts.threads or env.get("threads") or env_threads
        source_name = env.get("spec_path", spec_file)
    else:
        spec_file = opts.spec_path
        if not os.path.isfile(spec_file):
            raise Failed(f"specc: error: no such file: {spec_file}", EXIT_USAGE)
        problem = out_problem(opts.out)
        if problem:
            raise Failed(f"specc: error: --out {opts.out}: {problem}, so no run directory can be created there",
                         EXIT_USAGE)
        threads = opts.threads or env_threads
        source_name = spec_file
    try:
        with open(spec_file, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise Failed(f"specc: error: cannot read {spec_file}: {exc.strerror}", EXIT_USAGE) from None
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
    fit = spec.fit
    batch_size = fit.batch_size if fit else 32
    if opts.resume:
        resolved, changes = _resume_changes(run_dir, env, spec, state["loop"])
    else:
        resolved, changes = resolved_yaml(spec), []
    problem = check_memory(spec, batch_size)
    if problem:
        _print_errors([problem])
        return EXIT_INVALID
    try:
        data = load_data(spec)
    except DataError as exc:
        _print_errors([_spec_error(spec, exc.path, exc.message)])
        return EXIT_INVALID
    from .fit import History
    has_val = bool(fit and fit.validation_split > 0)
    errors = _check_monitors(spec, has_val)
    if errors:
        _print_errors(errors)
        return EXIT_INVALID

    # The heavy part starts here: Numba, the engine, the optimizer.
    from ..engine import Engine
    from ..kernels import configure_threads
    from . import callbacks as C
    from .fit import Trainer
    from .run import atomic_write_bytes, atomic_write_json, atomic_write_text, environment, new_run_dir

    threads = configure_threads(threads)
    engine = Engine(spec.graph)
    engine.initialize(spec.seed)
    trainer = Trainer(engine, spec.compile, spec.seed)
    callbacks = [C.build(cfg) for cfg in spec.callbacks]
    history = History()
    resume_loop = None
    initial_epoch = 0
    if opts.resume:
        _load_checkpoint(run_dir, state, engine, trainer, callbacks)
        history.epoch = state["history"]["epoch"]
        history.history = state["history"]["history"]
        loop = state["loop"]
        initial_epoch = loop["epoch"]
        resume_loop = loop if loop.get("step") else None
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        record = {"started": started, "command": sys.argv, "threads": threads}
        env = env | {"overrides": overrides, "resolved_sha256": text_hash(resolved),
                     "resumes": env.get("resumes", []) + [record | ({"changes": changes} if changes else {})]}
        try:
            if changes:
                atomic_write_text(os.path.join(run_dir, "resolved.yaml"), resolved)
            atomic_write_json(os.path.join(run_dir, "environment.json"), env)
        except OSError as exc:
            raise Failed(f"specc: error: cannot update {run_dir}: {_os_problem(exc)}; the checkpoint is "
                         f"untouched, resume again when this is fixed") from None
        epochs = fit.epochs if fit else 1
        where = (f"at epoch {initial_epoch + 1}" + (f", step {loop['step'] + 1}" if resume_loop else "")
                 if initial_epoch < epochs else "after its last epoch, to write its results")
        print(f"Resuming {run_dir} {where}" + (f" (changed: {'; '.join(changes)})" if changes else ""), flush=True)
    else:
        try:
            run_dir = new_run_dir(opts.out, spec.name)
        except OSError as exc:
            raise Failed(f"specc: error: cannot create a run directory under {opts.out}: {_os_problem(exc)}",
                         _out_error_code(exc)) from None
        _lock_run(run_dir, cleanup)
        env = environment(spec.seed, threads) | {"spec_path": os.path.abspath(source_name), "overrides": overrides,
                                                 "resolved_sha256": text_hash(resolved)}
        try:
            atomic_write_bytes(os.path.join(run_dir, "spec.yaml"), raw)
            atomic_write_text(os.path.join(run_dir, "resolved.yaml"), resolved)
            atomic_write_json(os.path.join(run_dir, "environment.json"), env)
            if data.normalization:
                atomic_write_json(os.path.join(run_dir, "normalization.json"), data.normalization)
        except OSError as exc:
            cleanup.close()  # unlock, then remove the run that never started
            shutil.rmtree(run_dir, ignore_errors=True)
            raise Failed(f"specc: error: cannot write the new run directory: {_os_problem(exc)}; nothing was "
                         f"trained and {run_dir} was removed", _out_error_code(exc)) from None
    trainer.run_dir = run_dir
    return _fit_and_save(opts, spec, data, trainer, callbacks, history, run_dir,
                         initial_epoch, resume_loop, state["loop"] if opts.resume else None)


def _fit_and_save(opts, spec, data, trainer, callbacks, history, run_dir, initial_epoch, resume_loop,
                  checkpointed) -> int:
    """Train into `run_dir` and write its results. Every way training can stop early (a signal, a full
    disk, no memory, divergence) ends in a message saying what is kept: the last complete checkpoint and
    the command that resumes from it."""
    from .fit import Diverged, Interrupted
    from .progress import Progress
    from .run import atomic_write_json, plot_curves, save_weights, write_history

    engine, fit = trainer.engine, spec.fit
    has_val = bool(fit and fit.validation_split > 0)
    batch_size = fit.batch_size if fit else 32
    saved = {"loop": checkpointed}  # the loop_state of the last complete checkpoint on disk
    best = {"value": None}
    monitor = "val_loss" if has_val else "loss"

    def checkpoint(hist) -> None:
        write_checkpoint(run_dir, trainer, hist, callbacks)
        saved["loop"] = dict(trainer.loop_state)

    def epoch_done(epoch, hist):
        # weights.best and history first, the checkpoint last: a resume from the previous checkpoint
        # retrains this epoch and rewrites them the same way
        value = hist.history[monitor][-1]
        if best["value"] is None or value < best["value"]:
            best["value"] = value
            save_weights(os.path.join(run_dir, "weights.best.npz"), engine)
        write_history(run_dir, hist)
        checkpoint(hist)

    def kept() -> str:
        loop = saved["loop"]
        if loop is None:
            return (f"No checkpoint had been written yet, so there is nothing to resume; {run_dir} holds what "
                    f"was written. Start again with: specc train {os.path.join(run_dir, 'spec.yaml')}")
        where = (f"epoch {loop['epoch'] + 1}, step {loop['step']}" if loop.get("step")
                 else f"the end of epoch {loop['epoch']}" if loop["epoch"] else "the start")
        return (f"The last complete checkpoint ({where}) is in {os.path.join(run_dir, CHECKPOINT)}\n"
                f"Resume with: specc train --resume {run_dir}")

    trainer.epoch_done = epoch_done
    if opts.resume and history.history.get(monitor):
        best["value"] = min(history.history[monitor])
    verbose = 0 if opts.quiet else (fit.verbose if fit else "auto")
    try:
        try:
            with _StopSignals(trainer):
                trainer.fit(data.x_train, data.y_train, batch_size=batch_size, epochs=fit.epochs if fit else 1,
                            validation_split=fit.validation_split if fit else 0.0,
                            shuffle=fit.shuffle if fit else True, class_weight=fit.class_weight if fit else None,
                            callbacks=callbacks, verbose=verbose, initial_epoch=initial_epoch, history=history,
                            resume=resume_loop)
        except Interrupted:
            if history.epoch:
                write_history(run_dir, history)
            checkpoint(history)
            print(f"Stopped. Checkpoint written to {os.path.join(run_dir, CHECKPOINT)}\n"
                  f"Resume with: specc train --resume {run_dir}", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        except ValueError as exc:  # the data or a checkpoint does not fit the model (train/checks.py says how)
            print(f"specc: error: {exc}\n{kept()}", file=sys.stderr, flush=True)
            return EXIT_INVALID
        except Diverged as exc:
            print(f"specc: error: the loss became {exc.value} at epoch {exc.epoch + 1}, step {exc.step}: training "
                  f"diverged.\nCheck the learning rate (try 10x smaller), the input scaling (data.normalize: true), "
                  f"and the data for extreme values. Run directory: {run_dir}", file=sys.stderr)
            if history.epoch:
                write_history(run_dir, history)
            return EXIT_INVALID

        save_weights(os.path.join(run_dir, "weights.final.npz"), engine)
        if not os.path.exists(os.path.join(run_dir, "weights.best.npz")):
            save_weights(os.path.join(run_dir, "weights.best.npz"), engine)
        test = trainer.evaluate(data.x_test, data.y_test, batch_size) if len(data.x_test[0]) else {}
        atomic_write_json(os.path.join(run_dir, "test_metrics.json"), {"samples": int(len(data.x_test[0])), **test})
        if history.epoch:
            write_history(run_dir, history)
            plot_curves(run_dir, history, spec.name)
        shutil.rmtree(os.path.join(run_dir, CHECKPOINT), ignore_errors=True)  # finished: nothing to resume
    except KeyboardInterrupt:
        print(f"Stopped at once. {kept()}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"specc: error: training stopped: {_os_problem(exc)}\n{kept()}", file=sys.stderr, flush=True)
        return EXIT_INVALID
    except MemoryError:
        print(f"specc: error: training stopped: out of memory (MemoryError). `specc summary` estimates the memory "
              f"training needs; a new run with a smaller fit.batch_size or a smaller model needs less.\n"
              f"{kept()}", file=sys.stderr, flush=True)
        return EXIT_INVALID
    progress = Progress(0 if opts.quiet else 1)
    if test:
        progress.message("Test: " + " - ".join(f"{k}: {v:.4f}" for k, v in test.items()))
    print(f"Run saved to {run_dir}", flush=True)
    return EXIT_OK


# --- evaluate / predict ----------------------------------------------------------------------------------


def _model_from_run(spec_path: str, weights: str):
    """(spec, engine, normalization) for a spec and a run directory or weights file."""
    from ..spec import load_spec

    env_threads = threads_from_environment()
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

    configure_threads(env_threads)
    engine = Engine(spec.graph)
    try:
        load_weights(weights_file, engine)
    except ValueError as exc:
        raise Failed(f"specc: error: --weights: {exc}") from None
    norm_file = os.path.join(weights if os.path.isdir(weights) else os.path.dirname(weights), "normalization.json")
    normalization = None
    if os.path.isfile(norm_file):
        normalization = _read_json(norm_file, "run directory", EXIT_INVALID)
        try:
            if not isinstance(normalization["inputs"], list) or not normalization["inputs"]:
                raise ValueError("no inputs")
            [(np.asarray(s["mean"], np.float32), np.asarray(s["std"], np.float32)) for s in normalization["inputs"]]
        except (KeyError, TypeError, ValueError):
            raise Failed(f"specc: error: {norm_file} is damaged: expected {{\"inputs\": [{{\"mean\": [...], "
                         f"\"std\": [...]}}]}}") from None
    return spec, engine, normalization


def _read_inputs(path: str, spec: Spec, normalization) -> tuple[list[np.ndarray], np.ndarray | None]:
    """x (and y if present) from an .npz with arrays `x`[, `y`], shaped and normalised like training."""
    from .run import read_npz

    if not os.path.exists(path):
        raise Failed(f"specc: error: --input: no such file: {path}", EXIT_USAGE)
    if os.path.isdir(path):
        raise Failed(f"specc: error: --input: {path} is a directory; give an .npz file with an array 'x'",
                     EXIT_USAGE)
    try:
        files, arrays = read_npz(path, "an .npz with an array 'x'", ["x", "y"])
    except ValueError as exc:
        raise Failed(f"specc: error: --input: {exc}") from None
    if "x" not in arrays:
        raise Failed(f"specc: error: {path} has no array 'x' (it has: {', '.join(files) or 'no arrays'})")
    try:
        x = arrays["x"].astype(np.float32)
    except (TypeError, ValueError):
        raise Failed(f"specc: error: {path}: array 'x' holds {arrays['x'].dtype} values, not numbers") from None
    if x.ndim < 1 or len(x) == 0:
        raise Failed(f"specc: error: {path}: array 'x' has shape {x.shape}; expected (samples, *input shape)")
    y = arrays.get("y")
    shape = spec.graph.inputs[0].output_shape
    if None not in shape and x.shape[1:] != tuple(shape):
        if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
            raise Failed(f"specc: error: {path}: samples of shape {x.shape[1:]} do not fit the model input {shape}")
        x = x.reshape(len(x), *shape)
    if normalization:
        stats = normalization["inputs"][0]
        mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
        try:
            x = ((x - mean) / std).astype(np.float32)
        except ValueError:  # the run's normalization.json was written for other inputs, or edited
            raise Failed(f"specc: error: the run's normalization.json has statistics of shape {mean.shape} / "
                         f"{std.shape}, which do not fit samples of shape {x.shape[1:]}: it does not belong to "
                         f"this model's input") from None
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
        try:
            results = trainer.evaluate(x, ys, spec.fit.batch_size if spec.fit else 32)
        except ValueError as exc:  # the data does not fit the model (train/checks.py says how)
            raise Failed(f"specc: error: {exc}") from None
    except Failed as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    if fmt == "json":
        print(json.dumps({"samples": int(len(x[0])), **results}, indent=2))
    else:
        print(f"{len(x[0])} samples - " + " - ".join(f"{k}: {v:.4f}" for k, v in results.items()))
    return EXIT_OK


def predict(spec_path: str, weights: str, input_path: str, out: str | None) -> int:
    from .run import atomic_write_npz, atomic_write_text, out_problem

    try:
        out = out or os.path.splitext(input_path)[0] + ".predictions.npz"
        if os.path.exists(out):  # before any work: nothing is computed for nothing
            raise Failed(f"specc: error: {out} exists; choose another --out (specc never overwrites files)",
                         EXIT_USAGE)
        problem = out_problem(os.path.dirname(os.path.abspath(out)))
        if problem:
            raise Failed(f"specc: error: --out {out}: {problem}", EXIT_USAGE)
        spec, engine, normalization = _model_from_run(spec_path, weights)
        x, _ = _read_inputs(input_path, spec, normalization)
        from .fit import Trainer

        try:
            preds = Trainer.predict_with(engine, x)
        except ValueError as exc:  # the data does not fit the model (train/checks.py says how)
            raise Failed(f"specc: error: --input: {exc}") from None
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
            atomic_write_npz(out, arrays)
    except OSError as exc:
        print(f"specc: error: cannot write the predictions: {_os_problem(exc)}", file=sys.stderr)
        return _out_error_code(exc)
    except Failed as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    print(f"Predictions for {len(x[0])} samples written to {out}")
    return EXIT_OK
