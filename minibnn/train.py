"""The training loop: fit / evaluate, metrics, per-epoch atomic checkpoints, resume, progress bar."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path


import numpy as np
from tqdm.auto import tqdm

from minibnn import backend, random
from minibnn import functional as F
from minibnn import io
from minibnn.autograd import Tensor, no_grad

CHECKPOINT = "checkpoint"  # checkpoint.json + checkpoint.npz inside the checkpoint folder


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and the step."""


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
    """Loss, accuracy and throughput of ``model`` (in eval mode) over ``loader``."""
    was_training = model.training
    model.train(False)  # evaluation mode
    total_loss, correct, count = 0.0, 0, 0
    start = time.perf_counter()
    with no_grad():
        for x, y in tqdm(loader, desc="eval", leave=False, disable=not progress):
            logits = model(Tensor(x))
            total_loss += F.cross_entropy(logits, backend.xp().asarray(y)).item() * len(y)
            correct += int((backend.to_numpy(logits.data).argmax(axis=1) == y).sum())
            count += len(y)
    model.train(was_training)
    elapsed = time.perf_counter() - start
    if count == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"loss": total_loss / count, "accuracy": correct / count, "images_per_s": count / elapsed}


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
            val = evaluate(model, val_loader)
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
    xp = backend.xp()
    total_loss, correct, count, stopped = 0.0, 0, 0, False
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not progress)
    for step, (x, y) in enumerate(bar):
        logits = model(Tensor(x))
        loss = F.cross_entropy(logits, xp.asarray(y))
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(f"loss became {value} at epoch {epoch + 1}, step {step + 1}; "
                                   "lower the learning rate (the last checkpoint is kept as it was)")
        optimizer.zero_grad()
        loss.backward()
        _check_gradients(model, epoch, step)  # a binary layer's sign() can hide NaN from the loss
        optimizer.step()
        if schedule is not None:
            schedule.step()
        total_loss += value * len(y)
        correct += int((backend.to_numpy(logits.data).argmax(axis=1) == y).sum())
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


def _check_gradients(model, epoch: int, step: int) -> None:
    """Raise TrainingDiverged if any parameter's gradient is NaN or infinite."""
    for name, p in model.named_parameters():
        if p.grad is not None and not bool(backend.get_array_module(p.grad).isfinite(p.grad).all()):
            raise TrainingDiverged(f"the gradient of {name} became NaN or infinite at epoch {epoch + 1}, "
                                   f"step {step + 1}; lower the learning rate or check the input data "
                                   "(the last checkpoint is kept as it was)")


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


