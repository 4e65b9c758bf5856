"""The binary kernel table, on every backend: each == numpy_ref == float math, bit for bit.

Backends: the available CPU ones (numpy, native), ``cuda-emu`` (minibnn.backend.cuda's real table
with its CUDA kernels run on the CPU by the host emulator in tests/cuda_emu; skipped without g++)
and ``cuda`` (CuPy on a GPU: marked ``gpu``, skipped with the reason when the backend is not
available). For the cuda ones inputs are moved to the device with ``kb.xp.asarray`` and results
compared after ``.get()``.

Inputs are float tensors whose signs are the +-1 values (exact zeros, negative zeros and NaN
included: sign(x) = +1 for x >= 0). The float reference computes with float64 on the +-1
tensors, which is exact for these sizes.
"""
from __future__ import annotations

import functools
import inspect
import multiprocessing
import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minibnn
from minibnn import backend
from minibnn.backend import BackendUnavailable
from minibnn.backend import numpy_ref as ref

CPU_BACKENDS = [name for name in backend.available() if name != "cuda"]
HAS_GPU = "cuda" in backend.available()
GPU_SKIP = f"the cuda backend is not available here: {backend._errors.get('cuda', '?').split('. Fix')[0]}"
BACKENDS = CPU_BACKENDS + [
    "cuda-emu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason=GPU_SKIP)]),
]
# the core properties are cheap: run more examples than the profile's default (never fewer)
MORE = settings(max_examples=max(80, settings().max_examples))
needs_native = pytest.mark.skipif("native" not in CPU_BACKENDS, reason="the native library is not built here")

K_SIZES = st.sampled_from([1, 2, 3, 7, 63, 64, 65, 127, 128, 129, 131, 191, 257, 300, 577])
MN_SIZES = st.sampled_from([1, 2, 3, 4, 5, 8, 9, 13, 17, 31, 64, 65, 129])
CHANNELS = st.sampled_from([1, 3, 17, 64, 100])
KERNELS = st.sampled_from([(1, 1), (3, 3), (5, 5), (1, 3), (3, 2), (2, 5)])


def kernels(name: str):
    """The kernel table of backend ``name``; 'cuda-emu' is cuda.py's table on the host emulator."""
    if name == "cuda-emu":
        return emulated_cuda()
    return backend._load(name)


@functools.lru_cache(maxsize=None)
def _emulated_cuda():
    import cuda_emu  # tests/cuda_emu (conftest puts tests/ on sys.path)

    try:
        return cuda_emu.emulated_table()
    except cuda_emu.EmulatorUnavailable as exc:
        return exc


def emulated_cuda():
    table = _emulated_cuda()
    if isinstance(table, Exception):
        pytest.skip(str(table))
    return table


def dev(kb, a):
    """A host array as an array of backend ``kb`` (a device copy for the cuda tables)."""
    return a if kb.xp is np else kb.xp.asarray(a)


def host(a) -> np.ndarray:
    """A backend array as a NumPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def signed_floats(rng: np.random.Generator, shape, dtype=np.float32, nan: bool = False) -> np.ndarray:
    """Normal floats with exact zeros, negative zeros (sign +1) and optionally NaN (sign -1) mixed in."""
    x = rng.standard_normal(shape).astype(dtype)
    special = rng.random(shape)
    x[special < 0.05] = 0.0
    x[(special >= 0.05) & (special < 0.1)] = -0.0
    if nan:
        x[(special >= 0.1) & (special < 0.12)] = np.nan
    return x


def sign(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


def conv_reference(x, w, stride, padding, pad_value) -> np.ndarray:
    """Float conv2d of sign(x) padded with pad_value against sign(w): (N, OH, OW, O), float64."""
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(sign(x), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    ws = sign(w)
    o, _, kh, kw = w.shape
    oh, ow = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], oh, ow, o))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            out += np.einsum("ncyx,oc->nyxo", patch, ws[:, :, i, j])
    return out


def pack_weights(kb, w: np.ndarray) -> np.ndarray:
    """(O, C, kh, kw) float weights -> (O, kh, kw, ceil(C/64)) words."""
    return kb.pack_bits(w, axis=1)


# ---------------------------------------------------------------- packing

@pytest.mark.parametrize("name", BACKENDS)
@given(shape=st.lists(st.sampled_from([1, 2, 3, 63, 64, 65, 100, 129]), min_size=1, max_size=3),
       axis_pick=st.integers(0, 5), seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64]))
def test_pack_bits_is_the_sign_lsb_first_with_zero_tail(name, shape, axis_pick, seed, dtype):
    kb = kernels(name)
    rng = np.random.default_rng(seed)
    x = signed_floats(rng, tuple(shape), dtype, nan=True)
    axis = axis_pick % len(shape) - (len(shape) if axis_pick % 2 else 0)  # negative axes too
    words = host(kb.pack_bits(dev(kb, x), axis))
    assert words.dtype == np.uint64
    k = x.shape[axis]
    moved = np.moveaxis(x, axis, -1)
    assert words.shape == moved.shape[:-1] + (ref.n_words(k),)
    np.testing.assert_array_equal(words, ref.pack_bits(x, axis))
    np.testing.assert_array_equal(ref.unpack_bits(words, k), sign(moved))  # NaN -> -1, -0.0 -> +1
    if k % 64:
        assert not np.any(words[..., -1] >> np.uint64(k % 64)), "tail bits must be 0"
    expected_bit0 = (moved[..., 0] >= 0).astype(np.uint64)
    np.testing.assert_array_equal(words[..., 0] & np.uint64(1), expected_bit0)  # LSB first


@pytest.mark.parametrize("name", BACKENDS)
def test_pack_bits_of_other_dtypes_and_strided_input(name):
    kb = kernels(name)
    rng = np.random.default_rng(1)
    pm1 = np.where(rng.random((5, 70)) < 0.5, -1, 1).astype(np.int8)
    np.testing.assert_array_equal(host(kb.pack_bits(dev(kb, pm1))), ref.pack_bits(pm1.astype(np.float32)))
    for other in (pm1.astype(np.float16), pm1 > 0, (pm1 + 1).astype(np.uint16)):  # bool, uint: all x >= 0
        np.testing.assert_array_equal(host(kb.pack_bits(dev(kb, other))), ref.pack_bits(other))
    x = signed_floats(rng, (6, 130))
    xd = dev(kb, x)
    np.testing.assert_array_equal(host(kb.pack_bits(xd[::2, ::3])), ref.pack_bits(np.ascontiguousarray(x[::2, ::3])))
    np.testing.assert_array_equal(host(kb.pack_bits(xd.T)), ref.pack_bits(x.T))
    assert kb.pack_bits(dev(kb, np.zeros((3, 0), np.float32))).shape == (3, 0)


@pytest.mark.parametrize("name", BACKENDS)
@given(batch=st.sampled_from([1, 2]), channels=CHANNELS, hw=st.sampled_from([(1, 1), (3, 5), (9, 8), (10, 13)]),
       seed=st.integers(0, 2**32 - 1))
def test_pack_channels_packs_nchw_into_nhwc_words(name, batch, channels, hw, seed):
    kb = kernels(name)
    x = signed_floats(np.random.default_rng(seed), (batch, channels) + hw)
    words = host(kb.pack_channels(dev(kb, x)))
    assert words.shape == (batch,) + hw + (ref.n_words(channels),)
    np.testing.assert_array_equal(words, ref.pack_bits(x, axis=1))
    np.testing.assert_array_equal(ref.unpack_bits(words, channels), sign(x.transpose(0, 2, 3, 1)))


@pytest.mark.parametrize("name", BACKENDS)
@given(rows=MN_SIZES, k=K_SIZES, seed=st.integers(0, 2**32 - 1))
def test_popcount_rows_counts_the_plus_ones(name, rows, k, seed):
    kb = kernels(name)
    x = signed_floats(np.random.default_rng(seed), (rows, k))
    counts = host(kb.popcount_rows(kb.pack_bits(dev(kb, x))))
    assert counts.dtype == np.int32
    np.testing.assert_array_equal(counts, (x >= 0).sum(axis=1))


# ---------------------------------------------------------------- GEMM

@MORE
@pytest.mark.parametrize("name", BACKENDS)
@given(m=MN_SIZES, n=MN_SIZES, k=K_SIZES, seed=st.integers(0, 2**32 - 1))
def test_xnor_gemm_equals_float_matmul_of_the_signs(name, m, n, k, seed):
    kb = kernels(name)
    rng = np.random.default_rng(seed)
    a, b = signed_floats(rng, (m, k)), signed_floats(rng, (n, k))
    aw, bw = kb.pack_bits(dev(kb, a)), kb.pack_bits(dev(kb, b))
    out = host(kb.xnor_gemm(aw, bw, k, dev(kb, np.full((m, n), 12345, dtype=np.int32))))
    expected = sign(a) @ sign(b).T
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, ref.xnor_gemm(host(aw), host(bw), k, np.empty((m, n), np.int32)))


@MORE
@pytest.mark.parametrize("name", BACKENDS)
@given(m=MN_SIZES, n=MN_SIZES, k=K_SIZES, seed=st.integers(0, 2**32 - 1))
def test_xnor_gemm_affine_is_the_float32_epilogue_bit_for_bit(name, m, n, k, seed):
    kb = kernels(name)
    rng = np.random.default_rng(seed)
    a, b = signed_floats(rng, (m, k)), signed_floats(rng, (n, k))
    scale, bias = signed_floats(rng, n) * np.float32(0.37), signed_floats(rng, n)
    aw, bw = kb.pack_bits(dev(kb, a)), kb.pack_bits(dev(kb, b))
    out = host(kb.xnor_gemm_affine(aw, bw, k, dev(kb, scale), dev(kb, bias), dev(kb, np.empty((m, n), np.float32))))
    dot = (sign(a) @ sign(b).T).astype(np.float32)
    expected = dot * scale + bias  # float32: multiply, round, add, round
    np.testing.assert_array_equal(out.view(np.int32), expected.view(np.int32))


def thresholds_near(rng, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-column thresholds drawn from the values themselves (so ties occur) +-1, random flips."""
    rows = values.reshape(-1, n)
    pick = rows[rng.integers(0, rows.shape[0], n), np.arange(n)] if rows.size else np.zeros(n)
    threshold = (pick + rng.integers(-1, 2, n)).astype(np.int32)
    return threshold, rng.random(n) < 0.5


def threshold_bits(dot: np.ndarray, threshold: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """The reference: packed bits (dot >= threshold) != flip, built bit by bit."""
    bits = (dot >= threshold) != flip
    n = bits.shape[-1]
    words = np.zeros(bits.shape[:-1] + (-(-n // 64),), np.uint64)
    for j in range(n):
        words[..., j // 64] |= bits[..., j].astype(np.uint64) << np.uint64(j % 64)
    return words


@MORE
@pytest.mark.parametrize("name", BACKENDS)
@given(m=MN_SIZES, n=st.sampled_from([1, 7, 8, 9, 63, 64, 65, 130]), k=K_SIZES, seed=st.integers(0, 2**32 - 1))
def test_xnor_gemm_threshold_packs_the_comparison_bits(name, m, n, k, seed):
    kb = kernels(name)
    rng = np.random.default_rng(seed)
    a, b = signed_floats(rng, (m, k)), signed_floats(rng, (n, k))
    dot = (sign(a) @ sign(b).T).astype(np.int64)
    threshold, flip = thresholds_near(rng, dot, n)
    out = dev(kb, np.full((m, -(-n // 64)), 0xA5A5, np.uint64))
    kb.xnor_gemm_threshold(kb.pack_bits(dev(kb, a)), kb.pack_bits(dev(kb, b)), k, dev(kb, threshold), dev(kb, flip),
                           out)
    np.testing.assert_array_equal(host(out), threshold_bits(dot, threshold, flip))


@pytest.mark.parametrize("name", BACKENDS)
def test_threshold_arguments_are_checked(name):
    kb = kernels(name)
    a = kb.pack_bits(dev(kb, np.ones((2, 70), np.float32)))
    thr, flip = dev(kb, np.zeros(2, np.int32)), dev(kb, np.zeros(2, bool))
    with pytest.raises(ValueError, match="threshold must have dtype int32"):
        kb.xnor_gemm_threshold(a, a, 70, thr.astype(np.int64), flip, dev(kb, np.empty((2, 1), np.uint64)))
    with pytest.raises(ValueError, match="flip must have dtype bool"):
        kb.xnor_gemm_threshold(a, a, 70, thr, flip.astype(np.uint8), dev(kb, np.empty((2, 1), np.uint64)))
    with pytest.raises(ValueError, match="out must have shape"):
        kb.xnor_gemm_threshold(a, a, 70, thr, flip, dev(kb, np.empty((2, 2), np.uint64)))


@pytest.mark.parametrize("name", BACKENDS)
def test_xnor_gemm_edge_sizes(name):
    kb = kernels(name)
    d = functools.partial(dev, kb)
    empty = d(np.zeros((0, 1), np.uint64))
    assert kb.xnor_gemm(empty, d(np.zeros((3, 1), np.uint64)), 5, d(np.empty((0, 3), np.int32))).shape == (0, 3)
    out = kb.xnor_gemm(d(np.zeros((2, 0), np.uint64)), d(np.zeros((3, 0), np.uint64)), 0, d(np.ones((2, 3), np.int32)))
    np.testing.assert_array_equal(host(out), 0)
    scale, bias = d(np.array([2, -1, 0.5], np.float32)), d(np.array([1, -0.0, 3], np.float32))
    out = kb.xnor_gemm_affine(d(np.zeros((2, 0), np.uint64)), d(np.zeros((3, 0), np.uint64)), 0, scale, bias,
                              d(np.empty((2, 3), np.float32)))
    np.testing.assert_array_equal(host(out).view(np.int32), np.broadcast_to(host(bias), (2, 3)).view(np.int32))
    # K = 2 words of all-different bits: dot = -K; a row against itself: +K
    a = kb.pack_bits(d(np.ones((1, 100), np.float32)))
    b = kb.pack_bits(d(-np.ones((1, 100), np.float32)))
    both = d(np.concatenate([host(a), host(b)]))
    np.testing.assert_array_equal(host(kb.xnor_gemm(a, both, 100, d(np.empty((1, 2), np.int32)))), [[100, -100]])


# ---------------------------------------------------------------- convolution

@MORE
@pytest.mark.parametrize("name", BACKENDS)
@given(batch=st.sampled_from([1, 2, 3]), channels=CHANNELS,
       hw=st.sampled_from([(1, 1), (2, 3), (5, 5), (7, 4), (8, 9)]), kernel=KERNELS,
       out_channels=st.sampled_from([1, 3, 8, 9, 16]), stride=st.sampled_from([(1, 1), (2, 2), (1, 2), (2, 1)]),
       padding=st.sampled_from([(0, 0), (1, 1), (2, 2), (0, 1), (2, 1)]), pad_value=st.sampled_from([0, 1, -1]),
       seed=st.integers(0, 2**32 - 1))
def test_binary_conv2d_equals_float_conv_of_the_signs(name, batch, channels, hw, kernel, out_channels, stride,
                                                      padding, pad_value, seed):
    kb = kernels(name)
    (h, w), (kh, kw), (ph, pw) = hw, kernel, padding
    if h + 2 * ph < kh or w + 2 * pw < kw:
        return  # no output position
    rng = np.random.default_rng(seed)
    x = signed_floats(rng, (batch, channels, h, w))
    wt = signed_floats(rng, (out_channels, channels, kh, kw))
    expected = conv_reference(x, wt, stride, padding, pad_value)
    d = functools.partial(dev, kb)
    xw, ww = kb.pack_channels(d(x)), pack_weights(kb, d(wt))
    out = host(kb.binary_conv2d(xw, ww, channels, stride, padding, pad_value,
                                d(np.full(expected.shape, 777, np.int32))))
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(
        out, ref.binary_conv2d(host(xw), host(ww), channels, stride, padding, pad_value,
                               np.empty(expected.shape, np.int32)))
    if pad_value == 0:  # a precomputed correction gives the same; it is what -1 padding took away
        corr = kb.conv_pad_correction(ww, channels, (h, w), stride, padding)
        np.testing.assert_array_equal(host(corr), ref.conv_pad_correction(host(ww), channels, (h, w), stride, padding))
        np.testing.assert_array_equal(host(corr), expected[0] - conv_reference(x, wt, stride, padding, -1)[0])
        again = kb.binary_conv2d(xw, ww, channels, stride, padding, 0, d(np.empty(expected.shape, np.int32)), corr)
        np.testing.assert_array_equal(host(again), expected)
    scale, bias = signed_floats(rng, out_channels) * np.float32(0.5), signed_floats(rng, out_channels)
    fout = kb.binary_conv2d_affine(xw, ww, channels, stride, padding, pad_value, d(scale), d(bias),
                                   d(np.empty(expected.shape, np.float32)))
    fexpected = expected.astype(np.float32) * scale + bias
    np.testing.assert_array_equal(host(fout).view(np.int32), fexpected.view(np.int32))
    threshold, flip = thresholds_near(rng, expected.astype(np.int64), out_channels)
    bits = kb.binary_conv2d_threshold(xw, ww, channels, stride, padding, pad_value, d(threshold), d(flip),
                                      d(np.full(expected.shape[:3] + (-(-out_channels // 64),), 99, np.uint64)))
    np.testing.assert_array_equal(host(bits), threshold_bits(expected, threshold, flip))


@pytest.mark.parametrize("name", BACKENDS)
def test_plus_one_padding_leaves_the_tail_bits_zero(name):
    """+1 padding sets only the C valid bits: with C = 65 a padded tap must add exactly +-65, not +-128."""
    kb = kernels(name)
    x = dev(kb, -np.ones((1, 65, 1, 1), np.float32))
    wt = dev(kb, np.ones((1, 65, 3, 3), np.float32))
    out = kb.binary_conv2d(kb.pack_channels(x), pack_weights(kb, wt), 65, 1, 1, 1,
                           dev(kb, np.empty((1, 1, 1, 1), np.int32)))
    assert host(out)[0, 0, 0, 0] == 8 * 65 - 65  # 8 padded taps of +1, the centre -1


# ---------------------------------------------------------------- threads and SIMD paths

def _workload(kb):
    rng = np.random.default_rng(7)
    d = functools.partial(dev, kb)
    # large enough (>= 2^22 word pairs) for the native kernels to split the work over the threads
    a, b = signed_floats(rng, (600, 1500)), signed_floats(rng, (300, 1500))
    x, wt = signed_floats(rng, (4, 100, 48, 47)), signed_floats(rng, (40, 100, 3, 3))
    aw, bw = kb.pack_bits(d(a)), kb.pack_bits(d(b))
    gemm = kb.xnor_gemm(aw, bw, 1500, d(np.empty((600, 300), np.int32)))
    xw, ww = kb.pack_channels(d(x)), pack_weights(kb, d(wt))
    convs = [kb.binary_conv2d(xw, ww, 100, s, 1, pv,
                              d(np.empty((4, *ref.conv_output_hw((48, 47), (3, 3), (s, s), (1, 1)), 40), np.int32)))
             for s, pv in ((1, 0), (2, 1), (1, -1))]
    thr, flip = thresholds_near(rng, host(gemm), 300)
    bits = kb.xnor_gemm_threshold(aw, bw, 1500, d(thr), d(flip), d(np.empty((600, 5), np.uint64)))
    thr, flip = thresholds_near(rng, host(convs[0]), 40)
    conv_bits = kb.binary_conv2d_threshold(xw, ww, 100, 1, 1, 0, d(thr), d(flip),
                                           d(np.empty((4, 48, 47, 1), np.uint64)))
    return [host(r) for r in (aw, bw, xw, ww, gemm, *convs, bits, conv_bits)]


@pytest.mark.parametrize("name", BACKENDS)
def test_results_are_identical_for_1_and_2_threads(name):
    kb = kernels(name)
    before = kb.get_num_threads()
    try:
        kb.set_num_threads(1)
        one = _workload(kb)
        kb.set_num_threads(2)
        assert kb.get_num_threads() in (1, 2)  # 1 when built without OpenMP
        two = _workload(kb)
    finally:
        kb.set_num_threads(before)
    for u, v in zip(one, two):
        np.testing.assert_array_equal(u, v)


@needs_native
def test_native_scalar_path_equals_the_simd_path():
    kb = kernels("native")
    try:
        kb.set_simd("scalar")
        assert kb.simd() == "scalar"
        scalar = _workload(kb)
    finally:
        kb.set_simd("auto")
    for u, v in zip(scalar, _workload(kb)):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="mode"):
        kb.set_simd("avx512")


def _gemm_in_child(a, b, k, expected) -> None:  # runs in a forked process
    kb = kernels("native")
    out = kb.xnor_gemm(a, b, k, np.empty(expected.shape, np.int32))
    sys.exit(0 if np.array_equal(out, expected) and kb.get_num_threads() == 1 else 3)


@needs_native
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Python >= 3.12 warns about fork with threads
def test_native_kernels_work_in_a_child_forked_after_they_ran_threaded():
    """GNU OpenMP cannot restart its threads after fork: the child must fall back to one thread, not hang."""
    kb = kernels("native")
    before = kb.get_num_threads()
    rng = np.random.default_rng(3)
    a, b = kb.pack_bits(signed_floats(rng, (200, 640))), kb.pack_bits(signed_floats(rng, (100, 640)))
    try:
        kb.set_num_threads(2)
        expected = kb.xnor_gemm(a, b, 640, np.empty((200, 100), np.int32))  # the thread pool now exists
        child = multiprocessing.get_context("fork").Process(target=_gemm_in_child, args=(a, b, 640, expected))
        child.start()
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
            pytest.fail("the native kernels hung in a forked child")
        assert child.exitcode == 0
    finally:
        kb.set_num_threads(before)


@needs_native
def test_native_thread_count_is_validated():
    kb = kernels("native")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must"):
            kb.set_num_threads(bad)


TABLE = ["pack_bits", "unpack_bits", "pack_channels", "popcount_rows", "xnor_gemm", "xnor_gemm_affine",
         "xnor_gemm_threshold", "conv_pad_correction", "binary_conv2d", "binary_conv2d_affine",
         "binary_conv2d_threshold", "conv_output_hw", "n_words",
         "set_num_threads", "get_num_threads"]


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_has_the_reference_table_with_the_same_signatures(name):
    kb = kernels(name)
    assert (kb.xp is np) == (name in ("numpy", "native"))
    def params(fn):  # names, kinds and defaults (annotations are spelled differently)
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    for fn in TABLE:
        assert params(getattr(kb, fn)) == params(getattr(ref, fn)), fn


# ---------------------------------------------------------------- argument validation

def _gemm_args():
    a = ref.pack_bits(np.ones((3, 70), np.float32))
    b = ref.pack_bits(np.ones((4, 70), np.float32))
    return a, b, 70, np.empty((3, 4), np.int32)


def _conv_args():
    x = ref.pack_bits(np.ones((1, 3, 5, 5), np.float32), axis=1)
    w = ref.pack_bits(np.ones((2, 3, 3, 3), np.float32), axis=1)
    return x, w, 3, 1, 1, 0, np.empty((1, 5, 5, 2), np.int32)


def _replace(args, i, value):
    args = list(args)
    args[i] = value
    return args


def _on(kb, args):
    """The arrays among ``args`` on backend ``kb``, the rest as they are."""
    return [dev(kb, a) if isinstance(a, np.ndarray) else a for a in args]


BAD_GEMM = [  # (argument index, replacement, name in the message)
    (0, np.ones((3, 2)), "a_words"),
    (0, np.ones((3, 2), np.uint32), "a_words"),
    (1, np.zeros(2, np.uint64), "b_words"),
    (1, np.zeros((4, 3), np.uint64), "a_words and b_words"),
    (1, np.full((4, 2), 2**63, np.uint64), "b_words"),  # tail bits set
    (2, -1, "k"),
    (2, 70.0, "k"),
    (2, True, "k"),
    (2, 129, "a_words and b_words"),
    (3, np.empty((3, 4), np.int64), "out"),
    (3, np.empty((4, 3), np.int32), "out"),
    (3, [[0] * 4] * 3, "out"),
]

BAD_CONV = [
    (0, np.zeros((1, 5, 5), np.uint64), "x_words"),
    (0, np.zeros((1, 5, 5, 1), np.int64), "x_words"),
    (1, np.zeros((2, 3, 3, 2), np.uint64), "x_words and w_words"),
    (1, np.zeros((2, 8, 8, 1), np.uint64), "x_words"),  # kernel larger than the padded input
    (2, 0, "channels"),
    (2, 65, "x_words and w_words"),
    (3, 0, "stride"),
    (3, (1, 2, 3), "stride"),
    (4, -1, "padding"),
    (5, 2, "pad_value"),
    (5, True, "pad_value"),
    (6, np.empty((1, 5, 5, 2), np.float32), "out"),
    (6, np.empty((1, 3, 3, 2), np.int32), "out"),
]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("index,value,argname", BAD_GEMM)
def test_bad_gemm_arguments_raise_value_error_naming_them(name, index, value, argname):
    kb = kernels(name)
    with pytest.raises(ValueError, match=argname):
        kb.xnor_gemm(*_on(kb, _replace(_gemm_args(), index, value)))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("index,value,argname", BAD_CONV)
def test_bad_conv_arguments_raise_value_error_naming_them(name, index, value, argname):
    kb = kernels(name)
    with pytest.raises(ValueError, match=argname):
        kb.binary_conv2d(*_on(kb, _replace(_conv_args(), index, value)))


@pytest.mark.parametrize("name", BACKENDS)
def test_bad_epilogue_and_other_arguments(name):
    kb = kernels(name)
    d = functools.partial(dev, kb)
    a, b, k, _ = _on(kb, _gemm_args())
    out = d(np.empty((3, 4), np.float32))
    with pytest.raises(ValueError, match="scale"):
        kb.xnor_gemm_affine(a, b, k, d(np.ones(4)), d(np.ones(4, np.float32)), out)
    with pytest.raises(ValueError, match="bias"):
        kb.xnor_gemm_affine(a, b, k, d(np.ones(4, np.float32)), d(np.ones(3, np.float32)), out)
    with pytest.raises(ValueError, match="out"):
        kb.xnor_gemm_affine(a, b, k, d(np.ones(4, np.float32)), d(np.ones(4, np.float32)),
                            d(np.empty((3, 4), np.int32)))
    x, w, c, s, p, pv, cout = _on(kb, _conv_args())
    with pytest.raises(ValueError, match="correction"):
        kb.binary_conv2d(x, w, c, s, p, pv, cout, d(np.zeros((5, 5, 3), np.int32)))
    with pytest.raises(ValueError, match="x"):
        kb.pack_channels(d(np.ones((2, 3, 4), np.float32)))
    with pytest.raises(ValueError, match="words"):
        kb.popcount_rows(d(np.ones((2, 3), np.int64)))
    if kb.xp is np:  # CuPy arrays cannot be read-only
        read_only = np.empty((3, 4), np.int32)
        read_only.flags.writeable = False
        with pytest.raises(ValueError, match="out"):
            kb.xnor_gemm(a, b, k, read_only)


@pytest.mark.parametrize("name", BACKENDS)
def test_check_tails_false_skips_only_the_tail_scan(name):
    """check_tails=False (words from a packer) skips the tail-bit scan and nothing else."""
    kb = kernels(name)
    d = functools.partial(dev, kb)
    a, b, k, out = _on(kb, _gemm_args())
    expected = host(kb.xnor_gemm(a, b, k, out))
    np.testing.assert_array_equal(host(kb.xnor_gemm(a, b, k, d(np.empty((3, 4), np.int32)), check_tails=False)),
                                  expected)
    dirty = d(host(b) | np.uint64(1 << 63))  # bit 127 of k = 70: a nonzero tail
    with pytest.raises(ValueError, match="tail bits"):
        kb.xnor_gemm(a, dirty, k, d(np.empty((3, 4), np.int32)))
    kb.xnor_gemm(a, dirty, k, d(np.empty((3, 4), np.int32)), check_tails=False)  # no scan: no error
    thr, flip = d(np.zeros(4, np.int32)), d(np.zeros(4, bool))
    scale, bias = d(np.ones(4, np.float32)), d(np.zeros(4, np.float32))
    for call in (lambda t: kb.xnor_gemm_affine(a, dirty, k, scale, bias, d(np.empty((3, 4), np.float32)),
                                               check_tails=t),
                 lambda t: kb.xnor_gemm_threshold(a, dirty, k, thr, flip, d(np.empty((3, 1), np.uint64)),
                                                  check_tails=t)):
        with pytest.raises(ValueError, match="tail bits"):
            call(True)
        call(False)
    x, w, c, s, p, pv, cout = _on(kb, _conv_args())
    dirty_x = d(host(x) | np.uint64(1 << 63))
    conv_out = {"": lambda: d(np.empty((1, 5, 5, 2), np.int32)),
                "_affine": lambda: d(np.empty((1, 5, 5, 2), np.float32)),
                "_threshold": lambda: d(np.empty((1, 5, 5, 1), np.uint64))}
    extra = {"": (), "_affine": (scale[:2], bias[:2]), "_threshold": (thr[:2], flip[:2])}
    for kind in conv_out:
        fn = getattr(kb, "binary_conv2d" + kind)
        with pytest.raises(ValueError, match="x_words has nonzero tail bits"):
            fn(dirty_x, w, c, s, p, pv, *extra[kind], conv_out[kind]())
        fn(dirty_x, w, c, s, p, pv, *extra[kind], conv_out[kind](), check_tails=False)


@needs_native
@pytest.mark.parametrize("argname", ["a_words", "b_words", "out"])
def test_native_rejects_non_contiguous_arrays(argname):
    kb = kernels("native")
    a = ref.pack_bits(np.ones((4, 200), np.float32))  # (4, 4) words
    b = ref.pack_bits(np.ones((5, 200), np.float32))
    args = {"a_words": a, "b_words": b, "k": 200, "out": np.empty((4, 5), np.int32)}
    args[argname] = np.asfortranarray(args[argname]) if argname != "out" else np.empty((5, 4), np.int32).T
    with pytest.raises(ValueError, match=f"{argname} must be C-contiguous"):
        kb.xnor_gemm(**args)
    x, w, c, s, p, pv, cout = _conv_args()
    with pytest.raises(ValueError, match="x_words must be C-contiguous"):
        kb.binary_conv2d(np.zeros((1, 5, 5, 2), np.uint64)[..., :1], w, c, s, p, pv, cout)


# ---------------------------------------------------------------- the switch without the C library

def test_use_native_without_the_built_library_names_the_fix(monkeypatch):
    monkeypatch.setattr(backend, "_current", backend.current())
    monkeypatch.setitem(sys.modules, "minibnn._native", None)  # `import minibnn._native` fails
    monkeypatch.delitem(sys.modules, "minibnn.backend.native", raising=False)
    monkeypatch.setattr(backend, "_loaded", {k: v for k, v in backend._loaded.items() if k != "native"})
    monkeypatch.setattr(backend, "_errors", dict(backend._errors))
    if hasattr(backend, "native"):
        monkeypatch.setattr(backend, "native", backend.native)
    before = backend.current()
    with pytest.raises(BackendUnavailable) as info:
        minibnn.use("native")
    message = str(info.value)
    assert "not built" in message and "pip install -e ." in message and "compiler" in message
    assert backend.current() == before
