"""The native CPU backend: the kernel table of numpy_ref.py over the cffi-wrapped C library.

The C sources are in native/ (minibnn_kernels.c): SIMD popcount GEMM (AVX2 chosen at run time,
NEON on aarch64, a scalar path everywhere), OpenMP threads. The extension module
``minibnn._native`` is built by ``pip install .`` / ``pip install -e .`` (setup.py) or in place by
``python native/build_native.py``.

Every argument is checked here (dtype, C-contiguity, alignment, shapes, sizes, zero tail bits unless
``check_tails=False``) before a pointer reaches C; a bad one raises ValueError naming it. Arrays are
never copied to fix their layout, except the input of pack_bits / pack_channels; ``out`` must be
writable and share no memory with any input. Python allocates every output. Arrays stay NumPy
arrays (``xp = numpy``). The C calls release the GIL (cffi API mode) and keep no shared mutable
state, so several Python threads may call them at once (tests/test_native_boundary.py).
"""
from __future__ import annotations

import math
import os

import numpy

from minibnn.backend import BackendUnavailable
from minibnn.backend import numpy_ref as _ref

# OpenMP threads that spin after each kernel steal the cores from OpenBLAS's threads (and the
# other way round): on 2 cores that made both 2-10x slower. Sleep instead, unless the user chose.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    from minibnn._native import ffi as _ffi
    from minibnn._native import lib as _lib
except ImportError as exc:  # not built (no C compiler at install time) or built for another Python
    _ffi = _lib = None
    _import_error = f"{type(exc).__name__}: {exc}"
else:
    _import_error = ""

xp = numpy
name = "native"
_VERSION = 3  # mbk_version() of the C sources this wrapper was written for
_ON = dict(xp=numpy, backend=name)  # for the shared argument checks

# kernels whose reference version is the native one too (cheap, not on a hot path)
conv_output_hw = _ref.conv_output_hw
n_words = _ref.n_words


def check_available() -> None:
    """Raise BackendUnavailable with the reason and the fix when the C library cannot be used."""
    if _lib is None:
        raise BackendUnavailable(
            "the native C library (minibnn._native) was not built or cannot be loaded "
            f"({_import_error}). Fix: install a C compiler (gcc or clang; with OpenMP for threads) and "
            "reinstall minibnn from the repository with `pip install -e .` (or `pip install .`); "
            "`python native/build_native.py` builds it in place. Meanwhile use minibnn.use('numpy')."
        )
    if _lib.mbk_version() != _VERSION:
        raise BackendUnavailable(
            f"the native C library (minibnn._native) is stale (version {_lib.mbk_version()}, expected "
            f"{_VERSION}). Fix: rebuild it with `pip install -e .` or `python native/build_native.py`."
        )


def _ptr(ctype: str, a: numpy.ndarray):
    return _ffi.from_buffer(ctype, a)


def _call(rc: int, what: str) -> None:
    if rc == _lib.MBK_ENOMEM:
        raise MemoryError(f"{what}: the native library could not allocate its scratch buffers")
    if rc != _lib.MBK_OK:
        raise ValueError(f"{what}: the native library rejected the arguments (code {rc})")


# ---------------------------------------------------------------- configuration

def set_num_threads(n: int) -> None:
    """Threads for the native kernels (default: MINIBNN_NUM_THREADS, else OMP_NUM_THREADS, else all).

    Results do not depend on it. Without OpenMP in the build the kernels run on one thread, and
    so they do in a process forked after they ran threaded (GNU OpenMP cannot restart its threads
    there; a multiprocessing "spawn" or "forkserver" context keeps them).
    """
    _call(_lib.mbk_set_num_threads(_ref.check_int("n", n, 1, 4096)), "set_num_threads")


def get_num_threads() -> int:
    return int(_lib.mbk_get_num_threads())


def has_openmp() -> bool:
    """Whether the library was built with OpenMP (threads)."""
    return bool(_lib.mbk_has_openmp())


def simd() -> str:
    """The path the kernels take now: 'avx2', 'neon' or 'scalar'."""
    return _ffi.string(_lib.mbk_simd_name()).decode()


def set_simd(mode: str) -> None:
    """'auto' (the best path this CPU has, the default) or 'scalar' (the portable path, for tests)."""
    modes = {"auto": _lib.MBK_SIMD_AUTO, "scalar": _lib.MBK_SIMD_SCALAR}
    if mode not in modes:
        raise ValueError(f"mode must be one of {sorted(modes)}, got {mode!r}")
    _call(_lib.mbk_set_simd(modes[mode]), "set_simd")


# ---------------------------------------------------------------- packing

def pack_bits(x: numpy.ndarray, axis: int = -1) -> numpy.ndarray:
    """Sign-and-pack ``x`` along ``axis`` into uint64 words (bit 1 = x >= 0, LSB first, tail bits 0).

    The packed axis moves last. float32 input is packed by C in one read of the floats (a
    non-contiguous or misaligned input is copied first); other real dtypes go through the NumPy reference.
    """
    _ref.check_host("x", x, name)
    x = numpy.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"x must be a real (bool, int or float) array, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("x must have at least one axis to pack along, got a 0-d array")
    if isinstance(axis, bool) or not isinstance(axis, (int, numpy.integer)) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be an int in [{-x.ndim}, {x.ndim - 1}] for x of shape {x.shape}, got {axis!r}")
    axis = int(axis) % x.ndim
    if x.dtype != numpy.float32:
        return _ref.pack_bits(x, axis)
    k = x.shape[axis]
    outer, inner = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
    out = numpy.empty(x.shape[:axis] + x.shape[axis + 1:] + (_ref.n_words(k),), dtype=numpy.uint64)
    if out.size == 0:
        return out
    if not (x.flags.c_contiguous and x.flags.aligned):
        x = x.copy(order="C")  # a new buffer (numpy.ascontiguousarray keeps a contiguous, misaligned one)
    if inner == 1:
        rc = _lib.mbk_pack_rows_f32(_ptr("float[]", x), outer, k, _ptr("uint64_t[]", out))
    else:  # a middle axis: (outer, k, inner) -> (outer, inner, words), no transposed copy
        rc = _lib.mbk_pack_channels_f32(_ptr("float[]", x), outer, k, inner, _ptr("uint64_t[]", out))
    _call(rc, "pack_bits")
    return out


def unpack_bits(words: numpy.ndarray, k: int) -> numpy.ndarray:
    """Inverse of pack_bits along the last axis: float32 +-1 values of true length ``k``."""
    _ref.check_host("words", words, name)
    return _ref.unpack_bits(words, k)


def pack_channels(x: numpy.ndarray) -> numpy.ndarray:
    """Sign-and-pack NCHW activations along channels: uint64 (N, H, W, ceil(C/64)), tail bits 0."""
    _ref.check_host("x", x, name)
    x = numpy.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    return pack_bits(x, axis=1)


def popcount_rows(words: numpy.ndarray) -> numpy.ndarray:
    """Set bits of each row (last axis) of a uint64 array, as int32 of shape words.shape[:-1]."""
    _ref.check_array("words", words, numpy.uint64, None, "packed rows", contiguous=True, **_ON)
    if words.ndim < 1:
        raise ValueError("words must have at least one axis, got a 0-d array")
    out = numpy.empty(words.shape[:-1], dtype=numpy.int32)
    if out.size == 0:
        return out
    if words.shape[-1] > _ref.INT32_MAX // 64:
        raise ValueError(f"words: rows of {words.shape[-1]} words overflow the int32 count")
    if words.shape[-1] == 0:
        out[...] = 0
        return out
    _call(_lib.mbk_popcount_rows(_ptr("uint64_t[]", words), out.size, words.shape[-1], _ptr("int32_t[]", out)),
          "popcount_rows")
    return out


# ---------------------------------------------------------------- GEMM

def xnor_gemm(a_words: numpy.ndarray, b_words: numpy.ndarray, k: int, out: numpy.ndarray,
              check_tails: bool = True) -> numpy.ndarray:
    """out[m, n] = K - 2 * popcount(a[m] XOR b[n]): the +-1 dot product of packed rows.

    a_words (M, W) and b_words (N, W) uint64 with W = ceil(k / 64); out int32 (M, N).
    ``check_tails=False``: the caller vouches that the tail bits are 0 (words from pack_bits).
    """
    k = _ref.check_gemm(a_words, b_words, k, out, numpy.int32, True, check_tails=check_tails, **_ON)
    if out.size:
        m, n = out.shape
        if k == 0:
            out[...] = 0
            return out
        _call(_lib.mbk_xnor_gemm(_ptr("uint64_t[]", a_words), _ptr("uint64_t[]", b_words), m, n,
                                 a_words.shape[1], k, _ptr("int32_t[]", out)), "xnor_gemm")
    return out


def xnor_gemm_affine(a_words: numpy.ndarray, b_words: numpy.ndarray, k: int, scale: numpy.ndarray,
                     bias: numpy.ndarray, out: numpy.ndarray, check_tails: bool = True) -> numpy.ndarray:
    """out[m, n] = scale[n] * dot + bias[n] in float32 (multiply, round, add, round): the fused epilogue."""
    k = _ref.check_gemm(a_words, b_words, k, out, numpy.float32, True, scale, bias, check_tails=check_tails, **_ON)
    if out.size:
        m, n = out.shape
        if k == 0:
            out[...] = numpy.float32(0) * scale + bias
            return out
        _call(_lib.mbk_xnor_gemm_affine(_ptr("uint64_t[]", a_words), _ptr("uint64_t[]", b_words), m, n,
                                        a_words.shape[1], k, _ptr("float[]", scale), _ptr("float[]", bias),
                                        _ptr("float[]", out)), "xnor_gemm_affine")
    return out


def xnor_gemm_threshold(a_words: numpy.ndarray, b_words: numpy.ndarray, k: int, threshold: numpy.ndarray,
                        flip: numpy.ndarray, out: numpy.ndarray, check_tails: bool = True) -> numpy.ndarray:
    """Packed bits (dot >= threshold[n]) != flip[n]: uint64 (M, ceil(N / 64)), a folded batch norm + sign."""
    n = b_words.shape[0] if isinstance(b_words, numpy.ndarray) and b_words.ndim == 2 else 0
    k = _ref.check_gemm(a_words, b_words, k, out, numpy.uint64, True, out_cols=_ref.n_words(n),
                        check_tails=check_tails, **_ON)
    _ref.check_threshold(threshold, flip, n, "(N,) = b_words rows", True, **_ON)
    _ref.check_disjoint(out, threshold=threshold, flip=flip)  # C zeroes out before it reads them
    if out.size:
        m = out.shape[0]
        if k == 0:
            out[...] = _ref.pack_threshold(numpy.zeros((m, n), numpy.int32), threshold, flip)
            return out
        _call(_lib.mbk_xnor_gemm_threshold(_ptr("uint64_t[]", a_words), _ptr("uint64_t[]", b_words), m, n,
                                           a_words.shape[1], k, _ptr("int32_t[]", threshold),
                                           _ptr("uint8_t[]", flip.view(numpy.uint8)), _ptr("uint64_t[]", out)),
              "xnor_gemm_threshold")
    return out


# ---------------------------------------------------------------- convolution

def conv_pad_correction(w_words: numpy.ndarray, channels: int, in_hw, stride, padding) -> numpy.ndarray:
    """What -1 padding took away, per output position: int32 (OH, OW, O) (see numpy_ref)."""
    _ref.check_array("w_words", w_words, numpy.uint64, 4, "(O, kh, kw, ceil(C/64)) channel-packed weights", True,
                     **_ON)
    c = _ref.check_int("channels", channels, 1)
    if w_words.shape[3] != _ref.n_words(c):
        raise ValueError(f"w_words must have ceil(channels / 64) = {_ref.n_words(c)} words per tap, "
                         f"got {w_words.shape}")
    h, w = _ref.check_pair("in_hw", in_hw, 1)
    (sh, sw), (ph, pw) = _ref.check_pair("stride", stride, 1), _ref.check_pair("padding", padding, 0)
    o, kh, kw, _ = w_words.shape
    if kh * kw * c > _ref.INT32_MAX:
        raise ValueError(f"kh * kw * channels = {kh * kw * c} does not fit int32")
    oh, ow = _ref.conv_output_hw((h, w), (kh, kw), (sh, sw), (ph, pw))
    if oh < 1 or ow < 1:
        raise ValueError(f"in_hw: input {h}x{w} with padding {(ph, pw)} is smaller than the kernel {kh}x{kw}")
    _ref.check_tail("w_words", w_words, c)
    out = numpy.empty((oh, ow, o), dtype=numpy.int32)
    if out.size:
        _call(_lib.mbk_conv_pad_correction(_ptr("uint64_t[]", w_words), o, kh, kw, c, h, w, sh, sw, ph, pw,
                                           _ptr("int32_t[]", out)), "conv_pad_correction")
    return out


def _conv(x_words, w_words, g: dict, correction, out, scale=None, bias=None, threshold=None, flip=None) -> None:
    """Call the C convolution; the output kind follows out's dtype (int32, float32 or uint64 bits)."""
    if out.size == 0:
        return
    corr = _ffi.NULL
    if g["pad_value"] == 0:
        if correction is None:
            correction = conv_pad_correction(w_words, g["c"], (g["h"], g["w"]), (g["sh"], g["sw"]),
                                             (g["ph"], g["pw"]))
        corr = _ptr("int32_t[]", correction)
    null = _ffi.NULL
    kind = out.dtype
    rc = _lib.mbk_binary_conv2d(
        _ptr("uint64_t[]", x_words), _ptr("uint64_t[]", w_words), g["batch"], g["h"], g["w"], g["c"], g["o"],
        g["kh"], g["kw"], g["sh"], g["sw"], g["ph"], g["pw"], g["pad_value"], corr,
        _ptr("float[]", scale) if scale is not None else null, _ptr("float[]", bias) if bias is not None else null,
        _ptr("int32_t[]", threshold) if threshold is not None else null,
        _ptr("uint8_t[]", flip.view(numpy.uint8)) if flip is not None else null,
        _ptr("int32_t[]", out) if kind == numpy.int32 else null,
        _ptr("float[]", out) if kind == numpy.float32 else null,
        _ptr("uint64_t[]", out) if kind == numpy.uint64 else null)
    _call(rc, "binary_conv2d")


def binary_conv2d(x_words: numpy.ndarray, w_words: numpy.ndarray, channels: int, stride, padding, pad_value,
                  out: numpy.ndarray, correction: numpy.ndarray | None = None,
                  check_tails: bool = True) -> numpy.ndarray:
    """The exact +-1 convolution of channel-packed activations and weights, int32 (N, OH, OW, O).

    x_words (N, H, W, ceil(C/64)) from pack_channels, w_words (O, kh, kw, ceil(C/64)); equal to a
    float conv2d of sign(x) padded with ``pad_value`` (0, +1 or -1) against sign(w).
    ``correction`` (pad_value 0 only; computed when None): conv_pad_correction of the weights.
    """
    g = _ref.check_conv(x_words, w_words, channels, stride, padding, pad_value, out, numpy.int32, True, correction,
                        check_tails=check_tails, **_ON)
    _conv(x_words, w_words, g, correction, out)
    return out


def binary_conv2d_affine(x_words: numpy.ndarray, w_words: numpy.ndarray, channels: int, stride, padding,
                         pad_value, scale: numpy.ndarray, bias: numpy.ndarray, out: numpy.ndarray,
                         correction: numpy.ndarray | None = None, check_tails: bool = True) -> numpy.ndarray:
    """binary_conv2d with the fused float32 epilogue out = scale[o] * y + bias[o], float32 (N, OH, OW, O)."""
    g = _ref.check_conv(x_words, w_words, channels, stride, padding, pad_value, out, numpy.float32, True,
                        correction, scale, bias, check_tails=check_tails, **_ON)
    _conv(x_words, w_words, g, correction, out, scale=scale, bias=bias)
    return out


def binary_conv2d_threshold(x_words: numpy.ndarray, w_words: numpy.ndarray, channels: int, stride, padding,
                            pad_value, threshold: numpy.ndarray, flip: numpy.ndarray, out: numpy.ndarray,
                            correction: numpy.ndarray | None = None, check_tails: bool = True) -> numpy.ndarray:
    """binary_conv2d emitting packed bits (y >= threshold[o]) != flip[o]: uint64 (N, OH, OW, ceil(O/64))."""
    g = _ref.check_conv(x_words, w_words, channels, stride, padding, pad_value, out, numpy.uint64, True,
                        correction, packed_out=True, check_tails=check_tails, **_ON)
    _ref.check_threshold(threshold, flip, g["o"], "(O,) = w_words.shape[0]", True, **_ON)
    _ref.check_disjoint(out, threshold=threshold, flip=flip)  # C zeroes out before it reads them
    _conv(x_words, w_words, g, correction, out, threshold=threshold, flip=flip)
    return out
