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
    """Conv1D / Conv2D / Conv3D: kernel (*k, C, F) -> ONNX (F, C, *k)."""
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


def _is_max(layer) -> bool:
    return layer.type.startswith(("MaxPooling", "GlobalMaxPooling"))


def pool(b, step, w, xs):
    """Max/AveragePooling 1-D to 3-D."""
    layer = step.layer
    rank = len(layer.pool_size)
    strides = layer.strides or layer.pool_size
    pads = _window_pads(step.input_shape[:-1], step.output_shape[:-1], layer.pool_size, strides, (1,) * rank,
                        layer.padding)
    attrs = dict(kernel_shape=list(layer.pool_size), strides=list(strides), **_pad_attrs(pads))
    if not _is_max(layer):
        attrs["count_include_pad"] = 0  # Keras averages over the window's part inside the input
    y = b.op("MaxPool" if _is_max(layer) else "AveragePool", [_to_channels_first(b, xs[0], rank, step.name)],
             f"{step.name}/pool", **attrs)
    return _to_channels_last(b, y, rank, step.name)


def global_pool(b, step, w, xs):
    rank = len(step.input_shape) - 1  # the spatial axes, 1 to 3
    return b.op("ReduceMax" if _is_max(step.layer) else "ReduceMean", [xs[0]], f"{step.name}/pool",
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


# --- activation layers with arguments -------------------------------------------------------------------


def relu_layer(b, step, w, xs):
    """Keras 3's relu: (x if x > threshold else 0), clipped at max_value, minus
    negative_slope * max(threshold - x, 0) (specc/kernels/pointwise.py)."""
    layer, x, name = step.layer, xs[0], step.name
    if layer.negative_slope == 0 and layer.threshold == 0:
        if layer.max_value is None:
            return b.op("Relu", [x], f"{name}/relu")
        return b.op("Clip", [x, b.const(f"{name}/zero", 0.0), b.const(f"{name}/max_value", layer.max_value)],
                    f"{name}/relu")
    t = b.const(f"{name}/threshold", layer.threshold)
    y = b.op("Where", [b.op("Greater", [x, t], f"{name}/above"), x, b.const(f"{name}/zero", 0.0)], f"{name}/kept")
    if layer.max_value is not None:
        y = b.op("Min", [y, b.const(f"{name}/max_value", layer.max_value)], f"{name}/clipped")
    if layer.negative_slope:
        below = b.op("Relu", [b.op("Sub", [t, x], f"{name}/under")], f"{name}/below")
        slope = b.op("Mul", [below, b.const(f"{name}/negative_slope", layer.negative_slope)], f"{name}/sloped")
        y = b.op("Sub", [y, slope], f"{name}/relu")
    return y


def leaky_relu_layer(b, step, w, xs):
    return b.op("LeakyRelu", [xs[0]], f"{step.name}/leaky_relu", alpha=float(step.layer.negative_slope))


def prelu(b, step, w, xs):
    # alpha has the sample's shape with size 1 on shared axes: it broadcasts against (N, ...) as ONNX's PRelu
    return b.op("PRelu", [xs[0], b.const(f"{step.name}/alpha", w[0])], f"{step.name}/prelu")


def elu_layer(b, step, w, xs):
    return b.op("Elu", [xs[0]], f"{step.name}/elu", alpha=float(step.layer.alpha))


def softmax_layer(b, step, w, xs):
    """One axis: ONNX Softmax; several: exp(x - max) / sum over them, with the reductions over those axes."""
    from ..layers.activations import _axes_of

    axes = [a + 1 for a in _axes_of("Softmax", step.layer.axis, step.input_shape)]
    x, name = xs[0], step.name
    if len(axes) == 1:
        return b.op("Softmax", [x], f"{name}/softmax", axis=axes[0])
    top = b.op("ReduceMax", [x], f"{name}/max", axes=axes, keepdims=1)
    e = b.op("Exp", [b.op("Sub", [x, top], f"{name}/shifted")], f"{name}/exp")
    total = b.op("ReduceSum", [e, b.ints(f"{name}/axes", axes)], f"{name}/sum", keepdims=1)
    return b.op("Div", [e, total], f"{name}/softmax")


# --- preprocessing ------------------------------------------------------------------------------------------


def rescaling(b, step, w, xs):
    layer, name = step.layer, step.name
    y = b.op("Mul", [xs[0], b.const(f"{name}/scale", np.asarray(layer.scale, np.float32))], f"{name}/scaled")
    return b.op("Add", [y, b.const(f"{name}/offset", np.asarray(layer.offset, np.float32))], f"{name}/rescaled")


def normalization(b, step, w, xs):
    """(x - mean) / max(sqrt(variance), 1e-7), or x * that + mean with invert: the layer's own statistics
    (its arguments or its weights), shaped (1, ...) to broadcast over the batch as in its forward."""
    layer, name = step.layer, step.name
    probe = np.zeros((1, *(d or 1 for d in step.input_shape)), np.float32)  # only its kept sizes are read
    mean, div = layer._stats(w, probe)
    mean_c, div_c = b.const(f"{name}/mean", mean), b.const(f"{name}/std", div)
    if layer.invert:
        return b.op("Add", [b.op("Mul", [xs[0], div_c], f"{name}/scaled"), mean_c], f"{name}/inverted")
    return b.op("Div", [b.op("Sub", [xs[0], mean_c], f"{name}/centered"), div_c], f"{name}/normalized")


# --- attention --------------------------------------------------------------------------------------------


def _attention_rows(b, x, shape, axes, name, who):
    """x (N, *positions, d) -> (N', P, d) with the attention axes flattened last (the others join the batch),
    as the layer's runtime does; and the `positions` layout to undo it. None: already (N, P, d)."""
    pos = list(shape[:-1])
    if axes == list(range(len(pos))) and len(pos) == 1:
        return x, None
    if any(d is None for d in pos):
        raise ExportError(f"{who}: attention over inputs with {len(pos)} position axes needs their sizes known "
                          f"to be exported (got {tuple(shape)})")
    rest = [a for a in range(len(pos)) if a not in axes]
    order = [0, *(a + 1 for a in rest), *(a + 1 for a in axes), len(pos) + 1]
    if order != list(range(len(order))):
        x = b.op("Transpose", [x], f"{name}/attention_axes_last", perm=order)
    positions = math.prod(pos[a] for a in axes)
    rows = b.op("Reshape", [x, b.ints(f"{name}/rows_shape", [-1, positions, shape[-1]])], f"{name}/rows")
    return rows, (order, [pos[a] for a in rest] + [pos[a] for a in axes])


def multi_head_attention(b, step, w, xs):
    """Keras 3's MultiHeadAttention at inference: per-head projections (einsum kernels as (d, heads * size)
    matrices), softmax(q k^T / sqrt(key_dim)) over the keys a mask allows (a query with no key allowed gets
    zeros, as specc's kernel), the heads' contexts through attention_output. Dropout is off at inference."""
    from ..layers.attention import ROLES

    layer, name = step.layer, step.name
    who = _who(step)
    roles = layer._roles or ROLES[: len(xs)]
    parts = dict(zip(roles, xs, strict=True))
    shapes = dict(zip(roles, step.input_shape, strict=True))
    q_shape = shapes["query"]
    axes = layer._axes(q_shape)
    kernels, biases = layer._weights(w)
    h, dk = layer.num_heads, layer.key_dim
    dv = layer.value_dim or dk

    xq, q_layout = _attention_rows(b, parts["query"], q_shape, axes, f"{name}/query", who)
    xv, _ = _attention_rows(b, parts["value"], shapes["value"], axes, f"{name}/value", who)
    xk = xv if "key" not in parts else _attention_rows(b, parts["key"], shapes["key"], axes, f"{name}/key", who)[0]

    def project(x, role, size):  # (N', L, d) -> (N', heads, L, size)
        kernel = kernels[role]
        y = b.op("MatMul", [x, b.const(f"{name}/{role}/kernel", kernel.reshape(kernel.shape[0], h * size))],
                 f"{name}/{role}/matmul")
        if biases[role] is not None:
            y = b.op("Add", [y, b.const(f"{name}/{role}/bias", biases[role].reshape(-1))], f"{name}/{role}/dense")
        y = b.op("Reshape", [y, b.ints(f"{name}/{role}/heads_shape", [0, 0, h, size])], f"{name}/{role}/heads")
        return b.op("Transpose", [y], f"{name}/{role}/head_major", perm=[0, 2, 1, 3])

    q, k, v = project(xq, "query", dk), project(xk, "key", dk), project(xv, "value", dv)
    q = b.op("Mul", [q, b.const(f"{name}/scale", 1 / math.sqrt(dk))], f"{name}/query_scaled")
    kt = b.op("Transpose", [k], f"{name}/keys_t", perm=[0, 1, 3, 2])
    scores = b.op("MatMul", [q, kt], f"{name}/scores")  # (N', heads, T, S)
    allowed = None
    if "attention_mask" in parts:  # (N, T or 1, S or 1), nonzero = may attend
        m = b.op("Unsqueeze", [parts["attention_mask"], b.ints(f"{name}/head_axis", [1])], f"{name}/mask_heads")
        allowed = b.op("Not", [b.op("Equal", [m, b.const(f"{name}/zero", 0.0)], f"{name}/mask_zero")],
                       f"{name}/mask")
    if layer.use_causal_mask:  # query t attends to keys 0..t: the lower triangle of a (T, S) block of ones
        size = b.op("Shape", [scores], f"{name}/score_size", start=2)
        ones = b.op("ConstantOfShape", [size], f"{name}/ones",
                    value=numpy_helper.from_array(np.ones(1, np.float32)))
        causal = b.op("Cast", [b.op("Trilu", [ones], f"{name}/lower", upper=0)], f"{name}/causal",
                      to=TensorProto.BOOL)
        allowed = causal if allowed is None else b.op("And", [allowed, causal], f"{name}/both_masks")
    if allowed is None:
        probs = b.op("Softmax", [scores], f"{name}/probs", axis=-1)
    else:  # masked keys get a large negative score (exp -> 0); a row with no key allowed is zeroed after
        masked = b.op("Where", [allowed, scores, b.const(f"{name}/masked_score", -1e30)], f"{name}/masked")
        probs = b.op("Softmax", [masked], f"{name}/softmax", axis=-1)
        probs = b.op("Mul", [probs, b.op("Cast", [allowed], f"{name}/allowed", to=TensorProto.FLOAT)],
                     f"{name}/probs")
    ctx = b.op("MatMul", [probs, v], f"{name}/context")  # (N', heads, T, dv)
    ctx = b.op("Transpose", [ctx], f"{name}/position_major", perm=[0, 2, 1, 3])
    ctx = b.op("Reshape", [ctx, b.ints(f"{name}/context_shape", [0, 0, h * dv])], f"{name}/contexts")
    wo = kernels["attention_output"]
    out = list(wo.shape[2:])
    y = b.op("MatMul", [ctx, b.const(f"{name}/attention_output/kernel", wo.reshape(h * dv, -1))],
             f"{name}/attention_output/matmul")
    if biases["attention_output"] is not None:
        y = b.op("Add", [y, b.const(f"{name}/attention_output/bias", biases["attention_output"].reshape(-1))],
                 f"{name}/attention_output/dense")
    if q_layout is None:
        if len(out) > 1:
            y = b.op("Reshape", [y, b.ints(f"{name}/output_shape", [0, 0, *out])], f"{name}/output")
        return y
    order, moved = q_layout
    y = b.op("Reshape", [y, b.ints(f"{name}/moved_shape", [-1, *moved, *out])], f"{name}/unrows")
    nd = len(order)
    inverse = [int(i) for i in np.argsort(order[:-1] + list(range(nd - 1, nd - 1 + len(out))))]
    if inverse != list(range(len(inverse))):
        y = b.op("Transpose", [y], f"{name}/attention_axes_back", perm=inverse)
    return y


# --- wrappers -------------------------------------------------------------------------------------------------


def _inner_step(step, layer, suffix, input_shape, output_shape):
    """An engine step for a wrapped layer, so its own converter can run on it."""
    import dataclasses

    return dataclasses.replace(step, name=f"{step.name}/{suffix}", layer=layer, input_shape=input_shape,
                               output_shape=output_shape)


def bidirectional(b, step, w, xs):
    """The forward and the backward recurrent layer as two ONNX operators (each may have its own units and
    activations); with return_sequences the backward outputs are put back in input order, then merged."""
    layer, name = step.layer, step.name
    wf, wb = layer._split_weights(step.input_shape, w)
    outs = []
    for suffix, inner, weights in (("forward", layer.layer, wf), ("backward", layer._backward, wb)):
        inner_out = inner.compute_output_shape(step.input_shape)
        outs.append(recurrent(b, _inner_step(step, inner, suffix, step.input_shape, inner_out), weights, xs))
    y, yb = outs
    if layer.layer.return_sequences:
        yb = b.op("Slice", [yb, b.ints(f"{name}/start", [-1]), b.ints(f"{name}/end", [-INT64_MAX]),
                            b.ints(f"{name}/axis", [1]), b.ints(f"{name}/step", [-1])], f"{name}/input_order")
    mode = layer.merge_mode
    if mode == "concat":
        return b.op("Concat", [y, yb], f"{name}/concat", axis=-1)
    if mode == "sum":
        return b.op("Add", [y, yb], f"{name}/sum")
    if mode == "mul":
        return b.op("Mul", [y, yb], f"{name}/mul")
    total = b.op("Add", [y, yb], f"{name}/sum")
    return b.op("Mul", [total, b.const(f"{name}/half", 0.5)], f"{name}/ave")


def time_distributed(b, step, w, xs):
    """(N, T, *inner) -> (N * T, *inner) -> the wrapped layer's converter -> (N, T, *inner output), with the
    shapes taken at run time (N and T may be known only then). The wrapped layer applies its activation."""
    inner = step.layer.layer
    if inner.type not in CONVERTERS or inner.type in WRAPPERS:
        raise ExportError(f"{_who(step)}: the wrapped {inner.type} cannot be exported to ONNX yet (specc's exporter "
                          f"has no converter for it inside TimeDistributed)", step.name)
    name, x = step.name, xs[0]
    lead = b.op("Shape", [x], f"{name}/batch_and_steps", end=2)
    rest = b.op("Shape", [x], f"{name}/step_shape", start=2)
    flat = b.op("Reshape", [x, b.op("Concat", [b.ints(f"{name}/merged", [-1]), rest], f"{name}/flat_shape",
                                    axis=0)], f"{name}/steps_in_batch")
    inner_step = _inner_step(step, inner, inner.type.lower(), step.input_shape[1:], step.output_shape[1:])
    y = CONVERTERS[inner.type](b, inner_step, w, [flat])
    out_rest = b.op("Shape", [y], f"{name}/step_output_shape", start=1)
    return b.op("Reshape", [y, b.op("Concat", [lead, out_rest], f"{name}/out_shape", axis=0)], f"{name}/steps")


WRAPPERS = ("Bidirectional", "TimeDistributed")


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
    "ReLU": relu_layer,
    "LeakyReLU": leaky_relu_layer,
    "PReLU": prelu,
    "ELU": elu_layer,
    "Softmax": softmax_layer,
    "Rescaling": rescaling,
    "Normalization": normalization,
    "SpatialDropout1D": identity,
    "SpatialDropout2D": identity,
    "GaussianNoise": identity,
    "MultiHeadAttention": multi_head_attention,
    "Bidirectional": bidirectional,
    "TimeDistributed": time_distributed,
    "Conv3D": conv,
    "MaxPooling3D": pool,
    "AveragePooling3D": pool,
    "GlobalMaxPooling3D": global_pool,
    "GlobalAveragePooling3D": global_pool,
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
