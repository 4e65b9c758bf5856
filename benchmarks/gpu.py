"""GPU speed of minibnn's cuda backend against CuPy / PyTorch float on the same card (issue 8).

Run from the repository root (the GPU machine has no network: run from the source tree):

    PYTHONPATH=. python benchmarks/gpu.py                       # full run, a few minutes
    PYTHONPATH=. python benchmarks/gpu.py --quick               # about 90 s: fewer shapes and repeats
    PYTHONPATH=. python benchmarks/gpu.py --quick --json gpu.json --no-torch
    PYTHONPATH=. python benchmarks/gpu.py --sections gemm --repeats 100   # one part only (gemm, train, infer)
    python benchmarks/gpu.py --backend numpy --quick --tiny     # CPU smoke test of this script (seconds)

What it measures (minibnn on ``--backend``, default cuda; all inputs random and already on the device):
1. gemm: ``xnor_gemm`` on pre-packed uint64 words at M = N = K = 4096 and at ResNet-18's (CIFAR
   variant, 32x32 input) 3x3 convolutions as GEMMs for batch 128 (M = 128 * OH * OW output positions,
   N = output channels, K = 9 * C bits), in G bit-MAC/s (M * N * K / s), against CuPy float32 and
   float16 matmul of the same M, N, K (G MAC/s); ratio = binary / float. The first 64 output rows
   are checked against the numpy reference kernel.
2. train: images/s of a full training step (forward, cross_entropy, backward, Adam step with latent
   clipping) of binary LeNet (1x28x28, ``lenet(act_bit=1, weight_bit=1)``) and binary ResNet-18
   (3x32x32, ``resnet18()``), batch 256, against the same layer shapes in PyTorch float32 (the float
   minibnn model mirrored with benchmarks/deploy.py's ``to_torch``; PyTorch's default settings, so
   its convolutions may use TF32).
3. infer: images/s of the packed binary ResNet-18 (``minibnn.deploy.convert(model, (3, 32, 32))``,
   ``packed.predict(x)``) at batch 1 and 256, against PyTorch float32 and bfloat16 (``.to(bfloat16)``)
   inference (eval, no_grad) of the same architecture.

Timing: CUDA events (``cupy.cuda.Event`` for minibnn and CuPy, ``torch.cuda.Event`` for PyTorch)
after warm-up calls, ``time.perf_counter`` on a CPU backend. Kernels and inference: median of
``repeats`` single calls (50; 10 with --quick). Training: the median over rounds of several steps,
each round timed from one event to another recorded after the last step (its end synchronized).
A part that fails (exception) is printed and reported as failed, the others still run, and the exit
status is then 1; a cuda backend that cannot load exits with status 2. Nothing imports CuPy unless
the backend is cuda; with a CPU backend the CuPy matmul baselines are skipped and PyTorch runs on
the CPU.
"""
from __future__ import annotations

import argparse
import copy
import json
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
CHECK_ROWS = 64  # xnor_gemm output rows compared with the numpy reference


def resnet18_conv_gemms(batch: int, width: int = 64, size: int = 32) -> list[tuple[int, int, int]]:
    """(M, N, K) of the binary 3x3 convolutions of minibnn's resnet18 (as ResNet.__init__ builds them),
    distinct shapes in order: M = batch * OH * OW, N = output channels, K = 9 * input channels."""
    shapes, cin, hw = [], width, size
    for stage in range(4):
        cout = width * 2**stage
        for i in range(2):
            stride = 2 if (i == 0 and stage > 0) else 1
            hw = (hw + 2 - 3) // stride + 1
            for c in (cin, cout):  # conv1 (stride s, cin -> cout), conv2 (cout -> cout)
                shapes.append((batch * hw * hw, cout, 9 * c))
            cin = cout
    return list(dict.fromkeys(shapes))


@dataclass(frozen=True)
class Config:
    """Sizes and repeat counts of one run (full, --quick, or --quick --tiny)."""

    gemm_shapes: tuple
    warmup: int            # untimed calls before timing a kernel or an inference
    repeats: int           # timed single calls, median reported
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
        conv = resnet18_conv_gemms(1, width=8)
        return Config(((256, 256, 256), conv[0], conv[-1]), 1, 3, dict(channels=(8, 8), hidden=32),
                      dict(width=8), 4, 1, 2, 1, 5.0, (1, 4))
    conv = resnet18_conv_gemms(128)
    if quick:
        return Config(((4096, 4096, 4096), conv[0], conv[-1]), 3, 10, {}, {}, 256, 1, 5, 2, 3.0, (1, 256))
    return Config(((4096, 4096, 4096), *conv), 5, 50, {}, {}, 256, 3, 20, 5, 10.0, (1, 256))


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
        info = {"backend": self.name, "numpy": np.__version__}
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


# ---- the report ----------------------------------------------------------------------------

class Report:
    """Rows of the table, and the parts that failed (printed as they fail, listed at the end)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.failures: list[dict] = []

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
        ratio = rate / base_rate if rate and base_rate else None
        self.rows.append({"what": what, "shape": shape, "minibnn": rate, "baseline": baseline,
                          "baseline_rate": base_rate, "ratio": ratio, "check": check})
        print(self.line(self.rows[-1]), flush=True)  # as it comes: a run cut short still shows it

    HEAD = f"{'what':<22} {'shape':<22} {'minibnn':>12} {'baseline':<18} {'baseline rate':>14} {'ratio':>8} check"

    @staticmethod
    def line(r: dict) -> str:
        def num(v):
            return "failed" if v is None else f"{v:,.1f}" if v < 1e4 else f"{v:,.0f}"

        ratio = f"{r['ratio']:.3g}x" if r["ratio"] is not None else "-"
        base = num(r["baseline_rate"]) if r["baseline"] else "-"
        return (f"{r['what']:<22} {r['shape']:<22} {num(r['minibnn']):>12} {r['baseline'] or '-':<18}"
                f" {base:>14} {ratio:>8} {r['check']}".rstrip())

    def table(self) -> str:
        return "\n".join([self.HEAD, "-" * len(self.HEAD), *map(self.line, self.rows)])


# ---- 1. xnor_gemm against float matmul -----------------------------------------------------

def random_words(rng, rows: int, k: int) -> np.ndarray:
    """Random packed rows (uint64, ceil(k/64) words) with the tail bits past k zero."""
    words = rng.integers(0, 2**64, size=(rows, -(-k // 64)), dtype=np.uint64, endpoint=False)
    if k % 64:
        words[:, -1] &= np.uint64((1 << (k % 64)) - 1)
    return words


def time_xnor_gemm(dev: Device, m: int, n: int, k: int, cfg: Config):
    """(seconds per call of the backend's xnor_gemm on random words, a function checking its result)."""
    from minibnn import backend
    from minibnn.backend import numpy_ref

    kernels = backend.kernels()
    a_host, b_host = random_words(dev.rng, m, k), random_words(dev.rng, n, k)
    a, b = dev.xp.asarray(a_host), dev.xp.asarray(b_host)
    out = dev.xp.empty((m, n), dtype=np.int32)
    seconds = median_seconds(dev.clock, lambda: kernels.xnor_gemm(a, b, k, out), cfg.warmup, cfg.repeats)

    def check() -> bool:  # the first rows against the numpy reference
        rows = min(m, CHECK_ROWS)
        expected = numpy_ref.xnor_gemm(a_host[:rows], b_host, k, np.empty((rows, n), np.int32))
        return bool(np.array_equal(backend.to_numpy(out[:rows]), expected))
    return seconds, check


def float_matmul(dev: Device, m: int, n: int, k: int, dtype, cfg: Config) -> float:
    """Seconds per call of xp.matmul (M, K) @ (K, N) in ``dtype`` into a preallocated output."""
    a, b = dev.randn((m, k), dtype), dev.randn((k, n), dtype)
    out = dev.xp.empty((m, n), dtype=dtype)
    return median_seconds(dev.clock, lambda: dev.xp.matmul(a, b, out=out), cfg.warmup, cfg.repeats)


def check_result(rep: Report, part: str, check) -> str:
    """'exact', 'WRONG' or 'unchecked' (the check itself failed); a wrong result counts as a failure."""
    exact = rep.attempt(f"{part} check", check)
    if exact is False:
        rep.failures.append({"part": part, "error": "result differs from the numpy reference"})
    return {True: "exact", False: "WRONG", None: "unchecked"}[exact]


def gemm_section(dev: Device, tt: Torch | None, cfg: Config, rep: Report) -> None:
    baselines = ({"cupy f32 matmul": np.float32, "cupy f16 matmul": np.float16} if dev.gpu
                 else {"numpy f32 matmul": np.float32})
    for m, n, k in cfg.gemm_shapes:
        shape, macs = f"{m}x{n}x{k}", m * n * k / 1e9
        got = rep.attempt(f"xnor_gemm {shape}", lambda: time_xnor_gemm(dev, m, n, k, cfg))
        rate, check = (macs / got[0], check_result(rep, f"xnor_gemm {shape}", got[1])) if got else (None, "")
        for label, dtype in baselines.items():
            sec = rep.attempt(f"{label} {shape}", lambda: float_matmul(dev, m, n, k, dtype, cfg))
            rep.add("gemm G(bit-)MAC/s", shape, rate, label, macs / sec if sec else None, check)
        dev.free()


# ---- 2. training images/s ------------------------------------------------------------------

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
    return train_rate(tt.clock, step, cfg.train_batch, cfg)


def train_section(dev: Device, tt: Torch | None, cfg: Config, rep: Report) -> None:
    for name in ("lenet", "resnet18"):
        shape = f"{cfg.train_batch}x{'x'.join(map(str, INPUT[name]))}"
        rate = rep.attempt(f"train {name} (minibnn {dev.name})", lambda: minibnn_train(dev, name, cfg))
        dev.free()
        base = rep.attempt(f"train {name} (torch f32)", lambda: torch_train(tt, name, cfg)) if tt else None
        rep.add(f"train {name} img/s", shape, rate, "torch f32" if tt else "", base)


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
    torch = tt.torch
    x = torch.randn(batch, *INPUT["resnet18"], device=tt.device).to(dtype)

    def run():
        with torch.no_grad():
            model(x)
    return batch / median_seconds(tt.clock, run, cfg.warmup, cfg.repeats)


def infer_section(dev: Device, tt: Torch | None, cfg: Config, rep: Report) -> None:
    packed = rep.attempt(f"convert resnet18 (minibnn {dev.name})", lambda: packed_resnet(dev, cfg))
    models = {}
    if tt:
        f32 = rep.attempt("torch resnet18 f32 model", lambda: tt.float_model("resnet18", cfg).eval())
        models = {"torch f32": (f32, tt.torch.float32),
                  "torch bf16": (copy.deepcopy(f32).to(tt.torch.bfloat16) if f32 else None, tt.torch.bfloat16)}
    for batch in cfg.infer_batches:
        shape = f"{batch}x{'x'.join(map(str, INPUT['resnet18']))}"
        rate = None
        if packed is not None:
            x = dev.randn((batch, *INPUT["resnet18"]))
            rate = rep.attempt(f"packed resnet18 predict batch {batch}", lambda: batch / median_seconds(
                dev.clock, lambda: packed.predict(x), cfg.warmup, cfg.repeats))
        for label, (model, dtype) in models.items():
            base = None
            if model is not None:
                base = rep.attempt(f"{label} resnet18 batch {batch}", lambda: torch_infer(tt, model, batch, dtype, cfg))
            rep.add("infer resnet18 img/s", shape, rate, label, base)
        if not models:
            rep.add("infer resnet18 img/s", shape, rate, "", None)
        dev.free()


# ---- main ----------------------------------------------------------------------------------

SECTIONS = {"gemm": gemm_section, "train": train_section, "infer": infer_section}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cuda", help="minibnn backend to measure (default cuda)")
    p.add_argument("--quick", action="store_true", help="fewer shapes, repeats and steps (about 90 s on a GPU)")
    p.add_argument("--tiny", action="store_true", help="with --quick: tiny sizes, a smoke test of this script")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--repeats", type=int, help="timed calls per kernel / inference number (default 50, --quick 10)")
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
    lines.append(f"command: {command}")
    clock = "CUDA events" if "gpu" in info else "time.perf_counter"
    lines.append(f"timing: {clock}; kernels and inference median of {cfg.repeats} calls after {cfg.warmup} warm-up;"
                 f" training median of {cfg.train_rounds} rounds of up to {cfg.train_steps} steps after "
                 f"{cfg.train_warmup} warm-up")
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
                                                   "rows": rep.rows, "failures": rep.failures}, indent=1) + "\n")

    rep = Report()
    start = time.perf_counter()
    print(f"\n{Report.HEAD}  (gemm shape M x N x K)", flush=True)
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        SECTIONS[name](dev, tt, cfg, rep)
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", flush=True)
        save()  # after each section: a run cut short keeps what it measured
    print()
    print(rep.table())
    print(f"\ntotal {time.perf_counter() - start:.1f} s"
          f"{'  (--quick: a short run, not a final measurement)' if args.quick else ''}")
    if rep.failures:
        print(f"\n{len(rep.failures)} part(s) FAILED:", file=sys.stderr)
        for f in rep.failures:
            print(f"  {f['part']}: {f['error']}", file=sys.stderr)
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
