"""Convolution and pooling layers, every option that changes their maths, checked against finite
differences (float64, central differences) through the engine. One table, one test.

Finite differences prove backward is the derivative of forward; they cannot tell a wrong padding split
from a right one (both are differentiable). tests/test_reference_conv.py checks the values against
PyTorch for that."""

from __future__ import annotations

import pytest

from .gradcheck import check


def conv1d(**kw):
    return {"type": "Conv1D", "filters": 3, "kernel_size": 3, **kw}


def conv2d(**kw):
    return {"type": "Conv2D", "filters": 3, "kernel_size": [3, 3], **kw}


def deconv(**kw):
    return {"type": "Conv2DTranspose", "filters": 3, "kernel_size": [3, 3], **kw}


def depthwise(**kw):
    return {"type": "DepthwiseConv2D", "kernel_size": [3, 3], **kw}


def separable(**kw):
    return {"type": "SeparableConv2D", "filters": 3, "kernel_size": [3, 3], **kw}


SEQ, IMG = [[9, 2]], [[6, 7, 2]]  # (steps, C) and (H, W, C): odd and even sizes, so 'same' pads unevenly

# (id, layer, input shapes, options)
CASES = [
    ("conv1d_valid", conv1d(), SEQ, {}),
    ("conv1d_same", conv1d(padding="same"), SEQ, {}),
    ("conv1d_same_k4", conv1d(kernel_size=4, padding="same"), SEQ, {}),
    ("conv1d_causal", conv1d(padding="causal"), SEQ, {}),
    ("conv1d_causal_dilated", conv1d(padding="causal", dilation_rate=2), SEQ, {}),
    ("conv1d_valid_strided", conv1d(strides=2), SEQ, {}),
    ("conv1d_same_strided", conv1d(padding="same", strides=2), SEQ, {}),
    ("conv1d_causal_strided", conv1d(padding="causal", strides=3), SEQ, {}),
    ("conv1d_same_dilated", conv1d(padding="same", dilation_rate=3), SEQ, {}),
    ("conv1d_no_bias", conv1d(use_bias=False), SEQ, {}),
    ("conv1d_pointwise", conv1d(kernel_size=1), SEQ, {}),
    ("conv1d_tanh", conv1d(activation="tanh"), SEQ, {}),
    ("conv2d_valid", conv2d(), IMG, {}),
    ("conv2d_same", conv2d(padding="same"), IMG, {}),
    ("conv2d_same_k4", conv2d(kernel_size=[4, 4], padding="same"), IMG, {}),
    ("conv2d_non_square", conv2d(kernel_size=[3, 2]), IMG, {}),
    ("conv2d_non_square_same", conv2d(kernel_size=[2, 5], padding="same"), IMG, {}),
    ("conv2d_strides_2", conv2d(strides=[2, 2]), IMG, {}),
    ("conv2d_strides_2_same", conv2d(strides=[2, 2], padding="same"), IMG, {}),
    ("conv2d_strides_2_1", conv2d(strides=[2, 1]), IMG, {}),
    ("conv2d_strides_2_1_same", conv2d(strides=[2, 1], padding="same"), IMG, {}),
    ("conv2d_dilated", conv2d(dilation_rate=[2, 2]), IMG, {}),
    ("conv2d_dilated_same", conv2d(dilation_rate=[2, 2], padding="same"), IMG, {}),
    ("conv2d_dilated_1_2", conv2d(dilation_rate=[1, 2], padding="same"), IMG, {}),
    ("conv2d_no_bias", conv2d(use_bias=False), IMG, {}),
    ("conv2d_pointwise", conv2d(kernel_size=[1, 1]), IMG, {}),
    ("conv2d_1x1_strided", conv2d(kernel_size=[1, 1], strides=[2, 2]), IMG, {}),
    ("conv2d_relu", conv2d(activation="relu", padding="same"), IMG, {}),
    # ReLU is applied inside the convolution's chunks (forward and backward), with and without a bias, on
    # the tap-major path (one channel) and through a stride
    ("conv2d_relu_no_bias", conv2d(activation="relu", use_bias=False), IMG, {}),
    ("conv2d_relu_one_channel", conv2d(activation="relu"), [[6, 7, 1]], {}),
    ("conv2d_relu_strided", conv2d(activation="relu", strides=[2, 2], padding="same"), IMG, {}),
    ("conv1d_relu", conv1d(activation="relu"), SEQ, {}),
    ("deconv_valid", deconv(), IMG, {}),
    ("deconv_same", deconv(padding="same"), IMG, {}),
    ("deconv_valid_strides_2", deconv(strides=[2, 2]), IMG, {}),
    ("deconv_same_strides_2", deconv(strides=[2, 2], padding="same"), IMG, {}),
    ("deconv_same_strides_2_1", deconv(strides=[2, 1], padding="same"), IMG, {}),
    ("deconv_same_k4_strides_2", deconv(kernel_size=[4, 4], strides=[2, 2], padding="same"), IMG, {}),
    ("deconv_k2_strides_3", deconv(kernel_size=[2, 2], strides=[3, 3]), IMG, {}),
    ("deconv_output_padding_same", deconv(strides=[2, 2], padding="same", output_padding=[1, 1]), IMG, {}),
    ("deconv_output_padding_valid", deconv(strides=[3, 2], output_padding=[2, 0]), IMG, {}),
    ("deconv_output_padding_0", deconv(strides=[2, 2], padding="same", output_padding=[0, 0]), IMG, {}),
    ("deconv_non_square", deconv(kernel_size=[2, 3], strides=[2, 2], padding="same"), IMG, {}),
    ("deconv_dilated", deconv(dilation_rate=[2, 2]), IMG, {}),
    ("deconv_dilated_same", deconv(dilation_rate=[2, 1], padding="same"), IMG, {}),
    ("deconv_no_bias", deconv(use_bias=False, strides=[2, 2]), IMG, {}),
    ("deconv_pointwise", deconv(kernel_size=[1, 1]), IMG, {}),
    ("deconv_sigmoid", deconv(activation="sigmoid", strides=[2, 2]), IMG, {}),
    ("depthwise_valid", depthwise(), IMG, {}),
    ("depthwise_same", depthwise(padding="same"), IMG, {}),
    ("depthwise_multiplier_3", depthwise(depth_multiplier=3), IMG, {}),
    ("depthwise_strides_2_same", depthwise(strides=[2, 2], padding="same", depth_multiplier=2), IMG, {}),
    ("depthwise_strides_2_1", depthwise(strides=[2, 1]), IMG, {}),
    ("depthwise_dilated", depthwise(dilation_rate=[2, 2], padding="same"), IMG, {}),
    ("depthwise_non_square", depthwise(kernel_size=[2, 3]), IMG, {}),
    ("depthwise_no_bias", depthwise(use_bias=False, depth_multiplier=2), IMG, {}),
    ("depthwise_relu6", depthwise(activation="relu6"), IMG, {}),
    ("separable_valid", separable(), IMG, {}),
    ("separable_same", separable(padding="same"), IMG, {}),
    ("separable_multiplier_2", separable(depth_multiplier=2), IMG, {}),
    ("separable_strides_2_same", separable(strides=[2, 2], padding="same"), IMG, {}),
    ("separable_dilated", separable(dilation_rate=[2, 2]), IMG, {}),
    ("separable_no_bias", separable(use_bias=False, depth_multiplier=2), IMG, {}),
    ("separable_elu", separable(activation="elu"), IMG, {}),
    ("maxpool1d", {"type": "MaxPooling1D"}, SEQ, {}),
    ("maxpool1d_overlap", {"type": "MaxPooling1D", "pool_size": 3, "strides": 1}, SEQ, {}),
    ("maxpool1d_same", {"type": "MaxPooling1D", "pool_size": 3, "strides": 2, "padding": "same"}, SEQ, {}),
    ("maxpool2d", {"type": "MaxPooling2D"}, IMG, {}),
    ("maxpool2d_same", {"type": "MaxPooling2D", "padding": "same"}, IMG, {}),
    ("maxpool2d_3_strides_2_same", {"type": "MaxPooling2D", "pool_size": 3, "strides": 2, "padding": "same"},
     IMG, {}),
    ("maxpool2d_non_square", {"type": "MaxPooling2D", "pool_size": [2, 3], "strides": [1, 2]}, IMG, {}),
    ("avgpool1d", {"type": "AveragePooling1D", "pool_size": 2}, SEQ, {}),
    ("avgpool1d_overlap", {"type": "AveragePooling1D", "pool_size": 3, "strides": 1}, SEQ, {}),
    ("avgpool1d_same", {"type": "AveragePooling1D", "pool_size": 4, "strides": 2, "padding": "same"}, SEQ, {}),
    ("avgpool2d", {"type": "AveragePooling2D", "pool_size": 2}, IMG, {}),
    ("avgpool2d_same", {"type": "AveragePooling2D", "pool_size": 2, "padding": "same"}, IMG, {}),
    ("avgpool2d_3_strides_2_same", {"type": "AveragePooling2D", "pool_size": 3, "strides": 2, "padding": "same"},
     IMG, {}),
    ("avgpool2d_non_square", {"type": "AveragePooling2D", "pool_size": [3, 2], "strides": [2, 1]}, IMG, {}),
    *[(f"{t.lower()}{'_keepdims' if k else ''}", {"type": t, "keepdims": k}, SEQ if t.endswith("1D") else IMG, {})
      for t in ("GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D")
      for k in (False, True)],
]


@pytest.mark.parametrize("layer,shapes,options", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gradient_matches_finite_differences(layer, shapes, options):
    check(layer, shapes, **options)
