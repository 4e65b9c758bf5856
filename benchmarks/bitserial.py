"""Bit-serial k-bit 3x3 convolutions of ResNet-18 (CIFAR) on the native backend vs float32 conv2d.

Run from the repository root on an otherwise idle machine:

    python benchmarks/bitserial.py                  # 1 and 2 threads, batch 64, median of 5 runs
    python benchmarks/bitserial.py --quick          # smoke run (seconds): batch 4, 2 runs
    python benchmarks/bitserial.py --threads 1 --pairs 2x1 --repeats 9 --json bitserial.json

Layers: the distinct 3x3 convolutions of ResNet-18 at 32x32 input (C_in -> C_out, stride 1 or 2,
padding 1; see benchmarks/conv.py). For each (a, b) = (activation bits, weight bits) the bit-serial
layer (minibnn.backend.bitserial on the native kernel table) is timed from the float NCHW input to
the int32 NHWC integer result, packing included: the quantized float activations q / (2^a - 1)
become levels (rint of x * (2^a - 1)), pack_planes packs them along channels (check=False, as a
layer does), bitserial_conv2d computes the exact integer convolution (zero padding). Not included:
the float epilogue (scale * D + bias, or the folded thresholds of a next k-bit layer). Weight planes
and their conv_offset are prepared once per layer, as a converted model holds them. Compared with minibnn's
functional.conv2d (float32, no_grad) on the same quantized floats, at the same thread count (one
process per count, thread variables set before NumPy loads). Each result is checked against the
float32 conv of the integer levels (exact: the sums stay below 2^24) before it is timed. Runs are
interleaved, each after an untimed call of the same method (machine.timed); the median is reported.
"vs float" is float time / bit-serial time (= the ratio of images per second).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from conv import LAYERS as CONV_LAYERS  # benchmarks/conv.py
from machine import bench_main, bench_parser, timed  # benchmarks/machine.py

LAYERS = CONV_LAYERS[32]  # ResNet-18's 3x3 convolutions at 32x32: (input size, C_in, C_out, stride)


def parse_args(argv=None) -> argparse.Namespace:
    p = bench_parser(__doc__, 5, "smoke run: batch 4, 2 repeats", torch=False)
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--pairs", default="2x1,2x2,4x4", help="(a)x(b) bit pairs (default 2x1,2x2,4x4)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.batch = 2, 4
    if args.repeats < 1 or args.batch < 1:
        p.error("--repeats and --batch must be >= 1")
    return args


def measure(args) -> dict:
    """Run in the child process (thread variables already set)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np

    import minibnn
    from minibnn import backend
    from minibnn.backend import bitserial as bs
    from minibnn.functional import conv2d

    threads = int(args.threads)
    nat = backend._load("native")  # BackendUnavailable says how to build it
    nat.set_num_threads(threads)
    rng = np.random.default_rng(0)
    pairs = [tuple(int(v) for v in p.split("x")) for p in args.pairs.split(",")]
    rows = []
    for hw, cin, cout, stride in LAYERS:
        for a, b in pairs:
            top_a, top_b = 2**a - 1, 2**b - 1
            q = rng.integers(0, top_a + 1, (args.batch, cin, hw, hw)).astype(np.float32)
            r = rng.integers(0, top_b + 1, (cout, cin, 3, 3))
            w_int = (2 * r - top_b).astype(np.float32)
            x, wq = q / np.float32(top_a), w_int / np.float32(top_b)  # the float simulation's operands
            w_planes = bs.pack_planes(r, b, axis=1, table=nat)  # once per layer, with the weight term:
            offset = bs.conv_offset(w_planes, a, cin, (hw, hw), stride, 1, 0, table=nat)
            oh, ow = nat.conv_output_hw((hw, hw), (3, 3), (stride, stride), (1, 1))
            out = np.empty((args.batch, oh, ow, cout), np.int32)

            def pack():
                levels = x * np.float32(top_a)
                np.rint(levels, out=levels)
                return bs.pack_planes(levels, a, axis=1, check=False, table=nat)

            def bitserial():
                bs.bitserial_conv2d(pack(), w_planes, cin, stride, 1, 0, out, check_tails=False, offset=offset,
                                    table=nat)
                return out

            def float_conv(xf=x, wf=wq):
                with minibnn.no_grad():
                    return conv2d(minibnn.Tensor(xf), minibnn.Tensor(wf), stride=stride, padding=1).data

            expected = float_conv(q, w_int).transpose(0, 2, 3, 1)
            exact = bool(np.array_equal(bitserial(), expected))
            methods = {"bitserial": bitserial, "pack": pack, "float": float_conv}
            times = {name: [] for name in methods}
            for _ in range(args.repeats):
                for name, fn in methods.items():
                    times[name].append(timed(fn))
            row = {"layer": [hw, cin, cout, stride], "pair": [a, b], "batch": args.batch, "exact": exact}
            row.update({f"{name}_s": statistics.median(ts) for name, ts in times.items()})
            rows.append(row)
    info = {"threads": threads, "numpy": np.__version__, "simd": nat.simd(), "openmp": nat.has_openmp(),
            "native_threads": nat.get_num_threads()}
    return {"info": info, "rows": rows}


def report(result: dict) -> list[str]:
    info, rows = result["info"], result["rows"]
    lines = [f"threads={info['threads']}  native simd={info['simd']} openmp={info['openmp']} "
             f"threads={info['native_threads']}  batch={rows[0]['batch'] if rows else '-'}",
             f"{'HW':>3} {'Cin':>4} {'Cout':>4} {'s':>1} {'a x b':>5} {'bitserial':>10} {'pack':>8} {'float':>9}"
             f" {'vs float':>8} {'exact':>5}",
             f"{'':>3} {'':>4} {'':>4} {'':>1} {'':>5} {'ms':>10} {'ms':>8} {'ms':>9}"]
    ratios: dict[tuple, list[float]] = {}
    for r in rows:
        hw, cin, cout, stride = r["layer"]
        a, b = r["pair"]
        ratio = r["float_s"] / r["bitserial_s"]
        ratios.setdefault((a, b), []).append(ratio)
        lines.append(f"{hw:>3} {cin:>4} {cout:>4} {stride:>1} {f'{a}x{b}':>5} {r['bitserial_s'] * 1e3:10.2f}"
                     f" {r['pack_s'] * 1e3:8.2f} {r['float_s'] * 1e3:9.2f} {ratio:8.2f}"
                     f" {'yes' if r['exact'] else 'NO':>5}")
    for (a, b), rs in ratios.items():
        lines.append(f"{a}x{b} bit-serial vs minibnn float conv2d: median {statistics.median(rs):.2f}x, "
                     f"lowest {min(rs):.2f}x, highest {max(rs):.2f}x")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    return bench_main(__file__, argv, args, measure, report, ["--batch", str(args.batch), "--pairs", args.pairs])


if __name__ == "__main__":
    sys.exit(main())
