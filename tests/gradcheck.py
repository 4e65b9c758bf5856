"""Numerical gradient check (DeZero style): autograd against central finite differences.

Use float64 tensors: ``minibnn.Tensor(arr, requires_grad=True, dtype=np.float64)``
(float arrays otherwise become float32). The checked scalar is
``sum(fn(*inputs) * P)`` for a fixed random projection ``P``, so every output element
matters and a wrong sign or a transposed gradient cannot cancel out.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

import minibnn
from minibnn.autograd import Tensor


def as64(arr, requires_grad: bool = True) -> Tensor:
    """A float64 tensor (the dtype the gradient check needs)."""
    return Tensor(np.asarray(arr, dtype=np.float64), requires_grad=requires_grad, dtype=np.float64)


def numerical_grad(f: Callable[[], float], t: Tensor, eps: float) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to every element of ``t.data``."""
    data = t.data
    grad = np.zeros(data.shape, dtype=np.float64)
    it = np.nditer(data, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        orig = data[idx].copy()
        data[idx] = orig + eps
        fp = f()
        data[idx] = orig - eps
        fm = f()
        data[idx] = orig
        grad[idx] = (fp - fm) / (2 * eps)
    return grad


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Tensor], eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-4, seed: int = 0) -> None:
    """Assert that autograd's gradients of ``fn`` match finite differences for every input
    that requires grad; on failure the message shows both gradients and the max difference."""
    inputs = list(inputs)
    for i, t in enumerate(inputs):
        if isinstance(t, Tensor) and t.requires_grad and t.dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {t.dtype}; build it with dtype=np.float64")
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")

    out = fn(*inputs)
    if out.dtype != np.float64:
        raise TypeError(f"gradcheck: fn returned {out.dtype}, expected float64 (a float32 constant inside?)")
    proj = np.random.default_rng(seed).standard_normal(out.shape)

    for i in checked:
        inputs[i].grad = None
    out.backward(proj)
    analytic = {i: None if inputs[i].grad is None else np.array(inputs[i].grad, dtype=np.float64)
                for i in checked}

    def scalar() -> float:
        with minibnn.no_grad():
            return float(np.sum(np.asarray(fn(*inputs).data, dtype=np.float64) * proj))

    for i in checked:
        t = inputs[i]
        num = numerical_grad(scalar, t, eps)
        ana = analytic[i]
        if ana is None:
            ana = np.zeros_like(num)  # no gradient reached the input: must be zero
        assert ana.shape == num.shape, f"input {i}: gradient shape {ana.shape} != input shape {num.shape}"
        if not np.allclose(ana, num, atol=atol, rtol=rtol):
            diff = np.abs(ana - num)
            with np.printoptions(precision=6, suppress=True, linewidth=120, threshold=400):
                raise AssertionError(
                    f"gradcheck failed for input {i} of shape {t.shape}: "
                    f"max |autograd - numerical| = {diff.max():.3e} at {np.unravel_index(diff.argmax(), diff.shape)} "
                    f"(atol={atol}, rtol={rtol})\n"
                    f"autograd gradient:\n{ana}\nnumerical gradient:\n{num}"
                )
