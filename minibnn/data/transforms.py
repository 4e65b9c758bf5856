"""Normalization and batch augmentations for NCHW float32 images.

A batch transform is a callable `(images, rng: np.random.Generator) -> images`.
Transforms never modify their input; constructor arguments are stored as
attributes of the same name so a pipeline can be described as JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["normalize", "RandomCrop", "RandomHorizontalFlip", "Compose", "BatchTransform"]

BatchTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """Return (images - mean) / std as float32 (mean/std: scalars or broadcastable)."""
    std = np.asarray(std, dtype=np.float32)
    if np.any(std == 0):
        raise ValueError(f"std must be non-zero, got {std.tolist()}")
    mean = np.asarray(mean, dtype=np.float32)
    return ((np.asarray(images, dtype=np.float32) - mean) / std).astype(np.float32, copy=False)


def _check_batch(images: np.ndarray, who: str) -> np.ndarray:
    """Return images as an NCHW array, else ValueError."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"{who} expects an NCHW batch (4-d), got shape {images.shape}")
    return images


class RandomCrop:
    """Zero-pad each side by `padding`, then crop a random `size` window per image."""

    def __init__(self, size: int | tuple[int, int], padding: int = 0) -> None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2 or any(not isinstance(v, int) or v <= 0 for v in hw):
            raise ValueError(f"RandomCrop size must be a positive int or (h, w), got {size!r}")
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"RandomCrop padding must be a non-negative int, got {padding!r}")
        self.size, self.padding = size, padding
        self._hw = hw

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Crop every image of the batch at its own random offset."""
        images = _check_batch(images, "RandomCrop")
        p, (h, w) = self.padding, self._hw
        padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p))) if p else images
        n, _, ph, pw = padded.shape
        if h > ph or w > pw:
            raise ValueError(f"RandomCrop size {self._hw} exceeds padded image size {(ph, pw)}")
        oy = rng.integers(0, ph - h + 1, size=n)
        ox = rng.integers(0, pw - w + 1, size=n)
        windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, ph-h+1, pw-w+1, h, w)
        # advanced indices split by a slice: the N axis goes first -> (N, C, h, w)
        return np.ascontiguousarray(windows[np.arange(n), :, oy, ox])

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size!r}, padding={self.padding!r})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability p (independently per image)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip p must be in [0, 1], got {p!r}")
        self.p = p

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return a copy with the chosen images flipped along the width axis."""
        images = _check_batch(images, "RandomHorizontalFlip")
        flip = rng.random(len(images)) < self.p
        out = images.copy()
        out[flip] = images[flip][..., ::-1]
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p!r})"


class Compose:
    """Apply batch transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Iterable[BatchTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Run every transform on the batch in turn."""
        for t in self.transforms:
            images = t(images, rng)
        return images

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"
