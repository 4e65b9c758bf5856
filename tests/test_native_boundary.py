"""The native kernels through their Python boundary: any array handed over gives the numpy_ref result or a
clear error, never memory corruption; calls from several Python threads equal serial calls.

The policy these tests hold (minibnn/backend/native.py):
- GEMM, convolution and popcount kernels take their arrays as they are: exactly the documented dtype
  (uint64 words, int32 out / threshold / correction, float32 scale / bias / affine out, bool flip), C-contiguous
  and aligned. Anything else (Fortran order, step slices, negative strides, misaligned buffers, another
  dtype or byte order, a list) is refused with a ValueError naming the argument; nothing is copied
  silently. A C-contiguous, aligned view (an offset into a bigger buffer, a read-only array) is used in place.
- ``out`` must also be writable, of the exact shape, and share no memory with any input (threshold and
  flip included); disjoint views of one buffer are fine. Inputs are never written.
- pack_bits / pack_channels take any real array (bool, int, float) in any layout: what C cannot read in
  place (not float32, not C-contiguous, misaligned) is copied first. unpack_bits is the reference's.
- Sizes 0 and 1 on every axis give the reference result.

Every case also runs against an AddressSanitizer + UndefinedBehaviorSanitizer build of the extension
(native/sanitize_python.sh, run by native/sanitize.sh), so an out-of-bounds read or write, or a misaligned
load, fails there even when the result happens to be right.
"""
from __future__ import annotations

import contextlib
import re
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibnn import backend
from minibnn.backend import numpy_ref as ref

pytestmark = pytest.mark.skipif("native" not in backend.available(), reason="the native library is not built here")

SEEDS = st.integers(0, 2**32 - 1)
MN = st.sampled_from([0, 1, 2, 3, 8, 9, 65])
KS = st.sampled_from([0, 1, 2, 63, 64, 65, 130])
CHANNELS = st.sampled_from([1, 2, 63, 64, 65, 130])
FEW = settings(max_examples=max(30, settings().max_examples))  # not fewer than the profile asks


def nb():
    return backend._load("native")


@contextlib.contextmanager
def simd_path(mode: str):
    kb = nb()
    kb.set_simd(mode)
    try:
        yield
    finally:
        kb.set_simd("auto")


def signs(rng: np.random.Generator, shape) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def reals(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Values of ``dtype`` with both signs; floats with exact zeros, negative zeros and NaN."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -3), min(info.max, 3), size=shape, endpoint=True).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    special = rng.random(shape)
    x[special < 0.1] = 0.0
    x[(special >= 0.1) & (special < 0.2)] = -0.0
    x[(special >= 0.2) & (special < 0.25)] = np.nan
    return x


# ---------------------------------------------------------------- layouts of the same values

# keep the values: these are accepted when the result is C-contiguous and aligned (else refused), or copied
VALUE_LAYOUTS = ["c", "readonly", "offset", "fortran", "strided", "reversed", "misaligned"]
# change what is passed: refused for the strict arrays (byteswapping a 1-byte dtype changes nothing)
BAD_LAYOUTS = ["other_dtype", "byteswapped", "list"]
OTHER_DTYPE = {np.dtype(np.uint64): np.int64, np.dtype(np.int32): np.int64, np.dtype(np.float32): np.float64,
               np.dtype(np.bool_): np.uint8}


def relayout(a: np.ndarray, kind: str):
    """``a``'s values in another memory layout (VALUE_LAYOUTS), or another type of argument (BAD_LAYOUTS)."""
    if kind == "c":
        return a.copy()
    if kind == "readonly":
        r = a.copy()
        r.flags.writeable = False
        return r
    if kind == "offset":  # a C-contiguous, aligned view that does not own its memory
        buf = np.zeros(a.size + 3, a.dtype)
        buf[2:2 + a.size] = a.ravel()
        return buf[2:2 + a.size].reshape(a.shape)
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "strided":  # every axis stepped by 2 in a bigger array
        big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if kind == "reversed":  # negative strides on the first and the last axis
        flip = (slice(None, None, -1),) + (Ellipsis, slice(None, None, -1)) * (a.ndim > 1)
        return np.ascontiguousarray(a[flip])[flip] if a.ndim else a.copy()
    if kind == "misaligned":  # 1 byte off the alignment of the dtype
        raw = np.zeros(a.nbytes + 16, np.uint8)
        view = raw[1:1 + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        return view
    if kind == "other_dtype":
        return a.astype(OTHER_DTYPE[a.dtype])
    if kind == "byteswapped":  # the same numbers in the other byte order (a plain copy for 1-byte dtypes)
        return a.astype(a.dtype.newbyteorder())
    if kind == "list":
        return a.tolist()
    raise AssertionError(kind)


def accepted(call: dict, strict: dict) -> bool:
    """The policy: every strict array is an ndarray of its dtype, C-contiguous and aligned; out also writable."""
    for name, dtype in strict.items():
        v = call[name]
        if not (isinstance(v, np.ndarray) and v.dtype == np.dtype(dtype) and v.flags.c_contiguous
                and v.flags.aligned):
            return False
        if name == "out" and not v.flags.writeable:
            return False
    return True


def assert_bit_exact(got, expected) -> None:
    assert isinstance(got, np.ndarray)
    assert (got.shape, got.dtype) == (expected.shape, expected.dtype)
    np.testing.assert_array_equal(got, expected)
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(expected).tobytes()  # floats bit for bit


def reference(kernel: str, args: dict):
    """numpy_ref's result for contiguous copies of the arguments (a fresh out)."""
    if "out" in args and args["out"].size == 0:  # numpy_ref's convolutions fail on O = 0 (reshape(0, -1))
        return np.zeros_like(args["out"])
    call = {name: (np.zeros_like(v) if name == "out" else np.ascontiguousarray(v) if isinstance(v, np.ndarray)
                   else v) for name, v in args.items()}
    return getattr(ref, kernel)(**call)


def snapshot(call: dict) -> dict:
    return {name: np.array(v, copy=True) for name, v in call.items() if isinstance(v, np.ndarray) and name != "out"}


def assert_unchanged(call: dict, before: dict) -> None:
    for name, v in before.items():
        assert np.asarray(call[name]).tobytes() == v.tobytes(), f"{name} was written"


# ---------------------------------------------------------------- cases: valid, contiguous arguments

GEMMS = ["xnor_gemm", "xnor_gemm_affine", "xnor_gemm_threshold"]
CONVS = ["binary_conv2d", "binary_conv2d_affine", "binary_conv2d_threshold"]


def _epilogue(rng, kernel: str, n: int, k: int, args: dict, strict: dict) -> None:
    if kernel.endswith("_affine"):
        args.update(scale=rng.standard_normal(n).astype(np.float32), bias=rng.standard_normal(n).astype(np.float32))
        strict.update(scale=np.float32, bias=np.float32)
    elif kernel.endswith("_threshold"):
        args.update(threshold=rng.integers(-k - 1, k + 2, n).astype(np.int32), flip=rng.random(n) < 0.5)
        strict.update(threshold=np.int32, flip=np.bool_)


def _out_dtype(kernel: str):
    return np.float32 if kernel.endswith("_affine") else np.uint64 if kernel.endswith("_threshold") else np.int32


@st.composite
def gemm_cases(draw, kernel: str):
    m, n, k = draw(MN), draw(MN), draw(KS)
    rng = np.random.default_rng(draw(SEEDS))
    args = dict(a_words=ref.pack_bits(signs(rng, (m, k))), b_words=ref.pack_bits(signs(rng, (n, k))), k=k)
    strict = dict(a_words=np.uint64, b_words=np.uint64)
    _epilogue(rng, kernel, n, k, args, strict)
    cols = ref.n_words(n) if kernel.endswith("_threshold") else n
    args["out"] = np.full((m, cols), 77, _out_dtype(kernel))
    strict["out"] = _out_dtype(kernel)
    args["check_tails"] = draw(st.booleans())
    return args, strict


@st.composite
def conv_cases(draw, kernel: str):
    c, o, batch = draw(CHANNELS), draw(st.sampled_from([0, 1, 2, 9])), draw(st.sampled_from([0, 1, 2]))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw, ph, pw = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), max(1, kh - 2 * ph) + 3))
    w = draw(st.integers(max(1, kw - 2 * pw), max(1, kw - 2 * pw) + 3))
    pad_value = draw(st.sampled_from([0, 1, -1]))
    rng = np.random.default_rng(draw(SEEDS))
    args = dict(x_words=ref.pack_bits(signs(rng, (batch, c, h, w)), axis=1),
                w_words=ref.pack_bits(signs(rng, (o, c, kh, kw)), axis=1), channels=c,
                stride=(sh, sw) if sh != sw or draw(st.booleans()) else sh,
                padding=(ph, pw) if ph != pw or draw(st.booleans()) else ph, pad_value=pad_value)
    strict = dict(x_words=np.uint64, w_words=np.uint64)
    _epilogue(rng, kernel, o, kh * kw * c, args, strict)
    oh, ow = ref.conv_output_hw((h, w), (kh, kw), (sh, sw), (ph, pw))
    cols = ref.n_words(o) if kernel.endswith("_threshold") else o
    args["out"] = np.full((batch, oh, ow, cols), 77, _out_dtype(kernel))
    strict["out"] = _out_dtype(kernel)
    if draw(st.booleans()):  # given (used with pad_value 0, checked and unused otherwise)
        args["correction"] = ref.conv_pad_correction(args["w_words"], c, (h, w), (sh, sw), (ph, pw))
        strict["correction"] = np.int32
    args["check_tails"] = draw(st.booleans())
    return args, strict


@st.composite
def correction_cases(draw, kernel: str):
    c, o = draw(CHANNELS), draw(st.sampled_from([0, 1, 3, 9]))
    kh, kw, sh, sw = (draw(st.integers(1, 3)) for _ in range(4))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h, w = draw(st.integers(max(1, kh - 2 * ph), 5)), draw(st.integers(max(1, kw - 2 * pw), 5))
    rng = np.random.default_rng(draw(SEEDS))
    args = dict(w_words=ref.pack_bits(signs(rng, (o, c, kh, kw)), axis=1), channels=c, in_hw=(h, w),
                stride=(sh, sw), padding=(ph, pw))
    return args, dict(w_words=np.uint64)


@st.composite
def popcount_cases(draw, kernel: str):
    shape = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 3, 5]), min_size=1, max_size=3)))
    rng = np.random.default_rng(draw(SEEDS))
    return dict(words=rng.integers(0, 2**64, size=shape, dtype=np.uint64, endpoint=False)), dict(words=np.uint64)


CASES = {**{k: gemm_cases for k in GEMMS}, **{k: conv_cases for k in CONVS},
         "conv_pad_correction": correction_cases, "popcount_rows": popcount_cases}
OUT_KERNELS = GEMMS + CONVS


# ---------------------------------------------------------------- every layout of every strict argument

@FEW
@pytest.mark.parametrize("kernel", sorted(CASES))
@given(data=st.data())
def test_each_argument_layout_gives_the_reference_or_an_error_naming_it(kernel, data):
    args, strict = data.draw(CASES[kernel](kernel), label="case")
    target = data.draw(st.sampled_from(sorted(strict)), label="argument")
    kind = data.draw(st.sampled_from(VALUE_LAYOUTS + BAD_LAYOUTS), label="layout")
    mode = data.draw(st.sampled_from(["auto", "scalar"]), label="simd")
    expected = reference(kernel, args)
    call = dict(args, **{target: relayout(args[target], kind)})
    before = snapshot(call)
    fn = getattr(nb(), kernel)
    with simd_path(mode):
        if accepted(call, strict):
            got = fn(**call)
            if "out" in call:
                assert got is call["out"]
            assert_bit_exact(got, expected)
        else:
            assert kind not in ("c", "readonly", "offset") or target == "out"
            with pytest.raises((ValueError, TypeError), match=rf"\b{re.escape(target)}\b"):
                fn(**call)
    assert_unchanged(call, before)


def _fixed_case(kernel: str) -> dict:
    """Valid arguments with every size above 1 (so Fortran order and steps really break contiguity)."""
    rng = np.random.default_rng(5)
    if kernel == "popcount_rows":
        return dict(words=rng.integers(0, 2**64, size=(3, 4, 5), dtype=np.uint64, endpoint=False))
    w_words = ref.pack_bits(signs(rng, (66, 70, 3, 3)), axis=1)
    if kernel == "conv_pad_correction":
        return dict(w_words=w_words, channels=70, in_hw=(5, 4), stride=(1, 2), padding=(2, 1))
    if kernel in GEMMS:
        args = dict(a_words=ref.pack_bits(signs(rng, (3, 130))), b_words=ref.pack_bits(signs(rng, (70, 130))), k=130)
        n, k, shape = 70, 130, (3, 70)
    else:
        args = dict(x_words=ref.pack_bits(signs(rng, (2, 70, 5, 4)), axis=1), w_words=w_words, channels=70,
                    stride=1, padding=1, pad_value=0, correction=ref.conv_pad_correction(w_words, 70, (5, 4), 1, 1))
        n, k, shape = 66, 9 * 70, (2, 5, 4, 66)
    _epilogue(rng, kernel, n, k, args, {})
    if kernel.endswith("_threshold"):
        shape = shape[:-1] + (2,)
    args["out"] = np.zeros(shape, _out_dtype(kernel))
    return args


GRID = [(kernel, name) for kernel in sorted(CASES) for name, v in _fixed_case(kernel).items()
        if isinstance(v, np.ndarray)]


@pytest.mark.parametrize("kind", VALUE_LAYOUTS + BAD_LAYOUTS)
@pytest.mark.parametrize("kernel,target", GRID)
def test_every_layout_of_every_array_argument(kernel, target, kind):
    """The grid behind the property above, at sizes where each layout really is one: used in place
    ('c', 'offset', 'readonly' inputs) or refused naming the argument (all the rest, read-only out too)."""
    args = _fixed_case(kernel)
    call = dict(args, **{target: relayout(args[target], kind)})
    fn = getattr(nb(), kernel)
    a = args[target]
    same = (kind == "fortran" and a.ndim == 1) or (kind in ("misaligned", "byteswapped") and a.itemsize == 1)
    if kind in ("c", "offset") or (kind == "readonly" and target != "out") or same:
        assert accepted(call, {name: v.dtype for name, v in call.items() if isinstance(v, np.ndarray)})
        assert_bit_exact(fn(**call), reference(kernel, args))
    else:
        with pytest.raises(ValueError, match=rf"\b{target}\b"):
            fn(**call)
    if "out" in args:
        bigger = np.zeros((args["out"].shape[0] + 1,) + args["out"].shape[1:], args["out"].dtype)
        with pytest.raises(ValueError, match="out must have shape"):
            fn(**dict(args, out=bigger))


# ---------------------------------------------------------------- out sharing memory with an input

@FEW
@pytest.mark.parametrize("kernel", OUT_KERNELS)
@given(data=st.data())
def test_out_overlapping_an_input_is_refused_and_disjoint_views_of_one_buffer_work(kernel, data):
    args, strict = data.draw(CASES[kernel](kernel), label="case")
    target = data.draw(st.sampled_from(sorted(set(strict) - {"out"})), label="input")
    a, out = args[target], args["out"]
    overlap = a.nbytes > 0 and out.nbytes > 0 and data.draw(st.booleans(), label="overlap")
    # out starts inside the input (8-byte aligned, so a uint64 out stays aligned) or just past its end
    start = data.draw(st.integers(0, (a.nbytes - 1) // 8), label="start") * 8 if overlap else -(-a.nbytes // 8) * 8
    raw = np.zeros(-(-max(a.nbytes, start + out.nbytes) // 8) + 1, np.uint64).view(np.uint8)
    shared_input = raw[:a.nbytes].view(a.dtype).reshape(a.shape)
    shared_input[...] = a
    shared_out = raw[start:start + out.nbytes].view(out.dtype).reshape(out.shape)
    call = dict(args, **{target: shared_input, "out": shared_out})
    expected = reference(kernel, args)
    before = snapshot(call)
    if overlap:
        with pytest.raises(ValueError, match=f"out must not overlap {target}"):
            getattr(nb(), kernel)(**call)
    else:
        assert_bit_exact(getattr(nb(), kernel)(**call), expected)
    assert_unchanged(call, before)


def test_inputs_may_share_memory_with_each_other():
    kb = nb()
    rng = np.random.default_rng(11)
    a = ref.pack_bits(signs(rng, (9, 100)))
    np.testing.assert_array_equal(kb.xnor_gemm(a, a, 100, np.empty((9, 9), np.int32)),
                                  ref.xnor_gemm(a, a.copy(), 100, np.empty((9, 9), np.int32)))
    x = ref.pack_bits(signs(rng, (1, 70, 3, 3)), axis=1)  # the same words as image and as weights
    for pad_value in (0, 1, -1):
        np.testing.assert_array_equal(kb.binary_conv2d(x, x, 70, 1, 1, pad_value, np.empty((1, 3, 3, 1), np.int32)),
                                      ref.binary_conv2d(x, x.copy(), 70, 1, 1, pad_value,
                                                        np.empty((1, 3, 3, 1), np.int32)))
    scale = np.ones(9, np.float32)  # scale and bias one array
    np.testing.assert_array_equal(kb.xnor_gemm_affine(a, a, 100, scale, scale, np.empty((9, 9), np.float32)),
                                  ref.xnor_gemm_affine(a, a, 100, scale, scale, np.empty((9, 9), np.float32)))


# ---------------------------------------------------------------- the packers: any real array, any layout

@FEW
@given(shape=st.lists(st.sampled_from([0, 1, 2, 3, 64, 65]), min_size=1, max_size=3).map(tuple),
       dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int8, np.int32, np.uint8, np.bool_]),
       kind=st.sampled_from(VALUE_LAYOUTS + ["byteswapped"]), axis_pick=st.integers(0, 5), seed=SEEDS,
       mode=st.sampled_from(["auto", "scalar"]))
def test_pack_bits_takes_any_real_array_in_any_layout(shape, dtype, kind, axis_pick, seed, mode):
    x = reals(np.random.default_rng(seed), shape, dtype)
    axis = axis_pick % len(shape) - (len(shape) if axis_pick % 2 else 0)
    given_x = relayout(x, kind)
    before = np.array(given_x, copy=True)
    with simd_path(mode):
        got = nb().pack_bits(given_x, axis)
    assert_bit_exact(got, ref.pack_bits(x, axis))
    np.testing.assert_array_equal(given_x, before)


@FEW
@given(batch=st.sampled_from([0, 1, 2]), c=CHANNELS, h=st.sampled_from([1, 2, 9]), w=st.sampled_from([1, 3, 70]),
       kind=st.sampled_from(VALUE_LAYOUTS), seed=SEEDS, mode=st.sampled_from(["auto", "scalar"]))
def test_pack_channels_takes_any_layout(batch, c, h, w, kind, seed, mode):
    x = reals(np.random.default_rng(seed), (batch, c, h, w), np.float32)
    with simd_path(mode):
        got = nb().pack_channels(relayout(x, kind))
    assert_bit_exact(got, ref.pack_channels(x))


@FEW
@given(shape=st.lists(st.sampled_from([0, 1, 2, 3]), min_size=1, max_size=3).map(tuple),
       kind=st.sampled_from(VALUE_LAYOUTS), k_pick=st.integers(0, 2**16), seed=SEEDS)
def test_unpack_bits_is_the_reference_for_any_layout(shape, kind, k_pick, seed):
    words = np.random.default_rng(seed).integers(0, 2**64, size=shape, dtype=np.uint64, endpoint=False)
    k = k_pick % (64 * shape[-1] + 1)
    assert_bit_exact(nb().unpack_bits(relayout(words, kind), k), ref.unpack_bits(words, k))


@pytest.mark.parametrize("x,axis,argname", [
    (np.ones(3, np.complex64), -1, "x"),
    (np.array(["a", "b"]), -1, "x"),
    (np.array([None, 1.0], dtype=object), -1, "x"),
    (np.float32(1.0), -1, "x"),
    (np.ones((2, 3), np.float32), 2, "axis"),
    (np.ones((2, 3), np.float32), -3, "axis"),
    (np.ones((2, 3), np.int8), 2, "axis"),
    (np.ones((2, 3), np.float64), 1.5, "axis"),
    (np.ones((2, 3), np.float32), True, "axis"),
    (np.ones((2, 3), np.int8), "0", "axis"),
])
def test_pack_bits_bad_arguments_name_them(x, axis, argname):
    with pytest.raises(ValueError, match=rf"\b{argname}\b"):
        nb().pack_bits(x, axis)


def test_pack_channels_and_popcount_rows_bad_arguments_name_them():
    with pytest.raises(ValueError, match=r"\bx\b"):
        nb().pack_channels(np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="words"):
        nb().popcount_rows(np.uint64(3)[()])
    with pytest.raises(ValueError, match="words"):
        nb().popcount_rows(np.array(7, np.uint64))


# ---------------------------------------------------------------- scalar arguments

SCALARS = [  # (kernel, argument, bad value, what the message names)
    ("xnor_gemm", "k", -1, "k"), ("xnor_gemm", "k", 2**31, "k"), ("xnor_gemm", "k", 130.0, "k"),
    ("xnor_gemm", "k", True, "k"), ("xnor_gemm", "k", "130", "k"), ("xnor_gemm", "k", None, "k"),
    ("xnor_gemm", "k", 64, "a_words and b_words"),
    ("binary_conv2d", "channels", 0, "channels"), ("binary_conv2d", "channels", 64, "x_words and w_words"),
    ("binary_conv2d", "channels", 70.0, "channels"), ("binary_conv2d", "stride", 0, "stride"),
    ("binary_conv2d", "stride", (1, 2, 3), "stride"), ("binary_conv2d", "stride", "ab", "stride"),
    ("binary_conv2d", "stride", 2**40, "stride"), ("binary_conv2d", "padding", -1, "padding"),
    ("binary_conv2d", "padding", (1,), "padding"), ("binary_conv2d", "pad_value", 2, "pad_value"),
    ("binary_conv2d", "pad_value", True, "pad_value"), ("binary_conv2d", "pad_value", 0.5, "pad_value"),
    ("conv_pad_correction", "in_hw", 0, "in_hw"), ("conv_pad_correction", "in_hw", (1, 1), "in_hw"),
    ("conv_pad_correction", "channels", -1, "channels"), ("conv_pad_correction", "channels", 64, "w_words"),
    ("conv_pad_correction", "stride", (0, 1), "stride"),
]


@pytest.mark.parametrize("kernel,argname,bad,named", SCALARS)
def test_bad_scalar_arguments_name_them(kernel, argname, bad, named):
    if kernel == "conv_pad_correction":
        args = dict(w_words=_fixed_case("binary_conv2d")["w_words"], channels=70, in_hw=(5, 4), stride=1, padding=0)
    else:
        args = _fixed_case(kernel)
    with pytest.raises(ValueError, match=re.escape(named)):
        getattr(nb(), kernel)(**dict(args, **{argname: bad}))


def test_numpy_integer_scalars_are_accepted():
    args = _fixed_case("binary_conv2d")
    expected = reference("binary_conv2d", args)
    call = dict(args, channels=np.int16(70), stride=(np.uint8(1), np.int64(1)), padding=np.int32(1),
                pad_value=np.int8(0), out=np.empty_like(args["out"]))
    assert_bit_exact(nb().binary_conv2d(**call), expected)
    g = _fixed_case("xnor_gemm")
    assert_bit_exact(nb().xnor_gemm(**dict(g, k=np.uint64(130))), reference("xnor_gemm", g))
    x = np.ones((2, 3), np.float32)
    assert_bit_exact(nb().pack_bits(x, np.int64(0)), ref.pack_bits(x, 0))


# ---------------------------------------------------------------- threads

def _workload(seed: int) -> list:
    """Calls of every native kernel on inputs of its own; the first two GEMMs are big enough to use OpenMP."""
    rng = np.random.default_rng(seed)
    m, n, k = (480, 280, 2048) if seed < 2 else (int(rng.integers(1, 70)), int(rng.integers(1, 70)),
                                                  int(rng.integers(1, 300)))
    a, b, x = signs(rng, (m, k)), signs(rng, (n, k)), reals(rng, (2, 70, 9, 7), np.float32)
    c, o = 70, int(rng.integers(1, 20))
    wt = signs(rng, (o, c, 3, 3))
    scale, bias = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    thr, flip = rng.integers(-k, k, n).astype(np.int32), rng.random(n) < 0.5
    cthr, cflip = rng.integers(-60, 60, o).astype(np.int32), rng.random(o) < 0.5

    def run(kb):
        aw, bw, xw, ww = kb.pack_bits(a), kb.pack_bits(b), kb.pack_channels(x), kb.pack_bits(wt, axis=1)
        corr = kb.conv_pad_correction(ww, c, (9, 7), 2, 1)
        return [aw, bw, xw, ww, corr, kb.popcount_rows(aw), kb.unpack_bits(bw, k),
                kb.xnor_gemm(aw, bw, k, np.empty((m, n), np.int32)),
                kb.xnor_gemm_affine(aw, bw, k, scale, bias, np.empty((m, n), np.float32)),
                kb.xnor_gemm_threshold(aw, bw, k, thr, flip, np.empty((m, ref.n_words(n)), np.uint64)),
                kb.binary_conv2d(xw, ww, c, 2, 1, 0, np.empty((2, 5, 4, o), np.int32), corr),
                kb.binary_conv2d(xw, ww, c, 1, 1, 0, np.empty((2, 9, 7, o), np.int32)),
                kb.binary_conv2d_affine(xw, ww, c, 1, 0, 1, scale[:1].repeat(o), bias[:1].repeat(o),
                                        np.empty((2, 7, 5, o), np.float32)),
                kb.binary_conv2d_threshold(xw, ww, c, (1, 2), (2, 0), -1, cthr, cflip,
                                           np.empty((2, 11, 3, 1), np.uint64))]
    return run


def _hammer(workloads, serial, repeats: int, chaos=None) -> None:
    kb = nb()
    barrier = threading.Barrier(len(workloads) + (chaos is not None))
    stop = threading.Event()
    failures: list[str] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for r in range(repeats):
                for j, (u, v) in enumerate(zip(workloads[i](kb), serial[i])):
                    if u.tobytes() != v.tobytes():
                        failures.append(f"thread {i} repeat {r} result {j} differs from the serial call")
        except Exception as exc:  # noqa: BLE001  (reported below)
            failures.append(f"thread {i}: {type(exc).__name__}: {exc}")

    def agitator() -> None:
        barrier.wait()
        step = 0
        while not stop.is_set():
            chaos(step)
            step += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(workloads))]
    extra = [threading.Thread(target=agitator)] if chaos is not None else []
    for t in threads + extra:
        t.start()
    for t in threads:
        t.join(timeout=300)
    stop.set()
    for t in extra:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads + extra), "native kernels hung when called from several threads"
    assert not failures, failures[:5]


def test_kernels_called_from_several_python_threads_equal_serial_calls():
    kb = nb()
    workloads = [_workload(seed) for seed in range(6)]
    before = kb.get_num_threads()
    try:
        kb.set_num_threads(2)
        serial = [run(kb) for run in workloads]
        # and against the reference, so that a race that corrupts serial calls too cannot hide
        for got, want in zip(serial[2], _workload(2)(ref)):
            assert_bit_exact(got, want)
        _hammer(workloads, serial, repeats=3)
    finally:
        kb.set_num_threads(before)


def test_thread_count_and_simd_changes_from_another_thread_do_not_change_results():
    kb = nb()
    workloads = [_workload(seed) for seed in range(4)]
    before = kb.get_num_threads()
    serial = [run(kb) for run in workloads]

    def chaos(step: int) -> None:
        kb.set_num_threads(1 + step % 4)
        kb.set_simd("scalar" if step % 3 == 0 else "auto")
        assert kb.simd() in ("scalar", "avx2", "neon")

    try:
        _hammer(workloads, serial, repeats=2, chaos=chaos)
    finally:
        kb.set_num_threads(before)
        kb.set_simd("auto")
