"""Dataset sources named by a spec's `data.source`: scikit-learn's bundled datasets (no download),
synthetic data shaped for the model, and the user's own .npz or .csv files.

Every problem a user can fix (a missing file, a missing array or column, a non-numeric cell) is raised
as `DataError` with the spec path it belongs to, so the CLI can point at the line in the spec.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from ..spec.errors import show_value
from ..spec.files import NotRegularFile, open_regular_file


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
    try:
        fh = open_regular_file(path)
    except NotRegularFile as exc:
        raise DataError(where, f"cannot read {path}: {exc}") from None
    except OSError as exc:
        raise DataError(where, f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        if path.endswith(".npz"):
            return _npz(fh, path, source, where)
        return _csv(fh, path, source, where)


def _npz(fh, path: str, source, where: tuple) -> Arrays:
    name = os.path.basename(path)
    try:
        archive = np.load(fh, allow_pickle=False)
    except Exception as exc:  # a corrupt or non-npz file: numpy raises several types
        raise DataError(where, f"cannot read {name} as .npz: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # np.load reads a lone .npy array too
        raise DataError(where, f"{name} holds a single .npy array, not an .npz archive of named arrays; save it "
                               f"with np.savez({name!r}, x=..., y=...)")
    with archive:
        arrays = {}
        for key, field in (("x", source.x or "x"), ("y", source.y or "y")):
            at = ("data", "source", key) if getattr(source, key) else where
            if field not in archive.files:
                raise DataError(at, f"{name} has no array {field!r}; it has: {', '.join(archive.files) or 'nothing'}")
            try:
                arrays[key] = archive[field]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise DataError(at, f"{name}: array {field!r} holds Python objects (dtype=object), which "
                                        f"specc does not load (that would need pickle); save it as a numeric "
                                        f"array, e.g. np.asarray({field}, dtype=np.float32)") from None
                raise DataError(at, f"{name}: array {field!r} cannot be read: {exc}") from None
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
                raise DataError(at, f"{name}: array {field!r} cannot be read, the file is damaged ({exc})") from None
            _check_array(arrays[key], name, field, at, "features" if key == "x" else "targets")
    x, y = arrays["x"], arrays["y"]
    if len(x) != len(y):
        raise DataError(where, f"{name}: x has {len(x)} samples but y has {len(y)}")
    classification = np.issubdtype(y.dtype, np.integer) or y.dtype == bool
    return Arrays(x.astype(np.float32), y if classification else y.astype(np.float32), name, classification)


def _check_array(a: np.ndarray, name: str, field: str, at: tuple, role: str) -> None:
    """One array of an .npz as training data: samples along axis 0, real numbers."""
    what = f"{name}: array {field!r}"
    if not isinstance(a, np.ndarray):  # NumPy hands back the raw bytes of a member that is not in .npy format
        raise DataError(at, f"{what} is not an .npy array inside the archive; save it with np.savez")
    if a.ndim == 0:
        raise DataError(at, f"{what} is a single value (shape ()); expected one row of {role} per sample")
    if a.size == 0:
        raise DataError(at, f"{what} is empty (shape {a.shape}); expected at least one sample")
    if np.issubdtype(a.dtype, np.complexfloating):
        raise DataError(at, f"{what} holds complex numbers ({a.dtype}); specc trains on real numbers: save the "
                            f"real and imaginary parts as separate {role}")
    if a.dtype.kind in "US":
        hint = "class labels as integers 0..K-1" if role == "targets" else "numbers"
        raise DataError(at, f"{what} holds strings ({a.dtype}); save {hint}")
    if a.dtype.kind not in "biuf":  # timedelta64 counts as an integer type to NumPy, but is not a number here
        raise DataError(at, f"{what} must hold numbers, got dtype {a.dtype}")


def _csv(fh, path: str, source, where: tuple) -> Arrays:
    name = os.path.basename(path)
    raw = fh.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(where, f"{name}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the CSV as "
                               f"UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise DataError(where, f"{name}:{reader.line_num}: {_csv_problem(exc, text, reader.line_num)}") from None
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
            raise DataError(where, f"{name}:{i}: column {header[bad]!r} is not a number: "
                                   f"{show_value(row[bad])}") from None
        labels.append(row[t].strip())
    if not labels:
        raise DataError(where, f"{name} has a header but no data rows")
    x = np.asarray(features, np.float32)
    if all(_is_int(v) for v in labels):
        values = [int(v) for v in labels]  # at most 18 digits (_is_int), so int64 holds them
        return Arrays(x, np.asarray(values, np.int64), name, classification=True)
    if all(_is_float(v) for v in labels):
        return Arrays(x, np.asarray([float(v) for v in labels], np.float32), name, classification=False)
    classes = sorted(set(labels))  # string labels become class indices in sorted order
    index = {c: k for k, c in enumerate(classes)}
    return Arrays(x, np.asarray([index[v] for v in labels], np.int64), name, classification=True)


def _csv_problem(exc: csv.Error, text: str, line: int) -> str:
    """What csv.reader refused, in the user's terms: an over-long cell names its column when the line
    splits plainly on commas."""
    limit = csv.field_size_limit()
    if "field larger than field limit" not in str(exc):
        return f"not a valid CSV row ({exc})"
    header = next(csv.reader(io.StringIO(text.split("\n", 1)[0])), [])
    lines = text.split("\n")
    cells = lines[line - 1].split(",") if 0 < line <= len(lines) else []
    long = [j for j, cell in enumerate(cells) if len(cell) > limit]
    column = (f"column {header[long[0]].strip()!r}" if long and long[0] < len(header) else
              f"column {long[0] + 1}" if long else "a cell")
    return f"{column} has a cell longer than {limit:,} characters; a CSV of numbers has no such cell"


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _is_int(s: str) -> bool:
    digits = s.strip().removeprefix("-")
    return digits.isdigit() and len(digits) <= 18
