"""The Python API: Keras 3's Sequential / Functional interface on specc's schema, graph, engine and
training loop (one engine, two front doors: YAML specs and Python).

    import specc
    from specc import layers

    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(2, activation="relu"), layers.Dense(3)])
    model.summary()
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(x, y, epochs=5)

Modules, each importing only those above it: backend (names, seeds), tensors (symbolic tensors), layer
(layer classes generated from the registry) and layers (the public `specc.layers` names), functional
(models -> specc Graph + Engine), training (compile -> Trainer), config (models -> specs, configs and
compile settings as data), model (Model), sequential (Sequential), io (specs and configs -> models: load,
from_config), saving (`.specc` files: save / load_model), eager (run_eagerly); optimizers, losses,
metrics and callbacks hold Keras's classes for compile() and fit(). model.py reaches io and saving only
inside from_config() and save(). Nothing here imports Numba until a model runs.
"""

from . import callbacks, losses, metrics, optimizers
from .backend import clear_session, set_random_seed
from .io import load
from .layer import LAYER_CLASSES, ArgumentError, Input, InputLayer, Layer, Variable
from .model import Model
from .sequential import Sequential
from .tensors import KerasTensor

__all__ = ["ArgumentError", "Input", "InputLayer", "KerasTensor", "LAYER_CLASSES", "Layer", "Model", "Sequential",
           "Variable", "callbacks", "clear_session", "load", "losses", "metrics", "optimizers", "set_random_seed"]
