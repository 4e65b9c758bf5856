"""Weight initialisation (drawn from minibnn.random, so seeded runs repeat)."""
from __future__ import annotations

import math

import numpy as np

from minibnn import random


def kaiming_uniform(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """PyTorch's default for Linear/Conv weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) * sqrt(... )."""
    bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) reduces to this bound
    return random.generator().uniform(-bound, bound, size=shape).astype(np.float32)


def bias_uniform(size: int, fan_in: int) -> np.ndarray:
    """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return random.generator().uniform(-bound, bound, size=(size,)).astype(np.float32)
