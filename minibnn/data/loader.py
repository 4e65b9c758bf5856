"""Mini-batch iteration over in-memory arrays with reproducible per-epoch shuffling."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .transforms import BatchTransform

__all__ = ["DataLoader"]


class Batching:
    """What every loader shares: the batch size, the seed, the epoch of the next iteration, len()."""

    def _setup_batching(self, batch_size: int, drop_last: bool, seed: int | None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size, self.drop_last = int(batch_size), bool(drop_last)
        self.seed = int(np.random.SeedSequence().entropy) if seed is None else int(seed)
        self.epoch = 0  # epoch used by the next iteration

    @property
    def num_samples(self) -> int:  # pragma: no cover - each loader says
        raise NotImplementedError

    def __len__(self) -> int:
        """Number of batches per epoch."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use `epoch` (a non-negative int)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)


class DataLoader(Batching):
    """Iterate (images float32, labels int64) mini-batches.

    Epochs: each `iter(loader)` uses the loader's current epoch and then advances it
    by one, so consecutive loops see epochs 0, 1, 2, ... . `set_epoch(e)` makes the
    next iteration use epoch e (then e + 1, ...). The shuffle order and the transform's
    generator depend only on (seed, epoch), never on how many epochs ran before.
    With seed=None a random seed is drawn once at construction (kept in `.seed`).
    Batches are always fresh arrays; the source arrays are never modified.
    """

    def __init__(self, images, labels, batch_size: int = 64, shuffle: bool = False,
                 seed: int | None = None, drop_last: bool = False,
                 transform: BatchTransform | None = None) -> None:
        self.images, self.labels = np.asarray(images), np.asarray(labels)
        if len(self.images) != len(self.labels):
            raise ValueError(f"images and labels must have the same length, got "
                             f"{len(self.images)} images and {len(self.labels)} labels")
        self._setup_batching(batch_size, drop_last, seed)
        self.shuffle, self.transform = shuffle, transform

    @property
    def num_samples(self) -> int:
        """Number of samples in the data set."""
        return len(self.labels)

    def generators(self, epoch: int) -> tuple[np.random.Generator, np.random.Generator]:
        """(shuffle rng, transform rng) for `epoch`, derived from (seed, epoch) only."""
        order_ss, transform_ss = np.random.SeedSequence((self.seed, epoch)).spawn(2)
        return np.random.default_rng(order_ss), np.random.default_rng(transform_ss)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Start an epoch (consuming the epoch counter now) and return its batches."""
        epoch, self.epoch = self.epoch, self.epoch + 1
        order_rng, transform_rng = self.generators(epoch)
        n = self.num_samples
        order = order_rng.permutation(n) if self.shuffle else np.arange(n)
        return self._batches(order, transform_rng)

    def _batches(self, order: np.ndarray,
                 rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield the batches for one precomputed sample order."""
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[idx].astype(np.float32, copy=False)
            if self.transform is not None:
                x = self.transform(x, rng)
            yield x, self.labels[idx].astype(np.int64, copy=False)

    def __repr__(self) -> str:
        return (f"DataLoader(num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last}, "
                f"transform={self.transform!r})")
