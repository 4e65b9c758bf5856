"""Optimizers and schedules against hand-written NumPy references (and torch.optim when installed)."""
import io
import json
import math

import numpy as np
import pytest

from minibnn import optim
from minibnn.nn import Module, Parameter

SHAPES = [(3, 4), (5,), (2, 1, 3)]
STEPS = 6


def make_params(seed=0, clip=None):
    """Float64 parameters (so references can be compared tightly)."""
    rng = np.random.default_rng(seed)
    params = [Parameter(rng.normal(size=s), clip=clip) for s in SHAPES]
    for p in params:
        p.data = p.data.astype(np.float64)
    return params


def grads(seed=1):
    """STEPS lists of gradients, one per parameter."""
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=s) for s in SHAPES] for _ in range(STEPS)]


def run(opt, params, all_grads):
    for gs in all_grads:
        for p, g in zip(params, gs):
            p.grad = g.copy()
        opt.step()
    return [p.data.copy() for p in params]


# ---- independent references, one parameter at a time -----------------------------------

def sgd_ref(w, gs, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    w, buf = w.copy(), None
    for g in gs:
        d = g + weight_decay * w
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + d
            d = d + momentum * buf if nesterov else buf
        w = w - lr * d
    return w


def adam_ref(w, gs, lr, b1=0.9, b2=0.999, eps=1e-8, l2=0.0, decoupled=0.0):
    w, m, v = w.copy(), np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(gs, start=1):
        w = w * (1 - lr * decoupled)
        g = g + l2 * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
    return w


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, momentum=0.8, weight_decay=0.01),
    dict(lr=0.1, weight_decay=0.1),
]


@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_matches_reference(kw):
    params, gs = make_params(), grads()
    start = [p.data.copy() for p in params]
    got = run(optim.SGD(params, **kw), params, gs)
    for j, (w0, w) in enumerate(zip(start, got)):
        np.testing.assert_allclose(w, sgd_ref(w0, [g[j] for g in gs], **kw), rtol=1e-12, atol=1e-12)


ADAM_CASES = [
    (optim.Adam, dict(lr=0.01), dict(lr=0.01)),
    (optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
     dict(lr=0.01, b1=0.8, b2=0.99, eps=1e-6, l2=0.1)),
    (optim.AdamW, dict(lr=0.01), dict(lr=0.01, decoupled=1e-2)),
    (optim.AdamW, dict(lr=0.02, betas=(0.5, 0.9), weight_decay=0.3), dict(lr=0.02, b1=0.5, b2=0.9, decoupled=0.3)),
]


@pytest.mark.parametrize("cls, kw, ref_kw", ADAM_CASES)
def test_adam_matches_reference(cls, kw, ref_kw):
    params, gs = make_params(), grads()
    start = [p.data.copy() for p in params]
    got = run(cls(params, **kw), params, gs)
    for j, (w0, w) in enumerate(zip(start, got)):
        np.testing.assert_allclose(w, adam_ref(w0, [g[j] for g in gs], **ref_kw), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls, kw", [(optim.SGD, kw) for kw in SGD_CASES] + [(c, kw) for c, kw, _ in ADAM_CASES])
def test_matches_torch(cls, kw):
    torch = pytest.importorskip("torch")
    params, gs = make_params(), grads()
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    got = run(cls(params, **kw), params, gs)
    topt = getattr(torch.optim, cls.__name__)(tparams, **kw)
    for step in gs:
        for t, g in zip(tparams, step):
            t.grad = torch.tensor(g)
        topt.step()
    for w, t in zip(got, tparams):
        np.testing.assert_allclose(w, t.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_float32_params_stay_float32():
    p = Parameter(np.ones(3))
    opt = optim.Adam([p], lr=0.1)
    p.grad = np.array([1.0, -1.0, 0.5])  # float64 gradient on a float32 parameter
    opt.step()
    assert p.data.dtype == np.float32 and opt.state[0]["exp_avg"].dtype == np.float32


# ---- clipping, skipping, parameter handling ----------------------------------------------

@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=1.0), lambda ps: optim.Adam(ps, lr=1.0)])
def test_clip_params_are_clipped_others_untouched_by_clipping(make):
    latent = Parameter(np.array([0.9, -0.9, 0.2]), clip=1.0)
    free = Parameter(np.array([0.9, -0.9, 0.2]))
    for p in (latent, free):
        p.grad = np.array([-5.0, 5.0, 0.0])
    make([latent, free]).step()
    assert np.all(np.abs(latent.data) <= 1.0) and latent.data[0] == 1.0 and latent.data[1] == -1.0
    assert np.abs(free.data[:2]).min() > 1.0  # the same update, not clipped


def test_clip_value_is_used():
    p = Parameter(np.array([0.0, 0.0]), clip=0.5)
    p.grad = np.array([-3.0, 3.0])
    optim.SGD([p], lr=1.0).step()
    np.testing.assert_array_equal(p.data, [0.5, -0.5])


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
def test_grad_none_is_skipped(cls):
    a, b = Parameter(np.ones(3)), Parameter(np.full(3, 5.0), clip=1.0)
    opt = cls([a, b], lr=0.1, momentum=0.9) if cls is optim.SGD else cls([a, b], lr=0.1)
    a.grad = np.ones(3)
    opt.step()
    assert np.all(a.data < 1.0)
    np.testing.assert_array_equal(b.data, 5.0)  # no update, and no clipping either
    assert opt.state[1] == {}


def test_grad_is_not_modified_in_place():
    p = Parameter(np.ones(3))
    g = np.array([1.0, 2.0, 3.0])
    p.grad = g
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1)
    opt.step()
    opt.step()
    np.testing.assert_array_equal(g, [1.0, 2.0, 3.0])


def test_params_deduplicated_in_order_and_validated():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(3))
    assert optim.SGD(iter([a, b, a]), lr=0.1).params == [a, b]
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="Parameter"):
        optim.Adam([a, np.ones(3)])
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([a], lr=0.1, nesterov=True)


def test_zero_grad():
    a = Parameter(np.ones(2))
    a.grad = np.ones(2)
    optim.SGD([a], lr=0.1).zero_grad()
    assert a.grad is None


# ---- Bop ---------------------------------------------------------------------------------

def test_bop_flips_exactly_where_momentum_agrees():
    w = Parameter(np.array([0.3, -0.2, 0.0, -1.5]), clip=1.0)
    other = Parameter(np.array([[0.5, -0.5], [0.1, -0.1]]), clip=1.0)
    opt = optim.Bop([w, other], threshold=0.1, gamma=0.5)
    np.testing.assert_array_equal(w.data, [1, -1, 1, -1])  # sign, +1 at 0
    np.testing.assert_array_equal(other.data, [[1, -1], [1, -1]])
    assert opt.lr == 0.5

    # m = 0.5 g = [0.2, -0.05, -0.3, 0.15]; w * m = [0.2, 0.05, -0.3, -0.15] > 0.1 only at 0
    w.grad = np.array([0.4, -0.1, -0.6, 0.3])
    other.grad = np.zeros((2, 2))
    opt.step()
    np.testing.assert_array_equal(w.data, [-1, -1, 1, -1])
    np.testing.assert_array_equal(other.data, [[1, -1], [1, -1]])
    assert opt.flip_ratio == pytest.approx(1 / 8)

    # m = 0.5 m + 0.5 g = [0.1, -0.125, -0.15, 0.075]; w * m = [-0.1, 0.125, -0.15, -0.075]: flip 1
    w.grad = np.array([0.0, -0.2, 0.0, 0.0])
    other.grad = None
    opt.step()
    np.testing.assert_array_equal(w.data, [-1, 1, 1, -1])
    assert opt.flip_ratio == pytest.approx(1 / 4)  # only w took part
    np.testing.assert_allclose(opt.state[0]["m"], [0.1, -0.125, -0.15, 0.075])


def bop_ref(w, gs, threshold, gamma):
    """Bop on one parameter: m = (1 - gamma) m + gamma g; flip w where w * m > threshold (strictly)."""
    w, m = np.where(w >= 0, 1.0, -1.0), np.zeros_like(w)
    for g in gs:
        m = (1 - gamma) * m + gamma * g
        w = np.where(w * m > threshold, -w, w)
    return w, m


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bop_does_not_flip_at_the_threshold(dtype):
    """w * m == threshold exactly (powers of two: no rounding) keeps w; just above flips it."""
    threshold, gamma = 0.125, 0.5
    w0 = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype)
    # m = gamma * g = [0.125, -0.125, 0.125 + 2^-10, -(0.125 + 2^-10), 0.0625, -0.0625]
    g = np.array([0.25, -0.25, 0.25 + 2.0**-9, -0.25 - 2.0**-9, 0.125, -0.125], dtype)
    p = Parameter(w0.copy(), clip=1.0)
    opt = optim.Bop([p], threshold=threshold, gamma=gamma)
    p.grad = g.copy()
    opt.step()
    m = opt.state[0]["m"]
    assert (p.data.astype(np.float64)[:2] * m[:2] == threshold).all()  # the tie really is a tie
    ref_w, ref_m = bop_ref(w0.astype(np.float64), [g.astype(np.float64)], threshold, gamma)
    np.testing.assert_array_equal(m, ref_m)
    np.testing.assert_array_equal(p.data, ref_w)
    np.testing.assert_array_equal(p.data, [1, -1, -1, 1, 1, -1])  # ties kept, the two above flipped
    assert opt.flip_ratio == pytest.approx(2 / 6)

    # momentum that reaches the threshold on the second step (m = 0.0625, then 0.03125 + 0.09375)
    q = Parameter(np.array([1.0, -1.0], dtype), clip=1.0)
    opt = optim.Bop([q], threshold=threshold, gamma=gamma)
    gs = [np.array([0.125, -0.125], dtype), np.array([0.1875, -0.1875], dtype)]
    for gi in gs:
        q.grad = gi.copy()
        opt.step()
    ref_w, ref_m = bop_ref(np.array([1.0, -1.0]), [gi.astype(np.float64) for gi in gs], threshold, gamma)
    np.testing.assert_array_equal(opt.state[0]["m"], [threshold, -threshold])
    np.testing.assert_array_equal(opt.state[0]["m"], ref_m)
    np.testing.assert_array_equal(q.data, ref_w)
    np.testing.assert_array_equal(q.data, [1, -1])


def test_bop_lr_is_gamma():
    opt = optim.Bop([Parameter(np.ones(2), clip=1.0)], gamma=1e-3)
    assert opt.lr == 1e-3
    opt.lr = 2e-3
    assert opt.gamma == 2e-3


# ---- CombinedOptimizer and helpers ------------------------------------------------------------

class OptimToy(Module):
    def __init__(self):
        super().__init__()
        self.w1 = Parameter(np.linspace(-2, 2, 6).reshape(2, 3), clip=1.0)
        self.b1 = Parameter(np.zeros(2))
        self.w2 = Parameter(np.linspace(-1, 1, 4), clip=1.0)
        self.head = Parameter(np.ones((2, 2)))


def set_grads(params, seed):
    rng = np.random.default_rng(seed)
    for p in params:
        p.grad = rng.normal(size=p.shape)


def test_binary_and_float_parameters():
    m = OptimToy()
    assert optim.binary_parameters(m) == [m.w1, m.w2]
    assert optim.float_parameters(m) == [m.b1, m.head]


def test_combined_bop_adam():
    m = OptimToy()
    opt = optim.make_optimizer("bop", m, lr=0.01, gamma=0.1, threshold=0.0)
    assert isinstance(opt, optim.CombinedOptimizer)
    bop, adam = opt.optimizers
    assert isinstance(bop, optim.Bop) and isinstance(adam, optim.Adam) and bop.gamma == 0.1
    assert opt.lr == 0.01  # the first non-Bop member's
    opt.lr = 0.5
    assert adam.lr == 0.5 and bop.gamma == 0.1
    set_grads(m.parameters(), 0)
    opt.step()
    assert set(np.unique(m.w1.data)) <= {-1.0, 1.0} and 0 < bop.flip_ratio <= 1
    assert not np.allclose(m.head.data, 1.0)
    opt.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    with pytest.raises(ValueError, match="two optimizers"):
        optim.CombinedOptimizer(optim.SGD([m.b1], lr=0.1), optim.Adam([m.b1]))


def test_make_optimizer_names():
    m = OptimToy()
    assert isinstance(optim.make_optimizer("sgd", m, 0.1, momentum=0.9), optim.SGD)
    assert type(optim.make_optimizer("adam", m, 0.1)) is optim.Adam
    assert isinstance(optim.make_optimizer("adamw", m, 0.1), optim.AdamW)
    with pytest.raises(ValueError, match="sgd, adam, adamw, bop"):
        optim.make_optimizer("lamb", m, 0.1)


# ---- state_dict ------------------------------------------------------------------------------

def save_and_load(state):
    """Through JSON and np.savez/np.load(allow_pickle=False): proves the state needs no pickle."""
    buf = io.BytesIO()
    np.savez(buf, **state["arrays"])
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return {"hyper": json.loads(json.dumps(state["hyper"])), "arrays": arrays}


OPTIMIZER_FACTORIES = {
    "sgd": lambda m: optim.make_optimizer("sgd", m, 0.1, momentum=0.9, nesterov=True),
    "adam": lambda m: optim.make_optimizer("adam", m, 0.01, weight_decay=0.1),
    "adamw": lambda m: optim.make_optimizer("adamw", m, 0.01),
    "bop": lambda m: optim.make_optimizer("bop", m, 0.01, gamma=0.1, threshold=1e-3),
}


@pytest.mark.parametrize("name", OPTIMIZER_FACTORIES)
def test_state_dict_round_trip_continues_identically(name):
    a = OptimToy()
    opt_a = OPTIMIZER_FACTORIES[name](a)
    for seed in range(3):
        set_grads(a.parameters(), seed)
        opt_a.step()
    opt_a.lr = 0.003
    b = OptimToy()
    b.load_state_dict(a.state_dict())
    opt_b = OPTIMIZER_FACTORIES[name](b)
    opt_b.load_state_dict(save_and_load(opt_a.state_dict()))
    assert opt_b.lr == opt_a.lr and opt_b.step_count == 3
    for seed in range(3, 6):
        for model, opt in ((a, opt_a), (b, opt_b)):
            set_grads(model.parameters(), seed)
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)


def test_state_dict_format():
    m = OptimToy()
    opt = optim.make_optimizer("bop", m, 0.01)
    set_grads(m.parameters(), 0)
    opt.step()
    state = opt.state_dict()
    json.dumps(state["hyper"])
    assert set(state["arrays"]) == {"0.m", "1.m", "2.exp_avg", "2.exp_avg_sq", "3.exp_avg", "3.exp_avg_sq"}
    assert all(type(a) is np.ndarray for a in state["arrays"].values())


def test_load_state_dict_shape_mismatch_names_slot():
    p = Parameter(np.ones(3))
    opt = optim.Adam([p])
    p.grad = np.ones(3)
    opt.step()
    state = opt.state_dict()
    state["arrays"]["0.exp_avg_sq"] = np.ones(4)
    with pytest.raises(ValueError, match="0.exp_avg_sq"):
        optim.Adam([Parameter(np.ones(3))]).load_state_dict(state)
    with pytest.raises(ValueError, match="Adam"):
        optim.SGD([Parameter(np.ones(3))], lr=0.1).load_state_dict(opt.state_dict())


# ---- schedules --------------------------------------------------------------------------------

def sgd(lr=1.0):
    return optim.SGD([Parameter(np.ones(1))], lr=lr)


def curve(schedule, n):
    lrs = [schedule.optimizer.lr]
    for _ in range(n):
        schedule.step()
        lrs.append(schedule.optimizer.lr)
    assert lrs == pytest.approx([schedule.lr_at(t) for t in range(n + 1)])
    return lrs


def test_step_lr():
    lrs = curve(optim.StepLR(sgd(0.5), step_size=3, gamma=0.1), 7)
    assert lrs == pytest.approx([0.5] * 3 + [0.05] * 3 + [0.005] * 2)


def test_linear_warmup():
    lrs = curve(optim.LinearWarmup(sgd(0.4), warmup_steps=4), 6)
    assert lrs == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    assert curve(optim.LinearWarmup(sgd(0.4), warmup_steps=0), 2) == pytest.approx([0.4] * 3)


def test_cosine_lr():
    s = optim.CosineLR(sgd(1.0), total_steps=20, min_lr=0.1, warmup_steps=4)
    lrs = curve(s, 25)
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert lrs[12] == pytest.approx(0.55)  # half way through the cosine part
    assert lrs[20:] == pytest.approx([0.1] * 6)
    assert all(x >= y for x, y in zip(lrs[4:], lrs[5:]))
    assert optim.CosineLR(sgd(2.0), total_steps=10).lr_at(0) == 2.0
    assert optim.CosineLR(sgd(2.0), total_steps=10).lr_at(5) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        optim.CosineLR(sgd(), total_steps=5, warmup_steps=6)


def test_schedule_sets_lr_at_construction_and_round_trips():
    opt = sgd(1.0)
    s = optim.CosineLR(opt, total_steps=10, warmup_steps=2)
    assert opt.lr == 0.0
    for _ in range(5):
        s.step()
    opt2 = sgd(1.0)
    s2 = optim.CosineLR(opt2, total_steps=10, warmup_steps=2)
    s2.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert opt2.lr == opt.lr and s2.t == 5
    s.step(), s2.step()
    assert opt2.lr == opt.lr


def test_schedule_on_combined_leaves_bop_alone():
    m = OptimToy()
    opt = optim.make_optimizer("bop", m, lr=0.01, gamma=1e-4)
    s = optim.make_schedule("cosine", opt, total_steps=10)
    assert s.base_lr == 0.01
    for _ in range(5):
        s.step()
    assert opt.optimizers[1].lr == pytest.approx(0.005) and opt.optimizers[0].gamma == 1e-4


def test_make_schedule():
    assert optim.make_schedule("constant", sgd(0.3), 10).lr_at(7) == 0.3
    step = optim.make_schedule("step", sgd(1.0), 9)
    assert [step.lr_at(t) for t in (2, 3, 6)] == pytest.approx([1.0, 0.1, 0.01])
    assert optim.make_schedule("cosine", sgd(1.0), 10).lr_at(10) == 0.0
    wc = optim.make_schedule("warmup-cosine", sgd(1.0), 100)
    assert wc.lr_at(0) == 0.0 and wc.lr_at(5) == 1.0 and wc.lr_at(100) == 0.0
    assert optim.make_schedule("warmup-cosine", sgd(1.0), 100, warmup_steps=10).lr_at(5) == 0.5
    with pytest.raises(ValueError, match="constant, step, cosine, warmup-cosine"):
        optim.make_schedule("exp", sgd(), 10)
    assert math.isclose(optim.make_schedule("step", sgd(1.0), 9, gamma=0.5).lr_at(3), 0.5)
