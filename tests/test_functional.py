"""minibnn.functional: gradient checks of every differentiable op, forward values against
independent references (direct convolution and pooling loops written here), error messages,
and torch.nn.functional as an optional oracle (skipped when torch does not import)."""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import minibnn
from minibnn import functional as F
from minibnn.autograd import Tensor

from gradcheck import as64, gradcheck
from strategies import (ConvGeometry, PoolGeometry, arrays, away_from, conv_geometries, distinct_arrays,
                        pool_geometries, shapes)


# ---- independent references ---------------------------------------------------------------------

def conv2d_ref(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """Direct convolution: for each output pixel, contract its receptive field with the kernel."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    out = np.zeros((n, o, oh, ow), dtype=np.result_type(x, w))
    for gi in range(groups):
        xs = xp[:, gi * cg:(gi + 1) * cg]
        ws = w[gi * og:(gi + 1) * og]
        for i in range(oh):
            for j in range(ow):
                field = xs[:, :, i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
                out[:, gi * og:(gi + 1) * og, i, j] = np.einsum("ncpq,ocpq->no", field, ws)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def pool_ref(x, kernel, stride, padding, kind):
    """Max pooling (pads with -inf) or average pooling (pads with 0, counted in the divisor)."""
    stride = kernel if stride is None else stride
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    oh = (x.shape[2] + 2 * ph - kh) // sh + 1
    ow = (x.shape[3] + 2 * pw - kw) // sw + 1
    out = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            out[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.sum(axis=(2, 3)) / (kh * kw)
    return out


def batch_norm_ref(x, mean, var, weight, bias, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if weight is not None:
        y = y * weight.reshape(shape) + bias.reshape(shape)
    return y


def log_softmax_ref(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def t64(a, requires_grad=True):
    return as64(a, requires_grad)


# ---- elementwise arithmetic with broadcasting ---------------------------------------------------

BINARY = {
    "add": (F.add, np.add, lambda a, b: a + b),
    "sub": (F.sub, np.subtract, lambda a, b: a - b),
    "mul": (F.mul, np.multiply, lambda a, b: a * b),
    "div": (F.div, np.divide, lambda a, b: a / b),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data(), shapes2=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3))
def test_binary_ops_broadcast(name, data, shapes2):
    op, ref, operator = BINARY[name]
    sa, sb = shapes2.input_shapes
    a = data.draw(arrays(sa))
    b = data.draw(arrays(sb))
    if name == "div":
        b = away_from(b, (0.0,), 0.5)
    np.testing.assert_allclose(op(t64(a), t64(b)).numpy(), ref(a, b), rtol=1e-12)
    np.testing.assert_allclose(operator(t64(a), t64(b)).numpy(), ref(a, b), rtol=1e-12)
    out = op(t64(a), t64(b))
    assert out.shape == np.broadcast_shapes(sa, sb)
    gradcheck(op, [t64(a), t64(b)])
    gradcheck(op, [t64(a), t64(b, requires_grad=False)])
    gradcheck(op, [t64(a, requires_grad=False), t64(b)])


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_ops_with_python_scalars(name):
    op, ref, operator = BINARY[name]
    a = away_from(np.linspace(-2, 2, 6).reshape(2, 3), (0.0,), 0.3)
    np.testing.assert_allclose(operator(t64(a), 1.5).numpy(), ref(a, 1.5))
    np.testing.assert_allclose(operator(1.5, t64(a)).numpy(), ref(1.5, a))
    gradcheck(lambda x: operator(x, 1.5), [t64(a)])
    gradcheck(lambda x: operator(1.5, x), [t64(a)])


UNARY = {
    # name: (function, numpy reference, value domain)
    "neg": (F.neg, np.negative, "any"),
    "exp": (F.exp, np.exp, "any"),
    "log": (F.log, np.log, "positive"),
    "abs": (F.abs, np.abs, "nonzero"),
    "tanh": (F.tanh, np.tanh, "any"),
    "sigmoid": (F.sigmoid, lambda x: 1 / (1 + np.exp(-x)), "any"),
    "relu": (F.relu, lambda x: np.maximum(x, 0), "nonzero"),
    "hardtanh": (F.hardtanh, lambda x: np.clip(x, -1, 1), "not_pm1"),
    "hardtanh_0_1": (lambda x: F.hardtanh(x, 0.0, 1.0), lambda x: np.clip(x, 0, 1), "not_0_1"),
    "square": (lambda x: F.power(x, 2), np.square, "any"),
    "cube": (lambda x: x ** 3, lambda x: x ** 3, "any"),
    "sqrt": (lambda x: F.power(x, 0.5), np.sqrt, "positive"),
    "reciprocal": (lambda x: x ** -1.0, lambda x: 1 / x, "nonzero"),
}


def _domain(a, domain):
    if domain == "positive":
        return np.abs(a) + 0.1
    if domain == "nonzero":
        return away_from(a, (0.0,), 0.05)
    if domain == "not_pm1":
        return away_from(a, (-1.0, 1.0), 0.05)
    if domain == "not_0_1":
        return away_from(a, (0.0, 1.0), 0.05)
    return a


@pytest.mark.parametrize("name", sorted(UNARY))
@given(a=arrays(shapes(0, 3), -3.0, 3.0))
def test_unary_ops(name, a):
    fn, ref, domain = UNARY[name]
    a = _domain(a, domain)
    np.testing.assert_allclose(fn(t64(a)).numpy(), ref(a), rtol=1e-12, atol=1e-14)
    gradcheck(fn, [t64(a)])


def test_sigmoid_does_not_overflow():
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0], dtype=np.float32)
    with np.errstate(all="raise"):
        y = F.sigmoid(Tensor(x)).numpy()
    np.testing.assert_allclose(y, [0, 0, 0.5, 1, 1], atol=1e-7)


def test_tensor_methods_match_functional():
    a = np.abs(np.random.default_rng(1).standard_normal((2, 3))) + 0.5
    x = t64(a)
    np.testing.assert_allclose(x.exp().numpy(), np.exp(a))
    np.testing.assert_allclose(x.log().numpy(), np.log(a))
    np.testing.assert_allclose((-x).abs().numpy(), a)
    np.testing.assert_allclose(x.sum(axis=1).numpy(), a.sum(axis=1))
    np.testing.assert_allclose(x.mean().numpy(), a.mean())
    np.testing.assert_allclose(x.max(axis=0).numpy(), a.max(axis=0))


# ---- matmul --------------------------------------------------------------------------------------

@given(data=st.data(), m=st.sampled_from([1, 2, 3]), k=st.sampled_from([1, 3, 4]), n=st.sampled_from([1, 2, 5]),
       batch=st.sampled_from([(), (2,), (1,), (2, 1)]), b_batched=st.booleans())
def test_matmul(data, m, k, n, batch, b_batched):
    a = data.draw(arrays(batch + (m, k)))
    b = data.draw(arrays((batch if b_batched else ()) + (k, n)))
    np.testing.assert_allclose(F.matmul(t64(a), t64(b)).numpy(), a @ b, rtol=1e-12)
    np.testing.assert_allclose((t64(a) @ t64(b)).numpy(), a @ b, rtol=1e-12)
    gradcheck(F.matmul, [t64(a), t64(b)])


@pytest.mark.parametrize("sa,sb", [((3,), (3, 2)), ((2, 3), (3,)), ((3,), (3,)), ((2, 2, 3), (3,)),
                                   ((3,), (2, 3, 4)), ((1, 2, 3), (2, 3, 1))])
def test_matmul_vectors(sa, sb):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    np.testing.assert_allclose(F.matmul(t64(a), t64(b)).numpy(), a @ b, rtol=1e-12)
    gradcheck(F.matmul, [t64(a), t64(b)])


def test_matmul_shape_error_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        F.matmul(Tensor(np.zeros((2, 3))), Tensor(np.zeros((4, 5))))


# ---- reductions ----------------------------------------------------------------------------------

@st.composite
def shape_and_axis(draw):
    shape = draw(shapes(1, 3))
    nd = len(shape)
    axis = draw(st.none() | st.integers(-nd, nd - 1) |
                st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True).map(tuple))
    return shape, axis, draw(st.booleans())


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@given(data=st.data(), sak=shape_and_axis())
def test_reductions(name, data, sak):
    shape, axis, keepdims = sak
    if name == "max":
        a = data.draw(distinct_arrays(shape))
    else:
        a = data.draw(arrays(shape))
    fn = {"sum": F.sum, "mean": F.mean, "max": F.max}[name]
    ref = {"sum": np.sum, "mean": np.mean, "max": np.max}[name]
    np.testing.assert_allclose(fn(t64(a), axis, keepdims).numpy(), ref(a, axis=axis, keepdims=keepdims), rtol=1e-12)
    gradcheck(lambda x: fn(x, axis, keepdims), [t64(a)])


def test_max_ties_share_gradient():
    x = t64(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]))
    F.max(x, axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])


# ---- shape ops -----------------------------------------------------------------------------------

@given(data=st.data(), shape=shapes(1, 4))
def test_reshape_and_flatten(data, shape):
    a = data.draw(arrays(shape))
    target = (-1,) if len(shape) == 1 else (shape[0], -1)
    np.testing.assert_array_equal(F.reshape(t64(a), target).numpy(), a.reshape(target))
    np.testing.assert_array_equal(t64(a).reshape(*target).numpy(), a.reshape(target))
    gradcheck(lambda x: F.reshape(x, (a.size,)), [t64(a)])
    start = data.draw(st.integers(0, len(shape) - 1))
    flat = F.flatten(t64(a), start)
    assert flat.shape == shape[:start] + (int(np.prod(shape[start:])),)
    gradcheck(lambda x: F.flatten(x, start), [t64(a)])


def test_reshape_error_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4,\)"):
        F.reshape(Tensor(np.zeros((2, 3))), (4,))


@given(data=st.data(), shape=shapes(1, 4))
def test_transpose(data, shape):
    a = data.draw(arrays(shape))
    axes = tuple(data.draw(st.permutations(list(range(len(shape))))))
    np.testing.assert_array_equal(F.transpose(t64(a), axes).numpy(), a.transpose(axes))
    np.testing.assert_array_equal(t64(a).T.numpy(), a.T)
    gradcheck(lambda x: F.transpose(x, axes), [t64(a)])
    gradcheck(lambda x: x.T, [t64(a)])


INDICES = [
    0,
    -1,
    slice(None, None, -1),
    (slice(1, None, 2), Ellipsis),
    (Ellipsis, 0),
    (None, slice(None)),
    (1, slice(0, 2)),
    [0, 0, 2, 1, 0],  # fancy indexing with repeats: gradients must add up
    np.array([2, 2, 2]),
    (np.array([0, 1, 1]), np.array([1, 1, 0])),  # paired fancy indices, one element twice
    np.array([True, False, True]),
    (slice(None), [2, 0, 2]),
    (np.array([[0, 2], [2, 2]]), slice(None), 1),
]


@pytest.mark.parametrize("index", INDICES, ids=[f"index{i}" for i in range(len(INDICES))])
def test_getitem(index):
    a = np.random.default_rng(3).standard_normal((3, 3, 2))
    np.testing.assert_array_equal(F.getitem(t64(a), index).numpy(), a[index])
    np.testing.assert_array_equal(t64(a)[index].numpy(), a[index])
    gradcheck(lambda x: x[index], [t64(a)])


def test_getitem_repeated_index_accumulates():
    x = t64(np.arange(4.0))
    x[[1, 1, 1, 3]].sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 3, 0, 1])


def test_getitem_with_tensor_index():
    x = t64(np.arange(5.0))
    idx = Tensor(np.array([4, 0, 4]))
    y = x[idx]
    np.testing.assert_array_equal(y.numpy(), [4, 0, 4])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1, 0, 0, 0, 2])


@given(data=st.data(), shape=st.tuples(st.sampled_from([1, 2]), st.sampled_from([1, 3]), st.integers(1, 4),
                                       st.integers(1, 4)),
       padding=st.integers(0, 2) | st.tuples(st.integers(0, 2), st.integers(0, 2)),
       value=st.sampled_from([0.0, 1.0, -1.0, 2.5]))
def test_pad2d(data, shape, padding, value):
    a = data.draw(arrays(shape))
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    ref = np.pad(a, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)
    np.testing.assert_array_equal(F.pad2d(t64(a), padding, value).numpy(), ref)
    gradcheck(lambda x: F.pad2d(x, padding, value), [t64(a)])


# ---- linear and convolution ----------------------------------------------------------------------

@given(data=st.data(), n=st.sampled_from([1, 2, 5]), i=st.sampled_from([1, 3, 4]), o=st.sampled_from([1, 2, 3]),
       bias=st.booleans())
def test_linear(data, n, i, o, bias):
    x, w = data.draw(arrays((n, i))), data.draw(arrays((o, i)))
    b = data.draw(arrays((o,))) if bias else None
    ref = x @ w.T + (b if bias else 0)
    args = [t64(x), t64(w)] + ([t64(b)] if bias else [])
    np.testing.assert_allclose(F.linear(*args).numpy(), ref, rtol=1e-12)
    gradcheck(F.linear, args)


def test_linear_shape_errors_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        F.linear(Tensor(np.zeros((2, 3))), Tensor(np.zeros((4, 5))))
    with pytest.raises(ValueError, match=r"\(3,\).*\(4, 5\)"):
        F.linear(Tensor(np.zeros((2, 5))), Tensor(np.zeros((4, 5))), Tensor(np.zeros(3)))


def _conv_inputs(data, g: ConvGeometry):
    x = data.draw(arrays(g.x_shape))
    w = data.draw(arrays(g.w_shape))
    b = data.draw(arrays((g.o,))) if g.bias else None
    return x, w, b


def _conv_kwargs(g: ConvGeometry):
    return dict(stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups)


@given(data=st.data(), g=conv_geometries())
def test_conv2d_forward_matches_direct_convolution(data, g):
    x, w, b = _conv_inputs(data, g)
    y = F.conv2d(t64(x), t64(w), None if b is None else t64(b), **_conv_kwargs(g))
    assert y.shape == (g.n, g.o) + g.out_hw()
    np.testing.assert_allclose(y.numpy(), conv2d_ref(x, w, b, g.stride, g.padding, g.dilation, g.groups),
                               rtol=1e-10, atol=1e-12)


@settings(max_examples=15)
@given(data=st.data(), g=conv_geometries(max_extra=2))
def test_conv2d_gradients(data, g):
    x, w, b = _conv_inputs(data, g)
    args = [t64(x), t64(w)] + ([t64(b)] if b is not None else [])
    gradcheck(lambda *a: F.conv2d(*a, **_conv_kwargs(g)), args)


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(padding=(1, 0), dilation=(2, 1))])
def test_conv2d_float32_and_int_parameters(kw):
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((1, 3, 5, 6)).astype(np.float32), rng.standard_normal((2, 3, 3, 2)).astype(np.float32)
    y = F.conv2d(Tensor(x), Tensor(w), **kw)
    assert y.dtype == np.float32
    full = {"stride": 1, "padding": 0, "dilation": 1} | kw
    pairs = {k: (v, v) if isinstance(v, int) else v for k, v in full.items()}
    np.testing.assert_allclose(y.numpy(), conv2d_ref(x.astype(np.float64), w.astype(np.float64), **pairs), rtol=1e-5,
                               atol=1e-5)


def test_conv2d_shape_errors_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(1, 3, 5, 5\).*\(2, 4, 3, 3\)"):
        F.conv2d(Tensor(np.zeros((1, 3, 5, 5))), Tensor(np.zeros((2, 4, 3, 3))))
    with pytest.raises(ValueError, match=r"\(1, 4, 5, 5\).*\(3, 2, 3, 3\)"):
        F.conv2d(Tensor(np.zeros((1, 4, 5, 5))), Tensor(np.zeros((3, 2, 3, 3))), groups=2)
    with pytest.raises(ValueError, match=r"\(5,\).*\(2, 3, 3, 3\)"):
        F.conv2d(Tensor(np.zeros((1, 3, 5, 5))), Tensor(np.zeros((2, 3, 3, 3))), Tensor(np.zeros(5)))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        F.conv2d(Tensor(np.zeros((1, 3, 2, 2))), Tensor(np.zeros((2, 3, 3, 3))))
    with pytest.raises(ValueError):
        F.conv2d(Tensor(np.zeros((1, 3, 5, 5))), Tensor(np.zeros((2, 3, 3, 3))), stride=0)


# ---- pooling -------------------------------------------------------------------------------------

@given(data=st.data(), g=pool_geometries())
def test_max_pool2d(data, g: PoolGeometry):
    a = data.draw(distinct_arrays(g.x_shape))
    y = F.max_pool2d(t64(a), g.kernel, g.stride, g.padding)
    np.testing.assert_array_equal(y.numpy(), pool_ref(a, g.kernel, g.stride, g.padding, "max"))
    gradcheck(lambda x: F.max_pool2d(x, g.kernel, g.stride, g.padding), [t64(a)])


def test_max_pool2d_ties_send_gradient_to_one_element():
    x = t64(np.ones((1, 1, 2, 2)))
    F.max_pool2d(x, 2).sum().backward()
    assert x.grad.sum() == 1 and np.count_nonzero(x.grad) == 1


@given(data=st.data(), g=pool_geometries())
def test_avg_pool2d(data, g: PoolGeometry):
    a = data.draw(arrays(g.x_shape))
    y = F.avg_pool2d(t64(a), g.kernel, g.stride, g.padding)
    np.testing.assert_allclose(y.numpy(), pool_ref(a, g.kernel, g.stride, g.padding, "avg"), rtol=1e-12, atol=1e-15)
    gradcheck(lambda x: F.avg_pool2d(x, g.kernel, g.stride, g.padding), [t64(a)])


def test_pooling_rejects_bad_geometry():
    x = Tensor(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="padding"):
        F.max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="NCHW"):
        F.avg_pool2d(Tensor(np.zeros((4, 4))), 2)


@given(a=arrays(st.tuples(st.sampled_from([1, 2]), st.sampled_from([1, 3]), st.integers(1, 4), st.integers(1, 4))))
def test_global_avg_pool2d(a):
    y = F.global_avg_pool2d(t64(a))
    np.testing.assert_allclose(y.numpy(), a.mean(axis=(2, 3)), rtol=1e-12)
    gradcheck(F.global_avg_pool2d, [t64(a)])


# ---- batch norm ----------------------------------------------------------------------------------

BN_SHAPES = st.sampled_from([(2, 3), (5, 1), (3, 2, 4), (1, 2, 2, 3), (2, 3, 1, 2)])


@given(data=st.data(), shape=BN_SHAPES, affine=st.booleans(), momentum=st.sampled_from([0.1, 0.5]))
def test_batch_norm_training(data, shape, affine, momentum):
    x = data.draw(arrays(shape, -2, 3))
    c = shape[1]
    weight, bias = (data.draw(arrays((c,), 0.5, 2)), data.draw(arrays((c,)))) if affine else (None, None)
    axes = (0,) + tuple(range(2, x.ndim))
    rm0, rv0 = data.draw(arrays((c,))), data.draw(arrays((c,), 0.5, 2))
    rm, rv = rm0.copy(), rv0.copy()
    args = [t64(x)] + ([t64(weight), t64(bias)] if affine else [])
    y = F.batch_norm(args[0], rm, rv, *args[1:], training=True, momentum=momentum, eps=1e-5)
    ref = batch_norm_ref(x, x.mean(axis=axes), x.var(axis=axes), weight, bias, 1e-5)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-10, atol=1e-10)
    n = x.size // c  # the running variance is the unbiased one (PyTorch)
    np.testing.assert_allclose(rm, (1 - momentum) * rm0 + momentum * x.mean(axis=axes), rtol=1e-12)
    np.testing.assert_allclose(rv, (1 - momentum) * rv0 + momentum * x.var(axis=axes) * n / (n - 1), rtol=1e-12)
    # gradients through the batch statistics (running stats: fresh copies, updated on every call)
    gradcheck(lambda *a: F.batch_norm(a[0], rm0.copy(), rv0.copy(), *a[1:], training=True, eps=1e-3), args)
    gradcheck(lambda *a: F.batch_norm(a[0], None, None, *a[1:], training=True, eps=1e-3), args)


@given(data=st.data(), shape=BN_SHAPES, affine=st.booleans())
def test_batch_norm_eval(data, shape, affine):
    x = data.draw(arrays(shape))
    c = shape[1]
    weight, bias = (data.draw(arrays((c,), 0.5, 2)), data.draw(arrays((c,)))) if affine else (None, None)
    rm, rv = data.draw(arrays((c,))), data.draw(arrays((c,), 0.5, 2))
    rm0, rv0 = rm.copy(), rv.copy()
    args = [t64(x)] + ([t64(weight), t64(bias)] if affine else [])
    y = F.batch_norm(args[0], rm, rv, *args[1:], training=False, eps=1e-5)
    np.testing.assert_allclose(y.numpy(), batch_norm_ref(x, rm, rv, weight, bias, 1e-5), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(rm, rm0)  # eval never touches the running statistics
    np.testing.assert_array_equal(rv, rv0)
    gradcheck(lambda *a: F.batch_norm(a[0], rm, rv, *a[1:], training=False), args)


def test_batch_norm_errors():
    with pytest.raises(ValueError, match="more than one value per channel"):
        F.batch_norm(Tensor(np.zeros((1, 3))), np.zeros(3), np.ones(3), training=True)
    with pytest.raises(ValueError, match=r"\(4,\).*\(2, 3\)"):
        F.batch_norm(Tensor(np.zeros((2, 3))), np.zeros(4), np.ones(4))
    with pytest.raises(ValueError, match="both"):
        F.batch_norm(Tensor(np.zeros((2, 3))), None, None, weight=Tensor(np.ones(3)))


# ---- softmax and loss ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@given(data=st.data(), shape=shapes(1, 3))
def test_softmax(name, data, shape):
    a = data.draw(arrays(shape, -4, 4))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    ref = log_softmax_ref(a, axis)
    fn = {"softmax": F.softmax, "log_softmax": F.log_softmax}[name]
    ref = np.exp(ref) if name == "softmax" else ref
    np.testing.assert_allclose(fn(t64(a), axis).numpy(), ref, rtol=1e-10, atol=1e-14)
    gradcheck(lambda x: fn(x, axis), [t64(a)])


def test_log_softmax_is_stable_for_large_logits():
    x = Tensor(np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32))
    with np.errstate(over="raise", invalid="raise"):
        y = F.log_softmax(x).numpy()
    np.testing.assert_allclose(y, [[0.0, -1000.0, -2000.0]])


@given(data=st.data(), n=st.sampled_from([1, 2, 5]), k=st.sampled_from([1, 2, 3, 7]))
def test_cross_entropy(data, n, k):
    logits = data.draw(arrays((n, k), -5, 5))
    labels = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    ref = -log_softmax_ref(logits, 1)[np.arange(n), labels].mean()
    loss = F.cross_entropy(t64(logits), labels)
    assert loss.shape == ()
    np.testing.assert_allclose(loss.item(), ref, rtol=1e-12)
    np.testing.assert_allclose(F.cross_entropy(t64(logits), Tensor(labels)).item(), ref, rtol=1e-12)
    gradcheck(lambda x: F.cross_entropy(x, labels), [t64(logits)])


def test_cross_entropy_errors_name_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5,\)"):
        F.cross_entropy(Tensor(np.zeros((4, 3))), np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match=r"\(4,\).*\(4,\)|\(4,\)"):
        F.cross_entropy(Tensor(np.zeros(4)), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        F.cross_entropy(Tensor(np.zeros((2, 3))), np.array([0, 3]))
    with pytest.raises(ValueError, match="integers"):
        F.cross_entropy(Tensor(np.zeros((2, 3))), np.array([0.0, 1.0]))


# ---- dropout -------------------------------------------------------------------------------------

@given(data=st.data(), shape=shapes(1, 3), p=st.sampled_from([0.2, 0.5, 0.9]), seed=st.integers(0, 1000))
def test_dropout_fixed_mask(data, shape, p, seed):
    a = away_from(data.draw(arrays(shape)), (0.0,), 0.05)

    def fn(x):
        minibnn.manual_seed(seed)  # the same mask on every call
        return F.dropout(x, p)

    y1, y2 = fn(t64(a)).numpy(), fn(t64(a)).numpy()
    np.testing.assert_array_equal(y1, y2)
    kept = y1 != 0
    np.testing.assert_allclose(y1[kept], a[kept] / (1 - p), rtol=1e-12)
    gradcheck(fn, [t64(a)])


def test_dropout_statistics_and_eval_identity():
    minibnn.manual_seed(0)
    x = Tensor(np.ones(20000, dtype=np.float32))
    y = F.dropout(x, 0.3).numpy()
    assert y.dtype == np.float32
    assert abs((y == 0).mean() - 0.3) < 0.02
    assert abs(y.mean() - 1.0) < 0.03
    np.testing.assert_array_equal(F.dropout(x, 0.3, training=False).numpy(), x.numpy())
    np.testing.assert_array_equal(F.dropout(x, 0.0).numpy(), x.numpy())
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        F.dropout(x, 1.0)


def test_every_public_op_is_covered():
    """A new op in minibnn.functional must get a gradient check here (update this list with it)."""
    covered = {"abs", "add", "avg_pool2d", "batch_norm", "conv2d", "cross_entropy", "div", "dropout", "exp",
               "flatten", "getitem", "global_avg_pool2d", "hardtanh", "linear", "log", "log_softmax", "matmul",
               "max", "max_pool2d", "mean", "mul", "neg", "pad2d", "power", "relu", "reshape", "sigmoid",
               "softmax", "sub", "sum", "tanh", "transpose"}
    covered |= {"xnor_conv2d", "xnor_linear"}  # straight-through ops: checked in test_binary_layers.py
    covered |= {"kbit_conv2d", "kbit_linear"}  # exact k-bit forward: checked in test_deploy_bitserial.py
    assert set(F.__all__) <= covered, f"untested ops: {sorted(set(F.__all__) - covered)}"


# ---- torch.nn.functional as an oracle (optional) -------------------------------------------------

def _torch(a, requires_grad=True):
    torch = pytest.importorskip("torch")
    return torch.tensor(a, dtype=torch.float64, requires_grad=requires_grad)


@settings(max_examples=15)
@given(data=st.data(), g=conv_geometries())
def test_conv2d_against_torch(data, g):
    torch = pytest.importorskip("torch")
    x, w, b = _conv_inputs(data, g)
    tx, tw = _torch(x), _torch(w)
    tb = None if b is None else _torch(b)
    ty = torch.nn.functional.conv2d(tx, tw, tb, **_conv_kwargs(g))
    mx, mw = t64(x), t64(w)
    mb = None if b is None else t64(b)
    my = F.conv2d(mx, mw, mb, **_conv_kwargs(g))
    np.testing.assert_allclose(my.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    proj = np.random.default_rng(0).standard_normal(ty.shape)
    ty.backward(torch.tensor(proj))
    my.backward(proj)
    np.testing.assert_allclose(mx.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mw.grad, tw.grad.numpy(), rtol=1e-10, atol=1e-12)
    if b is not None:
        np.testing.assert_allclose(mb.grad, tb.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["max", "avg"])
@settings(max_examples=15)
@given(data=st.data(), g=pool_geometries())
def test_pooling_against_torch(kind, data, g):
    torch = pytest.importorskip("torch")
    a = data.draw(distinct_arrays(g.x_shape))
    stride = g.kernel if g.stride is None else g.stride
    tf = torch.nn.functional.max_pool2d if kind == "max" else torch.nn.functional.avg_pool2d
    mf = F.max_pool2d if kind == "max" else F.avg_pool2d
    tx, mx = _torch(a), t64(a)
    ty, my = tf(tx, g.kernel, stride, g.padding), mf(mx, g.kernel, g.stride, g.padding)
    np.testing.assert_allclose(my.numpy(), ty.detach().numpy(), rtol=1e-12)
    proj = np.random.default_rng(0).standard_normal(ty.shape)
    ty.backward(torch.tensor(proj))
    my.backward(proj)
    np.testing.assert_allclose(mx.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5), (2, 3, 4, 5)])
def test_batch_norm_against_torch(shape, affine):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape) * 2 + 1
    c = shape[1]
    w, b = rng.uniform(0.5, 2, c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    for training in (True, False, True):
        tx, mx = _torch(x), t64(x)
        targs = (_torch(w), _torch(b)) if affine else (None, None)
        margs = (t64(targs[0].detach().numpy()), t64(targs[1].detach().numpy())) if affine else (None, None)
        ty = torch.nn.functional.batch_norm(tx, trm, trv, *targs, training=training, momentum=0.1, eps=1e-5)
        my = F.batch_norm(mx, rm, rv, *margs, training=training, momentum=0.1, eps=1e-5)
        np.testing.assert_allclose(my.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-12)  # running stats updated the same way
        np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-12)
        proj = np.random.default_rng(0).standard_normal(shape)
        ty.backward(torch.tensor(proj))
        my.backward(proj)
        np.testing.assert_allclose(mx.grad, tx.grad.numpy(), rtol=1e-9, atol=1e-10)
        if affine:
            np.testing.assert_allclose(margs[0].grad, targs[0].grad.numpy(), rtol=1e-9, atol=1e-10)
            np.testing.assert_allclose(margs[1].grad, targs[1].grad.numpy(), rtol=1e-9, atol=1e-10)
        x = x + 0.5  # move the statistics for the next round


@given(data=st.data(), n=st.sampled_from([1, 3]), k=st.sampled_from([2, 5]))
def test_cross_entropy_against_torch(data, n, k):
    torch = pytest.importorskip("torch")
    logits = data.draw(arrays((n, k), -5, 5))
    labels = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    tx, mx = _torch(logits), t64(logits)
    tl = torch.nn.functional.cross_entropy(tx, torch.tensor(labels))
    ml = F.cross_entropy(mx, labels)
    np.testing.assert_allclose(ml.item(), tl.item(), rtol=1e-12)
    tl.backward()
    ml.backward()
    np.testing.assert_allclose(mx.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_error_messages_are_readable():
    """Messages name the op, so a user can find the failing call."""
    with pytest.raises(ValueError) as exc:
        F.linear(Tensor(np.zeros((2, 3))), Tensor(np.zeros((4, 5))))
    assert re.search(r"linear", str(exc.value))
    with pytest.raises(ValueError) as exc:
        F.conv2d(Tensor(np.zeros((1, 3, 5, 5))), Tensor(np.zeros((2, 4, 3, 3))))
    assert re.search(r"conv2d", str(exc.value))
    with pytest.raises(ValueError) as exc:
        F.cross_entropy(Tensor(np.zeros((4, 3))), np.zeros(5, dtype=np.int64))
    assert re.search(r"cross_entropy", str(exc.value))


def test_flatten_start_and_end_dim_follow_pytorch():
    x = np.arange(120, dtype=np.float64).reshape(2, 3, 4, 5)
    for start, end in [(1, -1), (1, 2), (0, -1), (2, 3), (0, 0)]:
        got = F.flatten(minibnn.Tensor(x, dtype=np.float64), start, end).numpy()
        expected_shape = x.shape[:start] + (int(np.prod(x.shape[start:end % 4 + 1])),) + x.shape[end % 4 + 1:]
        assert got.shape == expected_shape
        np.testing.assert_array_equal(got.ravel(), x.ravel())
    with pytest.raises(ValueError, match="start_dim 2 comes after end_dim 1"):
        F.flatten(minibnn.Tensor(x), 2, 1)
