"""Tests for minibnn.data: IDX reader, MNIST / Fashion-MNIST, DataLoader, transforms."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from minibnn.data import (FASHION_MNIST_MEAN, FASHION_MNIST_STD, MNIST_DIR, MNIST_MEAN,
                          MNIST_STD, Compose, DataLoader, IDXError, RandomCrop,
                          RandomHorizontalFlip, load_fashion_mnist, load_mnist,
                          md5_of_decompressed, normalize, read_idx, write_idx)
from minibnn.data.datasets import FASHION_MNIST_MD5, MNIST_MD5

FASHION_DIR = (Path(__file__).parents[1] / ".." / "shared" / "data" / "fashion-mnist").resolve()
IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
             np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(arr: np.ndarray, code: int | None = None) -> bytes:
    """Independent IDX encoder (big-endian header and payload)."""
    code = IDX_CODES[arr.dtype.type] if code is None else code
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_fake_split(root: Path, n_images: int = 5, n_labels: int = 5, split: str = "train"):
    """Write a small MNIST-layout split (gzip) into root."""
    rng = np.random.default_rng(0)
    prefix = "train" if split == "train" else "t10k"
    images = rng.integers(0, 256, (n_images, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n_labels, dtype=np.uint8)
    (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return images, labels


# ---------------------------------------------------------------- shipped MNIST

@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_mnist_shapes_dtypes_ranges(split, n):
    x, y = load_mnist(split)
    assert x.shape == (n, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    frac = np.bincount(y, minlength=10) / n
    assert np.all((frac > 0.08) & (frac < 0.12)), frac
    assert abs(float(x.mean()) - MNIST_MEAN) < 0.003
    if split == "train":
        assert abs(float(x.mean()) - MNIST_MEAN) < 1e-4
        assert abs(float(x.std()) - MNIST_STD) < 1e-4
        assert np.bincount(y)[1] == 6742  # official train histogram


def test_mnist_values_are_bytes_over_255():
    x, _ = load_mnist("test")
    assert np.array_equal(np.round(x * 255) / np.float32(255), x)
    raw = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    assert np.array_equal(raw, np.round(x[:, 0] * 255).astype(np.uint8))


def test_mnist_md5_table_matches_shipped_files():
    for base, digest in MNIST_MD5.items():
        assert md5_of_decompressed(MNIST_DIR / f"{base}.gz") == digest


def test_mnist_cached_read_only_and_alias():
    x, y = load_mnist("test", verify=True)
    x2, y2 = load_mnist("t10k", verify=False)
    assert x2 is x and y2 is y
    assert not x.flags.writeable and not y.flags.writeable
    with pytest.raises(ValueError):
        x[0, 0, 0, 0] = 5.0
    assert x.copy().flags.writeable


@pytest.mark.parametrize("split", ["val", "TRAIN", "", None, 0])
def test_bad_split_lists_choices(split):
    with pytest.raises(ValueError, match="'train', 'test'.*'t10k'"):
        load_mnist(split)


def test_load_normalized_matches_normalize_and_leaves_the_cache_alone(tmp_path):
    raw, labels = load_mnist("test")
    x, y = load_mnist("test", normalize=True)
    np.testing.assert_array_equal(x, (raw - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD))
    assert x.dtype == np.float32 and x.flags.writeable and y is labels
    assert raw.min() == 0.0 and not raw.flags.writeable  # the cached raw pixels are unchanged
    assert abs(float(load_mnist("train", normalize=True)[0].mean())) < 1e-3  # MNIST_MEAN is the train mean
    write_fake_split(tmp_path)
    fx, _ = load_fashion_mnist(tmp_path, "train", verify=False, normalize=True)
    fraw, _ = load_fashion_mnist(tmp_path, "train", verify=False)
    np.testing.assert_array_equal(fx, (fraw - np.float32(FASHION_MNIST_MEAN)) / np.float32(FASHION_MNIST_STD))


# ---------------------------------------------------------------- Fashion-MNIST

@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"Fashion-MNIST not found at {FASHION_DIR}")
@pytest.mark.parametrize("split, n", [("train", 60000), ("t10k", 10000)])
def test_fashion_mnist_loads_and_verifies(split, n):
    x, y = load_fashion_mnist(FASHION_DIR, split)
    assert x.shape == (n, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() == 1.0
    assert np.array_equal(np.bincount(y, minlength=10), np.full(10, n // 10))  # balanced
    if split == "train":
        assert abs(float(x.mean()) - FASHION_MNIST_MEAN) < 1e-3
        assert abs(float(x.std()) - FASHION_MNIST_STD) < 1e-3


def test_fashion_mnist_md5_mismatch_names_file(tmp_path):
    write_fake_split(tmp_path)
    with pytest.raises(IDXError, match="MD5 mismatch") as err:
        load_fashion_mnist(tmp_path, "train")
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(err.value)
    assert FASHION_MNIST_MD5["train-images-idx3-ubyte"] in str(err.value)
    x, y = load_fashion_mnist(tmp_path, "train", verify=False)
    assert x.shape == (5, 1, 28, 28) and y.shape == (5,)


def test_corrupt_dataset_reports_md5_first(tmp_path):
    write_fake_split(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-2]))
    with pytest.raises(IDXError, match="MD5 mismatch"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(IDXError, match="truncated") as err:
        load_fashion_mnist(tmp_path, verify=False)
    assert str(path) in str(err.value)


def test_image_label_count_mismatch(tmp_path):
    write_fake_split(tmp_path, n_images=5, n_labels=4)
    with pytest.raises(IDXError, match="5 images.*4 labels") as err:
        load_fashion_mnist(tmp_path, verify=False)
    assert "train-labels-idx1-ubyte.gz" in str(err.value)


def test_dataset_folder_missing_file(tmp_path):
    write_fake_split(tmp_path)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path, "test", verify=False)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_fashion_mnist(tmp_path / "nowhere")


def test_dataset_cache_sees_changed_file(tmp_path):
    write_fake_split(tmp_path, 5, 5)
    assert len(load_fashion_mnist(tmp_path, verify=False)[0]) == 5
    write_fake_split(tmp_path, 7, 7)
    assert len(load_fashion_mnist(tmp_path, verify=False)[0]) == 7


# ---------------------------------------------------------------- IDX round trip

idx_arrays = st.sampled_from(list(IDX_CODES)).flatmap(
    lambda t: hnp.arrays(t, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6),
                         elements={"allow_nan": False} if t in (np.float32, np.float64)
                         else None))


@settings(max_examples=60, deadline=None)
@given(arr=idx_arrays, gz=st.booleans())
def test_idx_round_trip(tmp_path_factory, arr, gz):
    path = tmp_path_factory.mktemp("idx") / "data.idx"  # no suffix: gzip found by magic
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    back = read_idx(path)
    assert back.shape == arr.shape and back.dtype == arr.dtype
    assert back.dtype.isnative and back.flags.writeable
    assert np.array_equal(back, arr)
    write_idx(path, arr, compress=gz)  # the library writer gives the same bytes
    assert (gzip.decompress(path.read_bytes()) if gz else path.read_bytes()) == data


def test_raw_file_with_gz_suffix_is_read_raw(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "raw.gz"
    path.write_bytes(idx_bytes(arr))
    assert np.array_equal(read_idx(path), arr)


# ---------------------------------------------------------------- IDX errors

def write_bad(tmp_path: Path, data: bytes, name: str = "bad-idx3-ubyte.gz") -> Path:
    """Write `data` gzip-compressed and return the path."""
    path = tmp_path / name
    path.write_bytes(gzip.compress(data))
    return path


def assert_idx_error(path: Path, *fragments: str) -> None:
    """read_idx(path) raises IDXError naming the file and each fragment."""
    with pytest.raises(IDXError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, msg


def test_truncated_payload(tmp_path):
    data = idx_bytes(np.zeros((60000, 28, 28), np.uint8))[:16 + 1000]
    assert_idx_error(write_bad(tmp_path, data), "truncated",
                     "header says 47040000 bytes of data", "file has 1000")


def test_truncated_header(tmp_path):
    assert_idx_error(write_bad(tmp_path, bytes([0, 0, 8, 3, 0, 0])), "truncated", "3 dims")
    assert_idx_error(write_bad(tmp_path, b"\0\0"), "truncated", "header")


def test_trailing_bytes(tmp_path):
    data = idx_bytes(np.zeros((2, 3), np.uint8)) + b"xyz"
    assert_idx_error(write_bad(tmp_path, data), "trailing bytes",
                     "header says 6 bytes of data", "file has 9")


def test_wrong_magic(tmp_path):
    data = b"\x12\x34\x08\x01" + idx_bytes(np.zeros(3, np.uint8))[4:]
    assert_idx_error(write_bad(tmp_path, data), "wrong magic number 0x12340801",
                     "expected 0x0000")


def test_unsupported_dtype_code(tmp_path):
    data = idx_bytes(np.zeros((2, 2, 2), np.uint8), code=0x0A)
    assert_idx_error(write_bad(tmp_path, data), "wrong magic number 0x00000a03",
                     "unsupported dtype code 0x0a", "0x08 (uint8)")


def test_zero_ndim(tmp_path):
    assert_idx_error(write_bad(tmp_path, bytes([0, 0, 8, 0])), "ndim is 0")


def test_corrupted_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(5000, dtype=np.int32)))
    corrupt = bytearray(good)
    corrupt[20:40] = bytes(b ^ 0xFF for b in corrupt[20:40])
    for name, data in [("corrupt.gz", bytes(corrupt)), ("cut.gz", good[: len(good) // 2])]:
        path = tmp_path / name
        path.write_bytes(data)
        assert_idx_error(path, "corrupt gzip stream")


def test_missing_file(tmp_path):
    path = tmp_path / "no-such-idx1-ubyte.gz"
    with pytest.raises(FileNotFoundError) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="bool"):
        write_idx(tmp_path / "x.idx", np.zeros(3, bool))


# ---------------------------------------------------------------- DataLoader

def toy(n: int = 10):
    """n images (n, 1, 2, 2) whose pixels encode the sample index, labels = index."""
    x = np.repeat(np.arange(n, dtype=np.float32), 4).reshape(n, 1, 2, 2)
    return x, np.arange(n)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 50), bs=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_loader_shuffle_covers_every_sample_once(n, bs, seed):
    x, y = toy(n)
    loader = DataLoader(x, y, batch_size=bs, shuffle=True, seed=seed)
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader) == -(-n // bs)
        seen = np.concatenate([yb for _, yb in batches])
        assert sorted(seen.tolist()) == list(range(n))
        for xb, yb in batches:
            assert xb.dtype == np.float32 and yb.dtype == np.int64
            assert np.array_equal(xb[:, 0, 0, 0], yb)  # images stay with their labels


@pytest.mark.parametrize("drop_last, sizes", [(False, [4, 4, 2]), (True, [4, 4])])
def test_loader_batch_sizes(drop_last, sizes):
    loader = DataLoader(*toy(10), batch_size=4, drop_last=drop_last)
    assert len(loader) == len(sizes) and loader.num_samples == 10
    assert [len(yb) for _, yb in loader] == sizes
    assert [xb.shape for xb, _ in loader] == [(s, 1, 2, 2) for s in sizes]


def test_loader_no_shuffle_is_in_order_and_batch_1():
    loader = DataLoader(*toy(5), batch_size=1)
    assert len(loader) == 5
    assert [yb.tolist() for _, yb in loader] == [[i] for i in range(5)]


def test_loader_drop_last_larger_than_data():
    loader = DataLoader(*toy(3), batch_size=4, drop_last=True)
    assert len(loader) == 0 and list(loader) == []


def order(loader: DataLoader) -> list[int]:
    """Concatenated labels of one epoch."""
    return np.concatenate([yb for _, yb in loader]).tolist()


def test_loader_reproducible_per_epoch():
    a = DataLoader(*toy(100), batch_size=7, shuffle=True, seed=3)
    b = DataLoader(*toy(100), batch_size=7, shuffle=True, seed=3)
    epochs = [order(a) for _ in range(3)]  # auto-increment: epochs 0, 1, 2
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
    b.set_epoch(2)  # epoch 2 does not depend on epochs 0 and 1 having run
    assert order(b) == epochs[2]
    b.set_epoch(0)
    assert [order(b), order(b)] == epochs[:2]
    assert order(DataLoader(*toy(100), batch_size=7, shuffle=True, seed=4)) != epochs[0]


def test_loader_epoch_consumed_when_iteration_starts():
    loader = DataLoader(*toy(10), batch_size=3, shuffle=True, seed=0)
    it = iter(loader)
    assert loader.epoch == 1
    first = next(it)[1].tolist()
    loader.set_epoch(0)
    assert next(iter(loader))[1].tolist() == first


def test_loader_seed_none_is_drawn_once():
    a = DataLoader(*toy(50), batch_size=50, shuffle=True)
    b = DataLoader(*toy(50), batch_size=50, shuffle=True, seed=a.seed)
    assert isinstance(a.seed, int) and order(a) == order(b)


def test_loader_transform_gets_seeded_rng_and_source_untouched():
    x, y = toy(20)
    x0 = x.copy()
    calls = []

    def record(batch, rng):
        calls.append(rng.integers(1 << 30))
        return batch + 1

    loader = DataLoader(x, y, batch_size=8, shuffle=True, seed=1, transform=record)
    xb, yb = next(iter(loader))
    assert np.array_equal(xb[:, 0, 0, 0], yb + 1)
    loader.set_epoch(0)
    list(loader)
    assert calls[0] == calls[1] and np.array_equal(x, x0)


def test_loader_casts_dtypes():
    loader = DataLoader(np.zeros((3, 1, 2, 2), np.uint8), np.zeros(3, np.int32), batch_size=2)
    xb, yb = next(iter(loader))
    assert xb.dtype == np.float32 and yb.dtype == np.int64


@pytest.mark.parametrize("bs", [0, -1, 2.0, True, "4"])
def test_loader_bad_batch_size(bs):
    with pytest.raises(ValueError, match="batch_size") as err:
        DataLoader(*toy(4), batch_size=bs)
    assert repr(bs) in str(err.value)


def test_loader_length_mismatch():
    with pytest.raises(ValueError, match="5 images and 4 labels"):
        DataLoader(np.zeros((5, 1, 2, 2)), np.zeros(4))


def test_loader_bad_epoch():
    with pytest.raises(ValueError, match="epoch"):
        DataLoader(*toy(4)).set_epoch(-1)


# ---------------------------------------------------------------- transforms

def batch(n=6, c=2, h=5, w=7, seed=0):
    """Random NCHW float32 batch."""
    return np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)


def test_random_crop_full_size_no_padding_is_identity():
    x = batch()
    out = RandomCrop((5, 7))(x, np.random.default_rng(0))
    assert out.dtype == np.float32 and np.array_equal(out, x)


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 6), padding=st.integers(0, 3), seed=st.integers(0, 1000))
def test_random_crop_is_window_of_padded_image(size, padding, seed):
    x = batch(n=5, h=6, w=6, seed=seed)
    out = RandomCrop(size, padding)(x, np.random.default_rng(seed))
    assert out.shape == (5, 2, size, size) and out.dtype == np.float32
    padded = np.pad(x, ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2))
    span = 6 + 2 * padding - size + 1
    for img, crop in zip(padded, out):  # one shared offset across channels
        assert any(np.array_equal(img[:, i:i + size, j:j + size], crop)
                   for i in range(span) for j in range(span))


def test_random_crop_offsets_vary_per_image():
    x = np.broadcast_to(np.arange(100, dtype=np.float32).reshape(10, 10), (64, 1, 10, 10))
    out = RandomCrop(4, padding=2)(x, np.random.default_rng(0))
    assert len({crop.tobytes() for crop in out}) > 20


def test_random_crop_validates():
    with pytest.raises(ValueError, match="exceeds"):
        RandomCrop(9)(batch(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="size"):
        RandomCrop(0)
    with pytest.raises(ValueError, match="padding"):
        RandomCrop(3, padding=-1)
    with pytest.raises(ValueError, match="NCHW"):
        RandomCrop(3)(np.zeros((5, 5), np.float32), np.random.default_rng(0))


def test_flip_twice_is_identity_and_mirrors():
    x = batch()
    flip, rng = RandomHorizontalFlip(p=1.0), np.random.default_rng(0)
    once = flip(x, rng)
    assert np.array_equal(once, x[..., ::-1])
    assert np.array_equal(flip(once, rng), x)
    assert np.array_equal(RandomHorizontalFlip(p=0.0)(x, rng), x)


def test_flip_is_per_image():
    x = batch(n=200)
    out = RandomHorizontalFlip()(x, np.random.default_rng(1))
    flipped = np.array([np.array_equal(o, i[..., ::-1]) for o, i in zip(out, x)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
    assert np.all(flipped ^ kept) and 60 < flipped.sum() < 140
    with pytest.raises(ValueError, match="p must be"):
        RandomHorizontalFlip(1.5)


def test_compose_and_attributes():
    pipeline = Compose([RandomCrop(5, padding=1), RandomHorizontalFlip(p=1.0)])
    x = batch(h=5, w=5)
    a = pipeline(x, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    b = RandomHorizontalFlip(1.0)(RandomCrop(5, 1)(x, rng), rng)
    assert np.array_equal(a, b)
    crop, flip = pipeline.transforms
    assert (crop.size, crop.padding, flip.p) == (5, 1, 1.0)
    assert "RandomCrop(size=5, padding=1)" in repr(pipeline)


def test_normalize():
    x = np.array([0.0, MNIST_MEAN, 1.0], dtype=np.float64)
    out = normalize(x, MNIST_MEAN, MNIST_STD)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (x - MNIST_MEAN) / MNIST_STD, rtol=1e-6)
    per_channel = normalize(np.ones((2, 3, 1, 1)), np.zeros((3, 1, 1)), [[[1.0]], [[2.0]], [[4.0]]])
    np.testing.assert_allclose(per_channel[0, :, 0, 0], [1.0, 0.5, 0.25])
    with pytest.raises(ValueError, match="std"):
        normalize(x, 0.0, 0.0)
