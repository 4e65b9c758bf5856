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


def _tap_windows(xpad, kernel, stride, out_hw):
    """Strided view (N, C, OH, OW, kh, kw) of the pooling windows."""
    xp = get_array_module(xpad)
    sn, sc, sh, sw = xpad.strides
    shape = xpad.shape[:2] + tuple(out_hw) + tuple(kernel)
    strides = (sn, sc, sh * stride[0], sw * stride[1], sh, sw)
    return xp.lib.stride_tricks.as_strided(xpad, shape=shape, strides=strides)


def _tap_slice(i, j, stride, out_hw):
    return (slice(None), slice(None),
            slice(i, i + stride[0] * (out_hw[0] - 1) + 1, stride[0]),
            slice(j, j + stride[1] * (out_hw[1] - 1) + 1, stride[1]))


def _crop(a, padding, x_shape):
    ph, pw = padding
    return a[:, :, ph : ph + x_shape[2], pw : pw + x_shape[3]]


class MaxPool2d(Function):
    def __init__(self, kernel_size, stride, padding):
        self.args = (kernel_size, stride, padding)

    def forward(self, x):
        xp = get_array_module(x)
        self.kernel, self.stride, self.padding, self.out_hw = _geometry(x, *self.args)
        xpad = pad_spatial(x, self.padding, value=-xp.inf)
        flat = _tap_windows(xpad, self.kernel, self.stride, self.out_hw).reshape(*x.shape[:2], *self.out_hw, -1)
        self.argmax = flat.argmax(axis=-1)  # the first maximum gets the gradient
        self.x_shape, self.padded_shape = x.shape, xpad.shape
        return xp.take_along_axis(flat, self.argmax[..., None], axis=-1)[..., 0]

    def backward(self, g):
        xp = get_array_module(g)
        out = xp.zeros(self.padded_shape, dtype=g.dtype)
        kh, kw = self.kernel
        for t in range(kh * kw):
            i, j = divmod(t, kw)
            out[_tap_slice(i, j, self.stride, self.out_hw)] += g * (self.argmax == t)
        return _crop(out, self.padding, self.x_shape)


class AvgPool2d(Function):
    """Average pooling; padded zeros count in the divisor (PyTorch's count_include_pad=True)."""

    def __init__(self, kernel_size, stride, padding):
        self.args = (kernel_size, stride, padding)

    def forward(self, x):
        self.kernel, self.stride, self.padding, self.out_hw = _geometry(x, *self.args)
        xpad = pad_spatial(x, self.padding)
        self.x_shape, self.padded_shape = x.shape, xpad.shape
        return _tap_windows(xpad, self.kernel, self.stride, self.out_hw).mean(axis=(-2, -1))

    def backward(self, g):
        xp = get_array_module(g)
        out = xp.zeros(self.padded_shape, dtype=g.dtype)
        kh, kw = self.kernel
        share = g / (kh * kw)
        for i in range(kh):
            for j in range(kw):
                out[_tap_slice(i, j, self.stride, self.out_hw)] += share
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
