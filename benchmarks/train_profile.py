"""Where a training step's time goes, on any backend: host-bound or device-bound, and which calls.

    python benchmarks/train_profile.py --backend cuda --model lenet --batch 128 --steps 40

Prints, per step (median of --repeats rounds of --steps steps, after warm-up):
- ``train_step``: what fit() does per batch (forward, backward, one host sync, optimizer step);
- ``enqueue``: the same work without the per-step sync (the statistics are read once at the end):
  the host's time to issue the step; on the GPU, ``enqueue`` close to ``train_step`` means the
  step is bound by the host (Python and launch overhead), not by the device;
- ``data``: one DataLoader batch (host indexing) and its copy to the backend;
then the functions with the most own time (cProfile) over --steps train_step calls.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import numpy as np

import minibnn
from minibnn import backend, data, models, optim, train
from minibnn.autograd import Tensor

SHAPES = {"lenet": (1, 28, 28), "resnet18": (3, 32, 32)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cuda")
    p.add_argument("--model", default="lenet", choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top", type=int, default=25, help="cProfile rows to print")
    return p.parse_args(argv)


def build(name: str):
    minibnn.manual_seed(0)
    return models.lenet() if name == "lenet" else models.resnet18()


def sync() -> None:
    backend.to_numpy(backend.xp().zeros(1))  # waits for the device (nothing to wait for on the CPU)


def per_step(fn, steps: int, repeats: int) -> float:
    """Median over rounds of the milliseconds per call of fn, synchronised at the end of each round."""
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        times.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    minibnn.use(args.backend)
    model = build(args.model)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, *SHAPES[args.model])).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    loader = data.DataLoader(np.repeat(x, 4, axis=0), np.repeat(y, 4), args.batch, shuffle=True, seed=0)

    def full():
        train.train_step(model, opt, x, y)

    def enqueue():
        train.forward_backward(model, x, y)
        opt.step()

    def load():
        for xb, _ in loader:
            Tensor(xb)
            break

    for _ in range(5):
        full()
    rows = [("train_step (one sync per step)", per_step(full, args.steps, args.repeats)),
            ("enqueue (no sync per step)", per_step(enqueue, args.steps, args.repeats)),
            ("data: one batch + copy", per_step(load, args.steps, args.repeats))]
    print(f"{args.model}, batch {args.batch}, backend {args.backend}: ms per step, median of {args.repeats} "
          f"rounds of {args.steps}")
    for what, ms in rows:
        print(f"  {what:34s} {ms:8.2f} ms  ({args.batch / ms * 1e3:,.0f} img/s)")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.steps):
        full()
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
