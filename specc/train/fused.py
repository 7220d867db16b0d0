"""The fused path for MLPs: a model that is one chain of Dense layers trains with one jitted call per step
(specc/kernels/fused.py) instead of a Python call per layer, and predicts with one call per batch.

    chain = DenseChain.of(engine)                 # None unless the model is such a chain
    step = chain.trainer(loss, fused_activation)   # None unless the loss can run inside the kernel
    y = step.targets(y)                            # once per fit: cast and check the targets
    value, preds = step(xb, yb, sample_weight)     # fills engine.grads; preds is a view, valid until the next call

It computes exactly what Engine.forward/backward and the Loss compute (the same kernels, in the same
order), so the two paths agree to rounding; tests/test_fused.py checks it. Anything the kernel does not
cover (other layers, several inputs or outputs, frozen layers, loss weights) keeps the general path.
"""

from __future__ import annotations

import math
import weakref

import numpy as np

from ..engine import Engine
from ..kernels import activations as A
from ..kernels import dense_chain as KC
from ..kernels import fused as K
from ..kernels import losses as KL
from ..kernels import native, product_threads
from ..workspace import aligned_empty
from .losses import _ELEMENTWISE, Loss, _bounds, check_label_range

# Below this many flops a batch runs on one thread: waking the others would take about as long.
PARALLEL_MIN_FLOPS = 4_000_000
# Weights up to this size get a copy per extra thread for inference (kernels/dense_chain.py says why);
# larger ones stream from memory whoever else reads them, and copies would only take memory.
REPLICA_MAX_BYTES = 16 * 1024 * 1024

# engine -> its DenseChain (or None): an engine's structure and weight views never change (a model whose
# structure changes gets a new engine), so neither does its chain.
_CHAINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class DenseChain:
    """Weights offsets and activations of a Dense-only chain, and its workspaces per batch size."""

    def __init__(self, engine: Engine, layout: np.ndarray):
        self.engine = engine
        self.layout = layout  # (layers, 5): kernel offset, bias offset or -1, in, out, activation code
        self.units_out = int(layout[-1, 3])
        self.flops_per_row = int(2 * (layout[:, 2] * layout[:, 3]).sum())
        self._plans: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._replicas = np.zeros((0, 0), engine.dtype)  # (threads - 1, >= n_trainable): see replicate

    @classmethod
    def cached(cls, engine: Engine) -> DenseChain | None:
        """of(engine), kept as long as the engine is: inference calls reuse its workspaces per batch size
        instead of allocating (and page-faulting) a new multi-megabyte one at every call."""
        try:
            return _CHAINS[engine]
        except KeyError:
            chain = _CHAINS[engine] = cls.of(engine)
            return chain

    @classmethod
    def of(cls, engine: Engine) -> DenseChain | None:
        steps = engine.steps
        if len(engine.input_names) != 1 or len(engine.output_names) != 1 or not steps:
            return None
        rows = []
        previous = engine.input_names[0]
        for s in steps:
            layer = s.layer
            if (layer.type != "Dense" or s.inbound != [previous] or len(s.input_shape) != 1
                    or not s.trainable or not all(w.trainable for w in s.specs)):
                return None
            offsets = [engine.offset_of(w) for w in s.weights]
            if any(o + w.size > engine.n_trainable for o, w in zip(offsets, s.weights)):
                return None
            rows.append([offsets[0], offsets[1] if layer.use_bias else -1, s.input_shape[0], layer.units,
                         A.CODE[layer.activation]])
            previous = s.name
        if engine.output_names[0] != previous:
            return None
        return cls(engine, np.array(rows, np.int64))

    def plan(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(plan, workspace) for `batch` rows: made once per batch size, then reused."""
        found = self._plans.get(batch)
        if found is None:
            plan = K.plan(self.layout, batch)
            found = self._plans[batch] = (plan, aligned_empty(plan[-1, 2], self.engine.dtype))
        return found

    def replicate(self) -> None:
        """Copies of the weights for the threads after the first, made or brought up to date (a bitwise
        comparison); predict(..., replicated=True) then reads them. Call it before a series of predict
        calls with no weight change between them (Trainer.predict_with does)."""
        workers = product_threads()
        n = self.engine.n_trainable
        if workers < 2 or native.sgemm is None or n * self.engine.dtype.itemsize > REPLICA_MAX_BYTES:
            self._replicas = np.zeros((0, 0), self.engine.dtype)
            return
        params = self.engine.params[:n]
        row = -(-n // 16) * 16  # every copy starts on a 64-byte boundary, as params does
        if self._replicas.shape != (workers - 1, row):
            self._replicas = aligned_empty((workers - 1, row), self.engine.dtype)
        elif np.array_equal(self._replicas[0, :n].view(np.uint8), params.view(np.uint8)):
            return
        self._replicas[:, :n] = params

    def predict(self, x: np.ndarray, out: np.ndarray | None = None, replicated: bool = False) -> np.ndarray:
        """The model's output for x (batch, in): written into `out` (batch, units out) when given (the
        last layer writes there directly when it is C-contiguous in the engine's dtype), else a view into
        the workspace, valid until the next call. `replicated`: the threads may read the copies of the
        weights `replicate` made (which must be current)."""
        x = np.ascontiguousarray(x, self.engine.dtype)
        batch = len(x)
        plan, work = self.plan(batch)
        direct = (out is not None and out.shape == (batch, self.units_out) and out.dtype == self.engine.dtype
                  and out.flags.c_contiguous)
        target = out if direct else work[:0].reshape(0, self.units_out)
        workers = min(product_threads(), batch)
        if workers == 1 or batch * self.flops_per_row < PARALLEL_MIN_FLOPS:
            K.forward_rows(x, self.engine.params, plan, work, 0, batch, target)
        elif x.dtype == np.float32 and native.sgemm is not None:  # one join per batch (kernels/dense_chain.py)
            replicas = self._replicas if replicated else self._replicas[:0]
            KC.forward_split(x, self.engine.params, replicas, plan, work, target, workers)
        else:  # products on BLAS, whose own threads split each of them (its rows' bits depend on the split)
            result = K.forward(x, self.engine.params, plan, work)
            if out is None:
                return result
            out[...] = result
            return out
        if direct:
            return out
        at = plan[-2, K.A_AT]
        result = work[at: at + batch * self.units_out].reshape(batch, self.units_out)
        if out is None:
            return result
        out[...] = result
        return out

    def trainer(self, loss: Loss, fused: str | None) -> FusedStep | None:
        if loss.name == "hinge":  # Keras decides per batch whether labels are 0/1: keep the general path
            return None
        return FusedStep(self, loss, fused)


class FusedStep:
    """One training step of a DenseChain under one loss (see the module docstring)."""

    def __init__(self, chain: DenseChain, loss: Loss, fused: str | None):
        self.chain, self.loss = chain, loss
        lo, hi = _bounds(chain.engine.dtype)
        from_logits = loss.from_logits or fused is not None
        if loss.name == "sparse_categorical_crossentropy":
            kind, code = K.SPARSE, 0
        elif loss.name == "categorical_crossentropy":
            kind, code = K.CATEGORICAL, 0
        else:
            kind, code = K.ELEMENTWISE, _ELEMENTWISE[loss.name]
            if code == KL.BCE and from_logits:
                code = KL.BCE_LOGITS
        row_scale = 1.0 if code == KL.KLD else 1.0 / chain.units_out
        # [kind, elementwise code, from_logits, lo, hi, delta, row scale, hinge_binary, reads logits]
        self.args = np.array([kind, code, from_logits, lo, hi, loss.delta, row_scale, 0.0, fused is not None],
                             np.float64)
        self.kind = kind
        self._ones: dict[int, np.ndarray] = {}
        self._empty_labels = np.zeros(0, np.int64)
        self._empty_targets = np.zeros((0, 0), chain.engine.dtype)

    def targets(self, y: np.ndarray) -> np.ndarray:
        """y cast once for the whole fit (same shape: metrics still see it as the user gave it), with the
        checks the Loss makes per batch."""
        n_out = self.chain.units_out
        y = np.asarray(y)
        if self.kind == K.SPARSE:
            if y.size != len(y) or (y.ndim > 1 and y.shape[-1] != 1):
                raise ValueError(f"sparse labels of shape {y.shape} do not match y_pred of shape (batch, {n_out})")
            y = np.ascontiguousarray(y.astype(np.int64, copy=False))  # truncates, as Keras's cast
            check_label_range(y, n_out)
            return y
        y = np.ascontiguousarray(y, self.chain.engine.dtype)
        if y.size != len(y) * n_out or (self.kind == K.CATEGORICAL and y.shape[1:] != (n_out,)):
            raise ValueError(f"y_true of shape {y.shape} does not match y_pred of shape (batch, {n_out})")
        return y

    def __call__(self, xb: np.ndarray, yb: np.ndarray, sample_weight=None) -> tuple[float, np.ndarray]:
        chain, engine = self.chain, self.chain.engine
        batch = len(xb)
        xb = np.ascontiguousarray(xb, engine.dtype)
        if sample_weight is None:
            weights = self._ones.get(batch)
            if weights is None:
                weights = self._ones[batch] = np.ones(batch)
        else:
            weights = np.ascontiguousarray(sample_weight, np.float64).reshape(batch)
        if self.kind == K.SPARSE:
            labels, targets = yb.reshape(batch), self._empty_targets
        else:
            labels, targets = self._empty_labels, yb.reshape(batch, chain.units_out)
        plan, work = chain.plan(batch)
        value = K.train_step(xb, labels, targets, weights, engine.params, engine.grads, plan, self.args, work)
        at = plan[-2, K.A_AT]
        preds = work[at: at + batch * chain.units_out].reshape(batch, chain.units_out)
        # The kernels run with fastmath, which assumes no NaN: look at the outputs explicitly, as Loss does.
        # (A sum in the outputs' own dtype: asking for float64 makes NumPy allocate a cast buffer. It can
        # overflow though every output is finite: only then is each output checked.)
        # The flattened sum: NumPy 1.24 allocates ~11 KB of temporaries for a 2-d array's whole sum, per step.
        if not math.isfinite(float(preds.reshape(-1).sum())) and not np.isfinite(preds).all():
            value = float("nan")
        return float(value), preds
