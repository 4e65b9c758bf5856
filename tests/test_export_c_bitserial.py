"""export_c of the k-bit bit-serial layers (BitSerialDense / BitSerialConv2d), compiled with the system C
compiler and compared with PackedModel.predict.

The exported program computes the integer dot D exactly (binary kernels on bit planes, the packed
model's offsets) and the epilogue's float32 steps in the packed model's order, so where only
bit-serial layers (and exact moves such as Flatten) lie between the input and the logits, the
logits are equal bit for bit. Models with float first / last layers sum those in another order than
BLAS: logits agree within TOLERANCE (relative to the largest logit) and the classes are equal.
"""
from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

import minibnn
from minibnn import backend, deploy, models, nn
from minibnn.deploy import ExportError, export_c
from minibnn.deploy import export_bitserial
from minibnn.deploy.export_c import Activation, Program
from c_program import CC, assert_logits, compile_export, run_export

pytestmark = [pytest.mark.skipif(CC is None, reason="no C compiler (cc, gcc or clang) on PATH"),
              pytest.mark.usefixtures("seeded")]
NATIVE = Path(__file__).resolve().parent.parent / "native"


def _settle(model, shape, seed=0):
    """Batch-norm statistics from a training-mode pass on random data, then scales of both signs and a
    constant channel (scale 0), so that thresholds rise and fall; eval mode."""
    rng = np.random.default_rng(seed)
    model.train()
    model(minibnn.Tensor(rng.normal(0.4, 0.8, size=(16, *shape)).astype(np.float32)))
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.weight.data[...] = rng.normal(0.3, 0.6, c)
            m.weight.data[c // 2] = 0.0
            m.bias.data[...] = rng.uniform(0.0, 0.6, c)
    return model.eval()


def _inputs(shape, n, seed=1, corners=True):
    """Random inputs, many in [0, 1], plus (``corners``) the quantizer's corner cases: ties, NaN,
    infinities, -0 (only where a bit-serial layer takes the input: float layers would spread NaN)."""
    x = np.random.default_rng(seed).normal(0.4, 0.6, size=(n, *shape)).astype(np.float32)
    if not corners:
        return x
    flat = x.reshape(n, -1)
    grid = (np.arange(flat.shape[1]) % 33 / 32).astype(np.float32)  # k/32: ties for 2^a - 1 = 1, 3, 15 ...
    flat[0] = grid
    flat[1, :8] = [np.nan, np.inf, -np.inf, -0.0, 1.0, 0.5, 1 / 6, 5 / 6]
    return x


def _build(tmp_path: Path, packed, name="net", flags=("-O2",)) -> Path:
    export_c(packed, tmp_path / "c", name=name)
    return compile_export(tmp_path / "c", name, flags)


def _convert(model, shape, name="net"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return deploy.convert(_settle(model, shape), input_shape=shape, name=name)


def check(tmp_path, model, shape, exact, samples=6, kinds=("bitserial",)):
    packed = _convert(model, shape)
    assert any(op.kind.startswith(kinds) for _, op in packed.layers())
    exe = _build(tmp_path, packed)
    x = _inputs(shape, samples, corners=exact)
    want = backend.to_numpy(packed.predict(x))
    assert_logits(run_export(exe, x, want.shape[1]), want, exact)
    return packed


def _planes_emitted(packed) -> int:
    return sum(getattr(op, "planes_out", 0) > 0 for _, op in packed.layers())


# ---------------------------------------------------------------- model zoo (float first / last layers)

@pytest.mark.parametrize("act_bit, weight_bit", [(2, 2), (4, 1)])
def test_lenet(tmp_path, act_bit, weight_bit):
    packed = check(tmp_path, models.lenet(act_bit, weight_bit), (1, 28, 28), exact=False)
    assert {"bitserial_conv2d", "bitserial_dense"} <= {op.kind for _, op in packed.layers()}


def test_binary_mlp_with_planes_flowing_between_layers(tmp_path):
    packed = check(tmp_path, models.binary_mlp(in_features=100, hidden=(96, 70, 33), act_bit=2, weight_bit=2),
                   (1, 10, 10), exact=False)
    assert _planes_emitted(packed) >= 1


# ---------------------------------------------------------------- exact: bit-serial layers only

@pytest.mark.parametrize("pad_value", [0, 1, -1])
def test_conv_chain_with_planes_all_pad_values_and_stride_2_is_exact(tmp_path, pad_value):
    """Quantize + pack from the input, three convolutions passing bit planes (rising, falling and
    constant channels), 70 channels (two words), stride 2, then a float output into a k-bit dense."""
    q = dict(pad_value=pad_value)
    model = nn.Sequential(
        nn.QConv2d(3, 16, 3, padding=1, act_bit=2, weight_bit=3, **q), nn.BatchNorm2d(16),       # -> 3 planes
        nn.QConv2d(16, 70, 3, stride=2, padding=1, act_bit=3, weight_bit=2, **q), nn.BatchNorm2d(70),  # -> 2
        nn.QConv2d(70, 12, (3, 2), stride=(1, 2), padding=(1, 2), act_bit=2, weight_bit=1, scaling="channel",
                   bias=True, **q), nn.BatchNorm2d(12),                                          # float, hwc
        nn.Flatten(), nn.QDense(12 * 5 * 4, 10, act_bit=4, weight_bit=2, bias=True))
    packed = check(tmp_path, model, (3, 9, 7), exact=True)
    assert _planes_emitted(packed) == 2


def test_dense_chain_with_planes_scaling_and_bias_is_exact(tmp_path):
    model = nn.Sequential(nn.Flatten(),
                          nn.QDense(150, 130, act_bit=3, weight_bit=2, scaling="channel"), nn.BatchNorm1d(130),
                          nn.QDense(130, 40, act_bit=4, weight_bit=5, bias=True), nn.BatchNorm1d(40),
                          nn.QDense(40, 9, act_bit=2, weight_bit=8, scaling="channel", bias=True))
    packed = check(tmp_path, model, (6, 5, 5), exact=True)
    assert _planes_emitted(packed) == 2


def test_wide_and_deep_bits_one_call_per_plane_is_exact(tmp_path, monkeypatch):
    """8-bit activations, 8-bit weights, the terms of each plane in a call of its own (BATCH_BYTES 0),
    a bit-serial convolution last (its float output, channels last, flattened to the logits)."""
    monkeypatch.setattr(export_bitserial, "BATCH_BYTES", 0)
    model = nn.Sequential(nn.QConv2d(5, 6, 3, padding=1, act_bit=8, weight_bit=8, pad_value=-1), nn.BatchNorm2d(6),
                          nn.QConv2d(6, 7, 2, stride=2, act_bit=2, weight_bit=4, pad_value=1), nn.Flatten())
    check(tmp_path, model, (5, 6, 6), exact=True)


def test_float_layers_around_bit_serial_convolutions(tmp_path):
    """Float conv in CHW and HWC layouts before k-bit layers, pooling and a float classifier after."""
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3), nn.BatchNorm2d(8),                                 # float, hwc -> quantized, packed
        nn.QConv2d(8, 10, 3, padding=1, act_bit=3, weight_bit=3, pad_value=1), nn.BatchNorm2d(10), nn.ReLU(),
        nn.MaxPool2d(2),                                                       # chw -> quantized, packed
        nn.QConv2d(10, 9, 1, act_bit=2, weight_bit=2), nn.GlobalAvgPool2d(), nn.Dense(9, 5))
    check(tmp_path, model, (2, 10, 10), exact=False)


def test_the_scratch_sized_at_export_is_enough_for_the_static_build(tmp_path):
    """Built with MBK_STATIC_SCRATCH the kernels take their scratch from the program's static buffer,
    sized with mbk_scratch_bytes of each call: too small would fail the call (a nonzero return)."""
    model = nn.Sequential(nn.QConv2d(3, 70, 3, stride=2, padding=1, act_bit=4, weight_bit=3, pad_value=-1),
                          nn.BatchNorm2d(70), nn.QConv2d(70, 30, 3, padding=1, act_bit=3, weight_bit=2), nn.Flatten(),
                          nn.QDense(30 * 5 * 5, 4, act_bit=2, weight_bit=2))
    packed = _convert(model, (3, 10, 10))
    exe = _build(tmp_path, packed, flags=("-O2", "-DMBK_STATIC_SCRATCH"))
    x = _inputs((3, 10, 10), 3)
    np.testing.assert_array_equal(run_export(exe, x, 4), backend.to_numpy(packed.predict(x)))


def test_the_program_is_clean_under_the_sanitizers(tmp_path):
    model = nn.Sequential(nn.QConv2d(3, 65, 3, stride=2, padding=1, act_bit=3, weight_bit=2, pad_value=-1),
                          nn.BatchNorm2d(65), nn.QConv2d(65, 4, 3, act_bit=2, weight_bit=2), nn.Flatten(),
                          nn.QDense(4 * 3 * 3, 3, act_bit=2, weight_bit=3))
    packed = _convert(model, (3, 10, 10))
    try:
        exe = _build(tmp_path, packed, flags=("-O1", "-g", "-fsanitize=address,undefined",
                                              "-fno-sanitize-recover=all"))
    except AssertionError as exc:
        pytest.skip(f"the compiler cannot build with the sanitizers here: {str(exc)[:200]}")
    x = _inputs((3, 10, 10), 3)
    np.testing.assert_array_equal(run_export(exe, x, 3), backend.to_numpy(packed.predict(x)))


def test_kbit_sources_compile_warning_free():
    for std in ("-std=c11", "-std=c99"):
        result = subprocess.run([CC, std, "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-c",
                                 str(NATIVE / "minibnn_kbit.c"), "-o", os.devnull], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- errors name the layer

def _op(kind="conv"):
    if kind == "conv":
        model = nn.Sequential(nn.QConv2d(4, 5, 3, act_bit=2, weight_bit=2), nn.Flatten())
        packed = _convert(model, (4, 5, 5))
    else:
        packed = _convert(nn.Sequential(nn.QDense(12, 5, act_bit=3, weight_bit=2)), (12,))
    return packed.layers()[0][1]


@pytest.mark.parametrize("kind, x, message", [
    ("conv", Activation(-1, (5, 5, 1), bits=4), "receives packed 1-bit activations"),
    ("conv", Activation(-1, (3, 5, 5)), "expects 4 input channels"),
    ("conv", Activation(-1, (64,)), r"expects \(C, H, W\) input"),
    ("conv", Activation(-1, (4, 2, 2)), "input 2x2 is smaller than its kernel 3x3"),
    ("conv", Activation(-1, (3, 5, 5, 1), bits=4, planes=3), "expects 2-bit planes of 4 channels"),
    ("dense", Activation(-1, (13,)), "expects 12 input features"),
    ("dense", Activation(-1, (2, 1), bits=12, planes=2), "expects 3-bit planes of 12 channels"),
])
def test_inputs_the_layer_cannot_take_are_errors_naming_it(kind, x, message):
    with pytest.raises(ExportError, match=rf"layer lay\.er \(bitserial_\w+\): {message}"):
        export_bitserial.emit_bitserial(Program("m"), _op(kind), x, "lay.er")


def test_planes_into_a_float_layer_are_refused(tmp_path):
    """A planes tensor (bits set) reaching a float layer is an error, never a misread buffer."""
    p = Program("m")
    y = export_bitserial.emit_bitserial(p, _op("dense"), Activation(-1, (12,)), "0")
    assert y.planes == 0 and y.shape == (5,)
    planes = Activation(0, (2, 1), bits=12, planes=2)
    from minibnn.deploy.export_c import _float_in
    with pytest.raises(ExportError, match="receives packed bits"):
        _float_in(p, planes, "next")


def test_a_non_finite_epilogue_is_an_error_naming_the_layer(tmp_path):
    op = _op("dense")
    op.epilogue = op.epilogue._replace(alpha=np.array([1, 2, np.inf, 1, 1], np.float32))
    with pytest.raises(ExportError, match=r"layer lay\.er \(bitserial_dense\): alpha holds NaN or infinite"):
        export_bitserial.emit_bitserial(Program("m"), op, Activation(-1, (12,)), "lay.er")
