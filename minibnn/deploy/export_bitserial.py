"""C export of the k-bit bit-serial layers (BitSerialDense / BitSerialConv2d) for export_c.

``emit_bitserial(p, op, x, where)`` emits, for one layer:

1. the input's activation planes: received from the bit-serial layer before (a planes tensor), or
   quantized from floats and packed (``mbs_pack_levels_f32``, the packed model's rounding);
2. the terms T_ij: the binary kernels of minibnn_kernels.c with the b weight planes stacked as
   b * O rows (``mbk_xnor_gemm``, or ``mbk_binary_conv2d`` with int32 output and the pad value of
   the level-0 / all-ones padding), all ``a`` planes in one call where the terms fit ``BATCH_BYTES``
   (a dense layer: always), else one call per plane;
3. D = offset + the shifted terms (``mbs_accumulate``), the weight-only offset precomputed here with
   minibnn.backend.bitserial (gemm_offset / conv_offset, NumPy table) and embedded as a constant;
4. the epilogue: float32 output (``mbs_epilogue_f32``, the KbitEpilogue's steps in its order) or the
   next layer's levels as bit planes (``mbs_levels_pack``).

So D is the packed model's integer exactly and a float output is bit for bit the same.

Planes tensors (``Activation.planes`` > 0): ``shape`` is the words' shape of ALL planes, plane-major:
``(planes, H, W, ceil(C/64))`` after a convolution, ``(planes, ceil(K/64))`` after a dense layer;
``bits`` is the channel count C (K). Only a bit-serial layer takes them (the other emitters refuse
them by shape or by ``bits``). A float convolution output is channels last (layout "hwc").
"""
from __future__ import annotations

import numpy as np

from minibnn.backend import bitserial
from minibnn.backend import numpy_ref as ref
from minibnn.deploy.export_c import Activation, ExportError, Program, _scratch, c_float
from minibnn.deploy.ops import BitSerialConv2d

BATCH_BYTES = 1 << 20  # int32 terms of all activation planes of a convolution in one call up to this size


def _iptr(p: Program, t: Activation) -> str:
    """A workspace tensor allocated as floats, used as int32 (same size)."""
    return p.ptr(t).replace("(float *)", "(int32_t *)", 1)


def _planes_in(p: Program, op, x: Activation, conv: bool, where: str) -> tuple[Activation, tuple[int, ...]]:
    """The input's activation planes tensor and the (H, W) (conv) or () (dense) of one plane."""
    a, c = op.act_bit, op.in_channels
    ndim = 4 if conv else 2
    if x.planes:
        if x.planes != a or x.bits != c or len(x.shape) != ndim:
            raise ExportError(f"layer {where} ({op.kind}): expects {a}-bit planes of {c} channels, gets "
                              f"{x.planes}-bit planes of {x.bits} in words {x.shape}")
        return x, tuple(x.shape[1:3]) if conv else ()
    if x.bits:
        raise ExportError(f"layer {where} ({op.kind}): receives packed 1-bit activations; a bit-serial layer "
                          "takes floats or the bit planes of the bit-serial layer before")
    if conv:
        if len(x.shape) != 3:
            raise ExportError(f"layer {where} ({op.kind}): expects (C, H, W) input, gets shape {x.shape}")
        cin, h, w = x.shape
        if cin != c:
            raise ExportError(f"layer {where} ({op.kind}): expects {c} input channels, gets {cin}")
        hw, hwc = h * w, int(x.layout == "hwc")
    else:
        if x.shape != (c,):
            raise ExportError(f"layer {where} ({op.kind}): expects {c} input features, gets shape {x.shape}")
        hw, hwc = 1, 0
    planes = p.new((a, *((h, w) if conv else ()), ref.n_words(c)), bits=c)
    planes.planes = a
    p.use(x)
    p.emit(f"MBX_CHECK(mbs_pack_levels_f32({p.ptr(x)}, {hwc}, {c}, {hw}, {a}, {p.ptr(planes)}));")
    return planes, ((h, w) if conv else ())


def _channel_const(p: Program, op, name: str, v, where: str) -> str:
    """A per-output-channel float32 array of the epilogue as a constant ("NULL" when absent)."""
    if v is None:
        return "NULL"
    v = np.asarray(v, np.float32).reshape(-1)
    if v.size != op.out_channels:
        raise ExportError(f"layer {where} ({op.kind}): {name} has {v.size} values for {op.out_channels} channels")
    if not np.isfinite(v).all():
        raise ExportError(f"layer {where} ({op.kind}): {name} holds NaN or infinite values, which cannot be exported")
    return p.const(name, v)


def emit_bitserial(p: Program, op, x: Activation, where: str) -> Activation:
    """Emit the C of bit-serial ``op`` on ``x`` (floats or planes); return its float output or planes."""
    conv = isinstance(op, BitSerialConv2d)
    a, b, c, o = op.act_bit, op.weight_bit, op.in_channels, op.out_channels
    wc = ref.n_words(c)
    planes, hw = _planes_in(p, op, x, conv, where)
    if conv:
        h, w = hw
        kh, kw = op.weight_planes.shape[2:4]
        (sh, sw), (ph, pw) = op.stride, op.padding
        oh, ow = ref.conv_output_hw((h, w), (kh, kw), op.stride, op.padding)
        if oh < 1 or ow < 1:
            raise ExportError(f"layer {where} ({op.kind}): input {h}x{w} is smaller than its kernel "
                              f"{kh}x{kw} with padding {op.padding}")
    try:
        if conv:
            offset = bitserial.conv_offset(op.weight_planes, a, c, (h, w), op.stride, op.padding, op.pad_value,
                                           table=ref)
            rows = oh * ow
        else:
            offset = bitserial.gemm_offset(op.weight_planes, c, a, table=ref)
            rows = 1
    except ValueError as exc:
        raise ExportError(f"layer {where} ({op.kind}): {exc}") from None
    weights = p.const("wp", op.weight_planes)  # (b, O, ...) is (b * O, ...) rows: the planes stacked
    offset_c = p.const("offset", np.ascontiguousarray(offset, np.int32))
    per_row = int(offset.ndim == 3)

    d = p.new((rows * o,))  # int32 (rows, O): the integer dots
    batched = not conv or a * rows * b * o * 4 <= BATCH_BYTES
    per_call = a if batched else 1
    t = p.new((per_call * rows * b * o,))  # int32 (planes, rows, b * O): the terms T_ij
    plane_words = int(np.prod(planes.shape[1:]))
    for i0 in range(0, a, per_call):
        src = p.ptr(planes) if i0 == 0 else f"({p.ptr(planes)} + {i0 * plane_words})"
        p.use(planes, d, t)
        if conv:
            pad = 1 if op.pad_value == 1 else -1  # +1: every plane's bit 1 (level 2^a - 1); 0, -1: level 0
            p.scratch = max(p.scratch, _scratch(per_call * rows, b * o, kh * kw * wc, kw, wc, 0, 0))
            p.emit(f"MBX_CHECK(mbk_binary_conv2d({src}, {weights}, {per_call}, {h}, {w}, {c}, {b * o}, {kh}, {kw}, "
                   f"{sh}, {sw}, {ph}, {pw}, {pad}, NULL, NULL, NULL, NULL, NULL, {_iptr(p, t)}, NULL, NULL));")
        else:
            p.scratch = max(p.scratch, _scratch(per_call, b * o, wc, 0, 0, 0, 0))
            p.emit(f"MBX_CHECK(mbk_xnor_gemm({src}, {weights}, {per_call}, {b * o}, {wc}, {c}, {_iptr(p, t)}));")
        p.use(d, t)
        p.emit(f"MBX_CHECK(mbs_accumulate({_iptr(p, t)}, {per_call}, {i0}, {rows}, {o}, {b}, {offset_c}, {per_row}, "
               f"{_iptr(p, d)}));")

    e = op.epilogue
    p.use(d)
    if e.thresholds is not None:
        bits, levels = op.planes_out, int(e.thresholds.shape[1])
        y = p.new((bits, oh, ow, ref.n_words(o)) if conv else (bits, ref.n_words(o)), bits=o)
        y.planes = bits
        p.emit(f"MBX_CHECK(mbs_levels_pack({_iptr(p, d)}, {rows}, {o}, {p.const('thr', e.thresholds)}, {levels}, "
               f"{p.const('rising', e.rising)}, {bits}, {p.ptr(y)}));")
        return y
    if (e.post_scale is None) != (e.post_shift is None):
        raise ExportError(f"layer {where} ({op.kind}): post_scale and post_shift must come together")
    arrays = [_channel_const(p, op, name, v, where) for name, v in (("alpha", e.alpha), ("bias", e.bias),
                                                                     ("post_scale", e.post_scale),
                                                                     ("post_shift", e.post_shift))]
    y = p.new((o, oh, ow), layout="hwc") if conv else p.new((o,))
    den = c_float((2**a - 1) * (2**b - 1))
    p.emit(f"MBX_CHECK(mbs_epilogue_f32({_iptr(p, d)}, {rows}, {o}, {den}, {', '.join(arrays)}, {p.ptr(y)}));")
    return y
