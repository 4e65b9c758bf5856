"""Data: IDX reader, shipped MNIST, Fashion-MNIST, DataLoader and batch augmentations."""

from .datasets import (FASHION_MNIST_MEAN, FASHION_MNIST_STD, MNIST_DIR, MNIST_MEAN,
                       MNIST_STD, load_fashion_mnist, load_mnist)
from .idx import IDXError, md5_of_decompressed, read_idx, write_idx
from .loader import DataLoader
from .transforms import Compose, RandomCrop, RandomHorizontalFlip, normalize

__all__ = [
    "read_idx", "write_idx", "md5_of_decompressed", "IDXError",
    "load_mnist", "load_fashion_mnist", "MNIST_DIR",
    "MNIST_MEAN", "MNIST_STD", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
    "DataLoader", "normalize", "RandomCrop", "RandomHorizontalFlip", "Compose",
]
