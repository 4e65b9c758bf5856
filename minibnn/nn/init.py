"""Weight initialisation (drawn from minibnn.random, so seeded runs repeat)."""
from __future__ import annotations

import contextlib
import math
import sys
import threading

import numpy as np

from minibnn import random


class ParameterAllocationError(MemoryError):
    """A layer's parameters do not fit in memory; the message names the layer, the shape and the bytes."""


def kaiming_uniform(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """PyTorch's default for Linear/Conv weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) * sqrt(... )."""
    bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) reduces to this bound
    return _uniform(bound, tuple(shape), "weight")


def bias_uniform(size: int, fan_in: int) -> np.ndarray:
    """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return _uniform(bound, (size,), "bias")


def constant(size: int, value: float) -> np.ndarray:
    """A float32 vector of ``size`` copies of ``value`` (batch-norm parameters and statistics)."""
    reserve((size,))
    return np.full(size, value, np.float32)


class AllocationRefused(ValueError):
    """Building a module would allocate more than the limit set by ``allocation_limit``."""


_limit = threading.local()
SLACK_BYTES = 1 << 16  # what a description read from a file may allocate beyond the arrays it comes with


@contextlib.contextmanager
def allocation_limit(nbytes: int, why: str):
    """Refuse, before allocating, parameters and buffers beyond ``nbytes`` in total while inside.

    Loading a file builds its architecture with the limit set by the arrays the file holds, so an
    edited architecture that declares terabytes is refused instead of allocated.
    """
    previous = getattr(_limit, "state", None)
    _limit.state = [int(nbytes), 0, why]
    try:
        yield
    finally:
        _limit.state = previous


def reserve(shape: tuple[int, ...], itemsize: int = 4) -> None:
    """Count an allocation of float32 ``shape`` against the current allocation_limit (if any)."""
    state = getattr(_limit, "state", None)
    if state is None:
        return
    state[1] += math.prod(shape) * itemsize
    if state[1] > state[0]:
        raise AllocationRefused(f"the architecture declares more than {_bytes(state[0])} of parameters "
                                f"({_bytes(state[1])} so far, at an array of shape {tuple(shape)}); {state[2]}")


def _uniform(bound: float, shape: tuple[int, ...], what: str) -> np.ndarray:
    """float32 U(-bound, bound) of ``shape``; ParameterAllocationError (with the sizes) when it cannot fit."""
    reserve(shape)
    try:
        return random.generator().uniform(-bound, bound, size=shape).astype(np.float32)
    except MemoryError as exc:
        count = math.prod(shape)
        raise ParameterAllocationError(
            f"{_layer_name()}: cannot allocate the {what} of shape {shape}: {count:,} float32 parameters "
            f"= {_bytes(4 * count)}, and the initialisation draws them in float64 first "
            f"({12 * count:,} bytes at the peak); use fewer features or channels") from exc


def _layer_name() -> str:
    """The class of the layer whose constructor is allocating (found on the call stack), else 'a layer'."""
    from minibnn.nn.module import Module

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Module):
            return type(owner).__name__
        frame = frame.f_back
    return "a layer"


def _bytes(n: int) -> str:
    """``n`` bytes in words: '7.3 TiB (8,000,000,000,000 bytes)'."""
    value, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n:,} bytes" if unit == "bytes" else f"{value:.1f} {unit} ({n:,} bytes)"
