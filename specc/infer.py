"""The inference plan of an engine: what `predict` runs instead of `Engine.forward(training=False)` for a
float32 model with convolutions (a residual network), computing the same function:

- a Conv2D/Conv1D and the BatchNormalization that alone reads it run as one convolution whose kernel and
  bias have the normalisation folded in (BN(conv(x)) = conv(x) * s + (b - mean) * s + beta, with
  s = gamma / sqrt(moving_variance + epsilon) per filter): worked out once, in float64, and kept until the
  engine's weights change (`refresh`, which compares every weight bitwise with what was folded);
- a ZeroPadding2D that alone feeds such a convolution adds to its window's pads (as layers/fusion.py's
  PadConv);
- the ReLU that alone reads the result (an Activation or a plain ReLU layer), and a two-input Add (the
  convolution being its later input) with the ReLU after it, are applied to each chunk of the
  convolution's output in cache (kernels/infer.py) instead of as passes of their own;
- the convolutions' outputs live in a few buffers reused along the network: a buffer is free again once
  every layer that reads a tensor it holds (or a view of it) has run, so a residual network keeps two or
  three activations, not one per layer; nothing is kept for backward;
- the batch is cut into chunks of samples as in training (conv._chunking: a large kernel over few
  positions, a late ResNet stage, in few chunks, so that each chunk's product reads the kernel once for
  many rows); the chunking depends on the shapes only, so results are the same at any thread count.

Every other layer runs its own forward (training=False) in the plan's workspace. `InferencePlan.cached`
gives None for an engine with nothing to fold or fuse (an MLP keeps its DenseChain), or not float32.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np

from .engine import Engine, Step
from .workspace import Workspace, aligned_empty

# engine -> its InferencePlan or None: an engine's structure and weight views never change (a model whose
# structure changes gets a new engine), only the weights' values, which `refresh` follows.
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
KEEP_SHAPES = 4  # input shapes (batch sizes) whose buffers a plan keeps; the least recently used goes first


def _is_relu(layer: Any) -> bool:
    """An Activation('relu') or a ReLU layer with Keras's defaults: max(x, 0)."""
    kind = type(layer).__name__
    if kind == "Activation":
        return layer.activation == "relu"
    return kind == "ReLU" and layer.max_value is None and layer.negative_slope == 0 and layer.threshold == 0


def _is_conv(layer: Any) -> bool:
    return type(layer).__name__ in ("Conv2D", "Conv1D") and layer.activation in ("linear", "relu")


def _folds_into(bn: Any, conv_step: Step) -> bool:
    """Whether BatchNormalization `bn` normalises the convolution's channel axis (the last)."""
    rank = len(conv_step.output_shape) + 1
    return type(bn).__name__ == "BatchNormalization" and bn.axis in (-1, rank - 1)


class _Conv:
    """One convolution step of the plan: its layers, its input (and residual) tensor names, the name of the
    tensor it produces, and the folded kernel (K, F) and bias (F,) it runs with."""

    def __init__(self, conv: Step, pad: Step | None, bn: Step | None, residual: str | None, relu: bool,
                 name: str, covers: list[str]):
        self.conv, self.pad, self.bn, self.residual, self.relu = conv, pad, bn, residual, relu
        self.name = name
        self.covers = covers  # the model layers it runs, in order
        self.source = (pad or conv).inbound[0]
        self.inbound = [self.source] + ([residual] if residual is not None else [])
        f = conv.layer.filters
        w = conv.weights
        if bn is None:  # the engine's own weights (views into its parameters): nothing to fold, never stale
            self.kernel = w[0].reshape(-1, f)
            self.bias = w[1] if conv.layer.use_bias else np.zeros(f, np.float32)
            self.sources: list[np.ndarray] = []
        else:
            self.kernel = aligned_empty((math.prod(w[0].shape[:-1]), f), np.float32)
            self.bias = aligned_empty((f,), np.float32)
            self.sources = list(w) + list(bn.weights)  # what the folded kernel and bias are made of
        self._windows: dict = {}

    def fold(self) -> None:
        """kernel and bias from the engine's weights: the convolution's, times the normalisation's scale."""
        layer = self.conv.layer
        w = self.conv.weights
        f = layer.filters
        kernel = w[0].reshape(-1, f).astype(np.float64)
        bias = w[1].astype(np.float64) if layer.use_bias else np.zeros(f)
        bn, bw = self.bn.layer, self.bn.weights
        gamma = bw[0].astype(np.float64) if bn.scale else np.ones(f)
        beta = bw[1 if bn.scale else 0].astype(np.float64) if bn.center else np.zeros(f)
        mean, var = bw[-2].astype(np.float64), bw[-1].astype(np.float64)
        scale = gamma / np.sqrt(var + bn.epsilon)
        self.kernel[...] = kernel * scale
        self.bias[...] = (bias - mean) * scale + beta

    def window(self, sample_shape: tuple) -> tuple:
        """(output sample shape, the kernels' geometry over the unpadded input) for input samples of
        `sample_shape`; a fused ZeroPadding2D adds its padding to the pads and to the input's size."""
        found = self._windows.get(sample_shape)
        if found is None:
            layer = self.conv.layer
            if self.pad is None:
                out_spatial, g = layer.window(sample_shape)
            else:
                (top, bottom), (left, right) = self.pad.layer.padding
                h, w, c = sample_shape
                out_spatial, gp = layer.window((h + top + bottom, w + left + right, c))
                g = gp[:6] + (gp[6] + top, gp[7] + left)
            found = self._windows[sample_shape] = (tuple(out_spatial) + (layer.filters,), g)
        return found


class _Layer:
    """A step the plan runs as the engine does: the layer's forward (or an engine step's fused pair: a
    convolution and its max pooling, a BatchNormalization or Add and its ReLU, a ZeroPadding2D and its
    DepthwiseConv2D), then the activation the engine applies after it."""

    def __init__(self, step: Step, covers: list[str] | None = None):
        self.step = step
        self.name = step.name
        self.inbound = list(step.inbound)
        self.covers = covers or [step.name]
        act = step.layer.output_activation()
        self.activation = act if act != "linear" and not step.layer.applies_activation() else None


class InferencePlan:
    def __init__(self, engine: Engine, steps: list):
        self.engine = engine
        self.steps = steps
        self.folded = [s for s in steps if isinstance(s, _Conv) and s.bn is not None]
        self.workspace = Workspace()
        self._snapshot: list[np.ndarray] | None = None  # copies of the weights the kernels were folded from
        self._buffers: dict[tuple, dict] = {}  # input shapes -> tensor name -> its buffer (a conv's output)
        self._scratch = np.empty(0, np.float32)
        # The last reader of every tensor (by plan position); model outputs are read "after the end".
        end = len(steps)
        self._last: dict[str, int] = {n: end for n in engine.output_names}
        for i, s in enumerate(steps):
            for n in s.inbound:
                self._last[n] = max(self._last.get(n, -1), i)

    @classmethod
    def cached(cls, engine: Engine) -> InferencePlan | None:
        try:
            return _PLANS[engine]
        except KeyError:
            plan = _PLANS[engine] = cls.of(engine)
            return plan

    @classmethod
    def of(cls, engine: Engine) -> InferencePlan | None:
        """The plan for an engine, or None when it has no convolution to run this way or is not float32."""
        if engine.dtype != np.float32 or not any(_is_conv(s.layer) for s in engine.steps):
            return None
        steps = engine.steps
        outputs = set(engine.output_names)
        readers: dict[str, list[Step]] = {}
        produced_at = {n: -1 for n in engine.input_names}
        for i, s in enumerate(steps):
            produced_at[s.name] = i
            for n in s.inbound:
                readers.setdefault(n, []).append(s)

        def sole_reader(name: str) -> Step | None:
            after = readers.get(name, [])
            if name in outputs or len(after) != 1 or after[0].inbound.count(name) != 1:
                return None
            return after[0]

        # The engine's fused steps (Engine.plan), by the first layer they run, with the names of their layers
        step_of = {id(s.layer): s for s in steps}
        engine_fused = {id(p.layer.fused_layers[0]): (p, [step_of[id(f)].name for f in p.layer.fused_layers])
                        for p in engine.plan if hasattr(p.layer, "fused_layers")}
        absorbed: set[str] = set()
        available = set(engine.input_names)  # the tensors the plan's steps so far give
        plan: list = []

        def as_engine_runs(s: Step) -> None:
            fused = engine_fused.get(id(s.layer))
            if fused is None:
                plan.append(_Layer(s))
                available.add(s.name)
                return
            p, covers = fused
            plan.append(_Layer(p, covers))
            absorbed.update(covers)
            available.add(p.name)

        for s in steps:
            if s.name in absorbed:
                continue
            if type(s.layer).__name__ == "ZeroPadding2D":
                nxt = sole_reader(s.name)
                if nxt is not None and type(nxt.layer).__name__ == "Conv2D" and _is_conv(nxt.layer) and \
                        nxt.layer.padding == "valid" and nxt.inbound == [s.name]:
                    continue  # runs with the convolution (below), which finds it as its input's producer
                as_engine_runs(s)
                continue
            fused = engine_fused.get(id(s.layer))
            if not _is_conv(s.layer) or (fused is not None and type(fused[0].layer).__name__ == "ConvPool"):
                as_engine_runs(s)  # a convolution that only a max pooling reads: nothing to fold, one kernel
                continue
            pad = None
            producer = steps[produced_at[s.inbound[0]]] if produced_at.get(s.inbound[0], -1) >= 0 else None
            if producer is not None and type(producer.layer).__name__ == "ZeroPadding2D" and \
                    sole_reader(producer.name) is s and s.layer.padding == "valid" and \
                    type(s.layer).__name__ == "Conv2D":
                pad = producer
            covers = ([pad.name] if pad else []) + [s.name]
            last, bn, relu, residual = s, None, s.layer.activation == "relu", None
            nxt = sole_reader(s.name)
            if not relu and nxt is not None and _folds_into(nxt.layer, s):
                bn, last = nxt, nxt
                covers.append(nxt.name)
                nxt = sole_reader(nxt.name)
            if not relu and nxt is not None and type(nxt.layer).__name__ == "Add" and len(nxt.inbound) == 2:
                other = nxt.inbound[1] if nxt.inbound[0] == last.name else nxt.inbound[0]
                other_shape = steps[produced_at[other]].output_shape if produced_at.get(other, -1) >= 0 else None
                # the Add's other input is ready when this step runs, and of the same shape (no broadcasting)
                if other != last.name and other in available and other_shape == last.output_shape:
                    residual, last = other, nxt
                    covers.append(nxt.name)
                    nxt = sole_reader(nxt.name)
            if not relu and nxt is not None and _is_relu(nxt.layer):
                relu, last = True, nxt
                covers.append(nxt.name)
            absorbed.update(covers)
            available.add(last.name)
            plan.append(_Conv(s, pad, bn, residual, relu, last.name, covers))
        return cls(engine, plan)

    # --- weights -------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Folds the kernels again if any weight they are made of changed since they were folded (set_weights,
        a training step, loading, or a write into a layer's weight): a bitwise comparison with copies."""
        snap = self._snapshot
        sources = [w for s in self.folded for w in s.sources]
        if snap is not None and all(np.array_equal(a.view(np.int32), w.view(np.int32)) for a, w in zip(snap, sources)):
            return
        for s in self.folded:
            s.fold()
        self._snapshot = [w.copy() for w in sources]

    # --- running -------------------------------------------------------------------------------------------

    def predict(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The model's outputs for one batch (the weights already refreshed): arrays of the plan, valid until
        its next call."""
        from .kernels import conv

        engine = self.engine
        values: dict[str, np.ndarray] = {}
        for n, x in zip(engine.input_names, inputs):
            values[n] = np.asarray(x, np.float32)
        key = tuple(values[n].shape for n in engine.input_names)
        buffers = self._buffers.pop(key, None)
        if buffers is not None:
            self._buffers[key] = buffers  # the most recently used last: the least recently used goes first
        # Only kept shapes take the workspace's arrays, so it holds arrays for KEEP_SHAPES shapes at most.
        token = self.workspace.enter() if buffers is not None else None
        try:
            with conv.one_blas_thread():
                self._run(values, buffers, conv)
                if buffers is None:  # a first batch of these shapes: fresh outputs, then their shared buffers
                    if len(self._buffers) >= KEEP_SHAPES:
                        del self._buffers[next(iter(self._buffers))]
                        self.workspace = Workspace()  # without the dropped shape's arrays
                    self._buffers[key] = self._layout(values)
        finally:
            if token is not None:
                self.workspace.leave(token)
        return [values[n] for n in engine.output_names]

    def _run(self, values: dict, buffers: dict | None, conv: Any) -> None:
        from .engine import activation_forward
        from .kernels import infer

        clock = self.engine.clock
        workspace = self.workspace
        for s in self.steps:
            if clock is not None:
                clock.append(_now())
            workspace.owner = s.name
            if isinstance(s, _Conv):
                values[s.name] = self._conv(s, values, buffers, conv, infer)
                continue
            step = s.step
            x = [values[n] for n in step.inbound] if step.layer.is_merge else values[step.inbound[0]]
            y, _ = step.layer.forward(step.weights, x, False, None)
            step_act = s.activation
            if step_act is not None:
                z = np.ascontiguousarray(y)
                y = np.empty_like(z)
                activation_forward(step_act, z, y)
            values[s.name] = y
        if clock is not None:
            clock.append(_now())

    def _conv(self, s: _Conv, values: dict, buffers: dict | None, conv: Any, infer: Any) -> np.ndarray:
        from .layers.conv import as_image

        x = values[s.source]
        out_shape, g = s.window(tuple(x.shape[1:]))
        x4 = as_image(x)
        n = x4.shape[0]
        ho, wo = ((1,) + out_shape[:-1])[-2:]
        f = out_shape[-1]
        out = buffers[s.name] if buffers is not None else np.empty((n,) + out_shape, np.float32)
        out4 = out.reshape(n, ho, wo, f)
        k = s.kernel.shape[0]
        spc, chunks = conv._chunking(n, ho * wo, k, f, 4)
        shares = conv.share_count(chunks)
        size = spc * ho * wo * k
        if self._scratch.size < shares * size:
            self._scratch = aligned_empty(shares * size, np.float32)
        scratch = self._scratch[: shares * size].reshape(shares, size)
        add = s.residual is not None
        residual = np.ascontiguousarray(values[s.residual]) if add else out4
        in_place = _in_place(x4.shape, g, ho, wo, k, f)
        conv.tiles_ready(np.float32)  # conv_residual_range may reach the direct tiles (loaded on first use)
        if shares <= 1:  # without the parallel loop's compile
            infer.conv_residual_range(x4, s.kernel, s.bias, g, spc, 0, chunks, scratch[0], residual, add, s.relu,
                                      in_place, out4)
        else:
            infer.conv_residual_split(x4, s.kernel, s.bias, g, spc, chunks, shares, scratch, residual, add, s.relu,
                                      in_place, out4)
        return out

    def _layout(self, probe: dict) -> dict:
        """Buffers for the convolutions' outputs of a pass whose tensors were `probe`: a buffer is handed on
        once every reader of each tensor that may view it (a layer's output may be a view of its input:
        Reshape, Flatten) has run."""
        holds: dict[str, set[int]] = {}  # tensor -> the buffers it may be a view of
        sizes: list[int] = []
        free: list[int] = []
        owner_of: dict[str, int] = {}
        live: dict[int, set[str]] = {}
        for i, s in enumerate(self.steps):
            if isinstance(s, _Conv):
                need = probe[s.name].size
                fits = [b for b in free if sizes[b] >= need]
                if fits:
                    b = min(fits, key=lambda b: sizes[b])
                    free.remove(b)
                else:
                    b = len(sizes)
                    sizes.append(need)
                owner_of[s.name] = b
                holds[s.name] = {b}
            else:
                holds[s.name] = set().union(*(holds.get(n, set()) for n in s.inbound))
            for b in holds[s.name]:
                live.setdefault(b, set()).add(s.name)
            # tensors whose last reader was this step: their buffers may be free
            for n in set(s.inbound) | {s.name}:
                if self._last.get(n, -1) <= i:
                    for b in holds.get(n, ()):
                        live[b].discard(n)
                        if not live[b] and b not in free:
                            free.append(b)
        arrays = [aligned_empty(size, np.float32) for size in sizes]
        return {name: arrays[b][: probe[name].size].reshape(probe[name].shape) for name, b in owner_of.items()}


def _in_place(x_shape: tuple, g: tuple, ho: int, wo: int, k: int, f: int) -> bool:
    """Whether a chunk runs as one product on x's rows (kernels/infer.py) rather than on the direct tiles or
    im2col + sgemm: a pointwise convolution (1 x 1, stride 1, no padding: its windows are x itself) of at
    least 4 input channels per filter, which the tiles run slower (bench/results/HISTORY.md)."""
    pointwise = g[:4] == (1, 1, 1, 1) and g[6:] == (0, 0) and (ho, wo) == tuple(x_shape[1:3])
    return pointwise and k >= 4 * f


def _now() -> float:
    from time import perf_counter

    return perf_counter()
