"""Deployment: the converter, the packed model files and the packed inference engine.

``convert(model)`` -> ``PackedModel`` (binary layers with 1 bit per weight as uint64 words, batch
norms folded, integer thresholds where the next layer binarizes again); ``PackedModel.predict(x)``
runs it on the current backend's kernels and equals the model's output in evaluation mode; ``save`` / ``load``
write and read ``binarized_<name>.json`` + ``.npz`` (no pickle, every array checked).
"""
from minibnn.deploy.convert import convert, fold_plan
from minibnn.deploy.export_c import ExportError, export_c
from minibnn.deploy.fileformat import load, save
from minibnn.deploy.model import PackedModel
from minibnn.deploy.ops import Bits

__all__ = ["Bits", "ExportError", "PackedModel", "convert", "export_c", "fold_plan", "load", "save"]
