"""Draw the README's picture of a binary dot product as XNOR + popcount: python docs/make_figures.py.

The numbers in the picture are computed here with minibnn's reference kernels, not typed in.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from minibnn.backend import numpy_ref as ref  # noqa: E402

HERE = Path(__file__).parent


def _row(ax, y, values, label, cmap, text=None):
    for i, v in enumerate(values):
        ax.add_patch(plt.Rectangle((i, y), 0.95, 0.8, color=cmap(v)))
        ax.text(i + 0.47, y + 0.4, text[i] if text else f"{v:+d}", ha="center", va="center", fontsize=9)
    ax.text(-0.4, y + 0.4, label, ha="right", va="center", fontsize=9)


def binary_dot(path: Path = HERE / "binary_dot.png") -> Path:
    rng = np.random.default_rng(1)
    k = 12
    x = np.where(rng.random(k) < 0.5, -1, 1)
    w = np.where(rng.random(k) < 0.5, -1, 1)
    xb, wb = ref.pack_bits(x.astype(np.float32)[None]), ref.pack_bits(w.astype(np.float32)[None])
    out = np.empty((1, 1), np.int32)
    ref.xnor_gemm(xb, wb, k, out)
    same = (x == w).astype(int)
    assert int(out[0, 0]) == int(x @ w) == k - 2 * int((1 - same).sum())
    blues = lambda v: "#9ecae1" if v > 0 else "#fdae6b"  # noqa: E731
    fig, ax = plt.subplots(figsize=(7.5, 3.1))
    _row(ax, 4, x, "activations x (+-1)", blues)
    _row(ax, 3, w, "weights w (+-1)", blues)
    _row(ax, 2, (x > 0).astype(int), "bits of x", lambda v: "#deebf7", [str(b) for b in (x > 0).astype(int)])
    _row(ax, 1, (w > 0).astype(int), "bits of w", lambda v: "#deebf7", [str(b) for b in (w > 0).astype(int)])
    _row(ax, 0, same, "XNOR (1 = agree)", lambda v: "#a1d99b" if v else "#f0f0f0", [str(b) for b in same])
    ax.text(k + 0.3, 0.4, f"popcount = {same.sum()}", va="center", fontsize=10)
    ax.set_title(f"x . w = 2 popcount(XNOR) - K = 2 * {same.sum()} - {k} = {int(out[0, 0])}   "
                 f"(one machine word holds 64 bits)", fontsize=10)
    ax.set_xlim(-4.2, k + 3.5)
    ax.set_ylim(-0.2, 5)
    ax.axis("off")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(binary_dot())
