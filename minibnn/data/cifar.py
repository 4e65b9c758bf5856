"""CIFAR-10 from the official binary version (``cifar-10-binary.tar.gz``, extracted).

Files: ``data_batch_1.bin`` .. ``data_batch_5.bin`` (train) and ``test_batch.bin`` (test), in
``root`` or ``root/cifar-10-batches-bin``. Each file is a sequence of 3,073-byte records: one
label byte (0..9), then 3,072 pixel bytes: the 1,024 red values of the 32x32 image row by row,
then the green, then the blue plane. The official files hold 10,000 records (30,730,000 bytes)
each; any whole number of records >= 1 is accepted (small files for tests). The size is checked
before anything is read, so a truncated or foreign file is refused with a DatasetError that names
it, and a huge one is never allocated.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .transforms import Compose, RandomCrop, RandomHorizontalFlip

__all__ = ["DatasetError", "load_cifar10", "read_cifar10_batch", "cifar10_augmentation",
           "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_CLASSES", "CIFAR10_TRAIN_FILES", "CIFAR10_TEST_FILES",
           "CIFAR10_RECORD_BYTES"]


class DatasetError(ValueError):
    """A malformed, truncated or foreign dataset file or folder (the message names it)."""


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# per-channel mean and standard deviation of the 50,000 training images, pixel values in [0, 1]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch.bin",)
CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32
OFFICIAL_RECORDS = 10_000
MAX_RECORDS = 100 * OFFICIAL_RECORDS  # a larger file is refused before it is read (3 GB)
SUBFOLDER = "cifar-10-batches-bin"


def read_cifar10_batch(path: str | os.PathLike,
                       max_records: int = MAX_RECORDS) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: uint8 images (N, 3, 32, 32) and int64 labels (N,), both writable.

    Raises DatasetError naming the file when its size is not a whole number of 3,073-byte records
    (truncated, or another format such as CIFAR-100's 3,074-byte records), when it holds more than
    ``max_records`` records, or when a label is not in 0..9; FileNotFoundError when it is missing.
    """
    path = Path(path)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: CIFAR-10 batch file not found") from None
    if not path.is_file():
        raise DatasetError(f"{path}: not a regular file (expected a CIFAR-10 batch file)")
    records, rest = divmod(size, CIFAR10_RECORD_BYTES)
    if rest or records == 0:
        raise DatasetError(f"{path}: {_size_problem(size)}")
    if records > max_records:
        raise DatasetError(f"{path}: {size} bytes = {records} records, more than the {max_records} accepted "
                           f"(official batch files hold {OFFICIAL_RECORDS}; raise max_records to read it)")
    with open(path, "rb") as f:
        data = f.read(size + 1)  # one byte more: a file that grew since stat() is noticed
    if len(data) != size:
        raise DatasetError(f"{path}: the file changed while it was read ({size} bytes, then {len(data)})")
    table = np.frombuffer(data, np.uint8).reshape(records, CIFAR10_RECORD_BYTES)
    labels = table[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"{path}: record {i} (byte offset {i * CIFAR10_RECORD_BYTES}) has label {labels[i]}, "
                           f"CIFAR-10 labels are 0..9 ({bad.size} bad labels in all; not a CIFAR-10 batch file?)")
    images = table[:, 1:].reshape(records, 3, 32, 32).copy()
    return images, labels


def _size_problem(size: int) -> str:
    """Why ``size`` bytes cannot be a CIFAR-10 batch file."""
    if size == 0:
        return "empty file (0 bytes): truncated; a CIFAR-10 batch file holds 3,073-byte records"
    text = (f"truncated or wrong record size: {size} bytes is not a whole number of 3,073-byte records "
            f"(1 label byte + 3,072 pixel bytes; the official files are {OFFICIAL_RECORDS * CIFAR10_RECORD_BYTES:,} "
            f"bytes = {OFFICIAL_RECORDS:,} records)")
    if size < OFFICIAL_RECORDS * CIFAR10_RECORD_BYTES:
        text += f"; {size % CIFAR10_RECORD_BYTES} bytes of a partial record at the end"
    if size % (CIFAR10_RECORD_BYTES + 1) == 0:
        text += "; the size fits 3,074-byte records: CIFAR-100's binary version (2 label bytes), not CIFAR-10"
    return text


def find_cifar10_folder(root: str | os.PathLike) -> Path:
    """``root/cifar-10-batches-bin`` when it holds batch files, else ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: CIFAR-10 folder not found (expected the extracted binary version: "
                                f"{SUBFOLDER}/ with data_batch_1.bin .. test_batch.bin)")
    sub = root / SUBFOLDER
    if sub.is_dir() and any((sub / n).exists() for n in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES):
        return sub
    return root


def load_cifar10(root: str | os.PathLike, split: str = "train", normalize: bool = False,
                 max_records: int = MAX_RECORDS) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 split from the binary version: float32 images (N, 3, 32, 32), int64 labels (N,).

    ``split``: "train" (the five data_batch files, in order) or "test" (test_batch.bin). Pixels are
    in [0, 1], or with ``normalize=True`` standardised per channel with CIFAR10_MEAN / CIFAR10_STD
    (computed in place, no second copy). Missing files raise FileNotFoundError naming the file;
    malformed ones DatasetError (see read_cifar10_batch).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_cifar10_folder(root)
    names = CIFAR10_TRAIN_FILES if split == "train" else CIFAR10_TEST_FILES
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"{folder / missing[0]}: CIFAR-10 batch file not found (the {split} split needs "
                                f"{', '.join(names)} in {root} or {Path(root) / SUBFOLDER})")
    parts = [read_cifar10_batch(folder / n, max_records) for n in names]
    count = sum(len(y) for _, y in parts)
    images = np.empty((count, 3, 32, 32), np.float32)
    labels = np.concatenate([y for _, y in parts])
    at = 0
    for x, _ in parts:
        np.divide(x, np.float32(255), out=images[at:at + len(x)])
        at += len(x)
    del parts
    if normalize:
        images -= np.asarray(CIFAR10_MEAN, np.float32).reshape(1, 3, 1, 1)
        images /= np.asarray(CIFAR10_STD, np.float32).reshape(1, 3, 1, 1)
    return images, labels


def cifar10_augmentation(padding: int = 4, flip: float = 0.5) -> Compose:
    """The usual CIFAR-10 training augmentation as a batch transform for DataLoader.

    A random 32x32 crop of the image zero-padded by ``padding`` on each side, then a horizontal
    flip with probability ``flip``; both draw from the loader's per-epoch generator (seeded). On
    normalised images the zero padding is the mean colour.
    """
    return Compose([RandomCrop(32, padding=padding), RandomHorizontalFlip(flip)])
