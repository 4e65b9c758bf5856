"""Test accuracy against bit widths: LeNet on MNIST and ResNet-18 on Fashion-MNIST, one table.

    python benchmarks/bits_accuracy.py                       # both models, the five bit pairs
    python benchmarks/bits_accuracy.py --models lenet --lenet-epochs 2 --json acc.json

For each (act_bit, weight_bit) in 1:1, 2:1, 2:2, 4:4, 32:32 the model is trained with the
`minibnn train` command (Adam lr 2e-3, cosine, batch 128, seed 0), converted with `minibnn convert`
(bit planes for the k-bit layers), and the packed model is evaluated on the full test set; the
table shows the trained model's and the packed model's test accuracy (they must be equal: the
packed layers compute the simulation's values exactly), the packed file size and the training time.
ResNet-18 trains on the first --resnet-limit Fashion-MNIST images for one pass (the short protocol
of BENCHMARKS.md section 3); LeNet on all of MNIST for --lenet-epochs epochs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [(1, 1), (2, 1), (2, 2), (4, 4), (32, 32)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="lenet,resnet18")
    p.add_argument("--pairs", default=",".join(f"{a}:{b}" for a, b in PAIRS))
    p.add_argument("--lenet-epochs", type=int, default=2)
    p.add_argument("--resnet-limit", type=int, default=10000)
    p.add_argument("--fashion-root", default=str(ROOT / ".." / "shared" / "data" / "fashion-mnist"))
    p.add_argument("--json", help="also write the rows to this JSON file")
    return p.parse_args(argv)


def run(model: str, act_bit: int, weight_bit: int, args, out: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from minibnn import deploy
    from minibnn.cli import load_dataset, main

    dataset = ["--dataset", "mnist", "--epochs", str(args.lenet_epochs)] if model == "lenet" else \
        ["--dataset", "fashion-mnist", "--data-root", args.fashion_root, "--epochs", "1", "--limit",
         str(args.resnet_limit)]
    start = time.perf_counter()
    if main(["train", "--model", model, *dataset, "--act-bit", str(act_bit), "--weight-bit", str(weight_bit),
             "--out", str(out), "--quiet"]) != 0:
        raise RuntimeError(f"training {model} {act_bit}:{weight_bit} failed")
    seconds = time.perf_counter() - start
    trained = json.loads((out / "history.json").read_text())["test"]["accuracy"]
    if main(["convert", str(out / "model.json")]) != 0:
        raise RuntimeError(f"converting {model} {act_bit}:{weight_bit} failed")
    x, y = load_dataset(dataset[1], "test", args.fashion_root if model == "resnet18" else None)
    packed = deploy.load(out / "binarized_model")
    packed_acc = float((packed.predict(x, batch_size=500).argmax(1) == y).mean())
    return {"model": model, "bits": f"{act_bit}:{weight_bit}", "test_accuracy": trained,
            "packed_accuracy": packed_acc, "packed_bytes": (out / "binarized_model.npz").stat().st_size,
            "float_bytes": (out / "model.npz").stat().st_size, "train_seconds": seconds}


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for pair in args.pairs.split(","):
                a, b = (int(v) for v in pair.split(":"))
                rows.append(run(model, a, b, args, Path(tmp) / f"{model}-{a}-{b}"))
                r = rows[-1]
                print(f"{r['model']:<9} {r['bits']:>6}  test {100 * r['test_accuracy']:6.2f}%  packed "
                      f"{100 * r['packed_accuracy']:6.2f}%  {r['packed_bytes'] / 1e6:7.3f} MB "
                      f"({r['float_bytes'] / r['packed_bytes']:5.1f}x)  {r['train_seconds']:6.0f} s", flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["test_accuracy"] == r["packed_accuracy"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
