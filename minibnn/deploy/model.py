"""PackedModel: a converted model that runs inference on raw arrays with the backend's kernels.

It keeps the float model's module tree (so containers such as ResNet blocks run their own
forward) with every leaf replaced by a packed op (minibnn.deploy.ops).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from minibnn import backend
from minibnn.autograd import Tensor
from minibnn.deploy.ops import Bits, PackedOp
from minibnn.nn.module import Module


def submodule(root: Module, path: str) -> Module:
    """The module at dotted ``path`` below ``root`` ('' is root itself)."""
    m = root
    for part in path.split(".") if path else ():
        m = m._modules[part]
    return m


def replace_leaf(root: Module, path: str, op: Module) -> Module:
    """Put ``op`` at ``path`` in place (the order of a Sequential's layers is kept); returns the root."""
    if not path:
        return op
    parent_path, _, name = path.rpartition(".")
    parent = submodule(root, parent_path)
    parent._modules[name] = op
    object.__setattr__(parent, name, op)
    return root


class PackedModel:
    """A converted model: binary layers with 1-bit weights, folded batch norms, inference only."""

    def __init__(self, root: Module, architecture: dict[str, Any], input_shape: tuple[int, ...] | None = None,
                 name: str = "model") -> None:
        self.root, self.architecture, self.name = root.eval(), architecture, name  # safe: mode switch
        self.input_shape = tuple(int(v) for v in input_shape) if input_shape is not None else None
        self.files: dict[str, int] = {}  # file -> bytes on disk, once saved or loaded
        for path, op in self.layers():
            object.__setattr__(op, "path", path)

    def layers(self) -> list[tuple[str, PackedOp]]:
        """The packed ops by dotted path, in module order."""
        return [(p, m) for p, m in self.root.named_modules() if isinstance(m, PackedOp)]

    @property
    def nbytes(self) -> int:
        """Bytes of all stored arrays (the size of the packed parameters in memory)."""
        return sum(op.nbytes for _, op in self.layers())

    def __call__(self, x):
        """Logits for a batch ``x`` (floating array, one sample per row)."""
        return self.predict(x)

    def predict(self, x, batch_size: int | None = None):
        """Logits for ``x``, computed ``batch_size`` samples at a time (all at once when None).

        Runs on the current backend: on ``cuda`` the input is copied to the GPU (if it is not there
        already), the stored weights are copied once and cached, and the logits are a CuPy array
        (``minibnn.backend.to_numpy`` brings them back).
        """
        x = self._check_input(x)
        if batch_size is None or batch_size >= len(x):
            return self._forward(x)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return backend.xp().concatenate([self._forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

    def _forward(self, x):
        y = self.root(x)
        if isinstance(y, Bits):  # a model that ends in a binary layer emitting bits (channels last)
            y = backend.kernels().unpack_bits(y.words, y.channels)
            y = y.transpose(0, 3, 1, 2) if y.ndim == 4 else y
        return backend.xp().ascontiguousarray(y.data if isinstance(y, Tensor) else y)

    def _check_input(self, x):
        x = backend.to_backend(x)
        if x.dtype.kind != "f":
            raise ValueError(f"{self.name}: input must be a floating-point array (normalised as in training), "
                             f"got dtype {x.dtype}")
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"{self.name}: input must be a non-empty batch, got shape {tuple(x.shape)}")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.name}: input must have shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(x.shape)}")
        return x.astype(np.float32, copy=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.json`` + ``path.npz`` (see minibnn.deploy.fileformat); returns the .json path."""
        from minibnn.deploy.fileformat import save

        return save(self, path)

    def __repr__(self) -> str:
        binary = sum(op.kind.startswith("binary") for _, op in self.layers())
        return f"PackedModel({self.name!r}, {len(self.layers())} layers, {binary} binary, {self.nbytes} bytes)"
