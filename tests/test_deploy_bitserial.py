"""Packed k-bit layers (issue 13): the converter stores act_bit 2..8 x weight_bit 1..8 Q-layers as
weight bit planes and runs them with the exact bit-serial popcount arithmetic.

References: the integer dot of the levels computed here with int64 NumPy (exact), and the float
simulation (``model.eval()``), whose k-bit layers also compute the exact integer sums
(functional.kbit_linear / kbit_conv2d) and scale them the same way: the packed logits equal it
bit for bit.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import minibnn
from minibnn import data, deploy, models, nn, optim, train
from minibnn.deploy.ops import BitSerialConv2d, BitSerialDense
from minibnn.io import ModelFileError

from test_deploy import BACKENDS as CPU
from test_deploy import _edit_header, randomize_stats, simulate

PAIRS = [(2, 1), (2, 2), (3, 5), (4, 4), (8, 8), (2, 8), (8, 1)]


def _rng_input(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.4, 0.6, size=shape).astype(np.float32)  # many in [0, 1]


def _convert(model, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return deploy.convert(model, shape)


@pytest.mark.parametrize("name", CPU)
@pytest.mark.parametrize("a, b", PAIRS)
def test_one_dense_layer_equals_the_integer_dot_of_the_levels(name, a, b):
    """packed output == dot / ((2^a - 1)(2^b - 1)), the dot computed here in int64 from the levels."""
    minibnn.manual_seed(a * 10 + b)
    layer = nn.QDense(130, 70, act_bit=a, weight_bit=b)
    x = _rng_input((5, 130))
    with minibnn.using(name):
        packed = _convert(nn.Sequential(layer), (130,))
        got = packed.predict(x)
    la, lb = 2**a - 1, 2**b - 1
    q = np.rint(np.clip(x, 0, 1) * la).astype(np.int64)
    wq = layer.quantized_weight().numpy().astype(np.float64)
    r = np.rint((wq + 1) / 2 * lb).astype(np.int64)
    dot = q @ (2 * r - lb).T
    assert isinstance(dict(packed.layers())["0"], BitSerialDense)
    np.testing.assert_array_equal(got, (dot.astype(np.float32) / np.float32(la * lb)))


@pytest.mark.parametrize("name", CPU)
@pytest.mark.parametrize("a, b", [(2, 1), (2, 2), (4, 4), (3, 7)])
@pytest.mark.parametrize("pad_value", [0, 1, -1])
def test_conv_layers_with_every_pad_value_scaling_and_bias(name, a, b, pad_value):
    minibnn.manual_seed(1)
    model = nn.Sequential(
        nn.QConv2d(3, 70, 3, stride=1, padding=1, pad_value=pad_value, act_bit=a, weight_bit=b, bias=True,
                   scaling="channel"),
        nn.BatchNorm2d(70),
        nn.QConv2d(70, 9, (3, 2), stride=2, padding=(2, 1), pad_value=pad_value, act_bit=a, weight_bit=b),
        nn.Flatten())
    randomize_stats(model, tie_channels=False)
    x = _rng_input((2, 3, 9, 8))
    with minibnn.using(name):
        packed = _convert(model, (3, 9, 8))
        got = packed.predict(x)
    assert [op.kind for _, op in packed.layers()].count("bitserial_conv2d") == 2
    np.testing.assert_array_equal(got, simulate(model, x))


@pytest.mark.parametrize("name", CPU)
@pytest.mark.parametrize("a, b", [(2, 1), (2, 2), (4, 4), (8, 8)])
def test_packed_k_bit_lenet_and_resnet18_give_the_simulation_s_logits(name, a, b):
    for model, shape in ((models.lenet(act_bit=a, weight_bit=b), (1, 28, 28)),
                         (models.resnet18(act_bit=a, weight_bit=b, width=16), (3, 32, 32))):
        randomize_stats(model)
        x = _rng_input((3, *shape), seed=a + b)
        with minibnn.using(name):
            got = _convert(model, shape).predict(x)
        np.testing.assert_array_equal(got, simulate(model, x))


def test_planes_store_weight_bit_bits_per_weight_and_sizes(tmp_path):
    """ResNet-18's packed size shrinks with the bits (word padding aside); the file round-trips exactly."""
    sizes = {}
    for a, b in [(2, 1), (2, 2), (4, 4)]:
        model = models.resnet18(act_bit=a, weight_bit=b)
        packed = _convert(model, None)
        ops = [op for _, op in packed.layers() if isinstance(op, (BitSerialConv2d, BitSerialDense))]
        assert ops and all(op.weight_planes.dtype == np.uint64 and op.weight_bit == b for op in ops)
        float_bytes = sum(4 * p.data.size for p in model.parameters()) + sum(
            4 * buf.size for _, buf in model.named_buffers())
        sizes[(a, b)] = float_bytes / packed.nbytes
    assert sizes[(2, 1)] > 25 and sizes[(2, 2)] > 14 and sizes[(4, 4)] > 7, sizes
    model = models.lenet(act_bit=2, weight_bit=2)
    randomize_stats(model)
    packed = _convert(model, (1, 28, 28))
    packed.save(tmp_path / "binarized_lenet2")
    loaded = deploy.load(tmp_path / "binarized_lenet2")
    x = _rng_input((4, 1, 28, 28))
    np.testing.assert_array_equal(loaded.predict(x), packed.predict(x))


@pytest.mark.parametrize("edit, message", [
    (lambda h: h["architecture"]["args"]["layers"][4]["module"]["args"].update(weight_bit=3),
     r"layer 4 \(bitserial_conv2d\) does not fit the architecture: weight_bit 2, the architecture says 3"),
    (lambda h: h["layers"]["4"]["config"].update(act_bit=9), r"act_bit must be in \[2, 8\]"),
    (lambda h: h["layers"]["9"]["config"].update(in_features=1000), r"weight_planes has 4 words per row, 1000 inputs need 16"),
])
def test_edited_k_bit_files_are_refused(tmp_path, edit, message):
    packed = _convert(models.lenet(act_bit=2, weight_bit=2, channels=(8, 16)), (1, 28, 28))
    packed.save(tmp_path / "m")
    _edit_header(tmp_path / "m", edit)
    with pytest.raises(ModelFileError, match=message):
        deploy.load(tmp_path / "m")


def test_summary_says_how_each_q_layer_is_stored():
    out = []
    minibnn.summary(models.lenet(act_bit=2, weight_bit=2), (1, 28, 28), print_fn=out.append)
    assert "2-bit planes, 2.00 bits/weight" in out[0]  # the dense layer: 1024 inputs fill whole words
    out.clear()
    minibnn.summary(models.lenet(act_bit=1, weight_bit=4), (1, 28, 28), print_fn=out.append)
    assert "no packed path for act_bit 1 with weight_bit 4" in out[0]
    out.clear()
    minibnn.summary(models.lenet(act_bit=16, weight_bit=16), (1, 28, 28), print_fn=out.append)
    assert "no packed path for act_bit 16" in out[0]


@pytest.mark.slow
def test_trained_2_bit_lenet_gives_the_same_classes_on_mnist():
    """A 2-bit LeNet trained for one epoch on 20,000 images: packed classes == simulated classes on
    all 10,000 test images."""
    x, y = data.load_mnist("train")
    xt, yt = data.load_mnist("test")
    norm = lambda a: data.normalize(a, data.MNIST_MEAN, data.MNIST_STD)  # noqa: E731
    minibnn.manual_seed(0)
    model = models.lenet(act_bit=2, weight_bit=2)
    opt = optim.Adam(model.parameters(), lr=2e-3)
    train.fit(model, data.DataLoader(norm(x[:20000]), y[:20000], 128, shuffle=True, seed=0), opt, 1,
              progress=False, verbose=False)
    packed = deploy.convert(model, (1, 28, 28))
    got = packed.predict(norm(xt), batch_size=500).argmax(axis=1)
    want = train.predict(model, norm(xt), batch_size=500)
    assert (got == want).all(), f"{int((got != want).sum())} of 10,000 classes differ"
    assert (got == yt).mean() > 0.95


# ---------------------------------------------------------------- folding into the next layer's planes

@pytest.mark.parametrize("name", CPU)
@pytest.mark.parametrize("a, b", [(2, 1), (2, 2), (3, 2), (4, 4), (6, 3)])
def test_k_bit_chains_fold_batch_norm_into_the_next_layer_s_planes(name, a, b):
    """QDense -> BN -> QDense (binary_mlp) and QConv -> BN -> QConv (vgg_small): the first layer emits the
    second's bit planes through integer thresholds (up to 4 bits; wider inputs get a float output);
    the logits equal the simulation's bit for bit."""
    for model, shape in ((models.binary_mlp(hidden=(64, 96, 80, 70), act_bit=a, weight_bit=b), (1, 28, 28)),
                         (models.vgg_small(act_bit=a, weight_bit=b, width=8, image_size=16), (3, 16, 16))):
        randomize_stats(model)  # negative scales (falling levels) and integer means included
        x = _rng_input((5, *shape), seed=a * b)
        with minibnn.using(name):
            packed = _convert(model, shape)
            got = packed.predict(x)
        planes = [op.planes_out for _, op in packed.layers() if isinstance(op, (BitSerialDense, BitSerialConv2d))]
        assert planes.count(a if a <= 4 else 0) >= 2 and planes.count(0) >= 1, planes
        np.testing.assert_array_equal(got, simulate(model, x))


@pytest.mark.parametrize("a, b, top", [(2, 1, 3), (2, 2, 1), (3, 3, 7), (4, 2, 15)])
def test_level_thresholds_give_every_dot_its_level_ties_included(a, b, top):
    """Every possible dot of a small layer, every kind of channel (rising, falling, constant, on ties):
    levels_from_thresholds == the next layer's level of the float32 epilogue, counted directly."""
    from minibnn.backend import bitserial
    from minibnn.backend import numpy_ref as ref
    from minibnn.deploy.convert import kbit_values, level_thresholds, next_levels
    from minibnn.deploy.ops import KbitEpilogue

    k, o = 5, 9
    bound = k * (2**a - 1) * (2**b - 1)
    rng = np.random.default_rng(top)
    scale = rng.normal(0, 0.6, o).astype(np.float32)
    scale[0], scale[1] = 0, -abs(scale[1])                    # constant and falling channels
    shift = rng.normal(0.5, 0.5, o).astype(np.float32)
    bias = rng.normal(0, 0.2, o).astype(np.float32)
    scale[2], shift[2], bias[2] = 0.3, 0.5, 0                 # dot 0 gives exactly 0.5: top / 2 is a .5 tie
    e = KbitEpilogue(bias=bias, post_scale=scale, post_shift=shift)
    thresholds, rising = level_thresholds(e, a, b, k, top, o)
    dots = np.arange(-bound, bound + 1, dtype=np.int64)
    want = next_levels(kbit_values(e, np.broadcast_to(dots, (o, dots.size)), a, b), top).T  # (dots, O)
    got = bitserial.levels_from_thresholds(np.ascontiguousarray(np.broadcast_to(dots[:, None], (dots.size, o)),
                                                                dtype=np.int32),
                                           thresholds, rising, table=ref)
    np.testing.assert_array_equal(got, want)
    scaled = np.clip(kbit_values(e, dots[None, :], a, b)[2], 0, 1) * np.float32(top)
    assert np.any(scaled - np.floor(scaled) == 0.5)  # channel 2 has exact .5 ties of the rounding: covered above
    assert not rising[0] and not rising[1] and rising[2]
    e_nan = e._replace(post_scale=np.where(np.arange(o) == 3, np.nan, scale).astype(np.float32))
    assert level_thresholds(e_nan, a, b, k, top, o) is None  # not finite: no fold


@pytest.mark.parametrize("a, b", [(2, 1), (4, 3), (8, 8)])
def test_k_bit_layers_backward_is_the_straight_through_float_one(a, b):
    """kbit_linear / kbit_conv2d give linear's / conv2d's gradients on the same quantized tensors."""
    from minibnn import functional as F
    from minibnn import quantize

    rng = np.random.default_rng(a + b)
    cases = [((5, 70), (9, 70), lambda x, w: F.kbit_linear(x, w, a, b), lambda x, w: F.linear(x, w)),
             ((3, 7, 5, 4), (6, 7, 3, 2), lambda x, w: F.kbit_conv2d(x, w, a, b, 1, 1, -1),
              lambda x, w: F.conv2d(F.pad2d(x, 1, -1), w))]
    for x_shape, w_shape, kbit, float_op in cases:
        x0 = rng.uniform(-0.5, 1.5, x_shape).astype(np.float32)
        w0 = rng.normal(0, 1, w_shape).astype(np.float32)
        grads = []
        for fn in (kbit, float_op):
            x, w = minibnn.Tensor(x0, requires_grad=True), minibnn.Tensor(w0, requires_grad=True)
            y = fn(quantize.quantize_activation(x, a), quantize.quantize_weight(w, b))
            y.backward(np.ones(y.shape, np.float32))
            grads.append((y.numpy(), x.grad, w.grad))
        np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)  # the float value, rounded
        np.testing.assert_array_equal(grads[0][1], grads[1][1])
        np.testing.assert_array_equal(grads[0][2], grads[1][2])


def test_version_1_k_bit_files_load_save_and_load_again(tmp_path, monkeypatch):
    """A packed file written before bit planes (k-bit layers as float32 weights, batch norms unfolded)."""
    model = models.lenet(act_bit=2, weight_bit=2, channels=(8, 16))
    randomize_stats(model)
    x = _rng_input((3, 1, 28, 28))
    with monkeypatch.context() as m:  # the converter of format version 1: no bit-serial path
        m.setattr(nn.QDense, "is_bitserial", property(lambda self: False))
        m.setattr(nn.QConv2d, "is_bitserial", property(lambda self: False))
        old = _convert(model, None)
        old.save(tmp_path / "v1")
        want = old.predict(x)
    assert {op.kind for _, op in old.layers()} >= {"quantized"}
    loaded = deploy.load(tmp_path / "v1")
    loaded.save(tmp_path / "again")
    again = deploy.load(tmp_path / "again")
    np.testing.assert_array_equal(again.predict(x), want)
    out = []
    minibnn.summary(again, (1, 28, 28), print_fn=out.append)
    assert "float32 weights (a packed file of format version 1)" in out[0]


def test_folded_k_bit_model_round_trips_and_version_1_files_still_load(tmp_path):
    import json

    model = models.binary_mlp(hidden=(64, 96, 70), act_bit=2, weight_bit=2)
    randomize_stats(model)
    packed = _convert(model, (1, 28, 28))
    path = packed.save(tmp_path / "mlp")
    assert json.loads(path.read_text())["version"] == 2
    x = _rng_input((4, 1, 28, 28))
    np.testing.assert_array_equal(deploy.load(tmp_path / "mlp").predict(x), packed.predict(x))
    binary = _convert(models.binary_mlp(hidden=(64, 96, 70)), (1, 28, 28))  # unchanged by version 2
    binary.save(tmp_path / "v1")
    _edit_header(tmp_path / "v1", lambda h: h.update(version=1))
    np.testing.assert_array_equal(deploy.load(tmp_path / "v1").predict(x), binary.predict(x))
