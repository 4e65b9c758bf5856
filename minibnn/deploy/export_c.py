"""Export a packed model as a self-contained C program: ``export_c(packed, "out")``.

The output folder gets ``<name>.c`` and ``<name>.h`` (the model: its arrays as ``static const``
data, 1 bit per binary weight, and ``int <name>_predict(const float *input, float *logits)``), the
kernel sources the model needs, copied from minibnn's ``native/`` folder (the same files the Python
package compiles), and a ``main.c`` that reads an image and prints the class. It builds with
``cc -O2 -std=c11 DIR/*.c -o app -lm``: no Python, no OpenMP, no allocation at run time (one static
workspace, sized here; the ``minibnn_config.h`` written beside the kernels makes them take their
scratch memory from it).

How: the packed model's tree is walked once with symbolic tensors, in the order its forward runs
(Sequential, ResNet and BasicBlock are known containers), each packed op emitting one or two C
calls; then every intermediate tensor gets an offset in the workspace (a tensor's memory is reused
once its last reader has run). A layer or container the exporter cannot express is an error naming
it, never a different program.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minibnn.backend import numpy_ref as ref
from minibnn.deploy.model import PackedModel
from minibnn.deploy.ops import (BinaryConv2d, BinaryDense, BitSerialConv2d, BitSerialDense, FloatLayer, Folded, PackedOp,
                                QuantizedLayer)
from minibnn.functional.conv import conv_output_size
from minibnn.functional.norm import eval_affine
from minibnn.nn import layers as L
from minibnn.nn.models import BasicBlock, ResNet
from minibnn.nn.module import Module
from minibnn.nn.quantized import QActivation

KERNEL_FILES = ("minibnn_kernels.h", "minibnn_kernels.c", "minibnn_infer.h", "minibnn_infer.c", "minibnn_kbit.h",
                "minibnn_kbit.c")
ALIGN = 64
# minibnn_kernels.c includes this file when it is beside it: the kernels then take their scratch from
# the model's static buffer (mbk_set_scratch) and the program calls no malloc
CONFIG_HEADER = """/* Written by minibnn.deploy.export_c: how the kernels are built in this program. */
#ifndef MINIBNN_CONFIG_H
#define MINIBNN_CONFIG_H
#define MBK_STATIC_SCRATCH 1 /* scratch memory from the model's static buffer: no malloc at run time */
#endif
"""


class ExportError(ValueError):
    """The model holds something the C exporter cannot express (the message names the layer)."""


def c_float(v) -> str:
    """``v`` rounded to float32 as an exact C literal (hexadecimal, e.g. 0x1.8p-1f)."""
    return float(np.float32(v)).hex() + "f"


@dataclass
class Activation:
    """A symbolic activation (no data, only where it will live): float (C, H, W) / (K,), or packed bits (H, W, words) / (words,)."""

    storage: int
    shape: tuple[int, ...]  # (C, H, W) whatever the layout, (K,), or the words' shape
    bits: int = 0  # channels packed into words (0: floats)
    layout: str = "chw"  # a float (C, H, W) tensor in memory: "chw", or "hwc" (channels last)
    planes: int = 0  # k-bit activations as this many bit planes of ``bits`` channels (0: none)


@dataclass
class Program:
    """What the walk produces: C statements, constant arrays, tensor storage sizes and lifetimes."""

    name: str
    statements: list[str] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)
    storage_bytes: list[int] = field(default_factory=list)
    last_use: dict[int, int] = field(default_factory=dict)
    defined_at: dict[int, int] = field(default_factory=dict)
    init: list[str] = field(default_factory=list)  # run once (zero-padding corrections)
    bss: list[str] = field(default_factory=list)
    scratch: int = 0
    const_bytes: int = 0
    count: int = 0

    def new(self, shape: tuple[int, ...], bits: int = 0, layout: str = "chw") -> Activation:
        """A fresh tensor of ``shape`` (float32, or uint64 words when ``bits``)."""
        size = int(np.prod(shape)) * (8 if bits else 4)
        self.storage_bytes.append(size)
        sid = len(self.storage_bytes) - 1
        self.defined_at[sid] = len(self.statements)
        return Activation(sid, shape, bits, layout)

    def use(self, *tensors: Activation) -> None:
        for t in tensors:
            if t.storage >= 0:
                self.last_use[t.storage] = len(self.statements)

    def ptr(self, t: Activation) -> str:
        if t.storage < 0:
            return "input"
        kind = "uint64_t" if t.bits else "float"
        return f"(({kind} *)(workspace + OFF_{t.storage}))"

    def const(self, stem: str, a: np.ndarray) -> str:
        """A static const array holding ``a`` exactly (floats as hex literals); returns its C name."""
        self.count += 1
        cname = f"{stem}_{self.count}"
        a = np.ascontiguousarray(a).reshape(-1)
        if a.dtype == np.float32:
            if not np.isfinite(a).all():
                raise ExportError(f"{cname}: NaN or infinite values cannot be exported")
            ctype, items = "float", [float(v).hex() + "f" for v in a]
        elif a.dtype == np.uint64:
            ctype, items = "uint64_t", [f"0x{int(v):016x}u" for v in a]
        elif a.dtype == np.int32:
            ctype, items = "int32_t", [str(int(v)) for v in a]
        elif a.dtype == np.bool_ or a.dtype == np.uint8:
            ctype, items = "uint8_t", [str(int(v)) for v in a]
        else:  # pragma: no cover - every packed array is one of the above
            raise ExportError(f"{cname}: arrays of dtype {a.dtype} cannot be exported")
        lines = [", ".join(items[i:i + 8]) for i in range(0, len(items), 8)] or ["0"]
        self.constants.append(f"static const {ctype} {cname}[{max(len(items), 1)}] MBX_ALIGN = {{\n    "
                              + ",\n    ".join(lines) + "\n};")
        self.const_bytes += a.nbytes
        return cname

    def emit(self, line: str) -> None:
        self.statements.append(line)


# ---------------------------------------------------------------- the walk

def _float_in(p: Program, x: Activation, where: str) -> Activation:
    if x.bits:
        raise ExportError(f"{where}: receives packed bits, which only a binary layer takes")
    return x


def _as(p: Program, x: Activation, layout: str) -> Activation:
    """``x`` in memory layout ``layout`` (a transposed copy when it is in the other one)."""
    if x.bits or len(x.shape) != 3 or x.layout == layout:
        return x
    c, h, w = x.shape
    y = p.new(x.shape, layout=layout)
    p.use(x)
    fn = "mbi_hwc_to_chw" if layout == "chw" else "mbi_chw_to_hwc"
    p.emit(f"{fn}({p.ptr(x)}, {h * w if layout == 'chw' else c}, {c if layout == 'chw' else h * w}, {p.ptr(y)});")
    return y


def _elementwise(p: Program, x: Activation) -> Activation:
    """A new float tensor like ``x`` (shape and layout) for an elementwise op."""
    return p.new(x.shape, layout=x.layout)


def _chw(x: Activation, where: str) -> tuple[int, int, int]:
    if len(x.shape) != 3:
        raise ExportError(f"{where}: expects (C, H, W) input, gets shape {x.shape}")
    return x.shape  # type: ignore[return-value]


def _walk(p: Program, m: Module, x: Activation, where: str) -> Activation:
    """Emit the C of ``m``'s forward on ``x``; return its output."""
    if isinstance(m, PackedOp):
        return _leaf(p, m, x, where or "(root)")
    if type(m) is L.Sequential:
        for name, child in m._modules.items():
            x = _walk(p, child, x, f"{where}.{name}" if where else name)
        return x
    if type(m) is ResNet:
        for name in ("stem", "body", "head"):
            x = _walk(p, m._modules[name], x, f"{where}.{name}" if where else name)
        return x
    if type(m) is BasicBlock:  # y = bn1(conv1(x)) + shortcut(x); bn2(conv2(y)) + y
        sub = {n: f"{where}.{n}" for n in m._modules}
        y = _add(p, _walk(p, m.bn1, _walk(p, m.conv1, x, sub["conv1"]), sub["bn1"]),
                 _walk(p, m.shortcut, x, sub["shortcut"]), where)
        return _add(p, _walk(p, m.bn2, _walk(p, m.conv2, y, sub["conv2"]), sub["bn2"]), y, where)
    raise ExportError(f"{where or '(root)'}: the exporter does not know the container {type(m).__name__} "
                      "(known: Sequential, ResNet, BasicBlock)")


def _add(p: Program, a: Activation, b: Activation, where: str) -> Activation:
    a, b = _float_in(p, a, where), _float_in(p, b, where)
    if a.shape != b.shape:
        raise ExportError(f"{where}: adds shapes {a.shape} and {b.shape}")
    b = _as(p, b, a.layout)
    y = _elementwise(p, a)
    p.use(a, b)
    p.emit(f"mbi_add({p.ptr(a)}, {p.ptr(b)}, {int(np.prod(a.shape))}, {p.ptr(y)});")
    return y


def _leaf(p: Program, op: PackedOp, x: Activation, where: str) -> Activation:
    if isinstance(op, Folded):
        return x
    if isinstance(op, BinaryConv2d):
        return _binary_conv(p, op, x, where)
    if isinstance(op, BinaryDense):
        return _binary_dense(p, op, x, where)
    if isinstance(op, (BitSerialDense, BitSerialConv2d)):
        from minibnn.deploy.export_bitserial import emit_bitserial  # k-bit layers on bit planes

        return emit_bitserial(p, op, x, where)
    if isinstance(op, QuantizedLayer):
        return _quantized(p, op, _float_in(p, x, where), where)
    if isinstance(op, FloatLayer):
        return _float_layer(p, op.module, _float_in(p, x, where), where)
    raise ExportError(f"layer {where} ({op.kind}): the C exporter cannot express this layer kind yet")


def _pack(p: Program, x: Activation, conv: bool) -> Activation:
    """Float input of a binary layer as packed words (channels last)."""
    if conv:
        c, h, w = x.shape
        words = p.new((h, w, ref.n_words(c)), bits=c)
        p.use(x)
        if x.layout == "hwc":  # channels last: each pixel is a row of c values
            p.emit(f"MBX_CHECK(mbk_pack_rows_f32({p.ptr(x)}, {h * w}, {c}, {p.ptr(words)}));")
        else:
            p.emit(f"MBX_CHECK(mbk_pack_channels_f32({p.ptr(x)}, 1, {c}, {h * w}, {p.ptr(words)}));")
    else:
        (k,) = x.shape
        words = p.new((ref.n_words(k),), bits=k)
        p.use(x)
        p.emit(f"MBX_CHECK(mbk_pack_rows_f32({p.ptr(x)}, 1, {k}, {p.ptr(words)}));")
    return words


def _epilogue_args(p: Program, op, o: int) -> tuple[str, str]:
    e = op.epilogue
    scale = e.scale if e.scale is not None else np.ones(o, np.float32)
    bias = e.bias if e.bias is not None else np.zeros(o, np.float32)
    return p.const("scale", scale), p.const("bias", bias)


def _post_affine(p: Program, op, y: Activation) -> Activation:
    """A binary layer's second float step, y * post_scale + post_shift (a folded batch norm), if it has one."""
    e = op.epilogue
    if e.post_scale is None:
        return y
    return _affine(p, y, p.const("post_scale", e.post_scale), p.const("post_shift", e.post_shift))


def _binary_conv(p: Program, op: BinaryConv2d, x: Activation, where: str) -> Activation:
    c, o = op.in_channels, op.out_channels
    if x.bits:
        if x.bits != c or len(x.shape) != 3:
            raise ExportError(f"layer {where}: expects {c} packed channels, gets {x.bits}")
        words, (h, w, _) = x, x.shape
    else:
        cin, h, w = _chw(x, where)
        if cin != c:
            raise ExportError(f"layer {where}: expects {c} input channels, gets {cin}")
        words = _pack(p, x, conv=True)
    kh, kw = op.weight_bits.shape[1:3]
    (sh, sw), (ph, pw) = op.stride, op.padding
    oh, ow = ref.conv_output_hw((h, w), (kh, kw), op.stride, op.padding)
    if oh < 1 or ow < 1:
        raise ExportError(f"layer {where}: input {h}x{w} is smaller than its kernel {kh}x{kw}")
    weights = p.const("w", op.weight_bits)
    corr = "NULL"
    if op.pad_value == 0:
        corr = f"corr_{len(p.bss)}"
        p.bss.append(f"static int32_t {corr}[{oh * ow * o}];")
        p.init.append(f"MBX_CHECK(mbk_conv_pad_correction({weights}, {o}, {kh}, {kw}, {c}, {h}, {w}, {sh}, {sw}, "
                      f"{ph}, {pw}, {corr}));")
        p.scratch = max(p.scratch, _scratch(0, 0, 0, 0, 0, o, kh * kw))
    wc = ref.n_words(c)
    p.scratch = max(p.scratch, _scratch(oh * ow, o, kh * kw * wc, kw, wc, 0, 0))
    geometry = f"1, {h}, {w}, {c}, {o}, {kh}, {kw}, {sh}, {sw}, {ph}, {pw}, {op.pad_value}, {corr}"
    p.use(words)
    if op.emits_bits:
        thr, flip = p.const("thr", op.epilogue.threshold), p.const("flip", op.epilogue.flip)
        y = p.new((oh, ow, ref.n_words(o)), bits=o)
        p.emit(f"MBX_CHECK(mbk_binary_conv2d({p.ptr(words)}, {weights}, {geometry}, NULL, NULL, {thr}, {flip}, "
               f"NULL, NULL, {p.ptr(y)}));")
        return y
    scale, bias = _epilogue_args(p, op, o)
    y = p.new((o, oh, ow), layout="hwc")  # the kernel writes channels last; it stays so until a layer needs CHW
    p.emit(f"MBX_CHECK(mbk_binary_conv2d({p.ptr(words)}, {weights}, {geometry}, {scale}, {bias}, NULL, NULL, "
           f"NULL, {p.ptr(y)}, NULL));")
    return _post_affine(p, op, y)


def _binary_dense(p: Program, op: BinaryDense, x: Activation, where: str) -> Activation:
    k, o = op.in_channels, op.out_channels
    if x.bits:
        if x.bits != k or len(x.shape) != 1:
            raise ExportError(f"layer {where}: expects {k} packed features, gets {x.bits} in {x.shape}")
        words = x
    else:
        if x.shape != (k,):
            raise ExportError(f"layer {where}: expects {k} input features, gets shape {x.shape}")
        words = _pack(p, x, conv=False)
    weights, nw = p.const("w", op.weight_bits), ref.n_words(k)
    p.scratch = max(p.scratch, _scratch(1, o, nw, 0, 0, 0, 0))
    p.use(words)
    if op.emits_bits:
        thr, flip = p.const("thr", op.epilogue.threshold), p.const("flip", op.epilogue.flip)
        y = p.new((ref.n_words(o),), bits=o)
        p.emit(f"MBX_CHECK(mbk_xnor_gemm_threshold({p.ptr(words)}, {weights}, 1, {o}, {nw}, {k}, {thr}, {flip}, "
               f"{p.ptr(y)}));")
        return y
    scale, bias = _epilogue_args(p, op, o)
    y = p.new((o,))
    p.emit(f"MBX_CHECK(mbk_xnor_gemm_affine({p.ptr(words)}, {weights}, 1, {o}, {nw}, {k}, {scale}, {bias}, "
           f"{p.ptr(y)}));")
    return _post_affine(p, op, y)


def _quantized(p: Program, op: QuantizedLayer, x: Activation, where: str) -> Activation:
    xq = _quantize(p, _as(p, x, "chw"), op.act_bit)
    weight = op.weight
    if op.layer == "dense":
        if x.shape != (weight.shape[1],):
            raise ExportError(f"layer {where}: expects {weight.shape[1]} input features, gets shape {x.shape}")
        y = p.new((weight.shape[0],))
        p.use(xq)
        p.emit(f"mbi_dense({p.ptr(xq)}, {weight.shape[1]}, {p.const('w', weight)}, {weight.shape[0]}, NULL, "
               f"{p.ptr(y)});")
    else:
        y = _conv(p, xq, weight, None, op.stride, op.padding, (1, 1), float(op.pad_value), where)
    if op.alpha is None and op.bias is None:
        return y
    shift = op.bias if op.bias is not None else np.zeros(y.shape[0], np.float32)
    return _affine(p, y, p.const("alpha", op.alpha) if op.alpha is not None else "NULL", p.const("bias", shift))


def _affine(p: Program, x: Activation, scale: str, shift: str) -> Activation:
    """y = x * scale[c] + shift[c] per channel (scale "NULL": 1), in x's layout."""
    y = _elementwise(p, x)
    p.use(x)
    c, hw = x.shape[0], int(np.prod(x.shape[1:]))
    if x.layout == "hwc" and len(x.shape) == 3:
        p.emit(f"mbi_affine_hwc({p.ptr(x)}, {hw}, {c}, {scale}, {shift}, {p.ptr(y)});")
    else:
        p.emit(f"mbi_affine({p.ptr(x)}, {c}, {hw}, {scale}, {shift}, {p.ptr(y)});")
    return y


def _quantize(p: Program, x: Activation, bits: int) -> Activation:
    if bits == 32:
        return x
    y = _elementwise(p, x)
    p.use(x)
    p.emit(f"mbi_quantize({p.ptr(x)}, {int(np.prod(x.shape))}, {bits}, {p.ptr(y)});")
    return y


def _conv(p: Program, x: Activation, weight, bias, stride, padding, dilation, pad: float, where: str) -> Activation:
    c, h, w = _chw(x, where)
    o, ci, kh, kw = weight.shape
    if ci != c:
        raise ExportError(f"layer {where}: expects {ci} input channels, gets {c}")
    (sh, sw), (ph, pw), (dh, dw) = ref.check_pair("stride", stride, 1), ref.check_pair("padding", padding, 0), \
        ref.check_pair("dilation", dilation, 1)
    oh, ow = conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw)
    if oh < 1 or ow < 1:
        raise ExportError(f"layer {where}: input {h}x{w} is smaller than its kernel {kh}x{kw}")
    y = p.new((o, oh, ow), layout="hwc")  # written channels last, one pixel's channels at a time
    p.use(x)
    b = p.const("b", bias) if bias is not None else "NULL"
    hwio = p.const("w", np.ascontiguousarray(np.asarray(weight, np.float32).transpose(2, 3, 1, 0)))
    p.emit(f"mbi_conv2d({p.ptr(x)}, {int(x.layout == 'hwc')}, {c}, {h}, {w}, {hwio}, {o}, {kh}, {kw}, {sh}, {sw}, "
           f"{ph}, {pw}, {dh}, {dw}, {c_float(pad)}, {b}, {p.ptr(y)});")
    return y


def _pool_args(m, x: Activation, where: str) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], int, int]:
    c, h, w = _chw(x, where)
    k = ref.check_pair("kernel_size", m.kernel_size, 1)
    s = ref.check_pair("stride", m.stride if m.stride is not None else m.kernel_size, 1)
    pad = ref.check_pair("padding", m.padding, 0)
    oh, ow = conv_output_size(h, k[0], s[0], pad[0]), conv_output_size(w, k[1], s[1], pad[1])
    return k, s, pad, oh, ow


def _float_layer(p: Program, m: Module, x: Activation, where: str) -> Activation:
    kind = type(m)
    n = int(np.prod(x.shape))
    if kind in (L.Identity, L.Dropout):  # dropout is off in inference
        return x
    if kind is L.Flatten:  # NumPy's order: channels first
        return Activation(_as(p, x, "chw").storage, (n,))
    if kind is L.Conv2d:
        if m.groups != 1:
            raise ExportError(f"layer {where}: grouped convolutions (groups={m.groups}) are not exported yet")
        bias = m.bias.numpy() if m.bias is not None else None
        return _conv(p, x, m.weight.numpy(), bias, m.stride, m.padding, m.dilation, 0.0, where)
    if kind is L.Dense:
        if x.shape != (m.in_features,):
            raise ExportError(f"layer {where}: expects {m.in_features} input features, gets shape {x.shape}")
        y = p.new((m.out_features,))
        bias = p.const("b", m.bias.numpy()) if m.bias is not None else "NULL"
        p.use(x)
        p.emit(f"mbi_dense({p.ptr(x)}, {m.in_features}, {p.const('w', m.weight.numpy())}, {m.out_features}, "
               f"{bias}, {p.ptr(y)});")
        return y
    if kind in (L.BatchNorm1d, L.BatchNorm2d):
        if x.shape[0] != m.num_features:
            raise ExportError(f"layer {where}: expects {m.num_features} channels, gets shape {x.shape}")
        scale, shift = eval_affine(m.running_mean, m.running_var, m.weight, m.bias, m.eps, np.float32)
        return _affine(p, x, p.const("bn_scale", np.asarray(scale)), p.const("bn_shift", np.asarray(shift)))
    if kind in (L.MaxPool2d, L.AvgPool2d):  # in either layout
        k, s, pad, oh, ow = _pool_args(m, x, where)
        y = p.new((x.shape[0], oh, ow), layout=x.layout)
        p.use(x)
        fn = ("mbi_max_pool2d" if kind is L.MaxPool2d else "mbi_avg_pool2d") + ("_hwc" if x.layout == "hwc" else "")
        p.emit(f"{fn}({p.ptr(x)}, {x.shape[0]}, {x.shape[1]}, {x.shape[2]}, {k[0]}, {k[1]}, {s[0]}, {s[1]}, "
               f"{pad[0]}, {pad[1]}, {p.ptr(y)});")
        return y
    if kind is L.GlobalAvgPool2d:
        c, h, w = _chw(x, where)
        y = p.new((c,))
        p.use(x)
        if x.layout == "hwc":
            p.emit(f"mbi_global_avg_pool2d_hwc({p.ptr(x)}, {h * w}, {c}, {p.ptr(y)});")
        else:
            p.emit(f"mbi_global_avg_pool2d({p.ptr(x)}, {c}, {h * w}, {p.ptr(y)});")
        return y
    if kind in (L.ReLU, L.Tanh, L.HardTanh):
        y = _elementwise(p, x)
        p.use(x)
        if kind is L.HardTanh:
            p.emit(f"mbi_hardtanh({p.ptr(x)}, {n}, {c_float(m.min_val)}, {c_float(m.max_val)}, {p.ptr(y)});")
        else:
            p.emit(f"mbi_{kind.__name__.lower()}({p.ptr(x)}, {n}, {p.ptr(y)});")
        return y
    if kind is QActivation:
        return _quantize(p, x, m.act_bit)
    raise ExportError(f"layer {where} ({kind.__name__}): the C exporter cannot express this layer yet")


def _scratch(*args: int) -> int:
    """Bytes of kernel scratch one call needs, as the C library computes it (mbk_scratch_bytes)."""
    try:
        from minibnn._native import lib
    except ImportError:
        raise ExportError("export_c needs the native C library (minibnn._native) to size the kernels' scratch; "
                          "reinstall minibnn with a C compiler (`pip install -e .`)") from None
    return int(lib.mbk_scratch_bytes(*args))


# ---------------------------------------------------------------- planning and writing

def _plan(p: Program) -> tuple[dict[int, int], int]:
    """Workspace offsets: each tensor lives from its definition to its last reader, memory is reused."""
    offsets: dict[int, int] = {}
    live: list[tuple[int, int, int]] = []  # (offset, end, last use)
    top = 0
    for sid in sorted(p.defined_at, key=lambda s: (p.defined_at[s], s)):
        start, size = p.defined_at[sid], -(-p.storage_bytes[sid] // ALIGN) * ALIGN
        live = [blk for blk in live if blk[2] >= start]  # still read at or after this statement
        live.sort()
        offset = 0
        for lo, hi, _ in live:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        offsets[sid] = offset
        live.append((offset, offset + size, p.last_use.get(sid, start)))
        top = max(top, offset + size)
    return offsets, top


@dataclass
class ExportReport:
    """What export_c wrote and the sizes it computed."""

    files: list[Path]
    workspace_bytes: int
    scratch_bytes: int
    correction_bytes: int
    constant_bytes: int

    @property
    def static_bytes(self) -> int:
        """Static memory of the model beyond its constants: activations, kernel scratch, corrections."""
        return self.workspace_bytes + self.scratch_bytes + self.correction_bytes

    def __str__(self) -> str:
        return (f"wrote {', '.join(f.name for f in self.files)} in {self.files[0].parent}: "
                f"{self.constant_bytes:,} bytes of constants, static workspace {self.static_bytes:,} bytes "
                f"(activations {self.workspace_bytes:,}, kernel scratch {self.scratch_bytes:,}, "
                f"zero-padding corrections {self.correction_bytes:,})")


def export_c(packed: PackedModel, out_dir: str | os.PathLike, name: str | None = None,
             input_shape: tuple[int, ...] | None = None, main: bool = True,
             normalize: tuple[float, float] = (0.0, 1.0)) -> ExportReport:
    """Write ``out_dir/<name>.c`` + ``.h``, the kernel sources and (``main``) a ``main.c`` driver.

    ``out_dir`` must not exist or be empty; nothing is left half-written on an error. The model must
    know its input shape (``convert(..., input_shape=...)``) or be given ``input_shape`` (C, H, W).
    ``normalize`` = (mean, std): main.c turns a PGM pixel v into (v / maxval - mean) / std, as the
    model was trained (e.g. ``(data.MNIST_MEAN, data.MNIST_STD)`` for ``minibnn train`` on MNIST);
    raw float32 input is passed on as it is.
    """
    mean, std = (float(v) for v in normalize)
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise ExportError(f"normalize must be (mean, std) with std > 0, got {normalize!r}")
    name = _c_name(name or packed.name)
    shape = tuple(input_shape or packed.input_shape or ())
    if not shape:
        raise ExportError(f"{packed.name}: the input shape is unknown; convert with input_shape=... or pass it")
    p = Program(name)
    x = Activation(-1, shape)
    y = _walk(p, packed.root, x, "")
    if y.bits or len(y.shape) != 1:
        raise ExportError(f"{packed.name}: the model must end in a vector of float logits, it ends in "
                          f"{'packed bits' if y.bits else 'shape ' + str(y.shape)}")
    if y.storage < 0:
        raise ExportError(f"{packed.name}: the model returns its input unchanged")
    p.use(y)
    offsets, workspace = _plan(p)
    header, source = _header(p, shape, y.shape[0], workspace), _source(p, offsets, workspace, y)
    return _write(Path(out_dir), p, header, source, _main(name, shape, y.shape[0], mean, std) if main else None,
                  workspace)


def _c_name(name: str) -> str:
    c = re.sub(r"\W", "_", str(name)).strip("_").lower() or "model"
    return "m_" + c if c[0].isdigit() else c


def _header(p: Program, shape: tuple[int, ...], classes: int, workspace: int) -> str:
    up = p.name.upper()
    return f"""/* {p.name}: a binary neural network exported by minibnn (minibnn.deploy.export_c). */
#ifndef {up}_H
#define {up}_H
#ifdef __cplusplus
extern "C" {{
#endif

#define {up}_INPUT_SHAPE {{{", ".join(map(str, shape))}}}
#define {up}_INPUT_SIZE {int(np.prod(shape))}
#define {up}_NUM_CLASSES {classes}
#define {up}_WORKSPACE_BYTES {workspace + p.scratch}
#define {up}_OK 0
#define {up}_EKERNEL 1 /* a kernel rejected its arguments (cannot happen for an unmodified export) */

/* Logits for one input of {up}_INPUT_SIZE floats (shape {shape}, normalised as in training) into
 * {up}_NUM_CLASSES floats. Returns {up}_OK, or an error code. Uses one static workspace: not
 * reentrant, call it from one thread at a time. */
int {p.name}_predict(const float *input, float *logits);

#ifdef __cplusplus
}}
#endif
#endif
"""


def _source(p: Program, offsets: dict[int, int], workspace: int, y: Activation) -> str:
    up = p.name.upper()
    defines = "\n".join(f"#define OFF_{sid} {off}" for sid, off in sorted(offsets.items()))
    body = "\n    ".join(p.statements)
    init = "\n        ".join(p.init)
    return f"""/* {p.name}: a binary neural network exported by minibnn. Generated: do not edit. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
#include "{p.name}.h"

#include <stdint.h>
#include <string.h>

#include "minibnn_infer.h"
#include "minibnn_kbit.h"
#include "minibnn_kernels.h"

#if defined(__GNUC__) || defined(__clang__)
#define MBX_ALIGN __attribute__((aligned(64)))
#else
#define MBX_ALIGN
#endif
#define MBX_CHECK(call) do {{ if ((call) != MBK_OK) return {up}_EKERNEL; }} while (0)

{chr(10).join(p.constants)}

{chr(10).join(p.bss)}
static unsigned char workspace[{max(workspace, 1)}] MBX_ALIGN;
static unsigned char scratch[{max(p.scratch, 1)}] MBX_ALIGN;
{defines}

int {p.name}_predict(const float *input, float *logits) {{
    static int ready = 0;
    mbk_set_scratch(scratch, (int64_t)sizeof scratch);
    if (!ready) {{ /* the zero-padding corrections depend on the weights only: computed once */
        {init}
        ready = 1;
    }}
    {body}
    memcpy(logits, {p.ptr(y)}, {y.shape[0]} * sizeof(float));
    return {up}_OK;
}}
"""


def _write(out: Path, p: Program, header: str, source: str, main: str | None, workspace: int) -> ExportReport:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: exists and is not an empty folder; choose a new one (nothing was written)")
    native = _native_dir()
    files = {f"{p.name}.h": header, f"{p.name}.c": source, "minibnn_config.h": CONFIG_HEADER}
    if main is not None:
        files["main.c"] = main
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))  # renamed to out when complete
    try:
        for fname, text in files.items():
            (tmp / fname).write_text(text)
        for fname in KERNEL_FILES:
            shutil.copyfile(native / fname, tmp / fname)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    written = [out / f for f in (*files, *KERNEL_FILES)]
    corrections = sum(int(re.search(r"\[(\d+)\]", b).group(1)) * 4 for b in p.bss)
    return ExportReport(written, workspace, p.scratch, corrections, p.const_bytes)


def _native_dir() -> Path:
    """The folder with the kernel sources: native/ in a checkout, minibnn/deploy/c_src in a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "c_src", here.parent.parent / "native"):
        if all((candidate / f).exists() for f in KERNEL_FILES):
            return candidate
    raise ExportError("the kernel sources (native/minibnn_kernels.c and minibnn_infer.c) are not installed "
                      "with this minibnn; reinstall it from the repository")


def _main(name: str, shape, classes: int, mean: float, std: float) -> str:
    up = name.upper()
    return f"""/* A command-line driver for {name}: prints the class and the logits of one input.
 *   app image.pgm    a binary (P5) or text (P2) PGM of the input's height x width, normalised as in
 *                    training: (pixel / maxval - {mean!r}) / {std!r}
 *   app input.f32    {int(np.prod(shape))} raw float32 values (shape {tuple(shape)}), already normalised
 * Generated by minibnn (minibnn.deploy.export_c). */
#include <stdio.h>
#include <string.h>

#include "{name}.h"

#define PIXEL_MEAN {c_float(mean)}
#define PIXEL_STD {c_float(std)}

static float input[{up}_INPUT_SIZE];

static int read_pgm(FILE *f, const char *path) {{
    static const int shape[] = {up}_INPUT_SHAPE;
    const int ndim = (int)(sizeof shape / sizeof shape[0]);
    char magic[3] = {{0}};
    int width, height, maxval;
    if (fscanf(f, "%2s %d %d %d", magic, &width, &height, &maxval) != 4 || (strcmp(magic, "P5") && strcmp(magic, "P2"))
        || maxval < 1 || maxval > 255) {{
        fprintf(stderr, "%s: not a PGM image (P5 or P2, maxval <= 255)\\n", path);
        return 1;
    }}
    if (ndim < 2 || width != shape[ndim - 1] || height != shape[ndim - 2] || {up}_INPUT_SIZE != width * height) {{
        fprintf(stderr, "%s: a %dx%d image, the model takes %d values of one channel\\n", path, width, height,
                {up}_INPUT_SIZE);
        return 1;
    }}
    fgetc(f); /* the one whitespace byte after maxval */
    for (int i = 0; i < width * height; ++i) {{
        int v = magic[1] == '5' ? fgetc(f) : (fscanf(f, "%d", &v) == 1 ? v : EOF);
        if (v == EOF) {{
            fprintf(stderr, "%s: truncated image\\n", path);
            return 1;
        }}
        input[i] = ((float)v / (float)maxval - PIXEL_MEAN) / PIXEL_STD; /* float32, as minibnn.data.normalize */
    }}
    return 0;
}}

int main(int argc, char **argv) {{
    if (argc != 2) {{
        fprintf(stderr, "usage: %s image.pgm | input.f32\\n", argv[0]);
        return 2;
    }}
    FILE *f = fopen(argv[1], "rb");
    if (f == NULL) {{
        perror(argv[1]);
        return 2;
    }}
    const size_t len = strlen(argv[1]);
    int bad;
    if (len > 4 && strcmp(argv[1] + len - 4, ".pgm") == 0) {{
        bad = read_pgm(f, argv[1]);
    }} else {{
        bad = fread(input, sizeof(float), {up}_INPUT_SIZE, f) != {up}_INPUT_SIZE;
        if (bad) fprintf(stderr, "%s: expected %d float32 values\\n", argv[1], {up}_INPUT_SIZE);
    }}
    fclose(f);
    if (bad) return 2;
    float logits[{up}_NUM_CLASSES];
    const int rc = {name}_predict(input, logits);
    if (rc != {up}_OK) {{
        fprintf(stderr, "{name}_predict failed (code %d)\\n", rc);
        return 1;
    }}
    int best = 0;
    for (int i = 1; i < {up}_NUM_CLASSES; ++i)
        if (logits[i] > logits[best]) best = i;
    printf("class %d\\nlogits", best);
    for (int i = 0; i < {up}_NUM_CLASSES; ++i) printf(" %.9g", logits[i]);
    printf("\\n");
    return 0;
}}
"""
