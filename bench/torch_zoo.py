"""Plain PyTorch peers of bench/zoo.py's specs (ResNet-20, MobileNetV2, ResNet-50, the Transformer encoder),
written by hand (no torchvision), as a PyTorch user would write them: nn.Module blocks, BatchNorm2d,
in-place ReLU, nn.TransformerEncoderLayer.

Each model lists its weighted modules in `ordered`, in the order bench/zoo.py's spec lists its weighted
layers, and `load_keras_weights` copies specc's initial weights (Keras layouts) into them one by one:
Conv2D kernel (kh, kw, in, out) -> weight (out, in, kh, kw); DepthwiseConv2D kernel (kh, kw, C, 1) ->
weight (C, 1, kh, kw); BatchNormalization gamma, beta, moving mean, moving variance -> weight, bias,
running_mean, running_var; Dense kernel (in, out) -> Linear.weight (out, in); LayerNormalization gamma,
beta -> weight, bias; MultiHeadAttention (Keras: query/key/value kernels (d, heads, head_dim) and biases
(heads, head_dim), output kernel (heads, head_dim, d) and bias (d,)) -> nn.MultiheadAttention's packed
in_proj_weight (3 * heads * head_dim, d) = the three kernels flattened to (d, heads * head_dim),
transposed, stacked (both split the width into heads head-major), in_proj_bias likewise, out_proj.weight =
the output kernel as (heads * head_dim, d), transposed. Every shape is checked.
Padding as in the specs: symmetric (k - 1) // 2 on every convolution (bench/zoo.py says why).
"""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-5  # BatchNormalization epsilon, as in bench/zoo.py's specs


def conv_bn(ordered: list, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False)
    bn = nn.BatchNorm2d(cout, eps=EPS)
    ordered += [conv, bn]
    return [conv, bn]


class BasicBlock(nn.Module):
    def __init__(self, ordered: list, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(ordered, cin, cout, 3, stride), nn.ReLU(inplace=True),
                                  *conv_bn(ordered, cout, cout, 3))
        self.shortcut = nn.Sequential(*conv_bn(ordered, cin, cout, 1, stride)) \
            if stride != 1 or cin != cout else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        s = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.body(x) + s)


class ResNet20(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.ordered: list[nn.Module] = []
        layers = [*conv_bn(self.ordered, 3, 16, 3), nn.ReLU(inplace=True)]
        cin = 16
        for stage, f in enumerate((16, 32, 64)):
            for block in range(3):
                layers.append(BasicBlock(self.ordered, cin, f, 2 if stage > 0 and block == 0 else 1))
                cin = f
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)
        self.ordered.append(self.fc)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class InvertedResidual(nn.Module):
    def __init__(self, ordered: list, cin: int, cout: int, stride: int, t: int, expand: bool):
        super().__init__()
        mid = cin * t
        layers = [*conv_bn(ordered, cin, mid, 1), nn.ReLU6(inplace=True)] if expand else []
        layers += [*conv_bn(ordered, mid, mid, 3, stride, groups=mid), nn.ReLU6(inplace=True),
                   *conv_bn(ordered, mid, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))

    def __init__(self, alpha: float = 0.35, classes: int = 10):
        super().__init__()
        self.ordered: list[nn.Module] = []
        first = _make_divisible(32 * alpha)
        layers = [*conv_bn(self.ordered, 3, first, 3, 2), nn.ReLU6(inplace=True)]
        cin, block_id = first, 0
        for t, c, n, s in self.BLOCKS:
            out = _make_divisible(int(c * alpha))
            for i in range(n):
                layers.append(InvertedResidual(self.ordered, cin, out, s if i == 0 else 1, t if block_id else 1,
                                               expand=block_id > 0))
                cin, block_id = out, block_id + 1
        last = 1280 if alpha <= 1.0 else _make_divisible(1280 * alpha)
        layers += [*conv_bn(self.ordered, cin, last, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(last, classes)
        self.ordered.append(self.fc)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class Bottleneck(nn.Module):
    """Keras's ResNet50 v1 block: the stride on the first 1x1 convolution."""

    def __init__(self, ordered: list, cin: int, f: int, stride: int, project: bool):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(ordered, cin, f, 1, stride), nn.ReLU(inplace=True),
                                  *conv_bn(ordered, f, f, 3), nn.ReLU(inplace=True),
                                  *conv_bn(ordered, f, 4 * f, 1))
        self.shortcut = nn.Sequential(*conv_bn(ordered, cin, 4 * f, 1, stride)) if project else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        s = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.body(x) + s)


class ResNet50(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.ordered: list[nn.Module] = []
        layers = [*conv_bn(self.ordered, 3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for stage, (blocks, f) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512))):
            for block in range(blocks):
                layers.append(Bottleneck(self.ordered, cin, f, 2 if stage > 0 and block == 0 else 1, block == 0))
                cin = 4 * f
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)
        self.ordered.append(self.fc)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class TransformerClassifier(nn.Module):
    """bench/zoo.py's transformer: Linear projection, post-norm encoder layers (ReLU feed-forward, LayerNorm
    epsilon 1e-6, no dropout), mean over the steps, Linear head. Input (N, steps, features)."""

    def __init__(self, features: int = 16, width: int = 64, heads: int = 4, ff: int = 128, depth: int = 2,
                 classes: int = 4):
        super().__init__()
        self.project = nn.Linear(features, width)
        self.encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, ff, dropout=0.0, activation="relu", layer_norm_eps=1e-6,
                                       batch_first=True, norm_first=False) for _ in range(depth))
        self.fc = nn.Linear(width, classes)
        self.ordered: list[nn.Module] = [self.project]
        for layer in self.encoder:
            self.ordered += [layer.self_attn, layer.norm1, layer.linear1, layer.linear2, layer.norm2]
        self.ordered.append(self.fc)

    def forward(self, x):
        x = self.project(x)
        for layer in self.encoder:
            x = layer(x)
        return self.fc(x.mean(1))


MODELS = {"resnet20": ResNet20, "mobilenetv2": MobileNetV2, "resnet50": ResNet50,
          "transformer": TransformerClassifier}


def load_keras_weights(model: nn.Module, weights: list) -> None:
    """Copies Keras-layout arrays (specc's get_weights order) into model.ordered's modules."""
    it = iter(torch.from_numpy(w.copy()) for w in weights)

    def put(dst, src):
        if tuple(dst.shape) != tuple(src.shape):
            raise ValueError(f"weight shape {tuple(src.shape)} does not fit {tuple(dst.shape)}")
        dst.copy_(src)

    with torch.no_grad():
        for m in model.ordered:
            if isinstance(m, nn.Conv2d):
                k = next(it)  # (kh, kw, in, out), or (kh, kw, C, 1) depthwise
                put(m.weight, k.permute(2, 3, 0, 1) if m.groups > 1 else k.permute(3, 2, 0, 1))
            elif isinstance(m, nn.BatchNorm2d):
                for dst in (m.weight, m.bias, m.running_mean, m.running_var):
                    put(dst, next(it))
            elif isinstance(m, nn.Linear):
                put(m.weight, next(it).T)
                put(m.bias, next(it))
            elif isinstance(m, nn.LayerNorm):
                put(m.weight, next(it))
                put(m.bias, next(it))
            elif isinstance(m, nn.MultiheadAttention):
                e = m.embed_dim
                for i in range(3):  # query, key, value: (d, heads, head_dim), (heads, head_dim)
                    k, b = next(it), next(it)
                    put(m.in_proj_weight[i * e: (i + 1) * e], k.reshape(k.shape[0], -1).T)
                    put(m.in_proj_bias[i * e: (i + 1) * e], b.reshape(-1))
                k = next(it)  # (heads, head_dim, d)
                put(m.out_proj.weight, k.reshape(-1, k.shape[-1]).T)
                put(m.out_proj.bias, next(it))
        if next(it, None) is not None:
            raise ValueError("more weights than the PyTorch model has")


def build(name: str, weights: list) -> nn.Module:
    model = MODELS[name]()
    load_keras_weights(model, weights)
    return model
