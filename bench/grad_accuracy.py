"""Gradient accuracy of one training step: the relative L2 error of the float32 gradients of every trainable
weight against a float64 reference, specc against PyTorch, on the same model, weights and batch.

    python bench/grad_accuracy.py [--models resnet20,mobilenetv2] [--batch 32]

specc: the workload's spec (bench/zoo.py) in a float32 Engine and in a float64 Engine with the same
(float32) initial weights; the gradient of the mean sparse categorical cross-entropy of one batch of the
workload's synthetic data, training-mode BatchNormalization. PyTorch: bench/torch_zoo.py's peer with the
same weights, in float32 (channels_last) and in float64. Error = ||g32 - g64|| / ||g64|| over all trainable
weights together. The target (issue 21): specc's error no more than twice PyTorch's.
Writes bench/results/grad-accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import specc.runtime  # noqa: E402, I001

specc.runtime.prepare_process()
import numpy as np  # noqa: E402


def specc_gradients(spec, weights, x, y, dtype) -> np.ndarray:
    from specc.engine import Engine
    from specc.train.fit import Trainer

    engine = Engine(spec.graph, dtype)
    engine.set_weights(weights)
    trainer = Trainer(engine, spec.compile, spec.seed)
    _, grads, _ = trainer.batch_losses([x.astype(dtype)], [y], None, training=True)
    engine.backward(grads, pre_activation=[f is not None for f in trainer.fused])
    return engine.grads.astype(np.float64)


def torch_gradients(model_name, weights, x, y, double) -> np.ndarray:
    import torch
    import torch_zoo

    model = torch_zoo.build(model_name, weights)
    image = x.ndim == 4  # images go to PyTorch as NCHW tensors in channels_last memory; sequences as they are
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2) if image else x))
    if double:
        model, xt = model.double(), xt.double()
    elif image:
        model, xt = model.to(memory_format=torch.channels_last), xt.contiguous(memory_format=torch.channels_last)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(xt), torch.from_numpy(y.astype(np.int64)))
    loss.backward()
    return np.concatenate([p.grad.detach().double().reshape(-1).numpy() for p in model.parameters()])


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,mobilenetv2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    from specc.data.prepare import load
    from specc.engine import Engine
    from specc.spec import load_spec

    results = {}
    for name in args.models.split(","):
        spec, errors = load_spec(os.path.join(HERE, "workloads", f"{name}_train.yaml"))
        assert not errors, errors
        data = load(spec)
        x, y = data.x_train[0][: args.batch], data.y_train[0][: args.batch]
        engine = Engine(spec.graph)
        engine.initialize(spec.seed)
        weights = engine.get_weights()
        row = {"specc": rel(specc_gradients(spec, weights, x, y, np.float32),
                            specc_gradients(spec, weights, x, y, np.float64))}
        try:
            row["torch"] = rel(torch_gradients(name, weights, x, y, False), torch_gradients(name, weights, x, y, True))
            row["ratio"] = row["specc"] / row["torch"]
        except ImportError:
            pass
        results[name] = row
        print(f"{name:12} relative L2 error of float32 gradients vs float64: specc {row['specc']:.2e}" +
              (f", PyTorch {row['torch']:.2e} (specc / PyTorch {row['ratio']:.2f})" if "torch" in row else ""))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "grad-accuracy.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"command": " ".join(sys.argv), "batch": args.batch, "models": results}, fh, indent=1)
    print(f"written {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
