"""The layers of a packed model: inference only, on raw arrays, on the current backend's kernels.

Each op replaces one leaf module of the float model and computes exactly what that leaf (and
the batch norm folded into it) computes in evaluation mode:

- ``BinaryDense`` / ``BinaryConv2d``: a binary Q-layer (act_bit = weight_bit = 1) with its
  weights as uint64 words, 1 bit per weight. Its epilogue is at most two per-channel affine
  steps in the float simulation's order: ``dot * scale + bias`` fused into the C kernel, then
  ``y * post_scale + post_shift`` (a folded batch norm when alpha or a bias come first). When the
  next layer binarizes the result again, the whole epilogue and the sign become an integer
  threshold per channel and the op emits packed bits (``Bits``) straight to that layer.
- ``BitSerialDense`` / ``BitSerialConv2d``: a k-bit Q-layer (act_bit 2..8, weight_bit 1..8) with
  its weight levels as bit planes (weight_bit bits per weight), computed exactly in integers by the
  bit-serial popcount arithmetic (minibnn.backend.bitserial), then scaled back to float.
- ``QuantizedLayer``: any other k-bit or mixed Q-layer (e.g. 1-bit input with 4-bit weights, or
  wider than 8 bits); its weights are stored as their quantized float32 values, not the latent ones.
- ``FloatLayer``: any other leaf (float conv/dense, batch norm, pooling, activations), run
  unchanged with autograd off.
- ``Folded``: a batch norm whose work moved into the binary layer before it.
"""
from __future__ import annotations

import operator
from typing import Any, NamedTuple

import numpy as np

from minibnn import backend
from minibnn import functional as F
from minibnn.backend import bitserial
from minibnn.backend import numpy_ref as ref
from minibnn.autograd import Tensor, no_grad
from minibnn.nn.init import SLACK_BYTES, allocation_limit
from minibnn.nn.module import Module, from_config
from minibnn.nn.quantized import _quantize_input


def _check_packed(name: str, w, in_channels: int, ndim: int, what: str) -> None:
    """Packed weights fit the input count with tail bits 0: checked once when a layer is built, so its
    kernels skip the scan (on the GPU the scan is a host sync)."""
    ref.check_int("input channels" if ndim >= 4 else "in_features", in_channels, 1)
    ref.check_array(name, w, np.uint64, ndim, what)
    if w.shape[-1] != ref.n_words(in_channels):
        raise ValueError(f"{name} has {w.shape[-1]} words per row, {in_channels} inputs need "
                         f"{ref.n_words(in_channels)}")
    ref.check_tail(name, w, in_channels)


def _present(arrays: NamedTuple) -> dict[str, np.ndarray]:
    """The fields of an epilogue that hold an array."""
    return {k: v for k, v in arrays._asdict().items() if v is not None}


class Bits(NamedTuple):
    """Packed +-1 activations: uint64 words along the channel axis (last), true channel count."""

    words: Any  # (N, ceil(C/64)) for dense layers, (N, H, W, ceil(C/64)) for convolutions
    channels: int


class PackedOp(Module):
    """Base of the packed ops: ``path`` names the layer in errors; arrays() and config() describe it."""

    kind = "op"

    def __init__(self) -> None:
        super().__init__()
        object.__setattr__(self, "path", "")
        object.__setattr__(self, "_placed", {})  # (backend, id) -> (stored array, its copy there)

    def placed(self, a):
        """A stored (NumPy) array as an array of the current backend: copied to the GPU once, then cached."""
        if a is None:
            return None
        key = (backend.current(), id(a))
        if key not in self._placed:  # the stored array is kept in the entry, so its id stays unique
            self._placed[key] = (a, backend.to_backend(a))
        return self._placed[key][1]

    def config(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    @property
    def nbytes(self) -> int:
        """Bytes of this layer's stored arrays (what the .npz holds for it)."""
        return sum(a.nbytes for a in self.arrays().values())

    def fail(self, message: str) -> ValueError:
        return ValueError(f"layer {self.path or '(root)'} ({self.kind}): {message}")


def _floats(x, op: PackedOp):
    """The raw array a float op gets (a container's own functional calls may hand it a Tensor)."""
    if isinstance(x, Bits):
        raise op.fail("received packed bits; only a binary layer can take them")
    if isinstance(x, Planes):
        raise op.fail("received bit planes; only a bit-serial layer can take them")
    return x.data if isinstance(x, Tensor) else x


def _config_int(config: dict, name: str, lo: int, hi: int = ref.INT32_MAX) -> int:
    return ref.check_int(name, config[name], lo, hi)


def _config_pair(config: dict, name: str, lo: int) -> tuple[int, int]:
    return ref.check_pair(name, config[name], lo)


def _config_pad_value(config: dict) -> int:
    v = config["pad_value"]
    if isinstance(v, bool) or not isinstance(v, int) or v not in (0, 1, -1):
        raise ValueError(f"pad_value must be 0, 1 or -1, got {v!r}")
    return v


class FloatLayer(PackedOp):
    """A leaf of the float model kept as it is (conv, dense, batch norm, pooling, activation)."""

    kind = "float"

    def __init__(self, module: Module) -> None:
        super().__init__()
        self.module = module.eval()  # safe: mode switch, not Python's eval
        object.__setattr__(self, "_module_backend", None)  # the backend whose arrays the module holds

    def forward(self, x):
        x = _floats(x, self)
        if self._module_backend != backend.current():  # parameters follow the backend (GPU once)
            self.module.to()
            object.__setattr__(self, "_module_backend", backend.current())
        try:
            with no_grad():
                y = self.module(Tensor(x))
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        return y.data if isinstance(y, Tensor) else y

    def config(self) -> dict[str, Any]:
        return {"module": self.module.to_config()}

    def arrays(self) -> dict[str, np.ndarray]:
        return self.module.state_dict()

    @classmethod
    def build(cls, config: dict, arrays: dict[str, np.ndarray]) -> "FloatLayer":
        with allocation_limit(sum(a.nbytes for a in arrays.values()) + SLACK_BYTES,
                              "the layer's arrays are smaller, so they do not fit this module"):
            module = from_config(config["module"])
        module.load_state_dict(arrays)
        return cls(module)


class Folded(PackedOp):
    """A batch norm folded into the binary layer before it: passes its input through."""

    kind = "folded"

    def forward(self, x):
        return x

    @classmethod
    def build(cls, config: dict, arrays: dict[str, np.ndarray]) -> "Folded":
        return cls()


class QuantizedLayer(PackedOp):
    """A k-bit or mixed-precision QDense / QConv2d with its weights stored already quantized."""

    kind = "quantized"

    def __init__(self, layer: str, act_bit: int, weight: np.ndarray, alpha=None, bias=None,
                 stride=(1, 1), padding=(0, 0), pad_value: int = 0) -> None:
        super().__init__()
        self.layer, self.act_bit, self.weight, self.alpha, self.bias = layer, act_bit, weight, alpha, bias
        self.stride, self.padding, self.pad_value = tuple(stride), tuple(padding), pad_value

    def forward(self, x):
        x = _floats(x, self)
        if x.ndim < 2 or x.shape[1] != self.weight.shape[1]:
            raise self.fail(f"expects {self.weight.shape[1]} input channels/features, got input {tuple(x.shape)}")
        with no_grad():  # the same calls as QDense.forward / QConv2d.forward
            xq = _quantize_input(Tensor(x), self.act_bit)
            w = Tensor(self.placed(self.weight))
            if self.layer == "dense":
                y = F.linear(xq, w)
            elif self.pad_value == 0:
                y = F.conv2d(xq, w, stride=self.stride, padding=self.padding)
            else:
                y = F.conv2d(F.pad2d(xq, self.padding, self.pad_value), w, stride=self.stride)
            shape = (1, -1) + (1,) * (y.ndim - 2)
            if self.alpha is not None:
                y = y * Tensor(self.placed(self.alpha)).reshape(shape)
            if self.bias is not None:
                y = y + Tensor(self.placed(self.bias)).reshape(shape)
        return y.data

    def config(self) -> dict[str, Any]:
        return {"layer": self.layer, "act_bit": self.act_bit, "stride": list(self.stride),
                "padding": list(self.padding), "pad_value": self.pad_value}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"weight": self.weight}
        out.update({k: v for k, v in (("alpha", self.alpha), ("bias", self.bias)) if v is not None})
        return out

    @classmethod
    def build(cls, config: dict, arrays: dict[str, np.ndarray]) -> "QuantizedLayer":
        if config["layer"] not in ("dense", "conv"):
            raise ValueError(f"layer must be 'dense' or 'conv', got {config['layer']!r}")
        return cls(config["layer"], _config_int(config, "act_bit", 1, 32), arrays["weight"], arrays.get("alpha"),
                   arrays.get("bias"), _config_pair(config, "stride", 1), _config_pair(config, "padding", 0),
                   _config_pad_value(config))


class Epilogue(NamedTuple):
    """What a binary layer does after the popcount, per output channel (None: that step is absent).

    float output: y = dot * scale + bias (fused in the kernel), then y * post_scale + post_shift;
    bits output: bit = (dot >= threshold) != flip, which equals sign of the float output.
    """

    scale: Any = None
    bias: Any = None
    post_scale: Any = None
    post_shift: Any = None
    threshold: Any = None
    flip: Any = None

    def arrays(self) -> dict[str, np.ndarray]:
        return _present(self)


class _BinaryOp(PackedOp):
    """Shared parts of BinaryDense and BinaryConv2d."""

    def __init__(self, weight_bits: np.ndarray, in_channels: int, epilogue: Epilogue) -> None:
        super().__init__()
        self.weight_bits, self.in_channels, self.epilogue = weight_bits, int(in_channels), epilogue
        self._check_weights()

    def _check_weights(self) -> None:
        _check_packed("weight_bits", self.weight_bits, self.in_channels, self.weight_ndim, "packed weights")

    @property
    def out_channels(self) -> int:
        return int(self.weight_bits.shape[0])

    @property
    def emits_bits(self) -> bool:
        return self.epilogue.threshold is not None

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight_bits": self.weight_bits, **self.epilogue.arrays()}

    def forward(self, x):
        if isinstance(x, Planes):
            raise self.fail("received bit planes; only a bit-serial layer can take them")
        try:
            return self._run(x.data if isinstance(x, Tensor) else x)
        except ValueError as exc:  # a kernel's argument check: name the layer
            if str(exc).startswith("layer "):
                raise
            raise self.fail(str(exc)) from None

    def _bits_in(self, x: Bits, ndim: int) -> Any:
        if x.channels != self.in_channels or x.words.ndim != ndim:
            raise self.fail(f"expects {self.in_channels} packed channels, got {x.channels} in {x.words.shape}")
        return x.words

    def _finish(self, y):
        """The array part of the float epilogue (post-scale/shift) on channels-last output."""
        e = self.epilogue
        if e.post_scale is not None:
            y = y * self.placed(e.post_scale) + self.placed(e.post_shift)
        return y

    def _float_epilogue(self):
        e, xp = self.epilogue, backend.xp()
        if e.scale is not None:
            return self.placed(e.scale), self.placed(e.bias)
        return xp.ones(self.out_channels, np.float32), xp.zeros(self.out_channels, np.float32)

    def _threshold(self):
        return self.placed(self.epilogue.threshold), self.placed(self.epilogue.flip)


class BinaryDense(_BinaryOp):
    """A binary QDense: packed (O, ceil(K/64)) weights, xnor_gemm with the folded epilogue."""

    kind = "binary_dense"
    weight_ndim = 2  # (O, ceil(K/64))

    def _run(self, x):
        kernels = backend.kernels()
        if isinstance(x, Bits):
            a = self._bits_in(x, 2)
        else:
            if x.ndim != 2 or x.shape[1] != self.in_channels:
                raise self.fail(f"expects input (N, {self.in_channels}), got {tuple(x.shape)}")
            a = kernels.pack_bits(x, axis=1)
        xp, n, weights = backend.xp(), a.shape[0], self.placed(self.weight_bits)
        # tails: the weights' were checked in __init__, the input's come from a packer
        if self.emits_bits:
            out = xp.empty((n, kernels.n_words(self.out_channels)), np.uint64)
            kernels.xnor_gemm_threshold(a, weights, self.in_channels, *self._threshold(), out, check_tails=False)
            return Bits(out, self.out_channels)
        out = xp.empty((n, self.out_channels), np.float32)
        kernels.xnor_gemm_affine(a, weights, self.in_channels, *self._float_epilogue(), out, check_tails=False)
        return self._finish(out)

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_channels}

    @classmethod
    def build(cls, config: dict, arrays: dict[str, np.ndarray]) -> "BinaryDense":
        return cls(arrays["weight_bits"], _config_int(config, "in_features", 1), _epilogue_from(Epilogue, arrays))


class BinaryConv2d(_BinaryOp):
    """A binary QConv2d: packed (O, kh, kw, ceil(C/64)) weights, binary_conv2d with the folded epilogue."""

    kind = "binary_conv2d"
    weight_ndim = 4  # (O, kh, kw, ceil(C/64))

    def __init__(self, weight_bits: np.ndarray, in_channels: int, epilogue: Epilogue, stride=(1, 1),
                 padding=(0, 0), pad_value: int = 0) -> None:
        super().__init__(weight_bits, in_channels, epilogue)
        self.stride, self.padding, self.pad_value = tuple(stride), tuple(padding), int(pad_value)
        object.__setattr__(self, "_corrections", {})  # (backend, H, W) -> zero-padding correction

    def _correction(self, kernels, hw):
        if self.pad_value != 0:
            return None
        key = (kernels.name, *hw)
        if key not in self._corrections:
            self._corrections[key] = kernels.conv_pad_correction(self.placed(self.weight_bits), self.in_channels,
                                                                 hw, self.stride, self.padding)
        return self._corrections[key]

    def _run(self, x):
        kernels = backend.kernels()
        if isinstance(x, Bits):
            words = self._bits_in(x, 4)
        else:
            if x.ndim != 4 or x.shape[1] != self.in_channels:
                raise self.fail(f"expects input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
            words = kernels.pack_bits(x.transpose(0, 2, 3, 1), axis=-1)  # channels-last words
        n, h, w, _ = words.shape
        kh, kw = self.weight_bits.shape[1:3]
        oh, ow = kernels.conv_output_hw((h, w), (kh, kw), self.stride, self.padding)
        if oh < 1 or ow < 1:
            raise self.fail(f"input {h}x{w} is smaller than the kernel {kh}x{kw} with padding {self.padding}")
        args = (words, self.placed(self.weight_bits), self.in_channels, self.stride, self.padding, self.pad_value)
        xp, corr = backend.xp(), self._correction(kernels, (h, w))
        if self.emits_bits:  # tails: as in BinaryDense
            out = xp.empty((n, oh, ow, kernels.n_words(self.out_channels)), np.uint64)
            kernels.binary_conv2d_threshold(*args, *self._threshold(), out, corr, check_tails=False)
            return Bits(out, self.out_channels)
        out = xp.empty((n, oh, ow, self.out_channels), np.float32)
        kernels.binary_conv2d_affine(*args, *self._float_epilogue(), out, corr, check_tails=False)
        return self._finish(out).transpose(0, 3, 1, 2)  # NCHW view of channels-last memory

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "stride": list(self.stride), "padding": list(self.padding),
                "pad_value": self.pad_value}

    @classmethod
    def build(cls, config: dict, arrays: dict[str, np.ndarray]) -> "BinaryConv2d":
        return cls(arrays["weight_bits"], _config_int(config, "in_channels", 1), _epilogue_from(Epilogue, arrays),
                   _config_pair(config, "stride", 1), _config_pair(config, "padding", 0), _config_pad_value(config))


class Planes(NamedTuple):
    """Packed k-bit activations: ``bits`` bit planes of the levels, uint64 words along the channel axis."""

    words: Any  # (bits, N, ceil(C/64)) for dense layers, (bits, N, H, W, ceil(C/64)) for convolutions
    channels: int
    bits: int


class KbitEpilogue(NamedTuple):
    """What a bit-serial layer does after its integer dot D, per output channel (None: absent).

    float output: y = float32(D) / ((2^a - 1)(2^b - 1)), then * alpha, + bias, then a folded batch
    norm y * post_scale + post_shift: the float simulation's steps in its order. planes output: the
    next layer's levels, level = the number of thresholds[o] that D passes (D >= t where rising[o],
    else D <= t; minibnn.backend.bitserial.levels_from_thresholds), which equals the simulation's
    round(clip(y, 0, 1) * (2^a' - 1)) for every possible D.
    """

    alpha: Any = None
    bias: Any = None
    post_scale: Any = None
    post_shift: Any = None
    thresholds: Any = None
    rising: Any = None

    def arrays(self) -> dict[str, np.ndarray]:
        return _present(self)

    def values(self, dot, act_bit: int, weight_bit: int, place=lambda a: a):
        """The float output of the integer dots (channels last), each step rounded to float32 in the
        simulation's order; ``place`` puts a per-channel array where ``dot`` lives."""
        y = dot.astype(np.float32) / np.float32((2**act_bit - 1) * (2**weight_bit - 1))
        for name, step in (("alpha", operator.mul), ("bias", operator.add), ("post_scale", operator.mul),
                           ("post_shift", operator.add)):
            a = getattr(self, name)
            if a is not None:
                y = step(y, place(a))
        return y


class _BitSerialOp(PackedOp):
    """Shared parts of BitSerialDense and BitSerialConv2d: a k-bit Q-layer on bit planes (issue 13).

    The input is quantized to integer levels q = round(clip(x, 0, 1) * (2^a - 1)) exactly as the
    float simulation's quantize_activation does and packed into ``act_bit`` planes (or arrives as
    the planes of the layer before), then multiplied with the ``weight_bit`` planes of the weight
    levels r (DoReFa: w = (2r - (2^b - 1)) / (2^b - 1)) by minibnn.backend.bitserial, exactly in
    integers. The simulation's k-bit layers compute the same integer sums (functional.kbit_linear),
    so the epilogue (KbitEpilogue) gives its values bit for bit.
    """

    weight_ndim = 3  # (b, O, ceil(K/64)); 5 for convolutions

    def __init__(self, weight_planes: np.ndarray, in_channels: int, act_bit: int,
                 epilogue: KbitEpilogue = KbitEpilogue()) -> None:
        super().__init__()
        self.weight_planes, self.in_channels, self.act_bit = weight_planes, int(in_channels), int(act_bit)
        self.epilogue = epilogue
        ref.check_int("act_bit", act_bit, 2, bitserial.MAX_BITS)
        _check_packed("weight_planes", weight_planes, self.in_channels, self.weight_ndim, "bit planes of the weights")
        if not 1 <= weight_planes.shape[0] <= bitserial.MAX_BITS:
            raise ValueError(f"weight_planes must hold 1 to {bitserial.MAX_BITS} planes, got {weight_planes.shape[0]}")
        object.__setattr__(self, "_offsets", {})  # input geometry -> the weight-only term (host, int32)

    def _offset(self, key, compute):
        """The bit-serial weight-only term for this input geometry: computed once on the host (no GPU
        sync), then copied to the backend once like the other stored arrays."""
        if key not in self._offsets:
            self._offsets[key] = compute()
        return self.placed(self._offsets[key])

    @property
    def weight_bit(self) -> int:
        return int(self.weight_planes.shape[0])

    @property
    def out_channels(self) -> int:
        return int(self.weight_planes.shape[1])

    @property
    def planes_out(self) -> int:
        """The bit planes this layer emits for the next one (0: a float output)."""
        t = self.epilogue.thresholds
        return 0 if t is None else max(1, int(t.shape[1]).bit_length())

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight_planes": self.weight_planes, **self.epilogue.arrays()}

    def _planes_in(self, x, axis: int):
        """The input's activation planes: received from the layer before, or quantized and packed."""
        if isinstance(x, Planes):
            if x.channels != self.in_channels or x.bits != self.act_bit:
                raise ValueError(f"expects {self.act_bit}-bit planes of {self.in_channels} channels, got "
                                 f"{x.bits}-bit planes of {x.channels}")
            return x.words
        xp = backend.get_array_module(x)
        levels = xp.round(xp.clip(x.astype(np.float32, copy=False), 0, 1) * (2**self.act_bit - 1))
        levels = xp.nan_to_num(levels, copy=False, nan=0.0)  # NaN input: level 0 (the simulation keeps NaN)
        return bitserial.pack_planes(levels if axis == 1 else levels.transpose(0, 2, 3, 1), self.act_bit,
                                     axis=axis, check=False)

    def _finish(self, dot):
        """The epilogue on the integer dots (channels last): float32 values, or the next layer's planes."""
        e = self.epilogue
        if e.thresholds is not None:
            levels = bitserial.levels_from_thresholds(dot, self.placed(e.thresholds), self.placed(e.rising))
            bits = self.planes_out
            return Planes(bitserial.pack_planes(levels, bits, axis=-1, check=False), self.out_channels, bits)
        return e.values(dot, self.act_bit, self.weight_bit, self.placed)

    def forward(self, x):
        if not isinstance(x, Planes):
            x = _floats(x, self)
        try:
            return self._run(x)
        except ValueError as exc:
            raise self.fail(str(exc)) from None

    @classmethod
    def _from(cls, config: dict, arrays: dict[str, np.ndarray], **extra) -> "_BitSerialOp":
        inputs = "in_channels" if cls.weight_ndim == 5 else "in_features"
        epilogue = _epilogue_from(KbitEpilogue, arrays)
        return cls(arrays["weight_planes"], _config_int(config, inputs, 1), _config_int(config, "act_bit", 2, bitserial.MAX_BITS),
                   epilogue, **extra)


class BitSerialDense(_BitSerialOp):
    """A k-bit QDense (act_bit 2..8, weight_bit 1..8): weight bit planes, a bit-serial GEMM."""

    kind = "bitserial_dense"

    def _run(self, x):
        if not isinstance(x, Planes) and (x.ndim != 2 or x.shape[1] != self.in_channels):
            raise ValueError(f"expects input (N, {self.in_channels}), got {tuple(x.shape)}")
        planes = self._planes_in(x, axis=1)
        out = backend.xp().empty((planes.shape[1], self.out_channels), np.int32)
        offset = self._offset((), lambda: bitserial.gemm_offset(self.weight_planes, self.in_channels, self.act_bit,
                                                                table=ref))
        bitserial.bitserial_gemm(planes, self.placed(self.weight_planes), self.in_channels, out, check_tails=False,
                                 offset=offset)
        return self._finish(out)

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_channels, "act_bit": self.act_bit}

    @classmethod
    def build(cls, config: dict, arrays: dict[str, np.ndarray]) -> "BitSerialDense":
        return cls._from(config, arrays)


class BitSerialConv2d(_BitSerialOp):
    """A k-bit QConv2d (act_bit 2..8, weight_bit 1..8): weight bit planes (b, O, kh, kw, ceil(C/64)),
    a bit-serial convolution on channel-packed activation planes, all three pad values exact."""

    kind = "bitserial_conv2d"
    weight_ndim = 5

    def __init__(self, weight_planes: np.ndarray, in_channels: int, act_bit: int,
                 epilogue: KbitEpilogue = KbitEpilogue(), stride=(1, 1), padding=(0, 0), pad_value: int = 0) -> None:
        super().__init__(weight_planes, in_channels, act_bit, epilogue)
        self.stride, self.padding, self.pad_value = tuple(stride), tuple(padding), int(pad_value)

    def _run(self, x):
        if not isinstance(x, Planes) and (x.ndim != 4 or x.shape[1] != self.in_channels):
            raise ValueError(f"expects input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        planes = self._planes_in(x, axis=-1)
        n, h, w = planes.shape[1:4]
        kh, kw = self.weight_planes.shape[2:4]
        oh, ow = ref.conv_output_hw((h, w), (kh, kw), self.stride, self.padding)
        if oh < 1 or ow < 1:
            raise ValueError(f"input {h}x{w} is smaller than the kernel {kh}x{kw} with padding {self.padding}")
        out = backend.xp().empty((n, oh, ow, self.out_channels), np.int32)
        offset = self._offset((h, w), lambda: bitserial.conv_offset(
            self.weight_planes, self.act_bit, self.in_channels, (h, w), self.stride, self.padding, self.pad_value,
            table=ref))
        bitserial.bitserial_conv2d(planes, self.placed(self.weight_planes), self.in_channels, self.stride,
                                   self.padding, self.pad_value, out, check_tails=False, offset=offset)
        y = self._finish(out)
        return y if isinstance(y, Planes) else y.transpose(0, 3, 1, 2)  # NCHW view of channels-last memory

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "act_bit": self.act_bit, "stride": list(self.stride),
                "padding": list(self.padding), "pad_value": self.pad_value}

    @classmethod
    def build(cls, config: dict, arrays: dict[str, np.ndarray]) -> "BitSerialConv2d":
        return cls._from(config, arrays, stride=_config_pair(config, "stride", 1),
                         padding=_config_pair(config, "padding", 0), pad_value=_config_pad_value(config))


def _epilogue_from(cls: type, arrays: dict[str, np.ndarray]):
    """An Epilogue or KbitEpilogue of the arrays stored under its field names (absent ones None)."""
    return cls(**{k: arrays.get(k) for k in cls._fields})


OPS: dict[str, type[PackedOp]] = {cls.kind: cls for cls in (FloatLayer, Folded, QuantizedLayer, BinaryDense,
                                                            BinaryConv2d, BitSerialDense, BitSerialConv2d)}
