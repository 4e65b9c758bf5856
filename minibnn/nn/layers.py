"""Float layers: containers, dense, convolution, normalisation, pooling, activations."""
from __future__ import annotations

from typing import Any


from minibnn import functional as F
from minibnn.autograd import Tensor
from minibnn.nn import arguments as A
from minibnn.nn import init
from minibnn.nn.module import Module, Parameter


class Sequential(Module):
    """Apply layers in order."""

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: item {i} is {type(layer).__name__}, not a Module")
            setattr(self, str(i), layer)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x: Tensor) -> Tensor:
        for layer in self._modules.values():
            x = layer(x)
        return x


class Dense(Module):
    """Fully connected layer y = x @ W.T + b, W of shape (out, in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        in_features, out_features = A.count("Dense", "in_features", in_features), A.count("Dense", "out_features", out_features)
        A.flag("Dense", "bias", bias)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(init.kaiming_uniform((out_features, in_features), in_features))
        self.bias = Parameter(init.bias_uniform(out_features, in_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class Conv2d(Module):
    """2-D convolution over NCHW input, weights (out, in/groups, kh, kw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        in_channels, out_channels = A.count("Conv2d", "in_channels", in_channels), A.count("Conv2d", "out_channels", out_channels)
        kh, kw = A.pair("Conv2d", "kernel_size", kernel_size, 1)
        A.pair("Conv2d", "stride", stride, 1), A.pair("Conv2d", "padding", padding, 0)
        A.pair("Conv2d", "dilation", dilation, 1), A.flag("Conv2d", "bias", bias)
        groups = A.count("Conv2d", "groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: channels {in_channels}->{out_channels} not divisible by groups={groups}")
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        fan_in = in_channels // groups * kh * kw
        self.weight = Parameter(init.kaiming_uniform((out_channels, in_channels // groups, kh, kw), fan_in))
        self.bias = Parameter(init.bias_uniform(out_channels, fan_in)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _BatchNorm(Module):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__()
        owner = type(self).__name__
        num_features = A.count(owner, "num_features", num_features)
        eps, momentum = A.real(owner, "eps", eps, 0, 1, open_lo=True), A.real(owner, "momentum", momentum, 0, 1)
        A.flag(owner, "affine", affine)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(init.constant(num_features, 1.0)) if affine else None
        self.bias = Parameter(init.constant(num_features, 0.0)) if affine else None
        self.register_buffer("running_mean", init.constant(num_features, 0.0))
        self.register_buffer("running_var", init.constant(num_features, 1.0))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps)


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) input."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) input."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine)


def _check_pool(owner: str, kernel_size, stride, padding) -> None:
    kernel, pad = A.pair(owner, "kernel_size", kernel_size, 1), A.pair(owner, "padding", padding, 0)
    if stride is not None:
        A.pair(owner, "stride", stride, 1)
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(f"{owner}: padding {padding} must be at most half the kernel size {kernel_size}")


class MaxPool2d(Module):
    """Max pooling (stride defaults to kernel_size)."""

    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        _check_pool(type(self).__name__, kernel_size, stride, padding)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(Module):
    """Average pooling (stride defaults to kernel_size)."""

    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        _check_pool(type(self).__name__, kernel_size, stride, padding)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C) spatial mean."""

    def forward(self, x: Tensor) -> Tensor:
        return F.global_avg_pool2d(x)


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def forward(self, x: Tensor) -> Tensor:
        return F.flatten(x)


class Dropout(Module):
    """Inverted dropout with probability p (off in eval mode)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        p = A.real("Dropout", "p", p, 0, 1)
        if p == 1:
            raise ValueError("Dropout: p must be in [0, 1), got 1")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class HardTanh(Module):
    """clip(x, min_val, max_val)."""

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0) -> None:
        super().__init__()
        min_val, max_val = A.real("HardTanh", "min_val", min_val), A.real("HardTanh", "max_val", max_val)
        if not min_val < max_val:
            raise ValueError(f"HardTanh: min_val must be below max_val, got {min_val} and {max_val}")
        self.min_val, self.max_val = min_val, max_val

    def forward(self, x: Tensor) -> Tensor:
        return F.hardtanh(x, self.min_val, self.max_val)


class Tanh(Module):
    """Hyperbolic tangent."""

    def forward(self, x: Tensor) -> Tensor:
        return F.tanh(x)


class Identity(Module):
    """Returns its input."""

    def forward(self, x: Any) -> Any:
        return x
