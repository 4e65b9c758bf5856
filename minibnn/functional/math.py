"""Elementwise arithmetic, matmul and reductions (the ops behind Tensor's operators)."""
from __future__ import annotations

from minibnn.autograd import Function, Tensor
from minibnn.backend import get_array_module


def sum_to(grad, shape: tuple[int, ...]):
    """Sum a broadcast gradient back down to ``shape`` (undo NumPy broadcasting)."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1
    )
    out = grad.sum(axis=axes, keepdims=True)
    return out.reshape(shape)


class Add(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a + b

    def backward(self, g):
        return sum_to(g, self.shapes[0]), sum_to(g, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a - b

    def backward(self, g):
        return sum_to(g, self.shapes[0]), sum_to(-g, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        ga = sum_to(g * self.b, self.a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(g * self.a, self.b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):
        ga = sum_to(g / self.b, self.a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(-g * self.a / (self.b * self.b), self.b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, g):
        return -g


class Power(Function):
    def __init__(self, exponent: float):
        self.exponent = exponent

    def forward(self, a):
        self.a = a
        return a ** self.exponent

    def backward(self, g):
        return g * self.exponent * self.a ** (self.exponent - 1)


class Exp(Function):
    def forward(self, a):
        self.y = get_array_module(a).exp(a)
        return self.y

    def backward(self, g):
        return g * self.y


class Log(Function):
    def forward(self, a):
        self.a = a
        return get_array_module(a).log(a)

    def backward(self, g):
        return g / self.a


class Abs(Function):
    def forward(self, a):
        self.a = a
        return get_array_module(a).abs(a)  # not abs(): this module's abs() shadows the builtin

    def backward(self, g):
        return g * get_array_module(self.a).sign(self.a)


class MatMul(Function):
    """a @ b for 2-D (or batched) operands."""

    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0 or a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not align")
        self.a, self.b = a, b
        return a @ b

    def backward(self, g):
        a, b = self.a, self.b
        xp = get_array_module(g)
        if a.ndim == 1 or b.ndim == 1:  # rare: promote to 2-D (re-insert the dropped axes of g) and back
            a2 = a[None, :] if a.ndim == 1 else a
            b2 = b[:, None] if b.ndim == 1 else b
            g2 = xp.expand_dims(g, -1) if b.ndim == 1 else g
            g2 = xp.expand_dims(g2, -2) if a.ndim == 1 else g2
            ga = sum_to(g2 @ xp.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape) if self.needs_input_grad[0] else None
            gb = sum_to(xp.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape) if self.needs_input_grad[1] else None
            return ga, gb
        ga = sum_to(g @ xp.swapaxes(b, -1, -2), a.shape) if self.needs_input_grad[0] else None
        gb = sum_to(xp.swapaxes(a, -1, -2) @ g, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


def _normalize_axis(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(a % ndim for a in axes)


class Sum(Function):
    def __init__(self, axis=None, keepdims: bool = False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, a):
        self.shape = a.shape
        self.axes = _normalize_axis(self.axis, a.ndim)
        return a.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, g):
        xp = get_array_module(g)
        if not self.keepdims:
            g = xp.expand_dims(g, self.axes)
        return xp.broadcast_to(g, self.shape).copy()


class Max(Function):
    """Maximum over axes; ties share the gradient equally (like numpy's amax subgradient)."""

    def __init__(self, axis=None, keepdims: bool = False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, a):
        self.axes = _normalize_axis(self.axis, a.ndim)
        y = a.max(axis=self.axes, keepdims=True)
        self.mask = a == y
        return y if self.keepdims else y.squeeze(self.axes)

    def backward(self, g):
        xp = get_array_module(g)
        if not self.keepdims:
            g = xp.expand_dims(g, self.axes)
        share = self.mask / self.mask.sum(axis=self.axes, keepdims=True)
        return (g * share).astype(g.dtype, copy=False)


def add(a, b) -> Tensor:
    """a + b with broadcasting."""
    return Add.apply(a, b)


def sub(a, b) -> Tensor:
    """a - b with broadcasting."""
    return Sub.apply(a, b)


def mul(a, b) -> Tensor:
    """a * b with broadcasting."""
    return Mul.apply(a, b)


def div(a, b) -> Tensor:
    """a / b with broadcasting."""
    return Div.apply(a, b)


def neg(a) -> Tensor:
    """-a."""
    return Neg.apply(a)


def power(a, exponent: float) -> Tensor:
    """a ** exponent for a constant exponent."""
    return Power.apply(a, exponent=exponent)


def exp(a) -> Tensor:
    """Elementwise e**a."""
    return Exp.apply(a)


def log(a) -> Tensor:
    """Elementwise natural logarithm."""
    return Log.apply(a)


def abs(a) -> Tensor:  # noqa: A001 - mirrors numpy's name
    """Elementwise |a| (gradient sign(a), 0 at 0)."""
    return Abs.apply(a)


def matmul(a, b) -> Tensor:
    """Matrix product a @ b."""
    return MatMul.apply(a, b)


def sum(a, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Sum over ``axis``."""
    return Sum.apply(a, axis=axis, keepdims=keepdims)


def mean(a, axis=None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis``."""
    a = a if isinstance(a, Tensor) else Tensor(a)
    axes = _normalize_axis(axis, a.ndim)
    count = 1
    for ax in axes:
        count *= a.shape[ax]
    return Sum.apply(a, axis=axis, keepdims=keepdims) * (1.0 / count)


def max(a, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Maximum over ``axis``."""
    return Max.apply(a, axis=axis, keepdims=keepdims)
