"""specc's fit loop against PyTorch: the same 4-8-3 MLP (relu, softmax + sparse categorical
cross-entropy), the same initial weights, the same batches (no shuffling, a partial last batch), trained
a few steps with SGD (momentum, Nesterov) and Adam/AdamW, ends with the same weights within float32
tolerance.

Keras's Adam puts epsilon outside the bias correction of v:
    w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
torch's is
    w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps_torch)
which is the same update when eps_torch = eps / sqrt(1 - b2^t), so torch's eps is set per step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from specc.engine import Engine  # noqa: E402
from specc.kernels import configure_threads  # noqa: E402
from specc.spec import load_spec_text  # noqa: E402
from specc.train.fit import Trainer  # noqa: E402

SPEC = """\
specc: 1
seed: 3
model:
  input: [4]
  layers:
    - {{type: Dense, units: 8, activation: relu}}
    - {{type: Dense, units: 3, activation: softmax}}
compile:
  optimizer: {optimizer}
  loss: sparse_categorical_crossentropy
"""

SAMPLES, BATCH, EPOCHS = 30, 8, 3  # 4 steps per epoch, the last one of 6 samples


def data():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((SAMPLES, 4)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((4, 3)), axis=1).astype(np.int64)
    return x, y


def specc_model(optimizer: str):
    spec, errors = load_spec_text(SPEC.format(optimizer=optimizer), "ref.yaml")
    assert not errors, errors
    configure_threads(1)
    engine = Engine(spec.graph)
    engine.initialize(spec.seed)
    return engine, Trainer(engine, spec.compile, spec.seed)


def torch_model(weights):
    k0, b0, k1, b1 = (torch.tensor(w, dtype=torch.float32) for w in weights)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight.copy_(k0.T)  # Dense kernel (in, out) -> Linear weight (out, in)
        model[0].bias.copy_(b0)
        model[2].weight.copy_(k1.T)
        model[2].bias.copy_(b1)
    return model


def torch_weights(model):
    return [model[0].weight.detach().numpy().T, model[0].bias.detach().numpy(),
            model[2].weight.detach().numpy().T, model[2].bias.detach().numpy()]


def torch_train(model, opt, x, y, keras_adam_eps=None):
    """Same batches in the same order; returns the per-epoch mean loss (weighted by batch size)."""
    loss_fn = torch.nn.CrossEntropyLoss()  # softmax + CE on logits, mean over the batch
    xt, yt = torch.tensor(x), torch.tensor(y)
    epoch_losses, t = [], 0
    for _ in range(EPOCHS):
        total = 0.0
        for start in range(0, SAMPLES, BATCH):
            t += 1
            if keras_adam_eps is not None:
                beta_2 = opt.param_groups[0]["betas"][1]
                for group in opt.param_groups:
                    group["eps"] = keras_adam_eps / math.sqrt(1.0 - beta_2 ** t)
            opt.zero_grad()
            loss = loss_fn(model(xt[start: start + BATCH]), yt[start: start + BATCH])
            loss.backward()
            opt.step()
            total += loss.item() * len(xt[start: start + BATCH])
        epoch_losses.append(total / SAMPLES)
    return epoch_losses


CASES = {
    "sgd_momentum": ("{type: sgd, learning_rate: 0.1, momentum: 0.9}",
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), None),
    "sgd_nesterov": ("{type: sgd, learning_rate: 0.05, momentum: 0.9, nesterov: true}",
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True), None),
    "sgd_plain": ("{type: sgd, learning_rate: 0.2}", lambda p: torch.optim.SGD(p, lr=0.2), None),
    "adam": ("{type: adam, learning_rate: 0.01}",
             lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.999), eps=1e-7, foreach=False), 1e-7),
    "adam_betas": ("{type: adam, learning_rate: 0.02, beta_1: 0.8, beta_2: 0.99}",
                   lambda p: torch.optim.Adam(p, lr=0.02, betas=(0.8, 0.99), eps=1e-7, foreach=False), 1e-7),
    "adamw": ("{type: adamw, learning_rate: 0.01, weight_decay: 0.05}",
              lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05, eps=1e-7, foreach=False), 1e-7),
}


@pytest.mark.parametrize("case", list(CASES))
def test_training_matches_torch(case):
    optimizer, make_torch_opt, adam_eps = CASES[case]
    x, y = data()
    engine, trainer = specc_model(optimizer)
    initial = engine.get_weights()
    history = trainer.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)

    torch.manual_seed(0)
    model = torch_model(initial)
    torch_losses = torch_train(model, make_torch_opt(model.parameters()), x, y, adam_eps)

    ours = engine.get_weights()
    assert not np.allclose(ours[0], initial[0], atol=1e-4)  # training did move the weights
    for a, b, name in zip(ours, torch_weights(model), ("kernel", "bias", "kernel_1", "bias_1"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6, err_msg=f"{case}: {name}")
    np.testing.assert_allclose(history.history["loss"], torch_losses, rtol=1e-5)


def test_adam_epsilon_placement_matters_for_tiny_gradients():
    """Sanity check of the per-step epsilon conversion: with torch's own eps=1e-7 and gradients near the
    epsilon scale, torch's Adam drifts from Keras's, while the converted one does not."""
    rng = np.random.default_rng(0)
    g = (rng.standard_normal(50) * 1e-6).astype(np.float64)
    w0 = rng.standard_normal(50)

    def keras_adam(steps, lr=0.01, b1=0.9, b2=0.999, eps=1e-7):
        w, m, v = w0.copy(), np.zeros(50), np.zeros(50)
        for t in range(1, steps + 1):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            w = w - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
        return w

    def torch_adam(steps, convert):
        p = torch.nn.Parameter(torch.tensor(w0))
        opt = torch.optim.Adam([p], lr=0.01, eps=1e-7, foreach=False)
        for t in range(1, steps + 1):
            if convert:
                opt.param_groups[0]["eps"] = 1e-7 / math.sqrt(1 - 0.999 ** t)
            p.grad = torch.tensor(g)
            opt.step()
        return p.detach().numpy()

    want = keras_adam(5)
    np.testing.assert_allclose(torch_adam(5, convert=True), want, rtol=1e-10, atol=1e-12)
    assert not np.allclose(torch_adam(5, convert=False), want, rtol=1e-10, atol=1e-9)
