"""The specs, configs and files half of the model interface, which `specc.Model` (and so `specc.Sequential`)
inherits: to_yaml, get_config / from_config, the compile config and training state, save, save_weights /
load_weights and export.

specc.api.config turns a model into data, specc.api.io turns data into models and specc.api.saving reads and
writes `.specc` files; these methods are the Keras-named entry points to them.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ..train import checks

if TYPE_CHECKING:
    from .model import Model


class SavingMixin:
    """Model's specs, configs, saving and weights files (mixed into specc.api.model.Model, whose engine holds
    the weights)."""

    # --- specs, configs and saving (specc.api.config builds the data, specc.api.io and saving the models) --

    @property
    def seed(self) -> int | None:
        """The seed a spec gave this model (specc.load): its training loop's shuffling and dropout follow it,
        and to_yaml() writes it. None for a model built in Python (the session's generator seeds fit())."""
        return self._seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        self._seed = None if value is None else checks.check_non_negative_int("seed", value)

    @property
    def source_spec(self) -> Any:
        """The validated Spec this model was loaded from (specc.load), or None; to_yaml() keeps its data and
        fit sections."""
        return self._source

    @source_spec.setter
    def source_spec(self, spec: Any) -> None:
        self._source = spec

    @property
    def compile_settings(self) -> Any:
        """What compile() was last given (specc.api.training.CompileConfig), or None before compile()."""
        return self._compiled

    def to_yaml(self) -> str:
        """A spec (format v1) for this model: it validates, and specc.load() gives back the same model."""
        from .config import has_graph_blocks, model_yaml

        self._require_built("to_yaml")
        if has_graph_blocks(self):
            raise NotImplementedError(f"model '{self.name}' holds a nested Functional model, which spec format "
                                      f"v1 cannot say yet (a nested block there is a chain of layers). Save the "
                                      f"whole model with model.save('{self.name}.specc'), or get_config() for its "
                                      f"structure as data.")
        return model_yaml(self)

    def export(self, filepath: str | os.PathLike, format: str = "onnx", verbose: Any = None,
               input_signature: Any = None, **kwargs: Any) -> None:
        """Keras 3's export, for format="onnx" (the one format specc writes): the model with its current
        weights as an ONNX file with a dynamic batch axis (see specc/export). An existing file is never
        replaced (FileExistsError); a layer that cannot be exported is a ValueError naming it, before any
        file is written."""
        from ..export import ExportError
        from ..export.to_onnx import OPSET

        if format != "onnx":
            raise ValueError(f"Unrecognized format={format!r}: specc exports only format='onnx'")
        if input_signature is not None:
            raise NotImplementedError("input_signature is not supported: specc exports the model's own input "
                                      "shapes with a dynamic batch axis")
        opset = kwargs.pop("opset_version", None)
        if kwargs:
            raise TypeError(f"export() got unexpected argument(s) {', '.join(sorted(kwargs))}")
        if opset not in (None, OPSET):
            raise ValueError(f"opset_version={opset!r}: specc exports ONNX opset {OPSET}")
        path = os.fspath(filepath)
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists; specc's export never overwrites a file: remove it or choose "
                                  f"another path")
        self._require_built("export")
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise ImportError("model.export(format='onnx') needs the onnx package: pip install 'specc[onnx]'") \
                from None
        from ..export.to_onnx import build_model, write_new

        try:
            model = build_model(self._engine(), self.name)
        except ExportError as exc:
            raise ValueError(f"cannot export model '{self.name}': {exc}") from None
        write_new(path, model)
        if verbose:
            print(f"Saved artifact at '{path}'.")

    def get_config(self) -> dict:
        """Keras's get_config: `name`, `trainable` and the spec's model section (`input`/`inputs`, `layers`,
        `outputs`); weights are not part of it. `from_config` builds the same model from it."""
        from .config import model_config

        return model_config(self)

    @classmethod
    def from_config(cls, config: dict, custom_objects: Any = None) -> Model:
        """A new model (fresh weights) with the layers, names and arguments of `config` (get_config())."""
        from .io import model_from_config  # io builds models, so it imports this module: import it late

        if custom_objects:
            raise NotImplementedError("custom_objects: specc has no custom layers; every layer comes from its "
                                      "registry")
        return model_from_config(config, cls)

    def get_compile_config(self) -> dict | None:
        """Keras 3's get_compile_config: compile()'s arguments as data (None before compile()). A ValueError
        names an argument that has no data form (a custom function)."""
        from .config import compile_config

        return compile_config(self._compiled, self.run_eagerly)

    def compile_from_config(self, config: dict) -> None:
        """Keras 3's compile_from_config: compile() with what get_compile_config() returned."""
        from .config import compile_arguments

        self.compile(**compile_arguments(config))

    def get_training_state(self) -> dict | None:
        """What training needs to continue exactly where it stopped, beyond the weights: the optimizer's
        arrays (moments, iteration counter, a constant learning rate) and the training loop's random
        generators (shuffling, dropout), as copies; None before the first fit()/evaluate() built them."""
        trainer = self._trainer
        if trainer is None:
            return None
        return {"optimizer": {k: np.array(v) for k, v in trainer.optimizer.state_arrays().items()},
                "rng": trainer.rng.bit_generator.state, "dropout_rng": trainer.dropout_rng.bit_generator.state}

    def set_training_state(self, state: dict) -> None:
        """Restore get_training_state() into this compiled model (its training loop is built for it). Every
        array is checked against the optimizer's before any is written (a ValueError says which differs)."""
        trainer = self._get_trainer()
        trainer.optimizer.load_state_arrays(state["optimizer"])
        for name in ("rng", "dropout_rng"):
            generator = getattr(trainer, name)
            try:
                generator.bit_generator.state = state[name]
            except (TypeError, ValueError, KeyError) as exc:
                raise ValueError(f"the training loop's {name} state does not fit: {exc}") from None

    def initialize_weights(self, seed: int | None) -> None:
        """Draw every weight from Keras's initializers with a generator seeded `seed`, in layer order: the
        same draws `specc train` makes for a spec with this seed."""
        self._engine().initialize(seed)

    def save(self, filepath: str | os.PathLike, overwrite: bool = True, zipped: Any = None, **kwargs: Any) -> None:
        """The whole model in one `.specc` file (specc.api.saving): its config, weights, compile settings and
        optimizer and training-loop state, so that specc.models.load_model(filepath) predicts the same and
        continues training exactly. overwrite=False refuses an existing file (FileExistsError)."""
        from .saving import save_model

        if kwargs:
            raise TypeError(f"save() got unexpected argument(s) {', '.join(sorted(kwargs))}")
        if zipped is False:
            raise NotImplementedError("zipped=False: a .specc model is always one zip file")
        save_model(self, filepath, overwrite=overwrite)

    # --- weights ------------------------------------------------------------------------------------

    def save_weights(self, filepath: str | os.PathLike, overwrite: bool = True) -> None:
        """Every weight: in Keras 3's HDF5 layout for a `.weights.h5` path (specc.interop.keras_h5), else in
        an .npz keyed `layer/weight` (the format `specc train` writes)."""
        from ..train.run import save_weights

        path = os.fspath(filepath)
        if not path.endswith((".npz", ".weights.h5")):
            raise ValueError(f"save_weights writes Keras's '.weights.h5' files or specc's '.npz' (the format of "
                             f"`specc train` runs); got {path!r}. Use a path ending in .weights.h5 or .npz, e.g. "
                             f"'model.weights.h5'; a whole model goes to model.save('model.specc')")
        if not overwrite and os.path.exists(path):
            raise FileExistsError(f"{path} exists and overwrite=False")
        self._require_built("save_weights")
        if path.endswith(".weights.h5"):
            _keras_h5().save_weights(self, path)
            return
        save_weights(path, self._engine())

    def load_weights(self, filepath: str | os.PathLike) -> None:
        """Load Keras 3's `.weights.h5` (specc.interop.keras_h5), the weights of a `.specc` model file, or an
        .npz written by save_weights (or a `specc train` run's weights.*.npz).

        Arrays are matched by their `layer/weight` keys when the names agree, else by position, as Keras 3
        matches a weights file to the model's structure (so a model rebuilt in the same session, whose
        auto-names moved on to dense_4, still loads). Nothing is written unless every array fits.
        """
        from ..train.run import weight_keys

        path = os.fspath(filepath)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no weights file at {path}")
        self._require_built("load_weights")
        if path.endswith(".h5"):
            _keras_h5().load_weights(self, path)
            return
        if path.endswith(".specc"):
            from .saving import load_weights_from_archive

            load_weights_from_archive(self, path)
            return
        engine = self._engine()
        keys = weight_keys(engine)
        try:
            archive = np.load(path, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy array, not named weights
                raise ValueError("it holds one array, not named weights")
            with archive:
                files = list(archive.files)
                names = keys if sorted(files) == sorted(keys) else files
                arrays = [archive[k] for k in names]
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise ValueError(f"cannot load {path} into model '{self.name}': it is not a weights file written by "
                             f"save_weights (an .npz of `layer/weight` arrays) or it is damaged ({exc})") from None
        expected = [w.shape for s in engine.steps for w in s.weights]
        problem = None
        if len(arrays) != len(expected):
            problem = f"the file has {len(arrays)} weight arrays, the model has {len(expected)} ({', '.join(keys)})"
        else:
            for k, (a, shape) in enumerate(zip(arrays, expected)):
                if a.dtype.kind not in "biuf":
                    problem = f"array {k} ({names[k]}) has dtype {a.dtype}; weights are real numbers"
                    break
                if a.shape != shape:
                    problem = (f"array {k} ({names[k]}) has shape {a.shape}, but the model's weight {keys[k]} has "
                               f"shape {shape}")
                    break
        if problem:
            raise ValueError(f"cannot load {path} into model '{self.name}': {problem}. The weights must come "
                             f"from a model with the same layers (save_weights of the same architecture).")
        engine.set_weights(arrays)


def _keras_h5():
    """specc.interop.keras_h5 (Keras 3's `.weights.h5` layout), imported when a path asks for it."""
    try:
        from ..interop import keras_h5
    except ImportError as exc:
        if exc.name is not None and exc.name.startswith("specc.interop"):
            raise NotImplementedError("Keras '.weights.h5' files need specc.interop.keras_h5, which this specc "
                                      "does not have; use an '.npz' path (model.save_weights('model.weights.npz'))"
                                      ) from None
        raise ImportError(f"Keras '.weights.h5' files need h5py: pip install 'specc[h5]' ({exc})") from None
    return keras_h5
