"""Bit-serial integer arithmetic for a-bit activations x b-bit weights, on any backend's binary kernels.

Levels: an a-bit activation is an integer ``q`` in [0, 2^a - 1]; a b-bit DoReFa weight is an integer
``r`` in [0, 2^b - 1] standing for ``w = 2r - (2^b - 1)`` (b = 1: w = +-1). Bit planes: ``q_i`` is
bit i of q, ``r_j`` bit j of r, each packed like pack_bits (LSB first along the reduction axis,
uint64 words, tail bits 0).

The arithmetic. Write q = sum_i 2^i q_i and w = sum_j 2^j s_j with s_j = 2 r_j - 1 = +-1. Over K
inputs, with xnor_ij = K - 2 popc(q_i XOR r_j) (the backend's ``xnor_gemm``: bit 0 counts as -1)
and pb_j = popc(r_j)::

    D = sum_k q_k w_k = (2^a - 1) * sum_j 2^j pb_j - sum_ij 2^(i+j) popc(q_i XOR r_j)
      = (T_00 >> 1) + offset + sum_{(i,j) != (0,0)} 2^(i+j-1) T_ij,
    T_ij = xnor_ij,   offset = (2^a - 1) * sum_j 2^j pb_j - floor(K (2^a - 1) (2^b - 1) / 2)

(the activation popcounts cancel; T_00 and K have the same parity, so the halving is exact). This
is the issue-13 form 2 sum 2^(i+j) popc(q_i AND r_j) - (2^b - 1) sum 2^i popc(q_i) rewritten with
popc(x AND y) = (popc x + popc y - popc(x XOR y)) / 2. So an a x b layer is ``a`` calls of the
backend's optimised xnor_gemm / binary_conv2d (the b weight planes stacked as b * N columns) plus
integer adds and shifts; every backend (numpy, native, cuda) runs it, exactly. All arithmetic is
int32 and modulo 2^32 (adds and power-of-two multiplies only), so the result is exact whenever
K (2^a - 1) (2^b - 1) fits int32, which the functions check.

Functions take ``table`` (a backend kernel table; default: the current backend's) and use its
array module ``table.xp``. Nothing on the per-batch path synchronises with the GPU once the checks
are off (``check=False``, ``check_tails=False``) and the weight term is precomputed (gemm_offset /
conv_offset, once per layer: cuda's conv_pad_correction, used for pad_value -1, checks tail bits).
"""
from __future__ import annotations

import numpy as np

from minibnn import backend
from minibnn.backend import numpy_ref as _ref

MAX_BITS = 8
_SCRATCH_BYTES = 1 << 22  # the int32 partial products of one chunk of rows / images


def _table(table):
    return backend.kernels() if table is None else table


def _as_array(name: str, a, table):
    """``a`` as an array of the table's module: an array in the other backend's memory is a ValueError."""
    xp = table.xp
    if isinstance(a, xp.ndarray):
        return a
    _ref.check_host(name, a, table.name)
    return xp.asarray(a)


def _check_bits(name: str, bits) -> int:
    return _ref.check_int(name, bits, 1, MAX_BITS)


def _check_fits(k: int, a: int, b: int) -> None:
    if k * (2**a - 1) * (2**b - 1) > _ref.INT32_MAX:
        raise ValueError(f"k * (2^a - 1) * (2^b - 1) = {k * (2**a - 1) * (2**b - 1)} (k={k}, a={a}, b={b}) "
                         f"does not fit the int32 output")


def _check_planes(name: str, planes, ndim: int, what: str, table) -> int:
    """planes: a uint64 array of ``ndim`` axes with 1..8 planes on axis 0; returns the plane count."""
    _ref.check_array(name, planes, np.uint64, ndim, what, xp=table.xp, backend=table.name)
    if not 1 <= planes.shape[0] <= MAX_BITS:
        raise ValueError(f"{name} must hold 1..{MAX_BITS} bit planes on axis 0 {what}, got shape {planes.shape}")
    return planes.shape[0]


def _renamed(exc: ValueError, **names) -> ValueError:
    """The shared checks name one plane's arguments (a_words, ...): say which planes array was meant."""
    message = str(exc)
    for old, new in names.items():
        message = message.replace(old, new)
    return ValueError(message)


# ---------------------------------------------------------------- packing

def pack_planes(levels, bits: int, axis: int = -1, check: bool = True, *, table=None):
    """Pack integer levels in [0, 2^bits - 1] into bit planes: uint64 (bits, *other axes, ceil(K/64)).

    Plane i holds bit i of each level, packed along ``axis`` (moved last) LSB first, tail bits 0,
    exactly as pack_bits packs signs. ``levels``: an integer array, or a float array holding
    integers. ``check=False`` skips the range / integrality check (a device sync on the GPU): the
    caller vouches for the levels (out-of-range values then give meaningless planes).
    """
    table = _table(table)
    xp = table.xp
    bits = _check_bits("bits", bits)
    levels = _as_array("levels", levels, table)
    if levels.dtype.kind not in "biuf":
        raise ValueError(f"levels must be an integer or float array, got dtype {levels.dtype}")
    if levels.ndim == 0:
        raise ValueError("levels must have at least one axis to pack along, got a 0-d array")
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)) \
            or not -levels.ndim <= axis < levels.ndim:
        raise ValueError(f"axis must be an int in [{-levels.ndim}, {levels.ndim - 1}] for levels of shape "
                         f"{levels.shape}, got {axis!r}")
    axis = int(axis) % levels.ndim
    top = 2**bits - 1
    if check and levels.size:
        bad = (levels < 0) | (levels > top)
        if levels.dtype.kind == "f":
            bad |= levels != xp.floor(levels)  # NaN and non-integers (inf is out of range)
        if bool(bad.any()):
            raise ValueError(f"levels must be integers in [0, {top}] for bits={bits}, got values in "
                             f"[{levels.min()}, {levels.max()}]" + (" or non-integers / NaN"
                                                                    if levels.dtype.kind == "f" else ""))
    q = levels.astype(np.uint8)
    signed = xp.empty(q.shape, dtype=np.uint8)
    values = xp.empty(q.shape, dtype=np.float32)  # the native and cuda tables pack float32 in one pass
    planes = None
    for i in range(bits):  # one plane at a time, in two buffers of one plane's size
        xp.left_shift(q, np.uint8(7 - i), out=signed)  # bit i in the sign bit ...
        xp.invert(signed, out=signed)  # ... inverted: as int8, >= 0 exactly where bit i is 1 (pack_bits' rule)
        values[...] = signed.view(np.int8)
        plane = table.pack_bits(values, axis=axis)
        if planes is None:
            planes = xp.empty((bits,) + plane.shape, dtype=np.uint64)
        planes[i] = plane
    return planes


# ---------------------------------------------------------------- GEMM

def _weight_term(pb, k: int, a: int, b: int, xp):
    """int64 [..., n] = (2^a - 1) * sum_j 2^j pb[j, ..., n] - floor(k (2^a-1) (2^b-1) / 2)."""
    total = xp.zeros(pb.shape[1:], dtype=np.int64)
    for j in range(b):
        total += pb[j].astype(np.int64) << j
    return total * (2**a - 1) - (k * (2**a - 1) * (2**b - 1)) // 2


def _check_offset(offset, shapes: list, what: str, table) -> None:
    _ref.check_array("offset", offset, np.int32, None, f"{what} int32", xp=table.xp, backend=table.name)
    if tuple(offset.shape) not in [tuple(sh) for sh in shapes]:
        raise ValueError(f"offset must have shape {' or '.join(map(str, shapes))} ({what}), got {offset.shape}")


def _accumulate(out, scratch, i: int, b: int, offset, xp) -> None:
    """out += the terms of activation plane i from scratch (..., b * N): see the module docstring."""
    parts = scratch.reshape(scratch.shape[:-1] + (b, scratch.shape[-1] // b))
    for j in range(b):
        t = parts[..., j, :]
        if i == j == 0:
            t >>= 1
            xp.add(t, offset, out=out)
        else:
            if i + j > 1:
                t <<= i + j - 1
            out += t


def _chunk(rows: int, row_bytes: int) -> int:
    return max(1, min(rows, _SCRATCH_BYTES // max(1, row_bytes)))


def gemm_offset(b_planes, k: int, a: int, *, table=None):
    """The weight-only term of bitserial_gemm for a-bit activations, int32 (N,) (precompute it per layer).

    offset[n] = (2^a - 1) * sum_j 2^j popc(b_planes[j, n]) - floor(k (2^a - 1) (2^b - 1) / 2).
    """
    table = _table(table)
    b = _check_planes("b_planes", b_planes, 3, "(b, N, W) weight planes", table)
    a, k = _check_bits("a", a), _ref.check_int("k", k, 0)
    if b_planes.shape[2] != _ref.n_words(k):
        raise ValueError(f"b_planes must have W = ceil(k / 64) = {_ref.n_words(k)} words per row for k={k}, "
                         f"got shape {b_planes.shape}")
    _check_fits(k, a, b)
    pb = table.popcount_rows(table.xp.ascontiguousarray(b_planes))
    return _weight_term(pb, k, a, b, table.xp).astype(np.int32)


def bitserial_gemm(a_planes, b_planes, k: int, out, check_tails: bool = True, *, offset=None, table=None):
    """out[m, n] = sum_k q[m, k] * (2 r[n, k] - (2^b - 1)) exactly, int32 (M, N), from bit planes.

    a_planes (a, M, W) activation planes and b_planes (b, N, W) weight planes from pack_planes,
    W = ceil(k / 64); a = a_planes.shape[0] and b = b_planes.shape[0] in 1..8. ``check_tails=False``:
    the caller vouches that the tail bits are 0 (planes from pack_planes; saves a GPU sync).
    ``offset``: gemm_offset(b_planes, k, a), when precomputed (computed when None).
    """
    table = _table(table)
    xp, on = table.xp, dict(xp=table.xp, backend=table.name)
    a = _check_planes("a_planes", a_planes, 3, "(a, M, W) activation planes", table)
    b = _check_planes("b_planes", b_planes, 3, "(b, N, W) weight planes", table)
    try:
        k = _ref.check_gemm(a_planes[0], b_planes[0], k, out, np.int32, False, check_tails=False, **on)
    except ValueError as exc:
        raise _renamed(exc, a_words="a_planes[i]", b_words="b_planes[j]") from None
    _check_fits(k, a, b)
    m, n = out.shape
    if offset is not None:
        _check_offset(offset, [(n,)], "(N,) from gemm_offset", table)
    _ref.check_disjoint(out, xp, a_planes=a_planes, b_planes=b_planes, offset=offset)
    if check_tails:
        _ref.check_tail("a_planes", a_planes, k)
        _ref.check_tail("b_planes", b_planes, k)
    if out.size == 0:
        return out
    if k == 0:
        out[...] = 0
        return out
    a_planes = xp.ascontiguousarray(a_planes)
    b_planes = xp.ascontiguousarray(b_planes)
    b_all = b_planes.reshape(b * n, b_planes.shape[2])
    if offset is None:
        offset = _weight_term(table.popcount_rows(b_planes), k, a, b, xp).astype(np.int32)
    rows = _chunk(m, 4 * b * n)
    scratch = xp.empty((rows, b * n), dtype=np.int32)
    for m0 in range(0, m, rows):
        m1 = min(m, m0 + rows)
        s = scratch[:m1 - m0]
        for i in range(a):
            table.xnor_gemm(a_planes[i, m0:m1], b_all, k, s, check_tails=False)
            _accumulate(out[m0:m1], s, i, b, offset, xp)
    return out


# ---------------------------------------------------------------- convolution

def _conv_offset(w_all, a: int, b: int, g: dict, table):
    """conv_offset on validated arguments; w_all (b * O, kh, kw, words) contiguous."""
    xp = table.xp
    o = w_all.shape[0] // b
    offset = _weight_term(table.popcount_rows(w_all.reshape(b, o, -1)), g["k"], a, b, xp)
    if g["pad_value"] == -1:  # computed with level 0 in the padding; take the -(2^a - 1) levels off
        corr = table.conv_pad_correction(w_all, g["c"], (g["h"], g["w"]), (g["sh"], g["sw"]), (g["ph"], g["pw"]))
        corr = corr.reshape(g["oh"], g["ow"], b, o)
        for j in range(b):
            offset = offset - (corr[..., j, :].astype(np.int64) << j) * (2**a - 1)
    return offset.astype(np.int32)


def conv_offset(w_planes, a: int, channels: int, in_hw, stride, padding, pad_value, *, table=None):
    """The weight-only term of bitserial_conv2d, int32: (O,) for pad_value 0 / +1, (OH, OW, O) for -1.

    (2^a - 1) * sum_j 2^j popc(w_planes[j, o]) - floor(K (2^a - 1) (2^b - 1) / 2), K = kh * kw * C,
    and for pad_value -1 minus (2^a - 1) * sum_j 2^j conv_pad_correction(w_planes[j]) (the taps in
    the padding hold -(2^a - 1), not level 0). Depends on the weights and the geometry only:
    precompute it per layer.
    """
    table = _table(table)
    b = _check_planes("w_planes", w_planes, 5, "(b, O, kh, kw, ceil(C/64)) weight planes", table)
    a, c = _check_bits("a", a), _ref.check_int("channels", channels, 1)
    o, kh, kw, wc = w_planes.shape[1:]
    if wc != _ref.n_words(c):
        raise ValueError(f"w_planes must have ceil(channels / 64) = {_ref.n_words(c)} words per tap for "
                         f"channels={c}, got shape {w_planes.shape}")
    (h, w), (sh, sw), (ph, pw) = (_ref.check_pair("in_hw", in_hw, 1), _ref.check_pair("stride", stride, 1),
                                  _ref.check_pair("padding", padding, 0))
    if isinstance(pad_value, (bool, np.bool_)) or pad_value not in (0, 1, -1):
        raise ValueError(f"pad_value must be 0, 1 or -1, got {pad_value!r}")
    oh, ow = _ref.conv_output_hw((h, w), (kh, kw), (sh, sw), (ph, pw))
    if oh < 1 or ow < 1:
        raise ValueError(f"in_hw: input {h}x{w} with padding {(ph, pw)} is smaller than the kernel {kh}x{kw}")
    g = dict(c=c, h=h, w=w, sh=sh, sw=sw, ph=ph, pw=pw, oh=oh, ow=ow, k=kh * kw * c, pad_value=int(pad_value))
    _check_fits(g["k"], a, b)
    w_all = table.xp.ascontiguousarray(w_planes).reshape(b * o, kh, kw, wc)
    return _conv_offset(w_all, a, b, g, table)


def bitserial_conv2d(x_planes, w_planes, channels: int, stride, padding, pad_value, out, check_tails: bool = True,
                     *, offset=None, table=None):
    """The exact integer convolution of a-bit levels with b-bit weights, int32 (N, OH, OW, O), from planes.

    x_planes (a, N, H, W, ceil(C/64)) channel-packed activation planes, w_planes (b, O, kh, kw,
    ceil(C/64)) weight planes (pack_planes along C). out[n, y, x, o] = sum over taps and channels
    of P * (2r - (2^b - 1)), P the level image padded with: level 0 for pad_value 0; level 2^a - 1
    (all bits 1, the float simulation's 1.0) for pad_value +1; the value -(2^a - 1) (the float
    simulation's -1.0; no level, so computed with level-0 padding plus the exact correction
    -(2^a - 1) * sum_j 2^j conv_pad_correction(w_planes[j])) for pad_value -1.
    ``offset``: conv_offset(...) of these weights and geometry, when precomputed (computed when None).
    """
    table = _table(table)
    xp, on = table.xp, dict(xp=table.xp, backend=table.name)
    a = _check_planes("x_planes", x_planes, 5, "(a, N, H, W, ceil(C/64)) activation planes", table)
    b = _check_planes("w_planes", w_planes, 5, "(b, O, kh, kw, ceil(C/64)) weight planes", table)
    try:
        g = _ref.check_conv(x_planes[0], w_planes[0], channels, stride, padding, pad_value, out, np.int32, False,
                            check_tails=False, **on)
    except ValueError as exc:
        raise _renamed(exc, x_words="x_planes[i]", w_words="w_planes[j]") from None
    _check_fits(g["k"], a, b)
    o, kh, kw, wc = w_planes.shape[1:]
    if offset is not None:
        shape = (g["oh"], g["ow"], o) if g["pad_value"] == -1 else (o,)
        _check_offset(offset, [shape], f"from conv_offset for pad_value {g['pad_value']}", table)
    _ref.check_disjoint(out, xp, x_planes=x_planes, w_planes=w_planes, offset=offset)
    if check_tails:
        _ref.check_tail("x_planes", x_planes, g["c"])
        _ref.check_tail("w_planes", w_planes, g["c"])
    if out.size == 0:
        return out
    x_planes = xp.ascontiguousarray(x_planes)
    w_all = xp.ascontiguousarray(w_planes).reshape(b * o, kh, kw, wc)
    if offset is None:
        offset = _conv_offset(w_all, a, b, g, table)
    pad_bits = 1 if g["pad_value"] == 1 else -1  # +1: every plane's bit 1 (level 2^a - 1); else level 0
    images = _chunk(g["batch"], 4 * g["oh"] * g["ow"] * b * o)
    scratch = xp.empty((images, g["oh"], g["ow"], b * o), dtype=np.int32)
    for n0 in range(0, g["batch"], images):
        n1 = min(g["batch"], n0 + images)
        s = scratch[:n1 - n0]
        for i in range(a):
            table.binary_conv2d(x_planes[i, n0:n1], w_all, g["c"], (g["sh"], g["sw"]), (g["ph"], g["pw"]),
                                pad_bits, s, check_tails=False)
            _accumulate(out[n0:n1], s, i, b, offset, xp)
    return out


# ---------------------------------------------------------------- multi-level epilogue (reference)

def levels_from_thresholds(dot, thresholds, rising, *, table=None):
    """Next-layer levels from integer dots and per-channel thresholds: uint8 (..., O) (reference).

    dot int32 (..., O) (channels last), thresholds int32 (O, L) with L <= 255, rising bool (O,).
    level[..., o] = the number of l with dot >= thresholds[o, l] where rising[o] (a positive scale),
    else the number of l with dot <= thresholds[o, l] (a negative scale); the thresholds of a channel
    may come in any order. Tie rule: a dot equal to a threshold passes it (counts) in both
    directions, so a converter must put each threshold at the first dot (from the passing side)
    whose float-simulated level reaches that step. A constant channel (scale 0): rising False with
    c thresholds at INT32_MAX (always pass) and the rest at INT32_MIN (never: bit-serial dots are
    above -2^31). pack_planes(result, bits, axis=-1) gives the next layer's planes, channels packed.
    """
    table = _table(table)
    xp, on = table.xp, dict(xp=table.xp, backend=table.name)
    _ref.check_array("dot", dot, np.int32, None, "(..., O) int32 dot products", **on)
    _ref.check_array("thresholds", thresholds, np.int32, 2, "(O, L) int32", **on)
    _ref.check_array("rising", rising, np.bool_, 1, "(O,) bool", **on)
    o, n_levels = thresholds.shape
    if dot.ndim < 1 or dot.shape[-1] != o:
        raise ValueError(f"dot must have O = {o} channels on its last axis (thresholds is {thresholds.shape}), "
                         f"got shape {dot.shape}")
    _ref.check_shape("rising", rising, (o,), "(O,) = thresholds rows")
    if n_levels > 255:
        raise ValueError(f"thresholds must have at most 255 columns (8-bit levels), got {n_levels}")
    levels = xp.zeros(dot.shape, dtype=np.uint8)
    for step in range(n_levels):  # one threshold at a time: temporaries of the dot's size only
        t = thresholds[:, step]
        levels += xp.where(rising, dot >= t, dot <= t)
    return levels
