"""Images/s of packed models against the float simulation, a float32 model and PyTorch float32.

Run from the repository root on an otherwise idle machine:

    python benchmarks/deploy.py                 # LeNet and ResNet-18, batch 1 and 64, 1 and 2 threads
    python benchmarks/deploy.py --quick         # smoke run (seconds): batch 1, 2 runs
    python benchmarks/deploy.py --models resnet18 --threads 1 --repeats 9 --json deploy.json
    python benchmarks/deploy.py --models resnet18 --bits 1:1,2:1,2:2,4:4 --batches 64   # k-bit, issue 13

Models (random weights, batch-norm statistics moved off their defaults):
- lenet: minibnn.models.lenet() (binary conv2 and dense), input 1x28x28;
- resnet18: minibnn.models.resnet18() (binary body with binary downsampling shortcuts, float
  stem and head), CIFAR input 3x32x32.
Each is timed four ways, one call = one batch, float32 NCHW numpy in -> logits out:
- packed: minibnn.deploy.convert(model) on the native backend (1-bit weights, folded batch norms;
  with --bits a:w other than 1:1, k-bit layers on bit planes and the bit-serial arithmetic);
- simulation: the binary model itself, model.eval() with autograd off (its binary layers also run
  on the native xnor kernels, but through float tensors and unfolded batch norms);
- float32: the same architecture with act_bit = weight_bit = 32 in minibnn;
- torch: that float32 model mirrored layer by layer in PyTorch (when installed; eval, no_grad).
One process per thread count (OPENBLAS/OMP/MKL/MINIBNN_NUM_THREADS set before NumPy loads,
torch.set_num_threads too). The packed logits are checked equal to the simulation's and the
torch mirror close to the float32 model before timing. Runs are interleaved, each after an
untimed call of the same method (machine.timed); the median is reported.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

from machine import bench_main, bench_parser, timed  # benchmarks/machine.py

SHAPES = {"lenet": (1, 28, 28), "resnet18": (3, 32, 32)}


def parse_args(argv=None) -> argparse.Namespace:
    p = bench_parser(__doc__, 5, "smoke run: batch 1, 2 repeats")
    p.add_argument("--models", default="lenet,resnet18", help="comma-separated: lenet, resnet18")
    p.add_argument("--batches", default="1,64", help="comma-separated batch sizes (default 1,64)")
    p.add_argument("--bits", default="1:1", help="comma-separated act_bit:weight_bit pairs of the packed model "
                   "(default 1:1, binary; e.g. 1:1,2:1,2:2,4:4 for the bit-serial k-bit layers)")
    args = p.parse_args(argv)
    try:
        args.bit_pairs = [tuple(int(v) for v in pair.split(":")) for pair in args.bits.split(",")]
        assert all(len(pair) == 2 for pair in args.bit_pairs)
    except (ValueError, AssertionError):
        p.error(f"--bits must be act_bit:weight_bit pairs such as 1:1,2:1, got {args.bits!r}")
    if args.quick:
        args.repeats, args.batches = 2, "1"
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    for name in args.models.split(","):
        if name not in SHAPES:
            p.error(f"unknown model {name!r}; valid choices: {', '.join(SHAPES)}")
    return args


def build(name: str, act_bit: int, weight_bit: int | None = None):
    from minibnn import models

    weight_bit = act_bit if weight_bit is None else weight_bit
    if name == "lenet":
        return models.lenet(act_bit, weight_bit)
    return models.resnet18(act_bit=act_bit, weight_bit=weight_bit)


def randomize_stats(model, rng) -> None:
    from minibnn import nn

    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean[...] = rng.normal(0, 2, m.num_features)
            m.running_var[...] = rng.uniform(0.5, 20, m.num_features)


def to_torch(torch, m):
    """A PyTorch float32 module computing what the float minibnn module ``m`` computes (eval mode)."""
    from minibnn import nn
    from minibnn.nn.models import BasicBlock, ResNet

    tnn = torch.nn

    def copy(dst, src):
        with torch.no_grad():
            dst.weight.copy_(torch.from_numpy(src.weight.numpy()))
            if getattr(src, "bias", None) is not None:
                dst.bias.copy_(torch.from_numpy(src.bias.numpy()))
        return dst

    if isinstance(m, nn.Sequential):
        return tnn.Sequential(*[to_torch(torch, c) for c in m])
    if isinstance(m, (nn.Conv2d, nn.QConv2d)):
        w = m.weight.data
        padding = m.padding if isinstance(m.padding, (int, tuple)) else tuple(m.padding)
        return copy(tnn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], m.stride, padding, bias=m.bias is not None), m)
    if isinstance(m, (nn.Dense, nn.QDense)):
        w = m.weight.data
        return copy(tnn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None), m)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        bn = (tnn.BatchNorm1d if isinstance(m, nn.BatchNorm1d) else tnn.BatchNorm2d)(m.num_features, eps=m.eps)
        copy(bn, m)
        bn.running_mean.copy_(torch.from_numpy(m.running_mean))
        bn.running_var.copy_(torch.from_numpy(m.running_var))
        return bn
    simple = {nn.MaxPool2d: lambda: tnn.MaxPool2d(m.kernel_size, m.stride, m.padding), nn.Tanh: tnn.Tanh,
              nn.ReLU: tnn.ReLU, nn.Flatten: tnn.Flatten, nn.Identity: tnn.Identity,
              nn.GlobalAvgPool2d: lambda: tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten())}
    if type(m) in simple:
        return simple[type(m)]()
    if isinstance(m, BasicBlock):
        return TorchBlock(torch, {name: to_torch(torch, c) for name, c in m._modules.items()})
    if isinstance(m, ResNet):
        return tnn.Sequential(to_torch(torch, m.stem), to_torch(torch, m.body), to_torch(torch, m.head))
    raise TypeError(f"no PyTorch mirror for {type(m).__name__}")


def TorchBlock(torch, parts):  # noqa: N802 - a class factory (torch is imported in the child only)
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, part in parts.items():
                setattr(self, name, part)

        def forward(self, x):
            y = self.bn1(self.conv1(x)) + self.shortcut(x)
            return self.bn2(self.conv2(y)) + y

    return Block()


def measure(args) -> dict:
    """Run in the child process (thread variables already set)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np

    import minibnn
    from minibnn import backend, deploy

    threads = int(args.threads)
    minibnn.use("native")  # BackendUnavailable says how to build it
    backend.kernels().set_num_threads(threads)
    torch = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            torch = None
    rng = np.random.default_rng(0)
    rows = []
    for name, (act_bit, weight_bit) in ((n, bits) for n in args.models.split(",") for bits in args.bit_pairs):
        minibnn.manual_seed(0)
        binary, float32 = build(name, act_bit, weight_bit), build(name, 32)
        for m in (binary, float32):
            randomize_stats(m, rng)
            m.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            packed = deploy.convert(binary, SHAPES[name], name=name)
        mirror = to_torch(torch, float32).eval() if torch is not None else None
        for batch in [int(b) for b in args.batches.split(",")]:
            x = rng.standard_normal((batch, *SHAPES[name]), dtype=np.float32)

            def run(model):
                with minibnn.no_grad():
                    return model(minibnn.Tensor(x)).data

            methods = {"packed": lambda: packed.predict(x), "simulation": lambda: run(binary),
                       "float32": lambda: run(float32)}
            checks = {"packed_exact": bool(np.array_equal(packed.predict(x), run(binary)))}  # k-bit too
            if mirror is not None:
                tx = torch.from_numpy(x)

                def torch_run():
                    with torch.no_grad():
                        return mirror(tx)

                methods["torch"] = torch_run
                checks["torch_close"] = bool(np.allclose(torch_run().numpy(), run(float32), rtol=1e-3, atol=1e-3))
            for fn in methods.values():  # warm-up
                fn()
            times = {k: [] for k in methods}
            for _ in range(args.repeats):
                for k, fn in methods.items():
                    times[k].append(timed(fn))
            row = {"model": name, "bits": f"{act_bit}:{weight_bit}", "batch": batch, **checks}
            row.update({f"{k}_ips": batch / statistics.median(ts) for k, ts in times.items()})
            rows.append(row)
    info = {"threads": threads, "numpy": np.__version__, "simd": backend.kernels().simd(),
            "torch": getattr(torch, "__version__", None)}
    return {"info": info, "rows": rows}


def report(result: dict) -> list[str]:
    info = result["info"]
    lines = [f"threads={info['threads']}  native simd={info['simd']}  torch={info['torch'] or 'not installed'}",
             f"{'model':<9} {'a:w':>4} {'batch':>5} {'packed':>9} {'simulation':>10} {'float32':>9} {'torch':>9}"
             f" {'vs sim':>7} {'vs f32':>7} {'vs torch':>8} {'exact':>5}",
             f"{'':<9} {'bits':>4} {'':>5} {'img/s':>9} {'img/s':>10} {'img/s':>9} {'img/s':>9}"]
    for r in result["rows"]:
        torch_ips = f"{r['torch_ips']:9.1f}" if "torch_ips" in r else f"{'-':>9}"
        vs_torch = f"{r['packed_ips'] / r['torch_ips']:8.2f}" if "torch_ips" in r else f"{'-':>8}"
        lines.append(f"{r['model']:<9} {r.get('bits', '1:1'):>4} {r['batch']:>5} {r['packed_ips']:9.1f} "
                     f"{r['simulation_ips']:10.1f}"
                     f" {r['float32_ips']:9.1f} {torch_ips} {r['packed_ips'] / r['simulation_ips']:7.2f}"
                     f" {r['packed_ips'] / r['float32_ips']:7.2f} {vs_torch}"
                     f" {'yes' if r['packed_exact'] else 'NO':>5}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    return bench_main(__file__, argv, args, measure, report,
                      ["--batches", args.batches, "--models", args.models, "--bits", args.bits])


if __name__ == "__main__":
    sys.exit(main())
