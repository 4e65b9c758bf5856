"""The library's random number generator (weight init, dropout): one seed makes runs repeatable."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed minibnn's generator (weight initialisation, dropout masks)."""
    global _rng
    _rng = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    """The current global generator."""
    return _rng


def get_state() -> dict[str, Any]:
    """The generator's state as a JSON-serialisable dict (for checkpoints)."""
    return _rng.bit_generator.state


def set_state(state: dict[str, Any]) -> None:
    """Restore a state from get_state(); ValueError (and the generator unchanged) if it is not one."""
    check_state(state)
    _rng.bit_generator.state = state


def check_state(state: dict[str, Any]) -> None:
    """ValueError unless ``state`` is a generator state as get_state() returns it."""
    inner = state.get("state") if isinstance(state, dict) else None
    fields = (inner.get("state"), inner.get("inc")) if isinstance(inner, dict) else (None, None)
    ok = (isinstance(state, dict) and state.get("bit_generator") == "PCG64"
          and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**128 for v in fields)
          and state.get("has_uint32") in (0, 1) and not isinstance(state.get("has_uint32"), bool)
          and isinstance(state.get("uinteger"), int) and not isinstance(state.get("uinteger"), bool)
          and 0 <= state["uinteger"] < 2**32)
    if not ok:
        raise ValueError(f"not a PCG64 generator state (from minibnn.random.get_state): {str(state)[:120]}")


@contextlib.contextmanager
def preserved() -> Iterator[None]:
    """Run a block (e.g. building a throwaway model) without moving the global generator."""
    state = get_state()
    try:
        yield
    finally:
        set_state(state)
