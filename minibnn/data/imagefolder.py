"""Class-per-folder image datasets (the ImageNet layout), decoded lazily in a thread pool.

Layout: ``root/<class>/<image>`` (sub-folders of a class folder are searched too); class names are
the sorted folder names and their index is the label. ``root`` is usually ``DIR/train`` or
``DIR/val`` (``image_split``). Images are decoded with Pillow (the ``images`` extra:
``pip install minibnn[images]``), imported only when a folder is used.

``ImageFolderLoader`` yields (float32 NCHW images, int64 labels) batches like DataLoader and works
with ``minibnn.train.fit`` / ``evaluate``: only the batches being prepared are in memory (a few
ahead are decoded in a thread pool while the current one trains), so a folder of any size works.
Training transform: random-resized crop and horizontal flip; evaluation: resize the shorter side,
center crop. Both normalise with the ImageNet mean and std. An unreadable image raises a
DatasetError naming it, or with ``skip_bad=True`` is left out of its batch and counted (a warning
after each epoch says how many and which).
"""
from __future__ import annotations

import io
import math
import os
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .cifar import DatasetError
from .loader import Batching

__all__ = ["ImageFolder", "ImageFolderLoader", "RandomResizedCrop", "ResizeCenterCrop", "open_image",
           "image_split", "require_pillow", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".gif", ".tif", ".tiff", ".webp")
MAX_PIXELS = 64_000_000  # larger images (by their header) are refused before decoding: 8000 x 8000
MAX_BYTES = 256 << 20  # larger image files are refused before they are read
SPLITS = {"train": ("train",), "val": ("val", "validation"), "test": ("val", "validation", "test")}
INSTALL_HINT = "pip install minibnn[images]"


def require_pillow():
    """The PIL.Image module, or ImportError saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(f"reading image folders needs Pillow, which is not installed: {INSTALL_HINT} "
                          "(or pip install Pillow)") from None
    return Image


def image_split(root: str | os.PathLike, split: str) -> Path:
    """The folder of ``split`` under ``root``: train -> root/train, val or test -> root/val."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found (expected {root}/train/<class>/<image> "
                                f"and {root}/val/<class>/<image>)")
    for name in SPLITS[split]:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"{root / SPLITS[split][0]}: folder of the {split} split not found "
                            f"(expected {root / SPLITS[split][0]}/<class>/<image>)")


class ImageFolder:
    """The samples of a class-per-folder tree: ``samples`` [(path, label)], ``classes``, ``targets``.

    Only file names are read here (no image is opened). Raises FileNotFoundError for a missing
    ``root`` and DatasetError naming the folder when it has no class folders or a class folder
    holds no image (files with one of ``extensions``, any case; hidden files are ignored).
    """

    def __init__(self, root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: image folder not found (expected {root}/<class>/<image>)")
        exts = tuple(e.lower() for e in extensions)
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DatasetError(f"{root}: no class folders (expected one sub-folder per class holding its images)")
        samples: list[tuple[str, int]] = []
        for label, name in enumerate(classes):
            found = _images_under(root / name, exts)
            if not found:
                raise DatasetError(f"{root / name}: empty class folder: no images ({', '.join(exts)}) in class "
                                   f"{name!r}; remove the folder or add its images")
            samples += [(path, label) for path in found]
        self.root, self.extensions = root, exts
        self.classes = classes
        self.samples = samples

    @classmethod
    def from_samples(cls, samples: Sequence[tuple[str | os.PathLike, int]], classes: Sequence[str],
                     root: str | os.PathLike | None = None) -> "ImageFolder":
        """A dataset over an explicit list of (path, label) pairs (labels index ``classes``)."""
        self = cls.__new__(cls)
        self.root, self.extensions, self.classes = (Path(root) if root else None), IMAGE_EXTENSIONS, list(classes)
        self.samples = [(str(p), int(y)) for p, y in samples]
        for p, y in self.samples:
            if not 0 <= y < len(self.classes):
                raise ValueError(f"{p}: label {y} out of range for {len(self.classes)} classes")
        return self

    def subset(self, indices) -> "ImageFolder":
        """The same classes with only the samples at ``indices``."""
        return ImageFolder.from_samples([self.samples[int(i)] for i in indices], self.classes, self.root)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    @property
    def targets(self) -> np.ndarray:
        """The labels of all samples, int64."""
        return np.fromiter((y for _, y in self.samples), np.int64, len(self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"ImageFolder(root={str(self.root)!r}, classes={len(self.classes)}, samples={len(self.samples)})"


def _images_under(folder: Path, exts: tuple[str, ...]) -> list[str]:
    """Sorted paths of the image files under ``folder`` (recursively, hidden entries skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if not f.startswith(".") and f.lower().endswith(exts)]
    return found


def open_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, draft: tuple[int, int] | None = None,
               max_bytes: int = MAX_BYTES):
    """Decode ``path`` into an RGB PIL image; DatasetError naming the file when it cannot be read.

    Files over ``max_bytes`` are refused before they are read, and the header's image size is
    checked against ``max_pixels`` before decoding. ``draft`` (w, h) lets a
    JPEG decode at a reduced scale that is still at least that size (faster evaluation).
    """
    Image = require_pillow()
    try:  # read the bytes first: Pillow's reads of a hostile file's declared chunk sizes then stay small
        size = os.stat(path).st_size
        if size > max_bytes:
            raise DatasetError(f"{path}: image file of {size} bytes is larger than max_bytes={max_bytes}")
        with open(path, "rb") as f:
            blob = f.read(size + 1)  # a file that grew since stat() is read one byte further
        if len(blob) > max_bytes:
            raise DatasetError(f"{path}: image file grew past max_bytes={max_bytes} while it was read")
        with Image.open(io.BytesIO(blob)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise DatasetError(f"{path}: image of {width} x {height} pixels is larger than max_pixels={max_pixels}")
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft)
            rgb = img.convert("RGB")
            rgb.load()
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found (removed after the folder was listed?)") from None
    except Exception as exc:  # Pillow raises many kinds for damaged files (OSError, SyntaxError, struct.error, ...)
        raise DatasetError(f"{path}: unreadable image: {type(exc).__name__}: {exc}") from None
    if rgb.width < 1 or rgb.height < 1:
        raise DatasetError(f"{path}: image has no pixels ({rgb.width} x {rgb.height})")
    return rgb


def _bilinear(Image):
    return getattr(getattr(Image, "Resampling", Image), "BILINEAR")


def _size(who: str, size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"{who}: size must be a positive int, got {size!r}")
    return int(size)


class RandomResizedCrop:
    """A random crop of ``scale`` of the area and aspect ratio in ``ratio``, resized to size x size.

    As Inception / torchvision: ten tries to draw a box that fits, else the central crop with the
    ratio clamped. Works on PIL images; the box is drawn from ``rng`` (a numpy Generator).
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.size = _size("RandomResizedCrop", size)
        if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"RandomResizedCrop: scale must be (min, max) with 0 < min <= max <= 1, got {scale!r}")
        if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
            raise ValueError(f"RandomResizedCrop: ratio must be (min, max) with 0 < min <= max, got {ratio!r}")
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the crop in a width x height image."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                return left, top, left + w, top + h
        ratio = width / height
        if ratio < self.ratio[0]:
            w, h = width, max(1, int(round(width / self.ratio[0])))
        elif ratio > self.ratio[1]:
            w, h = max(1, int(round(height * self.ratio[1]))), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        return left, top, left + w, top + h

    def __call__(self, img, rng: np.random.Generator):
        Image = require_pillow()
        return img.resize((self.size, self.size), _bilinear(Image), box=self.box(img.width, img.height, rng))

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class ResizeCenterCrop:
    """Resize the shorter side to ``resize`` (default size * 256 / 224), then crop the central size x size."""

    def __init__(self, size: int, resize: int | None = None) -> None:
        self.size = _size("ResizeCenterCrop", size)
        self.resize = int(round(self.size * 256 / 224)) if resize is None else _size("ResizeCenterCrop", resize)
        if self.resize < self.size:
            raise ValueError(f"ResizeCenterCrop: resize ({self.resize}) must be at least size ({self.size})")

    def box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The crop in the original image's coordinates (resize and crop are one resampling)."""
        side = self.size * min(width, height) / self.resize
        left, top = (width - side) / 2, (height - side) / 2
        return left, top, left + side, top + side

    def __call__(self, img, rng: np.random.Generator | None = None):
        Image = require_pillow()
        return img.resize((self.size, self.size), _bilinear(Image), box=self.box(img.width, img.height))

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(size={self.size}, resize={self.resize})"


class ImageFolderLoader(Batching):
    """Batches (float32 (N, 3, S, S), int64 (N,)) of an ImageFolder, decoded lazily in a thread pool.

    ``dataset``: an ImageFolder or its root folder. ``train=True``: RandomResizedCrop(image_size,
    scale, ratio) and a horizontal flip with probability ``flip``, shuffled by default; else
    ResizeCenterCrop(image_size, resize_size), in folder order. Epochs and seeding follow
    DataLoader: ``set_epoch``, and every random choice depends only on (seed, epoch, sample), so
    results do not depend on ``num_workers`` or thread timing. ``num_workers`` decoding threads
    (default min(8, CPUs); 0 decodes in the calling thread) work up to ``prefetch`` batches ahead.
    ``skip_bad=True`` leaves unreadable images out of their batch (a batch of only bad images is
    left out) and warns after the epoch; ``skipped`` lists (path, reason) of the last epoch.
    """

    def __init__(self, dataset: ImageFolder | str | os.PathLike, batch_size: int = 64, train: bool = False,
                 image_size: int = 224, resize_size: int | None = None, shuffle: bool | None = None,
                 seed: int | None = None, drop_last: bool = False, num_workers: int | None = None,
                 skip_bad: bool = False, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 flip: float = 0.5, prefetch: int = 2, max_pixels: int = MAX_PIXELS) -> None:
        require_pillow()
        self.dataset = dataset if isinstance(dataset, ImageFolder) else ImageFolder(dataset)
        self._setup_batching(batch_size, drop_last, seed)
        if not 0.0 <= flip <= 1.0:
            raise ValueError(f"flip must be a probability in [0, 1], got {flip!r}")
        std = np.asarray(std, np.float32).reshape(-1, 1, 1)
        if std.shape[0] not in (1, 3) or np.any(std == 0):
            raise ValueError(f"std must be 1 or 3 non-zero values, got {std.ravel().tolist()}")
        self.train = bool(train)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.image_size, self.flip, self.skip_bad = _size("ImageFolderLoader", image_size), float(flip), bool(skip_bad)
        self.crop = (RandomResizedCrop(image_size, scale, ratio) if self.train
                     else ResizeCenterCrop(image_size, resize_size))
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else max(0, int(num_workers))
        self.prefetch, self.max_pixels = max(0, int(prefetch)), int(max_pixels)
        self._mean = np.asarray(mean, np.float32).reshape(-1, 1, 1) * np.float32(255)
        self._scale = np.float32(1) / (std * np.float32(255))
        self.skipped: list[tuple[str, str]] = []

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def labels(self) -> np.ndarray:
        """Labels in the order of an unshuffled epoch (int64)."""
        return self.dataset.targets

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def load_sample(self, index: int, epoch: int = 0) -> tuple[np.ndarray, int]:
        """Sample ``index`` as the loader gives it in ``epoch``: float32 (3, S, S) and its label."""
        path, label = self.dataset.samples[index]
        rng = np.random.default_rng((self.seed, epoch, 1, index)) if self.train else None
        draft = None if self.train else (self.crop.resize, self.crop.resize)
        img = self.crop(open_image(path, self.max_pixels, draft), rng)
        pixels = np.asarray(img, dtype=np.float32)  # (S, S, 3)
        if rng is not None and rng.random() < self.flip:
            pixels = pixels[:, ::-1]
        x = (pixels.transpose(2, 0, 1) - self._mean) * self._scale
        return np.ascontiguousarray(x, dtype=np.float32), label

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Start an epoch (consuming the epoch counter now) and return its batches."""
        epoch, self.epoch = self.epoch, self.epoch + 1
        n = self.num_samples
        order = (np.random.default_rng((self.seed, epoch, 0)).permutation(n) if self.shuffle else np.arange(n))
        return self._batches(order, epoch)

    def _batches(self, order: np.ndarray, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        batches = [order[b * self.batch_size:(b + 1) * self.batch_size] for b in range(len(self))]
        self.skipped = []
        pool = (ThreadPoolExecutor(self.num_workers, thread_name_prefix="minibnn-images")
                if self.num_workers else None)
        pending: deque = deque()

        def submit(indices):
            if pool is None:
                return [(int(i), None) for i in indices]
            return [(int(i), pool.submit(self.load_sample, int(i), epoch)) for i in indices]
        try:
            queued = 0
            for b in range(len(batches)):
                while queued < len(batches) and queued <= b + self.prefetch:
                    pending.append(submit(batches[queued]))
                    queued += 1
                xs, ys = [], []
                for i, job in pending.popleft():
                    try:
                        x, y = self.load_sample(i, epoch) if job is None else job.result()
                    except DatasetError as exc:
                        if not self.skip_bad:
                            raise
                        self.skipped.append((self.dataset.samples[i][0], str(exc)))
                        continue
                    xs.append(x)
                    ys.append(y)
                if xs:
                    yield np.stack(xs), np.asarray(ys, np.int64)
            if self.skipped:
                warnings.warn(f"skipped {len(self.skipped)} unreadable image(s) of {self.num_samples} in epoch "
                              f"{epoch + 1} (skip_bad=True); the first: {self.skipped[0][1]}", UserWarning, stacklevel=2)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        return (f"ImageFolderLoader({self.dataset!r}, batch_size={self.batch_size}, train={self.train}, "
                f"crop={self.crop!r}, shuffle={self.shuffle}, seed={self.seed}, num_workers={self.num_workers}, "
                f"skip_bad={self.skip_bad})")
