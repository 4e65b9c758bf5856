# %% [markdown]
# # 4. Training a binary LeNet on MNIST
#
# BMXNet's first example: LeNet with binary weights and activations in its middle layers, trained on
# handwritten digits. Here it is in minibnn, next to the same LeNet in float32, with the pictures that show
# what happens inside a binary network while it learns.
#
# **You will learn**
# 1. how the binary LeNet is built (float first and last layer, binary convolution and dense layer in between);
# 2. how to train it with `train.fit` and read its loss and accuracy curves;
# 3. how many binary weights still **flip** sign in each epoch, and how the latent weights move;
# 4. which digits it confuses (a confusion matrix), and what binarization costs in accuracy against the float
#    LeNet.

# %%
import os
import time
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")   # tqdm without ipywidgets
QUICK = os.environ.get("MINIBNN_QUICK", "0") not in ("", "0")   # the tests set MINIBNN_QUICK=1

import matplotlib.pyplot as plt
import numpy as np

import minibnn
from minibnn import data, models, nn, optim, train

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3), "axes.grid": True, "grid.alpha": 0.3})
N_TRAIN = 1200 if QUICK else 10000      # training images (MNIST has 60,000)
N_TEST = 1000 if QUICK else 10000       # test images (all 10,000 in full mode)
EPOCHS = 3 if QUICK else 4
BATCH, LR = 128, 3e-3
print(f"{'quick' if QUICK else 'full'} mode: {N_TRAIN} training images, {EPOCHS} epochs, {N_TEST} test images, "
      f"backend {minibnn.backend.current()!r}")

# %% [markdown]
# ## 1. The data
#
# minibnn ships the real MNIST (`minibnn.data.load_mnist`): 60,000 training and 10,000 test images of
# $28 \times 28$ pixels in $[0, 1]$, checked against their official MD5 sums. `normalize=True` standardises
# them with the training set's mean and standard deviation (`data.MNIST_MEAN`, `data.MNIST_STD`).

# %%
x_train, y_train = data.load_mnist("train", normalize=True)  # standardised: MNIST_MEAN, MNIST_STD
x_test, y_test = data.load_mnist("test", normalize=True)
x_train, y_train = x_train[:N_TRAIN], y_train[:N_TRAIN]
x_test, y_test = x_test[:N_TEST], y_test[:N_TEST]

fig, axes = plt.subplots(1, 10, figsize=(10, 1.4))
for digit, ax in enumerate(axes):
    ax.imshow(x_train[np.argmax(y_train == digit), 0], cmap="gray_r")
    ax.set_title(str(digit))
    ax.axis("off")
plt.show()
print("train", x_train.shape, "test", x_test.shape)
assert x_train.shape[1:] == (1, 28, 28) and abs(float(x_train.mean())) < 0.1
assert set(np.unique(y_test)) == set(range(10))

# %% [markdown]
# ## 2. The binary LeNet
#
# `models.lenet(act_bit=1, weight_bit=1)` is BMXNet's LeNet: a float $5 \times 5$ convolution reads the pixels
# (binarizing the input image would throw away too much), then a **binary** $5 \times 5$ convolution and a
# **binary** dense layer, each with batch norm, and a float classifier. By convention the first and last layer
# stay float in every binary network. The summary lists the bits of every layer and how many of the
# multiply-accumulates (MACs) are binary. A "-" in its packed column means that the converter folds that
# batch norm into the binary layer before it (notebook 6).

# %%
minibnn.manual_seed(0)
binary_model = models.lenet(act_bit=1, weight_bit=1)
info = minibnn.summary(binary_model, (1, 28, 28))
qlayers = [m for m in binary_model.modules() if isinstance(m, (nn.QConv2d, nn.QDense))]
assert len(qlayers) == 2 and all(m.is_binary for m in qlayers)
assert isinstance(binary_model[0], nn.Conv2d) and isinstance(binary_model[-1], nn.Dense)   # float ends
assert info.binary_mac_share > 0.8

# %% [markdown]
# ## 3. Training, one epoch at a time
#
# `train.fit(model, loader, optimizer, epochs)` runs the usual loop (forward, cross-entropy, backward, step)
# and returns a `History` of per-epoch records. We call it for one epoch at a time, so that between epochs we
# can count how many binary weights changed sign. The optimizer is Adam with a cosine learning-rate schedule;
# after every step it clips the latent weights of the binary layers to $[-1, 1]$.
#
# The float LeNet (`act_bit=32, weight_bit=32`) is trained the same way for comparison.

# %%
test_loader = data.DataLoader(x_test, y_test, batch_size=500)


def signs(model):
    """The binary weights: sign of every latent weight of the binary layers, as one vector."""
    return np.concatenate([np.where(p.numpy() >= 0, 1, -1).ravel() for p in optim.binary_parameters(model)])


def run(model, name):
    opt = optim.Adam(model.parameters(), lr=LR)
    steps_per_epoch = -(-N_TRAIN // BATCH)
    schedule = optim.make_schedule("cosine", opt, total_steps=EPOCHS * steps_per_epoch)
    records, flips = [], []
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        before = signs(model) if optim.binary_parameters(model) else None
        loader = data.DataLoader(x_train, y_train, BATCH, shuffle=True, seed=epoch)   # a new order each epoch
        record = train.fit(model, loader, opt, epochs=1, val_loader=test_loader, schedule=schedule,
                           progress=False, verbose=False).epochs[0]
        if before is not None:
            flips.append(float(np.mean(signs(model) != before)))
        records.append(record)
        print(f"{name} epoch {epoch + 1}: loss {record['loss']:.3f}, train acc {record['accuracy']:.3f}, "
              f"test acc {record['val_accuracy']:.3f}" + (f", flipped {flips[-1]:.2%}" if flips else ""))
    return records, flips, time.perf_counter() - start


latent_before = [p.numpy().copy() for p in optim.binary_parameters(binary_model)]
binary_records, binary_flips, binary_seconds = run(binary_model, "binary")
latent_after = [p.numpy().copy() for p in optim.binary_parameters(binary_model)]

minibnn.manual_seed(0)
float_model = models.lenet(act_bit=32, weight_bit=32)
float_records, _, float_seconds = run(float_model, "float ")
assert len(binary_records) == len(float_records) == EPOCHS
assert binary_records[-1]["loss"] < binary_records[0]["loss"]
assert all(np.abs(w).max() <= 1 for w in latent_after)           # the clip held

# %% [markdown]
# ## 4. Curves: loss, accuracy, and weight flips
#
# The flip ratio is the fraction of binary weights whose sign changed during the epoch. Early on many
# weights flip; as the learning rate decays and the latent weights move away from 0, the binary network
# settles.

# %%
epochs = np.arange(1, EPOCHS + 1)
fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(11, 3.2))
for records, name, color in ((binary_records, "binary", "C0"), (float_records, "float", "C1")):
    ax1.plot(epochs, [r["loss"] for r in records], "-o", color=color, label=f"{name}, train")
    ax1.plot(epochs, [r["val_loss"] for r in records], "--", color=color, label=f"{name}, test")
    ax2.plot(epochs, [r["accuracy"] for r in records], "-o", color=color, label=f"{name}, train")
    ax2.plot(epochs, [r["val_accuracy"] for r in records], "--", color=color, label=f"{name}, test")
ax1.set_title("cross-entropy")
ax2.set_title("accuracy")
ax3.bar(epochs, np.array(binary_flips) * 100, color="C0")
ax3.set_title("binary weights flipped in the epoch (%)")
for ax in (ax1, ax2, ax3):
    ax.set_xlabel("epoch")
    ax.set_xticks(epochs)
ax1.legend(fontsize=8)
plt.tight_layout()
plt.show()
assert binary_flips[-1] < binary_flips[0]                        # the binary weights settle
assert 0 < binary_flips[0] < 0.5

# %% [markdown]
# ## 5. Latent weights before and after
#
# At initialisation the latent weights are small and uniform (PyTorch's default,
# $\pm 1/\sqrt{\text{fan-in}}$). Training spreads them out: weights far from 0 have a confident sign, weights
# near 0 are the ones that can still flip.

# %%
names = ["binary conv (64x64x5x5)", "binary dense (1024 -> 512)"]
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
for ax, before, after, name in zip(axes, latent_before, latent_after, names):
    bins = np.linspace(-1, 1, 161) * max(np.abs(after).max(), np.abs(before).max()) * 1.05
    ax.hist(before.ravel(), bins=bins, alpha=0.6, label="before training")
    ax.hist(after.ravel(), bins=bins, alpha=0.6, label="after training")
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("latent weight")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()
for name, before, after in zip(names, latent_before, latent_after):
    print(f"{name}: mean |w| {np.abs(before).mean():.4f} -> {np.abs(after).mean():.4f}")
    assert np.abs(after).mean() > np.abs(before).mean()

# %% [markdown]
# ## 6. What does it confuse?
#
# `train.predict` returns class predictions (in evaluation mode: batch norm uses its running statistics). Rows
# are the true digit, columns the prediction; everything off the diagonal is an error.

# %%
predicted = train.predict(binary_model, x_test)
confusion = np.zeros((10, 10), int)
np.add.at(confusion, (y_test, predicted), 1)

fig, ax = plt.subplots(figsize=(5, 4.4))
ax.imshow(np.log1p(confusion), cmap="Blues")
for (i, j), count in np.ndenumerate(confusion):
    if count:
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                color="w" if count > confusion.max() / 4 else "k")
ax.set_xticks(range(10))
ax.set_yticks(range(10))
ax.set_xlabel("predicted digit")
ax.set_ylabel("true digit")
ax.set_title("binary LeNet: confusion matrix (test set)", fontsize=10)
ax.grid(False)
plt.show()

off = confusion.copy()
np.fill_diagonal(off, 0)
worst = np.unravel_index(np.argmax(off), off.shape)
print(f"most frequent error: {worst[0]} read as {worst[1]} ({off[worst]} times)")
assert confusion.sum() == N_TEST
assert np.isclose(np.trace(confusion) / N_TEST, binary_records[-1]["val_accuracy"])

# %% [markdown]
# ## 7. Binary against float
#
# The price of binarization in accuracy, against its gain in size (the float LeNet's weights in float32 against
# the binary LeNet packed with 1 bit per binary weight; notebook 6 does the conversion).

# %%
from minibnn import deploy

packed_bytes = deploy.convert(binary_model).nbytes
float_bytes = 4 * sum(p.data.size for p in float_model.parameters())
rows = [("binary LeNet", binary_records[-1]["val_accuracy"], binary_seconds, packed_bytes),
        ("float LeNet", float_records[-1]["val_accuracy"], float_seconds, float_bytes)]
print(f"{'model':<14}{'test accuracy':>15}{'training time':>15}{'weights':>12}")
for name, acc, seconds, size in rows:
    print(f"{name:<14}{acc:>15.2%}{seconds:>14.0f}s{size / 1e3:>10.0f} KB")
print(f"\nthe binary LeNet's weights are {float_bytes / packed_bytes:.0f}x smaller; test accuracy float minus "
      f"binary: {100 * (rows[1][1] - rows[0][1]):+.2f} points")
assert binary_records[-1]["val_accuracy"] > (0.8 if QUICK else 0.95)
assert float_records[-1]["val_accuracy"] > (0.8 if QUICK else 0.95)
assert float_bytes / packed_bytes > 10

# %% [markdown]
# A difference of a few tenths of a point either way is run-to-run noise at this size. With more data and
# epochs (`minibnn train --model lenet --epochs 10`, or `minibnn demo` for three minutes) the binary LeNet
# reaches about 99% on MNIST, within a fraction of a point of the float one.
#
# ## What to try next
#
# * Train with `optim.make_optimizer("bop", binary_model, lr=LR)`: Bop flips binary weights directly (no
#   latent weights) and `fit`'s history records its `flip_ratio`.
# * Turn on XNOR-Net scaling (`nn.QConv2d(..., scaling="channel")`) in a copy of `models.lenet` and compare.
# * Look at the images behind the most frequent error: `x_test[(y_test == a) & (predicted == b)]`.
# * Plot the flip ratio per *batch* instead of per epoch using `train.train_step`.
# * Next: **5. How many bits?** trains the same network with 1, 2, 4, 8 and 32 bits.
