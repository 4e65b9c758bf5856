"""Binary Q-layers run on the backend kernels: same forward as the float simulation, bit for bit,
the same straight-through gradients, and identical training on every backend."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minibnn
from minibnn import Tensor, backend, data, models, optim, train
from minibnn import functional as F

BACKENDS = [b for b in backend.available() if b != "cuda"]


def _signs(rng, shape):
    return np.where(rng.normal(size=shape) >= 0, 1.0, -1.0).astype(np.float32)


def _float_conv(xq, wq, stride, padding, pad_value):
    """Float-simulation reference: explicit padding with pad_value, then conv2d."""
    xpad = np.pad(xq, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=pad_value)
    return F.conv2d(Tensor(xpad), Tensor(wq), stride=stride).numpy()


@pytest.mark.parametrize("name", BACKENDS)
@given(m=st.sampled_from([1, 3, 17]), k=st.sampled_from([1, 63, 64, 65, 130]), n=st.sampled_from([1, 5, 64]),
       seed=st.integers(0, 2**16))
def test_xnor_linear_equals_float_matmul(name, m, k, n, seed):
    rng = np.random.default_rng(seed)
    xq, wq = _signs(rng, (m, k)), _signs(rng, (n, k))
    with minibnn.using(name):
        y = F.xnor_linear(Tensor(xq), Tensor(wq)).numpy()
    np.testing.assert_array_equal(y, xq @ wq.T)


@pytest.mark.parametrize("name", BACKENDS)
@given(batch=st.sampled_from([1, 2]), c=st.sampled_from([1, 3, 17, 64, 100]), o=st.sampled_from([1, 4]),
       kernel=st.sampled_from([1, 3, 5]), stride=st.sampled_from([1, 2]), padding=st.sampled_from([0, 1, 2]),
       pad_value=st.sampled_from([0, 1, -1]), seed=st.integers(0, 2**16))
def test_xnor_conv2d_equals_float_conv(name, batch, c, o, kernel, stride, padding, pad_value, seed):
    rng = np.random.default_rng(seed)
    side = kernel + 3
    xq, wq = _signs(rng, (batch, c, side, side)), _signs(rng, (o, c, kernel, kernel))
    with minibnn.using(name):
        y = F.xnor_conv2d(Tensor(xq), Tensor(wq), stride, padding, pad_value).numpy()
    np.testing.assert_array_equal(y, _float_conv(xq, wq, stride, padding, pad_value))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("pad_value", [0, 1, -1])
def test_qconv2d_gradients_match_float_simulation(name, pad_value):
    """The kernel path's straight-through gradients equal those of the float simulation."""
    rng = np.random.default_rng(pad_value + 5)
    x = rng.normal(size=(2, 5, 7, 7)).astype(np.float32)
    projection = Tensor(rng.normal(size=(2, 3, 4, 4)))
    layer = minibnn.nn.QConv2d(5, 3, 3, stride=2, padding=1, pad_value=pad_value)
    with minibnn.using(name):
        xt = Tensor(x, requires_grad=True)
        (layer(xt) * projection).sum().backward()
    # the float simulation, written out with the generic ops
    xs = Tensor(x, requires_grad=True)
    w = Tensor(layer.weight.numpy(), requires_grad=True)
    xq = F.pad2d(minibnn.quantize.ste_sign(xs), 1, pad_value)
    (F.conv2d(xq, minibnn.quantize.sign(w), stride=2) * projection).sum().backward()
    np.testing.assert_allclose(xt.grad, xs.grad, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.weight.grad, w.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(len(BACKENDS) < 2, reason="only one CPU backend is available (native not built)")
def test_binary_lenet_trains_identically_on_every_backend():
    x, y = data.load_mnist("train")
    x = data.normalize(x[:256], data.MNIST_MEAN, data.MNIST_STD)
    losses = {}
    for name in BACKENDS:
        minibnn.manual_seed(0)
        with minibnn.using(name):
            model = models.lenet(1, 1, channels=(16, 20), hidden=64)
            opt = optim.Adam(model.parameters(), lr=2e-3)
            hist = train.fit(model, data.DataLoader(x, y[:256], 64, shuffle=True, seed=0), opt, 2,
                             progress=False, verbose=False)
            losses[name] = (hist["loss"], model.state_dict())
    ref_loss, ref_state = losses.pop("numpy")
    for name, (loss, state) in losses.items():
        assert loss == ref_loss, name
        for key in ref_state:
            np.testing.assert_array_equal(state[key], ref_state[key], err_msg=f"{name}: {key}")
