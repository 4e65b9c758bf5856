# %% [markdown]
# # 2. Binarization: sign, the straight-through estimator, DoReFa
#
# A binary network computes with weights and activations that are only $+1$ or $-1$. The function that gets
# them there, `sign`, has a derivative of zero everywhere except at 0, where it has none: plain
# backpropagation through it learns nothing. This notebook shows how minibnn (like BMXNet, Larq and the
# papers behind them) trains through it anyway.
#
# **You will learn**
# 1. minibnn's `sign` (with $\mathrm{sign}(0) = +1$) and why its true gradient is useless;
# 2. the straight-through estimator (STE): sign forward, identity backward, and why it is *clipped* to
#    $|x| \le 1$;
# 3. Bi-Real's `approx_sign` and the k-bit DoReFa quantizers for activations and weights, with pictures of
#    each forward function and its pseudo-gradient at 1, 2 and 4 bits;
# 4. latent weights: the float weights the optimizer updates while the network uses their signs, and why
#    they are clipped to $[-1, 1]$.

# %%
import os
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")   # tqdm without ipywidgets
QUICK = os.environ.get("MINIBNN_QUICK", "0") not in ("", "0")   # the tests set MINIBNN_QUICK=1

import matplotlib.pyplot as plt
import numpy as np

import minibnn
from minibnn import Tensor, data, models, nn, optim, quantize, train
from minibnn import functional as F

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3), "axes.grid": True, "grid.alpha": 0.3})
minibnn.manual_seed(0)
print(f"minibnn {minibnn.__version__}, backend {minibnn.backend.current()!r}, "
      f"{'quick' if QUICK else 'full'} mode")

# %% [markdown]
# ## 1. sign, and its useless gradient
#
# minibnn's sign maps $x \ge 0$ to $+1$ and $x < 0$ to $-1$, so there is no third value 0 and every entry
# fits in one bit (bit 1 means $+1$). `quantize.binarize` is that function on raw arrays:

# %%
x = np.array([-2.0, -0.5, -0.0, 0.0, 0.3, 1.7], dtype=np.float32)
print(quantize.binarize(x))
assert quantize.binarize(x).tolist() == [-1, -1, 1, 1, 1, 1]   # -0.0 >= 0 too: sign(0) = +1

# %% [markdown]
# The true derivative of this step function is 0 wherever it exists. A network of `sign` layers trained with
# the true gradient would never move: every weight's gradient is exactly zero. (NumPy's `np.sign`, by
# contrast, maps 0 to 0, a third value that does not fit in a bit.)

# %% [markdown]
# ## 2. The straight-through estimator, and why it is clipped
#
# The STE (Hinton's lecture; Bengio et al. 2013; BinaryConnect, BinaryNet) keeps `sign` in the forward pass but
# pretends, in the backward pass, that it was the identity: the incoming gradient passes *straight through*.
# minibnn's `ste_sign(x, clip=1.0)` lets it through only where $|x| \le 1$ (`clip=None` passes it
# everywhere):

# %%
x = Tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], requires_grad=True)
y = quantize.ste_sign(x, clip=1.0)
y.backward(np.ones(7, np.float32))
print("forward :", y.numpy())
print("backward:", x.grad)
assert y.numpy().tolist() == [-1, -1, -1, 1, 1, 1, 1]
assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 0]

# %% [markdown]
# Why clip? The clipped STE is exactly the gradient of $\mathrm{hardtanh}(x) = \max(-1, \min(1, x))$, the
# piecewise-linear function closest to sign. Once $|x| > 1$, making $x$ larger changes neither sign nor
# hardtanh, so the gradient says "no effect" instead of pushing activations ever further out, where they
# can no longer flip. Courbariaux, Hubara et al. found cancelling the gradient for $|x| > 1$ essential for
# BinaryNet's accuracy.
# The check: the STE's gradient equals hardtanh's, for any upstream gradient.

# %%
rng = np.random.default_rng(0)
values = rng.normal(scale=1.5, size=1000).astype(np.float32)
upstream = rng.normal(size=1000).astype(np.float32)
a, b = Tensor(values, requires_grad=True), Tensor(values, requires_grad=True)
quantize.ste_sign(a, clip=1.0).backward(upstream)
F.hardtanh(b).backward(upstream)
print(f"{np.mean(np.abs(values) > 1):.0%} of these inputs get no gradient")
assert np.array_equal(a.grad, b.grad)

# %% [markdown]
# ## 3. Forward functions and pseudo-gradients side by side
#
# * **ste_sign**: sign forward, a box of height 1 on $[-1, 1]$ backward (dotted: `clip=None`, a constant 1).
# * **approx_sign** (Bi-Real Net, Liu et al. 2018): sign forward, backward the derivative of a piecewise
#   quadratic that hugs sign more closely, $2 - 2|x|$ on $[-1, 1]$.
# * **k-bit activations** (DoReFa-Net, Zhou et al. 2016): clip to $[0, 1]$, round to $2^k$ levels,
#   $\mathrm{round}((2^k - 1)x)/(2^k - 1)$; gradient 1 inside $[0, 1]$. One bit is the sign itself.
# * **k-bit weights** (DoReFa): squash with tanh, scale by the largest $|\tanh w|$ to $[0, 1]$, round, and map to
#   $[-1, 1]$: $2\,q_k\!\left(\frac{\tanh w}{2 \max|\tanh w|} + \frac12\right) - 1$. One bit is the sign,
#   with an unclipped STE: a latent weight never leaves $[-1, 1]$ anyway (section 4).
#
# Every pseudo-gradient below is what minibnn's backward pass returns, not a formula typed in.

# %%
grid = np.linspace(-2, 2, 801).astype(np.float32)


def forward_and_grad(fn):
    t = Tensor(grid, requires_grad=True)
    out = fn(t)
    out.backward(np.ones_like(grid))
    return out.numpy(), t.grad


curves = {
    "sign family": {
        "ste_sign (clip 1)": forward_and_grad(lambda t: quantize.ste_sign(t, clip=1.0)),
        "ste_sign (no clip)": forward_and_grad(lambda t: quantize.ste_sign(t, clip=None)),
        "approx_sign": forward_and_grad(quantize.approx_sign),
    },
    "activations, k bits": {f"{k} bit": forward_and_grad(lambda t, k=k: quantize.quantize_activation(t, k))
                            for k in (1, 2, 4)},
    "weights (DoReFa), k bits": {f"{k} bit": forward_and_grad(lambda t, k=k: quantize.quantize_weight(t, k))
                                 for k in (1, 2, 4)},
}

fig, axes = plt.subplots(2, 3, figsize=(11, 5.2), sharex=True)
for col, (title, family) in enumerate(curves.items()):
    for style, (label, (fwd, grad)) in zip(["-", "--", "-."], family.items()):
        axes[0, col].plot(grid, fwd, style, label=label)
        axes[1, col].plot(grid, grad, style, label=label)
    axes[0, col].set_title(title)
    axes[0, col].legend(fontsize=8, loc="upper left")
    axes[1, col].set_xlabel("x (input or latent weight)")
axes[0, 0].set_ylabel("forward")
axes[1, 0].set_ylabel("pseudo-gradient")
plt.tight_layout()
plt.show()

ste_fwd, ste_grad = curves["sign family"]["ste_sign (clip 1)"]
_, approx_grad = curves["sign family"]["approx_sign"]
assert set(np.unique(ste_fwd)) == {-1.0, 1.0}
assert np.allclose(approx_grad, np.maximum(2 - 2 * np.abs(grid), 0))
dx = grid[1] - grid[0]
assert np.isclose(approx_grad.sum() * dx, ste_grad.sum() * dx, rtol=1e-2)   # both have area 2
for k in (2, 4):
    act, _ = curves["activations, k bits"][f"{k} bit"]
    wq, _ = curves["weights (DoReFa), k bits"][f"{k} bit"]
    assert len(np.unique(act)) == 2**k and act.min() == 0 and act.max() == 1
    assert len(np.unique(wq)) <= 2**k and wq.min() == -1 and wq.max() == 1

# %% [markdown]
# Both sign estimators have the same area (2, the jump of sign), spread differently. With more bits the
# forward functions approach the identity (activations) and the scaled tanh (weights), and the
# quantization error shrinks by about half per extra bit:

# %%
for k in (2, 4, 8):
    act = quantize.quantize_activation(Tensor(np.clip(grid, 0, 1)), k).numpy()
    error = np.abs(act - np.clip(grid, 0, 1)).max()
    print(f"{k} bits: {2**k:>3} levels, largest rounding error on [0, 1]: {error:.4f}")
    assert error <= 0.5 / (2**k - 1) + 1e-6

# %% [markdown]
# ## 4. Latent weights, and why they are clipped
#
# A binary layer stores float **latent** weights $w$ and uses $\mathrm{sign}(w)$ in its forward pass. The
# optimizer updates $w$ with the STE gradient; the binary weight changes only when $w$ crosses 0. In
# minibnn the latent weights of 1-bit layers are `Parameter`s with `clip=1.0`, and every optimizer clips
# them to $[-1, 1]$ after its step (BinaryConnect):

# %%
layer = nn.QDense(8, 4, act_bit=1, weight_bit=1)
print("latent weights, first row:", np.round(layer.weight.numpy()[0], 3))
print("binary weights, first row:", layer.quantized_weight().numpy()[0])
print("clip of the latent weights:", layer.weight.clip)
assert np.array_equal(layer.quantized_weight().numpy(), np.where(layer.weight.numpy() >= 0, 1, -1))
assert layer.weight.clip == 1.0

# %% [markdown]
# Why clip? The sign only cares whether $w$ is above or below 0. Without a bound, a weight that the gradient
# keeps pushing one way drifts far from 0, and when the gradient later turns, it takes that many steps to come
# back and flip: the weight has become stuck. Two latent weights, one clipped to $[-1, 1]$ and one free, get
# the same gradient, first pushing them down for 300 steps, then up:

# %%
clipped = nn.Parameter(np.array([0.2], np.float32), clip=1.0)
free = nn.Parameter(np.array([0.2], np.float32), clip=None)
opt = optim.SGD([clipped, free], lr=0.01)
trace = []
for step in range(600):
    g = 1.0 if step < 300 else -1.0            # the loss wants w down, then up
    clipped.grad = np.array([g], np.float32)
    free.grad = np.array([g], np.float32)
    opt.step()
    trace.append((clipped.numpy()[0], free.numpy()[0]))
trace = np.array(trace)
flip_back = [int(np.argmax((trace[300:, i] >= 0))) for i in range(2)]

fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(trace[:, 0], label="latent, clipped to [-1, 1]")
ax.plot(trace[:, 1], "--", label="latent, not clipped")
ax.axhline(0, color="k", lw=0.8)
ax.axvline(300, color="0.5", ls=":")
for i, color in enumerate(["C0", "C1"]):
    ax.plot(300 + flip_back[i], 0, "o", color=color)
ax.set_xlabel("optimizer step (the gradient changes sign at 300)")
ax.set_ylabel("latent weight")
ax.set_title("the clipped weight flips back sooner (dots: sign flips to +1)")
ax.legend(fontsize=8)
plt.show()

print(f"steps to flip back to +1: clipped {flip_back[0]}, not clipped {flip_back[1]}")
assert trace[:, 0].min() >= -1.0 and trace[:, 1].min() < -2
assert flip_back[0] < flip_back[1] / 2

# %% [markdown]
# ## 5. Latent weights after real training
#
# A binary MLP (float first and last layer, binary hidden layers, as BMXNet does it) trained for a moment on
# MNIST. Its latent weights spread out from their small initial values (PyTorch's default,
# uniform within $\pm 1/\sqrt{\text{fan-in}}$) while the network uses only their signs. In this short run none
# reaches the bound (the largest $|w|$ is printed below): Adam moves a weight by at most about its learning
# rate, 0.01, per step, and the gradient's sign keeps changing, so few weights travel far. In long runs, and
# with larger steps, the clip is what keeps them within reach of a flip.

# %%
n_train = 2000 if QUICK else 20000
x_train, y_train = data.load_mnist("train")
x_train = data.normalize(x_train[:n_train], data.MNIST_MEAN, data.MNIST_STD)
model = models.binary_mlp(hidden=(256, 256, 256))
before = np.concatenate([p.numpy().ravel() for p in optim.binary_parameters(model)])
opt = optim.Adam(model.parameters(), lr=1e-2)
history = train.fit(model, data.DataLoader(x_train, y_train[:n_train], 100, shuffle=True, seed=0), opt,
                    epochs=2, progress=False)
after = np.concatenate([p.numpy().ravel() for p in optim.binary_parameters(model)])

fig, ax = plt.subplots(figsize=(7, 3))
bins = np.linspace(-1.05, 1.05, 211) * np.abs(after).max()
ax.hist(before, bins=bins, alpha=0.6, label="at initialisation")
ax.hist(after, bins=bins, alpha=0.6, label="after 2 epochs")
ax.set_xlabel("latent weight of the binary layers (the clip bounds, +-1, lie outside this range)")
ax.set_ylabel("count")
ax.legend()
plt.show()

spread = np.abs(after).mean() / np.abs(before).mean()
print(f"{after.size:,} latent weights, mean |w| grew {spread:.1f}x, largest |w| {np.abs(after).max():.2f}; "
      f"training accuracy {history['accuracy'][-1]:.3f}")
assert np.abs(after).max() <= 1.0
assert spread > 1.3                                              # training moved them away from 0
assert history["accuracy"][-1] > 0.8

# %% [markdown]
# ## What to try next
#
# * Train the MLP above with a `QActivation(clip=None)` before each binary layer and compare the accuracy.
# * Build a model with `nn.QActivation(approx=True)` (Bi-Real's estimator) and compare the learning curves.
# * Plot `quantize.quantize_weight` for a tensor with one huge weight: DoReFa scales by the largest
#   $|\tanh w|$, so the others crowd into fewer levels.
# * Try `optim.Bop`, which has no latent weights at all: it flips a binary weight when the gradient's moving
#   average agrees with it strongly enough (notebook 4 measures flips per epoch).
# * Next notebook: **3. XNOR and popcount**, where the $\pm 1$ products become bit operations.
