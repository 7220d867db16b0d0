"""Run directories a user can trust: created fresh (an existing run is never overwritten), every file
written atomically (temporary file + rename), and everything needed to understand, reproduce, resume
and reuse a run kept together:

    runs/<name>/<timestamp>/
      spec.yaml             the spec as given          resolved.yaml   every default filled in
      environment.json      versions, seed, threads, command
      history.csv/.json     per-epoch metrics          curves.png      loss and metrics per epoch
      weights.final.npz     weights.best.npz           test_metrics.json
      checkpoint/           state to `--resume` an interrupted run
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import sys
import tempfile

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone makes files private


def atomic_write_bytes(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def new_run_dir(root: str, name: str) -> str:
    """runs/<name>/<UTC timestamp>, with -1, -2, ... appended if that exists: never reuse a directory."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = os.path.join(root, name)
    os.makedirs(base, exist_ok=True)
    for k in range(1000):
        path = os.path.join(base, stamp if k == 0 else f"{stamp}-{k}")
        try:
            os.mkdir(path)  # atomic: fails if another run took the name
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {base}")


def weight_keys(engine) -> list[str]:
    return [f"{s.name}/{spec.name}" for s in engine.steps for spec in s.specs]


def save_weights(path: str, engine) -> None:
    """Weights in Keras's layer/weight order, as an .npz keyed `layer/weight` (order preserved)."""
    buf = io.BytesIO()
    np.savez(buf, **dict(zip(weight_keys(engine), engine.get_weights())))
    atomic_write_bytes(path, buf.getvalue())


def load_weights(path: str, engine) -> None:
    """Load an .npz written by save_weights into `engine`; a mismatch names the first difference."""
    keys = weight_keys(engine)
    with np.load(path, allow_pickle=False) as archive:
        files = list(archive.files)
        if files != keys:
            missing = [k for k in keys if k not in files]
            extra = [k for k in files if k not in keys]
            detail = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra
                      else "the weights are in a different order")
            raise ValueError(f"{path} does not match this model ({len(files)} arrays, the model has "
                             f"{len(keys)}): {detail}")
        arrays = [archive[k] for k in keys]
    engine.set_weights(arrays)


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
