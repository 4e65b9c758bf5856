"""The packed model files: ``binarized_<name>.json`` (architecture, layers) + ``.npz`` (arrays).

The JSON holds the format name and version, the float model's architecture, one entry per leaf
layer (its op kind and settings), every array's dtype and shape, the SHA-256 and byte size of
the .npz and the bytes of each layer. Arrays are stored with their true dtypes (binary weights
as uint64 words) under ``<layer path>:<name>``. Loading uses allow_pickle=False and refuses,
naming the file and the layer, anything inconsistent, truncated, unknown or newer.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from minibnn.backend import numpy_ref as ref
from minibnn import random
from minibnn.deploy.convert import Fold, fold_plan
from minibnn.deploy.model import PackedModel, replace_leaf, submodule
from minibnn.deploy.ops import (OPS, BinaryConv2d, BinaryDense, BitSerialConv2d, BitSerialDense, FloatLayer, Folded,
                                PackedOp, QuantizedLayer)
from minibnn.io import ModelFileError, check_finite, read_pair, split_path, write_pair
from minibnn.nn.init import SLACK_BYTES, allocation_limit
from minibnn.nn.module import Module, from_config
from minibnn.nn.quantized import QConv2d, _QLayer

FORMAT = "minibnn-packed"
VERSION = 2  # 2: k-bit layers as bit planes (issue 13); version 1 files, with float32 k-bit layers, still load


def save(packed: PackedModel, path: str | os.PathLike) -> Path:
    """Write ``path.json`` + ``path.npz`` atomically (no partial pair is left on failure)."""
    layers, arrays = {}, {}
    for layer_path, op in packed.layers():
        layers[layer_path] = {"op": op.kind, "config": op.config(), "bytes": op.nbytes}
        arrays.update({f"{layer_path}:{name}": np.ascontiguousarray(a) for name, a in op.arrays().items()})
    bit_planes = any(isinstance(op, (BitSerialDense, BitSerialConv2d)) for _, op in packed.layers())
    header = {"format": FORMAT, "version": VERSION if bit_planes else 1,  # version 1 readers load the rest
              "name": packed.name, "architecture": packed.architecture,
              "input_shape": list(packed.input_shape) if packed.input_shape is not None else None,
              "layers": layers, "array_bytes": packed.nbytes}
    json_path = write_pair(path, header, arrays)
    packed.files = _file_sizes(json_path, None)
    return json_path


def _file_sizes(json_path: Path, npz_name: str | None) -> dict[str, int]:
    npz_path = json_path.with_name(npz_name) if npz_name else split_path(json_path)[1]
    return {str(p): p.stat().st_size for p in (json_path, npz_path) if p.exists()}


# The float architecture is rebuilt to check the layers against it: it may allocate this many times the
# bytes of the stored arrays (float32 for 1-bit weights is 32x), and no more, so an edited one declaring
# huge layers is refused before it is allocated.
ARCHITECTURE_BYTES_PER_STORED_BYTE = 40


def load(path: str | os.PathLike, allow_nonfinite: bool = False) -> PackedModel:
    """Read a packed model written by ``save`` / ``minibnn convert``; every array and layer is checked.

    Float arrays holding NaN or infinity are refused, naming the array, unless ``allow_nonfinite``.
    """
    with random.preserved():  # building modules draws initial weights that are then replaced
        return _load(path, allow_nonfinite)


def _load(path: str | os.PathLike, allow_nonfinite: bool) -> PackedModel:
    json_path = split_path(path)[0]
    header, arrays = read_pair(path, FORMAT, VERSION)
    check_finite(json_path, arrays, allow_nonfinite)
    limit = ARCHITECTURE_BYTES_PER_STORED_BYTE * sum(a.nbytes for a in arrays.values()) + SLACK_BYTES
    try:
        with allocation_limit(limit, "the packed arrays are far smaller, so they do not come from this architecture"):
            root = from_config(header["architecture"])
        layers = header["layers"]
        if not isinstance(layers, dict):
            raise ValueError("'layers' must be an object")
        plan = fold_plan(root, kbit_planes=header["version"] >= 2)
        input_shape = _input_shape(header.get("input_shape"))
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError, MemoryError) as exc:
        raise ModelFileError(f"{json_path}: bad architecture ({type(exc).__name__}: {exc})") from None
    expected = [p for p, m in root.named_modules() if not m._modules]
    missing, unknown = set(expected) - set(layers), set(layers) - set(expected)
    if missing or unknown:
        raise ModelFileError(f"{json_path}: layers do not match the architecture (missing {sorted(missing)}, "
                             f"unknown {sorted(unknown)})")
    folded = {f.bn for f in plan.values() if f.bn} | {p for f in plan.values() for p in f.skipped}
    grouped: dict[str, dict[str, np.ndarray]] = {p: {} for p in expected}
    for key, a in arrays.items():
        layer_path, _, name = key.partition(":")
        if layer_path not in grouped:
            raise ModelFileError(f"{json_path}: array {key} belongs to no layer")
        grouped[layer_path][name] = np.ascontiguousarray(a)
    for layer_path in expected:
        where = f"{json_path}: layer {layer_path or '(root)'}"
        op = _build(where, layers[layer_path], grouped[layer_path])
        problem = _mismatch(op, submodule(root, layer_path), plan.get(layer_path), layer_path in folded)
        if problem:
            raise ModelFileError(f"{where} ({op.kind}) does not fit the architecture: {problem}")
        root = replace_leaf(root, layer_path, op)
    packed = PackedModel(root, header["architecture"], input_shape, str(header.get("name", json_path.stem)))
    packed.files = _file_sizes(json_path, header.get("npz"))
    return packed


def _input_shape(value) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        raise ValueError(f"input_shape must be a list of positive integers or null, got {value!r}")
    return tuple(value)


def _build(where: str, spec, arrays: dict[str, np.ndarray]) -> PackedOp:
    if not isinstance(spec, dict) or not isinstance(spec.get("op"), str):
        raise ModelFileError(f"{where}: a layer entry must be an object with a string 'op', got {str(spec)[:80]}")
    if spec["op"] not in OPS:
        raise ModelFileError(f"{where}: unknown layer kind {spec['op']!r}; known kinds: {sorted(OPS)}")
    cls, config = OPS[spec["op"]], spec.get("config", {})
    try:
        if not isinstance(config, dict):
            raise ValueError(f"config must be an object, got {type(config).__name__}")
        op = cls.build(config, arrays)
        CHECKS.get(cls, lambda op: None)(op)
        if set(op.arrays()) != set(arrays):
            raise ValueError(f"arrays {sorted(arrays)} differ from what this layer holds: {sorted(op.arrays())}")
    except KeyError as exc:
        raise ModelFileError(f"{where} ({spec['op']}): missing setting or array {exc}") from None
    except (ValueError, TypeError, AttributeError, RecursionError, MemoryError) as exc:
        raise ModelFileError(f"{where} ({spec['op']}): {exc}") from None
    return op


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _mismatch(op: PackedOp, leaf: Module, fold: Fold | None, folded: bool) -> str:
    """What differs between a loaded op and the architecture's leaf at its place ('' if nothing)."""
    if folded:
        return "" if isinstance(op, Folded) else f"the converter folds this {type(leaf).__name__} away"
    if isinstance(op, Folded):
        return f"only a folded batch norm or sign is empty, this is a {type(leaf).__name__}"
    if isinstance(op, FloatLayer):
        if isinstance(leaf, _QLayer):
            return f"a float layer where the architecture has {type(leaf).__name__}"
        same = op.module.to_config() == leaf.to_config()
        return "" if same else f"{op.module.to_config()['type']} where the architecture has {type(leaf).__name__}"
    if not isinstance(leaf, _QLayer):
        return f"a quantized layer where the architecture has {type(leaf).__name__}"
    conv = isinstance(leaf, QConv2d)
    kind = ("binary" if isinstance(op, (BinaryDense, BinaryConv2d)) else
            "bitserial" if isinstance(op, (BitSerialDense, BitSerialConv2d)) else "quantized")
    expected = "binary" if leaf.is_binary else "bitserial" if fold is not None else "quantized"
    if kind != expected:
        return f"a {kind} layer where the converter makes {type(leaf).__name__} a {expected} one"
    if (isinstance(op, (BinaryConv2d, BitSerialConv2d)) if kind != "quantized" else op.layer == "conv") != conv:
        return f"{'conv' if conv else 'dense'} layer expected"
    if kind == "binary":
        if op.emits_bits and not fold.emits_bits:
            return "it emits packed bits but the next layer does not binarize them"
        got = (op.out_channels, op.in_channels, *op.weight_bits.shape[1:3]) if conv else \
            (op.out_channels, op.in_channels)
    else:
        if op.act_bit != leaf.act_bit:
            return f"act_bit {op.act_bit}, the architecture says {leaf.act_bit}"
        if kind == "bitserial" and op.weight_bit != leaf.weight_bit:
            return f"weight_bit {op.weight_bit}, the architecture says {leaf.weight_bit}"
        if kind == "bitserial" and op.planes_out not in (0, fold.planes):  # 0: a fold the converter declined
            return f"it emits {op.planes_out} bit planes, the next layer takes {fold.planes or 'none'}"
        e = op.epilogue if kind == "bitserial" else op
        if kind == "quantized" or not op.planes_out:
            if (e.alpha is not None) != (leaf.scaling == "channel") or (e.bias is not None) != (leaf.bias is not None):
                return "its alpha / bias do not match the architecture's scaling / bias"
        if kind == "bitserial":
            got = (op.out_channels, op.in_channels, *op.weight_planes.shape[2:4]) if conv else \
                (op.out_channels, op.in_channels)
        else:
            got = tuple(op.weight.shape)
    if got != tuple(leaf.weight.shape):
        return f"weights {got}, the architecture says {tuple(leaf.weight.shape)}"
    if conv and (tuple(op.stride), tuple(op.padding), op.pad_value) != (_pair(leaf.stride), tuple(leaf.padding),
                                                                        leaf.pad_value):
        return (f"stride {op.stride}, padding {op.padding}, pad_value {op.pad_value}; the architecture says "
                f"{_pair(leaf.stride)}, {tuple(leaf.padding)}, {leaf.pad_value}")
    return ""


def _check_vector(name: str, a, n: int, dtype) -> None:
    ref.check_array(name, a, dtype, 1, "per output channel")
    ref.check_shape(name, a, (n,), "one per output channel")


def _check_binary(op) -> None:
    """The epilogue fits the weights (the weights themselves were checked when the op was built)."""
    e, o = op.epilogue, op.weight_bits.shape[0]
    pairs = (("scale", "bias"), ("post_scale", "post_shift"), ("threshold", "flip"))
    for a, b in pairs:
        if (getattr(e, a) is None) != (getattr(e, b) is None):
            raise ValueError(f"{a} and {b} come together, got only one")
    if e.post_scale is not None and e.scale is None:
        raise ValueError("post_scale without scale")
    if e.threshold is not None and (e.scale is not None or e.post_scale is not None):
        raise ValueError("a threshold layer has no float epilogue")
    for name in ("scale", "bias", "post_scale", "post_shift"):
        if getattr(e, name) is not None:
            _check_vector(name, getattr(e, name), o, np.float32)
    if e.threshold is not None:
        _check_vector("threshold", e.threshold, o, np.int32)
        _check_vector("flip", e.flip, o, np.bool_)
    if isinstance(op, BinaryConv2d):
        ref.check_pair("stride", op.stride, 1), ref.check_pair("padding", op.padding, 0)
        if op.pad_value not in (0, 1, -1):
            raise ValueError(f"pad_value must be 0, 1 or -1, got {op.pad_value!r}")


def _check_quantized(op: QuantizedLayer) -> None:
    if op.layer not in ("dense", "conv"):
        raise ValueError(f"layer must be 'dense' or 'conv', got {op.layer!r}")
    ref.check_int("act_bit", op.act_bit, 1, 32)
    ref.check_array("weight", op.weight, np.float32, 2 if op.layer == "dense" else 4, "quantized weights")
    for name in ("alpha", "bias"):
        if getattr(op, name) is not None:
            _check_vector(name, getattr(op, name), op.weight.shape[0], np.float32)
    ref.check_pair("stride", op.stride, 1), ref.check_pair("padding", op.padding, 0)
    if op.pad_value not in (0, 1, -1):
        raise ValueError(f"pad_value must be 0, 1 or -1, got {op.pad_value!r}")


def _check_bitserial(op) -> None:
    """The epilogue fits the outputs (the planes were checked when the op was built)."""
    e, o = op.epilogue, op.out_channels
    if (e.post_scale is None) != (e.post_shift is None) or (e.thresholds is None) != (e.rising is None):
        raise ValueError("post_scale and post_shift, thresholds and rising come together, got only one")
    if e.thresholds is not None and any(getattr(e, n) is not None for n in ("alpha", "bias", "post_scale")):
        raise ValueError("a layer that emits bit planes has no float epilogue")
    for name in ("alpha", "bias", "post_scale", "post_shift"):
        if getattr(e, name) is not None:
            _check_vector(name, getattr(e, name), o, np.float32)
    if e.thresholds is not None:
        ref.check_array("thresholds", e.thresholds, np.int32, 2, "(O, levels) per output channel")
        if e.thresholds.shape[0] != o or e.thresholds.shape[1] not in (1, 3, 7, 15):
            raise ValueError(f"thresholds must have shape ({o}, 2^bits - 1) with bits in 1..4, got {e.thresholds.shape}")
        _check_vector("rising", e.rising, o, np.bool_)


CHECKS = {BinaryDense: _check_binary, BinaryConv2d: _check_binary, QuantizedLayer: _check_quantized,
          BitSerialDense: _check_bitserial, BitSerialConv2d: _check_bitserial}
