"""specc layers as ONNX nodes: one small converter per layer type, in the table `CONVERTERS`.

Tensors stay channels_last (Keras's layout) between layers; a layer whose ONNX operator wants channels
first (Conv, pooling, Resize) transposes its input and output itself, and ONNX Runtime's optimizer removes
the transpose pairs that meet between two such layers. The batch axis is dynamic (`batch`); every other size
is the one shape inference gave the spec (a size known only at run time gets a named dimension).

A converter gets the builder, the engine step (layer, weights as NumPy arrays, input and output shapes
without the batch axis) and its input tensor names; it adds nodes and returns its output tensor's name.
"""

from __future__ import annotations

import math
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ExportError

OPSET = 17  # LayerNormalization's first opset; ONNX Runtime, onnx.js and mobile runtimes all run it
INT64_MAX = np.iinfo(np.int64).max


class Builder:
    """The nodes and initializers of one graph, with names unique in it."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []
        self._used: set[str] = set()

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self._used:
            name, k = f"{base}_{k}", k + 1
        self._used.add(name)
        return name

    def const(self, base: str, value, dtype=np.float32) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(value, dtype)), name))
        return name

    def ints(self, base: str, values) -> str:
        return self.const(base, np.asarray(values, np.int64), np.int64)

    def op(self, op_type: str, inputs: list[str], base: str, outputs: int = 1, **attrs) -> str | list[str]:
        names = [self.fresh(base if k == 0 else f"{base}_{k}") for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.fresh(f"{base}/{op_type}"), **attrs))
        return names[0] if outputs == 1 else names


# --- activations --------------------------------------------------------------------------------------

SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


def activation(b: Builder, x: str, name: str, base: str, who: str) -> str:
    """`name` (a Keras activation) applied to x; softmax and log_softmax over the last axis, as specc."""
    if name == "linear":
        return x
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus",
              "softsign": "Softsign", "exponential": "Exp"}
    if name in simple:
        return b.op(simple[name], [x], base)
    if name == "relu6":
        return b.op("Clip", [x, b.const(f"{base}/zero", 0.0), b.const(f"{base}/six", 6.0)], base)
    if name == "leaky_relu":
        return b.op("LeakyRelu", [x], base, alpha=0.2)
    if name == "elu":
        return b.op("Elu", [x], base, alpha=1.0)
    if name == "selu":
        return b.op("Selu", [x], base, alpha=SELU_ALPHA, gamma=SELU_SCALE)
    if name == "hard_sigmoid":  # Keras 3: relu6(x + 3) / 6
        return b.op("HardSigmoid", [x], base, alpha=1.0 / 6.0, beta=0.5)
    if name == "softmax":
        return b.op("Softmax", [x], base, axis=-1)
    if name == "log_softmax":
        return b.op("LogSoftmax", [x], base, axis=-1)
    if name == "silu":
        return b.op("Mul", [x, b.op("Sigmoid", [x], f"{base}/sigmoid")], base)
    if name == "gelu":  # Keras 3's default, the exact form: x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))
        erf = b.op("Erf", [b.op("Mul", [x, b.const(f"{base}/inv_sqrt2", 1 / math.sqrt(2))], f"{base}/scaled")],
                   f"{base}/erf")
        half_x = b.op("Mul", [x, b.const(f"{base}/half", 0.5)], f"{base}/half_x")
        return b.op("Mul", [half_x, b.op("Add", [erf, b.const(f"{base}/one", 1.0)], f"{base}/one_plus")], base)
    raise ExportError(f"{who}: activation {name!r} has no ONNX form in specc's exporter", None)


def _activated(b, step, y: str) -> str:
    act = step.layer.output_activation()
    return activation(b, y, act, f"{step.name}/{act}", _who(step))


def _who(step) -> str:
    return f"{step.layer.type} '{step.name}'"


# --- layout helpers --------------------------------------------------------------------------------------


def _to_channels_first(b, x: str, rank: int, base: str) -> str:
    """(N, *spatial, C) -> (N, C, *spatial) for `rank` spatial axes."""
    return b.op("Transpose", [x], f"{base}/nc", perm=[0, rank + 1, *range(1, rank + 1)])


def _to_channels_last(b, x: str, rank: int, base: str) -> str:
    return b.op("Transpose", [x], f"{base}/nhwc", perm=[0, *range(2, rank + 2), 1])


def _window_pads(in_spatial, out_spatial, kernel, strides, dilation, padding) -> list[int] | None:
    """ONNX `pads` (all befores, then all afters) reproducing Keras's padding: TF's split of 'same' with the
    odd element after, 'causal' all before. None when a size is known only at run time (then auto_pad)."""
    from ..layers.conv import pad_before

    if padding == "valid":
        return [0] * (2 * len(kernel))
    if any(n is None for n in in_spatial):
        return None
    before, after = [], []
    for n, o, k, s, d in zip(in_spatial, out_spatial, kernel, strides, dilation, strict=True):
        span = d * (k - 1) + 1
        total = max((o - 1) * s + span - n, 0) if padding == "same" else span - 1
        lo = pad_before(n, o, k, s, d, padding)
        before.append(lo)
        after.append(total - lo)
    return before + after


def _pad_attrs(pads: list[int] | None) -> dict:
    if pads is not None:
        return {"pads": pads}
    return {"auto_pad": "SAME_UPPER"}  # TF's 'same' (the extra element after): sizes known at run time only


# --- core ---------------------------------------------------------------------------------------------


def dense(b, step, w, xs):
    x = xs[0]
    kernel = b.const(f"{step.name}/kernel", w[0])
    if len(step.input_shape) == 1 and step.layer.use_bias:
        y = b.op("Gemm", [x, kernel, b.const(f"{step.name}/bias", w[1])], f"{step.name}/dense")
    else:
        y = b.op("MatMul", [x, kernel], f"{step.name}/matmul")
        if step.layer.use_bias:
            y = b.op("Add", [y, b.const(f"{step.name}/bias", w[1])], f"{step.name}/dense")
    return _activated(b, step, y)


def embedding(b, step, w, xs):
    # specc feeds ids as the model's float dtype (whole numbers); ONNX's Gather takes integers
    ids = b.op("Cast", [xs[0]], f"{step.name}/ids", to=TensorProto.INT64)
    return b.op("Gather", [b.const(f"{step.name}/embeddings", w[0]), ids], f"{step.name}/gather", axis=0)


def identity(b, step, w, xs):
    return xs[0]


def activation_layer(b, step, w, xs):
    return _activated(b, step, xs[0])


# --- convolutions -----------------------------------------------------------------------------------------


def _conv_geometry(step):
    layer = step.layer
    rank = len(layer.kernel_size)
    pads = _window_pads(step.input_shape[:-1], step.output_shape[:-1], layer.kernel_size, layer.strides,
                        layer.dilation_rate, layer.padding)
    return rank, dict(kernel_shape=list(layer.kernel_size), strides=list(layer.strides),
                      dilations=list(layer.dilation_rate), **_pad_attrs(pads))


def conv(b, step, w, xs):
    """Conv1D / Conv2D: kernel (*k, C, F) -> ONNX (F, C, *k)."""
    rank, attrs = _conv_geometry(step)
    kernel = np.transpose(w[0], (rank + 1, rank, *range(rank)))
    inputs = [_to_channels_first(b, xs[0], rank, step.name), b.const(f"{step.name}/kernel", kernel)]
    if step.layer.use_bias:
        inputs.append(b.const(f"{step.name}/bias", w[1]))
    y = b.op("Conv", inputs, f"{step.name}/conv", **attrs)
    return _activated(b, step, _to_channels_last(b, y, rank, step.name))


def depthwise_conv(b, step, w, xs):
    """DepthwiseConv2D: kernel (kh, kw, C, m) -> grouped Conv with (C*m, 1, kh, kw); output channel c*m + j."""
    _, attrs = _conv_geometry(step)
    kh, kw, c, m = w[0].shape
    kernel = np.transpose(w[0], (2, 3, 0, 1)).reshape(c * m, 1, kh, kw)
    inputs = [_to_channels_first(b, xs[0], 2, step.name), b.const(f"{step.name}/kernel", kernel)]
    if step.layer.use_bias:
        inputs.append(b.const(f"{step.name}/bias", w[1]))
    y = b.op("Conv", inputs, f"{step.name}/depthwise", group=c, **attrs)
    return _activated(b, step, _to_channels_last(b, y, 2, step.name))


def separable_conv(b, step, w, xs):
    """SeparableConv2D: the depthwise Conv (no bias), then the pointwise kernel as a 1 x 1 Conv with the bias."""
    _, attrs = _conv_geometry(step)
    kh, kw, c, m = w[0].shape
    depthwise = np.transpose(w[0], (2, 3, 0, 1)).reshape(c * m, 1, kh, kw)
    pointwise = np.transpose(w[1], (3, 2, 0, 1))  # (1, 1, C*m, F) -> (F, C*m, 1, 1)
    z = b.op("Conv", [_to_channels_first(b, xs[0], 2, step.name), b.const(f"{step.name}/depthwise_kernel", depthwise)],
             f"{step.name}/depthwise", group=c, **attrs)
    inputs = [z, b.const(f"{step.name}/pointwise_kernel", pointwise)]
    if step.layer.use_bias:
        inputs.append(b.const(f"{step.name}/bias", w[2]))
    y = b.op("Conv", inputs, f"{step.name}/pointwise", kernel_shape=[1, 1])
    return _activated(b, step, _to_channels_last(b, y, 2, step.name))


def conv_transpose(b, step, w, xs):
    """Conv2DTranspose: kernel (kh, kw, F, C) -> ONNX (C, F, kh, kw). Output position i*s + k*d - pad_before,
    Keras's (and specc's) placement; the end is cropped or extended (output_padding) to Keras's size."""
    from ..layers.conv import pad_before

    layer = step.layer
    if any(n is None for n in step.input_shape[:-1]):
        raise ExportError(f"{_who(step)}: the spatial size of its input must be known to export it "
                          f"(got {step.input_shape})", step.name)
    begins, ends, extra = [], [], []
    for n, o, k, s, d in zip(step.input_shape[:-1], step.output_shape[:-1], layer.kernel_size, layer.strides,
                             layer.dilation_rate, strict=True):
        lo = pad_before(o, n, k, s, d, layer.padding)
        full = (n - 1) * s + d * (k - 1) + 1 - lo  # ONNX's size with pads (lo, 0) and no output_padding
        begins.append(lo)
        ends.append(max(full - o, 0))
        extra.append(max(o - full, 0))
    kernel = np.transpose(w[0], (3, 2, 0, 1))
    inputs = [_to_channels_first(b, xs[0], 2, step.name), b.const(f"{step.name}/kernel", kernel)]
    if layer.use_bias:
        inputs.append(b.const(f"{step.name}/bias", w[1]))
    y = b.op("ConvTranspose", inputs, f"{step.name}/conv_transpose", kernel_shape=list(layer.kernel_size),
             strides=list(layer.strides), dilations=list(layer.dilation_rate), pads=begins + ends,
             output_padding=extra)
    return _activated(b, step, _to_channels_last(b, y, 2, step.name))


# --- pooling -------------------------------------------------------------------------------------------


def pool(b, step, w, xs):
    layer = step.layer
    rank = len(layer.pool_size)
    strides = layer.strides or layer.pool_size
    pads = _window_pads(step.input_shape[:-1], step.output_shape[:-1], layer.pool_size, strides, (1,) * rank,
                        layer.padding)
    attrs = dict(kernel_shape=list(layer.pool_size), strides=list(strides), **_pad_attrs(pads))
    if not layer._max:
        attrs["count_include_pad"] = 0  # Keras averages over the window's part inside the input
    y = b.op("MaxPool" if layer._max else "AveragePool", [_to_channels_first(b, xs[0], rank, step.name)],
             f"{step.name}/pool", **attrs)
    return _to_channels_last(b, y, rank, step.name)


def global_pool(b, step, w, xs):
    rank = step.layer._rank
    return b.op("ReduceMax" if step.layer._max else "ReduceMean", [xs[0]], f"{step.name}/pool",
                axes=list(range(1, rank + 1)), keepdims=int(step.layer.keepdims))


# --- normalization ----------------------------------------------------------------------------------------


def _along(values: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast along `axis` (Keras's count, batch axis 0) of a rank-`rank`
    sample (batch axis not counted)."""
    a = axis % (rank + 1)
    return values.reshape((-1,) + (1,) * (rank - a))


def batch_norm(b, step, w, xs):
    """Inference form, in specc's order of operations: ((x - moving_mean) * inv) * gamma + beta with
    inv = 1 / sqrt(moving_variance + epsilon) in float32."""
    layer = step.layer
    rank, c = len(step.input_shape), w[-1].shape[0]
    dt = w[-1].dtype
    gamma = w[0] if layer.scale else np.ones(c, dt)
    beta = w[1 if layer.scale else 0] if layer.center else np.zeros(c, dt)
    inv = (1 / np.sqrt(w[-1] + dt.type(layer.epsilon))).astype(dt)
    name = step.name
    y = b.op("Sub", [xs[0], b.const(f"{name}/moving_mean", _along(w[-2], layer.axis, rank))], f"{name}/centered")
    y = b.op("Mul", [y, b.const(f"{name}/inv_std", _along(inv, layer.axis, rank))], f"{name}/normalized")
    if layer.scale:
        y = b.op("Mul", [y, b.const(f"{name}/gamma", _along(gamma, layer.axis, rank))], f"{name}/scaled")
    if layer.center:
        y = b.op("Add", [y, b.const(f"{name}/beta", _along(beta, layer.axis, rank))], f"{name}/shifted")
    return y


def layer_norm(b, step, w, xs):
    """ONNX LayerNormalization over the last axis; another axis is moved last and back."""
    layer = step.layer
    rank, dt = len(step.input_shape), w[0].dtype if w else np.float32
    c = step.input_shape[layer.axis % (rank + 1) - 1]
    a = layer.axis % (rank + 1)
    gamma = w[0] if layer.scale else np.ones(c, dt)
    beta = w[1 if layer.scale else 0] if layer.center else np.zeros(c, dt)
    x = xs[0]
    perm = None
    if a != rank:
        perm = [*(i for i in range(rank + 1) if i != a), a]
        x = b.op("Transpose", [x], f"{step.name}/axis_last", perm=perm)
    y = b.op("LayerNormalization", [x, b.const(f"{step.name}/gamma", gamma), b.const(f"{step.name}/beta", beta)],
             f"{step.name}/layer_norm", axis=-1, epsilon=float(layer.epsilon))
    if perm is not None:
        y = b.op("Transpose", [y], f"{step.name}/axis_back", perm=list(np.argsort(perm)))
    return y


# --- recurrent --------------------------------------------------------------------------------------------

# Keras activation -> (ONNX recurrent activation, alpha, beta); ONNX Runtime's RNN, LSTM and GRU kernels take
# these by name. An activation outside this table is an export error naming the layer.
RECURRENT_ACTIVATIONS = {
    "tanh": ("Tanh", None, None), "sigmoid": ("Sigmoid", None, None), "relu": ("Relu", None, None),
    "linear": ("Affine", 1.0, 0.0), "leaky_relu": ("LeakyRelu", 0.2, None), "elu": ("Elu", 1.0, None),
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5), "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
}


def _recurrent_activations(step, names: list[str]) -> dict:
    acts, alphas, betas = [], [], []
    for name in names:
        if name not in RECURRENT_ACTIVATIONS:
            raise ExportError(f"{_who(step)}: activation {name!r} has no ONNX {step.layer.type} form (ONNX's "
                              f"recurrent operators take {', '.join(sorted(RECURRENT_ACTIVATIONS))})", step.name)
        op, alpha, beta = RECURRENT_ACTIVATIONS[name]
        acts.append(op)
        alphas += [alpha] if alpha is not None else []
        betas += [beta] if beta is not None else []
    attrs = {"activations": acts}
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    return attrs


def _gate_blocks(a: np.ndarray, order: list[int], units: int) -> np.ndarray:
    """Columns of a (.., G*units) array regrouped gate by gate in `order`."""
    return np.concatenate([a[..., g * units:(g + 1) * units] for g in order], axis=-1)


def recurrent(b, step, w, xs):
    """SimpleRNN / LSTM / GRU as ONNX RNN / LSTM / GRU, time-major inside. W = kernel.T and R =
    recurrent_kernel.T with gates regrouped (LSTM: Keras i, f, c, o -> ONNX i, o, f, c; GRU's z, r, h is
    ONNX's order), B = [input bias, recurrent bias]. go_backwards reverses the input first and keeps the
    outputs in processing order, as Keras does."""
    layer = step.layer
    u = layer.units
    kind = layer.type
    order = [0, 3, 1, 2] if kind == "LSTM" else list(range(layer.gates))
    kernel = _gate_blocks(w[0], order, u).T[None]  # (1, G*u, F)
    rec = _gate_blocks(w[1], order, u).T[None]  # (1, G*u, u)
    gu = layer.gates * u
    if not layer.use_bias:
        bias = np.zeros(2 * gu, w[0].dtype)
    elif kind == "GRU" and layer.reset_after:
        bias = np.concatenate([w[2][0], w[2][1]])
    else:
        bias = np.concatenate([_gate_blocks(w[2], order, u), np.zeros(gu, w[2].dtype)])
    name = step.name
    x = b.op("Transpose", [xs[0]], f"{name}/time_major", perm=[1, 0, 2])  # (T, N, F)
    if layer.go_backwards:
        x = b.op("Slice", [x, b.ints(f"{name}/start", [-1]), b.ints(f"{name}/end", [-INT64_MAX]),
                           b.ints(f"{name}/axis", [0]), b.ints(f"{name}/step", [-1])], f"{name}/reversed")
    if kind == "SimpleRNN":
        attrs = _recurrent_activations(step, [layer.activation])
    elif kind == "LSTM":
        attrs = _recurrent_activations(step, [layer.recurrent_activation, layer.activation, layer.activation])
    else:
        attrs = _recurrent_activations(step, [layer.recurrent_activation, layer.activation])
        attrs["linear_before_reset"] = int(layer.reset_after)
    op = {"SimpleRNN": "RNN", "LSTM": "LSTM", "GRU": "GRU"}[kind]
    inputs = [x, b.const(f"{name}/W", kernel), b.const(f"{name}/R", rec), b.const(f"{name}/B", bias[None])]
    y, y_h = b.op(op, inputs, f"{name}/{op.lower()}", outputs=2, hidden_size=u, **attrs)
    if layer.return_sequences:  # Y (T, 1, N, u) -> (N, T, u)
        y = b.op("Squeeze", [y, b.ints(f"{name}/direction_axis", [1])], f"{name}/sequence")
        return b.op("Transpose", [y], f"{name}/batch_major", perm=[1, 0, 2])
    return b.op("Squeeze", [y_h, b.ints(f"{name}/direction_axis", [0])], f"{name}/last")  # (1, N, u) -> (N, u)


# --- merging ------------------------------------------------------------------------------------------


def _aligned(b, step, xs) -> list[str]:
    """Keras's merge rule: an input of lower rank gets size-1 axes after the batch axis."""
    ranks = [len(s) for s in step.input_shape]
    top = max(ranks)
    out = []
    for k, (x, r) in enumerate(zip(xs, ranks)):
        if r < top:
            x = b.op("Unsqueeze", [x, b.ints(f"{step.name}/axes_{k}", list(range(1, top - r + 1)))],
                     f"{step.name}/aligned_{k}")
        out.append(x)
    return out


def _chain(op_type: str):
    def merge(b, step, w, xs):
        xs = _aligned(b, step, xs)
        y = xs[0]
        for x in xs[1:]:
            y = b.op(op_type, [y, x], f"{step.name}/{op_type.lower()}")
        return y

    return merge


def average(b, step, w, xs):
    total = _chain("Add")(b, step, w, xs)
    return b.op("Div", [total, b.const(f"{step.name}/count", float(len(xs)))], f"{step.name}/average")


def concatenate(b, step, w, xs):
    return b.op("Concat", xs, f"{step.name}/concat", axis=step.layer.axis)


# --- reshaping ----------------------------------------------------------------------------------------------


def flatten(b, step, w, xs):
    return b.op("Flatten", [xs[0]], f"{step.name}/flatten", axis=1)


def reshape(b, step, w, xs):
    # 0 copies the batch size from the input (allowzero=0, the default)
    return b.op("Reshape", [xs[0], b.ints(f"{step.name}/shape", [0, *step.layer.target_shape])],
                f"{step.name}/reshape")


def permute(b, step, w, xs):
    return b.op("Transpose", [xs[0]], f"{step.name}/permute", perm=[0, *step.layer.dims])


def repeat_vector(b, step, w, xs):
    x = b.op("Unsqueeze", [xs[0], b.ints(f"{step.name}/axis", [1])], f"{step.name}/unsqueeze")
    return b.op("Tile", [x, b.ints(f"{step.name}/repeats", [1, step.layer.n, 1])], f"{step.name}/tile")


def zero_padding(b, step, w, xs):
    pairs = step.layer.padding
    trailing = len(step.input_shape) - len(pairs)  # the channel axis
    pads = [0, *(p[0] for p in pairs), *[0] * trailing, 0, *(p[1] for p in pairs), *[0] * trailing]
    return b.op("Pad", [xs[0], b.ints(f"{step.name}/pads", pads)], f"{step.name}/pad", mode="constant")


def cropping(b, step, w, xs):
    pairs = step.layer.cropping
    starts = [p[0] for p in pairs]
    ends = [-p[1] if p[1] else INT64_MAX for p in pairs]
    axes = list(range(1, len(pairs) + 1))
    return b.op("Slice", [xs[0], b.ints(f"{step.name}/starts", starts), b.ints(f"{step.name}/ends", ends),
                          b.ints(f"{step.name}/axes", axes)], f"{step.name}/crop")


def upsampling(b, step, w, xs):
    """Nearest: each value repeated (asymmetric coordinates, floor). Bilinear: half-pixel centres, as
    Keras's resize (specc/layers/reshaping.py)."""
    layer = step.layer
    rank = 1 if layer.type == "UpSampling1D" else 2
    size = [layer.size] if rank == 1 else list(layer.size)
    interpolation = getattr(layer, "interpolation", "nearest")
    x = _to_channels_first(b, xs[0], rank, step.name)
    scales = b.const(f"{step.name}/scales", [1.0, 1.0, *map(float, size)])
    attrs = (dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
             if interpolation == "nearest" else dict(mode="linear", coordinate_transformation_mode="half_pixel"))
    y = b.op("Resize", [x, "", scales], f"{step.name}/resize", **attrs)
    return _to_channels_last(b, y, rank, step.name)


# --- the table ----------------------------------------------------------------------------------------------

CONVERTERS = {
    "Dense": dense,
    "Embedding": embedding,
    "Dropout": identity,
    "Activation": activation_layer,
    "Conv1D": conv,
    "Conv2D": conv,
    "Conv2DTranspose": conv_transpose,
    "DepthwiseConv2D": depthwise_conv,
    "SeparableConv2D": separable_conv,
    "MaxPooling1D": pool,
    "MaxPooling2D": pool,
    "AveragePooling1D": pool,
    "AveragePooling2D": pool,
    "GlobalMaxPooling1D": global_pool,
    "GlobalMaxPooling2D": global_pool,
    "GlobalAveragePooling1D": global_pool,
    "GlobalAveragePooling2D": global_pool,
    "BatchNormalization": batch_norm,
    "LayerNormalization": layer_norm,
    "SimpleRNN": recurrent,
    "LSTM": recurrent,
    "GRU": recurrent,
    "Add": _chain("Add"),
    "Subtract": _chain("Sub"),
    "Multiply": _chain("Mul"),
    "Average": average,
    "Maximum": _chain("Max"),
    "Minimum": _chain("Min"),
    "Concatenate": concatenate,
    "Flatten": flatten,
    "Reshape": reshape,
    "Permute": permute,
    "RepeatVector": repeat_vector,
    "ZeroPadding1D": zero_padding,
    "ZeroPadding2D": zero_padding,
    "Cropping1D": cropping,
    "Cropping2D": cropping,
    "UpSampling1D": upsampling,
    "UpSampling2D": upsampling,
}


# --- the model ----------------------------------------------------------------------------------------------


def _value_info(name: str, shape, what: str):
    """A float32 tensor of `shape` (no batch axis) behind a dynamic `batch` axis."""
    dims = ["batch", *(d if d is not None else f"{what}_{k}" for k, d in enumerate(shape, 1))]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def unsupported(engine) -> list:
    """The steps whose layer type has no converter, in model order."""
    return [s for s in engine.steps if s.layer.type not in CONVERTERS]


def build_model(engine, name: str, normalization: dict | None = None):
    """The checked ModelProto of `engine`'s graph, with its current weights. An ExportError names the first
    layer that cannot be exported, before anything is built."""
    from .. import __version__

    missing = unsupported(engine)
    if missing:
        s = missing[0]
        raise ExportError(f"{s.layer.type} '{s.name}' cannot be exported to ONNX yet: specc's exporter has no "
                          f"converter for {s.layer.type} (specc/export/to_onnx.py, CONVERTERS)", s.name)
    b = Builder()
    graph = engine.graph
    values: dict[str, str] = {}
    inputs = []
    stats = (normalization or {}).get("inputs") or []
    for k, node in enumerate(graph.inputs):
        b.fresh(node.name)
        inputs.append(_value_info(node.name, node.output_shape, node.name))
        x = node.name
        if k < len(stats):  # data.normalize: (x - mean) / std with the training split's statistics
            mean = np.asarray(stats[k]["mean"], np.float32)
            std = np.asarray(stats[k]["std"], np.float32)
            fits = len(mean.shape) == len(node.output_shape) and all(
                d is None or d == m for d, m in zip(node.output_shape, mean.shape))
            if mean.shape != std.shape or not fits:
                raise ExportError(f"the run's normalization.json has statistics of shape {mean.shape} / {std.shape} "
                                  f"for input '{node.name}', whose samples have shape {tuple(node.output_shape)}: "
                                  f"it does not belong to this model's input")
            x = b.op("Sub", [x, b.const(f"{node.name}/mean", mean)], f"{node.name}/centered")
            x = b.op("Div", [x, b.const(f"{node.name}/std", std)], f"{node.name}/normalized")
        values[node.name] = x
    output_names = list(graph.outputs)
    for out in output_names:
        b.fresh(out)  # reserved: the graph's outputs carry the spec's names
    for step in engine.steps:
        weights = [np.asarray(a) for a in step.weights]
        xs = [values[n] for n in step.inbound]
        try:
            values[step.name] = CONVERTERS[step.layer.type](b, step, weights, xs)
        except ExportError as exc:
            raise ExportError(str(exc), exc.layer or step.name) from None
    shapes = {n.name: n.output_shape for n in graph.inputs} | {s.name: s.output_shape for s in engine.steps}
    outputs = []
    for out, resolved in zip(output_names, engine.output_names, strict=True):
        b.nodes.append(helper.make_node("Identity", [values[resolved]], [out], name=b.fresh(f"{out}/output")))
        outputs.append(_value_info(out, shapes[resolved], out))
    onnx_graph = helper.make_graph(b.nodes, name, inputs, outputs, b.initializers)
    model = helper.make_model(onnx_graph, producer_name="specc", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = min(model.ir_version, 8)  # what ONNX Runtime >= 1.14 and other runtimes read for opset 17
    model.doc_string = f"{name}, exported by specc {__version__}"
    helper.set_model_props(model, {"name": name, "specc_version": __version__,
                                   "normalization": "in the graph" if stats else "none"})
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported ONNX model of '{name}' does not pass onnx.checker: {exc}") from None
    return model


def write_new(path: str, model) -> None:
    """Write `model` to `path` atomically, never replacing a file there: the bytes go to a temporary file in
    the same folder, which is then hard-linked to `path` (that fails if `path` exists, even if it appeared
    meanwhile), or renamed where hard links do not exist."""
    data = model.SerializeToString()
    if os.path.lexists(path):
        raise FileExistsError(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:  # no hard links here (some network and FAT file systems)
            if os.path.lexists(path):
                raise FileExistsError(path) from None
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
