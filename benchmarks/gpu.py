"""GPU speed of minibnn's cuda backend against CuPy / PyTorch on the same card (issues 8 and 9).

Run from the repository root (the GPU machine has no network: run from the source tree):

    PYTHONPATH=. python benchmarks/gpu.py                       # full run, a few minutes
    PYTHONPATH=. python benchmarks/gpu.py --quick               # about 2 minutes: fewer shapes and repeats
    PYTHONPATH=. python benchmarks/gpu.py --quick --json gpu.json --no-torch
    PYTHONPATH=. python benchmarks/gpu.py --sections conv --repeats 100  # some parts only (gemm, conv, infer, train)
    python benchmarks/gpu.py --backend numpy --quick --tiny     # CPU smoke test of this script (seconds)

What it measures (minibnn on ``--backend``, default cuda; all inputs random and already on the device).
The binary kernels run on two paths where the backend has both (``cuda.set_tensor_cores``, issue 9):
TC, the tensor-core kernels (``mma.sync ... b1 ... and.popc``, the automatic choice on compute
capability >= 8.0), and CC, the CUDA-core (``__popcll``) kernels forced with
``set_tensor_cores(False)`` (restored to ``None`` afterwards). A CPU backend has one path, CPU, and
its TC rows read n/a.
1. gemm: ``xnor_gemm`` on pre-packed uint64 words at M = N = K = 4096 and at ResNet-18's (CIFAR
   variant, 32x32 input) 3x3 convolutions as GEMMs for batch 128 (M = 128 * OH * OW output positions,
   N = output channels, K = 9 * C bits), in T bit-MAC/s (M * N * K / s), against CuPy float32 and
   float16 and PyTorch bfloat16 matmul (cuBLAS) of the same M, N, K (T MAC/s); ratio = binary / float.
   The first 64 output rows of each path are checked against the numpy reference kernel.
2. conv: ``binary_conv2d`` (the real convolution on channel-packed NHWC words, not the GEMM) on every
   distinct 3x3 binary convolution of that ResNet-18 at batch 128 (padding 1 with pad_value 0 and the
   correction precomputed once, as the packed model runs them), in T bit-MAC/s (N * OH * OW * O * 9 * C
   / s), against PyTorch bfloat16 ``conv2d`` of the same shape with ``cudnn.benchmark`` on (this section
   only), timed in NCHW and in channels_last memory format, the faster one kept and named. Images 0 and
   N - 1 of each result are checked against ``numpy_ref.binary_conv2d`` on the host.
3. infer: images/s of the packed binary ResNet-18 (``minibnn.deploy.convert(model, (3, 32, 32))``,
   ``packed.predict(x)``) at batch 1 and 256, against PyTorch float32 and bfloat16 (``.to(bfloat16)``)
   inference (eval, no_grad, cudnn.benchmark on, NCHW or channels_last: the faster) of the same
   architecture.
4. train: images/s of a full training step (forward, cross_entropy, backward, Adam step with latent
   clipping) of binary LeNet (1x28x28, ``lenet(act_bit=1, weight_bit=1)``) and binary ResNet-18
   (3x32x32, ``resnet18()``), batch 256, against the same layer shapes in PyTorch float32 (the float
   minibnn model mirrored with benchmarks/deploy.py's ``to_torch``; cudnn.benchmark on, otherwise
   PyTorch's default settings, so its convolutions may use TF32).
At the end a table of issue 9's four targets (also in the --json output): xnor_gemm at 4096^3
>= 2,000 T bit-MAC/s (about 5x PyTorch bf16 MAC/s); ResNet-18's binary 3x3 convolutions >= 3x
PyTorch bf16 conv2d (summed over the network's layers); packed ResNet-18 inference at batch 256
>= PyTorch bf16; binary ResNet-18 training at batch 256 >= 0.5x PyTorch float32. Each reads met,
MISSED, or not run (its part failed or was skipped); with --tiny the sizes are not the targets'.

Timing: CUDA events (``cupy.cuda.Event`` for minibnn and CuPy, ``torch.cuda.Event`` for PyTorch)
after warm-up calls, ``time.perf_counter`` on a CPU backend. Kernels (gemm, conv, and their
baselines): device time, the median over ``repeats`` (50; 10 with --quick) bursts of back-to-back
calls (about 2 ms each, at most 100 calls), divided by its calls. Before each burst a one-thread
spin kernel (CuPy: a ``clock64`` loop; PyTorch: ``torch.cuda._sleep``) keeps the device busy while
the host queues the whole burst, and the start event is recorded after it, so the host's argument
checks and launches (tens of microseconds in Python, which can exceed a tensor-core convolution's
run time) are not timed, for minibnn and the baselines alike; the host's cost is in the inference
and training numbers. minibnn's kernels are called with ``check_tails=False``, as the packed layers call
them. Inference: median of ``repeats`` single calls. Training: the median over rounds of several
steps, each round timed from one event to another recorded after the last step (its end synchronized).
A part that fails (exception) is printed and reported as failed, the others still run, and the exit
status is then 1; a cuda backend that cannot load exits with status 2. Nothing imports CuPy unless
the backend is cuda; with a CPU backend the CuPy matmul baselines are skipped and PyTorch runs on
the CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the source tree's minibnn
sys.path.insert(1, str(HERE))         # machine.py and deploy.py (the PyTorch mirror)

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

NUM_CLASSES = 10
INPUT = {"lenet": (1, 28, 28), "resnet18": (3, 32, 32)}
CHECK_ROWS = 64     # xnor_gemm output rows compared with the numpy reference
BURST_S = 2e-3      # length of one timed burst of kernel calls
MAX_BURST = 100     # calls per burst at most (their launches must fit the device's launch queue)
SPIN_SRC = r"""extern "C" __global__ void minibnn_bench_spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) { }
}"""
PAD_VALUE = 0       # resnet18()'s binary convs pad with 0; the packed model passes a precomputed correction


def conv_hw(hw: int, stride: int) -> int:
    """Output size of a 3x3 convolution with padding 1."""
    return (hw + 2 - 3) // stride + 1


def resnet18_convs(batch: int, width: int = 64, size: int = 32) -> dict[tuple, int]:
    """The binary 3x3 convolutions of minibnn's resnet18 (as ResNet.__init__ builds them): distinct
    (N, C, H, O, stride) shapes in order (H x H input, padding 1) -> how many layers have that shape."""
    shapes: dict[tuple, int] = {}
    cin, hw = width, size
    for stage in range(4):
        cout = width * 2**stage
        for i in range(2):
            stride = 2 if (i == 0 and stage > 0) else 1
            out_hw = conv_hw(hw, stride)
            for shape in ((batch, cin, hw, cout, stride), (batch, cout, out_hw, cout, 1)):  # conv1, conv2
                shapes[shape] = shapes.get(shape, 0) + 1
            cin, hw = cout, out_hw
    return shapes


def resnet18_conv_gemms(batch: int, width: int = 64, size: int = 32) -> list[tuple[int, int, int]]:
    """(M, N, K) of those convolutions as GEMMs, distinct, in order: M = batch * OH * OW, N = output
    channels, K = 9 * input channels."""
    return list(dict.fromkeys((n * conv_hw(h, s) ** 2, o, 9 * c)
                              for n, c, h, o, s in resnet18_convs(batch, width, size)))


@dataclass(frozen=True)
class Config:
    """Sizes and repeat counts of one run (full, --quick, or --quick --tiny)."""

    gemm_shapes: tuple
    conv_shapes: tuple     # ((N, C, H, O, stride), layers with that shape) of resnet18_convs
    warmup: int            # untimed calls before timing a kernel or an inference
    repeats: int           # timed bursts (kernels) or single calls (inference), median reported
    lenet: dict            # lenet() keyword arguments besides the bits
    resnet: dict           # resnet18() keyword arguments besides the bits
    train_batch: int
    train_warmup: int      # untimed steps (the first one compiles the kernels)
    train_steps: int       # steps per timed round (fewer when one round would pass train_budget_s)
    train_rounds: int
    train_budget_s: float
    infer_batches: tuple


def make_config(quick: bool, tiny: bool) -> Config:
    if tiny:
        gemm = resnet18_conv_gemms(1, width=8)
        return Config(((256, 256, 256), gemm[0], gemm[-1]), tuple(resnet18_convs(1, width=8).items()), 1, 3,
                      dict(channels=(8, 8), hidden=32), dict(width=8), 4, 1, 2, 1, 5.0, (1, 4))
    gemm, conv = resnet18_conv_gemms(128), tuple(resnet18_convs(128).items())
    if quick:
        return Config(((4096, 4096, 4096), gemm[0], gemm[-1]), conv, 3, 10, {}, {}, 256, 1, 5, 2, 3.0, (1, 256))
    return Config(((4096, 4096, 4096), *gemm), conv, 5, 50, {}, {}, 256, 3, 20, 5, 10.0, (1, 256))


# ---- clocks: seconds of one call of fn ------------------------------------------------------

def cupy_clock(cupy):
    def seconds(fn) -> float:
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3
    return seconds


def torch_clock(torch):
    def seconds(fn) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    return seconds


def cpu_clock(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(clock, fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(clock(fn) for _ in range(repeats))


def kernel_seconds(clock, fn, cfg: Config, spin=None) -> float:
    """Seconds per call of a kernel: the median over ``repeats`` bursts of back-to-back calls (about
    BURST_S each), per call. ``spin`` (a GPU's, see make_spin) first keeps the device busy while the host
    queues the whole burst, so that the events time the device's work, not the host's launch overhead."""
    for _ in range(cfg.warmup):
        fn()
    calls = max(1, min(MAX_BURST, int(BURST_S / max(clock(fn), 1e-9))))

    def burst():
        for _ in range(calls):
            fn()
    queue_s = cpu_clock(burst)  # the host's time to queue one burst

    def sample() -> float:
        if spin:
            spin(min(1.5 * queue_s + 1e-4, 0.5))
        return clock(burst) / calls
    return statistics.median(sample() for _ in range(cfg.repeats))


def make_spin(launch, clock):
    """spin(seconds): a one-thread clock64 loop queued on the device for about that long (its cycles per
    second measured here once); ``launch(cycles)`` queues the loop. None, with a warning, if it fails."""
    try:
        launch(1000)  # compiles / loads it
        per_second = 2e6 / clock(lambda: launch(2_000_000))
    except Exception as exc:  # noqa: BLE001 - the kernel timings then include the launch overhead
        print(f"gpu.py: no spin kernel ({type(exc).__name__}: {exc}): kernel timings include the host's "
              "launch overhead", file=sys.stderr)
        return None
    return lambda seconds: launch(int(seconds * per_second))


def train_rate(clock, step, batch: int, cfg: Config) -> float:
    """Images/s of ``step()`` (one training step on ``batch`` images): median over rounds."""
    for _ in range(cfg.train_warmup):
        step()
    one = clock(step)
    steps = max(1, min(cfg.train_steps, int(cfg.train_budget_s / max(one, 1e-9))))

    def rounds():
        for _ in range(steps):
            step()
    return statistics.median(batch * steps / clock(rounds) for _ in range(cfg.train_rounds))


# ---- where things run ----------------------------------------------------------------------

class Device:
    """minibnn's backend: its array module, clock and random inputs."""

    def __init__(self, name: str) -> None:
        import minibnn

        minibnn.use(name)  # BackendUnavailable when it cannot run here
        self.name, self.xp = name, minibnn.backend.xp()
        self.gpu = self.xp is not np
        self.clock = cupy_clock(self.xp) if self.gpu else cpu_clock
        self.rng = np.random.default_rng(0)

    @functools.cached_property
    def spin(self):
        """The device's spin (make_spin) for kernel_seconds; None on a CPU backend."""
        if not self.gpu:
            return None
        kernel = self.xp.RawKernel(SPIN_SRC, "minibnn_bench_spin")
        return make_spin(lambda cycles: kernel((1,), (1,), (np.int64(cycles),)), self.clock)

    def randn(self, shape, dtype=np.float32):
        if self.gpu:  # generated on the device: the GEMM operands reach hundreds of MB
            return self.xp.random.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
        return self.rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)

    def labels(self, n: int):
        return self.xp.asarray(self.rng.integers(0, NUM_CLASSES, n))

    def free(self) -> None:
        """Give CuPy's cached device memory back (PyTorch shares the card)."""
        if self.gpu:
            self.xp.cuda.Device().synchronize()
            self.xp.get_default_memory_pool().free_all_blocks()

    def info(self) -> dict:
        info = {"backend": self.name, "numpy": np.__version__, "tensor_cores": tensor_core_note(self)}
        if self.gpu:
            cupy = self.xp
            rt = cupy.cuda.runtime
            props = rt.getDeviceProperties(0)
            name = props["name"]
            info.update(gpu=name.decode() if isinstance(name, bytes) else str(name),
                        compute_capability=f"{props['major']}.{props['minor']}",
                        sms=props["multiProcessorCount"], memory_gib=round(props["totalGlobalMem"] / 2**30, 1),
                        cupy=cupy.__version__, cuda_runtime=rt.runtimeGetVersion(), driver=rt.driverGetVersion())
        return info


class Torch:
    """PyTorch on the same device as minibnn (the GPU, or the CPU for a CPU backend)."""

    def __init__(self, torch, gpu: bool) -> None:
        self.torch, self.device = torch, torch.device("cuda" if gpu else "cpu")
        self.clock = torch_clock(torch) if gpu else cpu_clock

    def float_model(self, name: str, cfg: Config):
        """The float32 architecture of the binary model ``name`` (same layer shapes), as torch.nn."""
        import deploy as deploy_bench  # benchmarks/deploy.py: minibnn module -> torch.nn mirror
        import minibnn

        with minibnn.using("numpy"):
            minibnn.manual_seed(0)
            model = build(name, 32, cfg)
        return deploy_bench.to_torch(self.torch, model).to(self.device)

    def randn(self, *shape, dtype=None):
        return self.torch.randn(*shape, device=self.device, dtype=dtype)

    @functools.cached_property
    def spin(self):
        """torch.cuda._sleep as a spin (make_spin) for kernel_seconds; None on the CPU."""
        if self.device.type != "cuda":
            return None
        return make_spin(lambda cycles: self.torch.cuda._sleep(int(cycles)), self.clock)

    def free(self) -> None:
        """Give PyTorch's cached device memory back (CuPy shares the card)."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()

    @contextlib.contextmanager
    def cudnn_benchmark(self):
        """cudnn.benchmark on inside the block (cuDNN times its algorithms per shape, keeps the fastest)."""
        flags = self.torch.backends.cudnn
        before, flags.benchmark = flags.benchmark, True
        try:
            yield
        finally:
            flags.benchmark = before

    def info(self) -> dict:
        t = self.torch
        info = {"torch": t.__version__, "torch_device": str(self.device)}
        if self.device.type == "cuda":
            info.update(torch_cuda=t.version.cuda, cudnn=t.backends.cudnn.version(),
                        cudnn_tf32=t.backends.cudnn.allow_tf32, matmul_tf32=t.backends.cuda.matmul.allow_tf32)
        return info


def load_torch(gpu: bool, no_torch: bool) -> tuple[Torch | None, str]:
    if no_torch:
        return None, "--no-torch"
    try:
        import torch
    except ImportError as exc:
        return None, f"torch not importable ({exc})"
    if gpu and not torch.cuda.is_available():
        return None, "torch has no CUDA here"
    return Torch(torch, gpu), ""


def build(name: str, bits: int, cfg: Config):
    from minibnn import models

    if name == "lenet":
        return models.lenet(act_bit=bits, weight_bit=bits, **cfg.lenet)
    return models.resnet18(act_bit=bits, weight_bit=bits, **cfg.resnet)


# ---- kernel paths: tensor cores (TC), CUDA cores (CC), or the CPU --------------------------

def kernels():
    from minibnn import backend

    return backend.kernels()


@contextlib.contextmanager
def kernel_path(setting):
    """Run the block with ``set_tensor_cores(setting)``, then back to automatic (None); a no-op where
    the backend has no such switch."""
    switch = getattr(kernels(), "set_tensor_cores", None)
    if switch is None:
        yield
        return
    switch(setting)
    try:
        yield
    finally:
        switch(None)


def kernel_paths(dev: Device) -> dict[str, object]:
    """The paths to time: label -> set_tensor_cores argument, or a str saying why that path is n/a."""
    if not dev.gpu:
        return {"TC": f"{dev.name} backend", "CPU": None}
    uses = getattr(kernels(), "uses_tensor_cores", None)
    if uses is None:
        return {"TC": "this cuda backend has no set_tensor_cores", "CC": None}
    with kernel_path(None):
        automatic = uses()
    return {"TC": None, "CC": False} if automatic else {"TC": "not used on this card", "CC": False}


def section_paths(dev: Device, rep: Report) -> dict[str, object]:
    """kernel_paths, or the backend's default path alone when asking failed (reported)."""
    return rep.attempt("tensor-core switch", lambda: kernel_paths(dev)) or {"default": None}


def main_path(paths: dict[str, object]) -> str:
    """The path a target is judged on: TC where it runs, else the backend's only path."""
    return next(label for label, setting in paths.items() if not isinstance(setting, str))


def tensor_core_note(dev: Device) -> str:
    try:
        paths = kernel_paths(dev)
    except Exception as exc:  # noqa: BLE001 - reported again by the sections
        return f"unknown ({type(exc).__name__}: {exc})"
    return "yes (automatic)" if paths["TC"] is None else f"n/a ({paths['TC']})"


# ---- the report ----------------------------------------------------------------------------

class Report:
    """Rows of the table, the parts that failed (printed as they fail, listed at the end), and the
    measurements the targets are judged on (``measured``, filled by the sections)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.failures: list[dict] = []
        self.measured: dict[str, dict] = {}

    def attempt(self, part: str, fn):
        """fn()'s result, or None after printing the exception (the other parts still run)."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one broken part must not hide the rest
            print(f"\nFAILED {part}: {type(exc).__name__}: {exc}", file=sys.stderr)
            traceback.print_exc(limit=-10, file=sys.stderr)
            self.failures.append({"part": part, "error": f"{type(exc).__name__}: {exc}"})
            return None

    def add(self, what: str, shape: str, rate, baseline: str, base_rate, check: str = "") -> None:
        """One row; ``rate`` is a number, None (failed) or a str (not run, e.g. 'n/a')."""
        ratio = rate / base_rate if is_num(rate) and is_num(base_rate) else None
        self.rows.append({"what": what, "shape": shape, "minibnn": rate, "baseline": baseline,
                          "baseline_rate": base_rate, "ratio": ratio, "check": check})
        print(self.line(self.rows[-1]), flush=True)  # as it comes: a run cut short still shows it

    HEAD = f"{'what':<22} {'shape':<22} {'minibnn':>12} {'baseline':<18} {'baseline rate':>14} {'ratio':>8} check"

    @staticmethod
    def line(r: dict) -> str:
        ratio = f"{r['ratio']:.3g}x" if r["ratio"] is not None else "-"
        base = num(r["baseline_rate"]) if r["baseline"] else "-"
        return (f"{r['what']:<22} {r['shape']:<22} {num(r['minibnn']):>12} {r['baseline'] or '-':<18}"
                f" {base:>14} {ratio:>8} {r['check']}".rstrip())

    def table(self) -> str:
        return "\n".join([self.HEAD, "-" * len(self.HEAD), *map(self.line, self.rows)])


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def num(v) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return "failed"
    return f"{v:,.0f}" if v >= 1e4 else f"{v:,.1f}" if v >= 10 else f"{v:.3g}"


def check_result(rep: Report, part: str, check) -> str:
    """'exact', 'WRONG' or 'unchecked' (the check itself failed); a wrong result counts as a failure."""
    exact = rep.attempt(f"{part} check", check)
    if exact is False:
        rep.failures.append({"part": part, "error": "result differs from the numpy reference"})
    return {True: "exact", False: "WRONG", None: "unchecked"}[exact]


def time_paths(rep: Report, part: str, paths: dict, timed) -> dict[str, tuple]:
    """label -> (seconds per call or None (failed), check): ``timed()`` (-> (seconds, a function checking
    the result)) on each path that runs here, checked right after."""
    out = {}
    for label, setting in paths.items():
        if isinstance(setting, str):  # n/a here: add_skipped's row
            continue
        name = f"{part} ({label})"

        def on_path():
            with kernel_path(setting):
                return timed()
        got = rep.attempt(name, on_path)
        out[label] = (got[0], check_result(rep, name, got[1])) if got else (None, "")
    return out


def rate_of(work: float, seconds):
    """work / seconds, or None (failed)."""
    return work / seconds if is_num(seconds) else None


def add_skipped(rep: Report, what: str, shape: str, paths: dict) -> None:
    """One n/a row per path that does not run here (e.g. TC on a CPU backend), the reason as its check."""
    for label, why in paths.items():
        if isinstance(why, str):
            rep.add(what.format(path=label), shape, "n/a", "", None, why)


# ---- 1. xnor_gemm against float matmul -----------------------------------------------------

def random_words(rng, rows: int, k: int) -> np.ndarray:
    """Random packed rows (uint64, ceil(k/64) words) with the tail bits past k zero."""
    words = rng.integers(0, 2**64, size=(rows, -(-k // 64)), dtype=np.uint64, endpoint=False)
    if k % 64:
        words[:, -1] &= np.uint64((1 << (k % 64)) - 1)
    return words


def gemm_timer(dev: Device, m: int, n: int, k: int, cfg: Config):
    """A function timing the current path's xnor_gemm on fixed random words: -> (seconds, check)."""
    from minibnn import backend
    from minibnn.backend import numpy_ref

    a_host, b_host = random_words(dev.rng, m, k), random_words(dev.rng, n, k)
    a, b = dev.xp.asarray(a_host), dev.xp.asarray(b_host)

    def timed():
        out = dev.xp.empty((m, n), dtype=np.int32)
        seconds = kernel_seconds(dev.clock, lambda: kernels().xnor_gemm(a, b, k, out, check_tails=False), cfg,
                                 dev.spin)

        def check() -> bool:  # the first rows against the numpy reference
            rows = min(m, CHECK_ROWS)
            expected = numpy_ref.xnor_gemm(a_host[:rows], b_host, k, np.empty((rows, n), np.int32))
            return bool(np.array_equal(backend.to_numpy(out[:rows]), expected))
        return seconds, check
    return timed


def float_matmul(dev: Device, m: int, n: int, k: int, dtype, cfg: Config) -> float:
    """Seconds per call of xp.matmul (M, K) @ (K, N) in ``dtype`` into a preallocated output."""
    a, b = dev.randn((m, k), dtype), dev.randn((k, n), dtype)
    out = dev.xp.empty((m, n), dtype=dtype)
    return kernel_seconds(dev.clock, lambda: dev.xp.matmul(a, b, out=out), cfg, dev.spin)


def torch_matmul(tt: Torch, m: int, n: int, k: int, cfg: Config) -> float:
    """Seconds per call of torch.matmul (M, K) @ (K, N) in bfloat16 into a preallocated output."""
    bf16 = tt.torch.bfloat16
    a, b, out = tt.randn(m, k, dtype=bf16), tt.randn(k, n, dtype=bf16), tt.torch.empty(m, n, dtype=bf16,
                                                                                        device=tt.device)
    return kernel_seconds(tt.clock, lambda: tt.torch.matmul(a, b, out=out), cfg, tt.spin)


def matmul_baselines(dev: Device, tt: Torch | None, cfg: Config) -> dict:
    """label -> function (m, n, k) -> seconds per float matmul."""
    dtypes = {"cupy f32 matmul": np.float32, "cupy f16 matmul": np.float16} if dev.gpu else \
        {"numpy f32 matmul": np.float32}
    base = {label: (lambda m, n, k, d=dtype: float_matmul(dev, m, n, k, d, cfg)) for label, dtype in dtypes.items()}
    if tt:
        base["torch bf16 matmul"] = lambda m, n, k: torch_matmul(tt, m, n, k, cfg)
    return base


def gemm_section(dev: Device, tt: Torch | None, cfg: Config, rep: Report) -> None:
    paths, baselines = section_paths(dev, rep), matmul_baselines(dev, tt, cfg)
    for i, (m, n, k) in enumerate(cfg.gemm_shapes):
        shape, tmacs = f"{m}x{n}x{k}", m * n * k / 1e12
        timed = rep.attempt(f"xnor_gemm {shape} inputs", lambda: gemm_timer(dev, m, n, k, cfg))
        got = time_paths(rep, f"xnor_gemm {shape}", paths, timed) if timed else {main_path(paths): (None, "")}
        base = {label: rate_of(tmacs, rep.attempt(f"{label} {shape}", lambda: fn(m, n, k)))
                for label, fn in baselines.items()}
        add_skipped(rep, "gemm {path} T(bit-)MAC/s", shape, paths)
        for path, (seconds, check) in got.items():
            for label, base_rate in base.items():
                rep.add(f"gemm {path} T(bit-)MAC/s", shape, rate_of(tmacs, seconds), label, base_rate, check)
        if i == 0:  # target 1: the first (square) shape
            main = main_path(paths)
            rep.measured["gemm"] = {"shape": shape, "path": main, "rate": rate_of(tmacs, got.get(main, (None,))[0]),
                                    "torch": base.get("torch bf16 matmul")}
        dev.free()
        if tt:
            tt.free()


# ---- 2. binary convolutions against PyTorch bf16 conv2d ------------------------------------

def conv_label(shape: tuple) -> str:
    n, c, h, o, s = shape
    return f"{n}x{c}x{h}x{h}->{o} s{s}"


def conv_macs(shape: tuple) -> int:
    n, c, h, o, s = shape
    return n * conv_hw(h, s) ** 2 * o * 9 * c


def conv_timer(dev: Device, shape: tuple, cfg: Config):
    """A function timing the current path's binary_conv2d (pad_value PAD_VALUE, the correction computed
    once) on fixed random channel-packed words: -> (seconds, check of images 0 and N - 1)."""
    from minibnn import backend
    from minibnn.backend import numpy_ref

    n, c, h, o, s = shape
    oh, wc = conv_hw(h, s), -(-c // 64)
    x_host = random_words(dev.rng, n * h * h, c).reshape(n, h, h, wc)
    w_host = random_words(dev.rng, o * 9, c).reshape(o, 3, 3, wc)
    x, w = dev.xp.asarray(x_host), dev.xp.asarray(w_host)
    corr = kernels().conv_pad_correction(w, c, (h, h), (s, s), (1, 1)) if PAD_VALUE == 0 else None
    args = (c, (s, s), (1, 1), PAD_VALUE)

    def timed():
        out = dev.xp.empty((n, oh, oh, o), dtype=np.int32)
        seconds = kernel_seconds(dev.clock, lambda: kernels().binary_conv2d(x, w, *args, out, corr, check_tails=False),
                                 cfg, dev.spin)

        def check() -> bool:  # whole images against the reference, which pads and corrects on its own
            for i in sorted({0, n - 1}):
                expected = numpy_ref.binary_conv2d(x_host[i:i + 1], w_host, *args, np.empty((1, oh, oh, o), np.int32))
                if not np.array_equal(backend.to_numpy(out[i:i + 1]), expected):
                    return False
            return True
        return seconds, check
    return timed


def torch_conv(tt: Torch, shape: tuple, cfg: Config) -> tuple[float, str]:
    """(seconds per call, memory format) of the faster of NCHW and channels_last PyTorch bfloat16 conv2d."""
    torch = tt.torch
    n, c, h, o, s = shape
    x, w = tt.randn(n, c, h, h, dtype=torch.bfloat16), tt.randn(o, c, 3, 3, dtype=torch.bfloat16)
    times = {}
    with tt.cudnn_benchmark(), torch.no_grad():
        for fmt, memory in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
            xf, wf = x.contiguous(memory_format=memory), w.contiguous(memory_format=memory)
            times[fmt] = kernel_seconds(tt.clock, lambda: torch.nn.functional.conv2d(xf, wf, stride=s, padding=1), cfg,
                                        tt.spin)
    fmt = min(times, key=times.get)
    return times[fmt], fmt


def conv_section(dev: Device, tt: Torch | None, cfg: Config, rep: Report) -> None:
    paths, layers = section_paths(dev, rep), {}
    for shape, count in cfg.conv_shapes:
        shape, label, tmacs = tuple(shape), conv_label(shape), conv_macs(shape) / 1e12
        timed = rep.attempt(f"binary_conv2d {label} inputs", lambda: conv_timer(dev, shape, cfg))
        got = time_paths(rep, f"binary_conv2d {label}", paths, timed) if timed else {main_path(paths): (None, "")}
        base = rep.attempt(f"torch bf16 conv2d {label}", lambda: torch_conv(tt, shape, cfg)) if tt else None
        base_label = f"torch bf16 {base[1]}" if base else "torch bf16" if tt else ""
        add_skipped(rep, "conv {path} T(bit-)MAC/s", label, paths)
        for path, (seconds, check) in got.items():
            rep.add(f"conv {path} T(bit-)MAC/s", label, rate_of(tmacs, seconds), base_label,
                    rate_of(tmacs, base[0]) if base else None, check)
        layers[label] = {"count": count, "tmacs": tmacs, "seconds": got.get(main_path(paths), (None,))[0],
                         "torch_seconds": base[0] if base else None, "torch_format": base[1] if base else None}
        dev.free()
        if tt:
            tt.free()
    rep.measured["conv"] = {"path": main_path(paths), "layers": layers}


# ---- 3. packed inference images/s ----------------------------------------------------------

def packed_resnet(dev: Device, cfg: Config):
    """The binary ResNet-18 converted for inference (batch-norm statistics moved off their defaults)."""
    import minibnn
    from minibnn import deploy, nn

    minibnn.manual_seed(0)
    model = build("resnet18", 1, cfg)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean[...] = dev.xp.asarray(dev.rng.normal(0, 2, m.num_features), dtype=np.float32)
            m.running_var[...] = dev.xp.asarray(dev.rng.uniform(0.5, 20, m.num_features), dtype=np.float32)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return deploy.convert(model, INPUT["resnet18"])  # also checks packed == simulation on a batch


def torch_infer(tt: Torch, model, batch: int, dtype, cfg: Config) -> float:
    """Images/s of PyTorch's best setting here: cudnn.benchmark on, NCHW or channels_last, the faster."""
    torch = tt.torch
    rates = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        m = model.to(memory_format=fmt)
        x = torch.randn(batch, *INPUT["resnet18"], device=tt.device).to(dtype).contiguous(memory_format=fmt)

        def run():
            with torch.no_grad():
                m(x)
        with tt.cudnn_benchmark():
            rates.append(batch / median_seconds(tt.clock, run, cfg.warmup, cfg.repeats))
    model.to(memory_format=torch.contiguous_format)
    return max(rates)


def infer_section(dev: Device, tt: Torch | None, cfg: Config, rep: Report) -> None:
    packed = rep.attempt(f"convert resnet18 (minibnn {dev.name})", lambda: packed_resnet(dev, cfg))
    models = {}
    if tt:
        f32 = rep.attempt("torch resnet18 f32 model", lambda: tt.float_model("resnet18", cfg).eval())
        models = {"torch f32": (f32, tt.torch.float32),
                  "torch bf16": (copy.deepcopy(f32).to(tt.torch.bfloat16) if f32 else None, tt.torch.bfloat16)}
    for batch in cfg.infer_batches:
        shape = f"{batch}x{'x'.join(map(str, INPUT['resnet18']))}"
        rate, base = None, {}
        if packed is not None:
            x = dev.randn((batch, *INPUT["resnet18"]))
            rate = rep.attempt(f"packed resnet18 predict batch {batch}", lambda: batch / median_seconds(
                dev.clock, lambda: packed.predict(x), cfg.warmup, cfg.repeats))
        for label, (model, dtype) in models.items():
            if model is not None:
                base[label] = rep.attempt(f"{label} resnet18 batch {batch}",
                                          lambda: torch_infer(tt, model, batch, dtype, cfg))
            rep.add("infer resnet18 img/s", shape, rate, label, base.get(label))
        if not models:
            rep.add("infer resnet18 img/s", shape, rate, "", None)
        rep.measured["infer"] = {"batch": batch, "rate": rate, "torch": base.get("torch bf16")}  # the largest
        dev.free()


# ---- 4. training images/s ------------------------------------------------------------------

def minibnn_train(dev: Device, name: str, cfg: Config) -> float:
    import minibnn
    from minibnn import optim, train

    minibnn.manual_seed(0)
    model = build(name, 1, cfg).train()
    opt = optim.Adam(model.parameters(), lr=1e-3)  # clips the binary layers' latent weights after each step
    x = dev.randn((cfg.train_batch, *INPUT[name]))  # on the device already
    y = dev.rng.integers(0, NUM_CLASSES, cfg.train_batch)  # host labels, as the DataLoader yields them

    def step():  # what fit() does per batch, with its one host sync (loss, accuracy, finite gradients)
        train.train_step(model, opt, x, y, 0, 0)
    return train_rate(dev.clock, step, cfg.train_batch, cfg)


def torch_train(tt: Torch, name: str, cfg: Config) -> float:
    torch = tt.torch
    model = tt.float_model(name, cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(cfg.train_batch, *INPUT[name], device=tt.device)
    y = torch.randint(0, NUM_CLASSES, (cfg.train_batch,), device=tt.device)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with tt.cudnn_benchmark():  # what a PyTorch user would turn on for fixed shapes
        return train_rate(tt.clock, step, cfg.train_batch, cfg)


def train_section(dev: Device, tt: Torch | None, cfg: Config, rep: Report) -> None:
    for name in ("lenet", "resnet18"):
        shape = f"{cfg.train_batch}x{'x'.join(map(str, INPUT[name]))}"
        rate = rep.attempt(f"train {name} (minibnn {dev.name})", lambda: minibnn_train(dev, name, cfg))
        dev.free()
        base = rep.attempt(f"train {name} (torch f32)", lambda: torch_train(tt, name, cfg)) if tt else None
        rep.add(f"train {name} img/s", shape, rate, "torch f32" if tt else "", base)
        if tt:
            tt.free()
    rep.measured["train"] = {"batch": cfg.train_batch, "rate": rate, "torch": base}  # resnet18


# ---- the targets of issue 9 ----------------------------------------------------------------

TARGETS_TITLE = "== targets (issue 9): minibnn against PyTorch on the same device, in this run"
RATIOS = (
    "ratio = minibnn / baseline, by target:",
    "  1: xnor_gemm T bit-MAC/s / torch bf16 matmul T MAC/s (M * N * K / s both); met needs >= 2,000 T bit-MAC/s,",
    "     the ratio (about 5x expected) is shown beside it",
    "  2: summed torch bf16 conv2d seconds / summed minibnn binary_conv2d seconds over ResNet-18's 16 binary",
    "     3x3 convs, each distinct shape weighted by how many layers have it (the rates shown: total MACs /",
    "     total seconds); met needs >= 3x",
    "  3: packed ResNet-18 images/s / torch bf16 images/s; met needs >= 1x",
    "  4: binary ResNet-18 training images/s / torch f32 images/s; met needs >= 0.5x",
    "not run: the part failed or was skipped (see FAILED above); rates: T (bit-)MAC/s or images/s")
TARGET_HEAD = (f"{'#':<2} {'what':<56} {'minibnn':>10} {'baseline':<18} {'base rate':>10} {'ratio':>7} "
               f"{'target':<11} {'result':<8} note")


def target(number: int, what: str, measured, baseline: str, base, goal: str, met, note: str = "") -> dict:
    """One target row; ``met`` is None when the measurement it needs is missing."""
    ratio = measured / base if is_num(measured) and is_num(base) else None
    return {"target": number, "what": what, "measured": measured, "baseline": baseline, "baseline_value": base,
            "ratio": ratio, "goal": goal, "result": "not run" if met is None else "met" if met else "MISSED",
            "note": note}


def judged(value, fn):
    """fn(value) when value was measured, else None (not run)."""
    return bool(fn(value)) if is_num(value) else None


def gemm_target(m: dict | None, cfg: Config) -> dict:
    m = m or {"shape": "x".join(map(str, cfg.gemm_shapes[0])), "path": "-", "rate": None, "torch": None}
    return target(1, f"xnor_gemm {m['shape']} {m['path']} (T bit-MAC/s)", m["rate"], "torch bf16 matmul",
                  m["torch"], ">= 2,000 T", judged(m["rate"], lambda r: r >= 2000))


def conv_target(m: dict | None, cfg: Config) -> dict:
    layers = (m or {}).get("layers", {})
    done = {k: v for k, v in layers.items() if is_num(v["seconds"]) and is_num(v["torch_seconds"])}
    what = f"ResNet-18's binary 3x3 convs, batch {cfg.conv_shapes[0][0][0]} {(m or {}).get('path', '-')} (T bit-MAC/s)"
    if not layers or len(done) < len(layers):
        return target(2, what, None, "torch bf16 conv2d", None, ">= 3x", None,
                      f"{len(done)} of {len(layers)} shapes have both rates" if layers else "")
    work = sum(v["count"] * v["tmacs"] for v in done.values())
    ours, theirs = (sum(v["count"] * v[key] for v in done.values()) for key in ("seconds", "torch_seconds"))
    slow = min(done, key=lambda k: done[k]["torch_seconds"] / done[k]["seconds"])
    formats = [v["torch_format"] for v in done.values()]
    note = (f"slowest {slow}: {done[slow]['torch_seconds'] / done[slow]['seconds']:.3g}x; torch NHWC faster on "
            f"{formats.count('NHWC')} of {len(formats)} shapes")
    row = target(2, what, work / ours, "torch bf16 conv2d", work / theirs, ">= 3x", None, note)
    row["result"] = "met" if row["ratio"] >= 3 else "MISSED"
    return row


def ratio_target(number: int, what: str, m: dict | None, batch: int, baseline: str, goal: float) -> dict:
    m = m or {"batch": batch, "rate": None, "torch": None}
    row = target(number, what.format(batch=m["batch"]), m["rate"], baseline, m["torch"], f">= {goal:g}x", None)
    if row["ratio"] is not None:
        row["result"] = "met" if row["ratio"] >= goal else "MISSED"
    return row


def targets(rep: Report, cfg: Config) -> list[dict]:
    m = rep.measured
    return [gemm_target(m.get("gemm"), cfg), conv_target(m.get("conv"), cfg),
            ratio_target(3, "packed ResNet-18 inference, batch {batch} (img/s)", m.get("infer"),
                         max(cfg.infer_batches), "torch bf16", 1),
            ratio_target(4, "binary ResNet-18 training, batch {batch} (img/s)", m.get("train"), cfg.train_batch,
                         "torch f32", 0.5)]


def targets_table(rows: list[dict], caveat: str) -> str:
    def line(r: dict) -> str:
        ratio = f"{r['ratio']:.3g}x" if r["ratio"] is not None else "-"
        base = num(r["baseline_value"]) if r["baseline_value"] is not None else "-"
        measured = num(r["measured"]) if r["measured"] is not None else "-"
        return (f"{r['target']:<2} {r['what']:<56} {measured:>10} {r['baseline']:<18} {base:>10} {ratio:>7} "
                f"{r['goal']:<11} {r['result']:<8} {r['note']}".rstrip())
    lines = [TARGETS_TITLE, *RATIOS, "-" * len(TARGET_HEAD), TARGET_HEAD, "-" * len(TARGET_HEAD), *map(line, rows)]
    return "\n".join(lines + ([caveat] if caveat else []))


def targets_caveat(dev: Device, tiny: bool) -> str:
    """Why the verdicts above do not apply to this run, or ''."""
    why = [w for w, bad in ((f"backend {dev.name}, not cuda", not dev.gpu),
                            ("--tiny sizes, not the targets' sizes", tiny)) if bad]
    return f"(this run: {'; '.join(why)}: the verdicts say nothing about the targets)" if why else ""


# ---- main ----------------------------------------------------------------------------------

SECTIONS = {"gemm": gemm_section, "conv": conv_section, "infer": infer_section, "train": train_section}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cuda", help="minibnn backend to measure (default cuda)")
    p.add_argument("--quick", action="store_true", help="fewer shapes, repeats and steps (about 2 minutes on a GPU)")
    p.add_argument("--tiny", action="store_true", help="with --quick: tiny sizes, a smoke test of this script")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}, run in that order (default all)")
    p.add_argument("--repeats", type=int,
                   help="timed kernel bursts / inference calls (default 50, --quick 10)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.tiny and not args.quick:
        p.error("--tiny is only for smoke tests: use it with --quick")
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
    return args


def header(info: dict, command: str, cfg: Config, torch_note: str) -> str:
    lines = []
    if "gpu" in info:
        lines.append(f"gpu: {info['gpu']} (sm {info['compute_capability']}, {info['sms']} SMs, "
                     f"{info['memory_gib']} GiB), CUDA runtime {info['cuda_runtime']}, driver {info['driver']}")
    lines.append(f"host: {info['cpu']}, {info['nproc']} CPUs, {info['os']}, Python {info['python']}")
    torch_part = (f"torch {info['torch']} on {info['torch_device']}" if "torch" in info else f"no torch: {torch_note}")
    if info.get("torch_cuda"):
        torch_part += (f" (CUDA {info['torch_cuda']}, cudnn {info['cudnn']}, cudnn tf32 {info['cudnn_tf32']}, "
                       f"matmul tf32 {info['matmul_tf32']})")
    lines.append(f"versions: minibnn {info['minibnn']} (backend {info['backend']}), numpy {info['numpy']}, "
                 f"cupy {info.get('cupy', '-')}, {torch_part}")
    lines.append(f"binary tensor cores: {info['tensor_cores']}")
    lines.append(f"command: {command}")
    clock = "CUDA events" if "gpu" in info else "time.perf_counter"
    queued = ", queued behind a spin kernel: device time only" if "gpu" in info else ""
    lines.append(f"timing: {clock}; kernels median of {cfg.repeats} bursts of back-to-back calls (about "
                 f"{BURST_S * 1e3:g} ms each{queued}) after {cfg.warmup} warm-up; inference median of {cfg.repeats} "
                 f"calls; training median of {cfg.train_rounds} rounds of up to {cfg.train_steps} steps after "
                 f"{cfg.train_warmup} warm-up")
    lines.append("paths: TC = tensor-core kernels (set_tensor_cores(None)), CC = CUDA-core kernels "
                 "(set_tensor_cores(False)), CPU = a CPU backend's kernels; rates in T (bit-)MAC/s or images/s,"
                 " ratio = minibnn / baseline")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = make_config(args.quick, args.tiny)
    if args.repeats:
        cfg = replace(cfg, repeats=args.repeats)
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/gpu.py", *(sys.argv[1:] if argv is None else argv)])
    import minibnn
    from minibnn.backend import BackendUnavailable

    try:
        dev = Device(args.backend)
    except BackendUnavailable as exc:
        print(f"gpu.py: cannot measure the {args.backend!r} backend: {exc}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - e.g. a CUDA error while the backend starts
        traceback.print_exc()
        print(f"gpu.py: the {args.backend!r} backend failed to start (above)", file=sys.stderr)
        return 2
    tt, torch_note = load_torch(dev.gpu, args.no_torch)
    info = {**dev.info(), **(tt.info() if tt else {}), "cpu": cpu_model(), "nproc": os.cpu_count(),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "minibnn": minibnn.__version__}
    print(header(info, command, cfg, torch_note), flush=True)

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps({"command": command, "info": info, "config": asdict(cfg),
                                                   "rows": rep.rows, "targets": targets(rep, cfg),
                                                   "failures": rep.failures}, indent=1) + "\n")

    rep = Report()
    start = time.perf_counter()
    print(f"\n{Report.HEAD}  (gemm shape M x N x K; conv N x C x H x W -> O, stride)", flush=True)
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        SECTIONS[name](dev, tt, cfg, rep)
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", flush=True)
        save()  # after each section: a run cut short keeps what it measured
    print()
    print(rep.table())
    print(f"\ntotal {time.perf_counter() - start:.1f} s"
          f"{'  (--quick: a short run, not a final measurement)' if args.quick else ''}")
    print(f"\n{targets_table(targets(rep, cfg), targets_caveat(dev, args.tiny))}\n", flush=True)
    if rep.failures:
        print(f"{len(rep.failures)} part(s) FAILED:", file=sys.stderr)
        for f in rep.failures:
            print(f"  {f['part']}: {f['error']}", file=sys.stderr)
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
