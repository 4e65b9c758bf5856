"""The autograd engine: Tensor, Function, backward(), no_grad.

A Function computes on raw backend arrays (NumPy or CuPy): ``forward(*arrays)`` returns
the output array and saves what ``backward(grad)`` needs; ``backward`` returns one
gradient per input (None where not needed). ``Function.apply`` wraps that in Tensors
and records the graph; ``Tensor.backward`` walks it in reverse topological order.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from minibnn import backend

_grad_enabled = True


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Context manager: operations inside record no graph (inference, optimizer steps)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    """True unless inside ``no_grad()``."""
    return _grad_enabled


def as_array(data: Any, dtype=None):
    """Convert ``data`` to an array of the current backend (float32 for floats unless ``dtype``).

    An array of the other device is moved: NumPy input is copied to the GPU on the ``cuda``
    backend (this is how a batch reaches the device, once), CuPy input to host memory on the
    CPU backends.
    """
    if isinstance(data, Tensor):
        data = data.data
    xp = backend.xp()
    if backend.is_device_array(data):
        data = backend.move_to(xp, data)
    if dtype is None:
        kind = getattr(getattr(data, "dtype", None), "kind", None)
        if kind in ("b", "i", "u"):
            dtype = data.dtype  # integer and bool arrays keep their type (labels, masks)
        else:
            dtype = np.float32
    return xp.asarray(data, dtype=dtype)


class Tensor:
    """An array with an optional gradient; operations on it build the autograd graph."""

    __array_priority__ = 1000  # make ndarray <op> Tensor dispatch to Tensor's reflected ops

    def __init__(self, data: Any, requires_grad: bool = False, dtype=None) -> None:
        self.data = as_array(data, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx: Function | None = None

    @classmethod
    def _wrap(cls, data, requires_grad: bool = False) -> "Tensor":
        """Wrap a backend array as it is (no conversion): used by Function.apply."""
        t = cls.__new__(cls)
        t.data, t.grad, t.requires_grad, t._ctx = data, None, requires_grad, None
        return t

    # ---- array-like properties -------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return int(self.data.size)

    def __len__(self) -> int:
        return len(self.data)

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the GPU when needed)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        """The value of a one-element tensor as a Python number."""
        return self.data.item()

    def detach(self) -> "Tensor":
        """A tensor sharing the data, cut from the graph."""
        return Tensor._wrap(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.numpy()!r}{grad})"

    # ---- autograd ----------------------------------------------------------------------
    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into ``.grad`` of every leaf that requires grad."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a one-element tensor, got shape {self.shape}"
                )
            grad = xp.ones_like(self.data)
        else:
            grad = xp.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if grad.shape != self.data.shape:
                raise ValueError(f"gradient shape {grad.shape} does not match tensor shape {self.shape}")
        grads: dict[int, Any] = {id(self): grad}
        for node in _topological_order(self):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            fn = node._ctx
            if fn is None:  # a leaf: accumulate like PyTorch (own copy: g may be shared or a view)
                node.grad = g.copy() if node.grad is None else node.grad + g
                continue
            if getattr(fn, "released", False):
                raise RuntimeError(
                    "backward() through a graph that was already used and freed; "
                    "pass retain_graph=True to the first backward() to go through it twice"
                )
            input_grads = fn.backward(g)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            for t, needs, ig in zip(fn.inputs, fn.needs_input_grad, input_grads):
                if not needs or ig is None:
                    continue
                if ig.shape != t.data.shape:
                    raise RuntimeError(
                        f"{type(fn).__name__}.backward returned a gradient of shape {ig.shape} "
                        f"for an input of shape {t.shape}"
                    )
                key = id(t)
                grads[key] = ig if key not in grads else grads[key] + ig
            if not retain_graph:
                fn.release()

    # ---- operators (implemented as Functions in minibnn.functional) -------------------
    def __add__(self, other): return _math.add(self, other)
    def __radd__(self, other): return _math.add(other, self)
    def __sub__(self, other): return _math.sub(self, other)
    def __rsub__(self, other): return _math.sub(other, self)
    def __mul__(self, other): return _math.mul(self, other)
    def __rmul__(self, other): return _math.mul(other, self)
    def __truediv__(self, other): return _math.div(self, other)
    def __rtruediv__(self, other): return _math.div(other, self)
    def __neg__(self): return _math.neg(self)
    def __pow__(self, exponent: float): return _math.power(self, exponent)
    def __matmul__(self, other): return _math.matmul(self, other)
    def __rmatmul__(self, other): return _math.matmul(other, self)
    def __getitem__(self, index): return _shape.getitem(self, index)

    def reshape(self, *shape) -> "Tensor":
        """View with a new shape (one dimension may be -1)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _shape.reshape(self, shape)

    def transpose(self, *axes) -> "Tensor":
        """Permute the axes (reverse them when none are given)."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _shape.transpose(self, axes or None)

    @property
    def T(self) -> "Tensor":
        return _shape.transpose(self, None)

    def sum(self, axis=None, keepdims: bool = False) -> "Tensor":
        """Sum over ``axis`` (all axes when None)."""
        return _math.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims: bool = False) -> "Tensor":
        """Mean over ``axis`` (all axes when None)."""
        return _math.mean(self, axis, keepdims)

    def max(self, axis=None, keepdims: bool = False) -> "Tensor":
        """Maximum over ``axis``; the gradient is shared equally among ties."""
        return _math.max(self, axis, keepdims)

    def exp(self) -> "Tensor": return _math.exp(self)
    def log(self) -> "Tensor": return _math.log(self)
    def abs(self) -> "Tensor": return _math.abs(self)


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors reachable from ``root`` through the graph, outputs before inputs (iterative DFS)."""
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._ctx is not None:
            for t in node._ctx.inputs:
                if t.requires_grad and id(t) not in visited:
                    stack.append((t, False))
    order.reverse()
    return order


class Function:
    """One differentiable operation: override ``forward`` and ``backward`` on raw arrays."""

    inputs: tuple[Tensor, ...] = ()
    needs_input_grad: tuple[bool, ...] = ()

    def forward(self, *arrays):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad):  # pragma: no cover - abstract
        raise NotImplementedError

    def release(self) -> None:
        """Drop what was saved for backward (frees memory once the graph was used)."""
        needs = self.needs_input_grad
        self.__dict__.clear()
        self.needs_input_grad, self.released = needs, True

    @classmethod
    def apply(cls, *inputs: Any, **params: Any) -> Tensor:
        """Run the op on Tensors (or arrays / numbers, treated as constants); record the graph."""
        fn = cls(**params)
        ref = next((x for x in inputs if isinstance(x, Tensor)), None)
        tensors = tuple(_as_input(x, ref) for x in inputs)
        fn.needs_input_grad = tuple(t.requires_grad for t in tensors)
        _check_same_device(cls.__name__, tensors)
        out = fn.forward(*(t.data for t in tensors))
        requires_grad = _grad_enabled and any(fn.needs_input_grad)
        result = Tensor._wrap(out, requires_grad)
        if requires_grad:
            fn.inputs = tensors
            result._ctx = fn
        return result


def _check_same_device(op: str, tensors: tuple[Tensor, ...]) -> None:
    """ValueError naming the op when its inputs live on different devices (NumPy and CuPy arrays)."""
    if len(tensors) > 1:
        places = {backend.is_device_array(t.data) for t in tensors}
        if len(places) > 1:
            shapes = ", ".join(f"{type(t.data).__module__.split('.')[0]} {tuple(t.data.shape)}" for t in tensors)
            raise ValueError(f"{op}: inputs on different devices ({shapes}); move them to one backend first "
                             "(model.to(minibnn.backend.current()), or create the tensors after minibnn.use(...))")


def _as_input(x: Any, ref: Tensor | None) -> Tensor:
    """Wrap a constant input; Python numbers and float arrays take the dtype of the first Tensor input."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (int, float)) and ref is not None:
        return Tensor._wrap(backend.get_array_module(ref.data).asarray(x, dtype=ref.dtype))
    if ref is not None and ref.dtype.kind == "f" and getattr(getattr(x, "dtype", None), "kind", None) == "f":
        return Tensor(x, dtype=ref.dtype)  # float array constants follow the tensor (no float64 -> float32 loss)
    return Tensor(x)


from minibnn.functional import math as _math  # noqa: E402  (operators need Tensor defined first)
from minibnn.functional import shape as _shape  # noqa: E402
