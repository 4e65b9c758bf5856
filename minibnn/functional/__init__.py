"""Differentiable operations (import as ``F``): one Function class + a lowercase wrapper each."""
from minibnn.functional.activation import hardtanh, log_softmax, relu, sigmoid, softmax, tanh
from minibnn.functional.binary import kbit_conv2d, kbit_linear, xnor_conv2d, xnor_linear
from minibnn.functional.conv import conv2d
from minibnn.functional.dropout import dropout
from minibnn.functional.linear import linear
from minibnn.functional.loss import cross_entropy
from minibnn.functional.math import abs, add, div, exp, log, matmul, max, mean, mul, neg, power, sub, sum
from minibnn.functional.norm import batch_norm
from minibnn.functional.pooling import avg_pool2d, global_avg_pool2d, max_pool2d
from minibnn.functional.shape import flatten, getitem, pad2d, reshape, transpose

__all__ = [
    "abs", "add", "avg_pool2d", "batch_norm", "conv2d", "cross_entropy", "div", "dropout", "exp",
    "flatten", "getitem", "global_avg_pool2d", "hardtanh", "kbit_conv2d", "kbit_linear", "linear", "log",
    "log_softmax", "matmul",
    "max", "max_pool2d", "mean", "mul", "neg", "pad2d", "power", "relu", "reshape", "sigmoid",
    "softmax", "sub", "sum", "tanh", "transpose", "xnor_conv2d", "xnor_linear",
]
