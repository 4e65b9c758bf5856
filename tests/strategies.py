"""Hypothesis strategies shared by the core tests.

Shapes favour batch 1 and odd sizes; conv / pool geometries cover non-square kernels,
stride > 1, padding, dilation and groups; value helpers keep test inputs away from the
kinks where finite differences (or a straight-through mask) are ill-defined.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

SIDES = st.sampled_from([1, 2, 3, 5])  # 1 and odd sizes first (batch 1, unaligned widths)


def shapes(min_dims: int = 1, max_dims: int = 3, sides=SIDES) -> st.SearchStrategy[tuple[int, ...]]:
    """Small array shapes."""
    return st.lists(sides, min_size=min_dims, max_size=max_dims).map(tuple)


@st.composite
def arrays(draw, shape, lo: float = -2.0, hi: float = 2.0, dtype=np.float64) -> np.ndarray:
    """Uniform values in [lo, hi) from a drawn seed (varied values; hypothesis drives the seed)."""
    if not isinstance(shape, tuple):
        shape = draw(shape)
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).uniform(lo, hi, size=shape).astype(dtype)


def away_from(a: np.ndarray, points=(0.0,), margin: float = 1e-2) -> np.ndarray:
    """Shift values that lie within ``margin`` of any of ``points`` to distance ``margin`` (same side)."""
    a = np.array(a, dtype=np.float64, copy=True)
    for p in points:
        d = a - p
        near = np.abs(d) < margin
        a[near] = p + np.where(d[near] >= 0, margin, -margin)
    return a


@st.composite
def distinct_arrays(draw, shape, scale: float = 0.1) -> np.ndarray:
    """Pairwise distinct values (a random permutation, scaled and centred): no max ties."""
    if not isinstance(shape, tuple):
        shape = draw(shape)
    n = int(np.prod(shape))
    perm = draw(st.permutations(list(range(n))))
    return ((np.array(perm, dtype=np.float64) - (n - 1) / 2) * scale).reshape(shape)


@dataclass(frozen=True)
class ConvGeometry:
    n: int
    c: int
    h: int
    w: int
    o: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    bias: bool

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.o, self.c // self.groups, *self.kernel)

    def out_hw(self) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, s, p, d in zip((self.h, self.w), self.kernel, self.stride, self.padding, self.dilation)
        )


@st.composite
def conv_geometries(draw, max_groups: int = 3, max_kernel: int = 3, max_stride: int = 3,
                    max_padding: int = 2, max_dilation: int = 2, max_extra: int = 3) -> ConvGeometry:
    """A valid conv2d geometry (output at least 1x1) with small channel counts."""
    groups = draw(st.integers(1, max_groups))
    c = groups * draw(st.integers(1, 2))
    o = groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    stride = (draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride)))
    padding = (draw(st.integers(0, max_padding)), draw(st.integers(0, max_padding)))
    dilation = (draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation)))
    hw = []
    for k, p, d in zip(kernel, padding, dilation):
        smallest = max(1, d * (k - 1) + 1 - 2 * p)
        hw.append(draw(st.integers(smallest, smallest + max_extra)))
    return ConvGeometry(n=draw(st.sampled_from([1, 2])), c=c, h=hw[0], w=hw[1], o=o, kernel=kernel,
                        stride=stride, padding=padding, dilation=dilation, groups=groups,
                        bias=draw(st.booleans()))


@dataclass(frozen=True)
class PoolGeometry:
    x_shape: tuple[int, int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int] | None
    padding: tuple[int, int]


@st.composite
def pool_geometries(draw, max_kernel: int = 3, max_stride: int = 3, padding: bool = True) -> PoolGeometry:
    """A valid pooling geometry: padding at most half the kernel; stride None = kernel."""
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    stride = draw(st.none() | st.tuples(st.integers(1, max_stride), st.integers(1, max_stride)))
    pad = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2))) if padding else (0, 0)
    h = draw(st.integers(max(1, kernel[0] - 2 * pad[0]), kernel[0] + 4))
    w = draw(st.integers(max(1, kernel[1] - 2 * pad[1]), kernel[1] + 4))
    x_shape = (draw(st.sampled_from([1, 2])), draw(st.integers(1, 3)), h, w)
    return PoolGeometry(x_shape=x_shape, kernel=kernel, stride=stride, padding=pad)


bits = st.sampled_from([1, 2, 4, 32])
bad_bits = st.sampled_from([0, 33, 1.5, "1", True, -1, None])
