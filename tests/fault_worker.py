"""A subprocess for tests/test_faults.py: trains or saves until it is done, killed, or out of disk.

    python tests/fault_worker.py train DIR EPOCHS     train with a checkpoint per epoch (resuming from
                                                      DIR when it holds one), then save DIR/final
    python tests/fault_worker.py loop DIR KIND        save forever, alternating contents 0 and 1
    python tests/fault_worker.py fault DIR KIND FAULT [deep]
                                                      write content 1 over content 0 under FAULT:
                                                      ``npz`` / ``json`` (a file-size limit that the
                                                      .npz / the .json exceeds) or ``readonly`` (DIR is
                                                      read-only; root's override is dropped); prints
                                                      the error as JSON

KIND is ``model`` (minibnn.save to DIR/m), ``checkpoint`` (train.save_checkpoint to DIR),
``packed`` (PackedModel.save to DIR/binarized_m) or ``convert`` (minibnn convert DIR/src<i>/m.json
--out DIR). ``train`` and ``loop`` print ``ready`` once their setup is done (imports, data,
models), so the killer aims at the training and the saves. The test imports the builders below.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import minibnn
from minibnn import data, deploy, nn, optim, train

SAMPLES, BATCH = 192, 64
STEMS = {"model": "m", "checkpoint": train.CHECKPOINT, "packed": "binarized_m", "convert": "binarized_m"}


def training_model(epochs: int, batches: int = -(-SAMPLES // BATCH)):
    """(model, optimizer, schedule) of the training run; the model draws dropout masks from the global generator."""
    minibnn.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dense(784, 96), nn.BatchNorm1d(96), nn.Dropout(0.2),
                          nn.QDense(96, 96), nn.BatchNorm1d(96), nn.Tanh(), nn.Dense(96, 10))
    optimizer = optim.make_optimizer("adam", model, 2e-3)
    return model, optimizer, optim.make_schedule("cosine", optimizer, total_steps=epochs * batches)


def training_loader():
    """A few hundred MNIST images, shuffled and randomly cropped (the loader's own generator)."""
    images, labels = data.load_mnist("test", verify=False)  # the smaller file: a quick start
    images = data.normalize(images[:SAMPLES], data.MNIST_MEAN, data.MNIST_STD)
    return data.DataLoader(images, labels[:SAMPLES], BATCH, shuffle=True, seed=0,
                           transform=data.RandomCrop(28, padding=2))


def saved_model(i: int, deep: bool = False):
    """Float model ``i`` (0 or 1); ``deep``: 60 parameter-free layers, so its .json outweighs its .npz."""
    minibnn.manual_seed(100 + i)
    if deep:
        return nn.Sequential(*[nn.ReLU() for _ in range(60)], nn.QDense(4, 4), nn.Dense(4, 2))
    return minibnn.models.binary_mlp(hidden=(128, 64))


def input_shape(deep: bool) -> tuple[int, ...]:
    return (4,) if deep else (1, 28, 28)


def writer(kind: str, folder: Path, deep: bool = False):
    """A function i -> write content i (0 or 1) of ``kind`` to ``folder``; returns what it wrote."""
    if kind == "model":
        models = [saved_model(i, deep) for i in (0, 1)]
        return lambda i: minibnn.save(models[i], folder / "m")
    if kind == "checkpoint":
        runs = []
        for i in (0, 1):
            model = saved_model(i, deep)
            optimizer = optim.make_optimizer("adam", model, 1e-3)
            runs.append((model, optimizer, train.History([{"epoch": i + 1, "loss": 1.0 / (i + 1)}])))
        return lambda i: train.save_checkpoint(folder, runs[i][0], runs[i][1], None, i, runs[i][2])
    if kind == "packed":
        packed = [deploy.convert(saved_model(i, deep), input_shape(deep), name="m") for i in (0, 1)]
        return lambda i: packed[i].save(folder / "binarized_m")
    from minibnn.cli import main

    shape = ",".join(map(str, input_shape(deep)))
    for i in (0, 1):
        if not (folder / f"src{i}" / "m.json").exists():
            minibnn.save(saved_model(i, deep), folder / f"src{i}" / "m")
    args = [["convert", str(folder / f"src{i}" / "m.json"), "--out", str(folder), "--input-shape", shape]
            for i in (0, 1)]
    def convert(i: int) -> int:
        with contextlib.redirect_stdout(io.StringIO()):  # its one line of sizes
            return main(args[i])
    return convert


def run_train(folder: Path, epochs: int) -> None:
    loader = training_loader()
    model, optimizer, schedule = training_model(epochs, len(loader))
    resume = (folder / f"{train.CHECKPOINT}.json").exists()
    print("ready", flush=True)
    train.fit(model, loader, optimizer, epochs, schedule=schedule, checkpoint_dir=folder, resume=resume,
              progress=False, verbose=False)
    minibnn.save(model, folder / "final")


def run_loop(folder: Path, kind: str) -> None:
    write = writer(kind, folder)
    print("ready", flush=True)
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        i = 0
        while True:
            write(i % 2)
            i += 1


def drop_root_override() -> str:
    """Let permission bits bind root too: drop CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH ('' or why not)."""
    if os.geteuid() != 0:
        return ""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        header, caps = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
        if libc.capget(ctypes.byref(header), caps) != 0:
            return f"capget failed (errno {ctypes.get_errno()})"
        caps[0].effective &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.capset(ctypes.byref(header), caps) != 0:
            return f"capset failed (errno {ctypes.get_errno()})"
    except (OSError, AttributeError) as exc:
        return f"cannot change capabilities: {exc}"
    return ""


def run_fault(folder: Path, kind: str, fault: str, deep: bool) -> dict:
    import resource  # POSIX only

    write = writer(kind, folder, deep)
    if fault == "readonly":
        why = drop_root_override()
        try:
            tempfile.TemporaryFile(dir=folder).close()
            return {"skip": why or f"{folder} is writable despite mode 0o555"}
        except PermissionError:
            pass
        limit = None
    else:
        with tempfile.TemporaryDirectory() as scratch:  # the sizes content 1 takes on disk
            writer(kind, Path(scratch), deep)(1)
            stem = STEMS[kind]
            json_size = (Path(scratch) / f"{stem}.json").stat().st_size
            npz_size = max(p.stat().st_size for p in Path(scratch).glob(f"{stem}*.npz"))
        if fault == "npz":
            limit = npz_size // 2
        elif json_size > npz_size:
            limit = (npz_size + json_size) // 2
        else:
            return {"skip": f"the .json ({json_size} B) is smaller than the .npz ({npz_size} B)"}
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            result = write(1)
    except OSError as exc:
        return {"type": type(exc).__name__, "errno": exc.errno, "message": str(exc), "limit": limit}
    finally:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    return {"type": None, "result": repr(result), "stderr": err.getvalue(), "limit": limit}


if __name__ == "__main__":
    command, where = sys.argv[1], Path(sys.argv[2])
    if command == "train":
        run_train(where, int(sys.argv[3]))
    elif command == "loop":
        run_loop(where, sys.argv[3])
    else:
        print(json.dumps(run_fault(where, sys.argv[3], sys.argv[4], "deep" in sys.argv[5:])))
