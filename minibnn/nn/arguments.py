"""Range checks of layer constructor arguments: each raises a ValueError naming the layer and the argument.

The types of arguments read from files are checked before any constructor runs (from_config);
these checks make the constructors refuse out-of-range values however they are called.
"""
from __future__ import annotations

import math

MAX_SIZE = 2**31 - 1  # features, channels, kernel sizes: the kernels index with int32


def count(owner: str, name: str, v, lo: int = 1, hi: int = MAX_SIZE) -> int:
    """An int in [lo, hi] (not a bool)."""
    if isinstance(v, bool) or not isinstance(v, int) and not hasattr(v, "__index__"):
        raise ValueError(f"{owner}: {name} must be an int, got {type(v).__name__} {v!r}")
    if not lo <= int(v) <= hi:
        raise ValueError(f"{owner}: {name} must be in [{lo}, {hi}], got {int(v)}")
    return int(v)


def pair(owner: str, name: str, v, lo: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= lo, as a pair."""
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"{owner}: {name} must be an int or a pair of ints, got {v!r}")
        return count(owner, name, v[0], lo), count(owner, name, v[1], lo)
    value = count(owner, name, v, lo)
    return value, value


def real(owner: str, name: str, v, lo: float = -math.inf, hi: float = math.inf, open_lo: bool = False) -> float:
    """A finite number in [lo, hi] (or (lo, hi] with ``open_lo``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
        raise ValueError(f"{owner}: {name} must be a number, got {type(v).__name__} {v!r}")
    x = float(v)
    if not math.isfinite(x) or x < lo or x > hi or (open_lo and x == lo):
        raise ValueError(f"{owner}: {name} must be a finite number in {'(' if open_lo else '['}{lo}, {hi}], got {v!r}")
    return x


def flag(owner: str, name: str, v) -> bool:
    """True or False (not 0 or 1)."""
    if not isinstance(v, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {type(v).__name__} {v!r}")
    return v
