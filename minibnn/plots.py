"""Pictures of a run: training curves and a confusion matrix, as PNG files (matplotlib, the ``plot`` extra).

``minibnn train --plot`` and ``minibnn eval --plot`` call these; so can you::

    from minibnn import plots
    plots.training_curves(history.epochs, "curves.png")
    plots.confusion_matrix(labels, predictions, "confusion.png")
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    """matplotlib.pyplot on a file-only backend, or ImportError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'minibnn[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg", force=False)  # no screen needed; a notebook's own backend is kept
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    from minibnn.io import atomic_write_bytes
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def training_curves(epochs: Sequence[dict[str, float]], path: str | os.PathLike, title: str = "") -> Path:
    """Loss, accuracy (train and validation), learning rate and flip ratio per epoch, as one PNG."""
    if not epochs:
        raise ValueError("training_curves: the history holds no epoch")
    plt = _pyplot()
    x = [r.get("epoch", i + 1) for i, r in enumerate(epochs)]
    panels = [("loss", ("loss", "val_loss")), ("accuracy", ("accuracy", "val_accuracy")), ("learning rate", ("lr",)),
              ("flip ratio of the binary weights", ("flip_ratio",))]
    panels = [(name, keys) for name, keys in panels if any(k in r for r in epochs for k in keys)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, (name, keys) in zip(axes[0], panels):
        for key in keys:
            points = [(xi, r[key]) for xi, r in zip(x, epochs) if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=key.replace("_", " "))
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend()
    if title:
        fig.suptitle(title, y=1.05)
    return _save(fig, path)


def confusion_counts(labels, predictions, n: int | None = None) -> np.ndarray:
    """counts[i, j] = how many samples of true class i were predicted as j (n classes; default: enough)."""
    labels, predictions = np.asarray(labels).reshape(-1), np.asarray(predictions).reshape(-1)
    if labels.shape != predictions.shape or labels.size == 0:
        raise ValueError(f"confusion_counts: labels {labels.shape} and predictions {predictions.shape} must be "
                         "non-empty and of one length")
    if labels.min() < 0 or predictions.min() < 0:
        raise ValueError("confusion_counts: classes must be >= 0")
    n = int(max(labels.max(), predictions.max())) + 1 if n is None else n
    counts = np.zeros((n, n), np.int64)
    np.add.at(counts, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return counts


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, path: str | os.PathLike,
                     classes: Sequence[str] | None = None, title: str = "") -> Path:
    """The confusion matrix (rows: true class, columns: predicted) with counts, as a PNG."""
    counts = confusion_counts(labels, predictions, None if classes is None else len(classes))
    n = len(counts)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(0.5 * n + 2.5, 0.5 * n + 2))
    ax.imshow(counts, cmap="Blues")
    names = list(classes) if classes is not None else [str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=90 if n > 12 else 0)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if counts[i, j] > counts.max() / 2 else "black")
    accuracy = np.trace(counts) / counts.sum()
    ax.set_title(title or f"accuracy {accuracy:.4f}")
    return _save(fig, path)
