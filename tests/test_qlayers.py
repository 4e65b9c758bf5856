"""Q-layers (QDense, QConv2d, QActivation) against a plain float computation written here.

The reference quantizes input and weights with NumPy (sign with sign(0) = +1, the k-bit
grid, DoReFa), pads the quantized input explicitly with ``pad_value`` and runs a direct
convolution / matrix product; scaling is alpha = mean|W| per output channel.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minibnn
from minibnn import nn
from minibnn.autograd import Tensor

from strategies import arrays

BITS = [1, 2, 4, 32]
BAD_BITS = [0, 33, 1.5, "1", True, -3]


# ---- NumPy references --------------------------------------------------------------------------

def q_act(x, bits):
    x = np.asarray(x, np.float32)
    if bits == 32:
        return x
    if bits == 1:
        return np.where(x >= 0, np.float32(1), np.float32(-1))
    n = np.float32(2 ** bits - 1)
    return np.round(np.clip(x, 0, 1) * n) / n


def q_weight(w, bits):
    w = np.asarray(w, np.float32)
    if bits == 32:
        return w
    if bits == 1:
        return np.where(w >= 0, np.float32(1), np.float32(-1))
    t = np.tanh(w)
    unit = t / (2 * np.abs(t).max()) + np.float32(0.5)
    n = np.float32(2 ** bits - 1)
    return 2 * (np.round(unit * n) / n) - 1


def alpha_of(w):
    return np.abs(w.astype(np.float64)).reshape(w.shape[0], -1).mean(axis=1)


def direct_conv(xpad, w, stride):
    """Valid convolution of an already padded NCHW input (float64)."""
    n, c, h, wd = xpad.shape
    o, _, kh, kw = w.shape
    sh, sw = stride
    oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            field = xpad[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].astype(np.float64)
            out[:, :, i, j] = np.einsum("ncpq,ocpq->no", field, w.astype(np.float64))
    return out


def conv_weight_grad(xpad, g, kernel, stride):
    """dL/dW of a valid convolution: correlate the padded input with the output gradient."""
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = g.shape[2:]
    gw = np.zeros((g.shape[1], xpad.shape[1], kh, kw))
    for p in range(kh):
        for q in range(kw):
            taps = xpad[:, :, p:p + sh * (oh - 1) + 1:sh, q:q + sw * (ow - 1) + 1:sw].astype(np.float64)
            gw[:, :, p, q] = np.einsum("nohw,nchw->oc", g.astype(np.float64), taps)
    return gw


def assert_matches(y, ref, exact):
    if exact:  # sums of +-1 products are small integers: float32 is exact
        np.testing.assert_array_equal(y, ref)
    else:
        np.testing.assert_allclose(y, ref, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(ref).max()))


# ---- QDense ------------------------------------------------------------------------------------

@pytest.mark.parametrize("weight_bit", BITS)
@pytest.mark.parametrize("act_bit", BITS)
@given(data=st.data(), n=st.sampled_from([1, 3]), i=st.sampled_from([1, 5, 70]), o=st.sampled_from([1, 4]),
       scaling=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_qdense_forward(act_bit, weight_bit, data, n, i, o, scaling, bias, seed):
    minibnn.manual_seed(seed)
    layer = nn.QDense(i, o, act_bit=act_bit, weight_bit=weight_bit, bias=bias, scaling=scaling)
    x = data.draw(arrays((n, i), -1.5, 1.5, np.float32))
    x[0, 0] = 0.0  # sign(0) = +1 must hold inside the layer too
    y = layer(Tensor(x)).numpy()
    w = layer.weight.numpy()
    ref = q_act(x, act_bit).astype(np.float64) @ q_weight(w, weight_bit).astype(np.float64).T
    if scaling:
        ref = ref * alpha_of(w)
    if bias:
        ref = ref + layer.bias.numpy()
    assert y.shape == (n, o) and y.dtype == np.float32
    assert_matches(y, ref, exact=act_bit == 1 and weight_bit == 1 and not scaling and not bias)


# ---- QConv2d -----------------------------------------------------------------------------------

@pytest.mark.parametrize("weight_bit", BITS)
@pytest.mark.parametrize("act_bit", BITS)
@given(data=st.data(), pad_value=st.sampled_from([0, 1, -1]), scaling=st.booleans(), bias=st.booleans(),
       n=st.sampled_from([1, 2]), c=st.sampled_from([1, 3]), o=st.sampled_from([1, 2]),
       kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)), stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), seed=st.integers(0, 2**16))
def test_qconv2d_forward(act_bit, weight_bit, data, pad_value, scaling, bias, n, c, o, kernel, stride, padding,
                         seed):
    minibnn.manual_seed(seed)
    layer = nn.QConv2d(c, o, kernel, stride=stride, padding=padding, act_bit=act_bit, weight_bit=weight_bit,
                       pad_value=pad_value, bias=bias, scaling=scaling)
    h = data.draw(st.integers(max(1, kernel[0] - 2 * padding[0]), kernel[0] + 3))
    wd = data.draw(st.integers(max(1, kernel[1] - 2 * padding[1]), kernel[1] + 3))
    x = data.draw(arrays((n, c, h, wd), -1.5, 1.5, np.float32))
    x[0, 0, 0, 0] = 0.0
    y = layer(Tensor(x)).numpy()
    w = layer.weight.numpy()
    (ph, pw) = padding
    xpad = np.pad(q_act(x, act_bit), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    ref = direct_conv(xpad, q_weight(w, weight_bit), stride)
    if scaling:
        ref = ref * alpha_of(w).reshape(1, -1, 1, 1)
    if bias:
        ref = ref + layer.bias.numpy().reshape(1, -1, 1, 1)
    assert y.shape == ref.shape and y.dtype == np.float32
    assert_matches(y, ref, exact=act_bit == 1 and weight_bit == 1 and not scaling and not bias)


@pytest.mark.parametrize("pad_value", [0, 1, -1])
def test_qconv2d_padding_values_differ_at_the_border(pad_value):
    """All-positive input and weights: each padded tap adds pad_value to a border output."""
    layer = nn.QConv2d(1, 1, 3, padding=1, pad_value=pad_value)
    layer.weight.data[...] = 0.5
    y = layer(Tensor(np.ones((1, 1, 3, 3), np.float32))).numpy()[0, 0]
    padded_taps = np.array([[5, 3, 5], [3, 0, 3], [5, 3, 5]])
    np.testing.assert_array_equal(y, (9 - padded_taps) + pad_value * padded_taps)


# ---- gradients reaching the latent weights and the input ---------------------------------------

@pytest.mark.parametrize("scaling", [False, True])
@pytest.mark.parametrize("act_bit", [1, 32])
def test_qdense_latent_weight_gradient_is_straight_through(act_bit, scaling):
    minibnn.manual_seed(1)
    layer = nn.QDense(6, 3, act_bit=act_bit, weight_bit=1, scaling=scaling)
    rng = np.random.default_rng(2)
    x = Tensor(rng.uniform(-1.5, 1.5, (4, 6)).astype(np.float32), requires_grad=True)
    y = layer(x)
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    w = layer.weight.numpy()
    gs = g * alpha_of(w).astype(np.float32) if scaling else g  # alpha is a constant (gradient stopped)
    xq = q_act(x.numpy(), act_bit)
    np.testing.assert_allclose(layer.weight.grad, gs.T @ xq, rtol=1e-5, atol=1e-5)
    mask = (np.abs(x.numpy()) <= 1) if act_bit == 1 else 1.0  # input STE: pass where |x| <= 1
    np.testing.assert_allclose(x.grad, (gs @ q_weight(w, 1)) * mask, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pad_value", [0, 1, -1])
@pytest.mark.parametrize("scaling", [False, True])
def test_qconv2d_latent_weight_gradient_is_straight_through(pad_value, scaling):
    minibnn.manual_seed(3)
    layer = nn.QConv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 1), pad_value=pad_value, scaling=scaling)
    rng = np.random.default_rng(4)
    x = rng.uniform(-1.5, 1.5, (2, 2, 5, 4)).astype(np.float32)
    y = layer(Tensor(x))
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    w = layer.weight.numpy()
    gs = g * alpha_of(w).reshape(1, -1, 1, 1) if scaling else g
    xpad = np.pad(q_act(x, 1), ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=pad_value)
    np.testing.assert_allclose(layer.weight.grad, conv_weight_grad(xpad, gs, (3, 2), (2, 1)), rtol=1e-5, atol=1e-5)


def test_k_bit_weight_gradient_reaches_latent_weights():
    minibnn.manual_seed(5)
    layer = nn.QDense(4, 2, act_bit=2, weight_bit=2)
    layer(Tensor(np.random.default_rng(0).uniform(0, 1, (3, 4)))).sum().backward()
    assert layer.weight.grad is not None and np.all(np.isfinite(layer.weight.grad))


# ---- QActivation -------------------------------------------------------------------------------

X_ACT = np.array([-2.0, -1.0, -0.6, -0.25, 0.0, 0.2, 0.5, 0.75, 1.0, 1.3], dtype=np.float32)


def _act_grad(layer, a=X_ACT):
    x = Tensor(a, requires_grad=True)
    y = layer(x)
    g = np.linspace(1, 2, a.size).astype(np.float32)
    y.backward(g)
    return y.numpy(), x.grad, g


def test_qactivation_binary_default_clip():
    y, grad, g = _act_grad(nn.QActivation())
    np.testing.assert_array_equal(y, np.where(X_ACT >= 0, 1, -1))
    np.testing.assert_array_equal(grad, g * (np.abs(X_ACT) <= 1))


@pytest.mark.parametrize("clip", [None, 0.5, 2.0])
def test_qactivation_clip(clip):
    y, grad, g = _act_grad(nn.QActivation(1, clip=clip))
    np.testing.assert_array_equal(y, np.where(X_ACT >= 0, 1, -1))
    np.testing.assert_array_equal(grad, g if clip is None else g * (np.abs(X_ACT) <= clip))


def test_qactivation_approx_sign():
    y, grad, g = _act_grad(nn.QActivation(1, approx=True))
    np.testing.assert_array_equal(y, np.where(X_ACT >= 0, 1, -1))
    np.testing.assert_allclose(grad, g * np.maximum(2 - 2 * np.abs(X_ACT), 0), rtol=1e-6)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qactivation_k_bit(bits):
    y, grad, g = _act_grad(nn.QActivation(bits))
    np.testing.assert_allclose(y, q_act(X_ACT, bits), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(grad, g * ((X_ACT >= 0) & (X_ACT <= 1)))


def test_qactivation_32_bits_is_identity():
    y, grad, g = _act_grad(nn.QActivation(32))
    np.testing.assert_array_equal(y, X_ACT)
    np.testing.assert_array_equal(grad, g)


# ---- construction checks -----------------------------------------------------------------------

LAYERS = {
    "QDense": lambda **kw: nn.QDense(4, 3, **kw),
    "QConv2d": lambda **kw: nn.QConv2d(2, 3, 3, **kw),
}


@pytest.mark.parametrize("bad", BAD_BITS, ids=repr)
@pytest.mark.parametrize("which", ["act_bit", "weight_bit"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_bad_bits_name_the_layer_and_range(name, which, bad):
    with pytest.raises(ValueError, match=rf"{name}.*{which}.*1\s*(\.\.|to|-)\s*32"):
        LAYERS[name](**{which: bad})


@pytest.mark.parametrize("bad", BAD_BITS, ids=repr)
def test_qactivation_bad_bits(bad):
    with pytest.raises(ValueError, match=r"QActivation.*act_bit.*1\s*(\.\.|to|-)\s*32"):
        nn.QActivation(bad)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_bad_scaling_and_pad_value(name):
    with pytest.raises(ValueError, match=name):
        LAYERS[name](scaling="tensor")
    with pytest.raises(ValueError, match=r"QConv2d.*pad_value"):
        nn.QConv2d(2, 3, 3, pad_value=2)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_latent_weights_of_binary_layers_are_clipped(name):
    assert LAYERS[name](weight_bit=1).weight.clip == 1.0
    assert LAYERS[name](weight_bit=32).weight.clip is None
    layer = LAYERS[name](act_bit=1, weight_bit=1)
    assert layer.is_binary
    assert not LAYERS[name](act_bit=2, weight_bit=1).is_binary
    assert np.all(np.abs(layer.weight.numpy()) <= 1)


def test_default_q_layers_are_binary_without_bias():
    for layer in (nn.QDense(3, 2), nn.QConv2d(1, 2, 3)):
        assert layer.act_bit == 1 and layer.weight_bit == 1 and layer.bias is None and layer.scaling is None
