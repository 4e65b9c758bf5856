"""Losses."""
from __future__ import annotations

import numpy

from minibnn.autograd import Function, Tensor
from minibnn.backend import get_array_module, move_to, to_numpy
from minibnn.functional.activation import _log_softmax


def _label_range(labels) -> tuple[int, int]:
    """(min, max) of the labels: free for host labels (what the DataLoader yields); labels already on
    the GPU cost one device-to-host sync here."""
    if labels.size == 0:
        return 0, 0
    low, high = to_numpy(get_array_module(labels).stack([labels.min(), labels.max()]))
    return int(low), int(high)


class CrossEntropy(Function):
    """Mean over the batch of -log softmax(logits)[label]."""

    def __init__(self, labels):
        self.labels = labels.data if isinstance(labels, Tensor) else labels

    def forward(self, logits):
        xp = get_array_module(logits)
        labels = self.labels
        if getattr(labels, "ndim", None) is None:
            labels = numpy.asarray(labels)
        if logits.ndim != 2 or tuple(labels.shape) != (logits.shape[0],):
            raise ValueError(f"cross_entropy: logits of shape {tuple(logits.shape)} (N, classes) and "
                             f"labels of shape {tuple(labels.shape)} (N,) do not fit")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"cross_entropy: labels must be integers, got dtype {labels.dtype}")
        low, high = _label_range(labels)
        if low < 0 or high >= logits.shape[1]:
            raise ValueError(f"cross_entropy: labels must lie in [0, {logits.shape[1]}), "
                             f"got values from {low} to {high}")
        labels = move_to(xp, labels)  # one copy to the logits' device
        self.log_p = _log_softmax(logits, axis=1)
        self.labels = labels
        rows = xp.arange(len(labels))
        return -self.log_p[rows, labels].mean()

    def backward(self, g):
        xp = get_array_module(g)
        n = len(self.labels)
        grad = xp.exp(self.log_p)
        grad[xp.arange(n), self.labels] -= 1
        return grad * (g / n)


def cross_entropy(logits, labels) -> Tensor:
    """Softmax cross-entropy of (N, classes) logits against integer labels, mean over the batch."""
    return CrossEntropy.apply(logits, labels=labels)
