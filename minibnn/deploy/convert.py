"""The converter: a trained float-simulated model -> a PackedModel with 1 bit per binary weight.

Every leaf module of the model becomes one packed op (minibnn.deploy.ops):
- a binary QDense / QConv2d (act_bit = weight_bit = 1) becomes BinaryDense / BinaryConv2d, its
  weights packed to uint64 words (sign: bit 1 = +1), alpha and bias kept, and the batch norm that
  follows it folded in: in a Sequential the next layer, in a block the pairs its ``fold_pairs``
  names (modules whose forward applies that batch norm to that layer's output and nothing else);
- when the next layer of the Sequential (after that batch norm, if any) is a binary layer of the
  same kind, which binarizes the output again, the epilogue + sign become an integer threshold
  per channel, found by evaluating the float32 epilogue on every possible dot value, so the packed
  bits equal the float simulation's signs exactly;
- k-bit Q-layers with act_bit 2..8 and weight_bit 1..8 become BitSerialDense / BitSerialConv2d
  (weight levels as weight_bit bit planes, exact bit-serial popcount arithmetic); other k-bit or
  mixed Q-layers keep their quantized float32 weights (``packing`` says which and why); every
  other leaf is kept as it is.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from minibnn import random
from minibnn.backend import bitserial
from minibnn.backend import numpy_ref as ref
from minibnn.backend import to_numpy
from minibnn.deploy.model import PackedModel, replace_leaf, submodule
from minibnn.deploy.ops import (BinaryConv2d, BinaryDense, BitSerialConv2d, BitSerialDense, Epilogue, FloatLayer,
                                Folded, KbitEpilogue, PackedOp, QuantizedLayer)
from minibnn.functional.norm import eval_affine
from minibnn.nn.layers import BatchNorm1d, BatchNorm2d, Sequential
from minibnn.nn.module import Module, from_config
from minibnn.nn.quantized import QActivation, QDense, _alpha, _QLayer


class Fold(NamedTuple):
    """What the converter does after a binary or bit-serial layer: the batch norm it absorbs, whether it
    emits bits, the QActivation(act_bit=1) layers between it and the next binary layer that become
    no-ops (sign of a sign changes nothing) so that the bits pass through them, and for a bit-serial
    layer whose output feeds another one the number of bit planes it emits (0: float output)."""

    bn: str | None
    emits_bits: bool
    skipped: tuple[str, ...] = ()
    planes: int = 0


MAX_FOLDED_PLANES = 4  # a fold to more next-layer bits would compare every dot with up to 255 thresholds


def is_binary(m: Module) -> bool:
    """A Q-layer whose input and weights are both 1 bit."""
    return isinstance(m, _QLayer) and m.is_binary


def is_bitserial(m: Module) -> bool:
    """A k-bit Q-layer the converter packs into bit planes (see _QLayer.is_bitserial)."""
    return isinstance(m, _QLayer) and m.is_bitserial


def _feeds_planes(a: Module, b: Module | None) -> int:
    """The bits of the planes bit-serial ``a`` emits straight into bit-serial ``b`` (0: no fold)."""
    if is_bitserial(a) and is_bitserial(b) and type(a) is type(b) and b.in_size == a.out_size \
            and b.act_bit <= MAX_FOLDED_PLANES:
        return b.act_bit
    return 0


def _bn_for(layer: Module, bn: Module | None) -> bool:
    """``bn`` is a batch norm that fits right after ``layer``'s output."""
    kind = BatchNorm1d if isinstance(layer, QDense) else BatchNorm2d
    return isinstance(bn, kind) and bn.num_features == layer.out_size


def _same_kind(a: Module, b: Module | None) -> bool:
    """``b`` binarizes ``a``'s output again and takes it in the same layout (dense->dense, conv->conv)."""
    return is_binary(b) and type(a) is type(b) and b.in_size == a.out_size


def _is_sign(m: Module | None) -> bool:
    return isinstance(m, QActivation) and m.act_bit == 1


def fold_plan(model: Module, kbit_planes: bool = True) -> dict[str, Fold]:
    """For each binary or bit-serial layer (by dotted path): the batch norm folded into it and whether it
    emits bits (binary) or the next layer's bit planes (bit-serial, ``planes`` bits).

    Only structures whose data flow is known are folded: a plain Sequential (each layer feeds the
    next), and the (layer, batch norm) pairs a module class declares in its own ``fold_pairs``
    next to its own ``forward`` (a subclass with another forward declares its own or none).
    ``kbit_planes=False``: the plan of packed files of version 1, whose k-bit layers stayed float32.
    """
    def _folds(m: Module) -> bool:
        return is_binary(m) or (kbit_planes and is_bitserial(m))

    plan = {path: Fold(None, False) for path, m in model.named_modules() if _folds(m)}
    for path, m in model.named_modules():
        prefix = f"{path}." if path else ""
        if type(m) is Sequential:
            names, layers = list(m._modules), list(m._modules.values())
            for i, layer in enumerate(layers):
                if not _folds(layer):
                    continue
                j = i + 1
                bn = layers[j] if j < len(layers) and _bn_for(layer, layers[j]) else None
                j += bn is not None
                bn_path = prefix + names[i + 1] if bn is not None else None
                if is_bitserial(layer):
                    plan[prefix + names[i]] = Fold(bn_path, False, (), _feeds_planes(layer, layers[j] if j < len(layers)
                                                                                      else None))
                    continue
                signs = []
                while j < len(layers) and _is_sign(layers[j]):
                    signs.append(prefix + names[j])
                    j += 1
                bits = _same_kind(layer, layers[j] if j < len(layers) else None)
                plan[prefix + names[i]] = Fold(bn_path, bits, tuple(signs) if bits else ())
        own = type(m).__dict__
        for layer_name, bn_name in own.get("fold_pairs", ()) if "forward" in own else ():
            layer, bn = m._modules.get(layer_name), m._modules.get(bn_name)
            if _folds(layer):
                plan[prefix + layer_name] = Fold(prefix + bn_name if _bn_for(layer, bn) else None, False)
    return plan


def _alpha_bias(layer: _QLayer) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The layer's per-channel scale (scaling "channel") and bias as float32 host arrays, or None."""
    alpha = to_numpy(_alpha(layer.weight)).astype(np.float32) if layer.scaling == "channel" else None
    bias = to_numpy(layer.bias.data).astype(np.float32) if layer.bias is not None else None
    return alpha, bias


def _norm(bn: Module | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The batch norm after the layer as the float32 scale and shift of its eval-mode affine, or Nones."""
    if bn is None:
        return None, None
    return tuple(to_numpy(a) for a in eval_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps,
                                                  np.float32))


def _epilogue(layer: _QLayer, bn: Module | None) -> Epilogue:
    """The float steps after the popcount, in the order the float simulation takes them."""
    alpha, bias = _alpha_bias(layer)
    o = layer.out_size
    if alpha is None and bias is None:  # dot is exact in float32: the batch norm alone is the fused step
        return Epilogue(*_norm(bn))
    first = (alpha if alpha is not None else np.ones(o, np.float32),
             bias if bias is not None else np.zeros(o, np.float32))
    return Epilogue(*first, *_norm(bn))


def epilogue_values(e: Epilogue, dots: np.ndarray) -> np.ndarray:
    """The float32 epilogue applied to integer dots (rows) for every channel (columns)."""
    v = dots.astype(np.float32)[:, None]
    if e.scale is not None:
        v = v * e.scale + e.bias
    if e.post_scale is not None:
        v = v * e.post_scale + e.post_shift
    return v


def thresholds(e: Epilogue, k: int, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer (threshold, flip) with (dot >= threshold) != flip  <=>  epilogue(dot) >= 0 for every
    dot in [-k, k]; None when the epilogue is not monotonic in some channel (then no fold)."""
    if e.scale is None and e.post_scale is None:  # no epilogue: sign(dot) = dot >= 0
        return np.zeros(channels, np.int32), np.zeros(channels, bool)
    dots = np.arange(-k, k + 1, dtype=np.int64)
    threshold, flip = np.empty(channels, np.int32), np.empty(channels, bool)
    step = max(1, (1 << 22) // dots.size)
    for c0 in range(0, channels, step):
        sub = Epilogue(*(a[c0:c0 + step] if a is not None else None for a in e))
        with np.errstate(all="ignore"):                   # inf / NaN epilogues are followed, not fixed
            bits = epilogue_values(sub, dots) >= 0        # (2k + 1, channels): the sign as +1 / -1
        ones, count = bits.any(axis=0), bits.sum(axis=0)
        first = np.argmax(bits, axis=0)                   # first dot whose sign is +1
        last = dots.size - 1 - np.argmax(bits[::-1], axis=0)
        rising = count == dots.size - first               # 0..0 1..1: dot >= dots[first]
        falling = count == last + 1                       # 1..1 0..0: dot <= dots[last]
        if not np.all(rising | falling | ~ones):
            return None
        # constant channels: always +1 is dot >= -k; always -1 is its negation
        threshold[c0:c0 + step] = np.where(~ones | (count == dots.size), -k,
                                           np.where(rising, dots[first], dots[last] + 1))
        flip[c0:c0 + step] = np.where(count == dots.size, False, ~ones | ~rising)
    return threshold, flip


def _binary_op(layer: _QLayer, bn: Module | None, emits_bits: bool, path: str) -> PackedOp:
    w = to_numpy(layer.weight.data)
    epilogue = _epilogue(layer, bn)
    if isinstance(layer, QDense):
        k, words = layer.in_features, ref.pack_bits(w, axis=1)
    else:
        k, words = layer.in_channels * w.shape[2] * w.shape[3], ref.pack_bits(w.transpose(0, 2, 3, 1), axis=-1)
    if emits_bits:
        folded = thresholds(epilogue, k, w.shape[0])
        if folded is None:  # cannot happen with float32 rounding (monotone steps); stay exact anyway
            warnings.warn(f"layer {path}: its epilogue is not monotone in some channel; it keeps a float output "
                          "instead of an integer threshold", UserWarning, stacklevel=3)
        else:
            epilogue = Epilogue(threshold=folded[0], flip=folded[1])
    if isinstance(layer, QDense):
        return BinaryDense(words, layer.in_features, epilogue)
    return BinaryConv2d(words, layer.in_channels, epilogue, _pair(layer.stride), layer.padding, layer.pad_value)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def packing(layer: _QLayer) -> str:
    """How the converter stores a Q-layer: 'binary' (1 bit per weight, xnor/popcount), 'bitserial'
    (weight_bit planes, bit-serial popcount), or 'float32' with the reason (no packed path)."""
    if layer.is_binary:
        return "binary"
    if layer.is_bitserial:
        return "bitserial"
    if 2 <= layer.act_bit <= bitserial.MAX_BITS and 1 <= layer.weight_bit <= bitserial.MAX_BITS:
        return "float32: its integer sums K (2^a - 1)(2^b - 1) would pass int32 (fewer inputs or bits)"
    return (f"float32: no packed path for act_bit {layer.act_bit} with weight_bit {layer.weight_bit} "
            f"(bit-serial needs act_bit 2..8 and weight_bit 1..8)")


def _bitserial_op(layer: _QLayer, bn: Module | None, planes: int, path: str) -> PackedOp:
    """Weight levels r = (2^b - 1) (wq + 1) / 2 of the DoReFa weights packed into b planes; the batch
    norm after the layer folded in; with ``planes`` the next layer's levels as thresholds."""
    top = 2**layer.weight_bit - 1
    wq = to_numpy(layer.quantized_weight().data).astype(np.float64)
    levels = np.rint((wq + 1) / 2 * top)  # exact integers: wq = (2r - top) / top up to float32 rounding
    epilogue = KbitEpilogue(*_alpha_bias(layer), *_norm(bn))
    if planes:
        k = layer.weight.data.size // layer.weight.shape[0]
        folded = level_thresholds(epilogue, layer.act_bit, layer.weight_bit, k, 2**planes - 1, layer.out_size)
        if folded is None:
            warnings.warn(f"layer {path}: its epilogue is not finite in some channel; it keeps a float output "
                          "instead of the next layer's bit planes", UserWarning, stacklevel=3)
        else:
            epilogue = KbitEpilogue(thresholds=folded[0], rising=folded[1])
    if isinstance(layer, QDense):
        w_planes = bitserial.pack_planes(levels, layer.weight_bit, axis=1, table=ref)
        return BitSerialDense(w_planes, layer.in_features, layer.act_bit, epilogue)
    w_planes = bitserial.pack_planes(levels.transpose(0, 2, 3, 1), layer.weight_bit, axis=-1, table=ref)
    return BitSerialConv2d(w_planes, layer.in_channels, layer.act_bit, epilogue, _pair(layer.stride),
                           layer.padding, layer.pad_value)


def kbit_values(e: KbitEpilogue, dots: np.ndarray, act_bit: int, weight_bit: int) -> np.ndarray:
    """The float32 epilogue of a bit-serial layer on integer dots, the simulation's steps in its order.

    ``dots`` int64 of shape (O, ...) or broadcastable against the per-channel arrays as (O, 1).
    """
    return e.values(dots.T, act_bit, weight_bit, lambda a: a.astype(np.float32, copy=False)).T


def next_levels(values: np.ndarray, top: int) -> np.ndarray:
    """The next k-bit layer's input levels: round(clip(v, 0, 1) * top), as quantize_activation rounds."""
    return np.round(np.clip(values, np.float32(0), np.float32(1)) * top)


def level_thresholds(e: KbitEpilogue, act_bit: int, weight_bit: int, k: int, top: int,
                     channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer thresholds (O, top) and rising (O,) with levels_from_thresholds(dot) == the simulation's
    next-layer level of the epilogue's value, for every dot |D| <= k (2^a - 1)(2^b - 1); None when
    a channel's epilogue is not finite.

    Each float32 step is monotone in D, so each channel's level is too (rising or falling); a binary
    search finds, per level step l, the first dot whose level reaches l (rising) or the last one
    (falling). A dot equal to a threshold passes it: the ties of the simulation's rounding included.
    """
    if any(a is not None and not np.all(np.isfinite(a)) for a in e):
        return None
    bound, o = k * (2**act_bit - 1) * (2**weight_bit - 1), channels
    ends = np.array([[-bound, bound]] * o, dtype=np.int64)
    lv = next_levels(kbit_values(e, ends, act_bit, weight_bit), top)  # (O, 2)
    rising = lv[:, 1] >= lv[:, 0]
    steps = np.arange(1, top + 1, dtype=np.float32)[None, :]  # (1, top)

    def reached(d):  # (O, top) bool: the level at dot d[o, l] reaches l (>= l)
        return next_levels(kbit_values(e, d, act_bit, weight_bit), top) >= steps

    lo = np.full((o, top), -bound, np.int64)
    hi = np.full((o, top), bound + 1, np.int64)  # search the first dot where "reached" becomes true (rising)
    while np.any(lo < hi):                        # or false (falling); bound + 1: never
        mid = (lo + hi) // 2
        flag = reached(mid) == rising[:, None]
        hi, lo = np.where(flag, mid, hi), np.where(flag, lo, mid + 1)
    imax, imin = np.iinfo(np.int32).max, np.iinfo(np.int32).min
    first = lo
    thresholds = np.where(rising[:, None], np.where(first > bound, imax, first),   # D >= first passes
                          np.where(first == -bound, imin, first - 1))               # D <= first - 1 passes
    constant = lv[:, 0] == lv[:, 1]  # always level c: c thresholds that every dot passes, as "falling"
    if np.any(constant):
        c = lv[constant, 0].astype(np.int64)[:, None]
        thresholds[constant] = np.where(np.arange(top)[None, :] < c, imax, imin)
        rising = rising & ~constant
    return thresholds.astype(np.int32), rising


def _quantized_op(layer: _QLayer) -> QuantizedLayer:
    wq = to_numpy(layer.quantized_weight().data).astype(np.float32)
    alpha, bias = _alpha_bias(layer)
    if isinstance(layer, QDense):
        return QuantizedLayer("dense", layer.act_bit, wq, alpha, bias)
    return QuantizedLayer("conv", layer.act_bit, wq, alpha, bias, _pair(layer.stride), layer.padding,
                          layer.pad_value)


def _float_copy(m: Module) -> Module:
    with random.preserved():
        copy = from_config(m.to_config())
    copy.load_state_dict(m.state_dict())
    return copy


def leaves(model: Module) -> list[tuple[str, Module]]:
    """The modules without children, by dotted path; containers must hold no parameters themselves."""
    out = []
    for path, m in model.named_modules():
        if m._modules:
            if m._parameters or m._buffers:
                raise ValueError(f"cannot convert {type(m).__name__} at {path or '(root)'}: it holds parameters "
                                 "and sub-modules (the converter packs leaf layers)")
        else:
            out.append((path, m))
    return out


def convert(model: Module, input_shape: tuple[int, ...] | None = None, name: str = "model") -> PackedModel:
    """Pack ``model`` for inference: binary layers to 1 bit per weight, batch norms folded, thresholds.

    ``input_shape``: one sample's shape (e.g. (1, 28, 28)); when given, ``predict`` checks it and
    the conversion is verified on a random batch of that shape (packed == float simulation, else
    ValueError). A model without a binary layer is converted to a float copy with a warning.
    """
    if not isinstance(model, Module):
        raise TypeError(f"convert expects a minibnn Module, got {type(model).__name__}")
    plan = fold_plan(model)
    folded = {f.bn for f in plan.values() if f.bn is not None} | {p for f in plan.values() for p in f.skipped}
    with random.preserved():
        root = from_config(model.to_config())
    for path, leaf in leaves(model):
        if path in plan:
            fold = plan[path]
            bn = submodule(model, fold.bn) if fold.bn else None
            op = _bitserial_op(leaf, bn, fold.planes, path) if is_bitserial(leaf) else \
                _binary_op(leaf, bn, fold.emits_bits, path)
        elif path in folded:
            op = Folded()
        elif isinstance(leaf, _QLayer):
            op = _quantized_op(leaf)
        else:
            op = FloatLayer(_float_copy(leaf))
        root = replace_leaf(root, path, op)
    if not plan:  # every planned layer became a binary or bit-serial op
        warnings.warn(f"{name}: the model has no binary or bit-serial layer (act_bit / weight_bit in 1..8); the "
                      "packed model is an unchanged float copy", UserWarning, stacklevel=2)
    packed = PackedModel(root, model.to_config(), input_shape, name)
    if input_shape is not None:
        verify(model, packed, input_shape)
    return packed


def verify(model: Module, packed: PackedModel, input_shape: tuple[int, ...], batch: int = 2) -> None:
    """Raise ValueError unless ``packed`` computes the model's evaluation-mode logits on a random batch."""
    from minibnn.autograd import Tensor, no_grad

    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    modes = {id(m): m.training for m in model.modules()}
    try:
        model.eval()  # safe: the PyTorch-style mode switch, not Python's eval
        with no_grad():
            expected = to_numpy(model(Tensor(x)).data)
        got = to_numpy(packed.predict(x))
    except ValueError as exc:
        raise ValueError(f"input_shape {tuple(input_shape)} does not fit the model: {exc}") from None
    finally:
        for m in model.modules():
            object.__setattr__(m, "training", modes[id(m)])
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5, equal_nan=True):
        raise ValueError("the packed model does not compute what the float model does on a random batch "
                         "(does a module's forward use a layer's output in a way the converter cannot see? "
                         "declare only exact (layer, batch norm) pairs in fold_pairs)")

