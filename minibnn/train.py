"""The training loop: fit / evaluate, metrics, per-epoch atomic checkpoints, resume, progress bar."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


import numpy as np
from tqdm.auto import tqdm

from minibnn import backend, random
from minibnn import functional as F
from minibnn import io
from minibnn.autograd import Tensor, no_grad

CHECKPOINT = "checkpoint"  # checkpoint.json + checkpoint.npz inside the checkpoint folder


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and the step."""


class TrainingOutOfMemory(MemoryError):
    """Memory ran out during a training step (GPU or host); the message names the batch size."""


@dataclass
class History:
    """Per-epoch metrics of a run."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    def append(self, record: dict[str, float]) -> None:
        self.epochs.append(record)

    def __getitem__(self, key: str) -> list[float]:
        return [r[key] for r in self.epochs if key in r]

    def __len__(self) -> int:
        return len(self.epochs)


def evaluate(model, loader, progress: bool = False) -> dict[str, float]:
    """Loss, accuracy and throughput of ``model`` (in eval mode) over ``loader``.

    Loss and correct counts are summed where the model runs (on the GPU for ``cuda``) and read
    back once at the end.
    """
    was_training = model.training
    model.train(False)  # evaluation mode
    xp = backend.xp()
    total_loss, correct, count = xp.zeros((), np.float64), xp.zeros((), np.int64), 0
    start = time.perf_counter()
    with no_grad():
        for x, y in tqdm(loader, desc="eval", leave=False, disable=not progress):
            logits = model(Tensor(x))
            total_loss += F.cross_entropy(logits, y).data * len(y)
            correct += _correct(logits, y)
            count += len(y)
    model.train(was_training)
    total_loss, correct = (float(v) for v in backend.to_numpy(xp.stack([total_loss, correct.astype(np.float64)])))
    elapsed = time.perf_counter() - start
    if count == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"loss": total_loss / count, "accuracy": correct / count, "images_per_s": count / elapsed}


def _correct(logits: Tensor, labels):
    """Number of right predictions, as a 0-d array where the logits are (no host sync)."""
    xp = backend.get_array_module(logits.data)
    return (logits.data.argmax(axis=1) == backend.move_to(xp, labels)).sum()


def fit(model, train_loader, optimizer, epochs: int, val_loader=None, schedule=None,
        checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
        progress: bool = True, verbose: bool = True, max_seconds: float | None = None) -> History:
    """Train ``model`` for ``epochs`` epochs; ``schedule.step()`` runs after every batch.

    With ``checkpoint_dir``, a checkpoint (model, optimizer, schedule, RNG, history) is
    written atomically after each epoch; ``resume=True`` continues from it. With
    ``max_seconds`` training stops after the batch that exceeds the time budget.
    ``progress`` shows a tqdm bar per epoch, ``verbose`` prints one line per epoch.
    """
    history, start_epoch = History(), 0
    if resume:
        if checkpoint_dir is None:
            raise ValueError("fit(resume=True) needs the checkpoint_dir to resume from")
        start_epoch, history = load_checkpoint(checkpoint_dir, model, optimizer, schedule)
    started = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        record = _train_epoch(model, train_loader, optimizer, schedule, epoch, epochs, progress,
                              None if max_seconds is None else started + max_seconds)
        if val_loader is not None:
            try:
                val = evaluate(model, val_loader)
            except MemoryError as exc:
                raise _out_of_memory(exc, f"the validation of epoch {epoch + 1}",
                                     getattr(val_loader, "batch_size", "?")) from exc
            record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        history.append(record)
        if verbose:
            tqdm.write(_describe(record))
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, model, optimizer, schedule, epoch, history)
        if record.get("stopped_early"):
            break
    return history


def _train_epoch(model, loader, optimizer, schedule, epoch: int, epochs: int, progress: bool,
                 deadline: float | None) -> dict[str, float]:
    model.train()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    total_loss, correct, count, stopped = 0.0, 0, 0, False
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not progress)
    for step, (x, y) in enumerate(bar):
        try:
            value, right = train_step(model, optimizer, x, y, epoch, step)
        except MemoryError as exc:  # cupy's OutOfMemoryError is a MemoryError too
            raise _out_of_memory(exc, f"epoch {epoch + 1}, step {step + 1}", len(y)) from exc
        if schedule is not None:
            schedule.step()
        total_loss += value * len(y)
        correct += right
        count += len(y)
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{total_loss / count:.4f}", acc=f"{correct / count:.4f}",
                        img_s=f"{count / elapsed:.0f}")
        if deadline is not None and time.perf_counter() > deadline:
            stopped = True
            break
    bar.close()
    record = {"epoch": epoch + 1, "loss": total_loss / max(count, 1), "accuracy": correct / max(count, 1),
              "seconds": time.perf_counter() - start, "images_per_s": count / (time.perf_counter() - start),
              "lr": float(optimizer.lr)}
    if hasattr(optimizer, "flip_ratio"):
        record["flip_ratio"] = float(optimizer.flip_ratio)
    if stopped:
        record["stopped_early"] = 1.0
    return record


def _out_of_memory(exc: MemoryError, where: str, batch_size: int) -> TrainingOutOfMemory:
    return TrainingOutOfMemory(
        f"out of memory at {where} with batch size {batch_size} on backend {backend.current()!r}: lower the "
        f"batch size (--batch-size); the last checkpoint is kept as it was ({type(exc).__name__}: {exc})")


def train_step(model, optimizer, x, y, epoch: int = 0, step: int = 0) -> tuple[float, int]:
    """One training step on a batch: (loss, correct predictions), what fit() does per batch.

    Forward, backward, then one host sync reads the loss, the correct count and whether every
    gradient is finite; TrainingDiverged (naming ``epoch`` and ``step``) is raised before the
    optimizer step, so a NaN never reaches the weights.
    """
    stats, names = forward_backward(model, x, y)
    stats = backend.to_numpy(stats)  # the step's one device-to-host sync
    value = float(stats[0])
    if not math.isfinite(value):
        raise TrainingDiverged(f"loss became {value} at epoch {epoch + 1}, step {step + 1}; "
                               "lower the learning rate (the last checkpoint is kept as it was)")
    for name, total in zip(names, stats[2:]):  # a binary layer's sign() can hide NaN from the loss
        if not math.isfinite(total):
            raise TrainingDiverged(f"the gradient of {name} became NaN or infinite at epoch {epoch + 1}, "
                                   f"step {step + 1}; lower the learning rate or check the input data "
                                   "(the last checkpoint is kept as it was)")
    optimizer.step()
    return value, int(stats[1])


def forward_backward(model, x, y) -> tuple[Any, list[str]]:
    """Loss, gradients and the step's statistics without waiting for the device.

    Returns a float64 vector on the model's device, [loss, correct predictions, then the float64 sum
    of each parameter's gradient], and the names of those parameters. A sum is NaN or infinite
    exactly when its gradient holds a NaN or an infinity (float64 cannot overflow on float32
    values), so one reduction per gradient checks it. Reading the vector is the training step's
    one host sync on the GPU.
    """
    logits = model(Tensor(x))
    loss = F.cross_entropy(logits, y)  # host labels: checked on the host, copied once
    model.zero_grad()
    loss.backward()
    xp = backend.get_array_module(loss.data)
    named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    stats = xp.stack([loss.data.astype(np.float64), _correct(logits, y).astype(np.float64),
                      *(g.sum(dtype=np.float64) for _, g in named)])
    return stats, [name for name, _ in named]


def _describe(record: dict[str, float]) -> str:
    text = (f"epoch {record['epoch']}: loss {record['loss']:.4f}  acc {record['accuracy']:.4f}  "
            f"{record['seconds']:.1f}s ({record['images_per_s']:.0f} img/s)")
    if "val_accuracy" in record:
        text += f"  val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.4f}"
    return text


def save_checkpoint(folder, model, optimizer, schedule, epoch: int, history: History) -> Path:
    """Write model, optimizer and schedule state, RNG state and history atomically to ``folder``."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    arrays.update({f"optim/{k}": v for k, v in opt_state["arrays"].items()})
    header = {
        "format": "minibnn-checkpoint",
        "architecture": model.to_config(),
        "epoch": epoch,
        "history": history.epochs,
        "optimizer": opt_state["hyper"],
        "schedule": schedule.state_dict() if schedule is not None else None,
        "rng": random.get_state(),
    }
    return io.write_pair(Path(folder) / CHECKPOINT, header, arrays, versioned=True)


def load_checkpoint(folder, model, optimizer, schedule=None) -> tuple[int, History]:
    """Restore a checkpoint written by save_checkpoint; return (next epoch, history)."""
    header, arrays = io.read_pair(Path(folder) / CHECKPOINT, fmt="minibnn-checkpoint")
    if header.get("architecture") != model.to_config():
        raise io.ModelFileError(f"{Path(folder) / CHECKPOINT}.json: the checkpoint was written for another architecture")
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
    optimizer.load_state_dict({"hyper": header["optimizer"],
                               "arrays": {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}})
    if schedule is not None and header.get("schedule") is not None:
        schedule.load_state_dict(header["schedule"])
    random.set_state(header["rng"])
    history = list(header["history"])
    if history and history[-1].get("stopped_early"):  # a time budget cut that epoch short: redo it
        return header["epoch"], History(history[:-1])
    return header["epoch"] + 1, History(history)


def predict(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class predictions of ``model`` (eval mode) for a batch of images."""
    model.train(False)  # evaluation mode
    out = []
    with no_grad():
        for i in range(0, len(images), batch_size):
            out.append(backend.to_numpy(model(Tensor(images[i : i + batch_size])).data).argmax(axis=1))
    return np.concatenate(out)


