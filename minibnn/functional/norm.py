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
        self.axes, self.bshape, self.weight = axes, bshape, weight
        self.batch_stats = self.training or self.running_mean is None
        if not self.batch_stats:  # inference: the per-channel affine map the converter folds
            scale, shift = eval_affine(self.running_mean, self.running_var, weight, bias, self.eps, x.dtype)
            self.x, self.scale = x, scale
            return x * scale.reshape(bshape) + shift.reshape(bshape)
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
        self.inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype).reshape(bshape)
        self.xhat = (x - mean.reshape(bshape)) * self.inv_std
        y = self.xhat * weight.reshape(bshape) if weight is not None else self.xhat.copy()
        if bias is not None:
            y += bias.reshape(bshape)
        return y

    def backward(self, g):
        axes, bshape = self.axes, self.bshape
        if not self.batch_stats:  # y = x * scale + shift with constant scale and shift
            return self._eval_backward(g)
        gw = (g * self.xhat).sum(axis=axes) if self.weight is not None else None
        gb = g.sum(axis=axes)
        gx = None
        if self.needs_input_grad[0]:
            gxhat = g * self.weight.reshape(bshape) if self.weight is not None else g
            mean_g = gxhat.mean(axis=axes, keepdims=True)
            mean_gx = (gxhat * self.xhat).mean(axis=axes, keepdims=True)
            gx = (gxhat - mean_g - self.xhat * mean_gx) * self.inv_std
        return self._grads(gx, gw, gb)

    def _eval_backward(self, g):
        axes, bshape = self.axes, self.bshape
        gx = g * self.scale.reshape(bshape) if self.needs_input_grad[0] else None
        gw = gb = None
        if len(self.needs_input_grad) > 1:
            xp = get_array_module(g)
            var = self.running_var.astype(g.dtype)
            inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(g.dtype).reshape(bshape)
            xhat = (self.x - self.running_mean.astype(g.dtype).reshape(bshape)) * inv_std
            gw, gb = (g * xhat).sum(axis=axes), g.sum(axis=axes)
        return self._grads(gx, gw, gb)

    def _grads(self, gx, gw, gb):
        grads = (gx,)
        if len(self.needs_input_grad) > 1:
            grads += (gw,)
        if len(self.needs_input_grad) > 2:
            grads += (gb,)
        return grads


def eval_affine(running_mean, running_var, weight, bias, eps: float, dtype=None):
    """Batch norm in inference as ``y = x * scale + shift`` per channel: returns (scale, shift).

    The inference forward pass computes exactly this, and the converter folds the same two
    arrays into a binary layer's epilogue, so both give the same float32 results bit for bit.
    """
    running_mean, running_var = _raw(running_mean), _raw(running_var)
    xp = get_array_module(running_var)
    dtype = dtype or running_var.dtype
    inv_std = (1.0 / xp.sqrt(running_var.astype(dtype) + eps)).astype(dtype)
    scale = inv_std * _raw(weight).astype(dtype) if weight is not None else inv_std
    shift = -(running_mean.astype(dtype) * scale)
    if bias is not None:
        shift = _raw(bias).astype(dtype) + shift
    return scale, shift


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
