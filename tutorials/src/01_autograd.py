# %% [markdown]
# # 1. Autograd from scratch
#
# Every network in minibnn, binary or not, learns by gradient descent, and the gradients come from a
# small reverse-mode autograd engine in `minibnn/autograd.py` (under 300 lines). This notebook opens it up.
#
# **You will learn**
# 1. what a `Tensor` is and how `backward()` fills `.grad`;
# 2. how to write your own differentiable operation as a `Function` (forward and backward on raw arrays);
# 3. what the graph looks like and in which order `backward` walks it;
# 4. how to check any gradient against finite differences, and which step size to pick;
# 5. that a two-layer network trained with minibnn computes the same losses and gradients, to float32
#    rounding (about $10^{-8}$), as the same network written by hand in NumPy.
#
# Every idea is followed by an `assert` that checks it, so the notebook doubles as a test.

# %%
import os
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")   # tqdm without ipywidgets
QUICK = os.environ.get("MINIBNN_QUICK", "0") not in ("", "0")   # the tests set MINIBNN_QUICK=1

import matplotlib.pyplot as plt
import numpy as np

import minibnn
from minibnn import Function, Tensor, nn
from minibnn import functional as F

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3), "axes.grid": True, "grid.alpha": 0.3})
minibnn.manual_seed(0)
print(f"minibnn {minibnn.__version__}, backend {minibnn.backend.current()!r}, "
      f"{'quick' if QUICK else 'full'} mode")

# %% [markdown]
# ## 1. A Tensor and its gradient
#
# A `Tensor` wraps an array (NumPy here, CuPy on the GPU). Operations on tensors build a graph; calling
# `backward()` on a one-element result walks that graph backwards and stores d(result)/d(leaf) in the
# `.grad` of every leaf created with `requires_grad=True`.
#
# For $y = \sum_i x_i^2$ the gradient is $2x$:

# %%
x = Tensor([1.0, 2.0, 3.0], requires_grad=True)
y = (x * x).sum()
y.backward()
print("y      =", y.item())
print("x.grad =", x.grad)
assert y.item() == 14.0
assert np.array_equal(x.grad, 2 * x.numpy())

# %% [markdown]
# Gradients **accumulate**, as in PyTorch: a second `backward` adds to `.grad`. That is why training loops
# clear them (`optimizer.zero_grad()`) before each step.

# %%
y = (x * x).sum()
y.backward()
print("after a second backward:", x.grad)
assert np.array_equal(x.grad, 4 * x.numpy())
x.grad = None

# %% [markdown]
# ## 2. A Function: forward and backward on raw arrays
#
# Every operation in minibnn is a `Function` subclass with two methods working on plain arrays:
#
# * `forward(*arrays)` computes the output and saves what the backward pass will need;
# * `backward(grad)` receives d(loss)/d(output) and returns d(loss)/d(input), one per input.
#
# `Function.apply` wraps that in Tensors and records the graph. Here is softplus,
# $\mathrm{softplus}(x) = \log(1 + e^x)$, whose derivative is the logistic sigmoid:

# %%
class Softplus(Function):
    def forward(self, x):
        self.x = x                                        # saved for backward
        return np.logaddexp(0, x)                         # log(1 + e^x) without overflow

    def backward(self, grad):
        return grad / (1 + np.exp(-self.x))               # chain rule: grad * sigmoid(x)


def softplus(x):
    return Softplus.apply(x)


x = Tensor([-3.0, 0.0, 2.0], requires_grad=True)
y = softplus(x)
y.sum().backward()
print("softplus:", y.numpy(), " gradient:", x.grad)
assert np.allclose(y.numpy(), np.log1p(np.exp(x.numpy())))
assert np.allclose(x.grad, 1 / (1 + np.exp(-x.numpy())))

# %% [markdown]
# Inside `minibnn.no_grad()` nothing is recorded: no graph, no memory kept for backward. Inference and the
# optimizer's updates run this way.

# %%
with minibnn.no_grad():
    z = softplus(x) * 2
print("requires_grad inside no_grad:", z.requires_grad)
assert not z.requires_grad and z._ctx is None

# %% [markdown]
# ## 3. The graph, and the order backward walks it
#
# Each result remembers the Function that produced it (`tensor._ctx`), and each Function its input tensors
# (`fn.inputs`). That is the whole graph. Let us build a tiny neuron, $\mathrm{loss} = (\tanh(w x + b) - t)^2$,
# and walk it by hand:

# %%
w = Tensor([0.5], requires_grad=True)
b = Tensor([0.1], requires_grad=True)
xin, target = Tensor([2.0]), Tensor([1.0])
h = F.tanh(w * xin + b)
loss = ((h - target) ** 2).sum()

names = {id(w): "w", id(b): "b", id(xin): "x", id(target): "t"}


def walk(t, depth=0, seen=None):
    """Print the graph below tensor t: the Function that made it, then its inputs."""
    seen = set() if seen is None else seen
    label = names.get(id(t), "tensor")
    if t._ctx is None:
        print("    " * depth + f"{label} (leaf, requires_grad={t.requires_grad})")
        return
    print("    " * depth + f"{type(t._ctx).__name__}")
    for child in t._ctx.inputs:
        walk(child, depth + 1, seen)


walk(loss)
assert type(loss._ctx).__name__ == "Sum"
assert len(h._ctx.inputs) == 1 and w.grad is None     # tanh has one input (w*x + b); nothing computed yet

# %% [markdown]
# `backward` visits the Functions in **reverse topological order**: a node only after every node that uses
# it, so its incoming gradient is complete before it passes it on. The picture shows the graph (leaves in
# grey, Functions in blue) with the order in which backward reaches each Function.

# %%
def graph(root):
    """Nodes (id -> (label, is_function)), edges (child -> parent) and the topological order of Functions."""
    nodes, edges, order, seen = {}, [], [], set()

    def visit(t):
        if id(t) in seen:
            return
        seen.add(id(t))
        if t._ctx is None:
            nodes[id(t)] = (names.get(id(t), "const"), False)
            return
        fn = t._ctx
        nodes[id(fn)] = (type(fn).__name__, True)
        for child in fn.inputs:
            visit(child)
            edges.append((id(child._ctx) if child._ctx is not None else id(child), id(fn)))
        order.append(id(fn))

    visit(root)
    return nodes, edges, order[::-1]             # reversed post-order = reverse topological order


nodes, edges, backward_order = graph(loss)
depth = {}
for node in reversed(backward_order):            # inputs first: depth = longest path from a leaf
    ins = [c for c, p in edges if p == node]
    depth[node] = 1 + max((depth.get(c, 0) for c in ins), default=0)
for child, parent in edges:                      # a leaf sits just left of the Function that uses it
    if not nodes[child][1]:
        depth[child] = depth[parent] - 1
levels = {}
for node in nodes:
    levels.setdefault(depth.get(node, 0), []).append(node)
pos = {n: (d, i - (len(ns) - 1) / 2) for d, ns in levels.items() for i, n in enumerate(ns)}

fig, ax = plt.subplots(figsize=(8, 2.8))
for child, parent in edges:
    ax.annotate("", xy=pos[parent], xytext=pos[child],
                arrowprops=dict(arrowstyle="->", color="0.4", shrinkA=14, shrinkB=14))
for node, (label, is_fn) in nodes.items():
    text = f"{label}\n(#{backward_order.index(node) + 1})" if is_fn else label
    ax.text(*pos[node], text, ha="center", va="center", fontsize=9,
            bbox=dict(boxstyle="round", fc="#cfe2f3" if is_fn else "#eeeeee", ec="0.5"))
ax.set_xlim(min(depth.values()) - 0.5, max(depth.values()) + 0.5)
ax.set_ylim(-1.5, 1.5)
ax.axis("off")
ax.set_title("loss = (tanh(w*x + b) - t)^2: forward left to right, backward visits #1, #2, ...")
plt.show()

loss.backward()
print("dloss/dw =", w.grad, " dloss/db =", b.grad)
hv = np.tanh(0.5 * 2 + 0.1)
assert np.allclose(b.grad, 2 * (hv - 1) * (1 - hv**2))   # chain rule by hand
assert np.allclose(w.grad, b.grad * 2.0)                  # d(wx + b)/dw = x = 2
assert nodes[backward_order[0]][0] == "Sum"               # the output's Function comes first

# %% [markdown]
# ## 4. Checking gradients with finite differences
#
# A backward pass is easy to get subtly wrong. The check is always the same: nudge one input by $\pm h$ and
# compare the central difference $\big(f(x + h) - f(x - h)\big) / 2h$ with what autograd says. Here it is
# for every parameter of a small expression mixing several ops, in float64:

# %%
def f(a, bvec):
    return (softplus(a @ bvec) * F.tanh(a).sum(axis=1, keepdims=True)).mean()


def numeric_grad(fun, arrays, i, h):
    """Central differences of fun with respect to arrays[i], element by element."""
    grad = np.zeros_like(arrays[i])
    for index in np.ndindex(arrays[i].shape):
        plus = [a.copy() for a in arrays]; plus[i][index] += h
        minus = [a.copy() for a in arrays]; minus[i][index] -= h
        fp = fun(*(Tensor(a, dtype=a.dtype) for a in plus)).item()
        fm = fun(*(Tensor(a, dtype=a.dtype) for a in minus)).item()
        grad[index] = (fp - fm) / (2 * h)
    return grad


rng = np.random.default_rng(0)
arrays = [rng.normal(size=(4, 3)), rng.normal(size=(3, 2))]          # float64
tensors = [Tensor(a, requires_grad=True, dtype=np.float64) for a in arrays]
f(*tensors).backward()
for i, t in enumerate(tensors):
    num = numeric_grad(f, arrays, i, 1e-6)
    err = np.abs(num - t.grad).max() / np.abs(num).max()
    print(f"input {i}: max relative difference {err:.1e}")
    assert err < 1e-7

# %% [markdown]
# Which $h$? Too large and the difference quotient is a poor approximation of the derivative (the error
# shrinks like $h^2$); too small and the two function values cancel in floating point (the error grows like
# $\varepsilon / h$). The best $h$ sits near $\varepsilon^{1/3}$: about $10^{-5}$ in float64 but about
# $5 \times 10^{-3}$ in float32, which is why gradient checks run in float64.

# %%
steps = np.logspace(-10, -0.5, 40)
errors = {}
for dtype in (np.float32, np.float64):
    a = [arr.astype(dtype) for arr in arrays]
    ts = [Tensor(arr, requires_grad=True, dtype=dtype) for arr in a]
    f(*ts).backward()
    exact = ts[0].grad.astype(np.float64)
    errors[dtype.__name__] = [np.abs(numeric_grad(f, a, 0, dtype(hh)) - exact).max() for hh in steps]

fig, ax = plt.subplots(figsize=(6, 3.2))
for name, e in errors.items():
    ax.loglog(steps, np.maximum(e, 1e-17), marker=".", label=name)
ax.set_xlabel("step h")
ax.set_ylabel("max |finite difference - autograd|")
ax.set_title("finite-difference error against step size")
ax.legend()
plt.show()

best = {name: steps[int(np.argmin(e))] for name, e in errors.items()}
print("best step:", {k: f"{v:.0e}" for k, v in best.items()})
assert best["float64"] < best["float32"]
assert min(errors["float64"]) < 1e-8 < min(errors["float32"])

# %% [markdown]
# ## 5. The same two-layer network, in minibnn and by hand
#
# Now a real model: 2 inputs, a hidden layer of 16 tanh units, 2 classes, softmax cross-entropy, on points
# whose label is the sign of $x_1 x_2$ (an XOR pattern no linear model can learn). First with minibnn's
# layers...

# %%
rng = np.random.default_rng(1)
X = rng.uniform(-1, 1, size=(200, 2)).astype(np.float32)
labels = (X[:, 0] * X[:, 1] > 0).astype(np.int64)

minibnn.manual_seed(0)
net = nn.Sequential(nn.Dense(2, 16), nn.Tanh(), nn.Dense(16, 2))
dense1, dense2 = net[0], net[2]
loss = F.cross_entropy(net(Tensor(X)), labels)
net.zero_grad()
loss.backward()
print("loss", loss.item())

# %% [markdown]
# ... then by hand in NumPy, with the same weights. Forward: $H = \tanh(X W_1^\top + b_1)$,
# $Z = H W_2^\top + b_2$, $P = \mathrm{softmax}(Z)$, $L = -\frac1N \sum_n \log P_{n, y_n}$.
# Backward, line by line: $\partial L/\partial Z = (P - Y)/N$ with $Y$ one-hot, then through each layer.

# %%
def forward_backward_by_hand(W1, b1, W2, b2, X, y):
    H = np.tanh(X @ W1.T + b1)
    Z = H @ W2.T + b2
    Zs = Z - Z.max(axis=1, keepdims=True)
    P = np.exp(Zs) / np.exp(Zs).sum(axis=1, keepdims=True)
    L = -np.log(P[np.arange(len(y)), y]).mean()
    dZ = P.copy()
    dZ[np.arange(len(y)), y] -= 1
    dZ /= len(y)
    dW2, db2 = dZ.T @ H, dZ.sum(axis=0)
    dH = dZ @ W2
    dA = dH * (1 - H**2)                 # tanh' = 1 - tanh^2
    dW1, db1 = dA.T @ X, dA.sum(axis=0)
    return L, (dW1, db1, dW2, db2)


params = [p.numpy().copy() for p in (dense1.weight, dense1.bias, dense2.weight, dense2.bias)]
L, grads = forward_backward_by_hand(*params, X, labels)
autograd = [p.grad for p in (dense1.weight, dense1.bias, dense2.weight, dense2.bias)]
for name, mine, theirs in zip(["W1", "b1", "W2", "b2"], grads, autograd):
    print(f"{name}: max |by hand - autograd| = {np.abs(mine - theirs).max():.1e}")
    assert np.allclose(mine, theirs, rtol=1e-4, atol=1e-6)
assert np.isclose(L, loss.item(), rtol=1e-5)

# %% [markdown]
# Both train the same way too. Plain gradient descent, step 0.5, on both copies of the weights:

# %%
n_steps = 150 if QUICK else 600
lr = 0.5
opt = minibnn.optim.SGD(net.parameters(), lr=lr)
hand = [p.copy() for p in params]
curve_minibnn, curve_hand = [], []
for step in range(n_steps):
    loss = F.cross_entropy(net(Tensor(X)), labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
    curve_minibnn.append(loss.item())
    L, g = forward_backward_by_hand(*hand, X, labels)
    hand = [p - lr * gp for p, gp in zip(hand, g)]
    curve_hand.append(L)

grid = np.stack(np.meshgrid(np.linspace(-1, 1, 120), np.linspace(-1, 1, 120)), -1).reshape(-1, 2)
with minibnn.no_grad():
    region = net(Tensor(grid.astype(np.float32))).numpy().argmax(axis=1)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
ax1.plot(curve_minibnn, label="minibnn", lw=3, alpha=0.5)
ax1.plot(curve_hand, "--", label="by hand (NumPy)")
ax1.set_xlabel("step")
ax1.set_ylabel("cross-entropy")
ax1.set_title("the same loss curve")
ax1.legend()
ax2.contourf(grid[:, 0].reshape(120, 120), grid[:, 1].reshape(120, 120), region.reshape(120, 120),
             alpha=0.25, cmap="coolwarm")
ax2.scatter(X[:, 0], X[:, 1], c=labels, cmap="coolwarm", s=10)
ax2.set_title("what the network learned")
ax2.set_aspect("equal")
plt.tight_layout()
plt.show()

accuracy = (net(Tensor(X)).numpy().argmax(axis=1) == labels).mean()
print(f"final loss {curve_minibnn[-1]:.4f} (by hand {curve_hand[-1]:.4f}), training accuracy {accuracy:.2f}")
assert abs(curve_minibnn[-1] - curve_hand[-1]) < 1e-3
assert curve_minibnn[-1] < 0.5 * curve_minibnn[0]
assert accuracy > (0.8 if QUICK else 0.9)

# %% [markdown]
# ## What to try next
#
# * Write a `Function` for `x ** 3` or `relu` and check it with `numeric_grad` before trusting it.
# * Find where `Tensor.backward` accumulates leaf gradients in `minibnn/autograd.py` and what
#   `retain_graph=True` keeps alive.
# * Add a second hidden layer to the NumPy version: every layer's backward is the same three lines.
# * Replace `tanh` by `sign` in the hand-written network: the gradient is zero almost everywhere and training
#   stops. Notebook **2. Binarization** shows how binary networks get around that.
