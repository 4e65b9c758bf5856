"""Binary 3x3 convolution layers of ResNet-18, float NCHW in -> float out, vs float conv2d.

Run from the repository root on an otherwise idle machine:

    python benchmarks/conv.py                  # 1 and 2 threads, batch 1 and 32, median of 5 runs
    python benchmarks/conv.py --quick          # smoke run (seconds): batch 1, 2 runs
    python benchmarks/conv.py --threads 1 --batches 32 --repeats 9 --json conv.json

Layers: the distinct 3x3 convolutions of ResNet-18 (C_in -> C_out, stride 1 or 2, padding 1) at
32x32 input (the CIFAR variant: stages at 32, 16, 8, 4) and at 56x56 (ImageNet: stages at 56, 28,
14, 7). The binary layer is timed from the float NCHW input to the float output, packing included:
native.pack_channels (sign and pack along channels, NHWC words) then native.binary_conv2d_affine
(zero padding through the precomputed correction, per-channel scale and bias fused), returned as
an NCHW view of the NHWC result, as minibnn's float conv2d returns its output. Weights, their
packing and the padding correction are prepared once per layer, as a converted model holds them.
Compared with minibnn.functional.conv2d (float32, no_grad) and, when installed, PyTorch's
torch.nn.functional.conv2d, at the same thread count (one process per count, with
OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS and MINIBNN_NUM_THREADS set before NumPy
loads; torch.set_num_threads too). Each binary result is checked against the float conv of the
signs before it is timed. Runs are interleaved, each after an untimed call of the same method
(machine.timed); the median is reported.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from machine import bench_main, bench_parser, timed  # benchmarks/machine.py

# (input size, C_in, C_out, stride): the distinct binary 3x3 convolutions of ResNet-18
LAYERS = {
    32: [(32, 64, 64, 1), (32, 64, 128, 2), (16, 128, 128, 1), (16, 128, 256, 2), (8, 256, 256, 1),
         (8, 256, 512, 2), (4, 512, 512, 1)],
    56: [(56, 64, 64, 1), (56, 64, 128, 2), (28, 128, 128, 1), (28, 128, 256, 2), (14, 256, 256, 1),
         (14, 256, 512, 2), (7, 512, 512, 1)],
}


def parse_args(argv=None) -> argparse.Namespace:
    p = bench_parser(__doc__, 5, "smoke run: batch 1, 2 repeats")
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default 1,32)")
    p.add_argument("--sizes", default="32,56", help="ResNet-18 input sizes: 32 (CIFAR) and/or 56 (ImageNet)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.batches = 2, "1"
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def measure(args) -> dict:
    """Run in the child process (thread variables already set)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np

    import minibnn
    from minibnn import backend
    from minibnn.functional import conv2d

    threads = int(args.threads)
    nat = backend._load("native")  # BackendUnavailable says how to build it
    nat.set_num_threads(threads)
    torch = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            torch = None
    rng = np.random.default_rng(0)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for batch in [int(b) for b in args.batches.split(",")]:
            for hw, cin, cout, stride in LAYERS[size]:
                x = rng.standard_normal((batch, cin, hw, hw), dtype=np.float32)
                w = rng.standard_normal((cout, cin, 3, 3), dtype=np.float32)
                scale = rng.uniform(0.5, 1.5, cout).astype(np.float32)
                bias = rng.standard_normal(cout, dtype=np.float32)
                # once per layer (a converted model holds these)
                ww = nat.pack_bits(w, axis=1)
                corr = nat.conv_pad_correction(ww, cin, (hw, hw), stride, 1)
                oh, ow = nat.conv_output_hw((hw, hw), (3, 3), (stride, stride), (1, 1))
                out = np.empty((batch, oh, ow, cout), np.float32)

                def binary():
                    xw = nat.pack_channels(x)
                    nat.binary_conv2d_affine(xw, ww, cin, stride, 1, 0, scale, bias, out, corr)
                    return out.transpose(0, 3, 1, 2)

                def float_conv():
                    with minibnn.no_grad():
                        return conv2d(minibnn.Tensor(x), minibnn.Tensor(w), stride=stride, padding=1).data

                methods = {"binary": binary, "pack": lambda: nat.pack_channels(x), "float": float_conv}
                if torch is not None:
                    tx, tw = torch.from_numpy(x), torch.from_numpy(w)

                    def torch_conv():
                        with torch.no_grad():
                            return torch.nn.functional.conv2d(tx, tw, stride=stride, padding=1)

                    methods["torch"] = torch_conv
                # the check: binary == scale * (float conv of the signs, zero padded) + bias
                with minibnn.no_grad():
                    signs = conv2d(minibnn.Tensor(np.where(x >= 0, 1.0, -1.0).astype(np.float32)),
                                   minibnn.Tensor(np.where(w >= 0, 1.0, -1.0).astype(np.float32)),
                                   stride=stride, padding=1).data
                expected = signs * scale[:, None, None] + bias[:, None, None]
                exact = bool(np.array_equal(binary(), expected))
                for fn in methods.values():  # warm-up
                    fn()
                times = {name: [] for name in methods}
                for _ in range(args.repeats):
                    for name, fn in methods.items():
                        times[name].append(timed(fn))
                row = {"size": size, "batch": batch, "layer": [hw, cin, cout, stride], "exact": exact,
                       "macs": batch * oh * ow * cout * cin * 9}
                row.update({f"{name}_s": statistics.median(ts) for name, ts in times.items()})
                rows.append(row)
    info = {"threads": threads, "numpy": np.__version__, "simd": nat.simd(), "openmp": nat.has_openmp(),
            "native_threads": nat.get_num_threads(), "torch": getattr(torch, "__version__", None)}
    return {"info": info, "rows": rows}


def report(result: dict) -> list[str]:
    info, rows = result["info"], result["rows"]
    lines = [f"threads={info['threads']}  native simd={info['simd']} openmp={info['openmp']} "
             f"threads={info['native_threads']}  torch={info['torch'] or 'not installed'}",
             f"{'size':>4} {'batch':>5} {'HW':>3} {'Cin':>4} {'Cout':>4} {'s':>1} {'binary':>9} {'pack':>8}"
             f" {'float':>9} {'torch':>9} {'bin GMAC/s':>10} {'vs float':>8} {'vs torch':>8} {'exact':>5}",
             f"{'':>4} {'':>5} {'':>3} {'':>4} {'':>4} {'':>1} {'ms':>9} {'ms':>8} {'ms':>9} {'ms':>9}"]
    speedups = []
    for r in rows:
        hw, cin, cout, stride = r["layer"]
        vs_float = r["float_s"] / r["binary_s"]
        speedups.append(vs_float)
        torch_ms = f"{r['torch_s'] * 1e3:9.3f}" if "torch_s" in r else f"{'-':>9}"
        vs_torch = f"{r['torch_s'] / r['binary_s']:8.2f}" if "torch_s" in r else f"{'-':>8}"
        lines.append(f"{r['size']:>4} {r['batch']:>5} {hw:>3} {cin:>4} {cout:>4} {stride:>1}"
                     f" {r['binary_s'] * 1e3:9.3f} {r['pack_s'] * 1e3:8.3f} {r['float_s'] * 1e3:9.3f} {torch_ms}"
                     f" {r['macs'] / r['binary_s'] / 1e9:10.1f} {vs_float:8.2f} {vs_torch}"
                     f" {'yes' if r['exact'] else 'NO':>5}")
    if speedups:
        lines.append(f"binary vs minibnn float conv2d: median {statistics.median(speedups):.2f}x, "
                     f"lowest {min(speedups):.2f}x")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    return bench_main(__file__, argv, args, measure, report, ["--batches", args.batches, "--sizes", args.sizes])


if __name__ == "__main__":
    sys.exit(main())
