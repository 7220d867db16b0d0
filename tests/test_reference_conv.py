"""Convolution and pooling values and gradients against PyTorch (float64, the same weights).

Finite differences cannot see where 'same' padding goes (every split is differentiable); this does. The
reference builds TF/Keras's padding itself (explicit F.pad, never torch's own 'same'), transposes Keras's
kernels to torch's layouts, and compares the outputs and d(loss)/d(input, weights) for loss = sum(R * y).
"""

from __future__ import annotations

import numpy as np
import pytest

from .gradcheck import build

torch = pytest.importorskip("torch")
F = torch.nn.functional


def tf_same(n, k, stride=1, dilation=1):
    """TF/Keras 'same' padding (before, after) of one axis: out = ceil(n / stride), the odd one after."""
    span = dilation * (k - 1) + 1
    out = -(-n // stride)
    total = max((out - 1) * stride + span - n, 0)
    return total // 2, total - total // 2


def pads_2d(layer, x_hw, kernel, strides, dilation=(1, 1)):
    """F.pad argument (left, right, top, bottom) for an NCHW tensor."""
    if layer.get("padding", "valid") == "valid":
        return (0, 0, 0, 0)
    top, bottom = tf_same(x_hw[0], kernel[0], strides[0], dilation[0])
    left, right = tf_same(x_hw[1], kernel[1], strides[1], dilation[1])
    return (left, right, top, bottom)


def pair(v, default):
    v = default if v is None else v
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def keras_transpose_pads(n, k, stride, dilation, padding, output_padding):
    """Keras 3's JAX backend rule (backend_utils) for conv_transpose: (left, right) padding of the
    stride-dilated input before a correlation with the flipped kernel."""
    k = (k - 1) * dilation + 1
    if padding == "valid":
        op = max(k, stride) - k if output_padding is None else output_padding
        return k - 1, k - 1 + op
    pad_len = stride + k - 2 if output_padding is None else k + k % 2 - 2 + output_padding
    left = min(pad_len // 2 + pad_len % 2, k - 1)
    return left, pad_len - left


def crop_transpose(full, n, k, stride, dilation, padding, output_padding, axis):
    """Torch's full transposed convolution ((n-1)*s + dilated_k long) cut to Keras's window: the full one
    has k-1 of padding each side, so Keras's starts k-1-left in, and extends with zeros past the end."""
    left, right = keras_transpose_pads(n, k, stride, dilation, padding, output_padding)
    span = (k - 1) * dilation + 1
    start = span - 1 - left
    length = (n - 1) * stride + 1 + left + right - span + 1
    extra = max(start + length - full.shape[axis], 0)
    if extra:
        shape = list(full.shape)
        shape[axis] = extra
        full = torch.cat([full, full.new_zeros(shape)], axis)
    return full.narrow(axis, start, length)


def reference(layer, x, weights):
    """Torch forward of one layer. x: NHWC / NLC tensor; weights: Keras-layout tensors. Returns y in the
    Keras layout (channels_last)."""
    t = layer["type"]
    if x.ndim == 3:  # (N, L, C) -> (N, C, L)
        xc = x.permute(0, 2, 1)
    else:
        xc = x.permute(0, 3, 1, 2)
    use_bias = layer.get("use_bias", True)

    if t == "Conv1D":
        k = layer["kernel_size"]
        s, d = pair(layer.get("strides"), 1)[0], pair(layer.get("dilation_rate"), 1)[0]
        pad = layer.get("padding", "valid")
        if pad == "causal":
            xc = F.pad(xc, (d * (k - 1), 0))
        elif pad == "same":
            xc = F.pad(xc, tf_same(x.shape[1], k, s, d))
        y = F.conv1d(xc, weights[0].permute(2, 1, 0), weights[1] if use_bias else None, stride=s, dilation=d)
        return y.permute(0, 2, 1)

    if t in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D"):
        ks, s = pair(layer["kernel_size"], None), pair(layer.get("strides"), 1)
        d = pair(layer.get("dilation_rate"), 1)
        xc = F.pad(xc, pads_2d(layer, x.shape[1:3], ks, s, d))
        if t == "Conv2D":
            y = F.conv2d(xc, weights[0].permute(3, 2, 0, 1), weights[1] if use_bias else None, stride=s, dilation=d)
        else:
            c, m = weights[0].shape[2], weights[0].shape[3]
            dw = weights[0].permute(2, 3, 0, 1).reshape(c * m, 1, ks[0], ks[1])  # out channel c*m + q
            dw_bias = weights[1] if (t == "DepthwiseConv2D" and use_bias) else None
            y = F.conv2d(xc, dw, dw_bias, stride=s, dilation=d, groups=c)
            if t == "SeparableConv2D":
                y = F.conv2d(y, weights[1].permute(3, 2, 0, 1), weights[2] if use_bias else None)
        return y.permute(0, 2, 3, 1)

    if t == "Conv2DTranspose":
        ks, s = pair(layer["kernel_size"], None), pair(layer.get("strides"), 1)
        d = pair(layer.get("dilation_rate"), 1)
        op = pair(layer.get("output_padding"), (None, None))
        pad = layer.get("padding", "valid")
        # Keras (kh, kw, F, C) -> torch conv_transpose2d (C, F, kh, kw)
        full = F.conv_transpose2d(xc, weights[0].permute(3, 2, 0, 1), stride=s, dilation=d)
        for axis, n, k, st, dl, o in zip((2, 3), x.shape[1:3], ks, s, d, op, strict=True):
            full = crop_transpose(full, n, k, st, dl, pad, o, axis)
        if use_bias:
            full = full + weights[1].reshape(1, -1, 1, 1)
        return full.permute(0, 2, 3, 1)

    if t.startswith("Global"):
        dims = (2,) if x.ndim == 3 else (2, 3)
        y = xc.amax(dim=dims, keepdim=True) if "Max" in t else xc.mean(dim=dims, keepdim=True)
        if not layer.get("keepdims", False):
            return y.reshape(y.shape[0], y.shape[1])
        return y.permute(0, 2, 1) if x.ndim == 3 else y.permute(0, 2, 3, 1)

    # Max/AveragePooling1D/2D, 1-D as 2-D with H = 1.
    one_d = x.ndim == 3
    if one_d:
        xc = xc.unsqueeze(2)
    ks = (1,) + pair(layer.get("pool_size"), 2)[:1] if one_d else pair(layer.get("pool_size"), 2)
    s = pair(layer.get("strides"), None)
    s = ((1, s[0]) if one_d else s) if s[0] is not None else ks
    pads = pads_2d(layer, xc.shape[2:], ks, s)
    if t.startswith("Max"):
        y = F.max_pool2d(F.pad(xc, pads, value=-float("inf")), ks, s)
    else:  # sum over the window / number of valid positions in it
        area = ks[0] * ks[1]
        total = F.avg_pool2d(F.pad(xc, pads), ks, s) * area
        count = F.avg_pool2d(F.pad(torch.ones_like(xc), pads), ks, s) * area
        y = total / count
    if one_d:
        return y.squeeze(2).permute(0, 2, 1)
    return y.permute(0, 2, 3, 1)


def run_case(layer, shape, batch=2):
    rng = np.random.default_rng(3)
    engine = build(layer, [shape])
    engine.params[...] = rng.standard_normal(engine.params.shape) * 0.5  # nonzero biases too
    step = engine.steps[0]
    x = rng.standard_normal((batch, *shape))
    y = engine.forward([x])[0]
    R = rng.standard_normal(y.shape)
    engine.backward([R])
    dx = engine._input_grads[engine.input_names[0]]

    xt = torch.tensor(x, requires_grad=True)
    wt = [torch.tensor(w.copy(), requires_grad=True) for w in step.weights]
    yt = reference(layer, xt, wt)
    act = layer.get("activation", "linear")
    if act != "linear":
        yt = getattr(torch, act)(yt)
    assert tuple(yt.shape) == y.shape, (tuple(yt.shape), y.shape)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg="forward")
    (yt * torch.tensor(R)).sum().backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg="d(input)")
    for spec, g, w in zip(step.specs, step.grads, wt, strict=True):
        np.testing.assert_allclose(g, w.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=f"d({spec.name})")


IMG, ODD, SEQ = [7, 8, 3], [5, 5, 2], [10, 3]

CASES = [
    ("conv1d_same_k4", {"type": "Conv1D", "filters": 4, "kernel_size": 4, "padding": "same"}, SEQ),
    ("conv1d_same_strided", {"type": "Conv1D", "filters": 4, "kernel_size": 3, "padding": "same", "strides": 2}, SEQ),
    ("conv1d_causal_dilated", {"type": "Conv1D", "filters": 2, "kernel_size": 3, "padding": "causal",
                               "dilation_rate": 2}, SEQ),
    ("conv2d_valid", {"type": "Conv2D", "filters": 4, "kernel_size": 3}, IMG),
    ("conv2d_same", {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"}, IMG),
    ("conv2d_same_even_kernel", {"type": "Conv2D", "filters": 4, "kernel_size": [4, 2], "padding": "same"}, IMG),
    ("conv2d_strided_same", {"type": "Conv2D", "filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"}, IMG),
    ("conv2d_strided_same_odd", {"type": "Conv2D", "filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
     ODD),
    ("conv2d_strides_2_1", {"type": "Conv2D", "filters": 2, "kernel_size": [3, 2], "strides": [2, 1]}, IMG),
    ("conv2d_dilated", {"type": "Conv2D", "filters": 3, "kernel_size": 3, "dilation_rate": 2}, IMG),
    ("conv2d_dilated_same", {"type": "Conv2D", "filters": 3, "kernel_size": 2, "dilation_rate": [2, 3],
                             "padding": "same"}, IMG),
    ("conv2d_1x1_no_bias", {"type": "Conv2D", "filters": 5, "kernel_size": 1, "use_bias": False}, IMG),
    ("conv2d_relu", {"type": "Conv2D", "filters": 3, "kernel_size": 3, "activation": "relu"}, IMG),
    ("deconv_valid", {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 3}, ODD),
    ("deconv_valid_strided", {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 3, "strides": 2}, ODD),
    ("deconv_same_strided", {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 3, "strides": 2,
                             "padding": "same"}, ODD),
    ("deconv_same_k4_s2", {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 4, "strides": 2,
                           "padding": "same"}, ODD),
    ("deconv_same_k2_s1", {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 2, "padding": "same"}, ODD),
    ("deconv_same_k1_s2", {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 1, "strides": 2,
                           "padding": "same"}, ODD),
    ("deconv_same_k2_s3", {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 2, "strides": 3,
                           "padding": "same"}, ODD),
    ("deconv_k2_s3", {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 2, "strides": 3}, ODD),
    ("deconv_output_padding_same", {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 3, "strides": 2,
                                    "padding": "same", "output_padding": 1}, ODD),
    ("deconv_output_padding_k4", {"type": "Conv2DTranspose", "filters": 3, "kernel_size": [4, 3], "strides": 3,
                                  "padding": "same", "output_padding": [2, 1]}, ODD),
    ("deconv_output_padding_valid", {"type": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "strides": [3, 2],
                                     "output_padding": [2, 1]}, ODD),
    ("deconv_dilated_same", {"type": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "dilation_rate": 2,
                             "padding": "same"}, ODD),
    ("deconv_strides_2_1_no_bias", {"type": "Conv2DTranspose", "filters": 2, "kernel_size": [3, 2],
                                    "strides": [2, 1], "use_bias": False}, ODD),
    ("depthwise_same", {"type": "DepthwiseConv2D", "kernel_size": 3, "padding": "same"}, IMG),
    ("depthwise_multiplier_strided", {"type": "DepthwiseConv2D", "kernel_size": 3, "depth_multiplier": 2,
                                      "strides": 2, "padding": "same"}, IMG),
    ("depthwise_dilated", {"type": "DepthwiseConv2D", "kernel_size": [2, 3], "depth_multiplier": 3,
                           "dilation_rate": 2}, IMG),
    ("separable_same", {"type": "SeparableConv2D", "filters": 4, "kernel_size": 3, "padding": "same",
                        "depth_multiplier": 2}, IMG),
    ("separable_strided_no_bias", {"type": "SeparableConv2D", "filters": 4, "kernel_size": 3, "strides": 2,
                                   "use_bias": False}, IMG),
    ("maxpool1d_same", {"type": "MaxPooling1D", "pool_size": 3, "strides": 2, "padding": "same"}, SEQ),
    ("maxpool2d", {"type": "MaxPooling2D"}, IMG),
    ("maxpool2d_same", {"type": "MaxPooling2D", "pool_size": 3, "strides": 2, "padding": "same"}, IMG),
    ("maxpool2d_same_even", {"type": "MaxPooling2D", "pool_size": [2, 4], "strides": 1, "padding": "same"}, ODD),
    ("avgpool1d_same", {"type": "AveragePooling1D", "pool_size": 4, "strides": 3, "padding": "same"}, SEQ),
    ("avgpool2d", {"type": "AveragePooling2D", "pool_size": 2}, IMG),
    ("avgpool2d_same", {"type": "AveragePooling2D", "pool_size": 3, "strides": 2, "padding": "same"}, IMG),
    ("avgpool2d_same_even", {"type": "AveragePooling2D", "pool_size": [4, 2], "strides": 1, "padding": "same"}, ODD),
    ("avgpool2d_same_stride_above_pool", {"type": "AveragePooling2D", "pool_size": 2, "strides": 3,
                                          "padding": "same"}, IMG),
    ("maxpool2d_same_stride_above_pool", {"type": "MaxPooling2D", "pool_size": 2, "strides": [3, 1],
                                          "padding": "same"}, IMG),
    ("avgpool2d_non_square", {"type": "AveragePooling2D", "pool_size": [3, 2], "strides": [1, 2]}, IMG),
    ("global_max_1d", {"type": "GlobalMaxPooling1D"}, SEQ),
    ("global_avg_1d_keepdims", {"type": "GlobalAveragePooling1D", "keepdims": True}, SEQ),
    ("global_max_2d_keepdims", {"type": "GlobalMaxPooling2D", "keepdims": True}, IMG),
    ("global_avg_2d", {"type": "GlobalAveragePooling2D"}, IMG),
]


@pytest.mark.parametrize("layer,shape", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_matches_torch(layer, shape):
    run_case(layer, shape)
