"""The PyTorch side of bench/run.py: the same workloads written as a PyTorch user would write them
(nn.Sequential, or bench/torch_zoo.py's modules for ResNet-20, MobileNetV2 and ResNet-50; torch.optim, a
plain loop over contiguous slices of in-memory tensors), started from specc's initial weights, on the same
arrays in the same batch order.

    python bench/torch_workloads.py CONFIG.json RESULT.json   (started by bench/run.py)

Weight layouts (specc = Keras): Dense kernel (in, out) -> Linear.weight (out, in); Conv2D kernel
(kh, kw, in, out) -> Conv2d.weight (out, in, kh, kw). Torch convolutions are channels_first, so the CNN's
input is transposed to NCHW once, before timing, and the feature map is permuted back to NHWC before
Flatten so that the Dense weights (and every number after them) line up with specc's.

Adam: specc and Keras compute w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps); torch.optim.Adam
puts eps after the bias correction of v. Giving torch eps_t = eps / sqrt(1 - b2^t) at step t (one float
assignment per step) makes the two updates the same function, so the loss check compares like with like.
"""

from __future__ import annotations

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import _child  # noqa: E402


def build_model(torch, name: str, weights):
    """The workload's network with specc's initial weights copied in."""
    nn = torch.nn
    t = [torch.from_numpy(w.copy()) for w in weights]
    if name in ("mlp", "tiny"):
        sizes = [w.shape for w in weights[0::2]]  # Dense kernels (in, out)
        layers = []
        for k, (n_in, n_out) in enumerate(sizes):
            layers.append(nn.Linear(n_in, n_out))
            if k < len(sizes) - 1:
                layers.append(nn.ReLU())
        model = nn.Sequential(*layers)
        linears = [m for m in model if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, k, b in zip(linears, t[0::2], t[1::2]):
                lin.weight.copy_(k.T)
                lin.bias.copy_(b)
        return model
    if name == "cnn":
        class NHWCFlatten(nn.Module):
            def forward(self, x):
                return x.permute(0, 2, 3, 1).flatten(1)  # Keras's channels_last Flatten order

        model = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            NHWCFlatten(), nn.Linear(5 * 5 * 64, 10))
        with torch.no_grad():
            model[0].weight.copy_(t[0].permute(3, 2, 0, 1))
            model[0].bias.copy_(t[1])
            model[3].weight.copy_(t[2].permute(3, 2, 0, 1))
            model[3].bias.copy_(t[3])
            model[7].weight.copy_(t[4].T)
            model[7].bias.copy_(t[5])
        return model
    if name in TEXT:
        return text_model(torch, name, t)
    if name in ZOO or name == "transformer":  # bench/torch_zoo.py; the transformer takes (N, steps, features) as is
        import torch_zoo

        return torch_zoo.build(name, weights)
    raise ValueError(f"unknown model {name!r}")


# bench/zoo.py's architectures (bench/torch_zoo.py): NCHW tensors in PyTorch's channels_last memory format,
# its faster layout on CPU for these networks (config "torch_layout": "nchw" to compare).
ZOO = ("resnet20", "mobilenetv2", "resnet50")


# Token ids -> Embedding -> LSTM or GRU -> Linear on the last step's output (bench/workloads/*_text.yaml).
TEXT = ("lstm_text", "gru_text")


def text_model(torch, name: str, t):
    """Keras's LSTM gates i, f, c, o are PyTorch's i, f, g, o in the same order: weight_ih = kernel.T,
    weight_hh = recurrent_kernel.T, bias_ih = bias, bias_hh = 0. Keras's GRU gates z, r, h (reset_after, the
    default, is PyTorch's formula: the reset gate multiplies h @ W_hn + b_hn) are PyTorch's r, z, n: the
    column blocks swap, and Keras's bias rows (input, recurrent) are bias_ih, bias_hh."""
    nn = torch.nn
    embeddings, kernel, recurrent, bias, dense_kernel, dense_bias = t
    units = recurrent.shape[0]

    class TextRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(*embeddings.shape)
            cell = nn.LSTM if name == "lstm_text" else nn.GRU
            self.rnn = cell(embeddings.shape[1], units, batch_first=True)
            self.head = nn.Linear(units, dense_kernel.shape[1])

        def forward(self, ids):
            out, _ = self.rnn(self.embedding(ids))
            return self.head(out[:, -1])

    model = TextRNN()
    if name == "gru_text":
        def torch_order(w):  # Keras z, r, h column blocks -> PyTorch r, z, n
            return torch.cat([w[..., units: 2 * units], w[..., :units], w[..., 2 * units:]], dim=-1)

        kernel, recurrent, bias_ih, bias_hh = (torch_order(w) for w in (kernel, recurrent, bias[0], bias[1]))
    else:  # one bias in Keras: bias_hh stays zero (trained, Adam would move the sum of the two twice as far)
        bias_ih, bias_hh = bias, torch.zeros_like(bias)
        model.rnn.bias_hh_l0.requires_grad_(False)
    with torch.no_grad():
        model.embedding.weight.copy_(embeddings)
        model.rnn.weight_ih_l0.copy_(kernel.T)
        model.rnn.weight_hh_l0.copy_(recurrent.T)
        model.rnn.bias_ih_l0.copy_(bias_ih)
        model.rnn.bias_hh_l0.copy_(bias_hh)
        model.head.weight.copy_(dense_kernel.T)
        model.head.bias.copy_(dense_bias)
    return model


def make_optimizer(torch, model, opt: dict):
    """(optimizer, per-step hook) matching the spec's Keras optimizer."""
    if opt["type"] == "adam":
        b1, b2, eps = opt["beta_1"], opt["beta_2"], opt["epsilon"]
        optimizer = torch.optim.Adam(model.parameters(), lr=opt["learning_rate"], betas=(b1, b2), eps=eps)
        group = optimizer.param_groups[0]
        state = {"t": 0}

        def before_step():
            state["t"] += 1
            group["eps"] = eps / math.sqrt(1.0 - b2 ** state["t"])

        return optimizer, before_step
    if opt["type"] == "sgd":
        # Keras's momentum v = m*v - lr*g, w += v is PyTorch's b = m*b + g, w -= lr*b with v = -lr*b
        # (a constant learning rate); nesterov is off on both sides.
        return torch.optim.SGD(model.parameters(), lr=opt["learning_rate"], momentum=opt.get("momentum", 0.0)), None
    raise ValueError(f"no PyTorch equivalent set up for optimizer {opt['type']!r}")


def main() -> None:
    config, result_path = _child.read_args()
    t0 = time.perf_counter()
    import numpy as np
    import torch

    threads = config["threads"]
    torch.set_num_threads(threads)
    import_s = time.perf_counter() - t0
    torch.manual_seed(0)

    x_np, y_np, weights = _child.load_data(config)
    if config["model"] in TEXT:
        x_np = x_np.astype(np.int64)  # token ids, which bench/run.py stores as float32 for specc
    if config["model"] == "cnn" or config["model"] in ZOO:
        x_np = np.ascontiguousarray(x_np.transpose(0, 3, 1, 2))  # NHWC -> NCHW, once, outside the timing
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    model = build_model(torch, config["model"], weights)
    if config["model"] in ZOO and config.get("torch_layout", "channels_last") == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if config.get("float64"):  # bench/run.py's reference-noise run: the same job in float64
        model = model.double()
        x = x if config["model"] in TEXT else x.double()
        if y.is_floating_point():
            y = y.double()
    batch = config["batch_size"]
    n = len(x)
    result = {"framework": "torch", "version": torch.__version__, "threads": torch.get_num_threads(),
              "interop_threads": torch.get_num_interop_threads(), "import_s": import_s}

    if config["kind"] == "predict":
        model.eval()

        def predict(xs):
            parts = []
            with torch.inference_mode():
                for s in range(0, len(xs), batch):
                    parts.append(torch.softmax(model(xs[s: s + batch]), dim=-1))
            return torch.cat(parts)

        predict(x[: 2 * batch])  # warm-up
        seconds, passes, out = _child.time_predict(lambda xs: predict(xs).numpy(), x)
        result.update(seconds=seconds, passes_s=passes, samples=n, samples_per_s=n / seconds,
                      pred_head=out[:256].astype(float).tolist(), pred_sum=float(out.astype(np.float64).sum()))
        _child.write_result(result_path, result)
        return

    loss_fn = torch.nn.CrossEntropyLoss() if config["loss"] == "sparse_categorical_crossentropy" \
        else torch.nn.MSELoss()
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    def train(xs, ys, epochs):
        optimizer, before_step = make_optimizer(torch, model, config["optimizer"])
        losses = []
        model.train()
        for _ in range(epochs):
            for s in range(0, len(xs), batch):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(xs[s: s + batch]), ys[s: s + batch])
                loss.backward()
                if before_step:
                    before_step()
                optimizer.step()
                losses.append(loss.item())
        return losses

    warm = config["warmup_steps"] * batch
    train(x[:warm], y[:warm], 1)  # warm-up, then the initial weights back and a fresh optimizer
    model.load_state_dict(initial)
    epochs = config["epochs"]
    t = time.perf_counter()
    losses = train(x, y, epochs)
    seconds = time.perf_counter() - t
    result.update(seconds=seconds, samples=n * epochs, samples_per_s=n * epochs / seconds, steps=len(losses),
                  step_losses=losses)
    _child.write_result(result_path, result)


if __name__ == "__main__":
    main()
