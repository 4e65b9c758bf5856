# %% [markdown]
# # 6. From training to deployment
#
# A trained binary network still carries float *latent* weights, float batch norms and an autograd engine.
# None of that is needed to run it. minibnn's converter (`minibnn.deploy.convert`, BMXNet's `model_converter`)
# turns it into a `PackedModel`: binary weights packed 64 to a `uint64` word, batch norms folded into the
# kernels, and where possible a whole "batch norm, then sign" replaced by one integer comparison.
#
# **You will learn**
# 1. how to convert a trained binary LeNet, and what each layer becomes;
# 2. how to read the summary table (bits, parameters, binary and float MACs, memory);
# 3. how large the files are, and that loading them checks every array;
# 4. that the packed model computes **exactly** what the trained model computes, logit for logit;
# 5. how fast it is against the float simulation and a float32 LeNet;
# 6. what an integer threshold is, drawn as a picture.

# %%
import os
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")   # tqdm without ipywidgets
QUICK = os.environ.get("MINIBNN_QUICK", "0") not in ("", "0")   # the tests set MINIBNN_QUICK=1

import matplotlib.pyplot as plt
import numpy as np

import minibnn
from minibnn import Tensor, data, deploy, models, optim, train
from minibnn.functional.norm import eval_affine

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3), "axes.grid": True, "grid.alpha": 0.3})
N_TRAIN = 1200 if QUICK else 20000
EPOCHS = 2 if QUICK else 1   # full mode: 20,000 images once; quick mode: 1,200 images twice
N_TEST = 1000 if QUICK else 10000
print(f"{'quick' if QUICK else 'full'} mode: {N_TRAIN} training images, {N_TEST} test images, "
      f"backend {minibnn.backend.current()!r}")

x_train, y_train = data.load_mnist("train", normalize=True)  # standardised: MNIST_MEAN, MNIST_STD
x_test, y_test = data.load_mnist("test", normalize=True)
x_train, y_train = x_train[:N_TRAIN], y_train[:N_TRAIN]
x_test, y_test = x_test[:N_TEST], y_test[:N_TEST]

# %% [markdown]
# ## 1. A trained binary LeNet
#
# The model of notebook 4, trained briefly (enough for this notebook's purpose).

# %%
minibnn.manual_seed(0)
model = models.lenet(act_bit=1, weight_bit=1)
opt = optim.Adam(model.parameters(), lr=3e-3)
loader = data.DataLoader(x_train, y_train, 128, shuffle=True, seed=0)
train.fit(model, loader, opt, epochs=EPOCHS, schedule=optim.make_schedule("cosine", opt, EPOCHS * len(loader)),
          progress=False)
trained = train.evaluate(model, data.DataLoader(x_test, y_test, 500))
print(f"test accuracy of the trained model: {trained['accuracy']:.4f}")
assert trained["accuracy"] > (0.7 if QUICK else 0.93)

# %% [markdown]
# ## 2. Convert
#
# `deploy.convert(model, input_shape)` walks the model and replaces every leaf:
#
# * a binary `QConv2d` / `QDense` becomes `binary_conv2d` / `binary_dense`: weights packed into words, and the
#   batch norm right after it **folded** into the kernel's per-channel epilogue `dot * scale + shift` (the batch
#   norm itself becomes `folded` and does nothing);
# * float layers stay float (`float`).
#
# With `input_shape` given, the converter also checks the packed model against the trained one on a random
# batch before returning it.

# %%
packed = deploy.convert(model, input_shape=(1, 28, 28), name="lenet")
print(packed)
for path, op in packed.layers():
    print(f"  layer {path:>2}: {op.kind:<14} {op.nbytes:>8,} bytes")
kinds = [op.kind for _, op in packed.layers()]
assert kinds.count("binary_conv2d") == 1 and kinds.count("binary_dense") == 1 and kinds.count("folded") == 2

# %% [markdown]
# ## 3. The summary table, and the files
#
# `minibnn.summary` prints one row per layer: the bits of its input and weights, its parameters, how many of
# its multiply-accumulates are binary, and its memory as float32 against packed. The binary convolution holds
# 102,400 weights: 410 KB in float32, 13 KB packed (the packed size includes the folded epilogue).
#
# `packed.save(path)` writes two files: `binarized_lenet.json` (the architecture, every layer's settings, each
# array's dtype and shape, and a checksum) and `binarized_lenet.npz` (the arrays, binary weights as `uint64`).
# `deploy.load` reads them back with `allow_pickle=False` and checks every array against the JSON. The float
# model saved with `minibnn.save` is the comparison.

# %%
folder = Path(tempfile.mkdtemp(prefix="minibnn_tutorial_"))
minibnn.save(model, folder / "lenet")
packed.save(folder / "binarized_lenet")
loaded = deploy.load(folder / "binarized_lenet")
info = minibnn.summary(loaded, (1, 28, 28))
sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
print()
for name, size in sizes.items():
    print(f"{name:<24} {size / 1e3:>8.1f} KB")
assert sizes["binarized_lenet.npz"] * 10 < sizes["lenet.npz"]
assert info.compression > 15

# %%
fig, ax = plt.subplots(figsize=(7, 2.2))
groups = {"trained model\n(minibnn.save)": ("lenet.json", "lenet.npz"),
          "packed model\n(packed.save)": ("binarized_lenet.json", "binarized_lenet.npz")}
for i, (label, (js, npz)) in enumerate(groups.items()):
    ax.barh(i, sizes[npz] / 1e3, color="C0", label=".npz (arrays)" if i == 0 else None)
    ax.barh(i, sizes[js] / 1e3, left=sizes[npz] / 1e3, color="C1", label=".json (architecture)" if i == 0 else None)
    ax.text((sizes[npz] + sizes[js]) / 1e3, i, f" {(sizes[npz] + sizes[js]) / 1e3:,.0f} KB", va="center")
ax.set_yticks(range(2))
ax.set_yticklabels(list(groups))
ax.set_xlabel("file size on disk (KB)")
ax.set_xlim(0, 1.2 * (sizes["lenet.npz"] + sizes["lenet.json"]) / 1e3)
ax.invert_yaxis()
ax.legend(fontsize=8, loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Bit-exact: the packed model equals the trained model
#
# `model.eval()` is the float simulation of the binary network (the trained model's forward pass with batch
# norm's running statistics). The packed model must give the same logits, not just close ones: the binary
# sums are integers (exact in float32 below $2^{24}$), and the folded batch norm is computed with the very
# same float32 operations (`eval_affine`) in both. Here is the whole test set:

# %%
model.eval()
with minibnn.no_grad():
    expected = np.concatenate([model(Tensor(x_test[i:i + 500])).numpy() for i in range(0, N_TEST, 500)])
logits = minibnn.backend.to_numpy(loaded.predict(x_test, batch_size=500))
different = int(np.sum(logits != expected))
print(f"{expected.size:,} logits compared, {different} differ; "
      f"accuracy packed {np.mean(logits.argmax(1) == y_test):.4f}, trained {trained['accuracy']:.4f}")
assert np.array_equal(logits, expected)
assert np.mean(logits.argmax(1) == y_test) == trained["accuracy"]

# %% [markdown]
# ## 5. Speed
#
# Images per second on the test set, batches of 500, for the packed model, the trained model in evaluation
# mode (it already runs its binary layers on the popcount kernels, but packs the weights on every call and
# goes through autograd's Tensors), and a float32 LeNet of the same shape. Timings vary with the machine and
# with what else runs on it.

# %%
float_lenet = models.lenet(act_bit=32, weight_bit=32).eval()


def rate(fn, repeats=2):
    fn()                                          # warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return N_TEST / best


def simulate(m):
    with minibnn.no_grad():
        for i in range(0, N_TEST, 500):
            m(Tensor(x_test[i:i + 500]))


speeds = {"packed binary LeNet": rate(lambda: loaded.predict(x_test, batch_size=500)),
          "trained binary LeNet\n(eval mode)": rate(lambda: simulate(model)),
          "float32 LeNet": rate(lambda: simulate(float_lenet))}
fig, ax = plt.subplots(figsize=(7, 2.2))
bars = ax.barh(list(speeds), list(speeds.values()), color=["C2", "C0", "C1"])
ax.bar_label(bars, fmt=" %.0f", fontsize=8)
ax.set_xlabel(f"images per second ({minibnn.backend.current()} backend, {os.cpu_count()} CPU cores)")
ax.set_xlim(0, 1.25 * max(speeds.values()))
ax.invert_yaxis()
plt.tight_layout()
plt.show()
ratio = speeds["packed binary LeNet"] / speeds["float32 LeNet"]
print(", ".join(f"{name}: {s:,.0f} images/s" for name, s in speeds.items()))
print(f"packed binary LeNet: {ratio:.1f}x the float32 LeNet's images/s")
assert all(s > 0 for s in speeds.values())

# %% [markdown]
# ## 6. Integer thresholds, drawn
#
# In LeNet each binary layer's output goes through float layers (max-pool, tanh, the classifier) before
# anything is binarized again, so its epilogue stays a float `dot * scale + shift`. When a binary layer feeds
# another binary layer through a batch norm (`QDense -> BatchNorm -> QDense`), the second layer only needs the
# **sign** of the batch norm's output. For a channel with $K$ inputs the dot product is $K - 2\,\mathrm{popcount}$,
# one of $K + 1$ integers in $[-K, K]$, and `sign(dot * scale + shift)` changes at most once along them. So
# the converter tries every integer of $[-K, K]$, finds where the sign changes, and stores one integer **threshold** per channel:
# the bit is `dot >= threshold` (or `dot < threshold` where the scale is negative: `flip`). The layer then
# writes packed bits straight into the next layer's input, with no float in between.
#
# A binary MLP has exactly that structure:

# %%
minibnn.manual_seed(0)
mlp = models.binary_mlp(hidden=(256, 256, 256))
opt = optim.Adam(mlp.parameters(), lr=5e-3)
train.fit(mlp, data.DataLoader(x_train, y_train, 100, shuffle=True, seed=0), opt, epochs=1, progress=False)
packed_mlp = deploy.convert(mlp, input_shape=(1, 28, 28), name="mlp")
for path, op in packed_mlp.layers():
    if op.kind.startswith("binary"):
        print(f"layer {path}: {op.kind}, {'emits packed bits (thresholds)' if op.emits_bits else 'float output'}")
mlp.eval()
with minibnn.no_grad():
    mlp_logits = mlp(Tensor(x_test[:2000])).numpy()
assert np.array_equal(minibnn.backend.to_numpy(packed_mlp.predict(x_test[:2000])), mlp_logits)

op = dict(packed_mlp.layers())["3"]                     # QDense(256 -> 256), its batch norm, then QDense again
bn = mlp[4]
scale, shift = (minibnn.backend.to_numpy(a) for a in
                eval_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, np.float32))
K = op.in_channels
dots = np.arange(-K, K + 1)
float_sign = (dots[:, None].astype(np.float32) * scale + shift) >= 0        # what the float simulation computes
threshold_bits = (dots[:, None] >= op.epilogue.threshold) != op.epilogue.flip
print(f"K = {K}: {dots.size} possible dots x {scale.size} channels, threshold bits == float signs: "
      f"{np.array_equal(float_sign, threshold_bits)}")
assert op.emits_bits
assert np.array_equal(float_sign, threshold_bits)

# %%
t, flip = op.epilogue.threshold, op.epilogue.flip
lo, hi = max(-K, int(t.min()) - 12), min(K, int(t.max()) + 12)   # zoom in: the thresholds lie near 0
zoom = (dots >= lo) & (dots <= hi)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
channels = np.argsort(t)[np.linspace(0, scale.size - 1, 6).astype(int)]      # from lowest to highest threshold
for c, color in zip(channels, plt.cm.tab10.colors):
    ax1.plot(dots[zoom], dots[zoom] * scale[c] + shift[c], color=color, lw=1.2,
             label=f"channel {c}: t = {t[c]}" + (" (flip)" if flip[c] else ""))
    ax1.axvline(t[c], color=color, ls=":", lw=1)
ax1.axhline(0, color="k", lw=0.8)
ax1.set_xlabel(f"dot (an integer in [-K, K], K = {K}; zoomed)")
ax1.set_ylabel("batch norm output")
ax1.set_title("the sign changes at the threshold t (dotted)", fontsize=10)
ax1.legend(fontsize=7)

order = np.lexsort((t, ~flip))                                   # flipped channels first, then by threshold
ax2.imshow(threshold_bits[zoom][:, order].T, aspect="auto", cmap="coolwarm_r", interpolation="nearest",
           extent=(lo - 0.5, hi + 0.5, scale.size - 0.5, -0.5))
ax2.set_xlabel("dot (zoomed)")
ax2.set_ylabel("output channel, sorted by threshold")
ax2.set_title("the bit the layer emits: blue +1, red -1", fontsize=10)
ax2.grid(False)
plt.tight_layout()
plt.show()
print(f"thresholds from {t.min()} to {t.max()}, {int(flip.sum())} flipped channels")
assert np.all((t >= -K) & (t <= K + 1))

# %% [markdown]
# Each row of the right picture is one channel, and the boundary between red and blue is its threshold. A
# channel whose batch-norm scale is negative would show the colours swapped (`flip`, sorted to the top); after
# this short training every scale is still positive. The kernel evaluates exactly this picture with one
# integer comparison per output, and the result equals the float simulation's sign for every possible dot,
# ties included (the assert above checked all of them).

# %% [markdown]
# ## What to try next
#
# * `minibnn convert` and `minibnn eval` do all of this from the command line (see the README).
# * Export the packed model as a C program that runs without Python: `deploy.export_c(packed, "out/")`.
# * Build the LeNet with XNOR-Net scaling (`scaling="channel"` in its Q-layers) and look at the epilogue.
# * Open `binarized_lenet.json` in a text editor, change one number in an array's shape, and load it again.
# * Next: **7. On the GPU**, the same training on the `cuda` backend.
