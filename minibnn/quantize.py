"""Quantizers with straight-through gradients (DESIGN.md, "Semantics").

- sign: +1 for x >= 0, -1 below (sign(0) = +1).
- ste_sign: sign forward; backward passes the gradient where |x| <= clip (None: everywhere).
- approx_sign: sign forward; Bi-Real's backward 2 - 2|x| inside |x| <= 1.
- k-bit activations (2..31): clip to [0, 1], round((2^k - 1) x) / (2^k - 1), straight through.
- k-bit weights (2..31), DoReFa: 2 * quantize_k(tanh(w) / (2 max|tanh w|) + 1/2) - 1.
- 32 bits is float: unchanged.
"""
from __future__ import annotations

import numbers

import numpy as np

from minibnn.autograd import Function, Tensor
from minibnn.backend import get_array_module
from minibnn.functional import activation, math

MIN_BITS, MAX_BITS = 1, 32


def check_bits(bits, what: str = "bits", owner: str = "quantizer") -> int:
    """Return ``bits`` if it is an int in 1..32, else raise a ValueError naming ``owner``."""
    integer = isinstance(bits, numbers.Integral) and not isinstance(bits, (bool, np.bool_))
    if not integer or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{owner}: {what} must be an integer in {MIN_BITS}..{MAX_BITS} "
                         f"(1 = binary, 32 = float), got {bits!r}")
    return int(bits)  # NumPy integers (e.g. read from an .npz) are integers too


def binarize(x):
    """sign on a raw array: +1 where x >= 0, -1 elsewhere, same dtype."""
    xp = get_array_module(x)
    return xp.where(x >= 0, 1, -1).astype(x.dtype, copy=False)


class SteSign(Function):
    def __init__(self, clip: float | None):
        self.clip = clip

    def forward(self, x):
        if self.clip is not None:
            self.mask = abs(x) <= self.clip
        return binarize(x)

    def backward(self, g):
        return g if self.clip is None else g * self.mask


class ApproxSign(Function):
    def forward(self, x):
        self.x = x
        return binarize(x)

    def backward(self, g):
        xp = get_array_module(g)
        return g * xp.maximum(2 - 2 * abs(self.x), 0)


class RoundSte(Function):
    """round(x * levels) / levels forward, identity backward."""

    def __init__(self, levels: int):
        self.levels = levels

    def forward(self, x):
        xp = get_array_module(x)
        return xp.round(x * self.levels) / self.levels

    def backward(self, g):
        return g


def sign(x) -> Tensor:
    """Binarize to +-1 (sign(0) = +1) with an identity straight-through gradient."""
    return SteSign.apply(x, clip=None)


def ste_sign(x, clip: float | None = 1.0) -> Tensor:
    """Binarize to +-1; the gradient passes where |x| <= clip (everywhere when clip is None)."""
    return SteSign.apply(x, clip=clip)


def approx_sign(x) -> Tensor:
    """Binarize to +-1 with Bi-Real's gradient 2 - 2|x| for |x| <= 1, else 0."""
    return ApproxSign.apply(x)


def quantize_unit(x, bits: int) -> Tensor:
    """Round values in [0, 1] to 2^bits levels, straight through."""
    return RoundSte.apply(x, levels=2**bits - 1)


def quantize_activation(x, bits: int, clip: float | None = 1.0) -> Tensor:
    """Quantize activations to ``bits`` (1: ste_sign with ``clip``; 2..31: [0,1] grid; 32: identity)."""
    check_bits(bits, "act_bit", "quantize_activation")
    if bits == 32:
        return x if isinstance(x, Tensor) else Tensor(x)
    if bits == 1:
        return ste_sign(x, clip)
    return quantize_unit(activation.hardtanh(x, 0.0, 1.0), bits)


def quantize_weight(w, bits: int) -> Tensor:
    """Quantize weights to ``bits`` (1: sign; 2..31: DoReFa onto [-1, 1]; 32: identity)."""
    check_bits(bits, "weight_bit", "quantize_weight")
    if bits == 32:
        return w if isinstance(w, Tensor) else Tensor(w)
    if bits == 1:
        return sign(w)
    t = activation.tanh(w)
    unit = t / (2 * math.max(math.abs(t)) + 1e-12) + 0.5  # eps: all-zero weights map to 0
    return 2 * quantize_unit(unit, bits) - 1
