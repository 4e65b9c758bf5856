"""Binary GEMM speed: numpy float32 matmul vs minibnn's numpy_ref and native xnor_gemm, per shape.

Run from the repository root on an otherwise idle machine:

    python benchmarks/gemm.py                 # 1 and 2 threads, median of 7 runs per number
    python benchmarks/gemm.py --quick         # smoke run (seconds): 2 runs, numpy_ref on small shapes only
    python benchmarks/gemm.py --threads 1 --repeats 11 --json gemm.json

Shapes are (M, N, K) of out (M, N) = A (M, K) @ B (K, N); the first four are ResNet-18's 3x3
convolutions as GEMMs (M = output channels, N = output positions, K = 9 * input channels), then
a square one and two fully connected ones. For each, in one process per thread count (with
OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS and MINIBNN_NUM_THREADS set before NumPy
loads), the script times numpy.matmul on float32, numpy_ref.xnor_gemm and native.xnor_gemm on
pre-packed words, and the packing of A and of B (native.pack_bits of the float32 rows) on its own.
Runs are interleaved (one run of every method, then the next) so that load from other processes
hits them alike, each timed call right after an untimed one of the same method (warm caches,
see machine.timed); the median is reported. GMAC/s counts M * N * K multiply-adds (bit-MACs for the
binary kernels). Ratios are against numpy float32 at the same shape and thread count; "incl. pack"
adds the packing of B (the activations side: a layer's weights are packed once, ahead of time).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from machine import bench_main, bench_parser, blas_name, timed  # benchmarks/machine.py

SHAPES = [(64, 3136, 576), (128, 784, 1152), (256, 196, 2304), (512, 49, 4608),
          (1024, 1024, 1024), (10, 256, 4096), (64, 1000, 4096)]
CONV_SHAPES = SHAPES[:4]
REF_QUICK_LIMIT = 3_000_000  # --quick: numpy_ref only where M * N * words is below this


def parse_args(argv=None) -> argparse.Namespace:
    p = bench_parser(__doc__, 7, "smoke run: 2 repeats, numpy_ref on small shapes only", torch=False)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = 2
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def measure(threads: int, repeats: int, quick: bool) -> dict:
    """Run in the child process (thread variables already set): every shape, every method."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np

    from minibnn import backend

    ref = backend._load("numpy")
    try:
        nat = backend._load("native")
        nat.set_num_threads(threads)
    except backend.BackendUnavailable as exc:
        nat = None
        print(f"native backend unavailable: {exc}", file=sys.stderr)
    rng = np.random.default_rng(0)
    rows = []
    for m, n, k in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        bt = np.ascontiguousarray(b.T)  # B's columns as packed rows
        c = np.empty((m, n), np.float32)
        aw, bw = ref.pack_bits(a), ref.pack_bits(bt)
        out_ref, out_nat = np.empty((m, n), np.int32), np.empty((m, n), np.int32)
        methods = {"float": lambda: np.matmul(a, b, out=c)}
        if not quick or m * n * aw.shape[1] < REF_QUICK_LIMIT:
            methods["numpy_ref"] = lambda: ref.xnor_gemm(aw, bw, k, out_ref)
        if nat is not None:
            methods["native"] = lambda: nat.xnor_gemm(aw, bw, k, out_nat)
            methods["pack_a"] = lambda: nat.pack_bits(a)
            methods["pack_b"] = lambda: nat.pack_bits(bt)
        for fn in methods.values():  # warm-up (and first-touch of the outputs)
            fn()
        times = {name: [] for name in methods}
        for _ in range(repeats):
            for name, fn in methods.items():
                times[name].append(timed(fn))
        row = {"shape": [m, n, k]}
        row.update({f"{name}_s": statistics.median(ts) for name, ts in times.items()})
        if nat is not None:  # the numbers are only worth reporting when the result is right
            expected = np.where(a >= 0, 1.0, -1.0) @ np.where(b >= 0, 1.0, -1.0)
            row["native_exact"] = bool(np.array_equal(out_nat, expected))
            if "numpy_ref" in times:
                row["native_equals_ref"] = bool(np.array_equal(out_nat, out_ref))
        rows.append(row)
    info = {"threads": threads, "numpy": np.__version__, "blas": blas_name(np)}
    if nat is not None:
        info.update(simd=nat.simd(), openmp=nat.has_openmp(), native_threads=nat.get_num_threads())
    return {"info": info, "rows": rows}


def gmacs(shape, seconds) -> float:
    m, n, k = shape
    return m * n * k / seconds / 1e9


def report(result: dict) -> list[str]:
    info, rows = result["info"], result["rows"]
    t = info["threads"]
    lines = [f"threads={t}  numpy {info['numpy']} ({info['blas']})  native: "
             + (f"simd={info['simd']} openmp={info['openmp']} threads={info['native_threads']}"
                if "simd" in info else "unavailable"),
             f"{'M x N x K':>20} {'float':>8} {'np_ref':>8} {'native':>8} {'/core':>7} {'packA':>8} {'packB':>8}"
             f" {'nat/float':>9} {'incl.pack':>9} {'exact':>5}",
             f"{'':>20} {'GMAC/s':>8} {'GMAC/s':>8} {'GMAC/s':>8} {'GMAC/s':>7} {'ms':>8} {'ms':>8}"
             f" {'ratio':>9} {'ratio':>9} {'':>5}"]
    ratios = {}
    for row in rows:
        shape = tuple(row["shape"])
        f = gmacs(shape, row["float_s"])
        r = f"{gmacs(shape, row['numpy_ref_s']):8.2f}" if "numpy_ref_s" in row else f"{'-':>8}"
        if "native_s" in row:
            nat = gmacs(shape, row["native_s"])
            ratio = row["float_s"] / row["native_s"]
            with_pack = row["float_s"] / (row["native_s"] + row["pack_b_s"])
            ratios[shape] = ratio
            exact = "yes" if row["native_exact"] and row.get("native_equals_ref", True) else "NO"
            lines.append(f"{' x '.join(map(str, shape)):>20} {f:8.1f} {r} {nat:8.1f} {nat / t:7.1f}"
                         f" {row['pack_a_s'] * 1e3:8.3f} {row['pack_b_s'] * 1e3:8.3f} {ratio:9.2f}"
                         f" {with_pack:9.2f} {exact:>5}")
        else:
            lines.append(f"{' x '.join(map(str, shape)):>20} {f:8.1f} {r}")
    if ratios:
        conv = statistics.median(ratios[s] for s in CONV_SHAPES)
        worst = min(ratios, key=ratios.get)
        lines.append(f"native / numpy float32: median over the conv shapes {conv:.2f}x, "
                     f"lowest {ratios[worst]:.2f}x at {' x '.join(map(str, worst))}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    return bench_main(__file__, argv, args, lambda a: measure(int(a.threads), a.repeats, a.quick), report,
                      ["--quick"] if args.quick else [])


if __name__ == "__main__":
    sys.exit(main())
