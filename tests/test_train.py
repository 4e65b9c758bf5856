"""Training loop: learning on real MNIST, reproducibility, checkpoints, resume, divergence."""
from __future__ import annotations

import numpy as np
import pytest

import minibnn
from minibnn import data, models, optim, train


@pytest.fixture(scope="module")
def mnist_subset():
    x, y = data.load_mnist("train")
    xt, yt = data.load_mnist("test")
    norm = lambda a: data.normalize(a, data.MNIST_MEAN, data.MNIST_STD)  # noqa: E731
    return norm(x[:5000]), y[:5000], norm(xt[:2000]), yt[:2000]


def _mlp_run(x, y, epochs: int, seed: int = 0, checkpoint_dir=None, resume=False, stop_after=None):
    """Train a binary MLP with a cosine schedule over ``epochs``; stop after ``stop_after`` of them."""
    minibnn.manual_seed(seed)
    model = models.binary_mlp(hidden=(256, 256, 256))  # two binary QDense layers
    assert len(optim.binary_parameters(model)) == 2
    opt = optim.Adam(model.parameters(), lr=3e-3)
    loader = data.DataLoader(x, y, 100, shuffle=True, seed=seed)
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


def test_latent_binary_weights_stay_clipped(mnist_subset):
    x, y = mnist_subset[0][:500], mnist_subset[1][:500]
    minibnn.manual_seed(0)
    model = models.binary_mlp(hidden=(64, 64))
    opt = optim.SGD(model.parameters(), lr=5.0)  # steps far beyond [-1, 1]
    train.fit(model, data.DataLoader(x, y, 100), opt, 1, progress=False, verbose=False)
    binary = optim.binary_parameters(model)
    assert binary and all(np.abs(p.numpy()).max() <= 1.0 for p in binary)
    assert any(np.abs(p.numpy()).max() > 1.0 for p in optim.float_parameters(model))


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
