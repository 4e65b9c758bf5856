"""The model zoo: binary LeNet, MLP, VGG-small and ResNet-18 (CIFAR and ImageNet stems; float first and last layer).

Each QConv2d / QDense binarizes its own input, so no separate QActivation precedes it.
"""
from __future__ import annotations

from minibnn.autograd import Tensor
from minibnn.nn.layers import (
    BatchNorm1d, BatchNorm2d, Conv2d, Dense, Flatten, GlobalAvgPool2d, Identity, MaxPool2d, ReLU,
    Sequential, Tanh,
)
from minibnn.nn import arguments as A
from minibnn.nn.module import Module
from minibnn.nn.quantized import QConv2d, QDense


def lenet(act_bit: int = 1, weight_bit: int = 1, channels: tuple[int, int] = (64, 64),
          hidden: int = 512, num_classes: int = 10, in_channels: int = 1) -> Sequential:
    """BMXNet's binary LeNet for 28x28 input: float conv1, binary conv2 and dense, float classifier."""
    c1, c2 = channels
    return Sequential(
        Conv2d(in_channels, c1, 5),                  # float first layer
        MaxPool2d(2), Tanh(), BatchNorm2d(c1),       # pool first: same result (tanh is monotonic), 4x less tanh
        QConv2d(c1, c2, 5, act_bit=act_bit, weight_bit=weight_bit),
        BatchNorm2d(c2), MaxPool2d(2),
        Flatten(), BatchNorm1d(c2 * 16),
        QDense(c2 * 16, hidden, act_bit=act_bit, weight_bit=weight_bit),
        BatchNorm1d(hidden), Tanh(),
        Dense(hidden, num_classes),                  # float last layer
    )


def binary_mlp(in_features: int = 784, hidden: tuple[int, ...] = (512, 512), num_classes: int = 10,
               act_bit: int = 1, weight_bit: int = 1) -> Sequential:
    """MLP: float first dense, binary hidden denses with batch norm, float classifier."""
    layers: list[Module] = [Flatten(), Dense(in_features, hidden[0]), BatchNorm1d(hidden[0])]
    for a, b in zip(hidden[:-1], hidden[1:]):
        layers += [QDense(a, b, act_bit=act_bit, weight_bit=weight_bit), BatchNorm1d(b)]
    layers += [Tanh(), Dense(hidden[-1], num_classes)]
    return Sequential(*layers)


def vgg_small(num_classes: int = 10, in_channels: int = 3, act_bit: int = 1, weight_bit: int = 1,
              width: int = 128, image_size: int = 32) -> Sequential:
    """VGG-small (as in LQ-Nets / Larq): float first conv, five binary 3x3 convs, float classifier."""
    w = width
    def qconv(cin: int, cout: int) -> list[Module]:
        return [QConv2d(cin, cout, 3, padding=1, act_bit=act_bit, weight_bit=weight_bit)]
    layers: list[Module] = [Conv2d(in_channels, w, 3, padding=1, bias=False), BatchNorm2d(w)]
    layers += qconv(w, w) + [MaxPool2d(2), BatchNorm2d(w)]
    layers += qconv(w, 2 * w) + [BatchNorm2d(2 * w)]
    layers += qconv(2 * w, 2 * w) + [MaxPool2d(2), BatchNorm2d(2 * w)]
    layers += qconv(2 * w, 4 * w) + [BatchNorm2d(4 * w)]
    layers += qconv(4 * w, 4 * w) + [MaxPool2d(2), BatchNorm2d(4 * w)]
    side = image_size // 8
    layers += [Flatten(), Dense(4 * w * side * side, num_classes)]
    return Sequential(*layers)


SHORTCUTS = ("float", "binary")


class BasicBlock(Module):
    """ResNet basic block with binary 3x3 convs (Bi-Real style: a shortcut around each conv).

    The downsampling shortcut is a 1x1 conv + batch norm: float (Bi-Real, Larq) or binary
    (``shortcut="binary"``, as BMXNet: the whole body binary, about 30x smaller packed).
    """

    fold_pairs = (("conv1", "bn1"), ("conv2", "bn2"))  # forward applies bnX to convX's output only

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 act_bit: int = 1, weight_bit: int = 1, shortcut: str = "float") -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"BasicBlock: shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        stride = A.count("BasicBlock", "stride", stride)
        bits = dict(act_bit=act_bit, weight_bit=weight_bit)
        self.conv1 = QConv2d(in_channels, out_channels, 3, stride=stride, padding=1, **bits)
        self.bn1 = BatchNorm2d(out_channels)
        self.conv2 = QConv2d(out_channels, out_channels, 3, padding=1, **bits)
        self.bn2 = BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            conv = (Conv2d(in_channels, out_channels, 1, stride=stride, bias=False) if shortcut == "float"
                    else QConv2d(in_channels, out_channels, 1, stride=stride, **bits))
            self.shortcut = Sequential(conv, BatchNorm2d(out_channels))
        else:
            self.shortcut = Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn1(self.conv1(x)) + self.shortcut(x)  # each QConv2d binarizes its own input
        return self.bn2(self.conv2(y)) + y


STEMS = ("cifar", "imagenet")


class ResNet(Module):
    """ResNet: float stem, binary basic blocks, float head.

    ``stem="cifar"``: a 3x3 conv + batch norm at full resolution (32x32 input). ``stem="imagenet"``:
    7x7 stride-2 conv, batch norm, ReLU, 3x3 stride-2 max-pool (224 -> 56), then one more batch
    norm: the first block binarizes its input, and the ReLU / max-pool output is >= 0 everywhere,
    which sign() would map to +1 everywhere (Larq's BinaryResNetE18 has the same batch norm).
    """

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3,
                 act_bit: int = 1, weight_bit: int = 1, width: int = 64, shortcut: str = "float",
                 stem: str = "cifar") -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"ResNet: stem must be one of {STEMS}, got {stem!r}")
        if not isinstance(blocks, (list, tuple)) or not blocks:
            raise ValueError(f"ResNet: blocks must be a non-empty list of block counts, got {blocks!r}")
        blocks = [A.count("ResNet", "blocks", b, 0, 64) for b in blocks]
        if len(blocks) > 8:
            raise ValueError(f"ResNet: at most 8 stages (the width doubles per stage), got {len(blocks)}")
        width = A.count("ResNet", "width", width, 1, 1 << 16)
        if stem == "cifar":
            self.stem = Sequential(Conv2d(in_channels, width, 3, padding=1, bias=False), BatchNorm2d(width))
        else:
            self.stem = Sequential(Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False), BatchNorm2d(width),
                                   ReLU(), MaxPool2d(3, stride=2, padding=1), BatchNorm2d(width))
        layers: list[Module] = []
        cin = width
        for stage, count in enumerate(blocks):
            cout = width * 2**stage
            for i in range(count):
                layers.append(BasicBlock(cin, cout, 2 if (i == 0 and stage > 0) else 1, act_bit, weight_bit,
                                         shortcut))
                cin = cout
        self.body = Sequential(*layers)
        self.head = Sequential(ReLU(), GlobalAvgPool2d(), Dense(cin, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(self.stem(x)))


def resnet18(num_classes: int = 10, in_channels: int = 3, act_bit: int = 1, weight_bit: int = 1,
             width: int = 64, shortcut: str = "binary", stem: str = "cifar") -> ResNet:
    """ResNet-18 (four stages of two basic blocks): binary body, float stem and head.

    ``shortcut="binary"`` (default) binarizes the three downsampling 1x1 convs too, as BMXNet did,
    so the packed model is about 30x smaller than float32; "float" keeps them float (Bi-Real).
    ``stem="cifar"`` (default) suits 32x32 images; ``stem="imagenet"`` is the 7x7 stride-2 conv and
    max-pool of the ImageNet ResNet (see ``resnet18_imagenet``).
    """
    return ResNet((2, 2, 2, 2), num_classes, in_channels, act_bit, weight_bit, width, shortcut, stem)


def resnet18_imagenet(num_classes: int = 1000, in_channels: int = 3, act_bit: int = 1, weight_bit: int = 1,
                      width: int = 64, shortcut: str = "binary") -> ResNet:
    """ImageNet ResNet-18 (224x224 input): float 7x7 stride-2 stem with max-pool, binary body, float head."""
    return resnet18(num_classes, in_channels, act_bit, weight_bit, width, shortcut, stem="imagenet")


MODELS = {"lenet": lenet, "binary_mlp": binary_mlp, "vgg_small": vgg_small, "resnet18": resnet18,
          "resnet18_imagenet": resnet18_imagenet}


def get_model(name: str, **kwargs) -> Module:
    """Build a zoo model by name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid choices: {sorted(MODELS)}")
    return MODELS[name](**kwargs)
