# %% [markdown]
# # 7. On the GPU
#
# minibnn runs its whole stack on CuPy when you say `minibnn.use("cuda")`: autograd, every layer, the
# optimizers, `fit` / `evaluate`, the converter and packed inference, with the binary kernels as CUDA sources
# compiled at run time. This notebook trains the same binary LeNet on the CPU and, where there is one, on the
# GPU, and compares them.
#
# **Where there is no GPU** (no CuPy, no NVIDIA driver, or no device), the first code cell says so and why,
# and every GPU cell below skips itself: the notebook still runs to the end, with the CPU half of each
# comparison. The stored outputs were made on a machine without a GPU: there CUDA reports "driver version is
# insufficient" simply because no NVIDIA driver is installed. BENCHMARKS.md section 6 has an H200's numbers.
#
# **You will learn**
# 1. how to check whether the `cuda` backend can run here, and what it says when it cannot;
# 2. how to move a training run to the GPU (`minibnn.use` / `minibnn.using`, `model.to`);
# 3. that the same seed gives the same training on both devices, and how much faster the GPU is;
# 4. that packed inference runs on the GPU too, and agrees with the CPU.

# %%
import os
import time
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")   # tqdm without ipywidgets
QUICK = os.environ.get("MINIBNN_QUICK", "0") not in ("", "0")   # the tests set MINIBNN_QUICK=1

import matplotlib.pyplot as plt
import numpy as np

import minibnn
from minibnn import data, deploy, models, optim, train
from minibnn.backend import BackendUnavailable

plt.rcParams.update({"figure.dpi": 80, "figure.figsize": (6, 3), "axes.grid": True, "grid.alpha": 0.3})
try:
    from minibnn.backend import cuda as cuda_backend
    cuda_backend.check_available()              # CuPy importable, a device, the kernels compile
    GPU, WHY = True, cuda_backend.device_name()
except Exception as exc:                        # BackendUnavailable says what is missing and how to fix it
    GPU, WHY = False, f"{type(exc).__name__}: {exc}" if not isinstance(exc, BackendUnavailable) else str(exc)
CPU = "native" if "native" in minibnn.backend.available() else "numpy"
if GPU:
    print(f"GPU found: {WHY}. The GPU cells below run.")
else:
    print(f"No GPU here, so the GPU cells below are skipped (the CPU half still runs).\nWhy: {WHY}")
print(f"{'quick' if QUICK else 'full'} mode; CPU backend {CPU!r}")

# %% [markdown]
# ## 1. The same training, step by step, on each device
#
# One function trains a binary LeNet from seed 0 for a fixed number of steps on the current backend and
# records the loss of every step. `train.train_step` is what `fit` runs per batch: forward, backward, one read
# of the loss from the device, and the optimizer step. Parameters are created on the current backend, and
# every NumPy batch is copied to the GPU once when it becomes a `Tensor`.

# %%
N_TRAIN = 1920 if QUICK else 12800
N_TEST = 1000 if QUICK else 10000
BATCH = 128
x_train, y_train = data.load_mnist("train", normalize=True)  # standardised: MNIST_MEAN, MNIST_STD
x_test, y_test = data.load_mnist("test", normalize=True)
x_train, y_train = x_train[:N_TRAIN], y_train[:N_TRAIN]
x_test, y_test = x_test[:N_TEST], y_test[:N_TEST]
WARMUP = 3                                       # steps not timed (first calls compile and allocate)


def run(backend_name):
    """Train on ``backend_name``: (model, losses per step, images/s after warm-up, test accuracy)."""
    with minibnn.using(backend_name):
        minibnn.manual_seed(0)
        model = models.lenet(act_bit=1, weight_bit=1)          # created on this backend
        opt = optim.Adam(model.parameters(), lr=3e-3)
        losses, start = [], None
        for step, (x, y) in enumerate(data.DataLoader(x_train, y_train, BATCH, shuffle=True, seed=0)):
            if step == WARMUP:
                start = time.perf_counter()
            loss, _ = train.train_step(model, opt, x, y)
            losses.append(loss)
        rate = (N_TRAIN - WARMUP * BATCH) / (time.perf_counter() - start)
        accuracy = train.evaluate(model, data.DataLoader(x_test, y_test, 500))["accuracy"]
    return model, np.array(losses), rate, accuracy


cpu_model, cpu_losses, cpu_rate, cpu_accuracy = run(CPU)
print(f"{CPU}: {cpu_rate:,.0f} training images/s, test accuracy {cpu_accuracy:.3f}")
assert cpu_losses[-5:].mean() < cpu_losses[:5].mean()
assert cpu_accuracy > 0.6

# %%
if GPU:
    gpu_model, gpu_losses, gpu_rate, gpu_accuracy = run("cuda")
    print(f"cuda: {gpu_rate:,.0f} training images/s ({gpu_rate / cpu_rate:.1f}x {CPU}), "
          f"test accuracy {gpu_accuracy:.3f}")
    print(f"first losses  {CPU}: {np.round(cpu_losses[:4], 4)}\n              cuda: {np.round(gpu_losses[:4], 4)}")
    assert abs(gpu_losses[0] - cpu_losses[0]) < 1e-3          # the same weights and batch: the same first loss
    assert abs(gpu_accuracy - cpu_accuracy) < 0.05
else:
    gpu_losses, gpu_rate, gpu_accuracy = None, None, None
    print("skipped: no GPU")

# %% [markdown]
# On a machine with a GPU, the two loss curves start at the same value (same seed, same weights, same first
# batch) and then drift
# apart slowly: cuBLAS and OpenBLAS round float sums in different orders, and a binary network amplifies
# tiny differences whenever a value sits right at a sign change. The binary layers themselves compute the
# same integers on both devices.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [3, 2]})
ax1.plot(cpu_losses, label=f"CPU ({CPU})")
if GPU:
    ax1.plot(gpu_losses, "--", label="GPU (cuda)")
ax1.set_xlabel("training step")
ax1.set_ylabel("cross-entropy")
ax1.set_title("the same training on each device", fontsize=10)
ax1.legend()
names = [f"CPU ({CPU})\n{os.cpu_count()} cores"] + ([f"GPU (cuda)\n{WHY.split(' (')[0]}"] if GPU else [])
rates = [cpu_rate] + ([gpu_rate] if GPU else [])
bars = ax2.bar(names, rates, color=["C0", "C1"][: len(rates)])
ax2.bar_label(bars, fmt="%.0f", fontsize=8)
ax2.set_ylabel("training images / s")
ax2.set_ylim(0, 1.15 * max(rates))
if not GPU:
    ax2.text(0.72, 0.5, "no GPU\nhere", transform=ax2.transAxes, ha="center", va="center", fontsize=12, color="0.5")
    ax2.set_xlim(-0.6, 1.6)
ax2.set_title("throughput (after warm-up)", fontsize=10)
plt.tight_layout()
plt.show()
assert len(cpu_losses) == -(-N_TRAIN // BATCH)

# %% [markdown]
# ## 2. Packed inference on the GPU
#
# The converter reads the weights back to the host and packs them; `PackedModel.predict` runs on whatever
# backend is current, copying the packed weights to the GPU once. On the GPU its logits are a CuPy array
# (`minibnn.backend.to_numpy` brings them back). On a GPU, the same packed model run on the CPU and on the GPU
# must predict the same digits: the binary layers give identical integers, only the float layers round
# differently (this check is skipped in the stored outputs, which were made without a GPU).

# %%
with minibnn.using(CPU):
    packed = deploy.convert(cpu_model, input_shape=(1, 28, 28), name="lenet")
    start = time.perf_counter()
    cpu_logits = packed.predict(x_test, batch_size=500)
    cpu_packed_rate = N_TEST / (time.perf_counter() - start)
print(f"packed on {CPU}: {cpu_packed_rate:,.0f} images/s, accuracy {np.mean(cpu_logits.argmax(1) == y_test):.3f}")
assert np.mean(cpu_logits.argmax(1) == y_test) == cpu_accuracy

if GPU:
    with minibnn.using("cuda"):
        packed.predict(x_test[:500])                               # warm-up: copies the weights once
        start = time.perf_counter()
        gpu_logits = minibnn.backend.to_numpy(packed.predict(x_test, batch_size=500))
        gpu_packed_rate = N_TEST / (time.perf_counter() - start)
    agree = np.mean(gpu_logits.argmax(1) == cpu_logits.argmax(1))
    print(f"packed on cuda: {gpu_packed_rate:,.0f} images/s; the same prediction as the CPU for {agree:.2%} "
          f"of the images; largest logit difference {np.abs(gpu_logits - cpu_logits).max():.2e}")
    assert agree > 0.99
else:
    print("skipped: no GPU")

# %% [markdown]
# ## 3. Moving a trained model between devices
#
# A model trained on one backend moves with `model.to(name)`, in place, like PyTorch's `model.to("cuda")`
# (build the optimizer after the move). Checkpoints and model files are always written as NumPy arrays, so a
# model saved on the GPU loads on the CPU and back.

# %%
if GPU:
    with minibnn.using("cuda"):
        cpu_model.to("cuda")
        on_gpu = train.evaluate(cpu_model, data.DataLoader(x_test, y_test, 500))["accuracy"]
    cpu_model.to(CPU)
    print(f"the CPU-trained model, evaluated on the GPU: accuracy {on_gpu:.3f} (on the CPU {cpu_accuracy:.3f})")
    assert abs(on_gpu - cpu_accuracy) < 0.01
else:
    print("skipped: no GPU")
assert all(isinstance(p.data, np.ndarray) for p in cpu_model.parameters())   # back on the host

# %% [markdown]
# ## What to try next
#
# * Install CuPy for your CUDA version (`pip install "minibnn[gpu]"`, or `"minibnn[gpu-cuda12]"`) and run
#   this notebook on a machine with an NVIDIA GPU.
# * `minibnn train --backend cuda --model lenet --epochs 10` trains from the command line; larger batches
#   (`--batch-size 512`) keep the GPU busier.
# * `bash benchmarks/gpu_check.sh` runs the GPU tests and benchmarks; BENCHMARKS.md section 6 has an H200's numbers.
# * Train ResNet-18 (`models.resnet18()`) on the GPU, where the gap to the CPU is far larger than for LeNet.
