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
    """Restore a state from get_state()."""
    _rng.bit_generator.state = state


@contextlib.contextmanager
def preserved() -> Iterator[None]:
    """Run a block (e.g. building a throwaway model) without moving the global generator."""
    state = get_state()
    try:
        yield
    finally:
        set_state(state)
