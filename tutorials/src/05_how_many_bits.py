# %% [markdown]
# # 5. How many bits?
#
# One bit is the extreme. DoReFa-Net showed that 2 or 4 bits recover most of the float accuracy while staying
# small, and minibnn runs any `act_bit` / `weight_bit` from 1 to 32. This notebook trains **the same LeNet**
# at 1, 2, 4, 8 and 32 bits (activations and weights alike) and puts accuracy, model size and inference speed
# side by side.
#
# **You will learn**
# 1. how `act_bit` / `weight_bit` turn one architecture into a whole family of quantized networks;
# 2. how the converter stores each: 1-bit layers as packed words, 2..8-bit layers as bit planes run
#    *bit-serially* on the same popcount kernels, 32 bits as float;
# 3. that every packed model computes exactly what the trained model computes, at every bit width;
# 4. the trade-off in one table and one plot: accuracy, bytes and images per second.

# %%
import os
import time
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")   # tqdm without ipywidgets
QUICK = os.environ.get("MINIBNN_QUICK", "0") not in ("", "0")   # the tests set MINIBNN_QUICK=1

import matplotlib.pyplot as plt
import numpy as np

import minibnn
from minibnn import Tensor, data, deploy, models, optim, train

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3), "axes.grid": True, "grid.alpha": 0.3})
BITS = [1, 2, 4, 8, 32]
N_TRAIN = 1000 if QUICK else 8000
N_TEST = 500 if QUICK else 10000
EPOCHS = 1 if QUICK else 2
print(f"{'quick' if QUICK else 'full'} mode: {N_TRAIN} training images, {EPOCHS} epoch(s), {N_TEST} test images, "
      f"backend {minibnn.backend.current()!r}")

x_train, y_train = data.load_mnist("train", normalize=True)  # standardised: MNIST_MEAN, MNIST_STD
x_test, y_test = data.load_mnist("test", normalize=True)
x_train, y_train = x_train[:N_TRAIN], y_train[:N_TRAIN]
x_test, y_test = x_test[:N_TEST], y_test[:N_TEST]
assert len(x_train) == N_TRAIN and len(x_test) == N_TEST

# %% [markdown]
# ## 1. One architecture, five bit widths
#
# `models.lenet(act_bit=k, weight_bit=k)` quantizes the inputs and weights of the middle convolution and dense
# layer to `k` bits (the first and last layer stay float). What the forward pass uses differs per width:

# %%
w = np.random.default_rng(0).normal(scale=0.05, size=(1000,)).astype(np.float32)
for k in BITS:
    qw = minibnn.quantize.quantize_weight(Tensor(w), k).numpy()
    print(f"{k:>2} bits: {len(np.unique(qw)):>4} distinct weight values, e.g. {np.round(qw[:4], 3)}")
    assert len(np.unique(qw)) <= 2**k

# %% [markdown]
# ## 2. Train each one
#
# The same data, seed, optimizer and schedule for every width. After training, each model is converted for
# deployment and its packed logits are compared with the trained model's, bit for bit.

# %%
def train_one(bits):
    minibnn.manual_seed(0)
    model = models.lenet(act_bit=bits, weight_bit=bits)
    opt = optim.Adam(model.parameters(), lr=3e-3)
    loader = data.DataLoader(x_train, y_train, 128, shuffle=True, seed=0)
    schedule = optim.make_schedule("cosine", opt, total_steps=EPOCHS * len(loader))
    history = train.fit(model, loader, opt, EPOCHS, schedule=schedule, progress=False, verbose=False)
    return model, history


x_speed = x_test[:2000]                             # the speed is measured on (up to) 2,000 test images


def images_per_second(packed, repeats=2):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        packed.predict(x_speed, batch_size=500)
        best = min(best, time.perf_counter() - start)
    return len(x_speed) / best


def logits_of(model, x, batch=500):
    """The model's evaluation-mode logits (the float simulation), a batch at a time."""
    model.eval()
    with minibnn.no_grad():
        return np.concatenate([model(Tensor(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


results = {}
for bits in BITS:
    model, history = train_one(bits)
    expected = logits_of(model, x_test)
    accuracy = float(np.mean(expected.argmax(axis=1) == y_test))
    with warnings.catch_warnings():                   # 32 bits: "no binary layer, a float copy" is expected
        warnings.simplefilter("ignore", UserWarning)
        packed = deploy.convert(model, (1, 28, 28), name=f"lenet_{bits}bit")
        info = minibnn.summary(model, (1, 28, 28), print_fn=None)
    exact = np.array_equal(minibnn.backend.to_numpy(packed.predict(x_test, batch_size=500)), expected)
    results[bits] = {
        "accuracy": accuracy,
        "bytes": packed.nbytes,
        "float32 bytes": info.total("float32_bytes"),
        "stored as": next((r.packed_as.split(",")[0].split(":")[0] for r in info.rows if r.packed_as), "float32"),
        "packed img/s": images_per_second(packed),
        "train img/s": history["images_per_s"][-1],
        "exact": exact,
    }
    print(f"{bits:>2} bits: test accuracy {accuracy:.3f}, packed {packed.nbytes / 1e3:7.1f} KB, "
          f"packed == trained model: {exact}")
    assert exact

# %% [markdown]
# ## 3. The table and the plot

# %%
header = f"{'bits':>4} {'test acc':>9} {'weights':>10} {'smaller':>8} {'packed img/s':>13} {'train img/s':>12}  stored as"
print(header)
print("-" * len(header))
for bits, r in results.items():
    print(f"{bits:>4} {r['accuracy']:>9.2%} {r['bytes'] / 1e3:>7.1f} KB {r['float32 bytes'] / r['bytes']:>7.1f}x "
          f"{r['packed img/s']:>13,.0f} {r['train img/s']:>12,.0f}  {r['stored as']}")

labels = [str(b) for b in BITS]
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
accuracies = [results[b]["accuracy"] * 100 for b in BITS]
axes[0].plot(labels, accuracies, "-o")
for label, acc in zip(labels, accuracies):
    axes[0].annotate(f"{acc:.1f}", (label, acc), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
axes[0].set_ylim(max(0, min(accuracies) - 3), 100)
axes[0].set_title("test accuracy (%)")
bars = axes[1].bar(labels, [results[b]["bytes"] / 1e3 for b in BITS], color="C2")
axes[1].bar_label(bars, fmt="%.0f", fontsize=8)
axes[1].set_ylim(0, 1.15 * max(r["bytes"] / 1e3 for r in results.values()))
axes[1].set_title("packed model size (KB)")
bars = axes[2].bar(labels, [results[b]["packed img/s"] for b in BITS], color="C1")
axes[2].bar_label(bars, fmt="%.0f", fontsize=8)
axes[2].set_ylim(0, 1.15 * max(r["packed img/s"] for r in results.values()))
axes[2].set_title("packed inference (images/s)")
for ax in axes:
    ax.set_xlabel("bits (activations = weights)")
plt.tight_layout()
plt.show()

sizes = [results[b]["bytes"] for b in BITS]
assert sizes == sorted(sizes)                                    # more bits, more bytes
assert results[32]["bytes"] / results[1]["bytes"] > 15
assert all(r["accuracy"] > (0.5 if QUICK else 0.9) for r in results.values())

# %% [markdown]
# What the numbers say (they vary a little from run to run and from machine to machine):
#
# * **Size** falls steadily with the bits: the binary LeNet is about 20x smaller than the float one; the
#   remainder is the float first and last layer and the batch norms.
# * **Accuracy**: on MNIST with two epochs, every width is within about a point of float; quantized models can
#   even edge past a float LeNet that two epochs leave a little undertrained. Harder data sets (CIFAR-10,
#   ImageNet) open a wider gap between 1 and 2 bits.
# * **Speed**: 1 bit runs one popcount GEMM per layer. An $a$-bit by $b$-bit layer runs $a$ bit-serial calls over
#   $b$ weight planes, so the work grows with $a \times b$: from about 4 bits up the packed model is slower than
#   the float one, whose matrix product is a single optimized BLAS call. Only the lowest widths (1 and 2 bits
#   here) beat it: that is where bit arithmetic pays.

# %% [markdown]
# ## What to try next
#
# * Mix the widths: `models.lenet(act_bit=2, weight_bit=1)` (BMXNet's favourite trade-off) and
#   `act_bit=4, weight_bit=2`.
# * Train longer (`EPOCHS = 5`) and see whether the 1-bit model catches up with the 2- to 8-bit ones.
# * Print `minibnn.summary(model, (1, 28, 28))` for a 4-bit model: the "packed as" column shows the bit planes.
# * Read `minibnn/backend/bitserial.py`: how a k-bit dot product becomes $a \times b$ binary ones.
# * Next: **6. From training to deployment**.
