"""Max and average pooling over NCHW arrays (strided windows, a loop over taps only)."""
from __future__ import annotations

from minibnn.autograd import Function, Tensor
from minibnn.backend import get_array_module
from minibnn.functional.conv import conv_output_size, pad_spatial, pair
from minibnn.functional.math import mean


def _geometry(x, kernel_size, stride, padding):
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding = pair(padding, "padding")
    if x.ndim != 4:
        raise ValueError(f"pooling expects NCHW input, got shape {tuple(x.shape)}")
    if min(kernel) < 1 or min(stride) < 1 or padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:
        raise ValueError(f"pooling: bad kernel {kernel}, stride {stride} or padding {padding} "
                         "(padding must be at most half the kernel)")
    out_hw = tuple(conv_output_size(x.shape[2 + a], kernel[a], stride[a], padding[a]) for a in (0, 1))
    if min(out_hw) < 1:
        raise ValueError(f"pooling: input {tuple(x.shape)} is smaller than the kernel {kernel}")
    return kernel, stride, padding, out_hw


def _tap_slice(i, j, stride, out_hw):
    """Index of the padded input that tap (i, j) of every pooling window reads."""
    return (slice(None), slice(None),
            slice(i, i + stride[0] * (out_hw[0] - 1) + 1, stride[0]),
            slice(j, j + stride[1] * (out_hw[1] - 1) + 1, stride[1]))


def _taps(kernel, stride, out_hw):
    """(tap number, index) for every kernel tap: pooling is a loop over taps, not over pixels."""
    for t in range(kernel[0] * kernel[1]):
        i, j = divmod(t, kernel[1])
        yield t, _tap_slice(i, j, stride, out_hw)


def _zeros_like_input(x_shape, padding, like, dtype):
    """Zero gradient buffer for the padded input, in the input's memory layout when unpadded."""
    xp = get_array_module(like)
    if padding == (0, 0):
        return xp.zeros_like(like, dtype=dtype)  # keeps an NHWC-strided input NHWC
    ph, pw = padding
    return xp.zeros(x_shape[:2] + (x_shape[2] + 2 * ph, x_shape[3] + 2 * pw), dtype=dtype)


def _crop(a, padding, x_shape):
    ph, pw = padding
    return a[:, :, ph : ph + x_shape[2], pw : pw + x_shape[3]]


class MaxPool2d(Function):
    """Max pooling; the gradient goes to the first maximum of each window (as in PyTorch)."""

    def __init__(self, kernel_size, stride, padding):
        self.args = (kernel_size, stride, padding)

    def forward(self, x):
        xp = get_array_module(x)
        self.kernel, self.stride, self.padding, self.out_hw = _geometry(x, *self.args)
        self.xpad = pad_spatial(x, self.padding, value=-xp.inf)
        self.x, self.x_shape = x, x.shape
        best = None
        for _, index in _taps(self.kernel, self.stride, self.out_hw):
            best = self.xpad[index].copy(order="K") if best is None else xp.maximum(best, self.xpad[index], out=best)
        self.best = best
        return best.copy(order="K")

    def backward(self, g):
        xp = get_array_module(g)
        out = _zeros_like_input(self.x_shape, self.padding, self.x, g.dtype)
        remaining = g.copy(order="K")  # the gradient not yet given to an earlier tap of the window
        disjoint = all(s >= k for s, k in zip(self.stride, self.kernel))  # windows do not overlap
        for _, index in _taps(self.kernel, self.stride, self.out_hw):
            hit = self.xpad[index] == self.best
            if disjoint:  # (multiplying by a bool mask is much faster than copyto/where in NumPy)
                xp.multiply(remaining, hit, out=out[index])
            else:
                out[index] += remaining * hit
            xp.multiply(remaining, ~hit, out=remaining)
        return _crop(out, self.padding, self.x_shape)


class AvgPool2d(Function):
    """Average pooling; padded zeros count in the divisor (PyTorch's count_include_pad=True)."""

    def __init__(self, kernel_size, stride, padding):
        self.args = (kernel_size, stride, padding)

    def forward(self, x):
        self.kernel, self.stride, self.padding, self.out_hw = _geometry(x, *self.args)
        xpad = pad_spatial(x, self.padding)
        self.x, self.x_shape = x, x.shape
        total = None
        for _, index in _taps(self.kernel, self.stride, self.out_hw):
            total = xpad[index].copy(order="K") if total is None else total + xpad[index]
        return total / (self.kernel[0] * self.kernel[1])

    def backward(self, g):
        out = _zeros_like_input(self.x_shape, self.padding, self.x, g.dtype)
        share = g / (self.kernel[0] * self.kernel[1])
        for _, index in _taps(self.kernel, self.stride, self.out_hw):
            out[index] += share
        return _crop(out, self.padding, self.x_shape)


def max_pool2d(x, kernel_size, stride=None, padding=0) -> Tensor:
    """Max pooling over NCHW ``x`` (stride defaults to kernel_size, as in PyTorch)."""
    return MaxPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0) -> Tensor:
    """Average pooling over NCHW ``x`` (stride defaults to kernel_size)."""
    return AvgPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding)


def global_avg_pool2d(x) -> Tensor:
    """Mean over the spatial axes: (N, C, H, W) -> (N, C)."""
    if x.ndim != 4:
        raise ValueError(f"global_avg_pool2d expects NCHW input, got shape {tuple(x.shape)}")
    return mean(x, axis=(2, 3))
