"""``minibnn.models``: the model zoo (defined in minibnn.nn.models)."""
from minibnn.nn.models import (MODELS, BasicBlock, ResNet, binary_mlp, get_model, lenet, resnet18, resnet18_imagenet,
                               vgg_small)

__all__ = ["MODELS", "BasicBlock", "ResNet", "binary_mlp", "get_model", "lenet", "resnet18", "resnet18_imagenet",
           "vgg_small"]
