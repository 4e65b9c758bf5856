"""Hostile files: every mutated model, packed model, checkpoint and IDX file loads or is refused clearly.

The fuzz harness is tests/fuzzing.py. The default run tries QUICK_CASES mutations per file kind; the
slow run (``pytest -m slow``) SLOW_CASES, as RELIABILITY.md reports. The targeted tests below pin
each failure the first hostile run found, so they stay fixed.
"""
from __future__ import annotations

import gzip
import io
import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fuzzing
import minibnn
from minibnn import deploy, models, optim, train
from minibnn.data.idx import IDXError, read_bytes, read_idx, write_idx
from minibnn.io import ModelFileError

QUICK_CASES = 120
SLOW_CASES = 10_000


def _lenet():
    minibnn.manual_seed(0)
    model = models.lenet(1, 1)
    model.train()  # move the batch-norm running statistics off their defaults
    model(minibnn.Tensor(np.random.default_rng(0).normal(size=(4, 1, 28, 28)).astype(np.float32)))
    return model


def _small_mlp():
    minibnn.manual_seed(1)
    return models.binary_mlp(hidden=(16, 8))


def _model_files(tmp: Path):
    minibnn.save(_lenet(), tmp / "m")
    minibnn.save(_small_mlp(), tmp / "o")
    return minibnn.load, "m.json", fuzzing.read_files(tmp, ["m.json", "m.npz"]), \
        [fuzzing.read_files(tmp, ["o.json", "o.npz"])]


def _packed_files(tmp: Path):
    deploy.convert(_lenet(), input_shape=(1, 28, 28)).save(tmp / "p")
    deploy.convert(models.lenet(2, 2), input_shape=(1, 28, 28)).save(tmp / "q")  # k-bit: bit planes
    deploy.convert(_small_mlp(), input_shape=(1, 28, 28)).save(tmp / "r")
    partners = [fuzzing.read_files(tmp, [f"{n}.json", f"{n}.npz"]) for n in "qr"]
    return deploy.load, "p.json", fuzzing.read_files(tmp, ["p.json", "p.npz"]), partners


def _training_setup():
    minibnn.manual_seed(2)
    model = minibnn.nn.Sequential(minibnn.nn.Flatten(), minibnn.nn.Dense(12, 16), minibnn.nn.BatchNorm1d(16),
                                  minibnn.nn.Dropout(0.2), minibnn.nn.QDense(16, 8), minibnn.nn.BatchNorm1d(8),
                                  minibnn.nn.Dense(8, 3))
    optimizer = optim.make_optimizer("bop", model, 1e-3)
    return model, optimizer, optim.make_schedule("cosine", optimizer, total_steps=10)


def _checkpoint_files(tmp: Path):
    model, optimizer, schedule = _training_setup()
    rng = np.random.default_rng(0)
    for _ in range(2):
        train.train_step(model, optimizer, rng.normal(size=(8, 12)).astype(np.float32), rng.integers(0, 3, 8))
        schedule.step()
    folder = tmp / "ck"
    train.save_checkpoint(folder, model, optimizer, schedule, 1, train.History([{"epoch": 1.0}, {"epoch": 2.0}]))

    def load(path: Path):
        fresh = _training_setup()
        return train.load_checkpoint(path.parent, *fresh)
    return load, "checkpoint.json", fuzzing.read_files(folder, [p.name for p in folder.iterdir()]), []


def _idx_files(tmp: Path):
    rng = np.random.default_rng(0)
    write_idx(tmp / "x.idx.gz", rng.integers(0, 255, (20, 28, 28)).astype(np.uint8))
    return read_idx, "x.idx.gz", fuzzing.read_files(tmp, ["x.idx.gz"]), []


def _raw_idx_files(tmp: Path):
    write_idx(tmp / "y.idx", np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    return read_idx, "y.idx", fuzzing.read_files(tmp, ["y.idx"]), []


def _cifar10_files(tmp: Path):
    from minibnn.data import read_cifar10_batch

    rng = np.random.default_rng(0)
    table = np.concatenate([rng.integers(0, 10, (8, 1)), rng.integers(0, 256, (8, 3072))], axis=1)
    (tmp / "data_batch_1.bin").write_bytes(table.astype(np.uint8).tobytes())
    return read_cifar10_batch, "data_batch_1.bin", fuzzing.read_files(tmp, ["data_batch_1.bin"]), []


def _image_files(tmp: Path):
    """One PNG decoded through the image-folder loader (the harness mutates one flat folder, so the
    class-per-folder scan is not part of it: the image is given to ImageFolder.from_samples)."""
    Image = pytest.importorskip("PIL.Image")
    from minibnn.data import ImageFolder, ImageFolderLoader

    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp / "img.png")

    def load(path: Path):
        return list(ImageFolderLoader(ImageFolder.from_samples([(path, 0)], ["a"]), 1, image_size=8, num_workers=1))
    return load, "img.png", fuzzing.read_files(tmp, ["img.png"]), []


KINDS = {"model": _model_files, "packed": _packed_files, "checkpoint": _checkpoint_files,
         "idx-gzip": _idx_files, "idx-raw": _raw_idx_files, "cifar10": _cifar10_files, "imagefolder": _image_files}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_mutated_files_load_or_are_refused_naming_the_file(tmp_path, kind):
    load, entry, files, partners = KINDS[kind](tmp_path)
    (tmp_path / "case").mkdir()
    assert fuzzing.run_case(load, entry, files, tmp_path / "case") == ("loaded", None)  # the original loads
    report = fuzzing.fuzz(load, entry, files, QUICK_CASES, 0, partners)
    print(f"{kind}: {QUICK_CASES} cases, {dict(report.counts)}")
    assert report.failures == []
    assert sum(v for k, v in report.counts.items() if k.startswith("refused")) > QUICK_CASES // 3


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_ten_thousand_mutated_files(tmp_path, kind):
    load, entry, files, partners = KINDS[kind](tmp_path)
    report = fuzzing.fuzz(load, entry, files, SLOW_CASES, 12, partners)
    print(f"{kind}: {SLOW_CASES} cases, {dict(report.counts)}")
    assert report.failures == [], "\n".join(report.failures[:20])


# ---------------------------------------------------------------- the harness itself can fail

def test_the_harness_reports_crashes_hangs_large_allocations_and_unnamed_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(fuzzing, "TIME_LIMIT_S", 0.2)
    files = {"a.json": b"{}"}

    def crash(path):
        return 1 / 0

    def hang(path):
        while True:
            pass

    def allocate(path):
        return np.empty(fuzzing.MEMORY_LIMIT // 4, np.float64)  # twice the limit

    def unnamed(path):
        raise ValueError("something is wrong")

    def named(path):
        raise ModelFileError(f"{path}: bad")
    outcomes = {f.__name__: fuzzing.run_case(f, "a.json", files, tmp_path)[0]
                for f in (crash, hang, allocate, unnamed, named)}
    assert outcomes == {"crash": "crash", "hang": "hang", "allocate": "memory", "unnamed": "unnamed",
                        "named": "refused:ModelFileError"}


# ---------------------------------------------------------------- the failures a hostile run found, pinned

def _edit_architecture(path: Path, edit) -> None:
    header = json.loads(path.read_text())
    edit(header["architecture"])
    path.write_text(json.dumps(header))


def _layer(architecture: dict, i: int) -> dict:
    return architecture["args"]["layers"][i]["module"]


@pytest.mark.parametrize("edit, message", [
    (lambda a: _layer(a, 12)["args"].update(in_features=0), r"Dense: in_features must be in \[1, "),
    (lambda a: _layer(a, 0)["args"].update(kernel_size="5"), "kernel_size"),
    (lambda a: _layer(a, 0)["args"].update(stride=0), r"stride must be in \[1, "),
    (lambda a: _layer(a, 1)["args"].update(kernel_size=[2, 2, 2]), "kernel_size must be an int or a pair"),
    (lambda a: _layer(a, 3)["args"].update(eps="1e-5"), "argument eps must be a finite number"),
    (lambda a: _layer(a, 3)["args"].update(momentum=10 ** 40), "momentum must be a finite number"),
    (lambda a: _layer(a, 4)["args"].update(act_bit=1.5), "act_bit must be an int"),
    (lambda a: _layer(a, 4)["args"].update(bias=1), "bias must be true or false"),
    (lambda a: _layer(a, 4)["args"].update(pad_value=True), "pad_value"),
    (lambda a: _layer(a, 4)["args"].update(surprise=1), "unknown argument 'surprise'"),
    (lambda a: _layer(a, 4).update(type="Popen"), "unknown module type 'Popen'"),
    (lambda a: a["args"]["layers"].append({"nested": 1}), "must be {\"module\": ...}"),
])
def test_edited_settings_are_refused_by_type_and_range(tmp_path, edit, message):
    minibnn.save(_lenet(), tmp_path / "m")
    _edit_architecture(tmp_path / "m.json", edit)
    with pytest.raises(ModelFileError, match=message) as info:
        minibnn.load(tmp_path / "m")
    assert "m.json" in str(info.value)


def test_an_architecture_declaring_terabytes_is_refused_before_allocating(tmp_path):
    minibnn.save(_lenet(), tmp_path / "m")
    _edit_architecture(tmp_path / "m.json", lambda a: _layer(a, 12)["args"].update(in_features=2**31 - 1))
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="declares more than .* of parameters"):
            minibnn.load(tmp_path / "m")
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
    finally:
        tracemalloc.stop()


def test_deep_nesting_is_refused(tmp_path):
    minibnn.save(_lenet(), tmp_path / "m")
    depth = 100_000
    (tmp_path / "m.json").write_text('{"format": "minibnn-model", "x": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        minibnn.load(tmp_path / "m")
    config = {"type": "Sequential", "args": {"layers": []}}
    for _ in range(100):
        config = {"type": "Sequential", "args": {"layers": [{"module": config}]}}
    with pytest.raises(ValueError, match="nested deeper than"):
        minibnn.nn.from_config(config)


def _rewrite_npz(json_path: Path, npz_path: Path, blob: bytes) -> None:
    """Replace the .npz and make its .json agree (checksum, sizes), as a careful attacker would."""
    npz_path.write_bytes(blob)
    json_path.write_text(json.dumps(fuzzing.seal(json.loads(json_path.read_text()), blob)))


def test_nonfinite_batch_norm_statistics_are_refused_unless_allowed(tmp_path):
    model = _lenet()
    model[3].running_var[5] = np.nan
    minibnn.save(model, tmp_path / "m")
    with pytest.raises(ModelFileError, match=r"m.json: array 3.running_var holds 1 NaN or infinite"):
        minibnn.load(tmp_path / "m")
    loaded = minibnn.load(tmp_path / "m", allow_nonfinite=True)
    assert np.isnan(loaded[3].running_var[5])
    packed = deploy.convert(_lenet(), input_shape=(1, 28, 28))
    packed.save(tmp_path / "p")
    header = json.loads((tmp_path / "p.json").read_text())
    with np.load(tmp_path / "p.npz") as z:
        arrays = {k: z[k] for k in z.files}
    name = next(k for k, a in arrays.items() if a.dtype == np.float32)
    arrays[name] = arrays[name].copy()
    arrays[name].flat[0] = np.inf
    _rewrite_npz(tmp_path / "p.json", tmp_path / header["npz"], fuzzing.npz_bytes(arrays))
    with pytest.raises(ModelFileError, match=f"array {name} holds 1 NaN or infinite"):
        deploy.load(tmp_path / "p")
    assert deploy.load(tmp_path / "p", allow_nonfinite=True) is not None


def test_an_npz_member_declaring_a_huge_array_is_refused_before_allocating(tmp_path):
    minibnn.save(_small_mlp(), tmp_path / "m")
    with zipfile.ZipFile(tmp_path / "m.npz") as z:
        members = {n: z.read(n) for n in z.namelist()}
    name = next(iter(members))
    data = members[name]
    header_end = data.index(b"\n") + 1
    header = data[:header_end].decode("latin1")
    shape_start = header.index("'shape': (") + len("'shape': (")
    edited = header[:shape_start] + "1000000, 1000000, " + header[shape_start:]
    edited = edited[:-1].rstrip(" ") + " " * (len(header) - len(edited)) + "\n" if len(edited) <= len(header) else edited
    members[name] = edited.encode("latin1") + data[header_end:]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    _rewrite_npz(tmp_path / "m.json", tmp_path / "m.npz", buffer.getvalue())
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="m.npz: not a readable .npz archive .*declares"):
            minibnn.load(tmp_path / "m")
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
    finally:
        tracemalloc.stop()


def test_complex_or_integer_parameters_are_refused(tmp_path):
    model = _small_mlp()
    minibnn.save(model, tmp_path / "m")
    with np.load(tmp_path / "m.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["1.weight"] = arrays["1.weight"].astype(np.complex64)
    header = json.loads((tmp_path / "m.json").read_text())
    header["arrays"]["1.weight"]["dtype"] = "complex64"
    (tmp_path / "m.json").write_text(json.dumps(header))
    _rewrite_npz(tmp_path / "m.json", tmp_path / "m.npz", fuzzing.npz_bytes(arrays))
    with pytest.raises(ModelFileError, match="1.weight has dtype complex64"):
        minibnn.load(tmp_path / "m")


@pytest.mark.parametrize("field, value, message", [
    ("epoch", "3", "epoch must be an int"),
    ("epoch", -1, "epoch must be an int"),
    ("history", [{"loss": "low"}], "history must list"),
    ("rng", {"bit_generator": "MT19937"}, "not a PCG64 generator state"),
    ("schedule", {"t": 2.5}, "CosineLR.load_state_dict: t must be a count"),
    ("optimizer", {"type": "CombinedOptimizer", "step_count": 2, "optimizers": []}, "expected the states of 2"),
])
def test_a_crafted_checkpoint_is_refused_and_changes_nothing(tmp_path, field, value, message):
    _, _, files, _ = _checkpoint_files(tmp_path)
    folder = tmp_path / "ck"
    header = json.loads((folder / "checkpoint.json").read_text())
    header[field] = value
    (folder / "checkpoint.json").write_text(json.dumps(header))
    model, optimizer, schedule = _training_setup()
    before = (model.state_dict(), optimizer.state_dict(), schedule.state_dict(), minibnn.random.get_state())
    with pytest.raises(ModelFileError, match=message):
        train.load_checkpoint(folder, model, optimizer, schedule)
    after = (model.state_dict(), optimizer.state_dict(), schedule.state_dict(), minibnn.random.get_state())
    for a, b in zip(before[0].values(), after[0].values()):
        np.testing.assert_array_equal(a, b)
    assert before[1]["hyper"] == after[1]["hyper"] and before[2:] == after[2:]


def test_an_optimizer_slot_for_another_optimizer_is_refused(tmp_path):
    model, optimizer, _ = _training_setup()
    state = optimizer.state_dict()
    state["arrays"]["0.momentum_buffer"] = np.zeros(model.parameters()[0].shape, np.float32)
    with pytest.raises(ValueError, match="bad slot '0.momentum_buffer'"):
        optimizer.load_state_dict(state)


def test_a_gzip_bomb_is_refused_before_it_inflates(tmp_path):
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(bytes(64 << 20)))  # 64 MiB of zeros in ~64 KiB
    with pytest.raises(IDXError, match="decompresses to more than 1048576 bytes"):
        read_bytes(tmp_path / "bomb.gz", max_bytes=1 << 20)
    good = gzip.compress(b"\0\0\x08\x01\0\0\0\x02ab")
    (tmp_path / "long.gz").write_bytes(good + b"junk")
    with pytest.raises(IDXError, match="bytes after its end"):
        read_idx(tmp_path / "long.gz")
    (tmp_path / "short.gz").write_bytes(good[:-6])
    with pytest.raises(IDXError, match="truncated"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "ok.gz").write_bytes(good)
    np.testing.assert_array_equal(read_idx(tmp_path / "ok.gz"), np.frombuffer(b"ab", np.uint8))


def test_the_cli_reports_a_hostile_file_without_a_traceback(tmp_path, capsys):
    minibnn.save(_lenet(), tmp_path / "m")
    _edit_architecture(tmp_path / "m.json", lambda a: _layer(a, 12)["args"].update(in_features=-3))
    from minibnn.cli import main

    assert main(["summary", str(tmp_path / "m.json")]) != 0
    err = capsys.readouterr().err
    assert "m.json" in err and "in_features must be in [1, " in err and "Traceback" not in err
