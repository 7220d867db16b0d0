"""Dataset sources named by a spec's `data.source`: scikit-learn's bundled datasets (no download),
synthetic data shaped for the model, and the user's own .npz or .csv files.

Every problem a user can fix (a missing file, a missing array or column, a non-numeric cell) is raised
as `DataError` with the spec path it belongs to, so the CLI can point at the line in the spec.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np


class DataError(Exception):
    def __init__(self, path: tuple, message: str):
        self.path, self.message = path, message
        super().__init__(message)


@dataclass
class Arrays:
    x: np.ndarray  # (samples, *features)
    y: np.ndarray  # (samples,) integer labels, or (samples, *targets)
    name: str  # for messages: "digits", "data.npz", ...
    classification: bool


BUILTIN = {
    "digits": "load_digits",
    "iris": "load_iris",
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
}


# scikit-learn's bundled files, read directly: importing sklearn costs 1-2 s of start-up for a few KB of
# data. The layout is sklearn's load_csv_data (a "n_samples,n_features,names..." header line, then the
# features and an integer target per row); digits has no header.
_FILES = {"digits": ("digits.csv.gz", False), "iris": ("iris.csv", True), "wine": ("wine_data.csv", True),
          "breast_cancer": ("breast_cancer.csv", True)}


def _sklearn_data_dir() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")


def builtin(name: str) -> Arrays:
    filename, has_header = _FILES[name]
    directory = _sklearn_data_dir()
    path = os.path.join(directory, filename) if directory else ""
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1 if has_header else 0, dtype=np.float64)
        x, y = table[:, :-1], table[:, -1]
    except (OSError, ValueError):  # a scikit-learn whose file layout changed: use its loader
        import sklearn.datasets

        x, y = getattr(sklearn.datasets, BUILTIN[name])(return_X_y=True)
    return Arrays(x.astype(np.float32), y.astype(np.int64), name, classification=True)


def synthetic_inputs(input_shape: tuple, samples: int, seed: int) -> np.ndarray:
    """Gaussian inputs of the model's input shape (variable sizes become 8); targets come from a teacher
    in specc.data.prepare."""
    rng = np.random.default_rng(seed)
    shape = tuple(d if d is not None else 8 for d in input_shape)
    return rng.standard_normal((samples, *shape)).astype(np.float32)


def from_file(source, base_dir: str) -> Arrays:
    path = source.path if os.path.isabs(source.path) else os.path.join(base_dir, source.path)
    where = ("data", "source", "path")
    if not os.path.exists(path):
        raise DataError(where, f"data file not found: {path} (relative paths start at the spec's folder)")
    if path.endswith(".npz"):
        return _npz(path, source, where)
    return _csv(path, source, where)


def _npz(path: str, source, where: tuple) -> Arrays:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # a corrupt or non-npz file: numpy raises several types
        raise DataError(where, f"cannot read {path} as .npz: {exc}") from None
    with archive:
        arrays = {}
        for key, field in (("x", source.x or "x"), ("y", source.y or "y")):
            if field not in archive.files:
                raise DataError(("data", "source", key) if getattr(source, key) else where,
                                f"{os.path.basename(path)} has no array {field!r}; it has: "
                                f"{', '.join(archive.files) or 'nothing'}")
            arrays[key] = archive[field]
    x, y = arrays["x"], arrays["y"]
    if len(x) != len(y):
        raise DataError(where, f"{os.path.basename(path)}: x has {len(x)} samples but y has {len(y)}")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(where, f"{os.path.basename(path)}: x must be numeric, got dtype {x.dtype}")
    classification = np.issubdtype(y.dtype, np.integer) or y.dtype == bool
    return Arrays(x.astype(np.float32), y if classification else y.astype(np.float32), os.path.basename(path),
                  classification)


def _csv(path: str, source, where: tuple) -> Arrays:
    name = os.path.basename(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise DataError(where, f"{name} needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    target = source.target or header[-1]
    if target not in header:
        raise DataError(("data", "source", "target") if source.target else where,
                        f"{name} has no column {target!r}; columns: {', '.join(header)}")
    t = header.index(target)
    features, labels = [], []
    for i, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(where, f"{name}:{i}: {len(row)} cells, but the header has {len(header)}")
        try:
            features.append([float(c) for j, c in enumerate(row) if j != t])
        except ValueError:
            bad = next(j for j, c in enumerate(row) if j != t and not _is_float(c))
            raise DataError(where, f"{name}:{i}: column {header[bad]!r} is not a number: {row[bad]!r}") from None
        labels.append(row[t].strip())
    x = np.asarray(features, np.float32)
    if all(_is_int(v) for v in labels):
        return Arrays(x, np.asarray([int(float(v)) for v in labels], np.int64), name, classification=True)
    if all(_is_float(v) for v in labels):
        return Arrays(x, np.asarray([float(v) for v in labels], np.float32), name, classification=False)
    classes = sorted(set(labels))  # string labels become class indices in sorted order
    index = {c: k for k, c in enumerate(classes)}
    return Arrays(x, np.asarray([index[v] for v in labels], np.int64), name, classification=True)


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _is_int(s: str) -> bool:
    return s.strip().lstrip("-").isdigit()
