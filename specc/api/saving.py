"""Whole models in one file: `model.save("m.specc")` and `specc.models.load_model("m.specc")`.

A `.specc` file is a zip archive of data only (nothing is ever unpickled or executed):

    specc-model.json    what the archive is: format and version, the model's class, name and `trainable`,
                        the weights' `layer/weight` names, and a SHA-256 of every other member
    config.yaml         the model as a spec, as to_yaml() writes it (format v1: name, seed, model, the compile
                        section when a spec can say it), so `specc summary` reads it once extracted; a model
                        holding a nested Functional model uses the proposed `type: Functional` entry
                        (see specc.api.config), which specc.load does not read yet
    compile.json        compile()'s arguments (get_compile_config()), when the model is compiled
    training.json       the training loop's random generators (shuffling, dropout), once it has trained
    weights/00000.npy   every weight, in get_weights() order
    optimizer/<name>.npy  the optimizer's arrays: moments, iteration counter, a constant learning rate

Loading rebuilds the model from config.yaml (Model.from_config), sets the weights, compiles it from
compile.json and restores the optimizer and generators, so it predicts the same and `fit` continues exactly
as the saved model would have (an optimizer state that does not fit the model, because a layer's
`trainable` changed between compile() and save(), is skipped with a warning, as Keras 3 does). Every problem (not a zip, truncated, a member changed or missing, a newer
format, arrays that do not fit) is a ValueError naming the file and what is wrong.

The suffix is `.specc`, as Keras 3 requires `.keras` for its own format: save() refuses any other, and
points `.keras` / `.h5` to what specc offers instead (Keras's weight files through save_weights).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile
import zlib
from typing import Any

import numpy as np

FORMAT = "specc-model"
VERSION = 1
MANIFEST = "specc-model.json"
SUFFIX = ".specc"
_MAX_TEXT = 64 * 2**20  # config.yaml, compile.json, training.json: far above any real model's


def _suffix_problem(path: str, action: str) -> str | None:
    lower = path.lower()
    if lower.endswith(SUFFIX):
        return None
    if lower.endswith(".weights.h5"):
        return (f"{path} is a Keras weights file name; whole models are saved to '{SUFFIX}' files. For Keras's "
                f"weight files use model.{'save_weights' if action == 'save' else 'load_weights'}({path!r})")
    if lower.endswith(".keras"):
        return (f"{path}: specc does not write Keras's .keras format; save the whole model to a '{SUFFIX}' file "
                f"(model.save('model{SUFFIX}')), or its weights for Keras with model.save_weights('model.weights.h5')")
    if lower.endswith((".h5", ".hdf5")):
        return (f"{path}: legacy HDF5 whole-model files are not supported; save the whole model to a '{SUFFIX}' "
                f"file, or its weights for Keras with model.save_weights('model.weights.h5')")
    return (f"Invalid filepath extension for saving: {path}. A whole model is saved to a '{SUFFIX}' file, e.g. "
            f"model.save('model{SUFFIX}')")


def save_model(model: Any, filepath: str | os.PathLike, overwrite: bool = True) -> None:
    """Write `model` to `filepath` (a `.specc` file), atomically: an existing file is replaced only by a
    complete new one."""
    from ..train.run import atomic_write
    from .config import NotSerializable, model_dict
    from .sequential import Sequential

    path = os.fspath(filepath)
    problem = _suffix_problem(path, "save")
    if problem:
        raise ValueError(problem)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists and overwrite=False; pass overwrite=True to replace it")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; save() writes one file")
    model._require_built("save")
    texts: dict[str, bytes] = {"config.yaml": _config_yaml(model, model_dict).encode("utf-8")}
    try:
        compile_config = model.get_compile_config()
    except NotSerializable as exc:
        warnings.warn(f"model.save({path!r}): the compile settings are not saved ({exc}); the loaded model is "
                      f"not compiled: call compile() on it again", UserWarning, stacklevel=3)
        compile_config = None
    training = model.get_training_state() if compile_config is not None else None
    variables = model.weights
    arrays = {f"weights/{k:05d}.npy": v for k, v in enumerate(variables)}  # read one at a time while writing
    if compile_config is not None:
        texts["compile.json"] = _json(compile_config)
    if training is not None:
        texts["training.json"] = _json({"rng": training["rng"], "dropout_rng": training["dropout_rng"],
                                        "optimizer": list(training["optimizer"])})
        arrays.update({f"optimizer/{name}.npy": a for name, a in training["optimizer"].items()})
    from .. import __version__

    def write(fh) -> None:
        digests: dict[str, str] = {}
        with zipfile.ZipFile(fh, "w") as archive:
            for name, data in texts.items():
                archive.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
                digests[name] = hashlib.sha256(data).hexdigest()
            for name, value in arrays.items():  # stored, not deflated: float weights hardly compress
                with archive.open(name, "w", force_zip64=True) as member:
                    hashing = _Hashing(member)
                    array = value.numpy() if hasattr(value, "numpy") else value
                    np.lib.format.write_array(hashing, np.array(array, order="C"), allow_pickle=False)  # 0-d stays 0-d
                digests[name] = hashing.sha256.hexdigest()
            manifest = {"format": FORMAT, "version": VERSION, "specc": __version__,
                        "class": "Sequential" if isinstance(model, Sequential) else "Functional",
                        # Keras allows more in a model's name than a spec's `name` (a file name) does
                        "name": model.name, "trainable": model.trainable,
                        "weights": [v.path for v in variables], "members": digests}
            archive.writestr(MANIFEST, _json(manifest), compress_type=zipfile.ZIP_DEFLATED)

    atomic_write(path, write)


class _Hashing:
    """A writable file that passes bytes on to `target` and hashes them on the way."""

    def __init__(self, target: Any):
        self.target, self.sha256 = target, hashlib.sha256()

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        return self.target.write(data)


def _config_yaml(model: Any, model_dict: Any) -> str:
    import yaml

    return yaml.safe_dump(model_dict(model), sort_keys=False, default_flow_style=None, width=110)


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode("utf-8")


# --- loading ---------------------------------------------------------------------------------------------------


class _Archive:
    """The members of a .specc file, each checked against the manifest's SHA-256 as it is read."""

    def __init__(self, path: str):
        self.path = path
        self.zip = _open_zip(path)
        try:
            self.names = set(self.zip.namelist())
            self.manifest = self._manifest()
        except BaseException:
            self.zip.close()
            raise

    def fail(self, problem: str) -> ValueError:
        return ValueError(f"cannot load {self.path}: {problem}")

    def _manifest(self) -> dict:
        if MANIFEST not in self.names:
            kind = ("a Keras 3 .keras archive; specc loads its own .specc files: build the model in specc and "
                    "load Keras's weights with load_weights('model.weights.h5')" if "config.json" in self.names
                    and "metadata.json" in self.names else f"not a specc model file (no {MANIFEST} in the zip)")
            raise self.fail(f"it is {kind}")
        manifest = self._json(MANIFEST, check=False)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise self.fail(f"it is not a specc model file ({MANIFEST} does not say format {FORMAT!r})")
        version = manifest.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise self.fail(f"{MANIFEST} has no valid format version")
        if version != VERSION:
            newer = "a newer" if version > VERSION else "an unknown"
            raise self.fail(f"it is in {newer} format version ({version}); this specc "
                            f"({_specc_version()}) reads version {VERSION}. It was written by specc "
                            f"{manifest.get('specc', '?')}")
        members = manifest.get("members")
        weights = manifest.get("weights")
        if not isinstance(members, dict) or not all(isinstance(v, str) for v in members.values()) \
                or not isinstance(weights, list) or not all(isinstance(w, str) for w in weights):
            raise self.fail(f"{MANIFEST} is damaged (its `members` or `weights` list is not what save() writes)")
        for name in members:
            if name not in self.names:
                raise self.fail(f"member {name!r} is missing (the file was modified or is incomplete)")
        extra = sorted(self.names - set(members) - {MANIFEST})
        if extra:
            raise self.fail(f"it holds member {extra[0]!r}, which its manifest does not list (the file was modified)")
        return manifest

    def has(self, name: str) -> bool:
        return name in self.manifest["members"]

    def read(self, name: str, limit: int, check: bool = True) -> bytes:
        info = self.zip.getinfo(name)
        if info.file_size > limit:
            raise self.fail(f"member {name!r} is {info.file_size:,} bytes, more than the {limit:,} it can be")
        try:
            data = self.zip.read(name)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
            raise self.fail(f"member {name!r} is damaged ({exc})") from None
        if check and hashlib.sha256(data).hexdigest() != self.manifest["members"][name]:
            raise self.fail(f"member {name!r} does not match its checksum: the file was modified or is damaged")
        return data

    def _json(self, name: str, check: bool = True) -> Any:
        try:
            return json.loads(self.read(name, _MAX_TEXT, check).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            if str(exc).startswith("cannot load"):
                raise
            raise self.fail(f"member {name!r} is not valid JSON ({exc})") from None

    def json(self, name: str) -> Any:
        return self._json(name)

    def array(self, name: str, shape: tuple | None = None, dtype: Any = None) -> np.ndarray:
        """A numeric array member; with `shape`, one of that shape (and the size read is bounded by it)."""
        limit = 4096 + (int(np.prod(shape)) * 8 if shape is not None else 2**34)
        data = self.read(name, limit)
        try:
            a = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise self.fail(f"member {name!r} is not a numeric .npy array ({exc})") from None
        if a.dtype.kind not in "biuf":
            raise self.fail(f"member {name!r} holds dtype {a.dtype}, not numbers")
        if shape is not None and a.shape != tuple(shape):
            raise self.fail(f"member {name!r} has shape {a.shape}; the model expects {tuple(shape)}")
        return a if dtype is None else a.astype(dtype, copy=False)

    def close(self) -> None:
        self.zip.close()


def _specc_version() -> str:
    from .. import __version__

    return __version__


def _open_zip(path: str) -> zipfile.ZipFile:
    from ..spec.files import NotRegularFile, describe_head, open_regular_file

    if os.path.isdir(path):
        raise ValueError(f"cannot load {path}: it is a directory, not a .specc model file")
    try:
        with open_regular_file(path) as fh:
            head = fh.read(8)
    except NotRegularFile as exc:
        raise ValueError(f"cannot load {path}: it is {exc}, not a .specc model file") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"no model file at {path}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if not head.startswith(b"PK"):
        kind = describe_head(head)
        if kind == "an HDF5 file":
            kind += (": for Keras's weight files build the model and call "
                     "model.load_weights('model.weights.h5')")
        elif kind == "a text file":
            kind += " (for a YAML spec use specc.load)"
        raise ValueError(f"cannot load {path}: it is not a .specc model file (a zip archive); it is {kind}")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise ValueError(f"cannot load {path}: it is truncated or damaged, not a complete zip archive ({exc})") from None


def load_model(filepath: str | os.PathLike, custom_objects: Any = None, compile: bool = True,
               safe_mode: bool = True) -> Any:
    """A model saved by model.save(): same layers, names and weights; with compile=True (the default) also
    compiled as it was, with its optimizer and training-loop state, so fit() continues exactly."""
    from ..spec.yamlpos import load_yaml
    from .io import model_from_config
    from .layer import ArgumentError
    from .model import Model
    from .sequential import Sequential

    if custom_objects:
        raise NotImplementedError("custom_objects: specc models hold only registered layers, losses and metrics")
    path = os.fspath(filepath)
    if path.lower().endswith((".keras", ".h5", ".hdf5")) and not path.lower().endswith(SUFFIX):
        raise ValueError(f"cannot load {path}: specc.models.load_model reads '{SUFFIX}' files written by "
                         f"model.save(). For Keras's weight files, build the model in specc and call "
                         f"model.load_weights('model.weights.h5')")
    archive = _Archive(path)
    try:
        data, _, errors = load_yaml(archive.read("config.yaml", _MAX_TEXT), f"{path}:config.yaml")
        if errors:
            raise archive.fail(f"config.yaml is not valid YAML ({errors[0].message})")
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise archive.fail("config.yaml has no `model` section")
        manifest = archive.manifest
        config = {**data["model"], "name": manifest.get("name", data.get("name")),
                  "trainable": manifest.get("trainable", True)}
        cls = Sequential if archive.manifest.get("class") == "Sequential" else Model
        try:
            model = model_from_config(config, cls)
        except (ArgumentError, ValueError, TypeError, NotImplementedError) as exc:
            raise archive.fail(f"config.yaml does not describe a model specc can build: {exc}") from None
        if data.get("seed") is not None:
            model.seed = data["seed"]
        _load_weights(archive, model)
        if compile and archive.has("compile.json"):
            try:
                model.compile_from_config(archive.json("compile.json"))
            except ValueError as exc:
                if str(exc).startswith("cannot load"):
                    raise
                raise archive.fail(f"compile.json cannot be used: {exc}") from None
            if archive.has("training.json"):
                _load_training_state(archive, model)
    finally:
        archive.close()
    return model


def _load_weights(archive: _Archive, model: Any) -> None:
    variables = model.weights
    names = archive.manifest["weights"]
    if len(names) != len(variables):
        raise archive.fail(f"it holds {len(names)} weights, but the model its config describes has "
                           f"{len(variables)}")
    for name, v in zip(names, variables):
        if name != v.path:
            raise archive.fail(f"weight {name!r} is where the model has {v.path!r}")
    arrays = [archive.array(f"weights/{k:05d}.npy", v.shape, np.float32) for k, v in enumerate(variables)]
    model.set_weights(arrays)


def _load_training_state(archive: _Archive, model: Any) -> None:
    state = archive.json("training.json")
    if not isinstance(state, dict) or not isinstance(state.get("optimizer"), list) \
            or not all(isinstance(n, str) and n.isidentifier() for n in state["optimizer"]):
        raise archive.fail("training.json is damaged (not what save() writes)")
    optimizer = {}
    for name in state["optimizer"]:
        member = f"optimizer/{name}.npy"
        if not archive.has(member):
            raise archive.fail(f"member {member!r} is missing")
        optimizer[name] = archive.array(member)
    try:
        model.set_training_state({"optimizer": optimizer, "rng": state.get("rng"),
                                  "dropout_rng": state.get("dropout_rng")})
    except ValueError as exc:
        # As Keras 3 skips optimizer variables that do not match (a layer's `trainable` changed after
        # compile() and before save(), so the saved optimizer covers other weights): the model loads, and
        # training starts with a fresh optimizer.
        warnings.warn(f"{archive.path}: the optimizer and training-loop state were not restored ({exc}); "
                      f"fit() starts with a fresh optimizer", UserWarning, stacklevel=3)


def load_weights_from_archive(model: Any, filepath: str | os.PathLike) -> None:
    """model.load_weights('m.specc'): only the weights of a saved model, matched by position (the model's
    architecture must be the saved one's), as Keras 3 loads weights from a .keras file."""
    path = os.fspath(filepath)
    archive = _Archive(path)
    try:
        variables = model.weights
        names = archive.manifest["weights"]
        if len(names) != len(variables):
            raise archive.fail(f"it holds {len(names)} weights, model '{model.name}' has {len(variables)}")
        model.set_weights([archive.array(f"weights/{k:05d}.npy", v.shape, np.float32)
                           for k, v in enumerate(variables)])
    finally:
        archive.close()
