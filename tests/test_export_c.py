"""minibnn.deploy.export_c: the exported C program, compiled with the system compiler, against PackedModel.predict.

Binary layers, batch norm, pooling, quantization and the epilogues compute the same float32
operations in the same order as the packed model, so they agree bit for bit; the float
convolutions and dense layers sum in another order than BLAS, so logits agree within TOLERANCE
(relative to the largest logit) and the predicted classes are the same.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import minibnn
from minibnn import backend, deploy, models
from minibnn import nn
from minibnn.deploy import ExportError, export_c
from c_program import CC, TOLERANCE, assert_logits, build_main, compile_export, run_export, run_main

pytestmark = [pytest.mark.skipif(CC is None, reason="no C compiler (cc, gcc or clang) on PATH"),
              pytest.mark.usefixtures("seeded")]


def _settled(model, shape, seed=0):
    """The model with batch-norm statistics moved off their defaults, in eval mode."""
    model.train()
    model(minibnn.Tensor(np.random.default_rng(seed).normal(size=(16, *shape)).astype(np.float32)))
    return model.eval()


def check_export(tmp_path: Path, model, shape, name="net", samples=8, exact=False):
    packed = deploy.convert(_settled(model, shape), input_shape=shape, name=name)
    report = export_c(packed, tmp_path / "c")
    exe = compile_export(tmp_path / "c", name)
    x = np.random.default_rng(1).normal(size=(samples, *shape)).astype(np.float32)
    want = backend.to_numpy(packed.predict(x))
    assert_logits(run_export(exe, x, want.shape[1]), want, exact)
    return packed, report


@pytest.mark.parametrize("act_bit, weight_bit", [(1, 1), (1, 4), (16, 16)])
def test_lenet(tmp_path, act_bit, weight_bit):
    check_export(tmp_path, models.lenet(act_bit, weight_bit), (1, 28, 28))


@pytest.mark.parametrize("shortcut", ["binary", "float"])
def test_resnet18_small(tmp_path, shortcut):
    check_export(tmp_path, models.resnet18(in_channels=3, width=8, shortcut=shortcut), (3, 16, 16))


def test_resnet18_full_width(tmp_path):
    _, report = check_export(tmp_path, models.resnet18(in_channels=3), (3, 32, 32), samples=3)
    assert report.constant_bytes < 1.6e6  # 1 bit per binary weight: about 30x smaller than float32


def test_binary_mlp_with_bits_flowing_between_layers(tmp_path):
    packed, _ = check_export(tmp_path, models.binary_mlp(hidden=(96, 70, 33)), (1, 28, 28))
    assert sum(op.kind == "binary_dense" and op.emits_bits for _, op in packed.layers()) >= 1


@pytest.mark.parametrize("pad_value", [0, 1, -1])
@pytest.mark.parametrize("scaling, bias", [(None, False), ("channel", True)])
def test_binary_convolutions_all_pad_values_strides_and_epilogues(tmp_path, pad_value, scaling, bias):
    q = dict(pad_value=pad_value, scaling=scaling, bias=bias)
    model = nn.Sequential(
        nn.Conv2d(3, 20, 3, padding=1), nn.BatchNorm2d(20),
        nn.QConv2d(20, 70, 3, stride=2, padding=1, **q), nn.BatchNorm2d(70),   # -> bits (threshold)
        nn.QConv2d(70, 65, (3, 2), stride=(1, 2), padding=(2, 1), **q),         # bits in, float out
        nn.BatchNorm2d(65), nn.ReLU(), nn.MaxPool2d(2),
        nn.QConv2d(65, 16, 1, **q), nn.HardTanh(),
        nn.GlobalAvgPool2d(), nn.Dense(16, 7))
    packed, _ = check_export(tmp_path, model, (3, 13, 15))
    assert {op.kind for _, op in packed.layers()} >= {"binary_conv2d", "folded", "float"}
    assert any(op.kind == "binary_conv2d" and op.emits_bits for _, op in packed.layers())


def test_float_layers_quantized_activations_and_mixed_layers(tmp_path):
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, stride=1, padding=2, dilation=2, bias=False), nn.Tanh(), nn.AvgPool2d(3, stride=2, padding=1),
        nn.QActivation(3), nn.Dropout(0.3), nn.BatchNorm2d(8),
        nn.QConv2d(8, 12, 3, act_bit=1, weight_bit=3, padding=1, pad_value=-1, scaling="channel", bias=True),
        nn.Flatten(), nn.BatchNorm1d(12 * 6 * 5), nn.QDense(12 * 6 * 5, 9, act_bit=5, weight_bit=32),
        nn.Identity(), nn.Dense(9, 4))
    packed, _ = check_export(tmp_path, model, (2, 11, 9))
    assert "quantized" in {op.kind for _, op in packed.layers()}


def test_an_output_of_binary_layers_only_is_bit_exact(tmp_path):
    """No float layer sums in another order here: the logits are the packed model's, bit for bit."""
    model = nn.Sequential(nn.QConv2d(5, 9, 3, padding=1, pad_value=1, scaling="channel", bias=True),
                          nn.BatchNorm2d(9), nn.Flatten(),
                          nn.QDense(9 * 6 * 6, 6, bias=True, scaling="channel"), nn.BatchNorm1d(6))
    check_export(tmp_path, model, (5, 6, 6), exact=True)


def test_static_workspace_reuses_memory(tmp_path):
    _, report = check_export(tmp_path, models.resnet18(in_channels=3, width=8), (3, 16, 16), samples=1)
    every_tensor = 8 * 16 * 16 * 4 * 40  # what 40 activations of the first stage alone would take
    assert 0 < report.workspace_bytes < every_tensor


def test_the_program_is_clean_under_the_sanitizers(tmp_path):
    packed = deploy.convert(_settled(models.resnet18(in_channels=1, width=8), (1, 12, 12)), input_shape=(1, 12, 12),
                            name="small")
    export_c(packed, tmp_path / "c")
    try:
        exe = compile_export(tmp_path / "c", "small", ("-O1", "-g", "-fsanitize=address,undefined",
                                                       "-fno-sanitize-recover=all"))
    except AssertionError as exc:
        pytest.skip(f"the compiler cannot build with the sanitizers here: {str(exc)[:200]}")
    x = np.random.default_rng(2).normal(size=(3, 1, 12, 12)).astype(np.float32)
    want = backend.to_numpy(packed.predict(x))
    np.testing.assert_allclose(run_export(exe, x, want.shape[1]), want, rtol=0, atol=TOLERANCE * np.abs(want).max())


def test_the_exported_model_allocates_nothing_at_run_time(tmp_path):
    """Compiled as the README says, the model's objects (all but main.c) reference no allocator: the
    kernels take their scratch from the static buffer (minibnn_config.h turns MBK_STATIC_SCRATCH on)."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not on PATH")
    packed = deploy.convert(_settled(models.resnet18(in_channels=3, width=8), (3, 16, 16)), input_shape=(3, 16, 16),
                            name="net")
    export_c(packed, tmp_path / "c")
    assert "MBK_STATIC_SCRATCH 1" in (tmp_path / "c" / "minibnn_config.h").read_text()
    undefined = set()
    for source in sorted((tmp_path / "c").glob("*.c")):
        if source.name == "main.c":
            continue
        obj = tmp_path / (source.stem + ".o")
        subprocess.run([CC, "-O2", "-std=c11", "-c", str(source), "-o", str(obj)], check=True, cwd=tmp_path / "c")
        undefined |= set(subprocess.run([nm, "-u", str(obj)], capture_output=True, text=True, check=True).stdout.split())
    assert not {"malloc", "calloc", "realloc", "free", "aligned_alloc", "posix_memalign"} & undefined, undefined
    x = np.random.default_rng(4).normal(size=(2, 3, 16, 16)).astype(np.float32)  # and it still computes
    want = backend.to_numpy(packed.predict(x))
    np.testing.assert_allclose(run_export(compile_export(tmp_path / "c", "net"), x, want.shape[1]), want, rtol=0,
                               atol=TOLERANCE * np.abs(want).max())


# ---------------------------------------------------------------- errors, and nothing half-written

def _packed_mlp():
    return deploy.convert(_settled(models.binary_mlp(hidden=(16, 8)), (1, 28, 28)), input_shape=(1, 28, 28),
                          name="mlp")


def test_an_output_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not an empty folder"):
        export_c(_packed_mlp(), tmp_path / "c")
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["notes.txt"]
    export_c(_packed_mlp(), tmp_path / "empty")  # a new folder is created
    assert {"main.c", "mlp.c", "mlp.h", "minibnn_config.h", "minibnn_kernels.c"} <= {p.name for p in (tmp_path / "empty").iterdir()}


class Twice(nn.Module):
    """A container whose forward the exporter cannot know."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Dense(4, 4)

    def forward(self, x):
        return self.inner(self.inner(x))


@pytest.mark.parametrize("model, shape, message", [
    (nn.Sequential(nn.Flatten(), Twice()), (4,), r"layers.1|1: the exporter does not know the container Twice"),
    (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten()), (4, 5, 5), "grouped convolutions"),
    (nn.Sequential(nn.Conv2d(2, 3, 3)), (2, 5, 5), "must end in a vector of float logits"),
])
def test_what_the_exporter_cannot_express_is_an_error_naming_the_layer(tmp_path, model, shape, message):
    packed = deploy.convert(model.eval(), input_shape=shape, name="odd")
    with pytest.raises(ExportError, match=message):
        export_c(packed, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_an_unknown_input_shape_is_an_error(tmp_path):
    packed = _packed_mlp()
    packed.input_shape = None
    with pytest.raises(ExportError, match="input shape is unknown"):
        export_c(packed, tmp_path / "c")


def test_cli_export_c_and_the_readme_build_command(tmp_path, capsys):
    from minibnn.cli import main

    _packed_mlp().save(tmp_path / "binarized_mlp")
    assert main(["export-c", str(tmp_path / "binarized_mlp.json"), "--out", str(tmp_path / "c")]) == 0
    printed = capsys.readouterr().out
    assert "static workspace" in printed and "cc -O2 -std=c11" in printed
    build_main([CC, "-O2", "-std=c11"], tmp_path / "c", tmp_path / "app")
    x = np.random.default_rng(3).random((1, 28, 28)).astype(np.float32)
    (tmp_path / "x.f32").write_bytes(x.tobytes())
    cls, got, _ = run_main([], tmp_path / "app", tmp_path / "x.f32")
    want = backend.to_numpy(deploy.load(tmp_path / "binarized_mlp").predict(x[None]))[0]
    assert cls == int(want.argmax())
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert main(["export-c", str(tmp_path / "binarized_mlp.json"), "--out", str(tmp_path / "c")]) == 2  # not empty


def test_main_reads_a_pgm_normalised_as_in_training(tmp_path):
    from minibnn import data
    from minibnn.cli import main

    _packed_mlp().save(tmp_path / "binarized_mlp")
    assert main(["export-c", str(tmp_path / "binarized_mlp.json"), "--out", str(tmp_path / "c")]) == 0  # mnist
    build_main([CC, "-O2", "-std=c11"], tmp_path / "c", tmp_path / "app")
    images, _ = data.load_mnist("test")
    pixels = np.rint(images[:3] * 255).astype(np.uint8)  # the shipped test images, as 8-bit pixels again
    packed = deploy.load(tmp_path / "binarized_mlp")
    for i, image in enumerate(pixels):
        pgm = tmp_path / f"d{i}.pgm"
        pgm.write_bytes(b"P5\n28 28\n255\n" + image.tobytes())
        cls, got, _ = run_main([], tmp_path / "app", pgm)
        x = data.normalize(image.astype(np.float32) / np.float32(255), data.MNIST_MEAN, data.MNIST_STD)
        want = backend.to_numpy(packed.predict(x[None]))[0]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        assert cls == int(want.argmax())


@pytest.mark.slow
def test_trained_lenet_classes_equal_on_the_mnist_test_set(tmp_path):
    from minibnn import data, optim, train

    x_train, y_train = data.load_mnist("train")
    x_test, y_test = data.load_mnist("test")
    model = models.lenet(1, 1)
    opt = optim.make_optimizer("adam", model, 1e-3)
    train.fit(model, data.DataLoader(x_train[:20000], y_train[:20000], 128, shuffle=True, seed=0), opt, 1,
              progress=False, verbose=False)
    packed = deploy.convert(model.eval(), input_shape=(1, 28, 28), name="lenet")
    export_c(packed, tmp_path / "c")
    got = run_export(compile_export(tmp_path / "c", "lenet"), x_test, 10)
    want = backend.to_numpy(packed.predict(x_test, batch_size=1000))
    assert (got.argmax(1) == want.argmax(1)).all()
    assert (want.argmax(1) == y_test).mean() > 0.9
