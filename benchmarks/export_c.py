"""Exported C programs (``minibnn export-c``): sizes, and batch-1 latency on one core against
``PackedModel.predict`` on the native backend, in one run.

Run from the repository root on an otherwise idle machine:

    python benchmarks/export_c.py                      # LeNet and ResNet-18, median of 9 runs
    python benchmarks/export_c.py --models resnet18 --repeats 15 --json export_c.json
    python benchmarks/export_c.py --quick              # smoke run (seconds), not a measurement

Models: the zoo's binary LeNet (MNIST 1x28x28) and ResNet-18 (CIFAR 3x32x32, ``resnet18(in_channels=3)``:
float stem and head, binary body and shortcuts), random weights with batch-norm statistics moved off
their defaults by training-mode forwards, converted with ``deploy.convert``. Each is exported with
``deploy.export_c`` and built with the README's command ``cc -O2 -std=c11 DIR/*.c -o app -lm`` (the
program whose sizes are reported: the file, the file after ``strip``, and ``size``'s text / data /
bss) and, for timing, the same sources without main.c plus a small driver that calls
``<name>_predict`` in a loop (same compiler and flags).

Latency: this process and its children are pinned to one CPU, with MINIBNN_NUM_THREADS,
OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS set to 1 before NumPy loads. One run of the
C program (a fresh process: a few untimed calls, then ``--calls`` timed ones) and one run of
``packed.predict(x[None])`` (after an untimed call, ``--calls`` timed ones) alternate, ``--repeats``
times; the medians of the per-image times are reported and their ratio. The C logits are checked
against ``PackedModel.predict`` (same class, within 1e-5 relative) before anything is timed.

Larq Compute Engine (optional, ``--lce-python PY``): PY is a Python with ``larq-compute-engine``,
``larq`` and TensorFlow (e.g. a separate venv: ``pip install larq-compute-engine==0.16.0 larq
tensorflow-cpu==2.16.2 tf-keras==2.16.0``; TensorFlow 2.16 needs NumPy < 2, so not minibnn's
environment). This script, run by PY, builds the same ResNet-18 in Keras with Larq layers (float
3x3 stem + batch norm, binary 3x3 convs and 1x1 downsampling shortcuts with zero padding, batch
norms, float residual adds, ReLU, global average pool, float dense; random weights) and converts it
with ``convert_keras_model``; each repeat then adds one run of LCE's interpreter (a fresh process
that loads only the interpreter, ``num_threads=1``, its optimized indirect BGEMM kernel, the
fastest on x86 here), alternating with the other two.

The popcount ceiling: ResNet-18's binary multiply-accumulates (553.6 M at batch 1, from
``minibnn.summary``) divided by the rate of the native ``xnor_gemm`` on this core, measured in the
same run on pre-packed operands at the four 3x3 convolution shapes of ResNet-18 at batch 1
(M = output channels, N = positions, K = 9 x input channels) and at 1024^3; the best of these rates
gives the ceiling, the MAC-weighted one the time those four shapes would take.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import THREAD_VARS, cpu_model  # noqa: E402  (benchmarks/machine.py: the standard library only)

for _var in THREAD_VARS:
    os.environ[_var] = "1"  # before NumPy and the native library load

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

CONV_SHAPES = [(64, 1024, 576), (128, 256, 1152), (256, 64, 2304), (512, 16, 4608)]  # ResNet-18, CIFAR, batch 1
BIG_SHAPE = (1024, 1024, 1024)
RTOL = 1e-5

DRIVER = r"""#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "{name}.h"
static double now(void) {{ struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }}
int main(int argc, char **argv) {{
    static float x[{up}_INPUT_SIZE];
    float y[{up}_NUM_CLASSES];
    const int calls = argc > 1 ? atoi(argv[1]) : 10, warm = argc > 2 ? atoi(argv[2]) : 3;
    if (fread(x, sizeof(float), {up}_INPUT_SIZE, stdin) != {up}_INPUT_SIZE) return 2;
    for (int i = 0; i < warm; ++i) if ({name}_predict(x, y) != {up}_OK) return 1;
    const double t = now();
    for (int i = 0; i < calls; ++i) if ({name}_predict(x, y) != {up}_OK) return 1;
    printf("%.9g\n", (now() - t) / calls);
    for (int i = 0; i < {up}_NUM_CLASSES; ++i) printf("%.9g ", y[i]);
    printf("\n");
    return 0;
}}
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lce-python", help="a Python with larq-compute-engine, larq and TensorFlow: also time LCE")
    p.add_argument("--lce-convert", help=argparse.SUPPRESS)  # child, run by --lce-python: write the .tflite
    p.add_argument("--lce-time", help=argparse.SUPPRESS)  # child, run by --lce-python: time the .tflite
    p.add_argument("--models", default="lenet,resnet18", help="comma-separated: lenet, resnet18 (default both)")
    p.add_argument("--repeats", type=int, default=9, help="alternating runs of C and Python, median (default 9)")
    p.add_argument("--calls", type=int, default=0, help="timed calls per run (default: 200 LeNet, 30 ResNet-18)")
    p.add_argument("--cc", default=os.environ.get("CC", "cc"), help="C compiler (default: $CC or cc)")
    p.add_argument("--cflags", default="-O2 -std=c11", help="compiler flags (default: the README's -O2 -std=c11)")
    p.add_argument("--cpu", type=int, default=None, help="the CPU to pin to (default: the last one allowed)")
    p.add_argument("--keep", help="write the exported sources and programs under this folder (default: a temp one)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, few calls")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.calls = 2, args.calls or 3
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def build_model(kind: str):
    import numpy as np

    import minibnn
    from minibnn import deploy, models

    minibnn.manual_seed(0)
    shape = (1, 28, 28) if kind == "lenet" else (3, 32, 32)
    model = models.lenet(act_bit=1, weight_bit=1) if kind == "lenet" else models.resnet18(in_channels=3)
    model.train()
    rng = np.random.default_rng(0)
    with minibnn.no_grad():
        for _ in range(2):
            model(minibnn.Tensor(rng.normal(0.2, 1.5, size=(8, *shape)).astype(np.float32)))
    model.eval()
    return deploy.convert(model, input_shape=shape, name=kind), shape


def compile_c(cc: str, cflags: list[str], sources: list[Path], out: Path, include: Path) -> None:
    cmd = [cc, *cflags, *map(str, sources), "-I", str(include), "-o", str(out), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def size_of(binary: Path) -> dict:
    """text / data / bss of ``size`` (Berkeley format), or {} when ``size`` is missing."""
    if shutil.which("size") is None:
        return {}
    out = subprocess.run(["size", str(binary)], capture_output=True, text=True).stdout.split("\n")[1].split()
    return {"text": int(out[0]), "data": int(out[1]), "bss": int(out[2])}


def measure_model(kind: str, args, work: Path) -> dict:
    import numpy as np

    import minibnn
    from minibnn import deploy
    from minibnn.backend import to_numpy

    minibnn.use("native")
    packed, shape = build_model(kind)
    out = work / kind
    report = deploy.export_c(packed, out)
    cflags = args.cflags.split()
    # the README's program: sizes
    app = work / f"{kind}_app"
    compile_c(args.cc, cflags, sorted(out.glob("*.c")), app, out)
    stripped = work / f"{kind}_app.stripped"
    shutil.copyfile(app, stripped)
    subprocess.run(["strip", str(stripped)], check=True)
    # the timing driver: the model and kernels without main.c
    up = kind.upper()
    (work / f"{kind}_bench.c").write_text(DRIVER.format(name=kind, up=up))
    bench = work / f"{kind}_bench"
    compile_c(args.cc, cflags, [p for p in sorted(out.glob("*.c")) if p.name != "main.c"] + [work / f"{kind}_bench.c"],
              bench, out)

    x = np.random.default_rng(1).normal(size=(1, *shape)).astype(np.float32)
    calls = args.calls or (200 if kind == "lenet" else 30)

    def run_c(n: int, warm: int) -> tuple[float, np.ndarray]:
        proc = subprocess.run([str(bench), str(n), str(warm)], input=x.tobytes(), capture_output=True)
        if proc.returncode != 0:
            raise SystemExit(f"{bench.name} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
        lines = proc.stdout.decode().split("\n")
        return float(lines[0]), np.array(lines[1].split(), np.float32)

    want = to_numpy(packed.predict(x))[0]
    _, got = run_c(1, 0)
    err = float(np.abs(got - want).max())
    if int(np.argmax(got)) != int(np.argmax(want)) or err > RTOL * (1 + np.abs(want).max()):
        raise SystemExit(f"{kind}: the C logits differ from PackedModel.predict:\n{got}\n{want}")

    def run_py(n: int) -> float:
        packed.predict(x)
        t0 = time.perf_counter()
        for _ in range(n):
            packed.predict(x)
        return (time.perf_counter() - t0) / n

    lce_model = None
    if kind == "resnet18" and args.lce_python:
        lce_model = work / "resnet18_lce.tflite"
        run_lce(args.lce_python, "--lce-convert", str(lce_model))
    c_times, py_times, lce_times = [], [], []
    for _ in range(args.repeats):  # alternating, so that load from other processes hits all alike
        c_times.append(run_c(calls, 3)[0])
        py_times.append(run_py(calls))
        if lce_model is not None:
            lce_times.append(run_lce(args.lce_python, "--lce-time", str(lce_model), "--calls", str(calls))["seconds"])
    sources = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    return {
        "model": kind, "input_shape": list(shape), "calls_per_run": calls,
        "model_source_bytes": sources[f"{kind}.c"] + sources[f"{kind}.h"],
        "all_source_bytes": sum(sources.values()), "sources": sources,
        "constant_bytes": report.constant_bytes, "static_bytes": report.static_bytes,
        "workspace_bytes": report.workspace_bytes, "scratch_bytes": report.scratch_bytes,
        "correction_bytes": report.correction_bytes,
        "program_bytes": app.stat().st_size, "stripped_bytes": stripped.stat().st_size, "size": size_of(app),
        "c_ms": statistics.median(c_times) * 1e3, "py_ms": statistics.median(py_times) * 1e3,
        "c_runs_ms": [t * 1e3 for t in c_times], "py_runs_ms": [t * 1e3 for t in py_times],
        "max_logit_error": err,
        "binary_macs": minibnn.summary(packed, shape, print_fn=lambda *a: None).total("binary_macs"),
        **({"lce_ms": statistics.median(lce_times) * 1e3, "lce_runs_ms": [t * 1e3 for t in lce_times],
            "lce_model_bytes": lce_model.stat().st_size} if lce_times else {}),
    }


def measure_gemm(repeats: int) -> dict:
    """The native xnor_gemm's rate (bit-MAC/s) on pre-packed words, 1 thread, per shape."""
    import numpy as np

    from minibnn import backend

    nat = backend._load("native")
    nat.set_num_threads(1)
    ref = backend._load("numpy")
    rng = np.random.default_rng(0)
    rates = {}
    for m, n, k in [*CONV_SHAPES, BIG_SHAPE]:
        aw = ref.pack_bits(rng.standard_normal((m, k), dtype=np.float32))
        bw = ref.pack_bits(rng.standard_normal((n, k), dtype=np.float32))
        out = np.empty((m, n), np.int32)
        calls = max(1, int(2e8 // (m * n * k)))
        nat.xnor_gemm(aw, bw, k, out)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                nat.xnor_gemm(aw, bw, k, out)
            times.append((time.perf_counter() - t0) / calls)
        rates[f"{m}x{n}x{k}"] = m * n * k / statistics.median(times)
    return {"rates": rates, "simd": nat.simd()}


# ---------------------------------------------------------------- Larq Compute Engine (children)

def lce_convert(path: str) -> None:
    """Build ResNet-18 (CIFAR) with Larq layers, random weights, batch norms moved; write the LCE flatbuffer."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import larq as lq
    import larq_compute_engine as lce
    import numpy as np
    import tf_keras as keras

    def qconv(filters, k, strides):
        return lq.layers.QuantConv2D(filters, k, strides=strides, padding="same", pad_values=0.0, use_bias=False,
                                     input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                     kernel_constraint="weight_clip")

    inp = keras.Input((32, 32, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(64, 3, padding="same", use_bias=False)(inp))
    cin = 64
    for stage in range(4):
        cout = 64 * 2**stage
        for i in range(2):
            stride = 2 if (i == 0 and stage > 0) else 1
            y = keras.layers.BatchNormalization()(qconv(cout, 3, stride)(x))
            shortcut = keras.layers.BatchNormalization()(qconv(cout, 1, stride)(x)) if stride != 1 or cin != cout else x
            y = keras.layers.Add()([y, shortcut])
            x = keras.layers.Add()([keras.layers.BatchNormalization()(qconv(cout, 3, 1)(y)), y])
            cin = cout
    out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x)))
    model = keras.Model(inp, out)
    model(np.random.default_rng(0).normal(0.2, 1.5, size=(8, 32, 32, 3)).astype(np.float32), training=True)
    Path(path).write_bytes(lce.convert_keras_model(model))
    print(json.dumps({"lce": lce.__version__ if hasattr(lce, "__version__") else "?"}))


def lce_time(path: str, calls: int) -> None:
    """Time LCE's interpreter on one image, 1 thread; only the interpreter is loaded (no TensorFlow)."""
    import importlib.util
    import types

    spec = importlib.util.find_spec("larq_compute_engine")
    pkg = types.ModuleType("larq_compute_engine")  # skip the package's __init__, which imports TensorFlow
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["larq_compute_engine"] = pkg
    import numpy as np
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    it = Interpreter(Path(path).read_bytes(), num_threads=1, use_indirect_bgemm=True)
    x = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype(np.float32)
    for _ in range(3):
        it.predict(x)
    t0 = time.perf_counter()
    for _ in range(calls):
        it.predict(x)
    print(json.dumps({"seconds": (time.perf_counter() - t0) / calls}))


def run_lce(python: str, *args: str) -> dict:
    proc = subprocess.run([python, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"LCE ({python} {' '.join(args)}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().split("\n")[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.lce_convert:
        lce_convert(args.lce_convert)
        return 0
    if args.lce_time:
        lce_time(args.lce_time, args.calls)
        return 0
    allowed = sorted(os.sched_getaffinity(0))
    cpu = args.cpu if args.cpu is not None else allowed[-1]
    os.sched_setaffinity(0, {cpu})  # this process and the C programs it starts
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    for k in kinds:
        if k not in ("lenet", "resnet18"):
            raise SystemExit(f"unknown model {k!r} (lenet, resnet18)")
    cc_version = subprocess.run([args.cc, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="minibnn_export_c_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = [measure_model(k, args, work) for k in kinds]
        gemm = measure_gemm(max(3, args.repeats))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, pinned to CPU {cpu}, {platform.system()} "
          f"{platform.release()}, Python {platform.python_version()}, {cc_version}")
    command = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"command: python benchmarks/{Path(__file__).name} {command}".rstrip())
    quick = " (--quick: a smoke run, not a measurement)" if args.quick else ""
    print(f"build: {args.cc} {args.cflags} DIR/*.c -o app -lm; native backend simd={gemm['simd']}, 1 thread; "
          f"median of {args.repeats} alternating runs{quick}")
    print()
    print("| model | model .c + .h | all sources | constants | static memory (export) | program | stripped "
          "| size: text / data / bss |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        s = r["size"]
        sz = f"{s['text']:,} / {s['data']:,} / {s['bss']:,}" if s else "-"
        print(f"| {r['model']} | {r['model_source_bytes']:,} B | {r['all_source_bytes']:,} B "
              f"| {r['constant_bytes']:,} B | {r['static_bytes']:,} B (activations {r['workspace_bytes']:,}, "
              f"scratch {r['scratch_bytes']:,}, "
              f"corrections {r['correction_bytes']:,}) | {r['program_bytes']:,} B | {r['stripped_bytes']:,} B "
              f"| {sz} |")
    print()
    print("| model | exported C, ms/image | PackedModel.predict, ms/image | predict / C | C runs (ms) "
          "| predict runs (ms) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['c_ms']:.3f} | {r['py_ms']:.3f} | **{r['py_ms'] / r['c_ms']:.2f}x** "
              f"| {min(r['c_runs_ms']):.3f}-{max(r['c_runs_ms']):.3f} "
              f"| {min(r['py_runs_ms']):.3f}-{max(r['py_runs_ms']):.3f} |")
    for r in results:
        if "lce_ms" in r:
            print(f"\nLarq Compute Engine, same run, {r['model']} (.tflite {r['lce_model_bytes']:,} B, 1 thread, "
                  f"indirect BGEMM): {r['lce_ms']:.3f} ms/image (runs {min(r['lce_runs_ms']):.3f}-"
                  f"{max(r['lce_runs_ms']):.3f}); LCE / exported C **{r['lce_ms'] / r['c_ms']:.2f}x**, "
                  f"LCE / PackedModel.predict {r['lce_ms'] / r['py_ms']:.2f}x")
    print()
    rates = gemm["rates"]
    print("native xnor_gemm, 1 thread, pre-packed: "
          + ", ".join(f"{shape} {rate / 1e9:.0f} G bit-MAC/s" for shape, rate in rates.items()))
    conv_macs = sum(m * n * k for m, n, k in CONV_SHAPES)
    conv_time = sum(m * n * k / rates[f"{m}x{n}x{k}"] for m, n, k in CONV_SHAPES)
    weighted, best = conv_macs / conv_time, max(rates.values())
    ceiling = {}
    for r in results:
        if r["model"] == "resnet18":
            macs = r["binary_macs"]
            ceiling = {"binary_macs": macs, "best_rate": best, "conv_rate": weighted,
                       "ceiling_ms": macs / best * 1e3, "conv_rate_ms": macs / weighted * 1e3}
            print(f"ResNet-18: {macs / 1e6:.1f} M binary MACs at batch 1; popcount ceiling at the best rate "
                  f"({best / 1e9:.0f} G bit-MAC/s) {ceiling['ceiling_ms']:.2f} ms, at the batch-1 conv shapes' "
                  f"MAC-weighted rate ({weighted / 1e9:.0f} G bit-MAC/s) {ceiling['conv_rate_ms']:.2f} ms; exported C "
                  f"{r['c_ms']:.2f} ms = {r['c_ms'] / ceiling['ceiling_ms']:.2f}x the ceiling "
                  f"({r['c_ms'] / ceiling['conv_rate_ms']:.2f}x the batch-1 GEMM time)")
    if args.json:
        Path(args.json).write_text(json.dumps({"models": results, "gemm": gemm, "ceiling": ceiling,
                                               "cpu": cpu_model(), "cc": cc_version, "cflags": args.cflags}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
