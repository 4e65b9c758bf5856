"""minibnn: binary and quantized neural networks from scratch (NumPy autograd, popcount kernels)."""
from minibnn import backend, functional, nn, quantize, random
from minibnn.autograd import Function, Tensor, is_grad_enabled, no_grad
from minibnn.io import load, save
from minibnn import data, models, optim, train  # noqa: E402  (after the core they build on)
from minibnn import deploy  # noqa: E402
from minibnn.summary import summary  # noqa: E402  (the function; the module is minibnn.summary's source)
from minibnn.backend import use, using
from minibnn.random import manual_seed

__version__ = "0.1.0"

__all__ = [
    "Function", "Tensor", "backend", "data", "deploy", "functional", "is_grad_enabled", "load", "manual_seed",
    "nn", "models", "no_grad", "optim", "save", "summary", "train", "quantize", "random", "use", "using",
    "__version__",
]
