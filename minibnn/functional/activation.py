"""Elementwise activations and (log-)softmax."""
from __future__ import annotations

from minibnn.autograd import Function, Tensor
from minibnn.backend import get_array_module


class ReLU(Function):
    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, g):
        return g * self.mask


class HardTanh(Function):
    def __init__(self, min_val: float, max_val: float):
        self.min_val, self.max_val = min_val, max_val

    def forward(self, x):
        self.mask = (x >= self.min_val) & (x <= self.max_val)
        return get_array_module(x).clip(x, self.min_val, self.max_val)

    def backward(self, g):
        return g * self.mask


class Tanh(Function):
    def forward(self, x):
        self.y = get_array_module(x).tanh(x)
        return self.y

    def backward(self, g):
        return g * (1 - self.y * self.y)


class Sigmoid(Function):
    def forward(self, x):
        xp = get_array_module(x)
        self.y = 0.5 * (xp.tanh(0.5 * x) + 1)  # overflow-free logistic
        return self.y

    def backward(self, g):
        return g * self.y * (1 - self.y)


def _log_softmax(x, axis: int):
    xp = get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class Softmax(Function):
    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, x):
        self.y = get_array_module(x).exp(_log_softmax(x, self.axis))
        return self.y

    def backward(self, g):
        return self.y * (g - (g * self.y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Function):
    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, x):
        self.y = _log_softmax(x, self.axis)
        return self.y

    def backward(self, g):
        xp = get_array_module(g)
        return g - xp.exp(self.y) * g.sum(axis=self.axis, keepdims=True)


def relu(x) -> Tensor:
    """max(x, 0)."""
    return ReLU.apply(x)


def hardtanh(x, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    """clip(x, min_val, max_val); gradient 1 inside the interval (ends included)."""
    return HardTanh.apply(x, min_val=min_val, max_val=max_val)


def tanh(x) -> Tensor:
    """Hyperbolic tangent."""
    return Tanh.apply(x)


def sigmoid(x) -> Tensor:
    """Logistic function 1 / (1 + exp(-x))."""
    return Sigmoid.apply(x)


def softmax(x, axis: int = -1, *, dim: int | None = None) -> Tensor:
    """Softmax along ``axis`` (``dim`` is PyTorch's name for it)."""
    return Softmax.apply(x, axis=axis if dim is None else dim)


def log_softmax(x, axis: int = -1, *, dim: int | None = None) -> Tensor:
    """Log of the softmax along ``axis`` (or ``dim``), computed stably."""
    return LogSoftmax.apply(x, axis=axis if dim is None else dim)
