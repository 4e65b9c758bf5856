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
from minibnn.deploy.model import PackedModel, replace_leaf, submodule
from minibnn.deploy.ops import OPS, BinaryConv2d, BinaryDense, FloatLayer, PackedOp, QuantizedLayer
from minibnn.io import ModelFileError, read_pair, split_path, write_pair
from minibnn.nn.module import Module, from_config
from minibnn.nn.quantized import QConv2d, _QLayer

FORMAT = "minibnn-packed"
VERSION = 1


def save(packed: PackedModel, path: str | os.PathLike) -> Path:
    """Write ``path.json`` + ``path.npz`` atomically (no partial pair is left on failure)."""
    layers, arrays = {}, {}
    for layer_path, op in packed.layers():
        layers[layer_path] = {"op": op.kind, "config": op.config(), "bytes": op.nbytes}
        arrays.update({f"{layer_path}:{name}": np.ascontiguousarray(a) for name, a in op.arrays().items()})
    header = {"format": FORMAT, "version": VERSION, "name": packed.name, "architecture": packed.architecture,
              "input_shape": list(packed.input_shape) if packed.input_shape is not None else None,
              "layers": layers, "array_bytes": packed.nbytes}
    json_path = write_pair(path, header, arrays)
    packed.files = _file_sizes(json_path, header.get("npz"))
    return json_path


def _file_sizes(json_path: Path, npz_name: str | None) -> dict[str, int]:
    npz_path = json_path.with_name(npz_name) if npz_name else split_path(json_path)[1]
    return {str(p): p.stat().st_size for p in (json_path, npz_path) if p.exists()}


def load(path: str | os.PathLike) -> PackedModel:
    """Read a packed model written by ``save`` / ``minibnn convert``; every array is checked."""
    json_path = split_path(path)[0]
    header, arrays = read_pair(path, FORMAT, VERSION)
    try:
        root = from_config(header["architecture"])
        layers = header["layers"]
        if not isinstance(layers, dict):
            raise ValueError("'layers' must be an object")
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{json_path}: bad architecture ({exc})") from None
    expected = [p for p, m in root.named_modules() if not m._modules]
    missing, unknown = set(expected) - set(layers), set(layers) - set(expected)
    if missing or unknown:
        raise ModelFileError(f"{json_path}: layers do not match the architecture (missing {sorted(missing)}, "
                             f"unknown {sorted(unknown)})")
    used: set[str] = set()
    for layer_path in expected:
        own = {k.partition(":")[2]: v for k, v in arrays.items() if k.partition(":")[0] == layer_path}
        used.update(f"{layer_path}:{k}" for k in own)
        op = _build(json_path, layer_path, layers[layer_path], own)
        problem = _mismatch(op, submodule(root, layer_path))
        if problem:
            raise ModelFileError(f"{json_path}: layer {layer_path or '(root)'} ({op.kind}) does not fit the "
                                 f"architecture: {problem}")
        root = replace_leaf(root, layer_path, op)
    if set(arrays) - used:
        raise ModelFileError(f"{json_path}: arrays of no layer: {sorted(set(arrays) - used)}")
    shape = header.get("input_shape")
    packed = PackedModel(root, header["architecture"], shape, str(header.get("name", json_path.stem)))
    packed.files = _file_sizes(json_path, header.get("npz"))
    return packed


def _build(json_path: Path, layer_path: str, spec, arrays: dict[str, np.ndarray]) -> PackedOp:
    where = f"{json_path}: layer {layer_path or '(root)'}"
    if not isinstance(spec, dict) or spec.get("op") not in OPS:
        kind = spec.get("op") if isinstance(spec, dict) else spec
        raise ModelFileError(f"{where}: unknown layer kind {kind!r}; known kinds: {sorted(OPS)}")
    cls = OPS[spec["op"]]
    try:
        op = cls.build(spec.get("config", {}), arrays)
        CHECKS.get(cls, lambda op: None)(op)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{where} ({spec['op']}): {exc}") from None
    return op


def _mismatch(op: PackedOp, leaf: Module) -> str:
    """What differs between a loaded op and the architecture's leaf at its place ('' if nothing)."""
    if isinstance(op, FloatLayer):
        same = op.module.to_config() == leaf.to_config()
        return "" if same else f"{op.module.to_config()['type']} where the architecture has {type(leaf).__name__}"
    if isinstance(op, (BinaryDense, BinaryConv2d, QuantizedLayer)):
        if not isinstance(leaf, _QLayer):
            return f"a quantized layer where the architecture has {type(leaf).__name__}"
        if (isinstance(op, BinaryConv2d) or getattr(op, "layer", "") == "conv") != isinstance(leaf, QConv2d):
            return f"{'conv' if isinstance(leaf, QConv2d) else 'dense'} layer expected"
        weight = op.weight_bits if hasattr(op, "weight_bits") else op.weight
        k = op.in_channels if hasattr(op, "in_channels") else weight.shape[1]
        want, got = tuple(leaf.weight.shape), (weight.shape[0], k, *weight.shape[1:3][: leaf.weight.ndim - 2])
        if isinstance(op, QuantizedLayer):
            got = tuple(weight.shape)
        if got != want:
            return f"weights {got}, the architecture says {want}"
    return ""


def _check_vector(name: str, a, n: int, dtype) -> None:
    ref.check_array(name, a, dtype, 1, "per output channel")
    ref.check_shape(name, a, (n,), "one per output channel")


def _check_binary(op) -> None:
    conv = isinstance(op, BinaryConv2d)
    ref.check_int("input channels" if conv else "in_features", op.in_channels, 1)
    w = op.weight_bits
    ref.check_array("weight_bits", w, np.uint64, 4 if conv else 2, "packed weights")
    if w.shape[-1] != ref.n_words(op.in_channels):
        raise ValueError(f"weight_bits has {w.shape[-1]} words per row, {op.in_channels} inputs need "
                         f"{ref.n_words(op.in_channels)}")
    ref.check_tail("weight_bits", w, op.in_channels)
    e, o = op.epilogue, w.shape[0]
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
    if conv:
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


CHECKS = {BinaryDense: _check_binary, BinaryConv2d: _check_binary, QuantizedLayer: _check_quantized}
