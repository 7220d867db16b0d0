"""Pairs of layers the engine runs as one step: a Conv1D/Conv2D (linear or ReLU) whose output only a
MaxPooling1D/2D of the same rank reads. The pair computes what the two layers compute apart, to the bit or
(the kernel and bias gradients on the AVX-512 path) within float32 rounding, with ties between equal maxima
going to the first in scan order as in the pooling layer; kernels/conv_pool.py says why it is faster. The
model, its summary, weights and layer names do not change: this exists only in the engine's execution plan
(Engine.plan)."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..workspace import empty
from .conv import Conv1D, Conv2D, as_image
from .pooling import MaxPooling1D, MaxPooling2D

_PAIRS = ((Conv2D, MaxPooling2D), (Conv1D, MaxPooling1D))


def fusable(conv: Any, pool: Any) -> bool:
    """Whether ConvPool runs conv followed by pool (the engine checks that nothing else reads conv's output)."""
    return (any(type(conv) is c and type(pool) is p for c, p in _PAIRS)
            and conv.activation in ("linear", "relu"))


class _Shapes(NamedTuple):
    """What a ConvPool works out once per input shape (ConvPool._shapes_of)."""

    dtype: Any  # the input's dtype these are for
    geometry: Any  # kernels.conv_pool.Pair
    image: tuple | None  # x as an image (N, H, W, C), when x has another shape (Conv1D's (N, steps, C))
    pooled: tuple  # (N, Po, Qo, F): the pooled output and its winners
    y: tuple | None  # the output's shape as the pooling layer gives it, when not `pooled`
    winners: Any  # the winners' dtype: int8 codes on the direct path, else int32 indexes
    no_bias: Any  # zeros (F,): the bias of a convolution without one


# kernels.conv_pool, imported when a ConvPool first meets an input shape: `specc summary` and `specc
# validate` load this module without Numba. (Not a `from ..kernels import` in forward: that runs a
# Python function of importlib at every call.)
conv_pool: Any = None


# kernels.elementwise, imported by AddReLU's first pass (like conv_pool above).
_elementwise: Any = None


def _elementwise_kernels():
    global _elementwise
    if _elementwise is None:
        from ..kernels import elementwise

        _elementwise = elementwise
    return _elementwise


class ConvPool:
    """The runtime side of a layer (see LayerSpec) for conv then pool; its weights are the convolution's.

    Its forward and backward run at every training step right after kernels that stream megabytes through
    the caches, where each Python or NumPy call on the way to the next kernel is slow: what depends only
    on the input's shape is worked out once per shape, the kernel's matrix views once per weight array,
    and the kernels take inputs in any layout. A pass is a few lookups, the workspace's arrays and one
    kernel call."""

    is_merge = False
    runs_own_threads = True

    def __init__(self, conv: Any, pool: Any):
        self.conv, self.pool = conv, pool
        self.fused_layers = (conv, pool)  # the model's layers it runs (specc time's rows)
        self._shapes: dict = {}  # x.shape -> _Shapes (an engine runs one dtype)
        self._views = [(None, None), (None, None)]  # (array, its matrix view): see _as_matrix

    def _shapes_of(self, x) -> _Shapes:
        shapes = self._shapes.get(x.shape)
        if shapes is None or shapes.dtype != x.dtype:
            shapes = self._shapes[x.shape] = self._work_out(x)
        return shapes

    def _work_out(self, x) -> _Shapes:
        global conv_pool
        import numpy as np

        from ..kernels import conv_pool

        f = self.conv.filters
        conv_spatial, g = self.conv.window(x.shape[1:])
        pooled_spatial, pg = self.pool.window(conv_spatial + (f,))
        n, image = x.shape[0], as_image(x[:0]).shape[1:]  # (H, W, C)
        geometry = conv_pool.pair((n,) + image, x.dtype, g, pg, ((1,) + conv_spatial)[-2:],
                                  ((1,) + pooled_spatial)[-2:], f)
        pooled, y = (n,) + ((1,) + pooled_spatial)[-2:] + (f,), (n,) + pooled_spatial + (f,)
        return _Shapes(x.dtype, geometry, None if x.ndim == 4 else (n,) + image, pooled, None if y == pooled else y,
                       np.int32 if geometry.taps is None else np.int8, np.zeros(f, x.dtype))

    def _as_matrix(self, slot: int, kernel):
        """The kernel (slot 0) or its gradient (slot 1), (kh, kw, C, F), as a (kh*kw*C, F) matrix view, made
        again only when the array changes."""
        cached = self._views[slot]
        if cached[0] is not kernel:
            cached = self._views[slot] = (kernel, kernel.reshape(-1, kernel.shape[-1]))
        return cached[1]

    def output_activation(self) -> str:
        return "linear"

    def applies_activation(self) -> bool:
        return False

    def forward(self, w, x, training, rng):
        conv, shapes, kernel = self.conv, self._shapes_of(x), self._as_matrix(0, w[0])
        x4 = x if shapes.image is None else x.reshape(shapes.image)  # (N, H, W, C), any layout
        out = empty("out", shapes.pooled, shapes.dtype)
        winners = empty("winners", shapes.pooled, shapes.winners)
        relu = conv.activation == "relu"
        conv_pool.conv_pool_forward(x4, kernel, w[1] if conv.use_bias else shapes.no_bias, conv.use_bias, relu,
                                    shapes.geometry, out, winners)
        return (out if shapes.y is None else out.reshape(shapes.y)), (x4, x.shape, shapes, out, winners, relu, kernel)

    def backward(self, w, g, saved, dy, need_dx=True):
        x4, in_shape, shapes, out, winners, relu, kernel = saved
        conv, dkernel = self.conv, self._as_matrix(1, g[0])
        dp = dy if shapes.y is None else dy.reshape(shapes.pooled)  # (N, Po, Qo, F), any layout
        dx = empty("dx", in_shape if shapes.image is None else shapes.image, shapes.dtype)  # (N, H, W, C): the
        # chunked path's kernels take it either way
        dbias = g[1] if conv.use_bias else shapes.no_bias  # (written only with a bias)
        conv_pool.conv_pool_backward(x4, kernel, dp, out, winners, relu, conv.use_bias, need_dx, shapes.geometry,
                                     dkernel, dbias, dx)
        return (dx if shapes.image is None else dx.reshape(in_shape)) if need_dx else None


# BatchNormalization (normalising the last axis) or Add, then an Activation that only they read: the
# activation runs inside their passes over memory instead of as one more pass each way (kernels/norm.py,
# kernels/elementwise.py). ReLU's and ReLU6's derivatives are read from the output (0 < y, 0 < y < 6).
ACT_CODES = {"linear": 0, "relu": 1, "relu6": 2}


def fusable_activation(layer: Any, activation: Any) -> bool:
    """Whether layer then the Activation layer `activation` can run as one step (BatchNormAct, AddAct)."""
    from .merging import Add
    from .normalization import BatchNormalization

    if type(activation).__name__ != "Activation" or activation.activation not in ("relu", "relu6"):
        return False
    if type(layer) is BatchNormalization:
        return layer.axis == -1
    return type(layer) is Add and activation.activation == "relu"


class BatchNormAct:
    """The runtime side of BatchNormalization followed by ReLU or ReLU6; its weights are the normalisation's."""

    is_merge = False
    runs_own_threads = False

    def __init__(self, norm: Any, activation: Any):
        self.norm, self.act = norm, activation
        self.fused_layers = (norm, activation)
        self._code = ACT_CODES[activation.activation]

    def output_activation(self) -> str:
        return "linear"

    def applies_activation(self) -> bool:
        return False

    def forward(self, w, x, training, rng):
        return self.norm.forward_act(w, x, training, self._code)

    def backward(self, w, g, saved, dy, need_dx=True):
        return self.norm.backward(w, g, saved, dy, need_dx)


class AddAct:
    """The runtime side of a two-input Add followed by ReLU: y = max(a + b, 0) in one pass; backward sends
    the one array dy * (y > 0) to both inputs (inputs of the output's shape; otherwise Add's own
    broadcasting path and the ReLU apart)."""

    is_merge = True
    runs_own_threads = False

    def __init__(self, add: Any, activation: Any):
        self.add, self.act = add, activation
        self.fused_layers = (add, activation)

    def output_activation(self) -> str:
        return "linear"

    def applies_activation(self) -> bool:
        return False

    def forward(self, w, xs, training, rng):
        import numpy as np

        elementwise = _elementwise or _elementwise_kernels()

        shape = xs[0].shape
        if any(x.shape != shape for x in xs):  # broadcasting: Add, then the ReLU, apart
            y, saved = self.add.forward(w, xs, training, rng)
            out = np.maximum(y, 0)
            return out, (False, saved, out)
        out = empty("out", shape, xs[0].dtype)
        a, b = xs  # the engine fuses two-input Adds only
        elementwise.add_relu(np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1),
                             out.reshape(-1))
        return out, (True, 2, out)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        elementwise = _elementwise or _elementwise_kernels()

        same, data, out = saved
        dz = empty("dz", out.shape, out.dtype)
        elementwise.relu_backward(np.ascontiguousarray(dy).reshape(-1), out.reshape(-1), dz.reshape(-1))
        if not same:
            return self.add.backward(w, g, data, dz, need_dx)
        return [dz] * data


def fusable_norm(add: Any, norm: Any, rank: int) -> bool:
    """Whether an Add and the LayerNormalization that alone reads it (inputs of `rank` axes, batch
    included) can run as one step (AddNorm): a normalisation over the last axis."""
    from .merging import Add
    from .normalization import LayerNormalization

    return type(add) is Add and type(norm) is LayerNormalization and norm.axis in (-1, rank - 1)


class AddNorm:
    """The runtime side of a two-input Add whose output only a LayerNormalization over the last axis
    reads (a Transformer block's residual): the normalisation of a + b in one pass that also writes the
    sum, instead of the Add's pass and then the normalisation's; its weights are the normalisation's.
    Backward sends the normalisation's input gradient to both inputs. Inputs of different shapes
    (broadcasting) run the two layers apart."""

    is_merge = True
    runs_own_threads = False

    def __init__(self, add: Any, norm: Any):
        self.add, self.norm = add, norm
        self.fused_layers = (add, norm)

    def output_activation(self) -> str:
        return "linear"

    def applies_activation(self) -> bool:
        return False

    def forward(self, w, xs, training, rng):
        a, b = xs  # the engine fuses two-input Adds only
        if a.shape != b.shape or a.dtype != b.dtype:
            y, add_saved = self.add.forward([], xs, training, rng)
            out, saved = self.norm.forward(w, y, training, rng)
            return out, (add_saved, saved)
        out, saved = self.norm.forward(w, a, training, rng, residual=b)
        return out, (None, saved)

    def backward(self, w, g, saved, dy, need_dx=True):
        add_saved, saved = saved
        dx = self.norm.backward(w, g, saved, dy, need_dx)
        if dx is None:
            return None
        if add_saved is not None:
            return self.add.backward([], [], add_saved, dx, need_dx)
        return [dx, dx]


# A ZeroPadding2D whose output only a DepthwiseConv2D reads: the convolution reads the unpadded input with
# the padding before each axis added to its own (the depthwise kernels skip taps outside the input, which
# is what reading the padding's zeros adds), and its output size is the padded input's. The padded copy
# and the un-padding of its gradient are gone.
def fusable_padding(pad: Any, conv: Any) -> bool:
    """Whether padded_step runs pad followed by conv (the engine checks that nothing else reads pad's
    output). A Conv2D only with padding 'valid', the pattern of strided blocks written the Keras way: with
    its own 'same' padding as well, the gradients of the two apart and fused were found to round apart in
    the last bit (the direct tiles pad the output gradient differently), and fusion must not change bits."""
    from .conv import Conv2D, DepthwiseConv2D
    from .reshaping import ZeroPadding2D

    if type(pad) is not ZeroPadding2D:
        return False
    return type(conv) is DepthwiseConv2D or (type(conv) is Conv2D and conv.padding == "valid")


def padded_step(pad: Any, conv: Any) -> Any:
    """The runtime step of a ZeroPadding2D and the convolution that alone reads it (fusable_padding)."""
    from .conv import DepthwiseConv2D

    return (PadDepthwise if type(conv) is DepthwiseConv2D else PadConv)(pad, conv)


class _PadShapes(NamedTuple):
    """What a PadDepthwise works out once per input shape (PadDepthwise._work_out)."""

    dtype: Any
    geometry: tuple  # the kernels' window over the unpadded input, its pads the padding's plus the conv's own
    padded: tuple  # the same window over the padded input, as the layers apart run it
    out: tuple  # (N, Ho, Wo, C*m)
    edges: tuple  # output column ranges (a, b) to run again over a padded strip (see _edges)
    no_bias: Any


def _three_tap_columns(width: int, wo: int, g: tuple) -> tuple[int, int]:
    """The output columns [lo, hi) whose three taps of a 3-wide kernel row all lie in an input of `width`
    (the columns kernels/depthwise.py adds a row's taps for in one sum); lo = hi when none."""
    kw, sw, dw, pw = g[1], g[3], g[5], g[7]
    lo, hi = 0, wo
    for j in range(kw):
        off = j * dw - pw
        first = min(wo, max(0, (-off + sw - 1) // sw))
        lo, hi = max(lo, first), min(hi, max(first, min(wo, (width - 1 - off) // sw + 1)))
    return (lo, hi) if lo < hi else (wo, wo)


def _edges(width: int, padded_width: int, wo: int, g: tuple, gp: tuple) -> tuple:
    """Output columns whose three taps lie in the padded input but not all in the unpadded one: the layers
    apart add those taps (one of them a zero) in one expression and the fused kernel one tap at a time,
    which round alike only where LLVM contracts both into the same chain of FMAs (it did on the AVX-512
    machine the tests first ran on); these columns are computed again from a padded strip of the input, as
    apart, so the bits never depend on it."""
    if g[1] != 3:
        return ()
    lo, hi = _three_tap_columns(padded_width, wo, gp)
    flo, fhi = _three_tap_columns(width, wo, g)
    if flo >= fhi:
        return ((lo, hi),) if lo < hi else ()
    return tuple((a, b) for a, b in ((lo, min(hi, flo)), (max(lo, fhi), hi)) if a < b)


_STRIP_ROLES, _EDGE_ROLES = ("padded strip 0", "padded strip 1"), ("edge columns 0", "edge columns 1")
depthwise: Any = None  # kernels.depthwise, imported when a PadDepthwise first meets an input shape (as conv_pool)


class PadDepthwise:
    """The runtime side of ZeroPadding2D then DepthwiseConv2D; its weights are the convolution's. Backward
    is the convolution's over the unpadded input: its kernel adds one tap at a time, and the padding's taps
    (zero products) would change no sum."""

    is_merge = False
    runs_own_threads = True

    def __init__(self, pad: Any, conv: Any):
        self.pad, self.conv = pad, conv
        self.fused_layers = (pad, conv)
        self._shapes: dict = {}

    def _shapes_of(self, x) -> _PadShapes:
        shapes = self._shapes.get(x.shape)
        if shapes is None or shapes.dtype != x.dtype:
            shapes = self._shapes[x.shape] = self._work_out(x)
        return shapes

    def _work_out(self, x) -> _PadShapes:
        global depthwise
        import numpy as np

        from ..kernels import depthwise

        n, h, w, c = x.shape
        (top, bottom), (left, right) = self.pad.padding
        out_spatial, gp = self.conv.window((h + top + bottom, w + left + right, c))
        g = gp[:6] + (gp[6] + top, gp[7] + left)
        cm = c * self.conv.depth_multiplier
        return _PadShapes(x.dtype, g, gp, (n,) + out_spatial + (cm,),
                          _edges(w, w + left + right, out_spatial[1], g, gp), np.zeros(cm, x.dtype))

    def output_activation(self) -> str:
        return self.conv.output_activation()

    def applies_activation(self) -> bool:
        return self.conv.applies_activation()

    def forward(self, w, x, training, rng):
        import numpy as np

        x4 = np.ascontiguousarray(x)  # (N, H, W, C)
        shapes, conv = self._shapes_of(x4), self.conv
        bias = w[1] if conv.use_bias else shapes.no_bias
        out = empty("out", shapes.out, x4.dtype)  # (N, Ho, Wo, C*m)
        depthwise.forward(x4, w[0], bias, conv.use_bias, shapes.geometry, out)
        for k, (a, b) in enumerate(shapes.edges):
            self._edge_columns(k, x4, w[0], bias, shapes, a, b, out)
        return out, (x4, shapes.geometry)

    def _edge_columns(self, k, x4, kernel, bias, shapes, a, b, out):
        """Output columns a:b as the layers apart compute them: from the padded input's columns they read
        (a strip of a few columns, zeros where the padding is)."""
        (top, _), (left, _) = self.pad.padding
        sw, dw, pw = shapes.padded[3], shapes.padded[5], shapes.padded[7]  # stride, dilation, own pad (width)
        n, h, w, c = x4.shape
        first, end = a * sw - pw, (b - 1) * sw - pw + 2 * dw + 1  # padded columns [first, end)
        strip = empty(_STRIP_ROLES[k], (n, h + sum(self.pad.padding[0]), end - first, c), x4.dtype)
        strip[...] = 0
        lo, hi = max(first, left), min(end, left + w)  # the input's columns in the strip, padded coordinates
        strip[:, top:top + h, lo - first:hi - first] = x4[:, :, lo - left:hi - left]
        part = empty(_EDGE_ROLES[k], shapes.out[:2] + (b - a,) + shapes.out[3:], x4.dtype)
        depthwise.forward(strip, kernel, bias, self.conv.use_bias, shapes.padded[:7] + (0,), part)
        out[:, :, a:b] = part

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        x4, geometry = saved
        conv = self.conv
        dy4 = np.ascontiguousarray(dy)  # (N, Ho, Wo, C*m)
        dx = empty("dx", x4.shape, x4.dtype)
        dbias = g[1] if conv.use_bias else np.empty(dy4.shape[3], dy4.dtype)
        depthwise.backward(x4, w[0], dy4, conv.use_bias, geometry, g[0], dbias, dx, need_dx)
        return dx if need_dx else None


class PadConv:
    """The runtime side of ZeroPadding2D then Conv2D; its weights are the convolution's. The convolution's
    kernels already treat reads outside the input as zeros (im2col writes them, the direct tiles read a
    zero-padded copy), so the padding only adds to the window's own pads and enlarges the output: the same
    numbers as the padded copy, without the copy forward and the un-padding backward."""

    is_merge = False
    runs_own_threads = True

    def __init__(self, pad: Any, conv: Any):
        self.pad, self.conv = pad, conv
        self.fused_layers = (pad, conv)
        self._windows: dict = {}

    def _window(self, sample_shape: tuple) -> tuple:
        """(output spatial shape, geometry over the unpadded input) for samples of `sample_shape` (H, W, C)."""
        found = self._windows.get(sample_shape)
        if found is None:
            (top, bottom), (left, right) = self.pad.padding
            h, w, c = sample_shape
            out_spatial, gp = self.conv.window((h + top + bottom, w + left + right, c))
            found = self._windows[sample_shape] = (out_spatial, gp[:6] + (gp[6] + top, gp[7] + left))
        return found

    def output_activation(self) -> str:
        return self.conv.output_activation()

    def applies_activation(self) -> bool:
        return self.conv.applies_activation()

    def forward(self, w, x, training, rng):
        return self.conv.forward_window(w, x, *self._window(x.shape[1:]))

    def backward(self, w, g, saved, dy, need_dx=True):
        return self.conv.backward(w, g, saved, dy, need_dx)  # saved holds the unpadded input and its shape
