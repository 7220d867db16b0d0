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
        parallel = self.trainer.parallel
        if self.trainer.interrupt_requested or (parallel is not None and parallel.signal_pending):
            raise KeyboardInterrupt
        if parallel is None:
            self.trainer.interrupt_requested = True
        else:  # every rank learns of it with the next step's Allreduce, and stops after that same step
            parallel.signal_pending = True
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


def _load_checkpoint(resumed, engine, trainer, callbacks) -> None:
    """The checkpoint's arrays, random generators and callback states into a freshly built model; a
    checkpoint that does not fit it (edited by hand, or damaged) is a Failed naming the checkpoint."""
    ckpt = os.path.join(resumed.path, CHECKPOINT)
    state = resumed.state
    try:
        if resumed.arrays is None:
            raise ValueError(resumed.arrays_problem)
        params = resumed.arrays["params"]
        if params.shape != engine.params.shape:
            raise ValueError(f"it holds {params.size:,} parameters, the model has {engine.params.size:,}")
        engine.params[...] = params
        trainer.optimizer.load_state_arrays({k[4:]: a for k, a in resumed.arrays.items() if k.startswith("opt/")})
        trainer.rng.bit_generator.state = state["rng"]
        trainer.dropout_rng.bit_generator.state = state["dropout_rng"]
        if len(state["callbacks"]) != len(callbacks):
            raise ValueError(f"it has {len(state['callbacks'])} callback states, the spec {len(callbacks)} callbacks")
        for cb, cb_state in zip(callbacks, state["callbacks"]):
            cb.trainer = trainer
            cb.load_state(_restore_state(cb_state))
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise Failed(f"specc: error: the checkpoint in {ckpt} does not fit the model, or is damaged: {exc}\n"
                     f"Start a new run instead: specc train {os.path.join(resumed.path, 'spec.yaml')}") from None


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
#
# train() = reopen the run (--resume) or nothing -> prepare (spec, data, model) -> create the run directory
# (or record the resume) -> fit, a checkpoint after each epoch -> finish (weights, test metrics, curves).
# Run by every rank of a multi-process run (mpiexec, srun): each step that may fail on one rank (a spec or
# data problem, a file rank 0 cannot write) ends in an agreement, so all ranks stop together and rank 0
# alone prints the problem; only rank 0's RunDirectory writes.


def train(opts: Options) -> int:
    from contextlib import ExitStack

    try:
        group = _join_group()
    except Failed as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    with ExitStack() as cleanup:  # the run directory's lock, released on every way out
        if group is not None and group.rank:
            _silence(cleanup)  # rank 0 prints for everyone
        try:
            return _train(opts, cleanup, group)
        except Failed as exc:
            print(exc.message, file=sys.stderr)
            return exc.code


def _join_group():
    """The MPI world when this process is one of several (launched by mpiexec or srun), else None."""
    from .. import distributed

    if distributed.launched_size() <= 1:
        return None
    try:
        group = distributed.init()
    except distributed.Unavailable as exc:
        raise Failed(f"specc: error: {exc}", EXIT_USAGE) from None
    return group if group.size > 1 else None


def _silence(cleanup) -> None:
    import contextlib
    import io

    cleanup.enter_context(contextlib.redirect_stdout(io.StringIO()))
    cleanup.enter_context(contextlib.redirect_stderr(io.StringIO()))


def _together(group, step, *args, only_rank0: bool = False):
    """step(*args) on every rank (or rank 0 alone), then, in a multi-process run, every rank's outcome
    agreed: a Failed on any rank becomes the same Failed on all, its message printed by rank 0 alone.
    Returns step's value (None on the ranks that did not run it)."""
    if group is None:
        return step(*args)
    failure, value = None, None
    if not only_rank0 or group.rank == 0:
        try:
            value = step(*args)
        except Failed as exc:
            failure = exc
        except MemoryError:
            failure = Failed(_OUT_OF_MEMORY_BEFORE)
    code, where, message = group.agree(failure.code if failure else None, failure.message if failure else "")
    if code is None:
        return value
    if where and not message.startswith(f"rank {where}"):
        message = f"rank {where} of {group.size}: {message}"
    raise Failed(message if group.rank == 0 else "", code)


_OUT_OF_MEMORY_BEFORE = ("specc: error: out of memory before training started (a MemoryError while loading the data "
                         "or building the model). `specc summary SPEC` estimates the memory training needs; try a "
                         "smaller fit.batch_size, a smaller model or less data.")


def _train(opts: Options, cleanup, group) -> int:
    try:
        resumed = None
        if opts.resume:
            resumed = _together(group, Resumed.read, opts.resume, cleanup, only_rank0=True)
            if group is not None:
                resumed = group.bcast(resumed)
        job = _together(group, _prepare, opts, resumed, group)
        if job.warmup is not None:
            cleanup.callback(job.warmup.finish)  # if training never reaches its first step
        if resumed is None:
            run = _together(group, RunDirectory.create, opts.out, job, cleanup, only_rank0=True)
        else:
            run = _together(group, RunDirectory.reopened, resumed, job, only_rank0=True)
    except MemoryError:
        raise Failed(_OUT_OF_MEMORY_BEFORE) from None
    if group is not None:
        run = run or RunDirectory(None, writer=False, saved=job.checkpointed)
        run.path = group.bcast(run.path)  # for messages
    job.trainer.run_dir = run.path if run.writer else None
    if resumed is not None:
        print(job.resuming(run.path), flush=True)
    return _fit_and_finish(opts, job, run, group)


@dataclass
class Resumed:
    """What a resume reads from the run directory, by rank 0 alone (the other ranks get a copy): the
    spec as the run recorded it, environment.json, the checkpoint's state and arrays."""

    path: str
    raw: bytes
    env: dict
    state: dict
    recorded: str | None  # resolved.yaml, None when removed or not UTF-8
    arrays: dict | None
    arrays_problem: str = ""

    @classmethod
    def read(cls, run_dir: str, cleanup) -> Resumed:
        from .run import read_npz

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
        raw = _read_spec_bytes(spec_file)
        try:
            with open(os.path.join(run_dir, "resolved.yaml"), encoding="utf-8") as fh:
                resolved = fh.read()
        except (OSError, UnicodeDecodeError):  # removed, or damaged: what changed cannot be listed from it
            resolved = None
        arrays, problem = None, ""
        try:  # arrays.npz: checkpoints before the name
            _, arrays = read_npz(os.path.join(run_dir, CHECKPOINT, state.get("arrays", "arrays.npz")),
                                 "a checkpoint's arrays")
        except ValueError as exc:  # reported when the model is built, as any other misfit
            problem = str(exc)
        return cls(run_dir, raw, env, state, resolved, arrays, problem)


def _read_spec_bytes(spec_file: str) -> bytes:
    try:
        with open(spec_file, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise Failed(f"specc: error: cannot read {spec_file}: {exc.strerror}", EXIT_USAGE) from None


@dataclass
class Job:
    """A spec ready to train: validated, its data loaded and checked, the model built (and, on a resume,
    loaded from the checkpoint)."""

    spec: Spec
    fit: object  # the spec's fit section, or the schema's defaults when it has none
    raw: bytes
    source_name: str
    overrides: list[str]
    resolved: str
    changes: list[str]
    data: object
    trainer: object
    callbacks: list
    history: object
    threads: int
    processes: int
    initial_epoch: int = 0
    resume_loop: dict | None = None
    checkpointed: dict | None = None  # the loop_state of the checkpoint resumed from
    warmup: object = None  # the start-up's compile worker (train/warmup.py), while it runs

    def resuming(self, run_dir: str) -> str:
        epochs = self.fit.epochs
        where = (f"at epoch {self.initial_epoch + 1}" + (f", step {self.checkpointed['step'] + 1}"
                                                          if self.resume_loop else "")
                 if self.initial_epoch < epochs else "after its last epoch, to write its results")
        return f"Resuming {run_dir} {where}" + (f" (changed: {'; '.join(self.changes)})" if self.changes else "")


def fit_settings(spec: Spec):
    """The spec's fit section, or the schema's defaults (the one place they are written) without one."""
    from ..spec.schema import FitDef

    return spec.fit if spec.fit is not None else FitDef()


def _errors(errors: list[SpecError]) -> Failed:
    return Failed(render(errors, "text"))


def _prepare(opts: Options, resumed: Resumed | None, group) -> Job:
    """Validate the spec (with --set overrides), load and check the data, build the model: everything
    that can fail because of the spec or the data, before anything is written."""
    from ..spec.resolve import resolved_yaml

    env_threads = threads_from_environment()
    overrides = list(opts.overrides)
    processes = group.size if group is not None else 1
    if resumed is not None:
        env = resumed.env
        overrides = env.get("overrides", []) + overrides
        opts.seed = env.get("seed") if opts.seed is None else opts.seed
        # a thread count recorded by a run of another process count does not fit this one
        recorded = env.get("threads") if env.get("processes", 1) == processes else None
        threads = opts.threads or recorded or env_threads
        source_name = env.get("spec_path", os.path.join(resumed.path, "spec.yaml"))
        raw = resumed.raw
    else:
        if not os.path.isfile(opts.spec_path):
            raise Failed(f"specc: error: no such file: {opts.spec_path}", EXIT_USAGE)
        if group is None or group.rank == 0:
            from .run import out_problem

            problem = out_problem(opts.out)
            if problem:
                raise Failed(f"specc: error: --out {opts.out}: {problem}, so no run directory can be created "
                             f"there", EXIT_USAGE)
        threads = opts.threads or env_threads
        source_name = opts.spec_path
        raw = _read_spec_bytes(opts.spec_path)
    # The original path even on --resume: relative data paths start at the spec's own folder.
    spec, errors = apply_overrides(raw, overrides, source_name)
    if errors:
        raise _errors(errors)
    if opts.seed is not None:
        spec.seed = opts.seed
    if spec.compile is None:
        raise _errors([_spec_error(spec, (), "the spec has no `compile` section (optimizer, loss); add one to "
                                             "train it")])
    fit = fit_settings(spec)
    if resumed is not None:
        resolved, changes = _resume_changes(resumed, spec)
    else:
        resolved, changes = resolved_yaml(spec), []
    # each rank holds the weights and its share of a batch's activations
    problem = check_memory(spec, -(-fit.batch_size // processes))
    if problem:
        raise _errors([problem])
    warmup = None
    if group is None:  # a second process compiles kernels meanwhile, on a cold cache (train/warmup.py)
        from . import warmup as W

        warmup = W.start(spec, raw, source_name, overrides, fit.batch_size, threads)
    try:
        job = _build(spec, fit, raw, source_name, overrides, resolved, changes, threads, processes, resumed, group)
    except BaseException:
        if warmup is not None:
            warmup.finish()
        raise
    job.warmup = warmup
    return job


def _build(spec, fit, raw, source_name, overrides, resolved, changes, threads, processes, resumed, group) -> Job:
    from ..data.prepare import load as load_data
    from ..data.sources import DataError

    try:
        data = load_data(spec)
    except DataError as exc:
        raise _errors([_spec_error(spec, exc.path, exc.message)]) from None
    errors = _check_monitors(spec, fit.validation_split > 0)
    if errors:
        raise _errors(errors)

    # The heavy part starts here: Numba, the engine, the optimizer.
    from ..engine import Engine
    from ..kernels import configure_threads
    from . import callbacks as C
    from .fit import History, Trainer

    engine = Engine(spec.graph)
    engine.initialize(spec.seed)
    # Numba (and with it any compile a cold cache needs) only now: a compile worker (train/warmup.py) has
    # meanwhile compiled what importing the kernels compiles
    threads = configure_threads(threads or (group.default_threads() if group is not None else None))
    if resumed is None:  # Normalization layers without statistics adapt to what fit trains on (a resume loads them)
        train_rows = int(len(data.x_train[0]) * (1 - fit.validation_split))
        engine.adapt({name: x[:train_rows] for name, x in zip(engine.input_names, data.x_train)})
    trainer = Trainer(engine, spec.compile, spec.seed)
    callbacks = [C.build(cfg) for cfg in spec.callbacks]
    job = Job(spec, fit, raw, source_name, overrides, resolved, changes, data, trainer, callbacks, History(),
              threads, processes)
    if group is not None:
        try:  # here, not inside fit: a rank whose data does not fit must not leave the others waiting
            trainer.check_data(data.x_train, data.y_train)
        except ValueError as exc:
            raise Failed(f"specc: error: {exc}") from None
    if resumed is not None:
        _load_checkpoint(resumed, engine, trainer, callbacks)
        if group is not None:
            trainer.parallel.own_dropout_stream(trainer)
        state = resumed.state
        job.history.epoch = state["history"]["epoch"]
        job.history.history = state["history"]["history"]
        loop = job.checkpointed = state["loop"]
        job.initial_epoch = loop["epoch"]
        job.resume_loop = loop if loop.get("step") else None
    return job


def _resume_changes(resumed: Resumed, spec: Spec) -> tuple[str, list[str]]:
    """(the resolved spec to record, the changes to record) when resuming `spec` is safe; a Failed naming
    each change otherwise. The spec is RUN/spec.yaml with the run's --set overrides and the new ones, so an
    edit of that file, a new --set or a different --seed all show up here."""
    import yaml

    from ..spec.resolve import resolved_yaml
    from .run import RESUMABLE_CHANGES, spec_changes, text_hash

    run_dir, env, recorded, loop = resumed.path, resumed.env, resumed.recorded, resumed.state["loop"]
    text = resolved_yaml(spec)
    recorded_path = os.path.join(run_dir, "resolved.yaml")
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
    epochs = fit_settings(spec).epochs
    done = loop["epoch"] + (1 if loop.get("step") else 0)  # an epoch in progress must be finished
    if epochs < done:
        raise Failed(f"specc: error: cannot resume {run_dir} with fit.epochs={epochs}: the run has "
                     f"{'completed' if not loop.get('step') else 'started'} {done} epoch(s); give at least {done}")
    return text, [line.strip() for line in lines]


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


class RunDirectory:
    """The run directory of one training run (the layout is in run.py): created fresh or reopened for a
    resume (locked from then on), the best weights, the history and a checkpoint after each epoch, the
    results at the end. Only the writer writes: in a multi-process run that is rank 0; the other ranks'
    RunDirectory (writer=False) keeps the same bookkeeping (best value, last checkpoint) and writes
    nothing."""

    def __init__(self, path: str | None, writer: bool = True, saved: dict | None = None):
        self.path, self.writer = path, writer
        self.saved = saved  # the loop_state of the last complete checkpoint on disk
        self.best: float | None = None

    @classmethod
    def create(cls, out: str, job: Job, cleanup) -> RunDirectory:
        """runs/<name>/<timestamp>/, locked, with the spec as given, resolved, and the environment; removed
        again if these cannot be written."""
        from .run import (
            atomic_write_bytes,
            atomic_write_json,
            atomic_write_text,
            environment,
            new_run_dir,
            text_hash,
        )

        try:
            path = new_run_dir(out, job.spec.name)
        except OSError as exc:
            raise Failed(f"specc: error: cannot create a run directory under {out}: {_os_problem(exc)}",
                         _out_error_code(exc)) from None
        _lock_run(path, cleanup)
        env = environment(job.spec.seed, job.threads) | {
            "spec_path": os.path.abspath(job.source_name), "overrides": job.overrides,
            "resolved_sha256": text_hash(job.resolved)}
        if job.processes > 1:
            env["processes"] = job.processes
        try:
            atomic_write_bytes(os.path.join(path, "spec.yaml"), job.raw)
            atomic_write_text(os.path.join(path, "resolved.yaml"), job.resolved)
            atomic_write_json(os.path.join(path, "environment.json"), env)
            if job.data.normalization:
                atomic_write_json(os.path.join(path, "normalization.json"), job.data.normalization)
        except OSError as exc:
            cleanup.close()  # unlock, then remove the run that never started
            shutil.rmtree(path, ignore_errors=True)
            raise Failed(f"specc: error: cannot write the new run directory: {_os_problem(exc)}; nothing was "
                         f"trained and {path} was removed", _out_error_code(exc)) from None
        return cls(path)

    @classmethod
    def reopened(cls, resumed: Resumed, job: Job) -> RunDirectory:
        """The run being resumed (locked by Resumed.read), with this resume recorded in environment.json
        (and resolved.yaml rewritten when a resumable setting changed)."""
        from .run import atomic_write_json, atomic_write_text, text_hash

        path, env = resumed.path, resumed.env
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        record = {"started": started, "command": sys.argv, "threads": job.threads}
        if job.processes > 1 or env.get("processes", 1) > 1:
            record["processes"] = job.processes
        if job.changes:
            record["changes"] = job.changes
        env = env | {"overrides": job.overrides, "resolved_sha256": text_hash(job.resolved),
                     "resumes": env.get("resumes", []) + [record]}
        try:
            if job.changes:
                atomic_write_text(os.path.join(path, "resolved.yaml"), job.resolved)
            atomic_write_json(os.path.join(path, "environment.json"), env)
        except OSError as exc:
            raise Failed(f"specc: error: cannot update {path}: {_os_problem(exc)}; the checkpoint is "
                         f"untouched, resume again when this is fixed") from None
        run = cls(path, saved=job.checkpointed)
        if job.history.history.get(_monitor(job)):
            run.best = min(job.history.history[_monitor(job)])
        return run

    def checkpoint(self, trainer, history, callbacks) -> None:
        if self.writer:
            write_checkpoint(self.path, trainer, history, callbacks)
        self.saved = dict(trainer.loop_state)

    def epoch_done(self, job: Job, history) -> None:
        """weights.best and history first, the checkpoint last: a resume from the previous checkpoint
        retrains this epoch and rewrites them the same way."""
        from .run import save_weights, write_history

        value = history.history[_monitor(job)][-1]
        if self.best is None or value < self.best:
            self.best = value
            if self.writer:
                save_weights(os.path.join(self.path, "weights.best.npz"), job.trainer.engine)
        if self.writer:
            write_history(self.path, history)
        self.checkpoint(job.trainer, history, job.callbacks)

    def write_history(self, history) -> None:
        from .run import write_history

        if self.writer and history.epoch:
            write_history(self.path, history)

    def finish(self, job: Job, history, test: dict) -> None:
        """The results: final (and, if no epoch set them, best) weights, test metrics, history, curves; the
        checkpoint removed (nothing left to resume)."""
        from .run import atomic_write_json, plot_curves, save_weights

        if not self.writer:
            return
        engine = job.trainer.engine
        save_weights(os.path.join(self.path, "weights.final.npz"), engine)
        if not os.path.exists(os.path.join(self.path, "weights.best.npz")):
            save_weights(os.path.join(self.path, "weights.best.npz"), engine)
        atomic_write_json(os.path.join(self.path, "test_metrics.json"),
                          {"samples": int(len(job.data.x_test[0])), **test})
        if history.epoch:
            self.write_history(history)
            plot_curves(self.path, history, job.spec.name)
        shutil.rmtree(os.path.join(self.path, CHECKPOINT), ignore_errors=True)

    def kept(self) -> str:
        """What a stopped run leaves: the last complete checkpoint and the command that resumes from it."""
        loop = self.saved
        if loop is None:
            return (f"No checkpoint had been written yet, so there is nothing to resume; {self.path} holds what "
                    f"was written. Start again with: specc train {os.path.join(self.path, 'spec.yaml')}")
        where = (f"epoch {loop['epoch'] + 1}, step {loop['step']}" if loop.get("step")
                 else f"the end of epoch {loop['epoch']}" if loop["epoch"] else "the start")
        return (f"The last complete checkpoint ({where}) is in {os.path.join(self.path, CHECKPOINT)}\n"
                f"Resume with: specc train --resume {self.path}")


def _monitor(job: Job) -> str:
    return "val_loss" if job.fit.validation_split > 0 else "loss"


def _fit_and_finish(opts: Options, job: Job, run: RunDirectory, group) -> int:
    """Train into `run` and write its results. Every way training can stop early (a signal, a full disk, no
    memory, divergence) ends in a message saying what is kept: the last complete checkpoint and the
    command that resumes from it. In a multi-process run, a stop all ranks see (a signal, divergence, the
    end) is taken together; one only this rank sees (its disk, its memory) stops every rank (MPI_Abort)."""
    from .fit import Diverged, Interrupted

    trainer, fit, history = job.trainer, job.fit, job.history

    def stop(code: int, message: str) -> int:
        if group is not None:
            group.abort(code, message)  # the other ranks wait in a collective this rank leaves
        print(message, file=sys.stderr, flush=True)
        return code

    trainer.epoch_done = lambda epoch, hist: run.epoch_done(job, hist)
    verbose = 0 if opts.quiet else fit.verbose
    # the compile worker stops after the first step (not a spec callback: checkpoints never see it)
    callbacks = job.callbacks if job.warmup is None else [*job.callbacks, job.warmup]
    try:
        try:
            with _StopSignals(trainer):
                trainer.fit(job.data.x_train, job.data.y_train, batch_size=fit.batch_size, epochs=fit.epochs,
                            validation_split=fit.validation_split, shuffle=fit.shuffle,
                            class_weight=fit.class_weight, callbacks=callbacks, verbose=verbose,
                            initial_epoch=job.initial_epoch, history=history, resume=job.resume_loop)
        except Interrupted:  # every rank, after the same step
            run.write_history(history)
            run.checkpoint(trainer, history, job.callbacks)
            print(f"Stopped. Checkpoint written to {os.path.join(run.path, CHECKPOINT)}\n"
                  f"Resume with: specc train --resume {run.path}", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        except ValueError as exc:  # the data or a checkpoint does not fit the model (train/checks.py says how)
            print(f"specc: error: {exc}\n{run.kept()}", file=sys.stderr, flush=True)
            return EXIT_INVALID
        except Diverged as exc:  # every rank: the loss is the global one
            print(f"specc: error: the loss became {exc.value} at epoch {exc.epoch + 1}, step {exc.step}: training "
                  f"diverged.\nCheck the learning rate (try 10x smaller), the input scaling (data.normalize: true), "
                  f"and the data for extreme values. Run directory: {run.path}", file=sys.stderr)
            run.write_history(history)
            return EXIT_INVALID
        data = job.data
        test = trainer.evaluate(data.x_test, data.y_test, fit.batch_size) if len(data.x_test[0]) else {}
        run.finish(job, history, test)
    except KeyboardInterrupt:
        return stop(EXIT_INTERRUPTED, f"Stopped at once. {run.kept()}")
    except OSError as exc:
        return stop(EXIT_INVALID, f"specc: error: training stopped: {_os_problem(exc)}\n{run.kept()}")
    except MemoryError:
        return stop(EXIT_INVALID, f"specc: error: training stopped: out of memory (MemoryError). `specc summary` "
                                  f"estimates the memory training needs; a new run with a smaller fit.batch_size "
                                  f"or a smaller model needs less.\n{run.kept()}")
    except Exception as exc:  # noqa: BLE001 - a bug; in a multi-process run the others must not wait for ever
        if group is None:
            raise
        return stop(EXIT_INVALID, f"specc: internal error on rank {group.rank} of {group.size}: "
                                  f"{type(exc).__name__}: {exc}\nThis is a bug in specc; please report it. "
                                  f"{run.kept()}")
    if group is not None:  # rank 0's files are written before any rank reports success
        group.comm.Barrier()
    from .progress import Progress

    progress = Progress(0 if opts.quiet else 1)
    if test:
        progress.message("Test: " + " - ".join(f"{k}: {v:.4f}" for k, v in test.items()))
    print(f"Run saved to {run.path}", flush=True)
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
            results = trainer.evaluate(x, ys, fit_settings(spec).batch_size)
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
