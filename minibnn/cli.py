"""The ``minibnn`` command: train, eval, convert, summary, demo."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

DATASETS = ("mnist", "fashion-mnist", "cifar10", "imagefolder")
DEFAULT_MODELS = {"mnist": "lenet", "fashion-mnist": "lenet", "cifar10": "resnet18", "imagefolder": "resnet18_imagenet"}
SCHEDULES = ("constant", "step", "cosine", "warmup-cosine")
OPTIMIZERS = ("sgd", "adam", "adamw", "bop")
DEFAULT_FASHION_ROOT = Path("..") / "shared" / "data" / "fashion-mnist"
DATASET_HELP = "mnist, fashion-mnist, cifar10 (the binary version) or imagefolder (DIR/train/<class>/, DIR/val/<class>/)"
DATA_ROOT_HELP = (f"dataset folder: Fashion-MNIST's IDX files (default {DEFAULT_FASHION_ROOT}), CIFAR-10's "
                  "data_batch_*.bin / test_batch.bin, or an image folder with train/ and val/")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _choice(value: str, choices, what: str) -> str:
    if value not in choices:
        raise CLIError(f"unknown {what} {value!r}; valid choices: {', '.join(sorted(choices))}")
    return value


def load_dataset(name: str, split: str, root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Normalised images and labels of a named dataset split (all but imagefolder, which is read lazily)."""
    from minibnn import data

    _choice(name, DATASETS, "dataset")
    if name == "mnist":
        return data.load_mnist(split, normalize=True)
    if name == "imagefolder":
        raise CLIError("the imagefolder dataset is decoded batch by batch: use _image_loader, not load_dataset")
    if name == "cifar10":
        if not root:
            raise CLIError("--dataset cifar10 needs --data-root DIR: the extracted CIFAR-10 binary version "
                           "(data_batch_1.bin .. data_batch_5.bin and test_batch.bin, in DIR or DIR/cifar-10-batches-bin)")
        return data.load_cifar10(root, split, normalize=True)
    root = root or os.environ.get("MINIBNN_FASHION_MNIST", str(DEFAULT_FASHION_ROOT))
    if not Path(root).is_dir():
        raise CLIError(f"Fashion-MNIST folder {root!r} not found; pass --data-root DIR "
                       "(the folder with the four IDX .gz files)")
    return data.load_fashion_mnist(root, split, normalize=True)


def build_model(name: str, act_bit: int, weight_bit: int, in_channels: int = 1, num_classes: int = 10,
                image_size: int = 28):
    """A zoo model configured for in_channels x image_size x image_size images (28x28 MNIST by default)."""
    from minibnn import models

    _choice(name, models.MODELS, "model")
    if name == "lenet":
        if image_size != 28:
            raise CLIError(f"lenet takes 28x28 images, this dataset has {image_size}x{image_size}; "
                           "choose --model resnet18, vgg_small or binary_mlp")
        return models.lenet(act_bit, weight_bit, in_channels=in_channels, num_classes=num_classes)
    if name == "binary_mlp":
        return models.binary_mlp(image_size * image_size * in_channels, num_classes=num_classes, act_bit=act_bit,
                                 weight_bit=weight_bit)
    if name == "vgg_small":
        return models.vgg_small(num_classes, in_channels, act_bit, weight_bit, image_size=image_size)
    return models.MODELS[name](num_classes, in_channels, act_bit, weight_bit)  # resnet18, resnet18_imagenet


def _image_folders(args: argparse.Namespace, splits=("train", "val")) -> list:
    """The ImageFolder of each split under --data-root (the same classes in each)."""
    from minibnn import data

    if not args.data_root:
        raise CLIError("--dataset imagefolder needs --data-root DIR: a folder with train/<class>/<image> and "
                       "val/<class>/<image> (e.g. ImageNet)")
    try:
        data.imagefolder.require_pillow()
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    folders = [data.ImageFolder(data.image_split(args.data_root, split)) for split in splits]
    for other in folders[1:]:
        if other.classes != folders[0].classes:
            extra = sorted(set(other.classes) ^ set(folders[0].classes))[:5]
            raise CLIError(f"{other.root} and {folders[0].root} hold different classes ({len(other.classes)} and "
                           f"{len(folders[0].classes)}; e.g. {', '.join(extra) or 'in another order'}): labels would not match")
    return folders


def _image_loader(args: argparse.Namespace, folder, train: bool, shuffle: bool = False):
    from minibnn import data

    return data.ImageFolderLoader(folder, args.batch_size, train=train, shuffle=shuffle, seed=getattr(args, "seed", 0),
                                  image_size=args.image_size or 224, skip_bad=args.skip_bad_images)


def _training_data(args: argparse.Namespace):
    """(train loader, test loader, one image's shape, number of classes) of --dataset."""
    from minibnn import data

    if args.dataset == "imagefolder":
        train_set, val_set = _image_folders(args)
        if args.limit:
            keep = np.random.default_rng(args.seed).permutation(len(train_set))[: args.limit]
            train_set = train_set.subset(np.sort(keep))
        size = args.image_size or 224
        return (_image_loader(args, train_set, train=args.augment, shuffle=True), _image_loader(args, val_set, False),
                (3, size, size), len(train_set.classes))
    x_train, y_train = load_dataset(args.dataset, "train", args.data_root)
    x_test, y_test = load_dataset(args.dataset, "test", args.data_root)
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    transform = None
    if args.augment:
        transform = data.cifar10_augmentation() if args.dataset == "cifar10" else data.RandomCrop(28, padding=2)
    loader = data.DataLoader(x_train, y_train, args.batch_size, shuffle=True, seed=args.seed,
                             transform=transform)
    return loader, data.DataLoader(x_test, y_test, 500), x_train.shape[1:], 10


def cmd_train(args: argparse.Namespace) -> int:
    """Train a zoo model on a dataset; save checkpoints and the final model under --out."""
    import minibnn
    from minibnn import optim, train

    _choice(args.dataset, DATASETS, "dataset")
    args.model = args.model or DEFAULT_MODELS[args.dataset]
    _choice(args.model, _model_names(), "model")
    _choice(args.optimizer, OPTIMIZERS, "optimizer")
    _choice(args.schedule, SCHEDULES, "schedule")
    _check_plot(args)
    minibnn.manual_seed(args.seed)
    loader, test_loader, shape, num_classes = _training_data(args)
    model = build_model(args.model, args.act_bit, args.weight_bit, in_channels=shape[0], num_classes=num_classes,
                        image_size=shape[-1])
    optimizer = optim.make_optimizer(args.optimizer, model, args.lr)
    schedule = optim.make_schedule(args.schedule, optimizer, total_steps=args.epochs * len(loader))
    out = Path(args.out or f"runs/{args.model}-{args.dataset}-a{args.act_bit}w{args.weight_bit}")
    try:
        history = train.fit(model, loader, optimizer, args.epochs, val_loader=test_loader, schedule=schedule,
                            checkpoint_dir=out, resume=args.resume, progress=not args.quiet,
                            verbose=True)
        minibnn.save(model, out / "model")
        result = train.evaluate(model, test_loader)
        record = {"command": sys.argv, "history": history.epochs, "test": result}
        minibnn.io.atomic_write_bytes(out / "history.json", json.dumps(record, indent=1).encode())
        if args.plot and history.epochs:
            from minibnn import plots

            print(f"training curves: {plots.training_curves(history.epochs, out / 'training_curves.png', args.model)}")
    except KeyboardInterrupt:
        print(f"minibnn train: interrupted; {_last_checkpoint(out, args.epochs)}", file=sys.stderr)
        argv = [*getattr(args, "argv", sys.argv[1:])]
        argv += [] if "--resume" in argv else ["--resume"]
        argv += [] if args.out else ["--out", str(out)]
        print(f"continue with: minibnn {shlex.join(argv)}", file=sys.stderr)
        return 130
    seconds = [r["seconds"] for r in history.epochs]
    print(f"test accuracy {result['accuracy']:.4f} (loss {result['loss']:.4f}) after {len(history)} epochs, "
          f"median {np.median(seconds) if seconds else 0:.1f} s/epoch; model saved to {out / 'model'}.json/.npz")
    return 0


def _last_checkpoint(out: Path, epochs: int) -> str:
    """Where the last checkpoint in ``out`` is and which epoch it holds, for the Ctrl-C message."""
    from minibnn.train import CHECKPOINT

    path = out / f"{CHECKPOINT}.json"
    try:
        epoch = json.loads(path.read_text())["epoch"] + 1
    except FileNotFoundError:
        return f"no checkpoint was written yet (one is written to {path} after each epoch)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"the last checkpoint is {path}"
    return f"the last checkpoint is {path} (after epoch {epoch} of {epochs})"


def _is_packed(path: str) -> bool:
    """Whether the .json of ``path`` names the packed format (a converted model)."""
    from minibnn import deploy
    from minibnn.io import split_path

    json_path = split_path(path)[0]
    try:
        return json.loads(json_path.read_text()).get("format") == deploy.fileformat.FORMAT
    except (OSError, ValueError, AttributeError):
        return False  # the float loader reports what is wrong with the file


def _load_any(path: str):
    """A float model (minibnn.load) or a packed one (minibnn.deploy.load), by the file's format."""
    import minibnn

    return minibnn.deploy.load(path) if _is_packed(path) else minibnn.load(path)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a saved float or packed model on a dataset's test split: accuracy and images/s."""
    import minibnn
    from minibnn import data, train

    _check_plot(args)
    model = _load_any(args.model_path)
    if args.dataset == "imagefolder":
        return _evaluate_images(args, model)
    x_test, y_test = load_dataset(args.dataset, "test", args.data_root)
    if isinstance(model, minibnn.deploy.PackedModel):
        start = time.perf_counter()
        logits = minibnn.backend.to_numpy(model.predict(x_test, batch_size=args.batch_size))
        seconds = time.perf_counter() - start
        result = {"accuracy": float(np.mean(np.argmax(logits, axis=1) == y_test)), "images_per_s": len(y_test) / seconds}
        print(f"{args.model_path}: packed model, test accuracy {result['accuracy']:.4f}  "
              f"{result['images_per_s']:.0f} images/s on backend {minibnn.backend.current()}")
        _plot_confusion(args, y_test, np.argmax(logits, axis=1))
        return 0
    result = train.evaluate(model, data.DataLoader(x_test, y_test, args.batch_size))
    print(f"{args.model_path}: test accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
          f"{result['images_per_s']:.0f} images/s on backend {minibnn.backend.current()}")
    if args.plot:
        _plot_confusion(args, y_test, train.predict(model, x_test, args.batch_size))
    return 0


def _evaluate_images(args: argparse.Namespace, model) -> int:
    """cmd_evaluate on the val/ split of an image folder, decoded batch by batch."""
    import minibnn
    from minibnn import train

    packed = isinstance(model, minibnn.deploy.PackedModel)
    if args.image_size is None and packed and getattr(model, "input_shape", None):
        args.image_size = int(model.input_shape[-1])
    (folder,) = _image_folders(args, ("val",))
    loader = _image_loader(args, folder, train=False)
    if packed or args.plot:
        start = time.perf_counter()
        labels, predictions = _predict_batches(model, loader)
        speed = len(labels) / (time.perf_counter() - start)
    if packed:
        print(f"{args.model_path}: packed model, test accuracy {float(np.mean(predictions == labels)):.4f}  "
              f"{speed:.0f} images/s on backend {minibnn.backend.current()}")
    else:
        result = train.evaluate(model, loader)
        print(f"{args.model_path}: test accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
              f"{result['images_per_s']:.0f} images/s on backend {minibnn.backend.current()}")
    if args.plot:
        _plot_confusion(args, labels, predictions)
    return 0


def _predict_batches(model, loader) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted classes) of a float or packed model over every batch of ``loader``."""
    import minibnn

    labels, predictions = [], []
    packed = isinstance(model, minibnn.deploy.PackedModel)
    was_training = getattr(model, "training", False)
    if not packed:
        model.eval()  # safe: the PyTorch-style mode switch, not Python's eval
    try:
        with minibnn.no_grad():
            for x, y in loader:
                logits = model.predict(x) if packed else model(minibnn.Tensor(x)).data
                predictions.append(np.argmax(minibnn.backend.to_numpy(logits), axis=1))
                labels.append(y)
    finally:
        if not packed:
            model.train(was_training)
    return np.concatenate(labels), np.concatenate(predictions)


def _check_plot(args: argparse.Namespace) -> None:
    """With --plot, fail early (before training) when matplotlib is missing."""
    if getattr(args, "plot", False):
        from minibnn import plots

        try:
            plots._pyplot()
        except ImportError as exc:
            raise CLIError(str(exc)) from None


def _plot_confusion(args: argparse.Namespace, labels, predictions) -> None:
    if args.plot:
        from minibnn import plots
        from minibnn.io import split_path

        path = split_path(args.model_path)[0].with_name(split_path(args.model_path)[0].stem + "_confusion.png")
        print(f"confusion matrix: {plots.confusion_matrix(labels, predictions, path)}")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise CLIError(f"--input-shape must be comma-separated integers such as 1,28,28, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise CLIError(f"--input-shape must be positive integers such as 1,28,28, got {text!r}")
    return shape


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert a saved float model into binarized_<name>.json/.npz (1 bit per binary weight)."""
    import minibnn
    from minibnn.io import split_path

    json_path = split_path(args.model_path)[0]
    model = minibnn.load(args.model_path)
    name = json_path.stem
    out_dir = Path(args.out) if args.out else json_path.parent
    packed = minibnn.deploy.convert(model, _shape(args.input_shape), name=name)
    written = packed.save(out_dir / f"binarized_{name}")
    float_bytes = sum(p.stat().st_size for p in split_path(args.model_path))
    packed_bytes = sum(packed.files.values())
    print(f"wrote {written} and {written.with_suffix('.npz').name}: {packed_bytes / 1e6:.3f} MB on disk, "
          f"{float_bytes / max(1, packed_bytes):.1f}x smaller than {json_path.name} + .npz ({float_bytes / 1e6:.3f} MB)")
    return 0


def cmd_export_c(args: argparse.Namespace) -> int:
    """Export a packed model as a C program: <name>.c/.h, the kernel sources and main.c in --out."""
    from minibnn import deploy

    packed = deploy.load(args.model_path)
    report = deploy.export_c(packed, args.out, name=args.name,
                             input_shape=_shape(args.input_shape) if args.input_shape else None,
                             normalize=_normalization(args.normalize))
    print(report)
    print(f"build: cc -O2 -std=c11 {args.out}/*.c -o {report.files[0].stem} -lm")
    return 0


def _normalization(text: str) -> tuple[float, float]:
    """--normalize: a dataset's name or MEAN,STD -> (mean, std) for the exported main.c's image reader."""
    from minibnn import data

    named = {"mnist": (data.MNIST_MEAN, data.MNIST_STD), "fashion-mnist": (data.FASHION_MNIST_MEAN, data.FASHION_MNIST_STD),
             "none": (0.0, 1.0)}
    if text in named:
        return named[text]
    try:
        mean, std = (float(v) for v in text.split(","))
    except ValueError:
        raise CLIError(f"--normalize must be one of {', '.join(named)} or MEAN,STD, got {text!r}") from None
    return mean, std


def cmd_summary(args: argparse.Namespace) -> int:
    """Print the per-layer summary of a saved float or packed model."""
    import minibnn

    model = _load_any(args.model_path)
    shape = args.input_shape or ",".join(map(str, getattr(model, "input_shape", None) or (1, 28, 28)))
    minibnn.summary(model, _shape(shape))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a binarized LeNet on the shipped MNIST within a time budget and report test accuracy."""
    import minibnn
    from minibnn import data, models, optim, train

    minibnn.manual_seed(args.seed)
    x_train, y_train = load_dataset("mnist", "train")
    x_test, y_test = load_dataset("mnist", "test")
    loader = data.DataLoader(x_train, y_train, args.batch_size, shuffle=True, seed=args.seed)
    model = models.lenet(act_bit=1, weight_bit=1)
    print(f"minibnn demo: binarized LeNet (binary conv2 + dense, float first/last layer) on MNIST, "
          f"{args.seconds:.0f} s training budget, backend {minibnn.backend.current()}")
    step_seconds = _time_one_step(model, x_train[: args.batch_size], y_train[: args.batch_size])
    budget_steps = max(1, int(args.seconds / step_seconds))
    epochs = -(-budget_steps // len(loader))
    optimizer = optim.make_optimizer("adam", model, args.lr)
    schedule = optim.make_schedule("cosine", optimizer, total_steps=budget_steps)
    start = time.perf_counter()
    train.fit(model, loader, optimizer, epochs, schedule=schedule, progress=not args.quiet,
              max_seconds=args.seconds)
    result = train.evaluate(model, data.DataLoader(x_test, y_test, 500))
    print(f"trained {time.perf_counter() - start:.0f} s; test accuracy on all {len(y_test)} MNIST test "
          f"images: {result['accuracy'] * 100:.2f}%")
    return 0


def _time_one_step(model, x, y) -> float:
    """Seconds per training step, measured on a throwaway copy of the model's state."""
    import minibnn
    from minibnn import Tensor
    from minibnn import functional as F

    state = model.state_dict()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        loss = F.cross_entropy(model(Tensor(x)), y)
        loss.backward()
        minibnn.backend.to_numpy(loss.data)  # on the GPU: wait for the step to finish
        times.append(time.perf_counter() - t)
    model.load_state_dict(state)  # undo the batch-norm statistics these steps touched
    model.zero_grad()
    return float(np.median(times)) * 1.1  # optimizer step and data loading


def _model_names():
    from minibnn import models

    return models.MODELS


class _Subparsers:
    """add_subparsers() whose every command also takes the shared options of ``common``."""

    def __init__(self, sub, common: argparse.ArgumentParser) -> None:
        self.sub, self.common = sub, common

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self.sub.add_parser(name, parents=[self.common], **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``minibnn`` command."""
    parser = argparse.ArgumentParser(prog="minibnn", description="binary neural networks from scratch")
    backend_help = "numpy, native or cuda (default: MINIBNN_BACKEND, else native when built, else numpy)"
    parser.add_argument("--backend", help=backend_help)
    common = argparse.ArgumentParser(add_help=False)  # --backend after the command too (minibnn train --backend cuda)
    common.add_argument("--backend", default=argparse.SUPPRESS, help=backend_help)
    sub = _Subparsers(parser.add_subparsers(dest="command", required=True), common)

    t = sub.add_parser("train", help="train a model")
    t.add_argument("--model", help="lenet, binary_mlp, vgg_small, resnet18, resnet18_imagenet (default: lenet for "
                                   "mnist / fashion-mnist, resnet18 for cifar10, resnet18_imagenet for imagefolder)")
    t.add_argument("--dataset", default="mnist", help=DATASET_HELP)
    t.add_argument("--data-root", help=DATA_ROOT_HELP)
    t.add_argument("--act-bit", type=int, default=1)
    t.add_argument("--weight-bit", type=int, default=1)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--optimizer", default="adam", help=", ".join(OPTIMIZERS))
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--schedule", default="cosine", help=", ".join(SCHEDULES))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="output folder (checkpoints, model, history)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--augment", action="store_true",
                   help="the dataset's usual augmentation: random crops with padding 2 (MNIST), random crops with "
                        "padding 4 and horizontal flips (CIFAR-10), random-resized crops and flips (imagefolder)")
    t.add_argument("--image-size", type=int, help="imagefolder: crop size (default 224)")
    t.add_argument("--skip-bad-images", action="store_true",
                   help="imagefolder: leave unreadable images out (counted in a warning) instead of stopping")
    t.add_argument("--limit", type=int, default=0, help="train on the first N images only")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--plot", action="store_true", help="write OUT/training_curves.png (needs matplotlib)")
    t.set_defaults(run=cmd_train)

    e = sub.add_parser("eval", help="evaluate a saved float or packed model (accuracy, images/s)")
    e.add_argument("model_path")
    e.add_argument("--dataset", default="mnist", help=DATASET_HELP)
    e.add_argument("--data-root", help=DATA_ROOT_HELP)
    e.add_argument("--image-size", type=int, help="imagefolder: center-crop size (default: the packed model's, else 224)")
    e.add_argument("--skip-bad-images", action="store_true", help="imagefolder: leave unreadable images out")
    e.add_argument("--batch-size", type=int, default=500)
    e.add_argument("--plot", action="store_true", help="write <model>_confusion.png beside the model (needs matplotlib)")
    e.set_defaults(run=cmd_evaluate)

    c = sub.add_parser("convert", help="pack a saved model: binarized_<name>.json/.npz, 1 bit per binary weight")
    c.add_argument("model_path")
    c.add_argument("--out", help="output folder (default: beside the model)")
    c.add_argument("--input-shape", default="1,28,28",
                   help="one sample's shape: the conversion is verified on it and predict checks it (default 1,28,28)")
    c.set_defaults(run=cmd_convert)

    x = sub.add_parser("export-c", help="write a packed model as a C program (no Python needed to run it)")
    x.add_argument("model_path", help="a packed model (binarized_<name>.json from convert)")
    x.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    x.add_argument("--name", help="C name of the model (default: the packed model's name)")
    x.add_argument("--input-shape", help="one sample's shape (default: the packed file's)")
    x.add_argument("--normalize", default="mnist",
                   help="how main.c normalises a PGM's pixels: mnist (minibnn train's, the default), fashion-mnist, "
                        "none, or MEAN,STD")
    x.set_defaults(run=cmd_export_c)

    s = sub.add_parser("summary", help="per-layer bits, parameters, MACs and memory of a saved model")
    s.add_argument("model_path")
    s.add_argument("--input-shape", help="one sample's shape (default: the packed file's, else 1,28,28)")
    s.set_defaults(run=cmd_summary)

    d = sub.add_parser("demo", help="train a binarized LeNet on MNIST in about 3 minutes")
    d.add_argument("--seconds", type=float, default=170.0)
    d.add_argument("--batch-size", type=int, default=128)
    d.add_argument("--lr", type=float, default=3e-3)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``minibnn`` command."""
    import minibnn
    from minibnn.data import IDXError
    from minibnn.io import ModelFileError
    from minibnn.train import TrainingDiverged, TrainingOutOfMemory

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the --resume hint after Ctrl-C
    try:
        if args.backend:
            minibnn.use(args.backend)
        return args.run(args)
    except (CLIError, ModelFileError, IDXError, TrainingDiverged, TrainingOutOfMemory, OSError,
            minibnn.backend.BackendUnavailable, ValueError) as exc:
        print(f"minibnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minibnn {args.command}: interrupted", file=sys.stderr)
        return 130
