"""The reference backend: plain NumPy, short and obviously right; the oracle for the others.

Binary semantics (DESIGN.md): bit 1 means +1 (x >= 0), bits are packed LSB-first along
the reduction axis into uint64 words, tail bits are 0, and
dot(a, b) = K - 2 * popcount(a XOR b) for the true length K.

The kernel table (the same names and signatures in native.py; Python allocates every output):
pack_bits, unpack_bits, pack_channels, popcount_rows, xnor_gemm, xnor_gemm_affine,
xnor_gemm_threshold, conv_pad_correction, binary_conv2d, binary_conv2d_affine,
binary_conv2d_threshold, set_num_threads / get_num_threads,
plus the helpers conv_output_hw and n_words. The check_* helpers validate arguments the same
way for every backend (ValueError naming the argument); native.py and cuda.py also demand
C-contiguity. They take the backend's array module (``xp``: numpy, or cupy for cuda.py) and name
(``backend``), so an array in the wrong memory (a NumPy array passed to cuda, a CuPy array passed
here) is a ValueError naming both.

The GEMM and convolution kernels take ``check_tails`` (default True): False skips the scan for
nonzero tail bits, for callers whose words come from pack_bits / pack_channels / a threshold kernel
(on the GPU that scan costs a device-to-host synchronisation per call).
"""
from __future__ import annotations

import numpy as np

from minibnn.backend import is_device_array

xp = np
name = "numpy"


def pack_bits(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Sign-and-pack ``x`` along ``axis`` into uint64 words (bit 1 = x >= 0), moved to the last axis."""
    check_host("x", x, name)
    bits = np.moveaxis(np.asarray(x) >= 0, axis, -1)
    k = bits.shape[-1]
    words = -(-k // 64)
    padded = np.zeros(bits.shape[:-1] + (words * 64,), dtype=np.uint8)
    padded[..., :k] = bits
    packed8 = np.packbits(padded, axis=-1, bitorder="little")  # 8 bytes per word, LSB first
    return np.ascontiguousarray(packed8).view("<u8").astype(np.uint64, copy=False)


def unpack_bits(words: np.ndarray, k: int) -> np.ndarray:
    """Inverse of pack_bits along the last axis: float32 +-1 values of true length ``k``."""
    check_host("words", words, name)
    words = np.asarray(words)
    if words.dtype != np.uint64 or words.ndim < 1:
        raise ValueError(f"words must be a uint64 array with at least one axis, got {words.dtype} {words.shape}")
    check_int("k", k, 0, 64 * words.shape[-1])
    as_bytes = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :k]
    return bits.astype(np.float32) * 2 - 1


def xnor_gemm(a_words: np.ndarray, b_words: np.ndarray, k: int, out: np.ndarray,
              check_tails: bool = True) -> np.ndarray:
    """out[m, n] = K - 2 * popcount(a[m] XOR b[n]): the +-1 dot product of packed rows.

    a_words (M, W) and b_words (N, W) uint64 with W = ceil(k / 64); out int32 (M, N).
    ``check_tails=False``: the caller vouches that the tail bits are 0 (words from pack_bits).
    """
    k = check_gemm(a_words, b_words, k, out, np.int32, False, check_tails=check_tails)
    out[...] = _xnor_dot(a_words, b_words, k)
    return out


# ---------------------------------------------------------------- argument checks (shared with native)

INT32_MAX = 2**31 - 1


def n_words(k: int) -> int:
    """uint64 words that hold ``k`` bits: ceil(k / 64)."""
    return -(-k // 64)


def wrong_memory(name: str, a, backend: str) -> str | None:
    """The message for an array in the other backend's memory (NumPy on cuda, CuPy on a CPU backend), else None."""
    if backend == "cuda" and isinstance(a, np.ndarray):
        return (f"{name} is a numpy.ndarray (host memory) but the current backend is 'cuda' (cupy arrays): "
                f"move it with cupy.asarray(...), or move the other arguments to the host with "
                f"minibnn.backend.to_numpy(...) and use a CPU backend")
    if backend != "cuda" and is_device_array(a):
        return (f"{name} is a cupy.ndarray (GPU memory) but the current backend is {backend!r} (numpy arrays): "
                f"move it with minibnn.backend.to_numpy(...), or use minibnn.use('cuda')")
    return None


def check_host(name: str, a, backend: str = "numpy") -> None:
    """An input that a CPU backend converts with numpy.asarray must not be a CuPy array."""
    message = wrong_memory(name, a, backend)
    if message:
        raise ValueError(message)


def _aligned(a) -> bool:
    aligned = getattr(a.flags, "aligned", None)
    if aligned is not None:
        return bool(aligned)
    return a.data.ptr % a.dtype.itemsize == 0  # cupy: the flags have no "aligned"; check the device address


def check_array(name: str, a, dtype, ndim: int | None, what: str, contiguous: bool = False,
                writable: bool = False, xp=np, backend: str = "numpy") -> None:
    """Raise ValueError naming ``name`` unless ``a`` is an ndarray of ``dtype`` with ``ndim`` axes.

    ``contiguous``: also C-contiguous and aligned (what a C pointer needs); ``writable``: an output.
    ``xp`` / ``backend``: the array module and name of the backend that takes ``a``.
    """
    if not isinstance(a, xp.ndarray):
        kind = "cupy" if backend == "cuda" else "numpy"
        raise ValueError(wrong_memory(name, a, backend) or f"{name} must be a {kind}.ndarray {what}, "
                                                           f"got {type(a).__name__}")
    if a.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must have dtype {np.dtype(dtype).name} ({what}), got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {what}, got shape {a.shape}")
    if contiguous and not (a.flags.c_contiguous and _aligned(a)):
        fix = "cupy.ascontiguousarray" if backend == "cuda" else "numpy.ascontiguousarray"
        raise ValueError(f"{name} must be C-contiguous and aligned ({fix}), "
                         f"got shape {a.shape} with strides {a.strides}")
    if writable and not getattr(a.flags, "writeable", True):  # cupy arrays are always writable
        raise ValueError(f"{name} must be writable (it is an output)")


def check_shape(name: str, a: np.ndarray, shape: tuple, what: str) -> None:
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({what}), got {tuple(a.shape)}")


def check_int(name: str, v, lo: int, hi: int = INT32_MAX) -> int:
    """``v`` as an int in [lo, hi] (Python or NumPy integer, not bool), else ValueError naming it."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    if not lo <= int(v) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {int(v)}")
    return int(v)


def check_pair(name: str, v, lo: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= lo, as a pair."""
    pair = (v, v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v
    try:
        a, b = pair
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    return check_int(name, a, lo), check_int(name, b, lo)


def check_tail(name: str, words: np.ndarray, k: int) -> None:
    """The bits past ``k`` in the last word of every row must be 0 (else every dot is off)."""
    if k % 64 and words.size and bool((words[..., -1] >> np.uint64(k % 64)).any()):
        raise ValueError(f"{name} has nonzero tail bits past bit {k % 64} of its last word "
                         f"(pack with pack_bits / pack_channels, which leave them 0)")


def check_disjoint(out: np.ndarray, xp=np, **inputs) -> None:
    for name, a in inputs.items():
        if a is not None and xp.may_share_memory(out, a):
            raise ValueError(f"out must not overlap {name}")


def check_epilogue(scale, bias, n: int, what: str, contiguous: bool, xp=np, backend: str = "numpy") -> None:
    """scale and bias, when given, must be float32 vectors of length ``n`` (one per output column)."""
    for name, v in (("scale", scale), ("bias", bias)):
        if v is not None:
            check_array(name, v, np.float32, 1, f"{what} float32", contiguous, xp=xp, backend=backend)
            check_shape(name, v, (n,), what)


def check_threshold(threshold, flip, n: int, what: str, contiguous: bool, xp=np, backend: str = "numpy") -> None:
    """threshold int32 and flip bool, vectors of length ``n`` (one per output column)."""
    check_array("threshold", threshold, np.int32, 1, f"{what} int32", contiguous, xp=xp, backend=backend)
    check_shape("threshold", threshold, (n,), what)
    check_array("flip", flip, np.bool_, 1, f"{what} bool", contiguous, xp=xp, backend=backend)
    check_shape("flip", flip, (n,), what)


def check_gemm(a_words, b_words, k, out, out_dtype, contiguous: bool, scale=None, bias=None,
               out_cols: int | None = None, check_tails: bool = True, xp=np, backend: str = "numpy") -> int:
    """Validate the xnor_gemm arguments (``out_cols``: out's columns when not N); returns k as an int.

    ``check_tails=False`` skips the tail-bit scan (the caller vouches for the words).
    """
    what = "packed rows, uint64 words"
    on = dict(xp=xp, backend=backend)
    check_array("a_words", a_words, np.uint64, 2, f"(M, W) {what}", contiguous, **on)
    check_array("b_words", b_words, np.uint64, 2, f"(N, W) {what}", contiguous, **on)
    k = check_int("k", k, 0)
    w = n_words(k)
    if a_words.shape[1] != w or b_words.shape[1] != w:
        raise ValueError(f"a_words and b_words must have W = ceil(k / 64) = {w} words per row for k={k}, "
                         f"got a_words {a_words.shape} and b_words {b_words.shape}")
    m, n = a_words.shape[0], b_words.shape[0]
    check_array("out", out, out_dtype, 2, "(M, N) output", contiguous, writable=True, **on)
    if out_cols is None:
        check_shape("out", out, (m, n), "(M, N) = (a_words rows, b_words rows)")
    else:
        check_shape("out", out, (m, out_cols), "(M, ceil(N / 64)) packed words, N = b_words rows")
    check_epilogue(scale, bias, n, "(N,) = b_words rows", contiguous, **on)
    if check_tails:
        check_tail("a_words", a_words, k)
        check_tail("b_words", b_words, k)
    check_disjoint(out, xp, a_words=a_words, b_words=b_words, scale=scale, bias=bias)
    return k


def conv_output_hw(in_hw, kernel, stride, padding) -> tuple[int, int]:
    """(OH, OW) of a convolution: (size + 2 * padding - kernel) // stride + 1 per axis."""
    return tuple((in_hw[a] + 2 * padding[a] - kernel[a]) // stride[a] + 1 for a in (0, 1))


def check_conv(x_words, w_words, channels, stride, padding, pad_value, out, out_dtype, contiguous: bool,
               correction=None, scale=None, bias=None, packed_out: bool = False, check_tails: bool = True,
               xp=np, backend: str = "numpy") -> dict:
    """Validate the binary_conv2d arguments (``packed_out``: out holds ceil(O/64) words per pixel)."""
    on = dict(xp=xp, backend=backend)
    check_array("x_words", x_words, np.uint64, 4, "(N, H, W, ceil(C/64)) channel-packed activations", contiguous,
                **on)
    check_array("w_words", w_words, np.uint64, 4, "(O, kh, kw, ceil(C/64)) channel-packed weights", contiguous,
                **on)
    c = check_int("channels", channels, 1)
    wc = n_words(c)
    if x_words.shape[3] != wc or w_words.shape[3] != wc:
        raise ValueError(f"x_words and w_words must have ceil(channels / 64) = {wc} words per pixel for "
                         f"channels={c}, got x_words {x_words.shape} and w_words {w_words.shape}")
    (sh, sw), (ph, pw) = check_pair("stride", stride, 1), check_pair("padding", padding, 0)
    if isinstance(pad_value, (bool, np.bool_)) or pad_value not in (0, 1, -1):
        raise ValueError(f"pad_value must be 0, 1 or -1, got {pad_value!r}")
    batch, h, w, _ = x_words.shape
    o, kh, kw, _ = w_words.shape
    if kh * kw * c > INT32_MAX:
        raise ValueError(f"kh * kw * channels = {kh * kw * c} does not fit the int32 output")
    oh, ow = conv_output_hw((h, w), (kh, kw), (sh, sw), (ph, pw))
    if oh < 1 or ow < 1 or h < 1 or w < 1:
        raise ValueError(f"x_words: input {h}x{w} with padding {(ph, pw)} is smaller than the kernel {kh}x{kw}")
    check_array("out", out, out_dtype, 4, "(N, OH, OW, O) output", contiguous, writable=True, **on)
    if packed_out:
        check_shape("out", out, (batch, oh, ow, n_words(o)), "(N, OH, OW, ceil(O / 64)) packed words")
    else:
        check_shape("out", out, (batch, oh, ow, o), "(N, OH, OW, O)")
    if correction is not None:
        check_array("correction", correction, np.int32, 3, "(OH, OW, O) from conv_pad_correction", contiguous,
                    **on)
        check_shape("correction", correction, (oh, ow, o), "(OH, OW, O) from conv_pad_correction")
    check_epilogue(scale, bias, o, "(O,) = w_words.shape[0]", contiguous, **on)
    if check_tails:
        check_tail("x_words", x_words, c)
        check_tail("w_words", w_words, c)
    check_disjoint(out, xp, x_words=x_words, w_words=w_words, correction=correction, scale=scale, bias=bias)
    return dict(batch=batch, h=h, w=w, c=c, wc=wc, o=o, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw,
                oh=oh, ow=ow, k=kh * kw * c, pad_value=int(pad_value))


# ---------------------------------------------------------------- more kernels

def set_num_threads(n: int) -> None:
    """The reference kernels are single NumPy calls; the count is checked and otherwise ignored."""
    check_int("n", n, 1)


def get_num_threads() -> int:
    return 1


def popcount_rows(words: np.ndarray) -> np.ndarray:
    """Set bits of each row (last axis) of a uint64 array, as int32 of shape words.shape[:-1]."""
    check_array("words", words, np.uint64, None, "packed rows", backend=name)
    if words.ndim < 1:
        raise ValueError("words must have at least one axis, got a 0-d array")
    return np.bitwise_count(words).sum(axis=-1, dtype=np.int64).astype(np.int32)


def _xnor_dot(a_words: np.ndarray, b_words: np.ndarray, k: int) -> np.ndarray:
    """K - 2 * popcount(a XOR b) for every pair of rows, int32 (M, N); chunked over rows to bound memory."""
    m, n, w = a_words.shape[0], b_words.shape[0], a_words.shape[1]
    out = np.empty((m, n), dtype=np.int32)
    step = max(1, (1 << 22) // max(1, n * w))
    for i in range(0, m, step):
        mismatches = np.bitwise_count(a_words[i:i + step, None, :] ^ b_words[None, :, :]).sum(axis=-1)
        out[i:i + step] = k - 2 * mismatches.astype(np.int32)
    return out


def xnor_gemm_affine(a_words: np.ndarray, b_words: np.ndarray, k: int, scale: np.ndarray, bias: np.ndarray,
                     out: np.ndarray, check_tails: bool = True) -> np.ndarray:
    """out[m, n] = scale[n] * dot + bias[n] in float32 (multiply, round, add, round): the fused epilogue."""
    k = check_gemm(a_words, b_words, k, out, np.float32, False, scale, bias, check_tails=check_tails)
    out[...] = _xnor_dot(a_words, b_words, k).astype(np.float32) * scale + bias
    return out


def pack_channels(x: np.ndarray) -> np.ndarray:
    """Sign-and-pack NCHW activations along channels: uint64 (N, H, W, ceil(C/64)), tail bits 0."""
    check_host("x", x, name)
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    return pack_bits(x, axis=1)


def pad_words(channels: int, pad_value: int) -> np.ndarray:
    """The words of one padded pixel: all 0 for -1, ones on the ``channels`` valid bits for +1."""
    words = np.zeros(n_words(channels), dtype=np.uint64)
    if pad_value == 1:
        words[:] = np.uint64(2**64 - 1)
        if channels % 64:
            words[-1] = np.uint64((1 << (channels % 64)) - 1)
    return words


def conv_pad_correction(w_words: np.ndarray, channels: int, in_hw, stride, padding) -> np.ndarray:
    """What -1 padding took away, per output position: int32 (OH, OW, O).

    With s[o, i, j] = sum over c of the +-1 weight w[o, c, i, j], entry (y, x, o) is the sum of
    s[o, i, j] over the taps (i, j) of output (y, x) that fall in the padding. Adding it to the
    result computed with pad_value -1 gives the result with pad_value 0.
    """
    check_array("w_words", w_words, np.uint64, 4, "(O, kh, kw, ceil(C/64)) channel-packed weights", backend=name)
    c = check_int("channels", channels, 1)
    if w_words.shape[3] != n_words(c):
        raise ValueError(f"w_words must have ceil(channels / 64) = {n_words(c)} words per tap, got {w_words.shape}")
    h, w = check_pair("in_hw", in_hw, 1)
    (sh, sw), (ph, pw) = check_pair("stride", stride, 1), check_pair("padding", padding, 0)
    _, kh, kw, _ = w_words.shape
    oh, ow = conv_output_hw((h, w), (kh, kw), (sh, sw), (ph, pw))
    if oh < 1 or ow < 1:
        raise ValueError(f"in_hw: input {h}x{w} with padding {(ph, pw)} is smaller than the kernel {kh}x{kw}")
    s = 2 * np.bitwise_count(w_words).sum(axis=-1, dtype=np.int64) - c  # (O, kh, kw)
    iy = np.arange(oh)[:, None] * sh - ph + np.arange(kh)[None, :]     # (OH, kh)
    ix = np.arange(ow)[:, None] * sw - pw + np.arange(kw)[None, :]     # (OW, kw)
    padded = ((iy < 0) | (iy >= h))[:, None, :, None] | ((ix < 0) | (ix >= w))[None, :, None, :]
    return np.einsum("yxij,oij->yxo", padded.astype(np.int64), s).astype(np.int32)


def _conv_dot(x_words, w_words, g: dict, correction) -> np.ndarray:
    """The exact +-1 convolution as int32 (N, OH, OW, O): im2col over words, then xnor dots."""
    batch, h, w, wc, ph, pw = g["batch"], g["h"], g["w"], g["wc"], g["ph"], g["pw"]
    padded = np.empty((batch, h + 2 * ph, w + 2 * pw, wc), dtype=np.uint64)
    padded[...] = pad_words(g["c"], 1 if g["pad_value"] == 1 else -1)
    padded[:, ph:ph + h, pw:pw + w] = x_words
    sn, sy, sx, sc = padded.strides
    cols = np.lib.stride_tricks.as_strided(
        padded, shape=(batch, g["oh"], g["ow"], g["kh"], g["kw"], wc),
        strides=(sn, sy * g["sh"], sx * g["sw"], sy, sx, sc))
    rows = cols.reshape(batch * g["oh"] * g["ow"], g["kh"] * g["kw"] * wc)
    dot = _xnor_dot(rows, w_words.reshape(g["o"], g["kh"] * g["kw"] * wc), g["k"]).reshape(batch, g["oh"], g["ow"], g["o"])
    if g["pad_value"] == 0:
        if correction is None:
            correction = conv_pad_correction(w_words, g["c"], (h, w), (g["sh"], g["sw"]), (ph, pw))
        dot += correction
    return dot


def binary_conv2d(x_words: np.ndarray, w_words: np.ndarray, channels: int, stride, padding, pad_value,
                  out: np.ndarray, correction: np.ndarray | None = None, check_tails: bool = True) -> np.ndarray:
    """The exact +-1 convolution of channel-packed activations and weights, int32 (N, OH, OW, O).

    Equal to a float conv2d of sign(x) padded with ``pad_value`` (0, +1 or -1) against sign(w).
    ``correction`` (pad_value 0 only; computed when None): conv_pad_correction of the weights.
    """
    g = check_conv(x_words, w_words, channels, stride, padding, pad_value, out, np.int32, False, correction,
                   check_tails=check_tails)
    out[...] = _conv_dot(x_words, w_words, g, correction)
    return out


def binary_conv2d_affine(x_words: np.ndarray, w_words: np.ndarray, channels: int, stride, padding, pad_value,
                         scale: np.ndarray, bias: np.ndarray, out: np.ndarray,
                         correction: np.ndarray | None = None, check_tails: bool = True) -> np.ndarray:
    """binary_conv2d with the fused float32 epilogue out = scale[o] * y + bias[o], float32 (N, OH, OW, O)."""
    g = check_conv(x_words, w_words, channels, stride, padding, pad_value, out, np.float32, False,
                   correction, scale, bias, check_tails=check_tails)
    out[...] = _conv_dot(x_words, w_words, g, correction).astype(np.float32) * scale + bias
    return out


def pack_threshold(dot: np.ndarray, threshold: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Bits (dot >= threshold) != flip along the last axis, packed into uint64 words."""
    return pack_bits(np.where((dot >= threshold) != flip, 1, -1).astype(np.int8), axis=-1)


def xnor_gemm_threshold(a_words: np.ndarray, b_words: np.ndarray, k: int, threshold: np.ndarray,
                        flip: np.ndarray, out: np.ndarray, check_tails: bool = True) -> np.ndarray:
    """Packed bits (dot >= threshold[n]) != flip[n]: uint64 (M, ceil(N / 64)), a folded batch norm + sign.

    threshold int32 (N,), flip bool (N,). The output is the packed input of the next binary layer.
    """
    n = b_words.shape[0] if isinstance(b_words, np.ndarray) and b_words.ndim == 2 else 0
    k = check_gemm(a_words, b_words, k, out, np.uint64, False, out_cols=n_words(n), check_tails=check_tails)
    check_threshold(threshold, flip, n, "(N,) = b_words rows", False)
    out[...] = pack_threshold(_xnor_dot(a_words, b_words, k), threshold, flip)
    return out


def binary_conv2d_threshold(x_words: np.ndarray, w_words: np.ndarray, channels: int, stride, padding, pad_value,
                            threshold: np.ndarray, flip: np.ndarray, out: np.ndarray,
                            correction: np.ndarray | None = None, check_tails: bool = True) -> np.ndarray:
    """binary_conv2d emitting packed bits (y >= threshold[o]) != flip[o]: uint64 (N, OH, OW, ceil(O/64))."""
    g = check_conv(x_words, w_words, channels, stride, padding, pad_value, out, np.uint64, False,
                   correction, packed_out=True, check_tails=check_tails)
    check_threshold(threshold, flip, g["o"], "(O,) = w_words.shape[0]", False)
    out[...] = pack_threshold(_conv_dot(x_words, w_words, g, correction), threshold, flip)
    return out
