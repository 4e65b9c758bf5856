"""Model files: save/load round trips, rebuilt from JSON alone, and every kind of bad file."""
from __future__ import annotations

import json

import numpy as np
import pytest

import minibnn
from minibnn import models
from minibnn.io import ModelFileError, split_path


def _outputs(model, x):
    model.eval()
    with minibnn.no_grad():
        return model(minibnn.Tensor(x)).numpy()


@pytest.mark.parametrize("build, shape", [
    (lambda: models.lenet(1, 1), (3, 1, 28, 28)),
    (lambda: models.lenet(2, 4), (2, 1, 28, 28)),
    (lambda: models.binary_mlp(hidden=(32, 16)), (2, 1, 28, 28)),
    (lambda: models.resnet18(in_channels=1, width=8), (2, 1, 16, 16)),
    (lambda: models.vgg_small(in_channels=1, width=8, image_size=16), (2, 1, 16, 16)),
])
def test_save_load_round_trip(tmp_path, build, shape):
    minibnn.manual_seed(0)
    model = build()
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    model.train()
    model(minibnn.Tensor(x))  # move the batch-norm running statistics off their defaults
    json_path = minibnn.save(model, tmp_path / "net")
    assert json_path == tmp_path / "net.json" and (tmp_path / "net.npz").exists()
    loaded = minibnn.load(tmp_path / "net")
    np.testing.assert_array_equal(_outputs(model, x), _outputs(loaded, x))
    assert loaded.to_config() == model.to_config()


def test_architecture_rebuilds_from_json_alone(tmp_path):
    model = models.lenet(1, 1)
    minibnn.save(model, tmp_path / "m")
    config = json.loads((tmp_path / "m.json").read_text())["architecture"]
    rebuilt = minibnn.nn.from_config(config)
    assert [n for n, _ in rebuilt.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert repr(rebuilt) == repr(model)


def test_accepts_either_suffix(tmp_path):
    assert split_path(tmp_path / "a.json") == split_path(tmp_path / "a.npz") == split_path(tmp_path / "a")


@pytest.fixture
def saved(tmp_path):
    minibnn.save(models.binary_mlp(hidden=(16, 8)), tmp_path / "m")
    return tmp_path / "m"


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"nothing\.json: file not found"):
        minibnn.load(tmp_path / "nothing")


def test_missing_npz(saved):
    saved.with_suffix(".npz").unlink()
    with pytest.raises(ModelFileError, match=r"m\.npz: file not found"):
        minibnn.load(saved)


def test_truncated_npz(saved):
    npz = saved.with_suffix(".npz")
    npz.write_bytes(npz.read_bytes()[:300])
    with pytest.raises(ModelFileError, match=r"m\.npz: contents do not match the checksum"):
        minibnn.load(saved)


def test_truncated_npz_without_checksum_is_still_refused(saved):
    npz, js = saved.with_suffix(".npz"), saved.with_suffix(".json")
    header = json.loads(js.read_text())
    del header["npz_sha256"]
    js.write_text(json.dumps(header))
    npz.write_bytes(npz.read_bytes()[:300])
    with pytest.raises(ModelFileError, match=r"m\.npz: not a readable \.npz"):
        minibnn.load(saved)


def test_mismatched_pair(tmp_path):
    minibnn.save(models.binary_mlp(hidden=(16, 8)), tmp_path / "a")
    minibnn.save(models.binary_mlp(hidden=(16, 8)), tmp_path / "b")
    (tmp_path / "a.npz").write_bytes((tmp_path / "b.npz").read_bytes())
    with pytest.raises(ModelFileError, match="checksum"):
        minibnn.load(tmp_path / "a")


def test_corrupt_json(saved):
    saved.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"m\.json: not valid JSON"):
        minibnn.load(saved)


def test_newer_version(saved):
    js = saved.with_suffix(".json")
    header = json.loads(js.read_text())
    header["version"] = 99
    js.write_text(json.dumps(header))
    with pytest.raises(ModelFileError, match="version 99 is newer"):
        minibnn.load(saved)


def test_unknown_layer_type(saved):
    js = saved.with_suffix(".json")
    header = json.loads(js.read_text())
    header["architecture"]["args"]["layers"][0]["module"]["type"] = "os.system"
    js.write_text(json.dumps(header))
    with pytest.raises(ModelFileError, match="unknown module type 'os.system'"):
        minibnn.load(saved)


def test_declared_shape_disagrees(saved):
    js = saved.with_suffix(".json")
    header = json.loads(js.read_text())
    first = next(iter(header["arrays"]))
    header["arrays"][first]["shape"] = [1, 2, 3]
    js.write_text(json.dumps(header))
    with pytest.raises(ModelFileError, match=f"array {first} is"):
        minibnn.load(saved)


def test_architecture_disagrees_with_arrays(saved):
    js = saved.with_suffix(".json")
    header = json.loads(js.read_text())
    dense = next(layer["module"] for layer in header["architecture"]["args"]["layers"]
                 if layer["module"]["type"] == "QDense")
    dense["args"]["out_features"] += 1
    js.write_text(json.dumps(header))
    with pytest.raises(ModelFileError, match=r"m\.json: .*shape"):
        minibnn.load(saved)


def test_pickled_object_array_is_refused(tmp_path, saved):
    npz = saved.with_suffix(".npz")
    js = saved.with_suffix(".json")
    np.savez(npz, evil=np.array([object()], dtype=object))
    header = json.loads(js.read_text())
    del header["npz_sha256"]
    js.write_text(json.dumps(header))
    with pytest.raises(ModelFileError, match="m.npz"):
        minibnn.load(saved)


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    model = models.binary_mlp(hidden=(16, 8))
    minibnn.save(model, tmp_path / "m")
    before = (tmp_path / "m.npz").read_bytes(), (tmp_path / "m.json").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        minibnn.save(models.binary_mlp(hidden=(16, 8)), tmp_path / "m")
    assert ((tmp_path / "m.npz").read_bytes(), (tmp_path / "m.json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.npz"]


def test_versioned_pair_survives_a_crash_between_its_two_writes(tmp_path, monkeypatch):
    from minibnn import io as mio

    first = models.binary_mlp(hidden=(16, 8))
    mio.write_pair(tmp_path / "ck", {"architecture": first.to_config()}, first.state_dict(), versioned=True)
    writes = []
    real = mio.atomic_write_bytes

    def crash_on_json(path, data):
        writes.append(path)
        if path.suffix == ".json":
            raise KeyboardInterrupt  # killed after the new .npz landed, before the .json
        real(path, data)

    monkeypatch.setattr(mio, "atomic_write_bytes", crash_on_json)
    second = models.binary_mlp(hidden=(16, 8))
    with pytest.raises(KeyboardInterrupt):
        mio.write_pair(tmp_path / "ck", {"architecture": second.to_config()}, second.state_dict(), versioned=True)
    monkeypatch.setattr(mio, "atomic_write_bytes", real)
    assert [p.suffix for p in writes] == [".npz", ".json"]
    header, arrays = mio.read_pair(tmp_path / "ck")  # the first pair, whole
    for name, value in first.state_dict().items():
        np.testing.assert_array_equal(arrays[name], value)
    # the next successful write removes the orphaned and the replaced .npz
    mio.write_pair(tmp_path / "ck", {"architecture": second.to_config()}, second.state_dict(), versioned=True)
    assert len(list(tmp_path.glob("ck.*.npz"))) == 1
    mio.read_pair(tmp_path / "ck")


def test_npz_name_must_stay_beside_the_json(saved):
    js = saved.with_suffix(".json")
    header = json.loads(js.read_text())
    header["npz"] = "../../etc/passwd"
    js.write_text(json.dumps(header))
    with pytest.raises(ModelFileError, match="bad .npz file name"):
        minibnn.load(saved)
