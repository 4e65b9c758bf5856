"""MNIST (shipped with the package) and Fashion-MNIST loaders.

Loaded arrays are cached per process and returned READ-ONLY
(`flags.writeable == False`), so repeated calls are cheap and no caller can
corrupt the cache: call `.copy()` before modifying them in place.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from .idx import IDXError, md5_of_decompressed, parse_idx, read_bytes
from .transforms import normalize as _normalize

__all__ = ["load_mnist", "load_fashion_mnist", "MNIST_DIR", "MNIST_MEAN", "MNIST_STD",
           "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "MNIST_MD5", "FASHION_MNIST_MD5"]

MNIST_DIR = Path(__file__).parent / "mnist"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530

SPLITS = {"train": "train", "test": "test", "t10k": "test"}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# MD5 of the decompressed IDX bytes (official content)
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


def load_mnist(split: str = "train", verify: bool = True,
               normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Shipped MNIST: read-only float32 images (N, 1, 28, 28) in [0, 1], int64 labels (N,).

    ``normalize=True``: a new array standardised with MNIST_MEAN / MNIST_STD instead.
    """
    images, labels = _load(MNIST_DIR, split, verify, MNIST_MD5, "MNIST")
    return (_normalize(images, MNIST_MEAN, MNIST_STD) if normalize else images), labels


def load_fashion_mnist(root: str | os.PathLike, split: str = "train", verify: bool = True,
                       normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from `root` (standard file names, .gz or raw); same format and options as load_mnist
    (``normalize=True`` uses FASHION_MNIST_MEAN / FASHION_MNIST_STD)."""
    images, labels = _load(Path(root), split, verify, FASHION_MNIST_MD5, "Fashion-MNIST")
    return (_normalize(images, FASHION_MNIST_MEAN, FASHION_MNIST_STD) if normalize else images), labels


def _load(root: Path, split: str, verify: bool, table: dict[str, str],
          name: str) -> tuple[np.ndarray, np.ndarray]:
    """Locate, load (cached) and optionally MD5-verify one split."""
    bases = FILES[_canonical_split(split)]
    paths = tuple(_find(root, base) for base in bases)
    stamps = tuple(_stamp(p) for p in paths)
    try:
        images, labels, digests = _load_cached(paths, stamps)
    except IDXError:
        if verify:  # a corrupt official file: report the MD5 mismatch first
            _verify(paths, bases, [md5_of_decompressed(p) for p in paths], table, name)
        raise
    if verify:
        _verify(paths, bases, digests, table, name)
    return images, labels


def _canonical_split(split: str) -> str:
    """Map 'train' / 'test' / 't10k' to a FILES key, else ValueError."""
    if not isinstance(split, str) or split not in SPLITS:
        raise ValueError(f"split must be one of 'train', 'test' ('t10k' is an alias of "
                         f"'test'), got {split!r}")
    return SPLITS[split]


def _find(root: Path, base: str) -> str:
    """Path of `base`.gz or `base` under root, else FileNotFoundError."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    for cand in (root / f"{base}.gz", root / base):
        if cand.is_file():
            return str(cand.resolve())
    raise FileNotFoundError(f"{root / (base + '.gz')}: file not found (nor uncompressed {base})")


def _stamp(path: str) -> tuple[int, int]:
    """(size, mtime_ns): a changed file misses the cache."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _verify(paths, bases, digests, table: dict[str, str], name: str) -> None:
    """Raise IDXError naming the first file whose MD5 is not the known one."""
    for path, base, got in zip(paths, bases, digests):
        if got != table[base]:
            raise IDXError(f"{path}: MD5 mismatch: decompressed data has MD5 {got}, expected "
                           f"{table[base]} for {name} {base} (corrupt or not the official file; "
                           f"pass verify=False to skip)")


@functools.lru_cache(maxsize=4)
def _load_cached(paths: tuple[str, str], stamps: tuple) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Read an (images, labels) file pair; returns read-only arrays and both MD5s."""
    img_path, lbl_path = paths
    img_bytes, lbl_bytes = read_bytes(img_path), read_bytes(lbl_path)
    digests = (hashlib.md5(img_bytes).hexdigest(), hashlib.md5(lbl_bytes).hexdigest())
    raw_x, raw_y = parse_idx(img_bytes, img_path), parse_idx(lbl_bytes, lbl_path)
    del img_bytes, lbl_bytes
    _check_pair(raw_x, raw_y, img_path, lbl_path)
    images = raw_x[:, None].astype(np.float32)  # (N, 1, H, W), owns its data
    images /= np.float32(255)
    labels = raw_y.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels, digests


def _check_pair(raw_x: np.ndarray, raw_y: np.ndarray, img_path: str, lbl_path: str) -> None:
    """Images uint8 (N, H, W), labels uint8 (N,), same N."""
    if raw_x.dtype != np.uint8 or raw_x.ndim != 3:
        raise IDXError(f"{img_path}: expected uint8 images of shape (N, H, W), "
                       f"got {raw_x.dtype} {raw_x.shape}")
    if raw_y.dtype != np.uint8 or raw_y.ndim != 1:
        raise IDXError(f"{lbl_path}: expected uint8 labels of shape (N,), "
                       f"got {raw_y.dtype} {raw_y.shape}")
    if len(raw_x) != len(raw_y):
        raise IDXError(f"{img_path} has {len(raw_x)} images but {lbl_path} has "
                       f"{len(raw_y)} labels")
