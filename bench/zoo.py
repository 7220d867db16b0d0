"""The benchmark's real architectures as specc specs, generated here and written to bench/workloads/:
ResNet-20 (CIFAR, 32x32x3), MobileNetV2 (alpha 0.35, 96x96x3), ResNet-50 (64x64x3, 10 classes) and the
Transformer encoder classifier of specs/zoo/transformer.yaml (32 steps x 16 features, 4 classes).

    python bench/zoo.py            # (re)writes bench/workloads/{resnet20,...,transformer}_train.yaml
    python bench/zoo.py --check    # exit 1 if a committed file differs from what this script writes

Each spec is a flat Functional graph (specc format v1). bench/torch_workloads.py builds the same networks
by hand, creating its weighted modules in the order these specs list their weighted layers (so specc's
initial weights copy over one by one). Where the two differ in how they would naturally pad, the spec
follows PyTorch: a stride-2 convolution is ZeroPadding2D((k-1)//2) then `valid`, which is PyTorch's
symmetric `padding=(k-1)//2` (Keras Applications pad the same way, by ZeroPadding2D, but asymmetrically).
Convolutions followed by BatchNormalization have no bias, on both sides.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# BatchNormalization as PyTorch's defaults (eps 1e-5, momentum 0.1 -> Keras momentum 0.9): the training
# loss depends on epsilon only, and the two sides agree on it.
BN = {"type": "BatchNormalization", "momentum": 0.9, "epsilon": 1e-5}


class _Graph:
    """Appends Functional layers with unique names; each call returns the new tensor's name."""

    def __init__(self):
        self.layers: list[dict] = []
        self.count: dict[str, int] = {}

    def add(self, prefix: str, inputs, **layer) -> str:
        k = self.count.get(prefix, 0)
        self.count[prefix] = k + 1
        name = f"{prefix}{k}"
        self.layers.append({**layer, "name": name, "inputs": inputs})
        return name

    def conv_bn(self, x: str, filters: int, kernel: int, stride: int = 1, act: str | None = "relu",
                depthwise: bool = False) -> str:
        """[ZeroPadding2D if strided] Conv2D (or DepthwiseConv2D) without bias, BatchNormalization,
        [Activation]. Unstrided convolutions use padding 'same' (symmetric for odd kernels)."""
        padding = "same"
        if stride > 1 and kernel > 1:
            x = self.add("pad", x, type="ZeroPadding2D", padding=(kernel - 1) // 2)
            padding = "valid"
        if depthwise:
            x = self.add("dw", x, type="DepthwiseConv2D", kernel_size=kernel, strides=stride, padding=padding,
                         use_bias=False)
        else:
            x = self.add("conv", x, type="Conv2D", filters=filters, kernel_size=kernel, strides=stride,
                         padding=padding, use_bias=False)
        x = self.add("bn", x, **BN)
        if act:
            x = self.add("act", x, type="Activation", activation=act)
        return x


def resnet20() -> dict:
    """He et al.'s CIFAR ResNet-20: a 3x3 stem of 16 filters, 3 stages of 3 basic blocks (16, 32, 64
    filters; stride 2 at the start of stages 2 and 3, where the shortcut is a 1x1 convolution with
    BatchNormalization, "option B"), global average pooling, Dense 10."""
    g = _Graph()
    x = g.conv_bn("image", 16, 3)
    channels = 16
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            y = g.conv_bn(x, filters, 3, stride)
            y = g.conv_bn(y, filters, 3, 1, act=None)
            shortcut = x
            if stride != 1 or channels != filters:
                shortcut = g.conv_bn(x, filters, 1, stride, act=None)
            x = g.add("add", [y, shortcut], type="Add")
            x = g.add("act", x, type="Activation", activation="relu")
            channels = filters
    x = g.add("gap", x, type="GlobalAveragePooling2D")
    x = g.add("dense", x, type="Dense", units=10, activation="softmax")
    return _spec("bench_resnet20_train", {"image": [32, 32, 3]}, g, x, samples=3200,
                 optimizer={"type": "sgd", "learning_rate": 0.01, "momentum": 0.9}, batch=32,
                 comment="CIFAR-size ResNet-20 (32x32x3, 16/32/64 filters, 9 residual blocks with "
                         "BatchNormalization), SGD with momentum, batch 32")


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Keras Applications' channel rounding (MobileNetV2): to the nearest multiple of divisor, at least
    divisor, and not more than 10% below v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


MOBILENETV2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                      (6, 160, 3, 2), (6, 320, 1, 1))  # expansion t, channels c, repeats n, first stride s


def mobilenetv2(alpha: float = 0.35) -> dict:
    """Keras Applications' MobileNetV2 (Sandler et al.): a stride-2 3x3 stem, 17 inverted residual blocks
    (1x1 expansion + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear projection, each with BatchNormalization;
    a residual Add where the shape is kept), a 1x1 conv to 1280 channels, global average pooling, Dense 10."""
    g = _Graph()
    first = _make_divisible(32 * alpha)
    x = g.conv_bn("image", first, 3, 2, act="relu6")
    channels = first
    block_id = 0
    for t, c, n, s in MOBILENETV2_BLOCKS:
        out = _make_divisible(int(c * alpha))
        for i in range(n):
            stride = s if i == 0 else 1
            y = x
            if block_id:  # Keras's first block has no expansion
                y = g.conv_bn(y, channels * t, 1, act="relu6")
            y = g.conv_bn(y, 0, 3, stride, act="relu6", depthwise=True)
            y = g.conv_bn(y, out, 1, act=None)
            if stride == 1 and channels == out:
                y = g.add("add", [x, y], type="Add")
            x, channels = y, out
            block_id += 1
    x = g.conv_bn(x, 1280 if alpha <= 1.0 else _make_divisible(1280 * alpha), 1, act="relu6")
    x = g.add("gap", x, type="GlobalAveragePooling2D")
    x = g.add("dense", x, type="Dense", units=10, activation="softmax")
    return _spec("bench_mobilenetv2_train", {"image": [96, 96, 3]}, g, x, samples=3200,
                 optimizer={"type": "sgd", "learning_rate": 0.01, "momentum": 0.9}, batch=32,
                 comment=f"MobileNetV2 (alpha {alpha}) at 96x96x3, 10 classes, SGD with momentum, batch 32")


def resnet50() -> dict:
    """Keras Applications' ResNet50 (v1: the stride on each stage's first 1x1 convolution) at 64x64x3:
    a 7x7 stride-2 stem, 3x3 stride-2 max pooling, bottleneck stages of 3, 4, 6, 3 blocks (64/256,
    128/512, 256/1024, 512/2048 filters) with a projection shortcut in each stage's first block, global
    average pooling, Dense 10."""
    g = _Graph()
    x = g.conv_bn("image", 64, 7, 2)
    x = g.add("pad", x, type="ZeroPadding2D", padding=1)  # after a ReLU: zero padding = PyTorch's -inf
    x = g.add("pool", x, type="MaxPooling2D", pool_size=3, strides=2)
    for stage, (blocks, f) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512))):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            y = g.conv_bn(x, f, 1, stride)
            y = g.conv_bn(y, f, 3)
            y = g.conv_bn(y, 4 * f, 1, act=None)
            shortcut = g.conv_bn(x, 4 * f, 1, stride, act=None) if block == 0 else x
            x = g.add("add", [y, shortcut], type="Add")
            x = g.add("act", x, type="Activation", activation="relu")
    x = g.add("gap", x, type="GlobalAveragePooling2D")
    x = g.add("dense", x, type="Dense", units=10, activation="softmax")
    # lr 0.001: at 0.01 the loss rose from 3.2 to 9-13 in ten steps, a divergence in which PyTorch's own
    # float32 and float64 runs parted by 13%, so the loss check compared chaos.
    return _spec("bench_resnet50_train", {"image": [64, 64, 3]}, g, x, samples=640,
                 optimizer={"type": "sgd", "learning_rate": 0.001, "momentum": 0.9}, batch=32,
                 comment="ResNet-50 (v1, Keras Applications' layout) at 64x64x3, 10 classes, SGD with "
                         "momentum, batch 32")


def transformer(steps: int = 32, features: int = 16, width: int = 64, heads: int = 4, ff: int = 128,
                depth: int = 2, classes: int = 4) -> dict:
    """specs/zoo/transformer.yaml's encoder classifier without its dropout (the benchmark compares loss
    trajectories step by step): Dense projection to the model width, `depth` post-norm encoder layers
    (self-attention, Add, LayerNormalization; Dense relu, Dense, Add, LayerNormalization), average pooling
    over the steps, Dense softmax. PyTorch's nn.TransformerEncoderLayer(batch_first=True, norm_first=False)
    is the same layer."""
    g = _Graph()
    x = g.add("project", "sequence", type="Dense", units=width)
    for _ in range(depth):
        a = g.add("attn", [x, x], type="MultiHeadAttention", num_heads=heads, key_dim=width // heads)
        x = g.add("norm", g.add("add", [x, a], type="Add"), type="LayerNormalization", epsilon=1e-6)
        y = g.add("ff", x, type="Dense", units=ff, activation="relu")
        y = g.add("ff", y, type="Dense", units=width)
        x = g.add("norm", g.add("add", [x, y], type="Add"), type="LayerNormalization", epsilon=1e-6)
    x = g.add("pool", x, type="GlobalAveragePooling1D")
    x = g.add("label", x, type="Dense", units=classes, activation="softmax")
    return _spec("bench_transformer_train", {"sequence": [steps, features]}, g, x, samples=1280,
                 optimizer="adam", batch=32, classes=classes,
                 comment=f"Transformer encoder classifier (specs/zoo/transformer.yaml without dropout), {steps} "
                         f"steps x {features} features, width {width}, {heads} heads, {depth} layers, Adam, "
                         "batch 32")


def _spec(name, inputs, g, output, samples, optimizer, batch, comment, classes=10) -> dict:
    return {"comment": comment, "specc": 1, "name": name, "seed": 0,
            "model": {"inputs": inputs, "layers": g.layers, "outputs": [output]},
            "data": {"source": "synthetic", "samples": samples, "classes": classes, "test_split": 0.0},
            "compile": {"optimizer": optimizer, "loss": "sparse_categorical_crossentropy"},
            "fit": {"batch_size": batch, "epochs": 1, "shuffle": False, "verbose": 0}}


MODELS = {"resnet20": resnet20, "mobilenetv2": mobilenetv2, "resnet50": resnet50, "transformer": transformer}


def _flow(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_flow(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def to_yaml(spec: dict) -> str:
    """The spec as YAML: one flow mapping per layer, so a layer is one line."""
    lines = [f"# {spec['comment']}.", "# Generated by bench/zoo.py: edit that, not this file.",
             f"specc: {spec['specc']}", f"name: {spec['name']}", f"seed: {spec['seed']}", "model:",
             f"  inputs: {_flow(spec['model']['inputs'])}", "  layers:"]
    lines += [f"    - {_flow(layer)}" for layer in spec["model"]["layers"]]
    lines.append(f"  outputs: {_flow(spec['model']['outputs'])}")
    for key in ("data", "compile", "fit"):
        lines.append(f"{key}:")
        lines += [f"  {k}: {_flow(v)}" for k, v in spec[key].items()]
    return "\n".join(lines) + "\n"


def path_of(model: str) -> str:
    return os.path.join(HERE, "workloads", f"{model}_train.yaml")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = parser.parse_args()
    stale = []
    for model, build in MODELS.items():
        text = to_yaml(build())
        path = path_of(model)
        if args.check:
            try:
                with open(path, encoding="utf-8") as fh:
                    same = fh.read() == text
            except OSError:
                same = False
            if not same:
                stale.append(path)
        else:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
            print(f"wrote {os.path.relpath(path)}")
    for path in stale:
        print(f"{os.path.relpath(path)} differs from what bench/zoo.py writes", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
