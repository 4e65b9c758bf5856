"""Layers and the Module base class."""
from minibnn.nn.layers import (
    AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dense, Dropout, Flatten, GlobalAvgPool2d, HardTanh,
    Identity, MaxPool2d, ReLU, Sequential, Tanh,
)
from minibnn.nn.module import Module, Parameter, from_config
from minibnn.nn.quantized import QActivation, QConv2d, QDense

__all__ = [
    "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "Dense", "Dropout", "Flatten",
    "GlobalAvgPool2d", "HardTanh", "Identity", "MaxPool2d", "Module", "Parameter", "QActivation",
    "QConv2d", "QDense", "ReLU", "Sequential", "Tanh", "from_config",
]
