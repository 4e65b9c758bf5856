"""Quantizers (DESIGN.md, Semantics): sign, straight-through estimators, k-bit grids, DoReFa."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minibnn import quantize as Q
from minibnn.autograd import Tensor

from gradcheck import as64
from strategies import arrays, shapes


def grad_of(fn, a, dtype=np.float32):
    """Gradient of sum(fn(x) * g) for a random upstream g, returned with g."""
    x = Tensor(np.asarray(a, dtype=dtype), requires_grad=True, dtype=dtype)
    y = fn(x)
    g = np.random.default_rng(0).standard_normal(y.shape).astype(dtype)
    y.backward(g)
    return x.grad, g


def ref_sign(a):
    return np.where(a >= 0, 1.0, -1.0)


# ---- sign and straight-through estimators ------------------------------------------------------

def test_sign_of_zero_is_plus_one():
    x = np.array([0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0], dtype=np.float32)
    np.testing.assert_array_equal(Q.sign(Tensor(x)).numpy(), [1, 1, 1, -1, 1, -1])
    np.testing.assert_array_equal(Q.ste_sign(Tensor(x)).numpy(), [1, 1, 1, -1, 1, -1])
    np.testing.assert_array_equal(Q.approx_sign(Tensor(x)).numpy(), [1, 1, 1, -1, 1, -1])
    np.testing.assert_array_equal(Q.binarize(x), [1, 1, 1, -1, 1, -1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sign_keeps_dtype(dtype):
    x = Tensor(np.array([0.5, -0.5], dtype=dtype), dtype=dtype)
    assert Q.sign(x).dtype == dtype
    assert Q.ste_sign(x).dtype == dtype
    assert Q.quantize_activation(x, 2).dtype == dtype
    assert Q.quantize_weight(x, 3).dtype == dtype


@pytest.mark.parametrize("clip", [1.0, 0.5, 2.0])
@given(a=arrays(shapes(1, 3), -3, 3))
def test_ste_sign_gradient_is_the_clip_mask(clip, a):
    a = a.astype(np.float32)
    a.flat[0] = clip  # exactly at +-clip the gradient still passes
    a.flat[-1] = -clip
    out = Q.ste_sign(Tensor(a), clip=clip)
    np.testing.assert_array_equal(out.numpy(), ref_sign(a))
    grad, g = grad_of(lambda x: Q.ste_sign(x, clip=clip), a)
    np.testing.assert_array_equal(grad, g * (np.abs(a) <= clip))


def test_ste_sign_at_the_edges():
    a = np.array([-1.0, 1.0, np.nextafter(np.float32(1), np.float32(2)), -1.5, 0.0], dtype=np.float32)
    grad, g = grad_of(lambda x: Q.ste_sign(x), a)
    np.testing.assert_array_equal(grad, g * np.array([1, 1, 0, 0, 1]))


@given(a=arrays(shapes(1, 3), -3, 3))
def test_ste_sign_without_clip_is_identity(a):
    grad, g = grad_of(lambda x: Q.ste_sign(x, clip=None), a)
    np.testing.assert_array_equal(grad, g)
    grad, g = grad_of(Q.sign, a)
    np.testing.assert_array_equal(grad, g)


@given(a=arrays(shapes(1, 3), -2, 2))
def test_approx_sign_gradient(a):
    a = np.concatenate([a.ravel(), [-1.0, 1.0, 0.0, 0.5, -0.25]])
    grad, g = grad_of(Q.approx_sign, a, np.float64)
    expected = g * np.where(np.abs(a) <= 1, 2 - 2 * np.abs(a), 0.0)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(Q.approx_sign(as64(a)).numpy(), ref_sign(a))


# ---- k-bit activations -------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@given(a=arrays(st.tuples(st.integers(1, 40), st.integers(1, 40)), -2, 3))
def test_activation_levels(bits, a):
    a = a.astype(np.float32)
    y = Q.quantize_activation(Tensor(a), bits).numpy()
    assert y.dtype == np.float32 and y.shape == a.shape
    levels = np.unique(y)
    assert len(levels) <= 2 ** bits
    if bits == 1:
        assert set(levels) <= {-1.0, 1.0}
        np.testing.assert_array_equal(y, ref_sign(a))
        return
    n = 2 ** bits - 1
    assert levels.min() >= 0 and levels.max() <= 1
    np.testing.assert_allclose(levels * n, np.round(levels * n), atol=1e-4)  # on the grid j / (2^k - 1)
    ref = np.round(np.clip(a.astype(np.float64), 0, 1) * n) / n
    near_tie = np.abs(np.clip(a, 0, 1) * n % 1 - 0.5) < 1e-4  # float32 rounding may go either way there
    np.testing.assert_allclose(y[~near_tie], ref[~near_tie], atol=1e-6)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_activation_gradient_is_straight_through_inside_0_1(bits):
    a = np.array([-0.5, 0.0, 0.1, 0.5, 0.93, 1.0, 1.7], dtype=np.float32)
    grad, g = grad_of(lambda x: Q.quantize_activation(x, bits), a)
    np.testing.assert_array_equal(grad, g * np.array([0, 1, 1, 1, 1, 1, 0]))


# ---- DoReFa weights ----------------------------------------------------------------------------

def dorefa_ref(w, bits):
    """2 * quantize_k(tanh(w) / (2 max|tanh w|) + 1/2) - 1, in float64."""
    t = np.tanh(w.astype(np.float64))
    unit = t / (2 * np.abs(t).max()) + 0.5
    n = 2 ** bits - 1
    return 2 * np.round(unit * n) / n - 1, unit * n


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@given(w=arrays(st.tuples(st.integers(1, 8), st.integers(1, 30)), -2, 2))
def test_dorefa_weights(bits, w):
    w = w.astype(np.float32)
    y = Q.quantize_weight(Tensor(w), bits).numpy()
    assert y.dtype == np.float32
    levels = np.unique(y)
    assert len(levels) <= 2 ** bits
    assert levels.min() >= -1 - 1e-6 and levels.max() <= 1 + 1e-6
    ref, scaled = dorefa_ref(w, bits)
    near_tie = np.abs(scaled % 1 - 0.5) < 1e-3  # rounding of an (almost) exact half may differ in float32
    np.testing.assert_allclose(y[~near_tie], ref[~near_tie], atol=1e-5)
    n = 2 ** bits - 1
    np.testing.assert_allclose((levels + 1) / 2 * n, np.round((levels + 1) / 2 * n), atol=1e-4)
    assert y.max() == pytest.approx(1.0) or y.min() == pytest.approx(-1.0)  # the largest |w| maps to +-1


def test_dorefa_all_zero_weights_are_finite():
    y = Q.quantize_weight(Tensor(np.zeros((2, 3), np.float32)), 2).numpy()
    assert np.all(np.isfinite(y)) and np.all(np.abs(y) <= 1)


def test_dorefa_gradient_flows_through_tanh():
    w = np.array([[0.3, -0.8, 1.2], [0.05, -0.4, 0.9]])
    grad, g = grad_of(lambda x: Q.quantize_weight(x, 2), w, np.float64)
    assert grad.shape == w.shape and np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_one_bit_weights_are_sign():
    w = np.array([0.0, -0.2, 0.7, -3.0], dtype=np.float32)
    np.testing.assert_array_equal(Q.quantize_weight(Tensor(w), 1).numpy(), ref_sign(w))
    grad, g = grad_of(lambda x: Q.quantize_weight(x, 1), w)
    np.testing.assert_array_equal(grad, g)  # identity STE for weights (latent weights are clipped instead)


# ---- 32 bits is float --------------------------------------------------------------------------

@given(a=arrays(shapes(1, 3), -3, 3))
def test_32_bits_is_identity(a):
    for fn in (Q.quantize_activation, Q.quantize_weight):
        x = Tensor(a.astype(np.float32), requires_grad=True)
        y = fn(x, 32)
        np.testing.assert_array_equal(y.numpy(), a.astype(np.float32))
        g = np.random.default_rng(1).standard_normal(a.shape).astype(np.float32)
        (y * Tensor(g)).sum().backward()
        np.testing.assert_array_equal(x.grad, g)


# ---- bad bit widths ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, 33, -1, 1.5, "1", True, None, 2.0])
@pytest.mark.parametrize("fn", [Q.quantize_activation, Q.quantize_weight])
def test_bad_bits_raise_value_error_naming_the_range(fn, bad):
    with pytest.raises(ValueError, match=r"1\s*(\.\.|to|-)\s*32") as exc:
        fn(Tensor(np.ones(2)), bad)
    assert fn.__name__ in str(exc.value)
    assert repr(bad) in str(exc.value)


@pytest.mark.parametrize("good", [1, 2, 16, 31, 32, np.int64(4)])
def test_check_bits_accepts_integers(good):
    assert Q.check_bits(good) == good
