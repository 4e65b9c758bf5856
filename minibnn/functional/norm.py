"""Batch normalisation with PyTorch's conventions (biased batch variance, unbiased running one)."""
from __future__ import annotations

from minibnn.autograd import Function, Tensor
from minibnn.backend import get_array_module


def _raw(a):
    return a.data if isinstance(a, Tensor) else a


class BatchNorm(Function):
    def __init__(self, running_mean, running_var, training: bool, momentum: float, eps: float):
        self.running_mean, self.running_var = _raw(running_mean), _raw(running_var)
        self.training, self.momentum, self.eps = training, momentum, eps

    def _axes(self, x):
        if x.ndim not in (2, 3, 4):
            raise ValueError(f"batch_norm expects (N, C), (N, C, L) or (N, C, H, W) input, got {tuple(x.shape)}")
        c = x.shape[1]
        for name, a in (("running_mean", self.running_mean), ("running_var", self.running_var)):
            if a is not None and a.shape != (c,):
                raise ValueError(f"batch_norm: {name} of shape {tuple(a.shape)} does not fit input "
                                 f"{tuple(x.shape)} with {c} channels")
        return (0,) + tuple(range(2, x.ndim)), (1, c) + (1,) * (x.ndim - 2)

    def forward(self, x, weight=None, bias=None):
        xp = get_array_module(x)
        axes, bshape = self._axes(x)
        if self.training or self.running_mean is None:
            n = x.size // x.shape[1]
            if n < 2 and self.training:
                raise ValueError(f"batch_norm in training needs more than one value per channel, got input {tuple(x.shape)}")
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
            if self.training and self.running_mean is not None:
                m = self.momentum
                self.running_mean *= 1 - m
                self.running_mean += m * mean.astype(self.running_mean.dtype)
                self.running_var *= 1 - m
                self.running_var += m * (var * (n / (n - 1))).astype(self.running_var.dtype)
        else:
            mean, var = self.running_mean.astype(x.dtype), self.running_var.astype(x.dtype)
        self.batch_stats = self.training or self.running_mean is None
        self.inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype).reshape(bshape)
        self.xhat = (x - mean.reshape(bshape)) * self.inv_std
        self.axes, self.bshape = axes, bshape
        self.weight = weight
        y = self.xhat * weight.reshape(bshape) if weight is not None else self.xhat.copy()
        if bias is not None:
            y += bias.reshape(bshape)
        return y

    def backward(self, g):
        axes, bshape = self.axes, self.bshape
        gw = (g * self.xhat).sum(axis=axes) if self.weight is not None else None
        gb = g.sum(axis=axes)
        gx = None
        if self.needs_input_grad[0]:
            gxhat = g * self.weight.reshape(bshape) if self.weight is not None else g
            if self.batch_stats:
                mean_g = gxhat.mean(axis=axes, keepdims=True)
                mean_gx = (gxhat * self.xhat).mean(axis=axes, keepdims=True)
                gx = (gxhat - mean_g - self.xhat * mean_gx) * self.inv_std
            else:
                gx = gxhat * self.inv_std
        grads = (gx,)
        if len(self.needs_input_grad) > 1:
            grads += (gw,)
        if len(self.needs_input_grad) > 2:
            grads += (gb,)
        return grads


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch norm over axis 1 of (N, C[, ...]) ``x``; updates the running stats in place when training."""
    params = dict(running_mean=running_mean, running_var=running_var, training=training,
                  momentum=momentum, eps=eps)
    if weight is None and bias is None:
        return BatchNorm.apply(x, **params)
    if weight is None or bias is None:
        raise ValueError("batch_norm: give both weight and bias, or neither")
    return BatchNorm.apply(x, weight, bias, **params)
