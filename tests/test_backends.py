"""Every op, module, optimizer and model on every backend against the numpy backend (the reference).

Each case builds its inputs on the host, runs forward and backward on one backend, and brings the
output and the gradients back; the other backends must match the numpy backend within float32
rounding (integer results of the binary ops exactly). ``native`` runs in CI; ``cuda`` runs where
CuPy and a GPU are present and is reported as skipped elsewhere.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minibnn
from minibnn import backend, data, deploy, functional as F, models, optim, quantize, train
from minibnn.autograd import Tensor

from strategies import conv_geometries, pool_geometries

def _backend_param(name: str):
    marks = [pytest.mark.skipif(name not in backend.available(), reason=f"backend {name!r} is not available here")]
    return pytest.param(name, marks=marks + ([pytest.mark.gpu] if name == "cuda" else []))


OTHERS = [_backend_param(name) for name in ("native", "cuda")]
needs_gpu = [pytest.mark.gpu, pytest.mark.skipif("cuda" not in backend.available(),
                                                 reason="the cuda backend is not available here (no CuPy or GPU)")]
RTOL, ATOL = 2e-5, 2e-5  # float32: summation order differs between BLAS libraries


def host(a):
    return None if a is None else backend.to_numpy(a)


def run(name: str, fn, inputs: list[np.ndarray], grad_of: tuple[int, ...] = (0,), seed: int = 0):
    """fn(*tensors) on backend ``name``: (output, gradients of the inputs in grad_of) as NumPy arrays."""
    with minibnn.using(name):
        tensors = [Tensor(a, requires_grad=i in grad_of) for i, a in enumerate(inputs)]
        out = fn(*tensors)
        proj = np.random.default_rng(seed).standard_normal(out.shape).astype(np.float32)
        if grad_of:
            out.backward(proj)
        return host(out.data), [host(tensors[i].grad) for i in grad_of]


def assert_same(name: str, fn, inputs, grad_of=(0,), exact_forward: bool = False) -> None:
    """Output and gradients of ``fn`` on backend ``name`` equal the numpy backend's (within float32
    rounding; ``exact_forward``: the output bit for bit, e.g. the integer results of a binary op)."""
    want_out, want_grads = run("numpy", fn, inputs, grad_of)
    got_out, got_grads = run(name, fn, inputs, grad_of)
    if exact_forward:
        np.testing.assert_array_equal(got_out, want_out, err_msg="forward")
    else:
        np.testing.assert_allclose(got_out, want_out, rtol=RTOL, atol=ATOL, err_msg="forward")
    for i, (g, w) in enumerate(zip(got_grads, want_grads)):
        assert (g is None) == (w is None), f"gradient {i}: present on one backend only"
        if w is not None:  # float matmuls of the straight-through backward: BLAS rounding differs
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=f"gradient of input {grad_of[i]}")


def rand(seed: int, *shape, lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


# ---------------------------------------------------------------- every op of minibnn.functional

ELEMENTWISE = {
    "add": (F.add, 2), "sub": (F.sub, 2), "mul": (F.mul, 2), "div": (F.div, 2), "neg": (F.neg, 1),
    "exp": (F.exp, 1), "log": (lambda x: F.log(F.abs(x) + 0.5), 1), "abs": (F.abs, 1), "tanh": (F.tanh, 1),
    "sigmoid": (F.sigmoid, 1), "relu": (F.relu, 1), "hardtanh": (F.hardtanh, 1),
    "power": (lambda x: F.power(x, 3), 1), "softmax": (lambda x: F.softmax(x, axis=1), 1),
    "log_softmax": (lambda x: F.log_softmax(x, axis=-1), 1), "sum": (lambda x: F.sum(x, axis=1), 1),
    "mean": (lambda x: F.mean(x, axis=(0, 2), keepdims=True), 1), "max": (lambda x: F.max(x, axis=2), 1),
    "reshape": (lambda x: F.reshape(x, (3, -1)), 1), "transpose": (lambda x: F.transpose(x, (2, 0, 1)), 1),
    "flatten": (F.flatten, 1), "getitem": (lambda x: F.getitem(x, (slice(None), 1)), 1),
    "getitem_fancy": (lambda x: F.getitem(x, (np.array([0, 2, 0]), np.array([1, 1, 1]))), 1),
    "pad2d": (lambda x: F.pad2d(x[None], (1, 2), 0.5), 1),
    "matmul": (lambda a, b: F.matmul(a, F.transpose(b, (0, 2, 1))), 2),
}


@pytest.mark.parametrize("name", OTHERS)
@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
def test_elementwise_and_shape_ops(name, op):
    fn, arity = ELEMENTWISE[op]
    inputs = [rand(i, 3, 4, 5) for i in range(arity)]
    if op == "div":
        inputs[1] = np.where(np.abs(inputs[1]) < 0.3, 0.7, inputs[1]).astype(np.float32)
    assert_same(name, fn, inputs, grad_of=tuple(range(arity)))


@pytest.mark.parametrize("name", OTHERS)
@settings(max_examples=10)
@given(g=conv_geometries(), seed=st.integers(0, 2**16))
def test_conv2d(name, g, seed):
    inputs = [rand(seed, *g.x_shape), rand(seed + 1, *g.w_shape)] + ([rand(seed + 2, g.o)] if g.bias else [])
    kw = dict(stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups)
    assert_same(name, lambda x, w, *b: F.conv2d(x, w, *b, **kw), inputs, grad_of=tuple(range(len(inputs))))


@pytest.mark.parametrize("name", OTHERS)
@pytest.mark.parametrize("kind", ["max", "avg"])
@settings(max_examples=10)
@given(g=pool_geometries(), seed=st.integers(0, 2**16))
def test_pooling(name, kind, g, seed):
    pool = F.max_pool2d if kind == "max" else F.avg_pool2d
    assert_same(name, lambda x: pool(x, g.kernel, g.stride, g.padding), [rand(seed, *g.x_shape)])


@pytest.mark.parametrize("name", OTHERS)
def test_linear_global_pool_dropout_cross_entropy(name):
    assert_same(name, lambda x, w, b: F.linear(x, w, b), [rand(0, 5, 7), rand(1, 3, 7), rand(2, 3)], (0, 1, 2))
    assert_same(name, F.global_avg_pool2d, [rand(3, 2, 3, 4, 5)])
    minibnn.manual_seed(0)  # dropout masks are drawn on the host: the same on every backend
    want = run("numpy", lambda x: F.dropout(x, 0.4), [rand(4, 6, 7)])
    minibnn.manual_seed(0)
    got = run(name, lambda x: F.dropout(x, 0.4), [rand(4, 6, 7)])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    labels = np.array([0, 3, 1, 3, 2])
    assert_same(name, lambda z: F.cross_entropy(z, labels), [rand(5, 5, 4)])


@pytest.mark.parametrize("name", OTHERS)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(name, training):
    x, w, b = rand(0, 6, 3, 4, 5), rand(1, 3), rand(2, 3)
    stats = {}
    for backend_name in ("numpy", name):
        with minibnn.using(backend_name):
            mean, var = minibnn.backend.xp().asarray(rand(3, 3)), minibnn.backend.xp().asarray(rand(4, 3, lo=0.5))
            stats[backend_name] = (mean, var)
    fns = {n: (lambda m, v: lambda x, w, b: F.batch_norm(x, m, v, w, b, training=training))(*stats[n])
           for n in stats}
    want = run("numpy", fns["numpy"], [x, w, b], (0, 1, 2))
    got = run(name, fns[name], [x, w, b], (0, 1, 2))
    for g, w_ in zip([got[0], *got[1]], [want[0], *want[1]]):
        np.testing.assert_allclose(g, w_, rtol=1e-4, atol=1e-5)
    for a, b_ in zip(stats[name], stats["numpy"]):  # the running statistics moved the same way
        np.testing.assert_allclose(host(a), host(b_), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", OTHERS)
@pytest.mark.parametrize("pad_value", [0, 1, -1])
def test_xnor_ops_are_exact(name, pad_value):
    sign = lambda a: np.where(a >= 0, 1, -1).astype(np.float32)  # noqa: E731
    assert_same(name, F.xnor_linear, [sign(rand(0, 5, 130)), sign(rand(1, 7, 130))], (0, 1), exact_forward=True)
    assert_same(name, lambda x, w: F.xnor_conv2d(x, w, stride=2, padding=1, pad_value=pad_value),
                [sign(rand(2, 2, 67, 6, 5)), sign(rand(3, 9, 67, 3, 3))], (0, 1), exact_forward=True)


@pytest.mark.parametrize("name", OTHERS)
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_quantizers(name, bits):
    x = rand(0, 4, 50)
    x[0, :3] = [0.0, 1.0, -1.0]  # the kinks: sign at 0, the STE's clip edges
    assert_same(name, lambda t: quantize.quantize_activation(t, bits), [x])
    assert_same(name, lambda t: quantize.quantize_weight(t, bits), [x])
    assert_same(name, quantize.approx_sign, [x])


# ---------------------------------------------------------------- modules, optimizers, training

# A binary network amplifies rounding: a pre-activation within rounding of 0 (a feature that is the
# same for the whole batch, as MNIST's blank borders are, leaves batch norm with x - mean = +-1 ulp)
# takes its sign from the summation order, which differs between BLAS and reduction libraries, and
# one flipped sign moves a binary dot by 2. Even in float64 such ties occur. So: the optimizers are
# compared on identical gradients, whole models in float64 with float layers (no sign: the backends
# agree to rounding), and binary training runs loosely (test_lenet_20_steps_same_losses); the binary
# ops themselves are exact (test_xnor_ops_are_exact, test_packed_model_same_logits).

def _model_and_batch(seed: int = 0, bits: int = 1, dtype=np.float32, batch: int = 6):
    minibnn.manual_seed(seed)
    model = models.lenet(act_bit=bits, weight_bit=bits, channels=(8, 16)).astype(dtype)
    rng = np.random.default_rng(seed)
    return model, rng.standard_normal((batch, 1, 28, 28)).astype(dtype), rng.integers(0, 10, batch)


OPTIMIZERS = {
    "sgd": lambda m: optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda m: optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-4),
    "adamw": lambda m: optim.AdamW(m.parameters(), lr=1e-2),
    "bop": lambda m: optim.make_optimizer("bop", m, 1e-2),
}


def _optimizer_steps(backend_name: str, opt_name: str, steps: int = 3):
    """Steps of an optimizer over a binary LeNet's parameters (latent clipping included) with the same
    host-drawn gradients on every backend: (final parameters, flip ratio of the last step)."""
    with minibnn.using(backend_name):
        model, _, _ = _model_and_batch()
        model.to()
        opt = OPTIMIZERS[opt_name](model)
        rng = np.random.default_rng(1)
        for _ in range(steps):
            for p in model.parameters():
                p.grad = backend.xp().asarray(rng.standard_normal(p.data.shape).astype(np.float32) * 0.1)
            opt.step()
        return model.state_dict(), float(getattr(opt, "flip_ratio", 0.0))


@pytest.mark.parametrize("name", OTHERS)
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_optimizers_give_the_same_steps(name, opt_name):
    want_state, want_flips = _optimizer_steps("numpy", opt_name)
    got_state, got_flips = _optimizer_steps(name, opt_name)
    assert got_flips == want_flips
    for key in want_state:
        np.testing.assert_allclose(got_state[key], want_state[key], rtol=1e-5, atol=1e-7, err_msg=key)


def _training_steps(backend_name: str, opt_name: str, steps: int = 3):
    """float64 training steps of a float LeNet (modules, autograd, optimizer): (losses, parameters)."""
    with minibnn.using(backend_name):
        model, x, y = _model_and_batch(bits=32, dtype=np.float64, batch=8)
        model.to()
        opt = OPTIMIZERS[opt_name](model)
        losses = []
        for _ in range(steps):
            loss = F.cross_entropy(model(Tensor(x, dtype=np.float64)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
        return losses, model.state_dict()


@pytest.mark.parametrize("name", OTHERS)
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_modules_train_the_same(name, opt_name):
    want_losses, want_state = _training_steps("numpy", opt_name)
    got_losses, got_state = _training_steps(name, opt_name)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-9)
    for key in want_state:  # atol: the first batch norm's bias has a gradient of exactly 0 in exact
        # arithmetic (the next batch norm removes any shift), so Adam moves it by rounding noise only
        np.testing.assert_allclose(got_state[key], want_state[key], rtol=1e-7, atol=1e-6, err_msg=key)


def test_cross_entropy_label_range_error_names_the_values():
    logits = Tensor(rand(0, 3, 4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got values from 0 to 4"):
        F.cross_entropy(logits, np.array([0, 4, 1]))


@pytest.mark.parametrize("name", OTHERS)
@pytest.mark.parametrize("bits", [32, 1])
def test_lenet_20_steps_same_losses(name, bits):
    """fit() on MNIST for 20 steps: the same loss and accuracy on both backends; the float LeNet to
    float32 rounding, the binary one within a few percent (signs at ties may differ: see above)."""
    x, y = data.load_mnist("train")
    x = data.normalize(x[:640], data.MNIST_MEAN, data.MNIST_STD)
    results = {}
    for backend_name in ("numpy", name):
        with minibnn.using(backend_name):
            minibnn.manual_seed(0)
            model = models.lenet(act_bit=bits, weight_bit=bits)
            opt = optim.Adam(model.parameters(), lr=2e-3)
            loader = data.DataLoader(x, y[:640], 32, shuffle=True, seed=0)  # 20 steps
            hist = train.fit(model, loader, opt, 1, progress=False, verbose=False)
            results[backend_name] = (hist["loss"][0], hist["accuracy"][0])
    loose = bits == 1
    assert results[name][0] == pytest.approx(results["numpy"][0], rel=5e-2 if loose else 1e-3)
    assert results[name][1] == pytest.approx(results["numpy"][1], abs=0.05 if loose else 2 / 640)


@pytest.mark.parametrize("name", OTHERS)
def test_checkpoint_moves_between_backends(name, tmp_path):
    """Saved on one backend, loaded on the other and back: the same arrays, and resume works."""
    x, y = data.load_mnist("train")
    x = data.normalize(x[:128], data.MNIST_MEAN, data.MNIST_STD)
    with minibnn.using(name):
        minibnn.manual_seed(0)
        model = models.lenet(act_bit=1, weight_bit=1, channels=(8, 16))
        opt = optim.Adam(model.parameters(), lr=2e-3)
        train.fit(model, data.DataLoader(x, y[:128], 64, seed=0), opt, 1, checkpoint_dir=tmp_path,
                  progress=False, verbose=False)
        saved = model.state_dict()
    with minibnn.using("numpy"):
        minibnn.manual_seed(1)
        other = models.lenet(act_bit=1, weight_bit=1, channels=(8, 16))
        other_opt = optim.Adam(other.parameters(), lr=2e-3)
        train.load_checkpoint(tmp_path, other, other_opt)
        for key, value in other.state_dict().items():
            np.testing.assert_array_equal(value, saved[key], err_msg=key)
        minibnn.save(other, tmp_path / "m")
    with minibnn.using(name):
        back = minibnn.load(tmp_path / "m")
        assert all(backend.get_array_module(p.data) is backend.xp() for p in back.parameters())
        for key, value in back.state_dict().items():
            np.testing.assert_array_equal(value, saved[key], err_msg=key)


@pytest.mark.parametrize("name", OTHERS)
@pytest.mark.parametrize("arch", ["lenet", "resnet18", "lenet-2bit", "mlp-2bit"])
def test_packed_model_same_logits(name, arch):
    """A model trained (one step) on the backend, converted, predicts the same logits there and on numpy."""
    shape = (3, 16, 16) if arch == "resnet18" else (1, 28, 28)
    with minibnn.using(name):
        minibnn.manual_seed(0)
        bits = 2 if arch.endswith("2bit") else 1  # 2 bits: the bit-serial layers (issue 13)
        model = {"lenet": lambda: models.lenet(bits, bits, channels=(16, 32)), "resnet18": lambda: models.resnet18(width=8),
                 "mlp": lambda: models.binary_mlp(hidden=(64, 96, 70), act_bit=bits, weight_bit=bits),  # planes fold
                 }[arch.split("-")[0]]()
        x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
        opt = optim.Adam(model.parameters(), lr=1e-2)
        loss = F.cross_entropy(model(Tensor(x)), np.arange(4))
        loss.backward()
        opt.step()  # batch-norm statistics and weights off their defaults
        packed = deploy.convert(model, shape)
        got = host(packed.predict(x))
        model.eval()
        with minibnn.no_grad():
            expected = host(model(Tensor(x)).data)
    with minibnn.using("numpy"):
        want = packed.predict(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- devices and clear errors

@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available(), reason="the cuda backend is not available here")
def test_mixing_devices_in_one_op_names_the_op():
    import cupy

    with minibnn.using("cuda"):
        a = Tensor(rand(0, 2, 3))
    b = Tensor._wrap(rand(1, 2, 3))
    assert isinstance(a.data, cupy.ndarray)
    with pytest.raises(ValueError, match=r"Add: inputs on different devices"):
        _ = a + b


def test_module_to_an_unknown_or_missing_backend_is_a_clear_error():
    model = models.lenet(channels=(4, 8))
    assert model.to("numpy") is model
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        model.to("nope")
    if "cuda" not in backend.available():
        with pytest.raises(minibnn.backend.BackendUnavailable, match="backend 'cuda' is not available"):
            model.to("cuda")


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available(), reason="the cuda backend is not available here")
def test_module_to_moves_parameters_and_buffers_between_host_and_gpu():
    import cupy

    model = models.lenet(channels=(4, 8))
    before = model.state_dict()
    model.to("cuda")
    assert all(isinstance(p.data, cupy.ndarray) for p in model.parameters())
    assert all(isinstance(b, cupy.ndarray) for _, b in model.named_buffers())
    model.to("numpy")
    assert all(isinstance(p.data, np.ndarray) for p in model.parameters())
    assert all(isinstance(b, np.ndarray) for _, b in model.named_buffers())
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_out_of_memory_names_the_batch_size_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    x, y = data.load_mnist("train")
    x = data.normalize(x[:64], data.MNIST_MEAN, data.MNIST_STD)
    minibnn.manual_seed(0)
    model = models.lenet(channels=(4, 8))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loader = data.DataLoader(x, y[:64], 32, seed=0)
    train.fit(model, loader, opt, 1, checkpoint_dir=tmp_path, progress=False, verbose=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Out of memory allocating 1,073,741,824 bytes")

    monkeypatch.setattr(train, "evaluate", out_of_memory)  # in the validation pass
    with pytest.raises(train.TrainingOutOfMemory, match=r"validation of epoch 2 with batch size 16"):
        train.fit(model, loader, opt, 2, val_loader=data.DataLoader(x, y[:64], 16), checkpoint_dir=tmp_path,
                  resume=True, progress=False, verbose=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.setattr(type(model), "forward", out_of_memory)  # in a training step
    with pytest.raises(train.TrainingOutOfMemory, match=r"epoch 2, step 1 with batch size 32.*lower the batch size"):
        train.fit(model, loader, opt, 2, checkpoint_dir=tmp_path, resume=True, progress=False, verbose=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


SPIN = r"""
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available(), reason="the cuda backend is not available here")
@pytest.mark.parametrize("opt_name", ["adam", "bop"])
def test_training_step_does_not_wait_for_the_gpu(opt_name):
    """Forward, backward, the step's statistics and the optimizer step only enqueue GPU work.

    A kernel that keeps the GPU busy for about a second runs first; any host sync inside the step
    would wait for it. fit() then reads the statistics once per step (train.train_step).
    """
    import cupy

    with minibnn.using("cuda"):
        model, x, y = _model_and_batch()
        opt = OPTIMIZERS[opt_name](model)
        for _ in range(2):  # compile the kernels, fill the memory pool
            stats, _ = train.forward_backward(model, x, y)
            opt.step()
        cupy.cuda.Device().synchronize()
        rate = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["clockRate"] * 1000  # Hz
        spin = cupy.RawKernel(SPIN, "spin")
        spin((1,), (1,), (np.int64(2 * rate),))  # about 1-2 s of GPU time (the clock may boost)
        start = time.perf_counter()
        stats, names = train.forward_backward(model, x, y)
        opt.step()
        enqueued = time.perf_counter() - start
        busy = not cupy.cuda.get_current_stream().done
        host_stats = backend.to_numpy(stats)
    assert busy, "the spin kernel ended before the step was enqueued: the test cannot tell"
    assert enqueued < 0.5, f"the step took {enqueued:.2f} s to enqueue: it waited for the GPU (a host sync)"
    assert len(host_stats) == 2 + len(names) and np.isfinite(host_stats).all()


def test_default_backend_is_never_cuda(monkeypatch):
    """Without MINIBNN_BACKEND the default is native (when built) or numpy, even where a GPU is."""
    monkeypatch.delenv("MINIBNN_BACKEND", raising=False)
    assert backend._default() == ("native" if "native" in backend.available() else "numpy")


def test_binary_layer_with_nonzero_tail_bits_is_refused_when_built():
    """The packed layers skip the kernels' tail scan, so their constructor checks the weights once."""
    from minibnn.deploy.ops import BinaryDense, Epilogue

    with pytest.raises(ValueError, match="weight_bits has nonzero tail bits past bit 10"):
        BinaryDense(np.full((3, 1), 2**64 - 1, np.uint64), 10, Epilogue())
    with pytest.raises(ValueError, match="weight_bits has 2 words per row, 10 inputs need 1"):
        BinaryDense(np.zeros((3, 2), np.uint64), 10, Epilogue())
