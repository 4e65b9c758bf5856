"""Shape ops: reshape, transpose, indexing, flatten, constant padding."""
from __future__ import annotations

from minibnn.autograd import Function, Tensor
from minibnn.backend import get_array_module


class Reshape(Function):
    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)

    def forward(self, a):
        self.in_shape = a.shape
        try:
            return a.reshape(self.shape)
        except ValueError:
            raise ValueError(f"cannot reshape a tensor of shape {tuple(a.shape)} to {self.shape}") from None

    def backward(self, g):
        return g.reshape(self.in_shape)


class Transpose(Function):
    def __init__(self, axes: tuple[int, ...] | None):
        self.axes = axes

    def forward(self, a):
        self.axes = tuple(reversed(range(a.ndim))) if self.axes is None else tuple(self.axes)
        return a.transpose(self.axes)

    def backward(self, g):
        inverse = [0] * len(self.axes)
        for i, ax in enumerate(self.axes):
            inverse[ax] = i
        return g.transpose(inverse)


class GetItem(Function):
    def __init__(self, index):
        self.index = index.data if isinstance(index, Tensor) else index

    def forward(self, a):
        self.in_shape, self.dtype = a.shape, a.dtype
        self.index = _index_for(a, self.index)
        return a[self.index]

    def backward(self, g):
        xp = get_array_module(g)
        out = xp.zeros(self.in_shape, dtype=self.dtype)
        if _is_basic_index(self.index):
            out[self.index] = g  # slices and ints select each element at most once
        else:
            xp.add.at(out, self.index, g)  # correct with repeated indices too
        return out


def _index_for(a, index):
    """``index`` with its integer/bool arrays on ``a``'s device (NumPy index arrays into a CuPy array)."""
    xp = get_array_module(a)
    parts = index if isinstance(index, tuple) else (index,)
    moved = tuple(xp.asarray(p) if hasattr(p, "dtype") and hasattr(p, "shape") else p for p in parts)
    return moved if isinstance(index, tuple) else moved[0]


def _is_basic_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, (int, slice)) or p is None or p is Ellipsis for p in parts)


class Pad(Function):
    """Constant padding of the last two axes (NCHW spatial padding)."""

    def __init__(self, padding: tuple[int, int, int, int], value: float):
        self.padding, self.value = padding, value  # (top, bottom, left, right)

    def forward(self, a):
        xp = get_array_module(a)
        top, bottom, left, right = self.padding
        width = [(0, 0)] * (a.ndim - 2) + [(top, bottom), (left, right)]
        return xp.pad(a, width, mode="constant", constant_values=self.value)

    def backward(self, g):
        top, bottom, left, right = self.padding
        h, w = g.shape[-2], g.shape[-1]
        return g[..., top : h - bottom, left : w - right]


def reshape(x, shape: tuple[int, ...]) -> Tensor:
    """View ``x`` with a new shape."""
    return Reshape.apply(x, shape=shape)


def transpose(x, axes: tuple[int, ...] | None = None) -> Tensor:
    """Permute axes (reverse them when None)."""
    return Transpose.apply(x, axes=axes)


def getitem(x, index) -> Tensor:
    """x[index] with NumPy indexing; the gradient scatters back."""
    return GetItem.apply(x, index=index)


def flatten(x, start_dim: int = 1, end_dim: int = -1) -> Tensor:
    """Merge axes start_dim..end_dim into one (nn.Flatten's defaults: keep the batch axis)."""
    ndim = len(x.shape)
    start, end = start_dim % ndim, end_dim % ndim
    if start > end:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for shape {tuple(x.shape)}")
    shape = tuple(x.shape[:start]) + (-1,) + tuple(x.shape[end + 1 :])
    return Reshape.apply(x, shape=shape)


def pad2d(x, padding: int | tuple[int, int], value: float = 0.0) -> Tensor:
    """Pad the two spatial axes of NCHW ``x`` by ``padding`` (int or (ph, pw)) with ``value``."""
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return Pad.apply(x, padding=(ph, ph, pw, pw), value=float(value))
