"""2-D convolution as im2col (a strided view, no loop over pixels) + one matmul.

The input is NCHW, but inside the op the activations are read channels-last (NHWC):
each receptive field is then kh*kw runs of C contiguous floats, so the im2col copy
and its adjoint (col2im, fused with the input-gradient matmul) stream through memory.
The output is returned as an NCHW view of the NHWC matmul result; NumPy's elementwise
ops keep that layout for the next layer.
"""
from __future__ import annotations

from minibnn.autograd import Function, Tensor
from minibnn.backend import get_array_module


def pair(v: int | tuple[int, int], name: str = "value") -> tuple[int, int]:
    """Turn an int or a pair into a pair of non-negative ints."""
    a, b = (v, v) if isinstance(v, int) else tuple(v)
    if not (isinstance(a, int) and isinstance(b, int)) or a < 0 or b < 0:
        raise ValueError(f"{name} must be a non-negative int or a pair of them, got {v!r}")
    return a, b


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Output length along one axis (PyTorch's formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pad_spatial(x, padding: tuple[int, int], value: float = 0.0):
    """Pad the two spatial axes of an NCHW array."""
    if padding == (0, 0):
        return x
    xp = get_array_module(x)
    ph, pw = padding
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="constant", constant_values=value)


class Geometry:
    """Kernel, stride, padding, dilation and output size of one convolution."""

    def __init__(self, in_hw, kernel, stride, padding, dilation) -> None:
        self.kernel, self.stride, self.padding, self.dilation = kernel, stride, padding, dilation
        self.out_hw = tuple(conv_output_size(in_hw[a], kernel[a], stride[a], padding[a], dilation[a])
                            for a in (0, 1))

    def tap(self, i: int, j: int) -> tuple[slice, slice]:
        """Rows and columns of the padded input that kernel tap (i, j) reads, over all outputs."""
        r, s = i * self.dilation[0], j * self.dilation[1]
        (sh, sw), (oh, ow) = self.stride, self.out_hw
        return slice(r, r + sh * (oh - 1) + 1, sh), slice(s, s + sw * (ow - 1) + 1, sw)


def im2col_nhwc(x_nhwc, geo: Geometry):
    """(N, H, W, C) -> columns (N*OH*OW, kh*kw*C): one row per output position."""
    xp = get_array_module(x_nhwc)
    ph, pw = geo.padding
    if ph or pw:
        x_nhwc = xp.pad(x_nhwc, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    n, _, _, c = x_nhwc.shape
    sn, sh, sw, sc = x_nhwc.strides
    (kh, kw), (oh, ow) = geo.kernel, geo.out_hw
    view = xp.lib.stride_tricks.as_strided(
        x_nhwc,
        shape=(n, oh, ow, kh, kw, c),
        strides=(sn, sh * geo.stride[0], sw * geo.stride[1], sh * geo.dilation[0], sw * geo.dilation[1], sc),
    )
    return view.reshape(n * oh * ow, kh * kw * c)  # the im2col copy


def conv_input_grad_nhwc(g_rows, w_taps, x_shape_nhwc, geo: Geometry):
    """Gradient of the NHWC input: col2im fused with the matmul, one tap at a time.

    ``g_rows`` is the output gradient (N*OH*OW, O) and ``w_taps`` the weights as
    (O, kh, kw, C). Each tap's (N*OH*OW, C) product is added straight into the input
    positions that tap read, so the (N*OH*OW, kh*kw*C) column matrix never exists.
    """
    xp = get_array_module(g_rows)
    n, h, w, c = x_shape_nhwc
    (kh, kw), (oh, ow), (ph, pw) = geo.kernel, geo.out_hw, geo.padding
    out = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=g_rows.dtype)
    for i in range(kh):  # a loop over kernel taps, not over pixels
        for j in range(kw):
            rows, columns = geo.tap(i, j)
            out[:, rows, columns, :] += (g_rows @ w_taps[:, i, j, :]).reshape(n, oh, ow, c)
    return out[:, ph : ph + h, pw : pw + w, :]


class Conv2d(Function):
    def __init__(self, stride, padding, dilation, groups: int):
        self.stride, self.padding = pair(stride, "stride"), pair(padding, "padding")
        self.dilation, self.groups = pair(dilation, "dilation"), groups
        if min(self.stride) < 1 or min(self.dilation) < 1 or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"conv2d: stride, dilation and groups must be >= 1, got "
                             f"{self.stride}, {self.dilation}, {groups}")

    def _check(self, x, w, b) -> None:
        g = self.groups
        if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[1] * g or w.shape[0] % g:
            raise ValueError(
                f"conv2d: input of shape {tuple(x.shape)} (N, C, H, W) does not fit weight of shape "
                f"{tuple(w.shape)} (out, in/groups, kh, kw) with groups={g}"
            )
        if b is not None and b.shape != (w.shape[0],):
            raise ValueError(f"conv2d: bias of shape {tuple(b.shape)} does not fit weight {tuple(w.shape)}")

    def forward(self, x, w, b=None):
        self._check(x, w, b)
        xp = get_array_module(x)
        self.prepare(x, w, b is not None)
        if self.groups == 1:
            y = self.cols[0] @ self.w_rows[0].T
        else:
            y = xp.concatenate([cols @ wg.T for cols, wg in zip(self.cols, self.w_rows)], axis=1)
        if b is not None:
            y += b
        return y.reshape(x.shape[0], *self.geo.out_hw, w.shape[0]).transpose(0, 3, 1, 2)

    def prepare(self, x, w, has_bias: bool = False) -> None:
        """Geometry, im2col columns and weight rows: all that backward() needs."""
        xp = get_array_module(x)
        geo = Geometry(x.shape[2:], w.shape[2:], self.stride, self.padding, self.dilation)
        if min(geo.out_hw) < 1:
            raise ValueError(f"conv2d: input {tuple(x.shape)} is smaller than the kernel {tuple(w.shape[2:])} "
                             f"(padding {self.padding}, dilation {self.dilation})")
        x_nhwc = xp.ascontiguousarray(x.transpose(0, 2, 3, 1))
        self.w_rows = self._weight_rows(w)  # (groups, O/g, kh*kw*C/g)
        self.cols = [im2col_nhwc(xg, geo) for xg in self._split_channels(x_nhwc)]
        self.geo, self.w_shape, self.x_shape_nhwc, self.has_bias = geo, w.shape, x_nhwc.shape, has_bias

    def _weight_rows(self, w):
        g, (o, c, kh, kw) = self.groups, w.shape
        return w.transpose(0, 2, 3, 1).reshape(g, o // g, kh * kw * c)  # (kh, kw, C) order, as the columns

    def _split_channels(self, x_nhwc):
        g = self.groups
        if g == 1:
            return [x_nhwc]
        c = x_nhwc.shape[3] // g
        return [x_nhwc[..., i * c : (i + 1) * c] for i in range(g)]

    def backward(self, grad):
        xp = get_array_module(grad)
        o, g = self.w_shape[0], self.groups
        g_rows = grad.transpose(0, 2, 3, 1).reshape(-1, o)  # free when grad is NHWC in memory
        og = o // g
        gx = gw = None
        if self.needs_input_grad[1]:
            _, c, kh, kw = self.w_shape
            gw = xp.concatenate([g_rows[:, i * og : (i + 1) * og].T @ self.cols[i] for i in range(g)])
            gw = gw.reshape(o, kh, kw, c).transpose(0, 3, 1, 2)
        if self.needs_input_grad[0]:
            _, c, kh, kw = self.w_shape
            shape = self.x_shape_nhwc[:3] + (c,)
            parts = [conv_input_grad_nhwc(g_rows[:, i * og : (i + 1) * og], self.w_rows[i].reshape(og, kh, kw, c),
                                          shape, self.geo) for i in range(g)]
            gx = (parts[0] if g == 1 else xp.concatenate(parts, axis=3)).transpose(0, 3, 1, 2)
        if self.has_bias:
            return gx, gw, grad.sum(axis=(0, 2, 3))
        return gx, gw


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """2-D convolution of NCHW ``x`` with (out, in/groups, kh, kw) weights (PyTorch's conv2d)."""
    params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return Conv2d.apply(x, w, **params) if b is None else Conv2d.apply(x, w, b, **params)
