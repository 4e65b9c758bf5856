"""Inverted dropout."""
from __future__ import annotations

from minibnn import random
from minibnn.autograd import Function, Tensor
from minibnn.backend import get_array_module


class Dropout(Function):
    def __init__(self, p: float):
        self.p = p

    def forward(self, x):
        xp = get_array_module(x)
        keep = random.generator().random(x.shape) >= self.p  # drawn on the host: same on every backend
        self.mask = xp.asarray(keep, dtype=x.dtype) / (1 - self.p)
        return x * self.mask

    def backward(self, g):
        return g * self.mask


def dropout(x, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (identity in eval)."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0:
        return x if isinstance(x, Tensor) else Tensor(x)
    return Dropout.apply(x, p=p)
