"""Data: IDX reader, shipped MNIST, Fashion-MNIST, CIFAR-10 (binary version), image folders,
DataLoader and batch augmentations."""

from .cifar import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, DatasetError, cifar10_augmentation,
                    load_cifar10, read_cifar10_batch)
from .datasets import (FASHION_MNIST_MEAN, FASHION_MNIST_STD, MNIST_DIR, MNIST_MEAN,
                       MNIST_STD, load_fashion_mnist, load_mnist)
from .idx import IDXError, md5_of_decompressed, read_idx, write_idx
from .imagefolder import (IMAGENET_MEAN, IMAGENET_STD, ImageFolder, ImageFolderLoader, RandomResizedCrop,
                          ResizeCenterCrop, image_split, open_image)
from .loader import DataLoader
from .transforms import Compose, RandomCrop, RandomHorizontalFlip, normalize

__all__ = [
    "read_idx", "write_idx", "md5_of_decompressed", "IDXError",
    "load_mnist", "load_fashion_mnist", "MNIST_DIR",
    "MNIST_MEAN", "MNIST_STD", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
    "DatasetError", "load_cifar10", "read_cifar10_batch", "cifar10_augmentation",
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_CLASSES",
    "ImageFolder", "ImageFolderLoader", "RandomResizedCrop", "ResizeCenterCrop", "open_image", "image_split",
    "IMAGENET_MEAN", "IMAGENET_STD",
    "DataLoader", "normalize", "RandomCrop", "RandomHorizontalFlip", "Compose",
]
