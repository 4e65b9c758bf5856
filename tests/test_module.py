"""Module: state_dict round trip, strict loading, train/eval, to_config/from_config, astype."""
from __future__ import annotations

import json

import numpy as np
import pytest

import minibnn
from minibnn import nn
from minibnn.autograd import Tensor

from gradcheck import as64, gradcheck


def make_model() -> nn.Module:
    """A small BNN in BMXNet's shape: float first and last layer, binary layers in between."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.QActivation(1),
        nn.QConv2d(4, 6, (3, 2), stride=1, padding=1, pad_value=-1, scaling=True),
        nn.BatchNorm2d(6),
        nn.MaxPool2d(2),
        nn.QActivation(2),
        nn.QConv2d(6, 4, 1, act_bit=2, weight_bit=2),
        nn.ReLU(),
        nn.AvgPool2d(2, padding=1),
        nn.Flatten(),
        nn.QDense(4 * 2 * 3, 8, bias=True),
        nn.BatchNorm1d(8, affine=False),
        nn.Dropout(0.3),
        nn.HardTanh(),
        nn.Dense(8, 3),
    )


X = np.random.default_rng(0).standard_normal((2, 1, 6, 7)).astype(np.float32)


def run(model, x=X):
    return model(Tensor(x)).numpy()


def test_state_dict_round_trip(seeded):
    a = make_model().eval()
    minibnn.manual_seed(1)
    b = make_model().eval()
    a.train()
    run(a)  # moves a's running statistics away from their initial values
    a.eval()
    assert not np.allclose(run(a), run(b))
    state = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b.load_state_dict(state)
    np.testing.assert_array_equal(run(a), run(b))
    state["0.weight"][...] = 0  # the state dict holds copies, not views of the parameters
    assert np.any(a[0].weight.numpy() != 0)


def test_state_dict_names_parameters_and_buffers(seeded):
    state = make_model().state_dict()
    bn = {"weight", "bias", "running_mean", "running_var"}
    expected = ({"0.weight", "0.bias", "3.weight", "7.weight", "11.weight", "11.bias", "15.weight", "15.bias",
                 "12.running_mean", "12.running_var"} | {f"1.{k}" for k in bn} | {f"4.{k}" for k in bn})
    assert set(state) == expected  # no bias on bias-free Q-layers, no affine parameters on 12


def test_load_state_dict_strict_keys(seeded):
    model = make_model()
    state = model.state_dict()
    missing = dict(state)
    del missing["3.weight"]
    with pytest.raises(KeyError, match=r"3\.weight"):
        model.load_state_dict(missing)
    extra = dict(state, **{"99.weight": np.zeros(3, np.float32)})
    with pytest.raises(KeyError, match=r"99\.weight"):
        model.load_state_dict(extra)
    model.load_state_dict(extra, strict=False)  # non-strict: unknown keys ignored, missing ones kept
    model.load_state_dict(missing, strict=False)


def test_load_state_dict_shape_mismatch(seeded):
    model = make_model()
    state = model.state_dict()
    state["15.weight"] = np.zeros((3, 9), np.float32)
    with pytest.raises(ValueError, match=r"15\.weight.*\(3, 9\).*\(3, 8\)"):
        model.load_state_dict(state)


def test_load_state_dict_keeps_dtype_and_identity(seeded):
    model = make_model()
    weight = model[0].weight
    state = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    state["0.weight"][...] = 0.25
    model.load_state_dict(state)
    assert model[0].weight is weight and weight.dtype == np.float32  # copied in place: optimizers keep working
    np.testing.assert_array_equal(weight.numpy(), 0.25)


def test_train_eval_propagates(seeded):
    model = make_model()
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    a, b = run(model), run(model)
    np.testing.assert_array_equal(a, b)  # eval: running statistics, no dropout -> deterministic
    model.train()
    assert all(m.training for m in model.modules())
    minibnn.manual_seed(7)
    c = run(model)
    assert not np.allclose(a, c)  # batch statistics and dropout in training
    model[1].eval()
    assert not model[1].training and model[0].training


def test_bn_running_stats_move_only_in_training(seeded):
    model = make_model()
    before = model.state_dict()
    model.eval()
    run(model)
    after_eval = model.state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after_eval[k])
    model.train()
    run(model)
    assert not np.allclose(before["1.running_mean"], model.state_dict()["1.running_mean"])


class BatchNormReference:
    """Batch norm with PyTorch's conventions in plain float64 NumPy: training normalises with the biased
    batch variance and moves running_mean / running_var by ``momentum`` towards the batch mean and the
    unbiased batch variance (n = all values per channel: N, or N*L, or N*H*W); eval uses the running ones."""

    def __init__(self, c, eps=1e-5, momentum=0.1):
        self.mean, self.var, self.eps, self.momentum = np.zeros(c), np.ones(c), eps, momentum

    def __call__(self, x, weight, bias, training):
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if training:
            mean, var = x.mean(axis=axes), x.var(axis=axes)
            n = x.size // x.shape[1]
            self.mean = (1 - self.momentum) * self.mean + self.momentum * mean
            self.var = (1 - self.momentum) * self.var + self.momentum * var * n / (n - 1)
        else:
            mean, var = self.mean, self.var
        return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + self.eps) * weight.reshape(shape) \
            + bias.reshape(shape)


@pytest.mark.parametrize("layer, shape, momentum", [
    (nn.BatchNorm1d, (6, 3), 0.1), (nn.BatchNorm1d, (4, 3, 5), 0.1), (nn.BatchNorm2d, (3, 2, 4, 5), 0.1),
    (nn.BatchNorm2d, (2, 3, 3, 2), 0.3)])
def test_batch_norm_layer_running_statistics_match_a_numpy_reference(layer, shape, momentum):
    """Several training steps on different batches, eval steps in between and after: outputs and running
    statistics of the layer follow the NumPy reference (no torch needed)."""
    rng = np.random.default_rng(3)
    c = shape[1]
    bn = layer(c) if momentum == 0.1 else layer(c, momentum=momentum)
    assert bn.eps == 1e-5 and bn.momentum == momentum
    bn.weight.data[...] = rng.uniform(0.5, 2, c)
    bn.bias.data[...] = rng.standard_normal(c)
    ref = BatchNormReference(c, momentum=momentum)
    np.testing.assert_array_equal(bn.running_mean, ref.mean)  # starts at mean 0, variance 1
    np.testing.assert_array_equal(bn.running_var, ref.var)
    w, b = bn.weight.numpy().astype(np.float64), bn.bias.numpy().astype(np.float64)
    for step, training in enumerate([True, True, False, True, False]):
        x = (rng.standard_normal(shape) * (1 + step) + 2 * step - 1).astype(np.float32)  # stats move per step
        bn.train(training)
        y = bn(Tensor(x)).numpy()
        want = ref(x.astype(np.float64), w, b, training)
        np.testing.assert_allclose(y, want, rtol=2e-5, atol=2e-5, err_msg=f"step {step}")
        np.testing.assert_allclose(bn.running_mean, ref.mean, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
        np.testing.assert_allclose(bn.running_var, ref.var, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
        assert bn.running_mean.dtype == bn.running_var.dtype == np.float32


def test_config_round_trip_rebuilds_the_same_model(seeded):
    model = make_model()
    config = model.to_config()
    text = json.dumps(config)  # plain JSON, nothing pickled
    rebuilt = nn.from_config(json.loads(text))
    assert type(rebuilt) is type(model)
    assert rebuilt.to_config() == config
    for name in ("kernel_size", "pad_value", "scaling", "act_bit"):
        assert repr(rebuilt).count(name) == repr(model).count(name), name
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [(k, v.shape) for k, v in
                                                                       model.state_dict().items()]
    for original, copy in zip(model.modules(), rebuilt.modules()):
        assert type(original) is type(copy)
    rebuilt.load_state_dict(model.state_dict())
    model.eval()
    rebuilt.eval()
    np.testing.assert_array_equal(run(rebuilt), run(model))


def test_config_keeps_layer_options():
    layer = nn.QConv2d(3, 5, (3, 1), stride=2, padding=(1, 0), act_bit=2, weight_bit=4, pad_value=-1, bias=True,
                       scaling="channel")
    copy = nn.from_config(json.loads(json.dumps(layer.to_config())))
    for attr in ("act_bit", "weight_bit", "pad_value", "padding", "stride", "scaling"):
        assert getattr(copy, attr) == getattr(layer, attr), attr
    assert copy.weight.shape == layer.weight.shape and copy.bias is not None
    assert copy.weight.clip == layer.weight.clip


def test_from_config_rejects_unknown_and_malformed():
    with pytest.raises(ValueError, match="NoSuchLayer"):
        nn.from_config({"type": "NoSuchLayer", "args": {}})
    with pytest.raises(ValueError):
        nn.from_config({"args": {}})
    with pytest.raises(ValueError, match="Dense"):
        nn.from_config({"type": "Dense", "args": {"in_features": 3, "bogus": 1}})


def test_astype_float64(seeded):
    model = make_model().astype(np.float64)
    for p in model.parameters():
        assert p.dtype == np.float64
    for _, b in model.named_buffers():
        assert b.dtype == np.float64
    model.eval()
    y = model(Tensor(X, dtype=np.float64))
    assert y.dtype == np.float64
    # values: a float model (no sign that a rounding difference could flip) against its float32 twin
    f32 = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                        nn.Dense(3 * 6 * 7, 2)).eval()
    f64 = nn.from_config(f32.to_config())
    f64.load_state_dict(f32.state_dict())
    f64.astype(np.float64).eval()
    np.testing.assert_allclose(f64(Tensor(X, dtype=np.float64)).numpy(), run(f32), rtol=1e-5, atol=1e-5)


def test_astype_float64_allows_gradcheck_of_float_layers(seeded):
    model = nn.Sequential(nn.Conv2d(2, 3, 2, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(),
                          nn.Dense(3 * 4 * 4, 2)).astype(np.float64)
    x = as64(np.random.default_rng(1).standard_normal((2, 2, 3, 3)))
    gradcheck(model, [x])
    # gradients of the parameters: swap float64 stand-ins in for them
    gradcheck(lambda *ps: _swap(model, ps, x), [as64(p.numpy()) for p in model.parameters()])


def _swap(model, values, x):
    saved = [(m, name, getattr(m, name)) for m in model.modules() for name in list(m._parameters)]
    it = iter(values)
    for m, name, _ in saved:
        object.__setattr__(m, name, next(it))
    try:
        return model(x)
    finally:
        for m, name, p in saved:
            object.__setattr__(m, name, p)


def test_parameters_are_unique_and_zero_grad(seeded):
    shared = nn.Dense(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(model.parameters()) == 2
    model(Tensor(np.ones((1, 3)))).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_sequential_container():
    model = nn.Sequential(nn.ReLU(), nn.Identity(), nn.Tanh())
    assert len(model) == 3 and isinstance(model[2], nn.Tanh)
    assert [type(m).__name__ for m in model] == ["ReLU", "Identity", "Tanh"]
    with pytest.raises(TypeError, match="item 1"):
        nn.Sequential(nn.ReLU(), "relu")


def test_module_requires_super_init():
    class Broken(nn.Module):
        def __init__(self):
            self.x = 1

    with pytest.raises(AttributeError, match="super"):
        Broken()
