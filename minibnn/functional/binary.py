"""Binary and k-bit layers: exact integer forward, straight-through backward.

The inputs are already +-1 (the Q-layer applied its sign / STE quantizers). The forward
pass packs them into bits and runs the backend's ``xnor_gemm`` / ``binary_conv2d``; the
integer results equal the float products of the +-1 tensors exactly (sums of +-1 are
integers below 2^24). The backward pass is the float one of linear / conv2d on the same
+-1 tensors, so training and packed inference share their kernels.

k-bit layers (act_bit 2..8, weight_bit 1..8) take quantized values n / (2^k - 1); their forward pass
computes the integer dot of the n's exactly (a float matmul or convolution of integers, float64 where
float32 could round) and scales it once, which is what the packed bit-serial layers compute with
popcounts (minibnn.backend.bitserial): packed k-bit inference equals the simulation bit for bit.
"""
from __future__ import annotations

import numpy as np

from minibnn import backend
from minibnn.autograd import Function, Tensor
from minibnn.functional.conv import Conv2d, conv_output_size, pad_spatial, pair
from minibnn.functional.linear import check_shapes

PAD_VALUES = (0, 1, -1)


class XnorLinear(Function):
    """y = xq @ wq.T for +-1 matrices xq (batch, in) and wq (out, in), by XNOR and popcount."""

    def forward(self, xq, wq):
        check_shapes(xq, wq)
        kernels = backend.kernels()
        xp = backend.get_array_module(xq)
        out = xp.empty((xq.shape[0], wq.shape[0]), dtype=np.int32)
        # check_tails=False: pack_bits leaves the tail bits 0 (the scan would cost a GPU sync per layer)
        kernels.xnor_gemm(kernels.pack_bits(xq, axis=1), kernels.pack_bits(wq, axis=1), xq.shape[1], out,
                          check_tails=False)
        self.xq, self.wq = xq, wq
        return out.astype(xq.dtype)

    def backward(self, g):
        gx = g @ self.wq if self.needs_input_grad[0] else None
        gw = g.T @ self.xq if self.needs_input_grad[1] else None
        return gx, gw


class XnorConv2d(Function):
    """2-D convolution of +-1 NCHW ``xq`` with +-1 (out, in, kh, kw) ``wq``, padding with ``pad_value``."""

    def __init__(self, stride, padding, pad_value: int):
        if pad_value not in PAD_VALUES:
            raise ValueError(f"xnor_conv2d: pad_value must be one of {PAD_VALUES}, got {pad_value!r}")
        self.stride, self.padding, self.pad_value = pair(stride, "stride"), pair(padding, "padding"), pad_value

    def forward(self, xq, wq):
        Conv2d(self.stride, self.padding, 1, 1)._check(xq, wq, None)
        kernels = backend.kernels()
        xp = backend.get_array_module(xq)
        (n, c, h, w), o = xq.shape, wq.shape[0]
        out_hw = [conv_output_size(size, k, s, p) for size, k, s, p in
                  zip((h, w), wq.shape[2:], self.stride, self.padding)]
        if min(out_hw) < 1:
            raise ValueError(f"xnor_conv2d: input {tuple(xq.shape)} is smaller than the kernel {tuple(wq.shape[2:])}")
        # pack along channels from the NHWC view: free when the activations are NHWC in memory
        x_words = kernels.pack_bits(xq.transpose(0, 2, 3, 1), axis=-1)
        w_words = kernels.pack_bits(wq.transpose(0, 2, 3, 1), axis=-1)
        out = xp.empty((n, *out_hw, o), dtype=np.int32)
        kernels.binary_conv2d(x_words, w_words, c, self.stride, self.padding, self.pad_value, out,
                              check_tails=False)
        self.xq, self.wq = xq, wq
        return out.astype(xq.dtype).transpose(0, 3, 1, 2)

    def backward(self, g):
        # straight through: the float convolution's backward on the (padded) +-1 tensors
        explicit = self.pad_value != 0
        conv = Conv2d(self.stride, 0 if explicit else self.padding, 1, 1)
        conv.needs_input_grad = self.needs_input_grad
        conv.prepare(pad_spatial(self.xq, self.padding, self.pad_value) if explicit else self.xq, self.wq)
        gx, gw = conv.backward(g)
        if explicit and gx is not None:  # the constant padding has no gradient
            (ph, pw), (h, w) = self.padding, self.xq.shape[2:]
            gx = gx[:, :, ph : ph + h, pw : pw + w]
        return gx, gw


# ---------------------------------------------------------------- k-bit layers: exact integer forward

def _integers(a, levels: int, dtype):
    """The integers behind quantized values a = n / levels (exact: a * levels is within rounding of n)."""
    return backend.get_array_module(a).rint(a * levels).astype(dtype, copy=False)


def _exact_dtype(k: int, la: int, lb: int):
    """float32 sums of integer products are exact below 2^24; beyond that float64 (exact below 2^53)."""
    return np.float32 if k * la * lb < 2**24 else np.float64


class KbitLinear(XnorLinear):
    """y = xq @ wq.T for k-bit xq = q / (2^a - 1) and DoReFa wq = s / (2^b - 1), computed exactly.

    D = q @ s.T is an integer (a float matmul of the integers, exact), then y = D / ((2^a - 1)
    (2^b - 1)) rounded once: the value the packed bit-serial layer computes from the same D. The
    backward pass is linear's, on xq and wq (straight through), as for the binary layers.
    """

    def __init__(self, act_bit: int, weight_bit: int):
        self.la, self.lb = 2**act_bit - 1, 2**weight_bit - 1

    def forward(self, xq, wq):
        check_shapes(xq, wq)
        dtype = _exact_dtype(xq.shape[1], self.la, self.lb)
        d = _integers(xq, self.la, dtype) @ _integers(wq, self.lb, dtype).T
        self.xq, self.wq = xq, wq
        return d.astype(xq.dtype) / xq.dtype.type(self.la * self.lb)


class KbitConv2d(XnorConv2d):
    """The k-bit convolution of xq (NCHW) and DoReFa wq, exact as KbitLinear; pad_value pads xq."""

    def __init__(self, stride, padding, pad_value: int, act_bit: int, weight_bit: int):
        super().__init__(stride, padding, pad_value)
        self.la, self.lb = 2**act_bit - 1, 2**weight_bit - 1

    def forward(self, xq, wq):
        Conv2d(self.stride, self.padding, 1, 1)._check(xq, wq, None)
        dtype = _exact_dtype(wq[0].size, self.la, self.lb)
        q, s = _integers(xq, self.la, dtype), _integers(wq, self.lb, dtype)
        if self.pad_value == 0:  # zero padding is level 0
            d = Conv2d(self.stride, self.padding, 1, 1).forward(q, s)
        else:  # the float simulation pads xq with +-1, i.e. the integers with +-(2^a - 1)
            d = Conv2d(self.stride, 0, 1, 1).forward(pad_spatial(q, self.padding, self.pad_value * self.la), s)
        self.xq, self.wq = xq, wq
        return d.astype(xq.dtype) / xq.dtype.type(self.la * self.lb)


def kbit_linear(xq, wq, act_bit: int, weight_bit: int) -> Tensor:
    """k-bit xq @ wq.T with an exact integer forward (see KbitLinear), straight-through backward."""
    return KbitLinear.apply(xq, wq, act_bit=act_bit, weight_bit=weight_bit)


def kbit_conv2d(xq, wq, act_bit: int, weight_bit: int, stride=1, padding=0, pad_value: int = 0) -> Tensor:
    """k-bit convolution with an exact integer forward (see KbitLinear), padded with pad_value."""
    return KbitConv2d.apply(xq, wq, stride=stride, padding=padding, pad_value=pad_value, act_bit=act_bit,
                            weight_bit=weight_bit)


def xnor_linear(xq, wq) -> Tensor:
    """+-1 matrix product xq @ wq.T on the backend's xnor_gemm (straight-through backward)."""
    return XnorLinear.apply(xq, wq)


def xnor_conv2d(xq, wq, stride=1, padding=0, pad_value: int = 0) -> Tensor:
    """+-1 convolution on the backend's binary_conv2d, padded with pad_value (0, +1 or -1)."""
    return XnorConv2d.apply(xq, wq, stride=stride, padding=padding, pad_value=pad_value)
