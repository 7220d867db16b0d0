"""A compile worker for a cold start: a second process that compiles kernels the first training step needs
while this one loads the data, builds the model and compiles the rest, on a machine with a second core.

Numba compiles one function at a time in a process (under its global lock), and a kernel's first call
compiles it unless the cache has it, so a cold `specc train` spends most of its time to the first step
compiling on one core. The worker builds the same model from the same spec and runs the optimizer's
update, then each layer's forward and backward on zeros, from the last layer to the first: the opposite
order to the training step's forward. Both processes share the Numba cache, and each cache miss is
claimed (kernels.claim_compiles_in): when one process meets a signature the other is compiling, it waits
for it and loads the machine code from the cache, so nothing is compiled twice. The worker waits only in
a second pass: first it puts off the layers whose kernels the training process is compiling.

The worker starts only on a cache no model has been trained into since its kernels were compiled from
scratch (a marker file beside the cache, written by the worker when it is through and by this process
after its first step; removed with the cache when the kernel sources change), so a warm start, and a
cache that already holds most kernels, pay nothing for it. It stops after the first step, or when this
process ends (it reads its standard input until end of file). SPECC_COMPILE_WORKER=0 turns it off; it
never starts off POSIX or where the marker cannot be written (it would then start at every run).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile

from .callbacks import Callback

_KERNELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
MARKER_PREFIX = "specc-warm-"  # kernels._drop_stale_caches removes files named so with a stale cache
MARKER = MARKER_PREFIX + "trained"


def marker_directory() -> str:
    """Where the markers go: NUMBA_CACHE_DIR when set, else the kernels' own __pycache__ (Numba's cache
    there too). kernels._drop_stale_caches removes them with the cache."""
    return os.environ.get("NUMBA_CACHE_DIR") or os.path.join(_KERNELS, "__pycache__")


class Warmup(Callback):
    """The running worker, as a callback: the first training batch's end stops it and records the model as
    compiled. `finish()` stops it whatever happened (idempotent)."""

    def __init__(self, process: subprocess.Popen, claims: str, marker: str):
        super().__init__()
        self.process, self.claims, self.marker = process, claims, marker

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.finish(compiled=True)

    def finish(self, compiled: bool = False) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            process.stdin.close()  # the worker exits at the end of its input, even in the middle of a compile
        except OSError:
            pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        os.environ.pop("SPECC_COMPILE_CLAIMS", None)
        shutil.rmtree(self.claims, ignore_errors=True)
        if compiled:
            write_marker(self.marker)


def _trained_any(directory: str) -> bool:
    """Whether a model has been trained into this cache since its kernels were last compiled from scratch
    (a marker is there; kernels._drop_stale_caches removes them with the cache). Such a cache holds most
    kernels any model needs, and a worker that mostly loads from it costs more than it saves: a test suite
    that starts `specc train` hundreds of times on one cache would pay seconds each time."""
    try:
        return any(name.startswith(MARKER_PREFIX) for name in os.listdir(directory))
    except OSError:
        return False


def _writable(directory: str) -> bool:
    """Whether a marker can be made in `directory` (or, not there yet, in its nearest existing parent)."""
    while not os.path.isdir(directory):
        parent = os.path.dirname(directory)
        if parent == directory:
            return False
        directory = parent
    return os.access(directory, os.W_OK)


def start(spec, raw: bytes, source_name: str, overrides: list[str], batch_size: int,
          threads: int | None) -> Warmup | None:
    """Start the worker for a spec about to be trained, unless it would not help (one core, a cache that a
    model has been trained into, SPECC_COMPILE_WORKER=0); to be called before specc.kernels is imported, so
    this process's own compiles are claimed from the first one."""
    if os.environ.get("SPECC_COMPILE_WORKER", "1").strip() == "0":
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    if cores < 2 or os.name != "posix" or not _writable(marker_directory()):
        return None
    marker = os.path.join(marker_directory(), MARKER)
    if _trained_any(marker_directory()):
        return None
    claims = tempfile.mkdtemp(prefix="specc-claims-")
    env = dict(os.environ, SPECC_COMPILE_CLAIMS=claims)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])
    order = {"raw": base64.b64encode(raw).decode("ascii"), "source": source_name, "overrides": list(overrides),
             "batch": batch_size, "threads": threads, "marker": marker}
    try:
        process = subprocess.Popen([sys.executable, "-c", "from specc.train.warmup import main; main()"],
                                   env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, text=True)
    except OSError:
        shutil.rmtree(claims, ignore_errors=True)
        return None
    try:
        process.stdin.write(json.dumps(order) + "\n")
        process.stdin.flush()
    except OSError:  # it died at start: reap it
        process.kill()
        process.wait()
        shutil.rmtree(claims, ignore_errors=True)
        return None
    os.environ["SPECC_COMPILE_CLAIMS"] = claims
    if "specc.kernels" in sys.modules:  # imported already (an API caller): claim from now on
        sys.modules["specc.kernels"].claim_compiles_in(claims)
    return Warmup(process, claims, marker)


def exercise(engine, trainer, batch: int) -> None:
    """The optimizer's update, then each step's forward and backward on zeros, as the engine runs them (its
    activation too; not the output activation the loss fuses with); a step that still fails in the second
    pass (a layer that needs adapted statistics, say) is skipped: the training step compiles it.

    The steps go in reverse order, the opposite of the training step's forward. A step that meets a kernel
    the training process is compiling is put off to a second pass instead of waiting for it (a ResNet's
    last convolution would otherwise wait for the first one's kernels, which the training process starts
    on, and leave the layers in between, its first pooling, to that process)."""
    import numpy as np

    from ..kernels import defer_held_claims

    try:
        trainer.optimizer.step(engine.params[: engine.n_trainable], engine.grads)
    except Exception:
        pass
    fused = {name for name, f in zip(engine.output_names, trainer.fused) if f is not None}
    rng = np.random.default_rng(0)
    put_off = list(reversed(engine.plan))
    for defer in (True, False):
        defer_held_claims(defer)
        steps, put_off = put_off, []
        for s in steps:
            if not _exercise_step(engine, s, fused, batch, rng):
                put_off.append(s)
    defer_held_claims(False)


def _exercise_step(engine, s, fused, batch: int, rng) -> bool:
    """One step's forward and backward on zeros: whether it ran (False when a compile failed or was put
    off; Numba may wrap ClaimHeld in its own errors, so any exception counts)."""
    import numpy as np

    from ..engine import activation_backward, activation_forward

    try:
        if s.layer.is_merge:
            x = [np.zeros((batch, *shape), engine.dtype) for shape in s.input_shape]
        else:
            x = np.zeros((batch, *s.input_shape), engine.dtype)
        y, saved = s.layer.forward(s.weights, x, s.trainable, rng)
        dy = np.zeros(np.shape(y), engine.dtype)
        if s.activation is not None:
            z = np.ascontiguousarray(y)
            out = np.empty_like(z)
            activation_forward(s.activation, z, out)
            if s.name not in fused:
                dz = np.empty_like(z)
                activation_backward(s.activation, z, out, dy, dz)
                dy = dz
        s.layer.backward(s.weights, s.grads, saved, dy, not s.inputs_only)
    except Exception:
        return False
    return True


def main() -> None:
    """The worker: reads its order (one JSON line), builds the model and runs `exercise`; ends at the end
    of its input whatever it is doing."""
    import threading

    order = json.loads(sys.stdin.readline())

    def watch() -> None:
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    from ..spec.overrides import apply_overrides

    spec, errors = apply_overrides(base64.b64decode(order["raw"]), order["overrides"], order["source"])
    if errors or spec.compile is None:
        return
    from ..kernels import configure_threads

    configure_threads(order["threads"])
    from ..engine import Engine
    from .fit import Trainer

    engine = Engine(spec.graph)
    exercise(engine, Trainer(engine, spec.compile, 0), order["batch"])
    write_marker(order["marker"])


def write_marker(path: str) -> None:
    """Record that this cache holds the model's kernels (an empty file): the next start runs no worker."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8"):
            pass
    except OSError:  # a read-only cache directory: the next start runs a worker again
        pass
