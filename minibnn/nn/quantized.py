"""Drop-in quantized layers (BMXNet's QActivation, QConvolution, QFullyConnected).

A Q-layer quantizes its own input (``act_bit``) and its weights (``weight_bit``) as
DESIGN.md says; 32 bits means float. When both are 1 bit the forward pass runs on the
backend's xnor/popcount kernels (minibnn.functional.binary), exactly equal to the float
simulation; the backward pass is the straight-through float one. With 1-bit weights the latent float weights are
kept, trained and clipped to [-1, 1] after each optimizer step (Parameter.clip).
"""
from __future__ import annotations

from minibnn import functional as F
from minibnn import quantize as Q
from minibnn.autograd import Tensor
from minibnn.functional.binary import kbit_conv2d, kbit_linear, xnor_conv2d, xnor_linear
from minibnn.nn import arguments as A
from minibnn.nn import init
from minibnn.nn.module import Module, Parameter

PAD_VALUES = (0, 1, -1)
SCALING_MODES = (None, "channel")


def _scaling_mode(scaling, owner: str):
    """Normalise ``scaling`` (None/False: off; True/'channel': per-output-channel alpha)."""
    if scaling is None or scaling is False:
        return None
    if scaling is True or scaling == "channel":
        return "channel"
    raise ValueError(f"{owner}: scaling must be None, False, True or 'channel', got {scaling!r}")


def _quantize_input(x, act_bit: int, clip: float | None = 1.0, approx: bool = False) -> Tensor:
    if act_bit == 1 and approx:
        return Q.approx_sign(x)
    return Q.quantize_activation(x, act_bit, clip)


def _alpha(weight: Parameter):
    """XNOR-Net scale per output channel: mean |W| over everything but axis 0 (gradient stopped)."""
    w = weight.data
    axes = tuple(range(1, w.ndim))
    return abs(w).mean(axis=axes)


class QActivation(Module):
    """Quantize activations: 1 bit = sign with a clipped straight-through gradient."""

    def __init__(self, act_bit: int = 1, clip: float | None = 1.0, approx: bool = False) -> None:
        super().__init__()
        self.act_bit = Q.check_bits(act_bit, "act_bit", "QActivation")
        if clip is not None:
            clip = A.real("QActivation", "clip", clip, 0, open_lo=True)
        self.clip, self.approx = clip, A.flag("QActivation", "approx", approx)

    def forward(self, x: Tensor) -> Tensor:
        return _quantize_input(x, self.act_bit, self.clip, self.approx)


class _QLayer(Module):
    """Shared parts of QDense and QConv2d."""

    def _setup_bits(self, act_bit, weight_bit, scaling) -> None:
        owner = type(self).__name__
        self.act_bit = Q.check_bits(act_bit, "act_bit", owner)
        self.weight_bit = Q.check_bits(weight_bit, "weight_bit", owner)
        self.scaling = _scaling_mode(scaling, owner)

    @property
    def is_binary(self) -> bool:
        """True when both input and weights are 1 bit (the layer runs on popcount kernels)."""
        return self.act_bit == 1 and self.weight_bit == 1

    @property
    def is_bitserial(self) -> bool:
        """True for a k-bit layer the bit-serial popcount path takes: act_bit 2..8, weight_bit 1..8, and
        its integer sums K (2^a - 1)(2^b - 1) within int32; its forward pass is then exact in integers."""
        fan_in = self.weight.data.size // self.weight.shape[0]
        return (2 <= self.act_bit <= 8 and 1 <= self.weight_bit <= 8
                and fan_in * (2**self.act_bit - 1) * (2**self.weight_bit - 1) < 2**31)

    @property
    def in_size(self) -> int:
        """Input features (QDense) or channels (QConv2d)."""
        return int(self.weight.shape[1])

    @property
    def out_size(self) -> int:
        """Output features (QDense) or channels (QConv2d)."""
        return int(self.weight.shape[0])

    def quantized_weight(self) -> Tensor:
        """The weights as the forward pass uses them (sign, DoReFa k-bit or float)."""
        return Q.quantize_weight(self.weight, self.weight_bit)

    def _epilogue(self, y: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (y.ndim - 2)
        if self.scaling == "channel":
            y = y * _alpha(self.weight).reshape(shape)
        if self.bias is not None:
            y = y + self.bias.reshape(shape)
        return y


class QDense(_QLayer):
    """Fully connected layer on quantized input and weights."""

    def __init__(self, in_features: int, out_features: int, act_bit: int = 1, weight_bit: int = 1,
                 bias: bool = False, scaling=None) -> None:
        super().__init__()
        self._setup_bits(act_bit, weight_bit, scaling)
        in_features, out_features = A.count("QDense", "in_features", in_features), A.count("QDense", "out_features", out_features)
        A.flag("QDense", "bias", bias)
        self.in_features, self.out_features = in_features, out_features
        clip = 1.0 if self.weight_bit == 1 else None
        self.weight = Parameter(init.kaiming_uniform((out_features, in_features), in_features), clip=clip)
        self.bias = Parameter(init.bias_uniform(out_features, in_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        xq, wq = _quantize_input(x, self.act_bit), self.quantized_weight()
        if self.is_binary:
            y = xnor_linear(xq, wq)
        elif self.is_bitserial:
            y = kbit_linear(xq, wq, self.act_bit, self.weight_bit)
        else:
            y = F.linear(xq, wq)
        return self._epilogue(y)


class QConv2d(_QLayer):
    """2-D convolution on quantized input and weights; padding uses ``pad_value`` (0, +1 or -1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 act_bit: int = 1, weight_bit: int = 1, pad_value: float = 0, bias: bool = False,
                 scaling=None) -> None:
        super().__init__()
        self._setup_bits(act_bit, weight_bit, scaling)
        if isinstance(pad_value, bool) or pad_value not in PAD_VALUES:
            raise ValueError(f"QConv2d: pad_value must be one of {PAD_VALUES}, got {pad_value!r}")
        in_channels = A.count("QConv2d", "in_channels", in_channels)
        out_channels = A.count("QConv2d", "out_channels", out_channels)
        kh, kw = A.pair("QConv2d", "kernel_size", kernel_size, 1)
        A.pair("QConv2d", "stride", stride, 1), A.flag("QConv2d", "bias", bias)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.padding, self.pad_value = stride, A.pair("QConv2d", "padding", padding, 0), pad_value
        fan_in = in_channels * kh * kw
        clip = 1.0 if self.weight_bit == 1 else None
        self.weight = Parameter(init.kaiming_uniform((out_channels, in_channels, kh, kw), fan_in), clip=clip)
        self.bias = Parameter(init.bias_uniform(out_channels, fan_in)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        xq = _quantize_input(x, self.act_bit)
        if self.is_binary:  # packed bits on the backend's popcount kernels, exact
            y = xnor_conv2d(xq, self.quantized_weight(), self.stride, self.padding, self.pad_value)
        elif self.is_bitserial:  # exact integer sums, as the packed bit-serial layer computes them
            y = kbit_conv2d(xq, self.quantized_weight(), self.act_bit, self.weight_bit, self.stride, self.padding,
                            self.pad_value)
        elif self.pad_value == 0:
            y = F.conv2d(xq, self.quantized_weight(), stride=self.stride, padding=self.padding)
        else:  # pad the quantized input with +-1 before a padding-free convolution
            xq = F.pad2d(xq, self.padding, self.pad_value)
            y = F.conv2d(xq, self.quantized_weight(), stride=self.stride)
        return self._epilogue(y)
