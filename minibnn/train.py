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
    try:
        with no_grad():
            for x, y in tqdm(loader, desc="eval", leave=False, disable=not progress):
                logits = model(Tensor(x))
                total_loss += F.cross_entropy(logits, y).data * len(y)
                correct += _correct(logits, y)
                count += len(y)
    finally:  # the caller's mode comes back even when a batch fails
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
    for step, (x, y) in _batches(bar, epoch, getattr(loader, "batch_size", "?")):
        try:
            value, right = train_step(model, optimizer, x, y, epoch, step)
        except MemoryError as exc:  # cupy's OutOfMemoryError is a MemoryError too
            raise _out_of_memory(exc, f"epoch {epoch + 1}, step {step + 1}", len(y), x) from exc
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


def _batches(batches, epoch: int, batch_size):
    """(step, batch) pairs; a batch the loader cannot allocate raises TrainingOutOfMemory."""
    it, step = iter(batches), 0
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except MemoryError as exc:
            raise _out_of_memory(exc, f"epoch {epoch + 1}, step {step + 1} (loading the batch)", batch_size) from exc
        yield step, batch
        step += 1


def _out_of_memory(exc: MemoryError, where: str, batch_size: int, batch=None) -> TrainingOutOfMemory:
    """The error fit() raises when memory runs out: where, the batch size, the input batch's shape and
    bytes, and the failed allocation (NumPy's and CuPy's messages give its shape and size)."""
    sizes = ""
    if batch is not None and hasattr(batch, "shape"):
        sizes = (f" (input batch of shape {tuple(batch.shape)}, {batch.dtype}, "
                 f"{_megabytes(batch.nbytes)})")
    return TrainingOutOfMemory(
        f"out of memory at {where} with batch size {batch_size}{sizes} on backend {backend.current()!r}: "
        f"lower the batch size (--batch-size); the last checkpoint is kept as it was "
        f"({type(exc).__name__}: {exc})")


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


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


def load_checkpoint(folder, model, optimizer, schedule=None, allow_nonfinite: bool = False) -> tuple[int, History]:
    """Restore a checkpoint written by save_checkpoint; return (next epoch, history).

    Everything in the file is checked first (settings by type and range, arrays by shape, dtype and
    finiteness); a bad file raises ModelFileError naming it and leaves model, optimizer, schedule and
    the random generator as they were.
    """
    json_path = Path(folder) / f"{CHECKPOINT}.json"
    header, arrays = io.read_pair(Path(folder) / CHECKPOINT, fmt="minibnn-checkpoint")
    try:
        if header.get("architecture") != model.to_config():
            raise ValueError("the checkpoint was written for another architecture")
        io.check_finite(json_path, arrays, allow_nonfinite)
        epoch, history = header.get("epoch"), header.get("history")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < 2**31:
            raise ValueError(f"epoch must be an int >= 0, got {str(epoch)[:40]}")
        if not isinstance(history, list) or len(history) > epoch + 1 or not all(map(_is_record, history)):
            raise ValueError(f"history must list a record of numbers per epoch (up to {epoch + 1}), "
                             f"got {str(history)[:80]}")
        model_arrays = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
        optim_arrays = {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}
        if len(model_arrays) + len(optim_arrays) != len(arrays):
            raise ValueError("arrays must be named model/... or optim/...")
        staged = _staged_model(model, model_arrays)
        restores = [_restorer(optimizer, {"hyper": header.get("optimizer"), "arrays": optim_arrays})]
        if schedule is not None and header.get("schedule") is not None:
            restores.append(_restorer(schedule, header["schedule"]))
        random.check_state(header.get("rng"))
    except (KeyError, ValueError, TypeError) as exc:
        raise io.ModelFileError(f"{json_path}: {exc}") from None
    model.load_state_dict(staged)
    for restore in restores:  # the schedule's after the optimizer's: it sets the lr
        restore()
    random.set_state(header["rng"])
    history = list(history)
    if history and history[-1].get("stopped_early"):  # a time budget cut that epoch short: redo it
        return epoch, History(history[:-1])
    return epoch + 1, History(history)


def _is_record(record) -> bool:
    """A history record: names mapped to numbers (a validation loss may be infinite)."""
    return isinstance(record, dict) and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in record.items())


def _staged_model(model, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` checked against the model's parameters and buffers (names, shapes, floating dtypes)."""
    expected = dict(model.state_dict())
    if set(arrays) != set(expected):
        raise ValueError(f"model arrays differ from the model's: missing {sorted(set(expected) - set(arrays))[:5]}, "
                         f"unknown {sorted(set(arrays) - set(expected))[:5]}")
    for name, a in arrays.items():
        if a.shape != expected[name].shape or a.dtype.kind != "f":
            raise ValueError(f"model array {name} is {a.dtype}{list(a.shape)}, the model has "
                             f"{expected[name].dtype}{list(expected[name].shape)}")
    return arrays


def _restorer(owner, state: dict):
    """Check an optimizer's or schedule's state completely; return the function that restores it."""
    checked = getattr(owner, "_checked", None)
    if checked is not None:
        return checked(state)
    return lambda: owner.load_state_dict(state)  # a user's class: its own checks


def predict(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class predictions of ``model`` (run in eval mode, then left in the mode it was in) for images."""
    was_training = model.training
    model.train(False)  # evaluation mode
    out = []
    try:
        with no_grad():
            for i in range(0, len(images), batch_size):
                out.append(backend.to_numpy(model(Tensor(images[i : i + batch_size])).data).argmax(axis=1))
    finally:
        model.train(was_training)
    return np.concatenate(out)


