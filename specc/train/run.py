"""Run directories a user can trust: created fresh (an existing run is never overwritten), every file
written atomically (temporary file + rename), and everything needed to understand, reproduce, resume
and reuse a run kept together:

    runs/<name>/<timestamp>/
      spec.yaml             the spec as given          resolved.yaml   every default filled in
      environment.json      versions, seed, threads, command
      history.csv/.json     per-epoch metrics          curves.png      loss and metrics per epoch
      weights.final.npz     weights.best.npz           test_metrics.json
      checkpoint/           state to `--resume` an interrupted run
      .lock                 held (flock) by the process training the run: one writer at a time
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from typing import BinaryIO

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone makes files private


def atomic_write(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` whole or not at all: `write(fh)` fills a temporary file beside it, which then replaces
    it, so the old file (if any) stays until the new one is complete. Arrays go straight to the file
    (np.savez(fh, ...)), never through a copy in memory: a checkpoint is three times the weights. An
    OSError names `path` itself, not the temporary file, whatever step failed (ENOSPC may come from write,
    flush or fsync)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, path) from exc  # OSError(errno, ...) picks the subclass
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def run_folder_name(name: str) -> str:
    """The spec's name as one folder name: a name may be any string, but `../x` or `/x` must not move the
    run out of --out."""
    folder = "".join("_" if ch in "/\\\0" or ord(ch) < 32 else ch for ch in name)
    return "_" * len(folder) if set(folder) <= {"."} else folder


def new_run_dir(root: str, name: str) -> str:
    """runs/<name>/<UTC timestamp>, with -1, -2, ... appended if that exists: never reuse a directory."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = os.path.join(root, run_folder_name(name))
    os.makedirs(base, exist_ok=True)
    for k in range(1000):
        path = os.path.join(base, stamp if k == 0 else f"{stamp}-{k}")
        try:
            os.mkdir(path)  # atomic: fails if another run took the name
            return path
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "1000 run directories already have this second's name", base)


def out_problem(root: str) -> str | None:
    """Why run directories cannot be made under `root` (checked before any work), or None. Walks up to
    the nearest existing folder: a regular file on the way, or no write permission there, is a problem."""
    path = os.path.abspath(root)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if not os.path.isdir(path):
        return f"{path} is a file, not a directory"
    if not os.access(path, os.W_OK | os.X_OK):  # also EROFS on a read-only file system, even for root
        return f"{path} is not writable"
    return None


class RunBusy(Exception):
    """Another process holds the run directory's lock."""


class RunLock:
    """An exclusive lock on a run directory, held while a process trains it: a second `specc train
    --resume RUN` would otherwise train from the same checkpoint and the later would overwrite the other's
    weights and history. flock(2) on RUN/.lock: the kernel releases it when the process exits, however it
    exits, so a crashed run never leaves a stale lock. The file keeps the holder's pid and command for the
    message the next one gets. Where flock does not exist (Windows) msvcrt's byte lock does the same; if
    neither is there, nothing is locked."""

    NAME = ".lock"

    def __init__(self, run_dir: str):
        self.run_dir, self.path, self.fd = run_dir, os.path.join(run_dir, self.NAME), None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            locked = _try_lock(fd)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunBusy(f"{self.run_dir} is being trained by another specc process"
                          f"{f' ({holder})' if holder else ''}; wait for it to finish, or stop it (Ctrl-C "
                          f"writes a checkpoint) and resume then")
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}: {' '.join(['specc', *sys.argv[1:]])}\n".encode())
        except OSError:
            pass  # the lock is held all the same; the next process's message just cannot name this one
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # before unlocking: the next holder writes its own line
        except OSError:
            pass
        _unlock(self.fd)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        try:
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except ImportError:
            return True  # no locking on this platform: carry on unlocked
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # a file system without locks
            return True
        raise
    return True


def _unlock(fd: int) -> None:
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)
    except ImportError:  # pragma: no cover - Windows
        try:
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        except (ImportError, OSError):
            pass


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 1000).decode("utf-8", "replace").strip()
    except OSError:
        return ""


# --- reading .npz files a user gives ---------------------------------------------------------------------

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip


def read_npz(path: str, what: str, names: list[str] | None = None) -> tuple[list[str], dict[str, np.ndarray]]:
    """(every array name, the arrays `names` (all if None) that exist) of an .npz, or a ValueError that
    says, naming `path`, why it is not a readable one: a directory, a text or .npy file, a truncated or
    damaged archive, arrays of Python objects (never unpickled). `what` says what was expected."""
    from ..spec.files import NotRegularFile, describe_head, open_regular_file

    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not {what}")
    try:  # a FIFO or a device is refused, not read (it could block or stream for ever)
        with open_regular_file(path) as fh:
            head = fh.read(8)
    except NotRegularFile as exc:
        raise ValueError(f"{path} is {exc}, not {what}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if not head.startswith(_ZIP_MAGIC):
        kind = describe_head(head)
        raise ValueError(f"{path} is not {what}: it is {kind}, not an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = list(archive.files)
            arrays = {k: archive[k] for k in (files if names is None else names) if k in files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as exc:
        raise ValueError(f"{path} is truncated or damaged ({exc}); it cannot be read as {what}") from None
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ValueError(f"{path} holds arrays of Python objects, which specc never loads (only numeric "
                             f"arrays); expected {what}") from None
        raise ValueError(f"{path} is truncated or damaged ({exc}); it cannot be read as {what}") from None
    for key, value in arrays.items():
        # NumPy hands back the raw bytes of a member that is not in .npy format; a structured dtype is not
        # numbers either
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            kind = f"dtype {value.dtype}" if isinstance(value, np.ndarray) else "bytes that are not an .npy array"
            raise ValueError(f"{path}: member {key!r} holds {kind}, not numbers; expected {what}")
    return files, arrays


def weight_keys(engine) -> list[str]:
    return [f"{s.name}/{spec.name}" for s in engine.steps for spec in s.specs]


def save_weights(path: str, engine) -> None:
    """Weights in Keras's layer/weight order, as an .npz keyed `layer/weight` (order preserved), written
    from the engine's own arrays (no copy)."""
    atomic_write_npz(path, dict(zip(weight_keys(engine), [w for s in engine.steps for w in s.weights])))


def load_weights(path: str, engine) -> None:
    """Load an .npz written by save_weights into `engine`. A ValueError names the file and the first
    difference: a missing or extra `layer/weight`, or one whose shape is not the model's."""
    keys = weight_keys(engine)
    files, arrays = read_npz(path, "a weights .npz (a run's weights.final.npz or weights.best.npz)")
    if files != keys:
        missing = [k for k in keys if k not in files]
        extra = [k for k in files if k not in keys]
        detail = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra
                  else "the weights are in a different order")
        raise ValueError(f"{path} does not match this model ({len(files)} arrays, the model has "
                         f"{len(keys)}): {detail}")
    expected = [w.shape for s in engine.steps for w in s.weights]
    for key, shape in zip(keys, expected):
        if arrays[key].shape != shape:
            layer, weight = key.rsplit("/", 1)
            raise ValueError(f"{path} does not match this model: weight {weight!r} of layer {layer!r} has "
                             f"shape {arrays[key].shape}, the model expects {shape}")
    engine.set_weights([arrays[k] for k in keys])


# --- what a resumed run may change -----------------------------------------------------------------------

# Settings a resume may change: more (or fewer) epochs, the progress output, and the data file's path
# (moved data). Anything else would continue a checkpoint with another model, optimizer or data pipeline.
RESUMABLE_CHANGES = ("fit.epochs", "fit.verbose", "data.source.path")


def text_hash(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def spec_changes(old, new, path: str = "") -> list[tuple[str, object, object]]:
    """(dotted path, old value, new value) for each leaf that differs between two resolved specs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                out.append((sub, old.get(key, "(absent)"), new.get(key, "(absent)")))
            else:
                out.extend(spec_changes(old[key], new[key], sub))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in spec_changes(a, b, f"{path}[{i}]")]
    return [] if old == new else [(path, old, new)]


def environment(seed, threads: int, argv: list[str] | None = None) -> dict:
    import numba
    import pydantic
    import scipy
    import yaml

    from .. import __version__

    return {
        "specc": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "scipy": scipy.__version__,
        "pydantic": pydantic.__version__,
        "pyyaml": yaml.__version__,
        "seed": seed,
        "threads": threads,
        "command": argv if argv is not None else sys.argv,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_history(run_dir: str, history) -> None:
    keys = list(history.history)
    lines = [",".join(["epoch", *keys])]
    for i, epoch in enumerate(history.epoch):
        lines.append(",".join([str(epoch + 1), *(repr(history.history[k][i]) for k in keys)]))
    atomic_write_text(os.path.join(run_dir, "history.csv"), "\n".join(lines) + "\n")
    atomic_write_json(os.path.join(run_dir, "history.json"),
                      {"epoch": [e + 1 for e in history.epoch], **history.history})


def plot_curves(run_dir: str, history, title: str) -> None:
    """curves.png: loss and each metric per epoch, train vs validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = [k for k in history.history if not k.startswith("val_") and k != "learning_rate"]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.4), squeeze=False)
    epochs = [e + 1 for e in history.epoch]
    for ax, name in zip(axes[0], names):
        ax.plot(epochs, history.history[name], marker="o", ms=3, label="train")
        if f"val_{name}" in history.history:
            ax.plot(epochs, history.history[f"val_{name}"], marker="o", ms=3, label="validation")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(os.path.join(run_dir, "curves.png"), buf.getvalue())
