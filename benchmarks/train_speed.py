"""Time one training epoch of minibnn's float and binary LeNet, and the same network in PyTorch.

Run from the repository root:

    python benchmarks/train_speed.py                       # full epoch, 3 repeats, both models
    python benchmarks/train_speed.py --images 2048 --repeats 2   # quick check (extrapolated)

Both frameworks train the zoo ``lenet`` (float: act/weight 32 bit; binary: 1 bit) with Adam
(lr 1e-3) on the same normalised MNIST batches (one minibnn DataLoader, shuffled with seed 0;
PyTorch wraps each batch zero-copy with ``torch.from_numpy``), batch size 128, float32, with
the same number of threads. minibnn is timed through ``minibnn.train.fit`` (what users run);
PyTorch through a loop doing the same per-step work (forward, loss, loss.item(), accuracy,
zero_grad, backward, Adam step, latent-weight clipping). The PyTorch network is built from
the minibnn model's own layers (types, shapes, strides, bits, clip) and starts from the same
weights, so the two cannot drift apart. The repeats are interleaved (repeat 1 of every
model/framework, then repeat 2, ...) so that load from other processes hits all of them alike;
the median over the repeats is reported. Without PyTorch only minibnn is timed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from machine import cpu_model, blas_name  # benchmarks/machine.py

EPOCH_IMAGES = 60000  # MNIST training set
TORCH_HINT = "pip install torch==2.13.0"
MODELS = {"float": (32, 32), "binary": (1, 1)}  # name -> (act_bit, weight_bit) of minibnn.models.lenet


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=EPOCH_IMAGES,
                   help=f"train on the first N MNIST images per repeat; below {EPOCH_IMAGES} the "
                        "seconds per epoch are extrapolated")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the N images (median reported)")
    p.add_argument("--warmup-batches", type=int, default=3, help="untimed steps per model and framework first")
    p.add_argument("--threads", type=int, default=_default_threads(),
                   help="OMP/OPENBLAS/MKL_NUM_THREADS (set before numpy and torch load) and torch.set_num_threads")
    p.add_argument("--models", default="float,binary", help="comma-separated: float, binary")
    p.add_argument("--backend", default=None, help="minibnn backend (numpy, native, cuda); default: minibnn's")
    p.add_argument("--no-torch", action="store_true", help="time minibnn only, even if PyTorch is installed")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad or not args.models:
        p.error(f"--models: unknown {bad or 'empty list'}; valid choices: {', '.join(MODELS)}")
    if not 1 <= args.images <= EPOCH_IMAGES:
        p.error(f"--images must be in 1..{EPOCH_IMAGES}, got {args.images}")
    if args.batch_size < 2:
        p.error("--batch-size must be at least 2 (batch norm needs two samples)")
    if args.images % args.batch_size == 1:
        p.error("--images leaves a last batch of one image, which batch norm cannot train on; "
                "change --images or --batch-size")
    for name in ("repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup_batches < 0:
        p.error("--warmup-batches must be >= 0")
    return args


# ---- the machine --------------------------------------------------------------------------





# ---- PyTorch mirror of a minibnn Sequential ------------------------------------------------

def build_torch_mirror(torch, model):
    """A torch.nn.Sequential with the same layers as the minibnn ``model``, same initial weights.

    Returns (torch model, [(parameter, clip)] for the latent weights clipped after each step).
    """
    import minibnn.nn as mnn
    from minibnn.nn import layers as L
    from minibnn.nn import quantized as Qz

    tnn, tF = torch.nn, torch.nn.functional

    def binarize(x):  # sign(0) = +1, as minibnn.quantize.binarize
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    class SteSign(torch.autograd.Function):
        """sign forward; gradient passed where |x| <= clip (everywhere when clip is None)."""

        @staticmethod
        def forward(ctx, x, clip):
            ctx.clip = clip
            if clip is not None:
                ctx.save_for_backward((x.abs() <= clip))
            return binarize(x)

        @staticmethod
        def backward(ctx, g):
            if ctx.clip is None:
                return g, None
            (mask,) = ctx.saved_tensors
            return g * mask, None

    class ApproxSign(torch.autograd.Function):
        """sign forward; Bi-Real's gradient max(2 - 2|x|, 0)."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return binarize(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.clamp(2 - 2 * x.abs(), min=0)

    def quantize_input(x, act_bit, clip=1.0, approx=False):  # minibnn.nn.quantized._quantize_input
        if act_bit == 32:
            return x
        if act_bit == 1:
            return ApproxSign.apply(x) if approx else SteSign.apply(x, clip)
        raise NotImplementedError(f"train_speed: no PyTorch mirror for {act_bit}-bit activations")

    def quantize_weight(w, bits):  # minibnn.quantize.quantize_weight
        if bits == 32:
            return w
        if bits == 1:
            return SteSign.apply(w, None)
        raise NotImplementedError(f"train_speed: no PyTorch mirror for {bits}-bit weights")

    class QActivation(tnn.Module):
        def __init__(self, act_bit, clip, approx):
            super().__init__()
            self.act_bit, self.clip, self.approx = act_bit, clip, approx

        def forward(self, x):
            return quantize_input(x, self.act_bit, self.clip, self.approx)

    class QLayer(tnn.Module):
        def __init__(self, src):
            super().__init__()
            self.act_bit, self.weight_bit, self.scaling = src.act_bit, src.weight_bit, src.scaling
            self.weight = tnn.Parameter(torch.empty(tuple(src.weight.shape)))
            self.bias = tnn.Parameter(torch.empty(tuple(src.bias.shape))) if src.bias is not None else None

        def epilogue(self, y):
            shape = (1, -1) + (1,) * (y.dim() - 2)
            if self.scaling == "channel":
                alpha = self.weight.detach().abs().mean(dim=tuple(range(1, self.weight.dim())))
                y = y * alpha.reshape(shape)
            if self.bias is not None:
                y = y + self.bias.reshape(shape)
            return y

    class QDense(QLayer):
        def forward(self, x):  # minibnn quantizes the layer input itself (again after QActivation)
            xq = quantize_input(x, self.act_bit)
            return self.epilogue(tF.linear(xq, quantize_weight(self.weight, self.weight_bit)))

    class QConv2d(QLayer):
        def __init__(self, src):
            super().__init__(src)
            self.stride, self.padding, self.pad_value = src.stride, tuple(src.padding), src.pad_value

        def forward(self, x):
            xq = quantize_input(x, self.act_bit)
            w = quantize_weight(self.weight, self.weight_bit)
            if self.pad_value == 0:
                y = tF.conv2d(xq, w, stride=self.stride, padding=self.padding)
            else:
                ph, pw = self.padding
                y = tF.conv2d(tF.pad(xq, (pw, pw, ph, ph), value=float(self.pad_value)), w, stride=self.stride)
            return self.epilogue(y)

    def convert(layer):
        kind = type(layer)
        if kind is L.Conv2d:
            out_c, in_per_group, kh, kw = layer.weight.shape
            return tnn.Conv2d(in_per_group * layer.groups, out_c, (kh, kw), layer.stride, layer.padding,
                              layer.dilation, layer.groups, bias=layer.bias is not None)
        if kind is L.Dense:
            return tnn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        if kind in (L.BatchNorm1d, L.BatchNorm2d):
            cls = tnn.BatchNorm1d if kind is L.BatchNorm1d else tnn.BatchNorm2d
            return cls(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.weight is not None)
        if kind is L.MaxPool2d:
            return tnn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
        if kind is L.Tanh:
            return tnn.Tanh()
        if kind is L.ReLU:
            return tnn.ReLU()
        if kind is L.Flatten:
            return tnn.Flatten()
        if kind is Qz.QActivation:
            return QActivation(layer.act_bit, layer.clip, layer.approx)
        if kind is Qz.QConv2d:
            return QConv2d(layer)
        if kind is Qz.QDense:
            return QDense(layer)
        raise NotImplementedError(f"train_speed: no PyTorch mirror for minibnn layer {kind.__name__}")

    if not isinstance(model, mnn.Sequential):
        raise NotImplementedError("train_speed: only Sequential minibnn models are mirrored")
    mirror = tnn.Sequential(*[convert(layer) for layer in model])
    # same initial weights and batch-norm statistics (same dotted names: "<index>.<name>")
    state = model.state_dict()
    target = mirror.state_dict()
    missing = sorted(set(state) - set(target))
    if missing:
        raise RuntimeError(f"train_speed: the PyTorch mirror lacks {missing}")
    mirror.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=False)
    params = dict(mirror.named_parameters())
    clipped = [(params[name], p.clip) for name, p in model.named_parameters() if p.clip is not None]
    return mirror, clipped


# ---- the timed epochs ---------------------------------------------------------------------

def minibnn_setup(act_bit, weight_bit, lr):
    import minibnn
    from minibnn import models, optim

    minibnn.manual_seed(0)
    model = models.lenet(act_bit, weight_bit)
    return model, optim.Adam(model.parameters(), lr=lr)


def minibnn_run(model, optimizer, loader) -> float:
    from minibnn import train

    start = time.perf_counter()
    train.fit(model, loader, optimizer, epochs=1, progress=False, verbose=False)
    return time.perf_counter() - start


def torch_run(torch, model, clipped, optimizer, loader) -> float:
    """One pass over ``loader`` doing what minibnn.train._train_epoch does per step."""
    tF = torch.nn.functional
    start = time.perf_counter()
    model.train()
    loader.set_epoch(0)  # the batches fit() trains on
    total_loss, correct, count = 0.0, 0, 0
    for x, y in loader:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        logits = model(xt)
        loss = tF.cross_entropy(logits, yt)
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"PyTorch loss became {value}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p, clip in clipped:
                p.clamp_(-clip, clip)
        total_loss += value * len(y)
        correct += int((logits.detach().argmax(dim=1) == yt).sum())
        count += len(y)
    return time.perf_counter() - start


def check_mirror(torch, np, model, mirror, x, y) -> dict:
    """Forward the same batch (train mode) through both; differences in logits and loss."""
    from minibnn import Tensor, backend
    from minibnn import functional as F

    mstate, tstate = model.state_dict(), {k: v.clone() for k, v in mirror.state_dict().items()}
    a = model(Tensor(x))
    la = float(F.cross_entropy(a, y).item())
    b = mirror(torch.from_numpy(x))
    lb = float(torch.nn.functional.cross_entropy(b, torch.from_numpy(y)).item())
    model.load_state_dict(mstate)  # undo the running-statistics update of these forwards
    mirror.load_state_dict(tstate)
    diff = np.abs(backend.to_numpy(a.data) - b.detach().numpy())
    return {"max_abs_logit_diff": float(diff.max()), "loss_minibnn": la, "loss_torch": lb}


def median(values):
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def main(argv=None) -> int:
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy / torch are imported

    import numpy as np

    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print(f"torch not installed: {TORCH_HINT} (timing minibnn only)")
    if torch is not None:
        torch.set_num_threads(args.threads)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the checkout
    import minibnn
    from minibnn import data

    if args.backend:
        minibnn.use(args.backend)
    lr = 1e-3

    images, labels = data.load_mnist("train")
    x = data.normalize(images[: args.images], data.MNIST_MEAN, data.MNIST_STD)
    y = np.array(labels[: args.images])  # a writable copy (load_mnist's arrays are read-only)
    loader = data.DataLoader(x, y, args.batch_size, shuffle=True, seed=0)
    warm_n = min(args.images, args.warmup_batches * args.batch_size)
    if warm_n % args.batch_size == 1:
        warm_n -= 1
    warm_loader = data.DataLoader(x[:warm_n], y[:warm_n], args.batch_size, shuffle=True, seed=0)

    frameworks = ["minibnn"] + (["pytorch"] if torch is not None else [])
    runs = {(m, f): [] for m in args.models for f in frameworks}
    checks = {}

    def fresh(model_name, framework):
        act_bit, weight_bit = MODELS[model_name]
        model, opt = minibnn_setup(act_bit, weight_bit, lr)
        if framework == "minibnn":
            return lambda ld: minibnn_run(model, opt, ld)
        mirror, clipped = build_torch_mirror(torch, model)
        topt = torch.optim.Adam(mirror.parameters(), lr=lr)
        return lambda ld: torch_run(torch, mirror, clipped, topt, ld)

    if torch is not None:  # the mirror computes what minibnn computes (same initial weights, same batch)
        xb, yb = next(iter(data.DataLoader(x, y, args.batch_size)))
        for m in args.models:
            model, _ = minibnn_setup(*MODELS[m], lr)
            mirror, _ = build_torch_mirror(torch, model)
            checks[m] = check_mirror(torch, np, model, mirror, xb, yb)

    if warm_n:
        for key in runs:
            fresh(*key)(warm_loader)
    for _ in range(args.repeats):  # interleaved, so that outside load hits every entry alike
        for key in runs:
            run = fresh(*key)
            runs[key].append(run(loader))

    extrapolated = args.images < EPOCH_IMAGES
    scale = EPOCH_IMAGES / args.images
    rows = []
    for (m, f), secs in runs.items():
        med = median(secs)
        rows.append({"model": m, "framework": f, "seconds_measured": secs, "images": args.images,
                     "seconds_per_epoch": med * scale, "images_per_s": args.images / med,
                     "extrapolated": extrapolated})
    for row in rows:
        ref = next((r for r in rows if r["model"] == row["model"] and r["framework"] == "pytorch"), None)
        row["ratio_vs_pytorch"] = row["seconds_per_epoch"] / ref["seconds_per_epoch"] if ref else None

    command = "python " + " ".join(shlex.quote(a) for a in ([sys.argv[0]] + sys.argv[1:] if argv is None
                                                          else ["benchmarks/train_speed.py", *argv]))
    machine = {
        "cpu": cpu_model(), "nproc": os.cpu_count(), "cpus_usable": _default_threads(),
        "threads": args.threads, "python": platform.python_version(),
        "numpy": np.__version__, "blas": blas_name(np),
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "minibnn": minibnn.__version__, "minibnn_backend": minibnn.backend.current(),
    }

    label = f"s/epoch{' (extrap.)' if extrapolated else ''}"
    print(f"\nLeNet training, one epoch = {EPOCH_IMAGES} MNIST images, batch {args.batch_size}, Adam lr {lr}, "
          f"median of {args.repeats} (each over {args.images} images"
          f"{f', scaled x{scale:.2f}' if extrapolated else ''})")
    print(f"{'model':<8} {'framework':<10} {label:>18} {'images/s':>10} {'minibnn/PyTorch':>16}")
    for r in rows:
        ratio = f"{r['ratio_vs_pytorch']:.2f}x" if r["ratio_vs_pytorch"] is not None and r["framework"] == "minibnn" else ""
        print(f"{r['model']:<8} {r['framework']:<10} {r['seconds_per_epoch']:>18.2f} "
              f"{r['images_per_s']:>10.0f} {ratio:>16}")
    if torch is None:
        print(f"(no PyTorch rows: {'--no-torch' if args.no_torch else 'torch not installed: ' + TORCH_HINT})")
    for m, c in checks.items():
        note = ""
        if m == "binary":
            note = " (float rounding flips the sign of a few values at ~0, so the logits differ a little)"
        elif c["max_abs_logit_diff"] > 1e-3:
            note = "  WARNING: the PyTorch network does not compute what minibnn's does"
        print(f"mirror check {m}: max |logit diff| {c['max_abs_logit_diff']:.2e}, "
              f"loss minibnn {c['loss_minibnn']:.5f} vs PyTorch {c['loss_torch']:.5f}{note}")
    print(f"machine: {machine['cpu']}, nproc {machine['nproc']} ({machine['cpus_usable']} usable), "
          f"threads {args.threads}; Python {machine['python']}, numpy {machine['numpy']} ({machine['blas']}), "
          f"torch {machine['torch'] or 'not installed'}"
          f"{' (%s threads)' % machine['torch_threads'] if torch is not None else ''}, "
          f"minibnn {machine['minibnn']} backend {machine['minibnn_backend']}")
    print(f"command: {command}")

    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "machine": machine, "args": {
            k: v for k, v in vars(args).items()}, "mirror_check": checks, "results": rows}, indent=1) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
