"""CIFAR-10 (binary version) and image-folder loaders, the ImageNet ResNet-18, and their CLI runs.

Everything runs on small files the tests write in the official formats: CIFAR-10 batch files of a
few dozen 3,073-byte records, and class folders of tiny PNG / JPEG images made with Pillow.
"""
from __future__ import annotations

import importlib.util
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import minibnn
from minibnn import data, deploy, models, nn
from minibnn.cli import main
from minibnn.data import DatasetError
from minibnn.data import imagefolder as imf

needs_pillow = pytest.mark.skipif(importlib.util.find_spec("PIL") is None,
                                  reason="Pillow (the images extra) is not installed")

RECORD = 3073
TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]


# ---------------------------------------------------------------- CIFAR-10

def write_cifar(root: Path, records: int = 20, seed: int = 0, subfolder: bool = True) -> dict[str, tuple]:
    """The six official batch files with random content; returns {name: (uint8 images, labels)}."""
    folder = root / "cifar-10-batches-bin" if subfolder else root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name in TRAIN + ["test_batch.bin"]:
        labels = rng.integers(0, 10, records).astype(np.uint8)
        images = rng.integers(0, 256, (records, 3, 32, 32)).astype(np.uint8)
        table = np.concatenate([labels[:, None], images.reshape(records, -1)], axis=1)
        (folder / name).write_bytes(table.tobytes())
        written[name] = (images, labels.astype(np.int64))
    return written


def test_cifar10_pixel_layout_is_label_then_red_green_blue_planes_row_by_row(tmp_path):
    record = bytearray(RECORD * 2)
    record[0] = 7                                   # label of record 0
    record[1 + 5 * 32 + 9] = 200                    # red plane, row 5, column 9
    record[1 + 1024 + 5 * 32 + 9] = 100             # green plane
    record[1 + 2048 + 5 * 32 + 9] = 50              # blue plane
    record[1 + 2048 + 31 * 32 + 31] = 9             # blue, last pixel
    record[RECORD] = 3                              # label of record 1
    record[RECORD + 1 + 32] = 255                   # record 1: red, row 1, column 0
    (tmp_path / "b.bin").write_bytes(bytes(record))
    images, labels = data.read_cifar10_batch(tmp_path / "b.bin")
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8 and labels.tolist() == [7, 3]
    assert images[0, :, 5, 9].tolist() == [200, 100, 50] and images[0, 2, 31, 31] == 9
    assert images[1, 0, 1, 0] == 255 and images.sum() == 200 + 100 + 50 + 9 + 255


@pytest.mark.parametrize("subfolder", [True, False])
def test_cifar10_round_trip(tmp_path, subfolder):
    written = write_cifar(tmp_path, subfolder=subfolder)
    x, y = data.load_cifar10(tmp_path, "train")
    assert x.shape == (100, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    expected = np.concatenate([written[n][0] for n in TRAIN])
    np.testing.assert_array_equal(x, expected.astype(np.float32) / 255)
    np.testing.assert_array_equal(y, np.concatenate([written[n][1] for n in TRAIN]))
    xt, yt = data.load_cifar10(tmp_path, "test", normalize=True)
    mean = np.array(data.CIFAR10_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(data.CIFAR10_STD, np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(xt, (written["test_batch.bin"][0] / np.float32(255) - mean) / std, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(yt, written["test_batch.bin"][1])


def _folder(tmp_path):
    write_cifar(tmp_path)
    return tmp_path / "cifar-10-batches-bin"


def test_a_truncated_batch_file_is_refused_naming_it(tmp_path):
    folder = _folder(tmp_path)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"data_batch_3\.bin: truncated or wrong record size: 61360 bytes "
                                           r"is not a whole number of 3,073-byte records"):
        data.load_cifar10(tmp_path, "train")
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"data_batch_3\.bin: empty file"):
        data.load_cifar10(tmp_path, "train")


def test_a_wrong_record_size_is_refused_naming_the_file(tmp_path):
    folder = _folder(tmp_path)
    (folder / "test_batch.bin").write_bytes(bytes(3074 * 20))  # CIFAR-100's records: 2 label bytes
    with pytest.raises(DatasetError, match=r"test_batch\.bin: truncated or wrong record size.*CIFAR-100"):
        data.load_cifar10(tmp_path, "test")


def test_a_bad_label_is_refused_naming_file_and_record(tmp_path):
    folder = _folder(tmp_path)
    raw = bytearray((folder / "data_batch_2.bin").read_bytes())
    raw[7 * RECORD] = 10
    (folder / "data_batch_2.bin").write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"data_batch_2\.bin: record 7 \(byte offset 21511\) has label 10"):
        data.load_cifar10(tmp_path, "train")


def test_missing_files_are_named(tmp_path):
    folder = _folder(tmp_path)
    (folder / "data_batch_5.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_5\.bin: CIFAR-10 batch file not found"):
        data.load_cifar10(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="nowhere: CIFAR-10 folder not found"):
        data.load_cifar10(tmp_path / "nowhere", "test")
    with pytest.raises(FileNotFoundError, match=r"x\.bin: CIFAR-10 batch file not found"):
        data.read_cifar10_batch(tmp_path / "x.bin")


def test_the_size_is_checked_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(RECORD * 3)
    with pytest.raises(DatasetError, match=r"big\.bin: 9219 bytes = 3 records, more than the 2 accepted"):
        data.read_cifar10_batch(path, max_records=2)
    path.write_bytes(bytes(RECORD + 1))
    monkeypatch.setattr("builtins.open", lambda *a, **k: pytest.fail("opened a file of the wrong size"))
    with pytest.raises(DatasetError, match="big.bin"):
        data.read_cifar10_batch(path)


def _crop_offsets(image: np.ndarray, out: np.ndarray, pad: int) -> list[tuple[int, int]]:
    padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)))
    size = image.shape[-1]
    return [(oy, ox) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
            if np.array_equal(padded[:, oy:oy + size, ox:ox + size], out)]


def test_cifar10_augmentation_crops_and_flips_reproducibly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3, 32, 32)).astype(np.float32)
    flip = data.RandomHorizontalFlip(1.0)(x, np.random.default_rng(1))
    np.testing.assert_array_equal(flip, x[..., ::-1])
    crop = data.RandomCrop(32, padding=4)(x, np.random.default_rng(1))
    assert crop.shape == x.shape
    assert all(len(_crop_offsets(x[i], crop[i], 4)) == 1 for i in range(len(x)))
    aug = data.cifar10_augmentation()
    out = aug(x, np.random.default_rng(2))
    assert out.shape == x.shape
    kinds = [bool(_crop_offsets(x[i], out[i], 4)) or 2 * bool(_crop_offsets(x[i], out[i, :, :, ::-1], 4))
             for i in range(len(x))]
    assert set(kinds) == {1, 2}  # every image is a crop, some of them mirrored
    np.testing.assert_array_equal(out, aug(x, np.random.default_rng(2)))  # seeded: repeatable
    loader = data.DataLoader(x, np.arange(16) % 10, 8, shuffle=True, seed=3, transform=aug)
    first = [b for b, _ in loader]
    loader.set_epoch(0)
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate([b for b, _ in loader]))
    assert not np.array_equal(np.concatenate(first), np.concatenate([b for b, _ in loader]))  # epoch 1 differs


# ---------------------------------------------------------------- image folders

COLORS = {"cat": (255, 0, 0), "ant": (0, 255, 0), "dog": (0, 0, 255)}


def write_images(root: Path, per_class: int = 3, sizes=((40, 30), (24, 50), (33, 33))) -> None:
    """root/train/<class>/ and root/val/<class>/ with solid-colour PNG and JPEG images of mixed sizes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name, color in COLORS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                w, h = sizes[i % len(sizes)]
                pixels = np.empty((h, w, 3), np.uint8)
                pixels[...] = color
                pixels[:, : w // 4] = rng.integers(0, 256, (h, w // 4, 3))  # a textured left edge
                ext = "png" if i % 2 == 0 else "jpg"
                Image.fromarray(pixels).save(folder / f"{i:02d}.{ext}")


@needs_pillow
def test_image_folder_labels_follow_sorted_class_names(tmp_path):
    write_images(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    folder = data.ImageFolder(tmp_path / "train")
    assert folder.classes == ["ant", "cat", "dog"] and len(folder) == 9
    assert [Path(p).parent.name for p, _ in folder.samples] == ["ant"] * 3 + ["cat"] * 3 + ["dog"] * 3
    assert folder.targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    loader = data.ImageFolderLoader(folder, batch_size=4, image_size=16, num_workers=2)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(4, 3, 16, 16), (4, 3, 16, 16), (1, 3, 16, 16)]
    assert np.concatenate([y for _, y in batches]).tolist() == folder.targets.tolist()
    # the right half of each image is its class colour: normalised with the ImageNet mean and std
    for (x, y) in batches:
        for img, label in zip(x, y):
            color = np.array(COLORS[folder.classes[label]]) / 255
            expected = (color - np.array(data.IMAGENET_MEAN)) / np.array(data.IMAGENET_STD)
            np.testing.assert_allclose(img[:, 4:12, 12:].mean(axis=(1, 2)), expected, atol=0.15)


@needs_pillow
def test_training_transforms_are_seeded_and_independent_of_threads(tmp_path):
    write_images(tmp_path)
    make = lambda workers, seed=5: data.ImageFolderLoader(tmp_path / "train", batch_size=4, train=True,  # noqa: E731
                                                          image_size=12, seed=seed, num_workers=workers)
    a, b = make(0), make(3)
    batches_a, batches_b = list(a), list(b)
    assert all(x.shape[1:] == (3, 12, 12) and x.dtype == np.float32 for x, _ in batches_a)
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert sorted(np.concatenate([y for _, y in batches_a]).tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    epoch1 = list(a)  # the next epoch: another order and other crops
    assert not all(np.array_equal(x1, x0) for (x1, _), (x0, _) in zip(epoch1, batches_a))
    a.set_epoch(0)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in a]), np.concatenate([x for x, _ in batches_a]))


@needs_pillow
def test_random_resized_crop_boxes_and_the_flip(tmp_path):
    crop = data.RandomResizedCrop(8)
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = crop.box(40, 30, rng)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30
        assert 0.08 * 1200 * 0.9 <= w * h <= 1200 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    assert data.ResizeCenterCrop(224).resize == 256
    assert data.ResizeCenterCrop(10, 20).box(40, 30) == (12.5, 7.5, 27.5, 22.5)
    # a full-image "random" crop of a square image, always flipped, is the evaluation view mirrored
    write_images(tmp_path, per_class=1, sizes=((20, 20),))
    full = data.ImageFolderLoader(tmp_path / "train", 3, train=True, image_size=10, scale=(1, 1), ratio=(1, 1),
                                  flip=1.0, shuffle=False, num_workers=0)
    plain = data.ImageFolderLoader(tmp_path / "train", 3, image_size=10, resize_size=10, num_workers=0)
    (x_flip, _), = list(full)
    (x_plain, _), = list(plain)
    np.testing.assert_allclose(x_flip, x_plain[..., ::-1], atol=1e-5)


@needs_pillow
def test_images_are_decoded_lazily(tmp_path, monkeypatch):
    write_images(tmp_path)
    calls = []
    real = imf.open_image
    monkeypatch.setattr(imf, "open_image", lambda path, *a: calls.append(path) or real(path, *a))
    loader = data.ImageFolderLoader(tmp_path / "train", batch_size=2, image_size=8, num_workers=0)
    it = iter(loader)
    assert calls == []
    next(it)
    assert len(calls) == 2
    assert len(list(it)) == 4 and len(calls) == 9


@needs_pillow
def test_an_unreadable_image_is_named_or_skipped(tmp_path):
    write_images(tmp_path)
    (tmp_path / "train" / "cat" / "zz_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg" * 5)
    loader = data.ImageFolderLoader(tmp_path / "train", batch_size=4, image_size=8)
    with pytest.raises(DatasetError, match=r"zz_broken\.jpg: unreadable image"):
        list(loader)
    loader = data.ImageFolderLoader(tmp_path / "train", batch_size=4, image_size=8, skip_bad=True)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) of 10 .*zz_broken\.jpg"):
        batches = list(loader)
    assert sum(len(y) for _, y in batches) == 9 and [Path(p).name for p, _ in loader.skipped] == ["zz_broken.jpg"]
    from PIL import Image

    huge = tmp_path / "huge.png"
    Image.new("RGB", (300, 200)).save(huge)
    with pytest.raises(DatasetError, match=r"huge\.png: image of 300 x 200 pixels is larger than max_pixels=1000"):
        imf.open_image(huge, max_pixels=1000)


@needs_pillow
def test_an_empty_class_folder_or_split_is_named(tmp_path):
    write_images(tmp_path)
    (tmp_path / "train" / "emu").mkdir()
    (tmp_path / "train" / "emu" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"train/emu: empty class folder"):
        data.ImageFolder(tmp_path / "train")
    with pytest.raises(DatasetError, match=r"train/emu: empty class folder"):
        data.ImageFolderLoader(tmp_path / "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no class folders"):
        data.ImageFolder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"empty/train: folder of the train split not found"):
        data.image_split(tmp_path / "empty", "train")
    assert data.image_split(tmp_path, "test") == tmp_path / "val"


def test_without_pillow_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"pip install minibnn\[images\]"):
        imf.require_pillow()


@needs_pillow
def test_the_image_loader_trains_with_fit(tmp_path):
    write_images(tmp_path)
    minibnn.manual_seed(0)
    loader = data.ImageFolderLoader(tmp_path / "train", batch_size=3, train=True, image_size=8, seed=0)
    model = models.binary_mlp(3 * 8 * 8, hidden=(16, 16), num_classes=3)
    opt = minibnn.optim.Adam(model.parameters(), lr=1e-2)
    history = minibnn.train.fit(model, loader, opt, 2, val_loader=data.ImageFolderLoader(tmp_path / "val", 5,
                                image_size=8), progress=False, verbose=False)
    assert len(history) == 2 and 0 <= history.epochs[-1]["val_accuracy"] <= 1


# ---------------------------------------------------------------- the ImageNet ResNet-18

def test_imagenet_resnet18_runs_converts_and_packs_exactly():
    minibnn.manual_seed(0)
    model = models.MODELS["resnet18_imagenet"](num_classes=10)
    assert [type(m).__name__ for m in model.stem] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "BatchNorm2d"]
    assert model.stem[0].weight.shape == (64, 3, 7, 7) and model.stem[0].stride == 2
    rng = np.random.default_rng(1)
    model.train()
    model(minibnn.Tensor(rng.normal(size=(2, 3, 64, 64)).astype(np.float32)))  # move the BN statistics
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data[...] = rng.normal(0, 1, m.num_features)
            m.bias.data[...] = rng.normal(0, 0.5, m.num_features)
    x = rng.normal(size=(1, 3, 64, 64)).astype(np.float32)
    model.eval()
    with minibnn.no_grad():
        expected = model(minibnn.Tensor(x)).numpy()
    assert expected.shape == (1, 10)
    packed = deploy.convert(model, (3, 64, 64), name="resnet18_imagenet")
    np.testing.assert_array_equal(minibnn.backend.to_numpy(packed.predict(x)), expected)
    report = minibnn.summary(packed, (3, 64, 64), print_fn=lambda *a: None)
    assert report.compression > 10
    rebuilt = nn.from_config(model.to_config())
    assert rebuilt.stem[3].kernel_size == 3 and len(rebuilt.stem) == 5 and rebuilt.stem[3].padding == 1


# ---------------------------------------------------------------- the command line

def test_cli_trains_converts_and_evaluates_on_cifar10_files(tmp_path, capsys):
    write_cifar(tmp_path / "cifar", records=16)
    root, out = str(tmp_path / "cifar"), tmp_path / "run"
    args = ["train", "--dataset", "cifar10", "--data-root", root, "--epochs", "1", "--limit", "8",
            "--batch-size", "4", "--augment", "--quiet", "--out", str(out)]
    assert main(args) == 0  # two steps of the default model: ResNet-18 (CIFAR stem)
    assert "test accuracy" in capsys.readouterr().out
    loaded = minibnn.load(out / "model")
    assert type(loaded).__name__ == "ResNet" and loaded.stem[0].weight.shape == (64, 3, 3, 3)
    assert main(["eval", str(out / "model"), "--dataset", "cifar10", "--data-root", root]) == 0
    float_line = capsys.readouterr().out
    assert main(["convert", str(out / "model.json"), "--input-shape", "3,32,32"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out / "binarized_model"), "--dataset", "cifar10", "--data-root", root]) == 0
    packed_line = capsys.readouterr().out
    assert "packed model" in packed_line and _accuracy(packed_line) == _accuracy(float_line)
    assert main(["train", "--dataset", "cifar10", "--data-root", root, "--model", "binary_mlp", "--epochs", "1",
                 "--limit", "8", "--batch-size", "4", "--quiet", "--out", str(tmp_path / "mlp")]) == 0
    assert main(["train", "--dataset", "cifar10", "--model", "lenet", "--epochs", "1"]) == 2
    assert "--dataset cifar10 needs --data-root DIR" in capsys.readouterr().err
    assert main(["train", "--dataset", "cifar10", "--data-root", root, "--model", "lenet", "--epochs", "1"]) == 2
    assert "lenet takes 28x28 images" in capsys.readouterr().err
    (tmp_path / "cifar" / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(bytes(100))
    assert main(["eval", str(out / "model"), "--dataset", "cifar10", "--data-root", root]) == 2
    assert "test_batch.bin: truncated or wrong record size" in capsys.readouterr().err


def _accuracy(line: str) -> str:
    return line.split("test accuracy ")[1].split()[0]


@needs_pillow
def test_cli_trains_converts_and_evaluates_on_an_image_folder(tmp_path, capsys):
    write_images(tmp_path / "images", per_class=2)
    (tmp_path / "images" / "train" / "dog" / "zz_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "run"
    args = ["train", "--dataset", "imagefolder", "--data-root", str(tmp_path / "images"), "--image-size", "32",
            "--epochs", "1", "--batch-size", "4", "--augment", "--quiet", "--out", str(out)]
    assert main(args) == 2
    assert "zz_bad.png: unreadable image" in capsys.readouterr().err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args + ["--skip-bad-images"]) == 0
    assert any("skipped 1 unreadable image" in str(w.message) for w in caught)
    assert "test accuracy" in capsys.readouterr().out
    loaded = minibnn.load(out / "model")
    assert type(loaded).__name__ == "ResNet" and loaded.stem[0].weight.shape[-1] == 7  # the ImageNet variant
    assert main(["eval", str(out / "model"), "--dataset", "imagefolder", "--data-root", str(tmp_path / "images"),
                 "--image-size", "32"]) == 0
    float_line = capsys.readouterr().out
    assert main(["convert", str(out / "model.json"), "--input-shape", "3,32,32"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out / "binarized_model"), "--dataset", "imagefolder", "--data-root",
                 str(tmp_path / "images")]) == 0
    packed_line = capsys.readouterr().out
    assert "packed model" in packed_line and _accuracy(packed_line) == _accuracy(float_line)
    (tmp_path / "images" / "val" / "ant" / "00.png").unlink()
    (tmp_path / "images" / "val" / "ant" / "01.jpg").unlink()
    assert main(["eval", str(out / "model"), "--dataset", "imagefolder", "--data-root", str(tmp_path / "images")]) == 2
    assert "val/ant: empty class folder" in capsys.readouterr().err


@needs_pillow
def test_jpeg_draft_decoding_keeps_the_requested_size(tmp_path):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), (10, 200, 30)).save(buffer, "JPEG")
    (tmp_path / "big.jpg").write_bytes(buffer.getvalue())
    img = imf.open_image(tmp_path / "big.jpg", draft=(64, 64))
    assert min(img.size) >= 64 and img.size[0] < 400  # decoded at a reduced scale, still large enough
