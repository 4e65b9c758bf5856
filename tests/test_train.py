"""Training loop: learning on real MNIST, reproducibility, checkpoints, resume, divergence."""
from __future__ import annotations

import math

import numpy as np
import pytest

import minibnn
from minibnn import data, models, nn, optim, train


@pytest.fixture(scope="module")
def mnist_subset():
    x, y = data.load_mnist("train")
    xt, yt = data.load_mnist("test")
    norm = lambda a: data.normalize(a, data.MNIST_MEAN, data.MNIST_STD)  # noqa: E731
    return norm(x[:5000]), y[:5000], norm(xt[:2000]), yt[:2000]


def _mlp_run(x, y, epochs: int, seed: int = 0, checkpoint_dir=None, resume=False, stop_after=None,
             make_model=None, transform=None):
    """Train a binary MLP with a cosine schedule over ``epochs``; stop after ``stop_after`` of them."""
    minibnn.manual_seed(seed)
    model = make_model() if make_model else models.binary_mlp(hidden=(256, 256, 256))  # two binary QDense
    assert len(optim.binary_parameters(model)) == 2
    opt = optim.Adam(model.parameters(), lr=3e-3)
    loader = data.DataLoader(x, y, 100, shuffle=True, seed=seed, transform=transform)
    sched = optim.make_schedule("cosine", opt, total_steps=epochs * len(loader))
    hist = train.fit(model, loader, opt, stop_after or epochs, schedule=sched, checkpoint_dir=checkpoint_dir,
                     resume=resume, progress=False, verbose=False)
    return model, hist


def test_binary_mlp_learns_mnist_subset(mnist_subset):
    x, y, xt, yt = mnist_subset
    model, hist = _mlp_run(x, y, epochs=4)
    acc = train.evaluate(model, data.DataLoader(xt, yt, 500))["accuracy"]
    assert acc >= 0.90, f"binary MLP reached only {acc:.3f} on 2000 test images"
    assert hist["loss"][-1] < hist["loss"][0]


def test_seeded_training_is_reproducible(mnist_subset):
    x, y = mnist_subset[0][:1000], mnist_subset[1][:1000]
    a, ha = _mlp_run(x, y, epochs=1, seed=3)
    b, hb = _mlp_run(x, y, epochs=1, seed=3)
    assert ha["loss"] == hb["loss"]
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(pa, pb, err_msg=name)
    c, hc = _mlp_run(x, y, epochs=1, seed=4)
    assert hc["loss"] != ha["loss"]


def test_resume_continues_exactly(mnist_subset, tmp_path):
    x, y = mnist_subset[0][:600], mnist_subset[1][:600]
    full, hist_full = _mlp_run(x, y, epochs=3, seed=1)
    _mlp_run(x, y, epochs=3, seed=1, checkpoint_dir=tmp_path, stop_after=2)  # "interrupted"
    resumed, hist = _mlp_run(x, y, epochs=3, seed=1, checkpoint_dir=tmp_path, resume=True)
    assert len(hist) == 3
    assert hist["loss"] == hist_full["loss"]
    for (name, pa), (_, pb) in zip(full.state_dict().items(), resumed.state_dict().items()):
        np.testing.assert_array_equal(pa, pb, err_msg=name)


def _dropout_mlp():
    """A binary MLP that draws from minibnn's global generator at every training step (Dropout)."""
    return nn.Sequential(nn.Flatten(), nn.Dense(784, 64), nn.BatchNorm1d(64), nn.Dropout(0.3),
                         nn.QDense(64, 64), nn.BatchNorm1d(64), nn.QDense(64, 64), nn.BatchNorm1d(64),
                         nn.Tanh(), nn.Dropout(0.2), nn.Dense(64, 10))


@pytest.mark.parametrize("augment", [False, True], ids=["dropout", "dropout+augment"])
def test_resume_restores_the_random_state(mnist_subset, tmp_path, augment):
    """Dropout masks come from the global generator and augmentation from the loader's (seed, epoch):
    a resumed run draws exactly what the uninterrupted one drew (the --augment transform of the CLI)."""
    x, y = mnist_subset[0][:400], mnist_subset[1][:400]
    kw = dict(make_model=_dropout_mlp, transform=data.RandomCrop(28, padding=2) if augment else None)
    full, hist_full = _mlp_run(x, y, epochs=3, seed=2, **kw)
    after_training = minibnn.random.get_state()
    minibnn.manual_seed(2)
    _dropout_mlp()
    assert minibnn.random.get_state() != after_training  # training drew from the global generator
    _mlp_run(x, y, epochs=3, seed=2, checkpoint_dir=tmp_path, stop_after=2, **kw)  # "interrupted"
    resumed, hist = _mlp_run(x, y, epochs=3, seed=2, checkpoint_dir=tmp_path, resume=True, **kw)
    assert len(hist) == 3 and hist["loss"] == hist_full["loss"]
    for (name, pa), (_, pb) in zip(full.state_dict().items(), resumed.state_dict().items()):
        np.testing.assert_array_equal(pa, pb, err_msg=name)
    assert minibnn.random.get_state() == after_training


class _PoisonedLoader:
    """Yields real batches, with a NaN image in the given (epoch, step)."""

    def __init__(self, x, y, bad_epoch: int, bad_step: int):
        self.inner = data.DataLoader(x, y, 100, shuffle=False)
        self.bad, self.epoch = (bad_epoch, bad_step), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        for step, (xb, yb) in enumerate(self.inner):
            if (self.epoch, step) == self.bad:
                xb = xb.copy()
                xb[0, 0, 0, 0] = np.nan
            yield xb, yb


def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoint(mnist_subset, tmp_path):
    x, y = mnist_subset[0][:500], mnist_subset[1][:500]
    minibnn.manual_seed(0)
    # a float model: a binary one turns NaN inputs into -1 at its first sign()
    model = models.binary_mlp(hidden=(64, 64), act_bit=32, weight_bit=32)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loader = _PoisonedLoader(x, y, bad_epoch=1, bad_step=2)
    with pytest.raises(train.TrainingDiverged, match=r"epoch 2, step 3"):
        train.fit(model, loader, opt, 3, checkpoint_dir=tmp_path, progress=False, verbose=False)
    assert len(list(tmp_path.glob("checkpoint.*.npz"))) == 1
    # the checkpoint of epoch 1 is intact and loads
    fresh = models.binary_mlp(hidden=(64, 64), act_bit=32, weight_bit=32)
    epoch, hist = train.load_checkpoint(tmp_path, fresh, optim.Adam(fresh.parameters(), lr=1e-3))
    assert epoch == 1 and len(hist) == 1 and np.isfinite(hist["loss"][0])
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


class _RecordingSGD(optim.SGD):
    """SGD (no momentum, no decay) that records, per step, each parameter before and after and its gradient."""

    def __init__(self, params, lr):
        super().__init__(params, lr)
        self.steps = []

    def step(self):
        before = [(p.data.copy(), None if p.grad is None else p.grad.copy()) for p in self.params]
        lr = self.lr
        super().step()
        self.steps.append((lr, [(w, g, p.data.copy()) for (w, g), p in zip(before, self.params)]))


def test_latent_binary_weights_stay_clipped(mnist_subset):
    """SGD steps that push latent weights far past +-1: after each step they equal clip(w - lr g, -1, 1)."""
    x, y = mnist_subset[0][:500], mnist_subset[1][:500]
    minibnn.manual_seed(0)
    model = models.binary_mlp(hidden=(64, 64))
    binary = optim.binary_parameters(model)
    # binary gradients are ~1e-3: lr 2000 moves latent weights by ~2 per step; the float ones train gently
    opt = optim.CombinedOptimizer(_RecordingSGD(binary, lr=2000.0), optim.Adam(optim.float_parameters(model)))
    train.fit(model, data.DataLoader(x, y, 100), opt, 1, progress=False, verbose=False)
    pushed = 0
    for lr, params in opt.optimizers[0].steps:
        for w, g, after in params:
            unclipped = w - lr * g
            pushed += int((np.abs(unclipped) > 1).sum())
            np.testing.assert_array_equal(after, np.clip(unclipped, -1, 1))
    assert pushed > 0.1 * sum(p.data.size for p in binary) * len(opt.optimizers[0].steps)
    assert all(np.abs(p.numpy()).max() == 1.0 for p in binary)
    assert any(np.abs(p.numpy()).max() > 1.0 for p in optim.float_parameters(model))  # only binary ones clip


def _lr_reference(name: str, t: int, total: int, base: float) -> float:
    """The learning rate of the ``t``-th step (from 0) of a schedule over ``total`` steps, from its formula."""
    if name == "step":  # StepLR: step_size total // 3, gamma 0.1
        return base * 0.1 ** (t // (total // 3))
    warmup = max(1, total // 20)  # warmup-cosine
    if t < warmup:
        return base * t / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


@pytest.mark.parametrize("schedule", ["warmup-cosine", "step"])
def test_fit_steps_the_schedule_after_every_batch(mnist_subset, schedule):
    """The learning rate actually applied at each step (measured from the update of a float weight,
    w_before - w_after = lr * g) follows the schedule's formula, batch by batch, across epochs."""
    x, y = mnist_subset[0][:600], mnist_subset[1][:600]
    minibnn.manual_seed(0)
    model = models.binary_mlp(hidden=(32, 32), act_bit=32, weight_bit=32)
    opt = _RecordingSGD([p for p in model.parameters() if p.clip is None], lr=0.05)
    loader = data.DataLoader(x, y, 100, shuffle=True, seed=0)
    epochs = 3
    total = epochs * len(loader)
    sched = optim.make_schedule(schedule, opt, total_steps=total)
    hist = train.fit(model, loader, opt, epochs, schedule=sched, progress=False, verbose=False)
    assert len(opt.steps) == total
    expected = [_lr_reference(schedule, t, total, 0.05) for t in range(total)]
    assert len(set(expected)) > 2  # the schedule really changes the rate
    applied = []
    for lr, params in opt.steps:
        w, g, after = params[0]  # the first dense weight: no clipping, no momentum
        g = g.astype(np.float64)
        applied.append(float(((w - after).astype(np.float64) * g).sum() / (g * g).sum()))
        assert lr == pytest.approx(applied[-1], rel=1e-3, abs=1e-9)
    np.testing.assert_allclose(applied, expected, rtol=1e-3, atol=1e-9)
    # each epoch's record holds the rate after its last step
    steps = len(loader)
    assert hist["lr"] == pytest.approx([_lr_reference(schedule, (e + 1) * steps, total, 0.05)
                                        for e in range(epochs)], abs=1e-12)


def test_resume_refuses_other_architecture(mnist_subset, tmp_path):
    x, y = mnist_subset[0][:200], mnist_subset[1][:200]
    _mlp_run(x, y, epochs=1, checkpoint_dir=tmp_path)
    other = models.binary_mlp(hidden=(32, 32))
    with pytest.raises(minibnn.io.ModelFileError, match="another architecture"):
        train.load_checkpoint(tmp_path, other, optim.Adam(other.parameters(), lr=1e-3))


def test_nan_hidden_by_binary_layers_still_stops_training(mnist_subset):
    """sign() maps NaN to -1, so the loss stays finite: the gradient check must catch it."""
    x, y = mnist_subset[0][:300], mnist_subset[1][:300]
    minibnn.manual_seed(0)
    model = models.lenet(1, 1, channels=(8, 8), hidden=32)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    with pytest.raises(train.TrainingDiverged, match=r"gradient of .* epoch 1, step 2"):
        train.fit(model, _PoisonedLoader(x, y, bad_epoch=0, bad_step=1), opt, 1, progress=False, verbose=False)


def test_time_budget_cut_epoch_is_redone_on_resume(mnist_subset, tmp_path):
    x, y = mnist_subset[0][:400], mnist_subset[1][:400]
    minibnn.manual_seed(0)
    model = models.binary_mlp(hidden=(32, 32))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loader = data.DataLoader(x, y, 100, shuffle=True, seed=0)
    hist = train.fit(model, loader, opt, 3, checkpoint_dir=tmp_path, progress=False, verbose=False,
                     max_seconds=0.0)  # stops after the first batch
    assert len(hist) == 1 and hist.epochs[0].get("stopped_early")
    resumed = train.fit(model, loader, opt, 3, checkpoint_dir=tmp_path, resume=True, progress=False,
                        verbose=False)
    assert [r["epoch"] for r in resumed.epochs] == [1, 2, 3]
    assert not any(r.get("stopped_early") for r in resumed.epochs)


# ---- evaluate() and predict(): eval mode, then the caller's mode back; nothing in the model changes ----

def _bn_dropout_mlp():
    return nn.Sequential(nn.Flatten(), nn.Dense(784, 32), nn.BatchNorm1d(32), nn.Dropout(0.5), nn.Tanh(),
                         nn.Dense(32, 10))


def _eval_reference(model, x, y):
    """Loss, accuracy and classes of the MLP above in eval mode, in plain float64 NumPy: batch norm with
    the running statistics, no dropout."""
    s = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    h = x.reshape(len(x), -1).astype(np.float64) @ s["1.weight"].T + s["1.bias"]
    h = (h - s["2.running_mean"]) / np.sqrt(s["2.running_var"] + model[2].eps) * s["2.weight"] + s["2.bias"]
    logits = np.tanh(h) @ s["5.weight"].T + s["5.bias"]
    m = logits.max(axis=1, keepdims=True)
    log_p = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(y)), y].mean(), (logits.argmax(axis=1) == y).mean(), logits.argmax(axis=1)


@pytest.fixture
def trained_bn_dropout_mlp(mnist_subset):
    x, y = mnist_subset[0][:300], mnist_subset[1][:300]
    minibnn.manual_seed(0)
    model = _bn_dropout_mlp()
    train.fit(model, data.DataLoader(x, y, 100), optim.Adam(model.parameters(), lr=1e-2), 1, progress=False,
              verbose=False)
    assert not np.allclose(model.state_dict()["2.running_mean"], 0)  # trained: running stats moved
    return model, mnist_subset[2][:250], mnist_subset[3][:250]


@pytest.mark.parametrize("training", [True, False], ids=["from_train_mode", "from_eval_mode"])
def test_evaluate_and_predict_use_eval_mode_and_restore_it(trained_bn_dropout_mlp, training):
    model, xt, yt = trained_bn_dropout_mlp
    model.train(training)
    before, rng_before = model.state_dict(), minibnn.random.get_state()
    loss, acc, classes = _eval_reference(model, xt, yt)

    result = train.evaluate(model, data.DataLoader(xt, yt, 100))  # several batches: 100, 100, 50
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["accuracy"] == acc
    np.testing.assert_array_equal(train.predict(model, xt, batch_size=64), classes)

    assert all(m.training == training for m in model.modules())  # the caller's mode, in every layer
    for key, value in model.state_dict().items():  # running statistics and weights untouched
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert minibnn.random.get_state() == rng_before  # no dropout mask drawn


def test_evaluate_and_predict_restore_the_mode_when_a_batch_fails(trained_bn_dropout_mlp):
    model, xt, yt = trained_bn_dropout_mlp
    model.train()
    bad = xt[:10, :, :, :27]  # 27 columns: the first dense layer refuses it
    with pytest.raises(ValueError):
        train.evaluate(model, data.DataLoader(bad, yt[:10], 5))
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError):
        train.predict(model, bad)
    assert all(m.training for m in model.modules())
