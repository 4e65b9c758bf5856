"""Bit-serial arithmetic (minibnn/backend/bitserial.py) == integer products of the levels, exactly.

References are written here with int64 NumPy: a matmul of the levels for the GEMM, a loop over
the taps of the explicitly padded level image for the convolution. Every (a, b) pair in
2..8 x 1..8 runs on the numpy backend (small shapes), a sample of pairs on native (when built) and
on cuda.py's table through the host emulator (tests/cuda_emu, as test_cuda_backend.py uses it).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import CPU_BACKENDS, dev, emulated_cuda, host

import minibnn
from minibnn import backend
from minibnn.backend import bitserial as bs
from minibnn.functional import conv2d, pad2d

EVERY_PAIR = list(itertools.product(range(2, 9), range(1, 9)))
SAMPLE_PAIRS = [(2, 1), (2, 2), (4, 4), (3, 7), (8, 8), (1, 1)]
EMU_PAIRS = [(2, 1), (4, 4), (3, 8)]
FEW = settings(max_examples=15)

K_SIZES = st.sampled_from([1, 3, 63, 64, 65, 127, 128, 129, 200])
MN_SIZES = st.sampled_from([1, 2, 3, 5, 9])
CHANNELS = st.sampled_from([1, 3, 17, 64, 65])
KERNELS = st.sampled_from([(1, 1), (3, 3), (1, 3), (3, 2), (2, 5)])


def table(name: str):
    """The kernel table of ``name``: a CPU backend, or 'cuda-emu' (cuda.py on the host emulator)."""
    if name == "cuda-emu":
        return emulated_cuda()
    if name not in CPU_BACKENDS:
        pytest.skip(f"backend {name!r} is not available here")
    return backend._load(name)


def random_levels(rng, shape, bits: int) -> np.ndarray:
    """Uniform levels in [0, 2^bits - 1] with whole rows at the extremes (0 and the top level) mixed in."""
    q = rng.integers(0, 2**bits, size=shape)
    if q.ndim >= 2 and q.shape[0] > 1:
        q[0] = 2**bits - 1
        q[-1] = 0 if q.shape[0] > 2 else q[-1]
    return q


def weights(r: np.ndarray, b: int) -> np.ndarray:
    return 2 * r.astype(np.int64) - (2**b - 1)


def gemm_reference(q, r, b: int) -> np.ndarray:
    return q.astype(np.int64) @ weights(r, b).T


def pad_level(pad_value: int, a: int) -> int:
    return {0: 0, 1: 2**a - 1, -1: -(2**a - 1)}[pad_value]


def conv_reference(q, r, b: int, stride, padding, pad: int) -> np.ndarray:
    """Integer conv of NCHW levels ``q`` padded with ``pad`` against (O, C, kh, kw) weight levels: (N, OH, OW, O)."""
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(q.astype(np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad)
    w = weights(r, b)
    o, c, kh, kw = w.shape
    oh, ow = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    out = np.zeros((q.shape[0], oh, ow, o), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            for y in range(oh):
                for x in range(ow):
                    out[:, y, x, :] += xp[:, :, y * sh + i, x * sw + j] @ w[:, :, i, j].T
    return out


def run_gemm(kb, q, r, a: int, b: int) -> np.ndarray:
    k = q.shape[1]
    out = kb.xp.empty((q.shape[0], r.shape[0]), dtype=np.int32)
    bs.bitserial_gemm(bs.pack_planes(dev(kb, q), a, table=kb), bs.pack_planes(dev(kb, r), b, table=kb), k, out,
                      table=kb)
    return host(out)


def run_conv(kb, q, r, a: int, b: int, stride, padding, pad_value) -> np.ndarray:
    n, c, h, w = q.shape
    o, _, kh, kw = r.shape
    oh, ow = kb.conv_output_hw((h, w), (kh, kw), stride, padding)
    out = kb.xp.empty((n, oh, ow, o), dtype=np.int32)
    x_planes = bs.pack_planes(dev(kb, q), a, axis=1, table=kb)        # (a, N, H, W, words)
    w_planes = bs.pack_planes(dev(kb, r), b, axis=1, table=kb)        # (b, O, kh, kw, words)
    bs.bitserial_conv2d(x_planes, w_planes, c, stride, padding, pad_value, out, table=kb)
    return host(out)


@st.composite
def conv_cases(draw, channels=CHANNELS, sides=st.integers(1, 6)):
    kh, kw = draw(KERNELS)
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = max(draw(sides), kh - 2 * padding[0])
    w = max(draw(sides), kw - 2 * padding[1])
    return dict(n=draw(st.sampled_from([1, 2])), c=draw(channels), h=h, w=w, o=draw(st.sampled_from([1, 3, 5])),
                kernel=(kh, kw), stride=stride, padding=padding, pad_value=draw(st.sampled_from([0, 1, -1])),
                seed=draw(st.integers(0, 2**32 - 1)))


def check_conv(kb, g, a: int, b: int) -> None:
    rng = np.random.default_rng(g["seed"])
    q = random_levels(rng, (g["n"], g["c"], g["h"], g["w"]), a)
    r = random_levels(rng, (g["o"], g["c"]) + g["kernel"], b)
    got = run_conv(kb, q, r, a, b, g["stride"], g["padding"], g["pad_value"])
    expected = conv_reference(q, r, b, g["stride"], g["padding"], pad_level(g["pad_value"], a))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected, err_msg=f"a={a} b={b} {g}")


def check_gemm(kb, m: int, n: int, k: int, a: int, b: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    q, r = random_levels(rng, (m, k), a), random_levels(rng, (n, k), b)
    got = run_gemm(kb, q, r, a, b)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, gemm_reference(q, r, b), err_msg=f"a={a} b={b} M={m} N={n} K={k}")


# ---------------------------------------------------------------- exactness, every pair on numpy

@pytest.mark.parametrize("a,b", EVERY_PAIR)
@FEW
@given(m=MN_SIZES, n=MN_SIZES, k=K_SIZES, seed=st.integers(0, 2**32 - 1))
def test_gemm_equals_integer_matmul_every_pair(a, b, m, n, k, seed):
    check_gemm(table("numpy"), m, n, k, a, b, seed)


@pytest.mark.parametrize("a,b", EVERY_PAIR)
@settings(max_examples=12)
@given(g=conv_cases())
def test_conv_equals_integer_conv_every_pair(a, b, g):
    check_conv(table("numpy"), g, a, b)


@pytest.mark.parametrize("name", ["numpy", "native"])
@pytest.mark.parametrize("pad_value", [0, 1, -1])
def test_conv_every_pad_value_at_the_extremes(name, pad_value):
    """All-top levels and all-zero levels, padding on every side, stride 2 and a non-square kernel."""
    kb = table(name)
    for a, b in [(2, 1), (8, 8), (5, 3)]:
        for fill in (0, 2**a - 1):
            q = np.full((1, 65, 4, 5), fill)
            r = random_levels(np.random.default_rng(a * b), (3, 65, 3, 2), b)
            got = run_conv(kb, q, r, a, b, (2, 1), (2, 1), pad_value)
            np.testing.assert_array_equal(got, conv_reference(q, r, b, (2, 1), (2, 1), pad_level(pad_value, a)))


def test_conv_matches_the_float_simulation():
    """The float simulation (quantized floats, padded with pad_value) scaled by (2^a-1)(2^b-1) is the integer result."""
    rng = np.random.default_rng(7)
    a, b = 3, 2
    q, r = random_levels(rng, (2, 5, 6, 5), a), random_levels(rng, (4, 5, 3, 3), b)
    xq = (q / (2**a - 1)).astype(np.float32)
    wq = (weights(r, b) / (2**b - 1)).astype(np.float32)
    for pad_value in (0, 1, -1):
        with minibnn.no_grad():
            y = conv2d(pad2d(minibnn.Tensor(xq), (1, 1), pad_value), minibnn.Tensor(wq)).data
        scaled = np.rint(y.transpose(0, 2, 3, 1).astype(np.float64) * (2**a - 1) * (2**b - 1))
        np.testing.assert_array_equal(run_conv(table("numpy"), q, r, a, b, (1, 1), (1, 1), pad_value), scaled)


# ---------------------------------------------------------------- a sample of pairs on native and the emulator

@pytest.mark.parametrize("a,b", SAMPLE_PAIRS)
@settings(max_examples=25)
@given(m=MN_SIZES, n=MN_SIZES, k=K_SIZES, seed=st.integers(0, 2**32 - 1))
def test_native_gemm(a, b, m, n, k, seed):
    check_gemm(table("native"), m, n, k, a, b, seed)


@pytest.mark.parametrize("a,b", SAMPLE_PAIRS)
@settings(max_examples=25)
@given(g=conv_cases())
def test_native_conv(a, b, g):
    check_conv(table("native"), g, a, b)


@pytest.mark.parametrize("name", ["numpy", "native"])
def test_gemm_at_the_int32_bound(name):
    """8 x 8 bits with K (2^8 - 1)^2 just below 2^31: the largest and smallest dots are exact (int32 wraps inside)."""
    k = 33025
    q, r = np.full((1, k), 255), np.stack([np.full(k, 255), np.zeros(k, np.int64)])
    np.testing.assert_array_equal(run_gemm(table(name), q, r, 8, 8), [[255 * 255 * k, -255 * 255 * k]])


def test_native_large_gemm_and_conv_use_several_chunks(monkeypatch):
    """A scratch budget smaller than the problem: the row / image chunks join up exactly."""
    monkeypatch.setattr(bs, "_SCRATCH_BYTES", 1000)
    kb = table("native")
    check_gemm(kb, 37, 9, 130, 4, 3, 1)
    check_conv(kb, dict(n=5, c=70, h=5, w=4, o=6, kernel=(3, 3), stride=(1, 2), padding=(1, 1), pad_value=-1,
                        seed=2), 2, 2)


@pytest.mark.parametrize("a,b", EMU_PAIRS)
@settings(max_examples=10)
@given(m=st.sampled_from([1, 3]), n=st.sampled_from([1, 2]), k=st.sampled_from([1, 64, 65, 129]),
       seed=st.integers(0, 2**32 - 1))
def test_cuda_emulated_gemm(a, b, m, n, k, seed):
    check_gemm(table("cuda-emu"), m, n, k, a, b, seed)


@pytest.mark.parametrize("a,b", EMU_PAIRS)
@pytest.mark.parametrize("pad_value", [0, 1, -1])
def test_cuda_emulated_conv(a, b, pad_value):
    g = dict(n=1, c=65, h=3, w=4, o=2, kernel=(3, 2), stride=(2, 1), padding=(1, 2), pad_value=pad_value, seed=a * b)
    check_conv(table("cuda-emu"), g, a, b)


def test_cuda_emulated_table_rejects_host_arrays():
    kb = table("cuda-emu")
    with pytest.raises(ValueError, match="numpy.ndarray .host memory"):
        bs.pack_planes(np.zeros((2, 3), np.int32), 2, table=kb)


@pytest.mark.parametrize("name", ["numpy", "native", "cuda-emu"])
@pytest.mark.parametrize("pad_value", [0, 1, -1])
def test_precomputed_offsets_give_the_same_result(name, pad_value):
    """gemm_offset / conv_offset computed once per layer and passed in == computed inside, on every table."""
    kb = table(name)
    rng = np.random.default_rng(11)
    a, b = 3, 2
    q, r = random_levels(rng, (4, 70), a), random_levels(rng, (5, 70), b)
    ap, bp = bs.pack_planes(dev(kb, q), a, table=kb), bs.pack_planes(dev(kb, r), b, table=kb)
    off = bs.gemm_offset(bp, 70, a, table=kb)
    assert off.dtype == np.int32 and off.shape == (5,)
    out = kb.xp.empty((4, 5), dtype=np.int32)
    bs.bitserial_gemm(ap, bp, 70, out, check_tails=False, offset=off, table=kb)
    np.testing.assert_array_equal(host(out), gemm_reference(q, r, b))
    q, r = random_levels(rng, (2, 65, 4, 3), a), random_levels(rng, (3, 65, 3, 2), b)
    xpl, wpl = bs.pack_planes(dev(kb, q), a, axis=1, table=kb), bs.pack_planes(dev(kb, r), b, axis=1, table=kb)
    off = bs.conv_offset(wpl, a, 65, (4, 3), (1, 2), (2, 1), pad_value, table=kb)
    assert off.shape == ((6, 2, 3) if pad_value == -1 else (3,))  # (OH, OW, O) only where it depends on position
    out = kb.xp.empty((2, 6, 2, 3), dtype=np.int32)
    bs.bitserial_conv2d(xpl, wpl, 65, (1, 2), (2, 1), pad_value, out, check_tails=False, offset=off, table=kb)
    np.testing.assert_array_equal(host(out), conv_reference(q, r, b, (1, 2), (2, 1), pad_level(pad_value, a)))


def test_offset_errors():
    ref = backend._load("numpy")
    ap, bp, k, out = _gemm_args()
    with pytest.raises(ValueError, match=r"offset must have shape \(4,\)"):
        bs.bitserial_gemm(ap, bp, k, out, offset=np.zeros(3, np.int32), table=ref)
    with pytest.raises(ValueError, match="offset must have dtype int32"):
        bs.bitserial_gemm(ap, bp, k, out, offset=np.zeros(4, np.int64), table=ref)
    with pytest.raises(ValueError, match="W = ceil"):
        bs.gemm_offset(bp, 200, 2, table=ref)
    with pytest.raises(ValueError, match=r"a must be in \[1, 8\]"):
        bs.gemm_offset(bp, k, 9, table=ref)
    xpl = bs.pack_planes(np.ones((2, 3, 4, 4), np.int64), 2, axis=1, table=ref)
    wpl = bs.pack_planes(np.ones((5, 3, 3, 3), np.int64), 1, axis=1, table=ref)
    out = np.empty((2, 4, 4, 5), np.int32)
    wrong = bs.conv_offset(wpl, 2, 3, (4, 4), 1, 1, 0, table=ref)  # (O,): not the pad_value -1 shape
    with pytest.raises(ValueError, match=r"offset must have shape \(4, 4, 5\)"):
        bs.bitserial_conv2d(xpl, wpl, 3, 1, 1, -1, out, offset=wrong, table=ref)
    with pytest.raises(ValueError, match="words per tap"):
        bs.conv_offset(wpl, 2, 65, (4, 4), 1, 1, 0, table=ref)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        bs.conv_offset(wpl, 2, 3, (1, 1), 1, 0, 0, table=ref)
    with pytest.raises(ValueError, match="pad_value must be 0, 1 or -1"):
        bs.conv_offset(wpl, 2, 3, (4, 4), 1, 1, True, table=ref)


# ---------------------------------------------------------------- pack_planes

def unpack_planes(planes: np.ndarray, k: int) -> np.ndarray:
    """Levels back from planes: (bits, ..., words) -> (..., k) int64 (the packed axis last)."""
    bits = np.unpackbits(np.ascontiguousarray(planes).view(np.uint8), axis=-1, bitorder="little")[..., :k]
    return sum(bits[i].astype(np.int64) << i for i in range(planes.shape[0]))


@pytest.mark.parametrize("name", ["numpy", "native", "cuda-emu"])
@settings(max_examples=10)
@given(bits=st.integers(1, 8), shape=st.lists(st.sampled_from([1, 2, 3, 64, 65]), min_size=1, max_size=3),
       axis_pick=st.integers(0, 2), as_float=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_pack_planes_round_trip(name, bits, shape, axis_pick, as_float, seed):
    kb = table(name)
    q = random_levels(np.random.default_rng(seed), tuple(shape), bits)
    axis = axis_pick % len(shape) - (len(shape) if seed % 2 else 0)  # negative axes too
    levels = q.astype(np.float32) if as_float else q.astype(np.int32)
    planes = host(bs.pack_planes(dev(kb, levels), bits, axis=axis, table=kb))
    k = shape[axis]
    moved = np.moveaxis(q, axis, -1)
    assert planes.dtype == np.uint64 and planes.shape == (bits,) + moved.shape[:-1] + (-(-k // 64),)
    np.testing.assert_array_equal(unpack_planes(planes, k), moved)
    if k % 64:  # tail bits 0
        assert not (planes[..., -1] >> np.uint64(k % 64)).any()
    unchecked = host(bs.pack_planes(dev(kb, levels), bits, axis=axis, check=False, table=kb))
    np.testing.assert_array_equal(unchecked, planes)


def test_pack_planes_plane_one_bit_is_pack_bits_of_the_level():
    """For bits=1 the single plane is pack_bits of (level >= 1) as signs: the binary packing."""
    q = np.random.default_rng(3).integers(0, 2, (4, 70))
    ref = backend._load("numpy")
    np.testing.assert_array_equal(bs.pack_planes(q, 1, table=ref)[0], ref.pack_bits(2 * q - 1))


@pytest.mark.parametrize("levels,bits,match", [
    (np.array([0, 4]), 2, r"integers in \[0, 3\] for bits=2"),
    (np.array([-1, 0]), 3, r"integers in \[0, 7\]"),
    (np.array([0.5, 1.0]), 2, "non-integers"),
    (np.array([np.nan, 1.0]), 2, "non-integers"),
    (np.array([np.inf]), 8, r"\[0, 255\]"),
    (np.array([1, 2]), 0, r"bits must be in \[1, 8\]"),
    (np.array([1, 2]), 9, r"bits must be in \[1, 8\]"),
    (np.array([1, 2]), True, "bits must be an int"),
    (np.array([1, 2]), 2.0, "bits must be an int"),
    (np.array(3), 2, "at least one axis"),
    (np.array([1j]), 2, "integer or float array"),
])
def test_pack_planes_errors(levels, bits, match):
    with pytest.raises(ValueError, match=match):
        bs.pack_planes(levels, bits, table=backend._load("numpy"))


def test_pack_planes_bad_axis_and_default_table():
    with pytest.raises(ValueError, match="axis must be an int in"):
        bs.pack_planes(np.zeros((2, 3), np.int64), 2, axis=2)
    with backend.using("numpy"):
        planes = bs.pack_planes([[1, 2, 3]], 2)  # a list, the current backend's table
    np.testing.assert_array_equal(unpack_planes(planes, 3), [[1, 2, 3]])


# ---------------------------------------------------------------- argument checks

def _gemm_args(a=2, b=2, m=3, n=4, k=70):
    ref = backend._load("numpy")
    rng = np.random.default_rng(0)
    ap = bs.pack_planes(random_levels(rng, (m, k), a), a, table=ref)
    bp = bs.pack_planes(random_levels(rng, (n, k), b), b, table=ref)
    return ap, bp, k, np.empty((m, n), np.int32)


def test_gemm_argument_errors():
    ap, bp, k, out = _gemm_args()
    with pytest.raises(ValueError, match="a_planes must have dtype uint64"):
        bs.bitserial_gemm(ap.astype(np.int64), bp, k, out)
    with pytest.raises(ValueError, match="b_planes must be 3-D"):
        bs.bitserial_gemm(ap, bp[0], k, out)
    with pytest.raises(ValueError, match="1..8 bit planes"):
        bs.bitserial_gemm(np.zeros((9,) + ap.shape[1:], np.uint64), bp, k, out)
    with pytest.raises(ValueError, match="1..8 bit planes"):
        bs.bitserial_gemm(ap[:0], bp, k, out)
    with pytest.raises(ValueError, match=r"a_planes\[i\] and b_planes\[j\] must have W"):
        bs.bitserial_gemm(ap, bp, 200, out)
    with pytest.raises(ValueError, match="out must have shape"):
        bs.bitserial_gemm(ap, bp, k, out.T.copy())
    with pytest.raises(ValueError, match="out must have dtype int32"):
        bs.bitserial_gemm(ap, bp, k, out.astype(np.int64))
    bad = ap.copy()
    bad[1, 0, -1] |= np.uint64(1 << 63)
    with pytest.raises(ValueError, match="a_planes has nonzero tail bits"):
        bs.bitserial_gemm(bad, bp, k, out)
    big = np.zeros((8, 1, 625), np.uint64)  # k = 40000 at 8 x 8 bits: |D| could reach 2.6e9
    with pytest.raises(ValueError, match="does not fit the int32 output"):
        bs.bitserial_gemm(big, big.copy(), 40000, np.empty((1, 1), np.int32))


def test_conv_argument_errors():
    ref = backend._load("numpy")
    xp_ = bs.pack_planes(np.ones((2, 3, 4, 4), np.int64), 2, axis=1, table=ref)
    wp = bs.pack_planes(np.ones((5, 3, 3, 3), np.int64), 1, axis=1, table=ref)
    out = np.empty((2, 4, 4, 5), np.int32)
    with pytest.raises(ValueError, match="x_planes must be 5-D"):
        bs.bitserial_conv2d(xp_[0], wp, 3, 1, 1, 0, out, table=ref)
    with pytest.raises(ValueError, match="pad_value must be 0, 1 or -1"):
        bs.bitserial_conv2d(xp_, wp, 3, 1, 1, 2, out, table=ref)
    with pytest.raises(ValueError, match=r"x_planes\[i\] and w_planes\[j\] must have ceil"):
        bs.bitserial_conv2d(xp_, wp, 65, 1, 1, 0, out, table=ref)
    with pytest.raises(ValueError, match="out must have shape"):
        bs.bitserial_conv2d(xp_, wp, 3, 2, 1, 0, out, table=ref)
    buf = np.zeros(100, np.uint64)
    with pytest.raises(ValueError, match="out must not overlap x_planes"):
        bs.bitserial_conv2d(buf[:64].reshape(2, 2, 4, 4, 1), wp, 3, 1, 1, 0,
                            buf.view(np.int32)[:160].reshape(2, 4, 4, 5), table=ref)
    bad = wp.copy()
    bad[0, 0, 0, 0, 0] |= np.uint64(1 << 5)
    with pytest.raises(ValueError, match="w_planes has nonzero tail bits"):
        bs.bitserial_conv2d(xp_, bad, 3, 1, 1, 0, out, table=ref)


def test_empty_and_zero_length():
    ref = backend._load("numpy")
    ap, bp = np.zeros((2, 0, 1), np.uint64), np.zeros((3, 4, 1), np.uint64)
    out = np.empty((0, 4), np.int32)
    assert bs.bitserial_gemm(ap, bp, 5, out, table=ref).shape == (0, 4)
    out = np.full((2, 3), 7, np.int32)
    bs.bitserial_gemm(np.zeros((2, 2, 0), np.uint64), np.zeros((1, 3, 0), np.uint64), 0, out, table=ref)
    assert not out.any()


# ---------------------------------------------------------------- levels_from_thresholds

def thresholds_reference(dot, thresholds, rising) -> np.ndarray:
    out = np.zeros(dot.shape, np.int64)
    for idx in np.ndindex(*dot.shape):
        o = idx[-1]
        for t in thresholds[o]:
            out[idx] += (dot[idx] >= t) if rising[o] else (dot[idx] <= t)
    return out


@settings(max_examples=20)
@given(bits=st.integers(1, 8), o=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_levels_from_thresholds_with_ties_and_falling_channels(bits, o, seed):
    rng = np.random.default_rng(seed)
    n_levels = 2**bits - 1
    thresholds = np.sort(rng.integers(-30, 30, (o, n_levels)), axis=1).astype(np.int32)
    rising = rng.random(o) < 0.5
    thresholds[~rising] = thresholds[~rising][:, ::-1]  # falling: descending thresholds
    dot = rng.integers(-35, 35, (2, 3, o)).astype(np.int32)
    dot.reshape(-1, o)[: o] = thresholds[np.arange(o), rng.integers(0, n_levels, o)]  # exact ties, counted
    got = bs.levels_from_thresholds(dot, thresholds, rising)
    assert got.dtype == np.uint8 and got.shape == dot.shape
    expected = thresholds_reference(dot, thresholds, rising)
    np.testing.assert_array_equal(got, expected)
    ties = dot[..., None] == thresholds
    assert ties.any()  # ties are exercised, and they pass the threshold in both directions
    planes = bs.pack_planes(got, bits, table=backend._load("numpy"))  # the next layer's planes
    np.testing.assert_array_equal(unpack_planes(planes, o), expected)


def test_levels_from_thresholds_tie_rule_and_constant_channel():
    imax, imin = np.iinfo(np.int32).max, np.iinfo(np.int32).min
    thresholds = np.array([[0, 5, 10], [10, 5, 0], [imax, imin, imin]], np.int32)
    rising = np.array([True, False, False])
    dot = np.array([[5, 5, 5], [-1, 11, 7], [10, 0, imin + 1]], np.int32)
    got = bs.levels_from_thresholds(dot, thresholds, rising, table=backend._load("numpy"))
    # rising: 5 >= 0, 5 >= 5 -> 2; falling: 5 <= 10, 5 <= 5 -> 2; constant: 1
    np.testing.assert_array_equal(got, [[2, 2, 1], [0, 0, 1], [3, 3, 1]])


def test_levels_from_thresholds_errors():
    t, r = np.zeros((3, 2), np.int32), np.ones(3, bool)
    with pytest.raises(ValueError, match="O = 3 channels on its last axis"):
        bs.levels_from_thresholds(np.zeros((2, 4), np.int32), t, r)
    with pytest.raises(ValueError, match="thresholds must have dtype int32"):
        bs.levels_from_thresholds(np.zeros((2, 3), np.int32), t.astype(np.int64), r)
    with pytest.raises(ValueError, match="rising must have shape"):
        bs.levels_from_thresholds(np.zeros((2, 3), np.int32), t, np.ones(2, bool))
    with pytest.raises(ValueError, match="at most 255 columns"):
        bs.levels_from_thresholds(np.zeros((2, 3), np.int32), np.zeros((3, 256), np.int32), r)
