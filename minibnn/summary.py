"""Model summary: per layer the output shape, bits, parameters, binary and float MACs and memory.

Memory "float32" is what the float model stores (parameters and buffers, 4 bytes each); memory
"packed" is measured on the converted model (minibnn.deploy): the bytes of each packed layer's
arrays (a folded batch norm moves into its binary layer and stores nothing), plus the sizes of
the model files on disk when the packed model was saved or loaded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minibnn.autograd import Tensor, no_grad
from minibnn.nn.layers import Conv2d, Dense
from minibnn.nn.module import Module, from_config
from minibnn.nn.quantized import QConv2d, QDense, _QLayer


@dataclass
class LayerRow:
    """One leaf layer of the summary."""

    path: str
    type: str
    output_shape: tuple
    input_bits: int | None
    weight_bits: int | None
    params: int
    binary_macs: int
    float_macs: int
    float32_bytes: int
    packed_bytes: int
    packed_as: str = ""  # how a Q-layer's weights are stored: words, bit planes, or float32 and why


@dataclass
class Summary:
    """The rows and the totals; str() renders the table."""

    name: str
    input_shape: tuple
    rows: list[LayerRow]
    file_bytes: dict[str, int] = field(default_factory=dict)

    def total(self, column: str) -> int:
        return sum(getattr(r, column) for r in self.rows)

    @property
    def compression(self) -> float:
        """float32 bytes / packed bytes (measured arrays)."""
        return self.total("float32_bytes") / max(1, self.total("packed_bytes"))

    @property
    def binary_mac_share(self) -> float:
        macs = self.total("binary_macs") + self.total("float_macs")
        return self.total("binary_macs") / macs if macs else 0.0

    def __str__(self) -> str:
        head = ("layer", "type", "output", "in bits", "w bits", "params", "binary MACs", "float MACs",
                "float32", "packed", "packed as")
        body = [(r.path or "(root)", r.type, "x".join(map(str, r.output_shape)), _bits(r.input_bits),
                 _bits(r.weight_bits), _count(r.params), _count(r.binary_macs), _count(r.float_macs),
                 _size(r.float32_bytes), _size(r.packed_bytes), r.packed_as) for r in self.rows]
        totals = ("total", "", "", "", "", _count(self.total("params")), _count(self.total("binary_macs")),
                  _count(self.total("float_macs")), _size(self.total("float32_bytes")),
                  _size(self.total("packed_bytes")), "")
        widths = [max(len(str(row[i])) for row in [head, totals, *body]) for i in range(len(head))]
        def line(row):
            return "  ".join(str(v).ljust(w) if i < 3 or i == len(row) - 1 else str(v).rjust(w)
                             for i, (v, w) in enumerate(zip(row, widths))).rstrip()
        rule = "-" * len(line(head))
        out = [f"{self.name}: input (N, {', '.join(map(str, self.input_shape))})", line(head), rule,
               *map(line, body), rule, line(totals),
               f"compression {self.compression:.1f}x (float32 {_size(self.total('float32_bytes'))} -> packed "
               f"{_size(self.total('packed_bytes'))}), binary MACs {100 * self.binary_mac_share:.1f}% of all"]
        if self.file_bytes:
            out.append("files on disk: " + ", ".join(f"{Path(p).name} {_size(b)}" for p, b in self.file_bytes.items()))
        return "\n".join(out)


def _bits(b: int | None) -> str:
    return "-" if b is None else str(b)


def _count(n: int) -> str:
    return "-" if n == 0 else f"{n:,}"


def _size(n: int) -> str:
    if n == 0:
        return "-"
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _output_shapes(model: Module, input_shape: tuple) -> dict[str, tuple]:
    """Run one zero sample through ``model`` (eval mode, no autograd) and record each leaf's output shape."""
    shapes: dict[str, tuple] = {}
    leaves = [(p, m) for p, m in model.named_modules() if not m._modules]
    modes = {id(m): m.training for m in model.modules()}

    def recording(path, forward):
        def wrapper(*args, **kwargs):
            y = forward(*args, **kwargs)
            shapes[path] = tuple(y.shape[1:])
            return y
        return wrapper

    for path, m in leaves:
        object.__setattr__(m, "forward", recording(path, m.forward))
    try:
        model.eval()  # safe: mode switch, not Python's eval
        with no_grad():
            model(Tensor(np.zeros((1, *input_shape), np.float32)))
    finally:
        for _, m in leaves:
            object.__delattr__(m, "forward")
        for m in model.modules():
            object.__setattr__(m, "training", modes[id(m)])
    return shapes


def _macs(m: Module, out_shape: tuple) -> int:
    if isinstance(m, (Dense, QDense)):
        return int(m.weight.data.size)
    if isinstance(m, (Conv2d, QConv2d)):
        return int(math.prod(out_shape[1:]) * m.weight.data.size)  # positions x (O * C/g * kh * kw)
    return 0


def _bits_of(m: Module) -> tuple[int | None, int | None]:
    if isinstance(m, _QLayer):
        return m.act_bit, m.weight_bit
    if isinstance(m, (Dense, Conv2d)):
        return 32, 32
    return None, None


def _packed_as(m: Module, op) -> str:
    """How the converter stored a Q-layer's weights, with the measured bits per weight."""
    from minibnn.deploy import ops
    from minibnn.deploy.convert import packing

    if not isinstance(m, _QLayer) or op is None:
        return ""
    if isinstance(op, (ops.BinaryDense, ops.BinaryConv2d)):
        return f"1-bit words, {8 * op.weight_bits.nbytes / m.weight.data.size:.2f} bits/weight"
    if isinstance(op, (ops.BitSerialDense, ops.BitSerialConv2d)):
        return f"{op.weight_bit}-bit planes, {8 * op.weight_planes.nbytes / m.weight.data.size:.2f} bits/weight"
    reason = packing(m)
    return reason if reason.startswith("float32") else "float32 weights (a packed file of format version 1)"


def summary(model, input_shape=None, print_fn=print) -> Summary:
    """Print and return the summary of a Module or a PackedModel for one sample of ``input_shape``
    (default: the shape a PackedModel was converted for)."""
    from minibnn import deploy, random

    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ValueError("summary needs input_shape, one sample's shape such as (1, 28, 28)")
    input_shape = tuple(int(v) for v in input_shape)
    if isinstance(model, deploy.PackedModel):
        with random.preserved():  # a skeleton for shapes and MACs; its weights are never used
            float_model = from_config(model.architecture)
        packed, name = model, model.name
    elif isinstance(model, Module):
        packed, float_model, name = None, model, type(model).__name__
    else:
        raise TypeError(f"summary expects a minibnn Module or PackedModel, got {type(model).__name__}")
    shapes = _output_shapes(float_model, input_shape)
    if packed is None:
        import warnings
        with warnings.catch_warnings():  # a float model is summarised too
            warnings.simplefilter("ignore", UserWarning)
            packed = deploy.convert(float_model)
    packed_ops = dict(packed.layers())
    packed_bytes = {path: op.nbytes for path, op in packed_ops.items()}
    rows = []
    for path, m in float_model.named_modules():
        if m._modules:
            continue
        macs = _macs(m, shapes[path]) if path in shapes else 0  # a layer the forward pass never ran: no MACs
        binary = isinstance(m, _QLayer) and m.is_binary
        stored = sum(p.data.size for p in m._parameters.values() if p is not None)
        stored += sum(getattr(m, b).size for b in m._buffers)
        rows.append(LayerRow(path, type(m).__name__, shapes.get(path, ()), *_bits_of(m),
                             sum(p.data.size for p in m._parameters.values() if p is not None),
                             macs if binary else 0, 0 if binary else macs, 4 * stored, packed_bytes.get(path, 0),
                             _packed_as(m, packed_ops.get(path))))
    result = Summary(name, input_shape, rows, dict(getattr(packed, "files", {})))
    if print_fn is not None:
        print_fn(str(result))
    return result
