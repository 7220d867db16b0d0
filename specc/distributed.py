"""Data-parallel training on MPI (mpi4py + MPICH): `mpiexec -n N specc train SPEC`, `specc train --procs N
SPEC`, or `specc.distributed.init()` before `model.fit(...)` in a script run under `mpiexec`.

Every process (rank) holds the whole model and the whole data set and walks the same global batches in
the same order (rank 0's shuffling generator is broadcast). Of each global batch of B rows, rank r takes
the contiguous rows [lo_r, hi_r) (np.array_split's split), computes the gradients of its rows' mean loss
into the engine's flat gradient buffer, and one in-place float32 Allreduce over one contiguous buffer
sums, per step:

    [ grads * b_r/B | moving-statistics deltas * b_r/B | loss values * b_r/B | stop flag | predictions ]

so the optimizer steps with the gradient of the global batch's mean loss, whatever the shard sizes (the
last batch of an epoch may leave a rank with no rows), and every rank applies the same update. The
predictions go in at each rank's own rows (zeros elsewhere: the sum is exact), so every rank updates the
metrics with the whole batch's predictions: the logged loss and metrics are the global ones.
Validation and test evaluation are sharded the same way; the loss sums are reduced and the predictions
gathered, so the metrics are those of one process.

BatchNormalization normalises with each rank's own batch statistics (as Keras and Horovod do by default);
the moving mean and variance are then averaged over the ranks (weighted by rows), so every rank keeps the
same weights: the moving mean is the one of a single process, the moving variance the mean of the
per-rank variances (without the spread between the ranks' means). Dropout draws its masks from one
stream per rank, so with Dropout a run differs from a one-process run (as it would with another seed).

`import specc` never loads MPI: mpi4py is imported by init() only, which the CLI calls when it runs in an
MPI world of more than one process (the launcher's environment says so) and the Python API only when the
script calls it. A Python exception that reaches the top of any rank aborts every rank (MPI_Abort), so a
failure never leaves the other ranks waiting in a collective.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

INSTALL = 'pip install -e ".[mpi]"  (or: pip install mpi4py mpich)'

# What launchers tell each process: MPICH's hydra, Slurm's PMI-2 and Intel MPI set PMI_SIZE, Open MPI its
# own; PMIx (srun --mpi=pmix, Open MPI 5) only the rank, so MPI is asked for the size.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")

# Tests inject a failure in one rank: SPECC_TEST_FAULT=RANK:STEP:raise|exit|kill|sigint (before that step's
# Allreduce, STEP counted from 0 over the run).
FAULT_VARIABLE = "SPECC_TEST_FAULT"


class Unavailable(RuntimeError):
    """mpi4py (or an MPI library) is not installed."""


def launched_size() -> int:
    """How many processes the launcher started (1 when not under mpiexec/srun), from the environment alone:
    MPI is not loaded."""
    for name in _SIZE_VARIABLES:
        raw = os.environ.get(name, "")
        if raw.isdigit():
            return int(raw)
    if "PMIX_RANK" in os.environ:
        return init().size
    return 1


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise Unavailable(f"training on several processes needs mpi4py and an MPI library, which are not "
                          f"installed ({exc}); install them with: {INSTALL}") from None
    return MPI


_world: World | None = None


def init() -> World:
    """Join the MPI world (idempotent) and return it. In a world of more than one process, every Trainer
    (model.fit, model.evaluate, specc train) works data-parallel from here on, and an uncaught exception in
    any rank aborts them all. Raises Unavailable (with the install command) without mpi4py."""
    global _world
    if _world is None:
        _world = World(_mpi())
        if _world.size > 1:
            _install_excepthook(_world)
    return _world


def world() -> World | None:
    """The MPI world of more than one process that init() joined, else None (MPI never loaded)."""
    return _world if _world is not None and _world.size > 1 else None


def rank() -> int:
    return _world.rank if _world is not None else 0


def size() -> int:
    return _world.size if _world is not None else 1


class World:
    """COMM_WORLD (duplicated: specc's collectives never match a user's), and this rank's node-mates."""

    def __init__(self, MPI):
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self._threads = self._share_of_cores()  # here: a collective every rank reaches

    def _share_of_cores(self) -> int:
        try:
            mine = set(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            mine = set(range(os.cpu_count() or 1))
        sets = self.local.allgather(sorted(mine))
        sharing = sum(1 for s in sets if mine & set(s))
        return max(1, len(mine) // max(sharing, 1))

    def default_threads(self) -> int:
        """This rank's share of the cores it may run on: its CPU affinity divided by the ranks on this
        machine whose affinity overlaps it (all of them when the launcher binds nothing; none but itself
        when it binds each rank to its own cores). Two ranks with two threads each on two cores measured
        10x slower than one thread each."""
        return self._threads

    def bcast(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def agree(self, code: int | None, text: str = "") -> tuple[int | None, int, str]:
        """Every rank's outcome of a step that may fail (a spec, data or file problem): (the first failing
        code or None, the rank it came from, what that rank would have printed). Collective."""
        outcomes = self.comm.allgather((code, text))
        for r, (c, t) in enumerate(outcomes):
            if c is not None:
                return c, r, t
        return None, 0, ""

    def abort(self, code: int, message: str = "") -> None:
        """Print `message` (on the real stderr, whatever redirection) and stop every rank at once."""
        if message:
            try:
                sys.__stderr__.write(message.rstrip("\n") + "\n")
                sys.__stderr__.flush()
            except (OSError, ValueError, AttributeError):
                pass
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        self.MPI.COMM_WORLD.Abort(code)


def _install_excepthook(w: World) -> None:
    previous = sys.excepthook

    def hook(kind, value, tb):
        # The other ranks wait in a collective this rank never reaches: stop them, after the traceback.
        try:
            previous(kind, value, tb)
        finally:
            code = 130 if issubclass(kind, KeyboardInterrupt) else 1
            w.abort(code, f"specc: rank {w.rank} of {w.size} stopped ({kind.__name__}); stopping every rank")

    sys.excepthook = hook


# --- launching: specc train --procs N --------------------------------------------------------------------


def find_mpiexec() -> str | None:
    """The mpiexec of the MPI library mpi4py uses: SPECC_MPIEXEC if set; the mpich wheel's own (its files
    list it); the one beside this Python (a virtual environment's bin); then the PATH's."""
    import shutil
    import sysconfig

    given = os.environ.get("SPECC_MPIEXEC")
    if given:
        return shutil.which(given)
    try:
        from importlib import metadata

        for dist in ("mpich", "openmpi", "impi-rt"):
            try:
                files = metadata.files(dist) or []
            except metadata.PackageNotFoundError:
                continue
            for f in files:
                if f.name == "mpiexec":
                    path = os.path.abspath(str(f.locate()))
                    if os.access(path, os.X_OK):
                        return path
    except Exception:  # noqa: BLE001 - a damaged installation: look elsewhere
        pass
    beside = os.path.join(sysconfig.get_path("scripts"), "mpiexec")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("mpiexec")


def launch(procs: int, argv: list[str]) -> int:
    """Run `specc ARGV` as `procs` MPI processes with the bundled mpiexec; its exit code. Raises
    Unavailable when mpi4py or mpiexec is missing."""
    import signal
    import subprocess

    _check_mpi4py_installed()
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise Unavailable(f"no mpiexec found (looked at $SPECC_MPIEXEC, the mpich package, {sys.prefix}/bin "
                          f"and the PATH); install MPI with: {INSTALL}")
    command = [mpiexec, "-n", str(procs), sys.executable, "-m", "specc.cli", *argv]
    # mpiexec forwards Ctrl-C/SIGTERM to every rank (each checkpoints); this process just waits for it.
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        child = subprocess.Popen(command)
        signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
        signal.signal(signal.SIGINT, lambda *_: None)  # the terminal sends it to mpiexec too
        code = child.wait()
    except OSError as exc:
        raise Unavailable(f"cannot run {mpiexec}: {exc.strerror}") from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code not in (0, 1, 2, 130):  # not one of specc's: a rank was killed or crashed, mpiexec stopped the rest
        what = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        sys.stderr.write(f"specc: error: a process of the {procs} stopped abnormally ({what}) and mpiexec stopped "
                         f"the others. If a checkpoint was written, `specc train --resume RUN_DIR` continues "
                         f"from it.\n")
        return 1
    return code


def _check_mpi4py_installed() -> None:
    """Whether mpi4py is importable, without loading MPI into this (launcher) process."""
    import importlib.util

    if importlib.util.find_spec("mpi4py") is None:
        raise Unavailable(f"--procs needs mpi4py and an MPI library, which are not installed; install them "
                          f"with: {INSTALL}")


# --- the trainer's side --------------------------------------------------------------------------------


def shard(n: int, ranks: int, r: int) -> tuple[int, int]:
    """Rows [lo, hi) of n that rank r of `ranks` takes: contiguous, sizes differing by at most one."""
    base, extra = divmod(n, ranks)
    lo = r * base + min(r, extra)
    return lo, lo + base + (r < extra)


_checked_launch = False


def attached(trainer) -> DataParallel | None:
    """The trainer's DataParallel when init() joined a world of more than one process, else None."""
    global _checked_launch
    if _world is None and not _checked_launch:
        _checked_launch = True
        started = max((int(os.environ[v]) for v in _SIZE_VARIABLES if os.environ.get(v, "").isdigit()), default=1)
        if started > 1:
            import warnings

            warnings.warn(f"this process is one of {started} started by an MPI launcher, but "
                          f"specc.distributed.init() was not called, so it trains alone; call it first to "
                          f"train data-parallel", stacklevel=3)
    if _world is None or _world.size == 1:
        return None
    found = trainer.__dict__.get("_data_parallel")
    if found is None:
        found = trainer.__dict__["_data_parallel"] = DataParallel(_world, trainer)
    return found


def _parse_fault(rank: int) -> tuple[int, str] | None:
    raw = os.environ.get(FAULT_VARIABLE, "")
    parts = raw.split(":")
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() and int(parts[0]) == rank:
        return int(parts[1]), parts[2]
    return None


class DataParallel:
    """One trainer's share of the work of every step (see the module docstring)."""

    def __init__(self, w: World, trainer):
        self.world, self.comm, self.MPI = w, w.comm, w.MPI
        self.rank, self.size = w.rank, w.size
        engine = trainer.engine
        self.engine = engine
        self.dtype = engine.dtype
        self.n_grad = engine.n_trainable
        # The non-trainable weights of trainable layers: what a training step updates besides the
        # trainable ones (BatchNormalization's moving statistics). Frozen layers run in inference mode.
        self.state = []
        for s in engine.steps:
            for spec, weight in zip(s.specs, s.weights):
                if s.trainable and not spec.trainable:
                    at = engine.offset_of(weight)
                    self.state.append((at, at + weight.size))
        self.n_state = sum(b - a for a, b in self.state)
        self._old_state = np.empty(self.n_state, self.dtype)
        self.n_losses = len(trainer.losses)
        names = trainer.metric_names
        self.need_predictions = bool(any(names.values()) if isinstance(names, dict) else names)
        self.out_shapes = [tuple(engine.graph.node(name).output_shape) for name in engine.graph.outputs]
        self._storage: np.ndarray | None = None
        self.signal_pending = False  # a Ctrl-C/SIGTERM seen by this rank, to share at the next step
        self.reduce_seconds, self.steps = 0.0, 0  # time in the step's Allreduce (bench/mpi.py reads it)
        self.fault = _parse_fault(self.rank)
        if self.rank:
            trainer.run_dir = None  # only rank 0 writes files (ModelCheckpoint, CSVLogger)
        self.own_dropout_stream(trainer)

    def own_dropout_stream(self, trainer) -> None:
        """Dropout: a stream of its own for each rank but 0, derived from the one the trainer has (the
        seed's, or a checkpoint's), so the ranks' masks differ."""
        if self.rank:
            state = trainer.dropout_rng.bit_generator.state
            seed = int(state.get("state", {}).get("state", 0)) % (1 << 63) if isinstance(state, dict) else 0
            trainer.dropout_rng = np.random.default_rng([seed, self.rank])

    def _per_sample(self, k: int) -> int:
        shape = self.out_shapes[k]
        if any(d is None for d in shape):
            raise ValueError(f"data-parallel training with metrics needs outputs of known shape; output "
                             f"{k} has shape {shape}")
        return int(np.prod(shape, dtype=np.int64))

    def begin(self, trainer) -> None:
        """At the start of fit: every rank starts from rank 0's weights and shuffling generator, and
        ranks other than 0 print nothing."""
        from .train.progress import Progress

        self.comm.Bcast(self.engine.params, root=0)
        trainer.rng.bit_generator.state = self.comm.bcast(trainer.rng.bit_generator.state, root=0)
        if self.rank:
            trainer.progress = Progress(0)

    def _buffer(self, batch: int) -> np.ndarray:
        """The step's buffer for `batch` rows: a view of one array, grown for the largest batch seen (the
        predictions' part is the only one that depends on the batch)."""
        preds = sum(batch * self._per_sample(k) for k in range(len(self.out_shapes))) if self.need_predictions else 0
        size = self.n_grad + self.n_state + self.n_losses + 1 + preds
        if self._storage is None or self._storage.size < size:
            from .workspace import aligned_zeros

            self._storage = aligned_zeros(size, self.dtype)
        return self._storage[:size]

    def step(self, trainer, xb, yb, sw) -> tuple[list[float], list[np.ndarray], np.ndarray]:
        """This rank's rows of the global batch forward and backward, then the one Allreduce: (the global
        batch's loss values, its predictions (for the metrics), the averaged gradients for the optimizer)."""
        batch = len(xb[0])
        lo, hi = shard(batch, self.size, self.rank)
        b = hi - lo
        weight = b / batch
        buf = self._buffer(batch)
        params = self.engine.params
        g1, s1 = self.n_grad, self.n_grad + self.n_state
        v1 = s1 + self.n_losses
        at = 0
        for a, z in self.state:  # the statistics before the step: identical on every rank
            self._old_state[at: at + z - a] = params[a:z]
            at += z - a
        if b:
            if isinstance(sw, list):  # per output (fit's sample and class weights), None where unweighted
                mine = [None if w is None else w[lo:hi] for w in sw]
            else:
                mine = None if sw is None else sw[lo:hi]
            values, preds = trainer.compute_gradients([a[lo:hi] for a in xb], [a[lo:hi] for a in yb], mine)
            np.multiply(self.engine.grads, weight, out=buf[:g1])
            at = g1
            for a, z in self.state:
                np.subtract(params[a:z], self._old_state[at - g1: at - g1 + z - a], out=buf[at: at + z - a])
                at += z - a
            buf[g1:s1] *= weight
            buf[s1:v1] = [v * weight for v in values]
            if self.need_predictions:
                buf[v1 + 1:] = 0
                at = v1 + 1
                for k, p in enumerate(preds):
                    rows = buf[at: at + batch * self._per_sample(k)].reshape(batch, -1)
                    rows[lo:hi] = p.reshape(b, -1)
                    at += batch * self._per_sample(k)
        else:
            buf[:] = 0
        if self.fault is not None and self.fault[0] == self.steps:
            self._inject(self.fault[1])
        buf[v1] = 1.0 if self.signal_pending else 0.0
        start = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        self.reduce_seconds += time.perf_counter() - start
        self.steps += 1
        at = g1
        for a, z in self.state:
            np.add(self._old_state[at - g1: at - g1 + z - a], buf[at: at + z - a], out=params[a:z])
            at += z - a
        if buf[v1] > 0:  # some rank was asked to stop: every rank stops after this same step
            trainer.interrupt_requested = True
        values = [float(v) for v in buf[s1:v1]]
        out = []
        if self.need_predictions:
            at = v1 + 1
            for k, shape in enumerate(self.out_shapes):
                n = batch * self._per_sample(k)
                out.append(buf[at: at + n].reshape(batch, *shape))
                at += n
        return values, out, buf[:g1]

    def _inject(self, kind: str) -> None:
        import signal

        if kind == "raise":
            raise RuntimeError(f"fault injected by {FAULT_VARIABLE} in rank {self.rank}")
        if kind == "exit":
            os._exit(3)
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "sigint":  # as a Ctrl-C that reached this rank alone
            os.kill(os.getpid(), signal.SIGINT)

    def evaluate(self, trainer, x, y, batch_size: int) -> dict:
        """Trainer._evaluate with each rank evaluating its contiguous share of the samples: the loss sums
        are reduced, the predictions gathered, and the metrics computed over all of them in the same
        batches as one process would."""
        n = len(x[0])
        lo, hi = shard(n, self.size, self.rank)
        sums = np.zeros(1 + self.n_losses)
        local = []
        with self.engine.held_threads():
            for start in range(lo, hi, batch_size):
                end = min(start + batch_size, hi)
                values, _, preds = trainer._losses([a[start:end] for a in x], [a[start:end] for a in y], None,
                                                   training=False)
                rows = end - start
                sums[0] += sum(w * v for w, v in zip(trainer.loss_weights, values)) * rows
                sums[1:] += np.asarray(values, np.float64) * rows
                if self.need_predictions:
                    local.append([np.array(p, self.dtype).reshape(rows, -1) for p in preds])
        self.comm.Allreduce(self.MPI.IN_PLACE, sums, op=self.MPI.SUM)
        metrics = trainer._make_metrics(y)
        if self.need_predictions and any(metrics):
            counts = [shard(n, self.size, r) for r in range(self.size)]
            for k, shape in enumerate(self.out_shapes):
                per = self._per_sample(k)
                mine = (np.concatenate([p[k] for p in local]) if local else np.zeros((0, per), self.dtype))
                full = np.empty((n, per), self.dtype)
                sizes = [(z - a) * per for a, z in counts]
                offsets = [a * per for a, _ in counts]
                self.comm.Allgatherv(np.ascontiguousarray(mine), [full, sizes, offsets, self.MPI.FLOAT if self.dtype == np.float32 else self.MPI.DOUBLE])
                full = full.reshape(n, *shape)
                for start in range(0, n, batch_size):
                    for m in metrics[k]:
                        m.update(y[k][start: start + batch_size], full[start: start + batch_size])
        return trainer._epoch_logs(float(sums[0]) / max(n, 1), [float(s) / max(n, 1) for s in sums[1:]], metrics)

    def any(self, flag: bool) -> bool:
        """Whether any rank's flag is set. Collective."""
        return bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.MAX))
