"""Resources: training memory does not grow from epoch to epoch; a batch or a model too large for memory
fails with an error naming the sizes (checked with real allocation failures under an address-space limit)."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import minibnn
from minibnn import data, models, optim, train


class _MeasuredLoader:
    """A DataLoader that reads tracemalloc when fit() starts each epoch (set_epoch): the memory held
    at that point and the peak of the epoch before (training, validation, checkpoint)."""

    def __init__(self, inner):
        self.inner, self.held, self.peaks = inner, [], []

    def set_epoch(self, epoch):
        peak = tracemalloc.get_traced_memory()[1]
        gc.collect()  # what is held, not garbage waiting for the cycle collector
        current = tracemalloc.get_traced_memory()[0]
        if epoch > 0:
            self.peaks.append(peak)
        self.held.append(current)
        tracemalloc.reset_peak()
        self.inner.set_epoch(epoch)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        return iter(self.inner)


def test_training_memory_does_not_grow_from_epoch_to_epoch(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 400)
    minibnn.manual_seed(0)
    model = models.binary_mlp(hidden=(64, 64))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loader = _MeasuredLoader(data.DataLoader(x, y, 100, shuffle=True, seed=0))
    epochs = 6
    sched = optim.make_schedule("cosine", opt, total_steps=epochs * len(loader))
    tracemalloc.start()
    try:
        train.fit(model, loader, opt, epochs, val_loader=data.DataLoader(x[:200], y[:200], 100), schedule=sched,
                  checkpoint_dir=tmp_path, progress=False, verbose=False)
        loader.peaks.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
    assert len(loader.peaks) == epochs and len(loader.held) == epochs
    # epoch 1 creates the optimizer state; from epoch 2 on every epoch needs the same memory, and what
    # stays allocated between epochs grows only by the history's records (about 3 KiB per epoch here)
    assert max(loader.peaks[2:]) <= loader.peaks[1] * 1.1 + 64 * 1024, [p // 1024 for p in loader.peaks]
    assert max(loader.held[2:]) <= loader.held[1] + 32 * 1024, [h // 1024 for h in loader.held]


# ---- too large for memory: real allocation failures in a child process under RLIMIT_AS ----------

_CHILD = textwrap.dedent('''
    import json, resource, sys
    import numpy as np
    import minibnn
    from minibnn import data, models, nn, optim, train

    def limited(margin):
        """Lower the soft address-space limit to what the process maps now plus ``margin`` bytes."""
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + margin, resource.getrlimit(resource.RLIMIT_AS)[1]))

    def unlimited():
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))

    def attempt(case, margin, run):
        limited(margin)
        try:
            run()
            result = {"case": case, "raised": None}
        except BaseException as exc:
            result = {"case": case, "raised": type(exc).__name__, "memory_error": isinstance(exc, MemoryError),
                      "training_oom": isinstance(exc, train.TrainingOutOfMemory), "message": str(exc)}
        finally:
            unlimited()
        print(json.dumps(result), flush=True)

    rng = np.random.default_rng(0)
    MiB = 2**20
    for dtype in (np.float32, np.float64):  # BLAS allocates its work buffers on first use: before the limit
        a = np.ones((512, 512), dtype)
        a @ a

    # a training step whose activations do not fit: 4000 x 4096 float32 = 62.5 MiB per array
    x = rng.standard_normal((4000, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 4000)
    minibnn.manual_seed(0)
    model = models.binary_mlp(hidden=(4096, 256))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loader = data.DataLoader(x, y, 4000)
    train.train_step(model, opt, x[:8], y[:8])  # warm: every code path once, the optimizer state allocated
    attempt("step", 100 * MiB, lambda: train.fit(model, loader, opt, 1, progress=False, verbose=False))

    # a batch the loader itself cannot allocate: 20000 x 784 float32 = 59.8 MiB, 30 MiB left
    x = np.zeros((20000, 1, 28, 28), np.float32)
    y = np.zeros(20000, np.int64)
    loader = data.DataLoader(x, y, 20000, shuffle=True, seed=0)
    attempt("loader", 30 * MiB, lambda: train.fit(model, loader, opt, 1, progress=False, verbose=False))

    # a model whose parameters cannot be allocated
    attempt("dense", 256 * MiB, lambda: nn.Dense(10**6, 10**6))
    attempt("zoo", 256 * MiB, lambda: models.binary_mlp(hidden=(64, 10**6)))
''')


@pytest.fixture(scope="module")
def out_of_memory_results():
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_AS and /proc/self/status: Linux only")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MINIBNN_BACKEND": "numpy"}
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["case"]: r for r in map(json.loads, proc.stdout.splitlines())}


def test_training_step_out_of_memory_names_the_batch_and_sizes(out_of_memory_results):
    r = out_of_memory_results["step"]
    assert r["training_oom"], r
    message = r["message"]
    assert "epoch 1, step 1" in message and "batch size 4000" in message
    assert "(4000, 1, 28, 28)" in message and "float32" in message
    assert f"{4000 * 784 * 4 / 2**20:.1f} MiB" in message  # the input batch's bytes
    assert "MemoryError" in message and "Unable to allocate" in message  # the failed allocation, with its size


def test_batch_the_loader_cannot_allocate_names_the_batch_size(out_of_memory_results):
    r = out_of_memory_results["loader"]
    assert r["training_oom"], r
    assert "loading the batch" in r["message"] and "batch size 20000" in r["message"]
    assert "Unable to allocate" in r["message"]


@pytest.mark.parametrize("case, layer, shape", [("dense", "Dense", (10**6, 10**6)), ("zoo", "QDense", (10**6, 64))])
def test_model_too_large_names_the_layer_and_bytes(out_of_memory_results, case, layer, shape):
    r = out_of_memory_results[case]
    assert r["memory_error"] and r["raised"] != "_ArrayMemoryError", r
    message = r["message"]
    assert message.startswith(f"{layer}: ") and str(shape) in message
    assert f"{4 * shape[0] * shape[1]:,} bytes" in message
