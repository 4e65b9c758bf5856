"""Fully connected layer op: y = x @ w.T + b."""
from __future__ import annotations

from minibnn.autograd import Function, Tensor


def check_shapes(x, w, b=None) -> None:
    """Raise a ValueError showing both shapes unless x (batch, in), w (out, in), b (out,) fit."""
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(
            f"linear: input of shape {tuple(x.shape)} does not fit weight of shape "
            f"{tuple(w.shape)} (expected input (batch, {w.shape[1] if w.ndim == 2 else '?'}))"
        )
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"linear: bias of shape {tuple(b.shape)} does not fit weight {tuple(w.shape)}")


class Linear(Function):
    def forward(self, x, w, b=None):
        check_shapes(x, w, b)
        self.x, self.w, self.has_bias = x, w, b is not None
        y = x @ w.T
        return y + b if b is not None else y

    def backward(self, g):
        gx = g @ self.w if self.needs_input_grad[0] else None
        gw = g.T @ self.x if self.needs_input_grad[1] else None
        if self.has_bias:
            return gx, gw, g.sum(axis=0)
        return gx, gw


def linear(x, w, b=None) -> Tensor:
    """y = x @ w.T + b with w of shape (out, in) (PyTorch's convention)."""
    return Linear.apply(x, w) if b is None else Linear.apply(x, w, b)
