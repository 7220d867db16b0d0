"""The graph executor: runs a Sequential chain or a Functional DAG forward in topological order, keeps what
backward needs, and runs backward in reverse order, summing gradients where a tensor feeds several layers.

All parameters live in one contiguous buffer, trainable ones first:

    params = [ trainable weights ... | non-trainable weights (frozen layers, BN statistics) ... ]
    grads  = [ gradients of the trainable part ]

so an optimizer step is one fused kernel over `params[:n_trainable]` and `grads`, and a data-parallel
mode can all-reduce `grads` in one call. Each layer sees its weights as views into `params`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import numpy as np

from .graph import Graph, Node
from .layers.base import LayerSpec, WeightSpec
from .workspace import Workspace, aligned_zeros, empty


@dataclass
class Step:
    """One executable layer; nested Sequential blocks are flattened into their leaves."""

    name: str  # the name of the tensor it produces
    layer: LayerSpec
    inbound: list[str]
    trainable: bool
    specs: list[WeightSpec]
    input_shape: Any
    output_shape: tuple
    weights: list[np.ndarray] = field(default_factory=list)
    grads: list[np.ndarray | None] = field(default_factory=list)
    # The activation the engine applies after the layer's forward (and whose derivative before its
    # backward), or None: worked out once (Engine.__init__), not asked of the layer at every pass.
    activation: str | None = None
    inputs_only: bool = False  # fed only by model inputs: its input gradient is needed only when asked for


def _resolve(alias: dict[str, str], name: str) -> str:
    """The tensor a name stands for: a nested block's name means its last leaf's output."""
    while name in alias:
        name = alias[name]
    return name


def _flatten(graph: Graph) -> tuple[list[Step], dict[str, str]]:
    """Executable steps in order, and aliases from block names to the tensor their last leaf produces."""
    steps: list[Step] = []
    alias: dict[str, str] = {}

    def add(node: Node, inbound: list[str]) -> None:
        if node.children:
            prev = inbound
            for child in node.children:
                add(child, prev)
                prev = [child.name]
            alias[node.name] = node.children[-1].name
            return
        steps.append(Step(node.name, node.layer, [_resolve(alias, n) for n in inbound], node.trainable,
                          list(node.weights), node.input_shape, node.output_shape))

    for node in graph.nodes:
        add(node, node.inbound)
    return steps, alias


def _plan(steps: list[Step], output_names: list[str]) -> list[Step]:
    """The steps as forward runs them: a convolution whose output only a max pooling reads (and that is
    not a model output) runs with it as one step (layers/fusion.py), under the pooling's name; so do a
    BatchNormalization or a two-input Add and the ReLU (or, after BatchNormalization, ReLU6) Activation
    layer that alone reads it; a two-input Add and the LayerNormalization over the last axis that alone
    reads it, under the normalisation's name and with its weights; and a ZeroPadding2D and the
    DepthwiseConv2D that alone reads it, under the convolution's name and with its weights."""
    from .layers.fusion import (
        AddAct,
        AddNorm,
        BatchNormAct,
        ConvPool,
        fusable,
        fusable_activation,
        fusable_norm,
        fusable_padding,
        padded_step,
    )

    readers: dict[str, list[Step]] = {}
    for s in steps:
        for name in s.inbound:
            readers.setdefault(name, []).append(s)
    plan: list[Step] = []
    absorbed: set[str] = set()
    for s in steps:
        if s.name in absorbed:
            continue
        after = readers.get(s.name, [])
        pool = after[0] if len(after) == 1 and after[0].inbound == [s.name] else None
        if pool is not None and s.name not in output_names and fusable(s.layer, pool.layer):
            absorbed.add(pool.name)
            s = Step(pool.name, ConvPool(s.layer, pool.layer), s.inbound, s.trainable, s.specs, s.input_shape,
                     pool.output_shape, s.weights, s.grads)
        elif pool is not None and s.name not in output_names and fusable_activation(s.layer, pool.layer) and \
                (not s.layer.is_merge or len(s.inbound) == 2):
            absorbed.add(pool.name)
            fused = (AddAct if s.layer.is_merge else BatchNormAct)(s.layer, pool.layer)
            s = Step(pool.name, fused, s.inbound, s.trainable, s.specs, s.input_shape, pool.output_shape,
                     s.weights, s.grads)
        elif pool is not None and s.name not in output_names and len(s.inbound) == 2 and \
                fusable_norm(s.layer, pool.layer, len(pool.output_shape) + 1):
            absorbed.add(pool.name)
            s = Step(pool.name, AddNorm(s.layer, pool.layer), s.inbound, pool.trainable, pool.specs, s.input_shape,
                     pool.output_shape, pool.weights, pool.grads)
        elif pool is not None and s.name not in output_names and fusable_padding(s.layer, pool.layer):
            absorbed.add(pool.name)
            s = Step(pool.name, padded_step(s.layer, pool.layer), s.inbound, pool.trainable, pool.specs,
                     s.input_shape, pool.output_shape, pool.weights, pool.grads)
        plan.append(s)
    return plan


class Engine:
    def __init__(self, graph: Graph, dtype: Any = np.float32, fuse: bool = True):
        self.graph = graph
        self.dtype = np.dtype(dtype)
        self.steps, self._alias = _flatten(graph)
        self.input_names = [n.name for n in graph.inputs]
        self.output_names = [self._resolve(n) for n in graph.outputs]
        self._own_threads = any(s.layer.runs_own_threads for s in self.steps)
        self._holding = 0  # held_threads depth

        # Layout: trainable weights first, so the optimizer sees one contiguous range.
        placed = [(s, i, w) for s in self.steps for i, w in enumerate(s.specs)]
        trainable = [(s, i, w) for s, i, w in placed if s.trainable and w.trainable]
        frozen = [(s, i, w) for s, i, w in placed if not (s.trainable and w.trainable)]
        self.n_trainable = sum(w.size for _, _, w in trainable)
        self.n_params = self.n_trainable + sum(w.size for _, _, w in frozen)
        self.params = aligned_zeros(self.n_params, self.dtype)  # 64-byte aligned: sgemm's vectors (workspace.py)
        self.grads = aligned_zeros(self.n_trainable, self.dtype)
        for s in self.steps:
            s.weights = [None] * len(s.specs)
            s.grads = [None] * len(s.specs)
        # Start of each trainable variable, then the end: optimizers clip per variable, as Keras does.
        self.variable_offsets = np.cumsum([0] + [w.size for _, _, w in trainable]).astype(np.int64)
        offset = 0
        for s, i, w in trainable + frozen:
            s.weights[i] = self.params[offset: offset + w.size].reshape(w.shape)
            if offset < self.n_trainable:
                s.grads[i] = self.grads[offset: offset + w.size].reshape(w.shape)
            offset += w.size
        # Frozen layers still need somewhere to write weight gradients during backward.
        for s in self.steps:
            for i, w in enumerate(s.specs):
                if s.grads[i] is None and w.trainable:
                    s.grads[i] = np.zeros(w.shape, self.dtype)
        # What forward and backward run: the steps, with fusable pairs as one (after the weights are placed:
        # a fused step shares its convolution's views). fuse=False runs every layer apart (the tests
        # compare the two).
        self.plan = _plan(self.steps, self.output_names) if fuse else list(self.steps)
        input_set = set(self.input_names)
        for s in self.plan:
            act = s.layer.output_activation()
            s.activation = act if act != "linear" and not s.layer.applies_activation() else None
            s.inputs_only = all(n in input_set for n in s.inbound)
        # Gradients w.r.t. the model inputs (`_input_grads` after backward): the gradient checks want them,
        # training does not (the Trainer turns them off, saving the first layer's largest product).
        self.input_gradients = True
        # Arrays a training step reuses at the next step (see workspace.py): forward/backward(reuse=True).
        self.workspace = Workspace()
        # Whether a training backward (reuse=True) takes its gradient arrays from the workspace's pool
        # (workspace.BufferPool), freed as the pass goes, instead of one set per layer: False is the path
        # the tests compare it with.
        self.pool_gradients = True
        self._saved: dict[str, Any] = {}
        self._pre: dict[str, np.ndarray] = {}
        self._values: dict[str, np.ndarray] = {}
        # The profiler's clock (specc/profile.py), off unless a list: each pass appends perf_counter() as
        # it starts each plan step and once after the last, so len(plan) + 1 readings a pass (backward's
        # in reverse plan order), a step's time including its engine-applied activation.
        self.clock: list[float] | None = None

    def _resolve(self, name: str) -> str:
        return _resolve(self._alias, name)

    # --- weights -------------------------------------------------------------------------------------

    def offset_of(self, weight: np.ndarray) -> int:
        """Where a layer's weight view starts in `params` (and, if trainable, in `grads`)."""
        start = weight.__array_interface__["data"][0] - self.params.__array_interface__["data"][0]
        if not (weight.base is self.params or weight.base is self.params.base) or start % self.dtype.itemsize:
            raise ValueError("not a view into this engine's parameters")
        return start // self.dtype.itemsize

    def initialize(self, seed: int | None) -> None:
        """Keras's default initializers, drawn in layer order from one seeded generator."""
        rng = np.random.default_rng(seed)
        for s in self.steps:
            for w, spec in zip(s.weights, s.specs):
                w[...] = s.layer.initial_value(spec, rng)

    def adapt(self, inputs: dict[str, np.ndarray]) -> list[str]:
        """Keras's adapt() for every layer that learns statistics from the data before training (a
        Normalization without `mean`/`variance`) and reads a model input: its weights from `inputs` (model
        input name -> training array). Returns the names of the layers adapted."""
        done = []
        for s in self.steps:
            if s.weights and hasattr(s.layer, "adapted") and len(s.inbound) == 1 and s.inbound[0] in inputs:
                for w, value in zip(s.weights, s.layer.adapted(inputs[s.inbound[0]])):
                    w[...] = value
                done.append(s.name)
        return done

    def get_weights(self) -> list[np.ndarray]:
        """Every weight in Keras's order (layer by layer, each layer's `weights` order), as copies."""
        return [w.copy() for s in self.steps for w in s.weights]

    def set_weights(self, arrays: list[np.ndarray]) -> None:
        views = [(f"{s.name}/{spec.name}", w) for s in self.steps for spec, w in zip(s.specs, s.weights)]
        if len(arrays) != len(views):
            raise ValueError(f"expected {len(views)} weight arrays, got {len(arrays)}")
        for k, ((name, view), a) in enumerate(zip(views, arrays)):
            a = np.asarray(a)
            if a.shape != view.shape:
                raise ValueError(f"weight {k} ({name}) has shape {a.shape}, expected {view.shape}")
            view[...] = a

    # --- execution -----------------------------------------------------------------------------------

    def _enter(self, reuse: bool):
        """Opens one forward or backward pass: the workspace (reuse=True), and the thread limits (see
        _thread_limits) unless a loop holds them (held_threads). Returns what _leave closes. Plain calls,
        not a `with` of an ExitStack: right after a kernel has streamed megabytes through the caches, each
        Python call on the way to the next kernel is slow, and an ExitStack makes a dozen."""
        token = self.workspace.enter() if reuse else None
        limits = self._thread_limits() if not self._holding and self._own_threads else None
        return token, limits

    def _leave(self, opened) -> None:
        token, limits = opened
        if limits is not None:
            _lift(limits)
        if token is not None:
            self.workspace.leave(token)

    def _thread_limits(self) -> tuple | None:
        """BLAS and sgemm on one thread when a layer splits its batch over the threads itself (convolutions,
        pooling) and there are several: the limits, entered, for _lift; None when there is nothing to limit
        (one thread, or no such layer). OpenBLAS's idle workers spin for a while after a multi-threaded
        product (OPENBLAS_THREAD_TIMEOUT, specc/runtime.py), holding a core that those layers' threads need
        next; and the products of such models are small (a classifier head), measured no faster threaded."""
        if not self._own_threads:
            return None
        thread_count, one_blas_thread, one_product_thread = _thread_functions()
        if thread_count() <= 1:
            return None
        blas, product = one_blas_thread(), one_product_thread()
        blas.__enter__()
        try:
            product.__enter__()
        except BaseException:
            blas.__exit__(None, None, None)
            raise
        return blas, product

    @contextlib.contextmanager
    def held_threads(self):
        """The thread limits for a whole loop of passes (the Trainer's steps) instead of each pass: setting
        and restoring OpenBLAS's thread count at every pass is a measurable share of a small convolutional
        model's step. Code run inside (callbacks) sees BLAS on one thread in such models."""
        limits = self._thread_limits()
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if limits is not None:
                _lift(limits)

    def forward(self, inputs: list[np.ndarray], training: bool = False, rng: Any = None,
                reuse: bool = False) -> list[np.ndarray]:
        """The model's outputs. reuse=True (the training loop) takes every array from the workspace: the
        outputs and everything saved for backward are then only valid until the next step."""
        if len(inputs) != len(self.input_names):
            raise ValueError(f"model takes {len(self.input_names)} inputs, got {len(inputs)}")
        opened = self._enter(reuse)
        try:
            return self._forward(inputs, training, rng)
        finally:
            self._leave(opened)

    def _forward(self, inputs, training, rng) -> list[np.ndarray]:
        # Loops rather than comprehensions here and in _backward: each comprehension is a function call,
        # which costs a microsecond or more right after a kernel (_enter).
        values = {}
        for n, x in zip(self.input_names, inputs):
            values[n] = np.asarray(x, self.dtype)
        self._saved.clear()
        self._pre.clear()
        clock = self.clock
        for s in self.plan:
            if clock is not None:
                clock.append(perf_counter())
            self.workspace.owner = s.name
            x = [values[n] for n in s.inbound] if s.layer.is_merge else values[s.inbound[0]]
            # Batch statistics are used in training unless the layer is frozen (Keras's BN rule).
            y, saved = s.layer.forward(s.weights, x, training and s.trainable, rng)
            if s.activation is not None:
                z = np.ascontiguousarray(y)
                y = empty("activation", z.shape, z.dtype)
                activation_forward(s.activation, z, y)
                self._pre[s.name] = z
            self._saved[s.name] = saved
            values[s.name] = y
        if clock is not None:
            clock.append(perf_counter())
        self._values = values
        outputs = []
        for n in self.output_names:
            outputs.append(values[n])
        return outputs

    def pre_activation(self, output: int) -> np.ndarray:
        """Output `output`'s values before the activation the engine applied in the last forward (the
        logits under a softmax), shape (batch, ...): the fused softmax + cross-entropy loss starts there."""
        return self._pre[self.output_names[output]]

    def backward(self, d_outputs: list[np.ndarray], pre_activation: list[bool] | None = None,
                 reuse: bool = False) -> None:
        """Fills `self.grads` from the gradients of the loss w.r.t. the outputs of the last forward.

        pre_activation[i] says d_outputs[i] is already the gradient w.r.t. the output layer's
        pre-activation (the fused softmax + cross-entropy path).
        """
        opened = self._enter(reuse)
        pool = self.workspace.pool if reuse and self.pool_gradients else None
        try:
            if pool is not None:
                pool.release_all()  # the previous pass's gradients are dead (valid until the next step)
                self.workspace.pooling = True
            self._backward(d_outputs, pre_activation, pool)
        finally:
            self.workspace.pooling = False
            self._leave(opened)

    def _backward(self, d_outputs, pre_activation, pool) -> None:
        """The pass; with `pool`, every array a layer's backward asks for (workspace.empty) comes from it,
        and before each plan step the buffers that no pending gradient reaches go back to it: a step's
        output gradient and scratch are dead once it has run, unless its input gradient is (a view of)
        one of them, and a gradient that feeds several layers (a residual branch) stays pending until the
        last of them has run."""
        pre_activation = pre_activation or [False] * len(d_outputs)
        grads: dict[str, np.ndarray] = {}
        fused: set[str] = set()
        for name, d, pre in zip(self.output_names, d_outputs, pre_activation):
            _accumulate(grads, name, np.asarray(d, self.dtype))
            if pre:
                fused.add(name)
        clock = self.clock
        for s in reversed(self.plan):
            if clock is not None:
                clock.append(perf_counter())
            if pool is not None:
                pool.keep_only(grads.values())
            dy = grads.pop(s.name, None)
            if dy is None:
                continue  # does not reach any output
            self.workspace.owner = s.name
            if s.name in self._pre and s.name not in fused:
                z, y = self._pre[s.name], self._values[s.name]
                dz = empty("d_activation", z.shape, z.dtype)
                activation_backward(s.activation, z, y, dy, dz)
                dy = dz
            # A layer fed only by model inputs need not compute its input gradient in training.
            dx = s.layer.backward(s.weights, s.grads, self._saved[s.name], dy, self.input_gradients or not s.inputs_only)
            if dx is None:
                continue
            if s.layer.is_merge:
                for n, d in zip(s.inbound, dx):
                    _accumulate(grads, n, d)
            else:
                _accumulate(grads, s.inbound[0], dx)
        if clock is not None:
            clock.append(perf_counter())
        self._input_grads = {}
        for n in self.input_names:
            self._input_grads[n] = grads.get(n)


_THREAD_FUNCTIONS: tuple | None = None
_ACTIVATIONS: Any = None


def _activations() -> Any:
    """specc.kernels.activations, imported at the first pass that applies an activation (the engine is imported
    without Numba), then kept: an import statement costs a microsecond at every step."""
    global _ACTIVATIONS
    if _ACTIVATIONS is None:
        from .kernels import activations

        _ACTIVATIONS = activations
    return _ACTIVATIONS


def activation_forward(name: str, z: np.ndarray, y: np.ndarray) -> None:
    """y = activation `name` of z, both C-contiguous of one shape (softmax over the last axis)."""
    activations = _activations()
    code = activations.CODE[name]
    if code in (activations.SOFTMAX, activations.LOG_SOFTMAX):  # compiles without the others
        activations.softmax(code == activations.LOG_SOFTMAX, activations.as_rows(z), activations.as_rows(y))
    else:
        activations.forward(code, activations.as_rows(z), activations.as_rows(y))


def activation_backward(name: str, z: np.ndarray, y: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> None:
    """dz = d loss / d z from dy = d loss / d y, for y = activation `name` of z (z, y, dz C-contiguous)."""
    activations = _activations()
    activations.backward(activations.CODE[name], activations.as_rows(z), activations.as_rows(y),
                         activations.as_rows(np.ascontiguousarray(dy)), activations.as_rows(dz))


def _thread_functions() -> tuple:
    """(thread_count, one_blas_thread, one_product_thread), imported at the first pass that needs them (the
    engine is imported without Numba) and then kept: an import statement costs a microsecond at every pass."""
    global _THREAD_FUNCTIONS
    if _THREAD_FUNCTIONS is None:
        from .kernels import one_product_thread, thread_count
        from .kernels.conv import one_blas_thread

        _THREAD_FUNCTIONS = (thread_count, one_blas_thread, one_product_thread)
    return _THREAD_FUNCTIONS


def _lift(limits: tuple) -> None:
    """Leaves the limits Engine._thread_limits entered, the last first."""
    blas, product = limits
    try:
        product.__exit__(None, None, None)
    finally:
        blas.__exit__(None, None, None)


def _accumulate(grads: dict[str, np.ndarray], name: str, d: np.ndarray) -> None:
    """Adds d to the gradient of tensor `name`; a sum goes to a workspace array (one per step and tensor:
    a residual network sums one at every block), a fresh one outside a training pass."""
    if name in grads:
        a = grads[name]
        if a.shape == d.shape and a.dtype == d.dtype:
            total = empty("gradient sum " + name, a.shape, a.dtype)
            np.add(a, d, out=total)
            grads[name] = total
        else:
            grads[name] = a + d
    else:
        grads[name] = d
