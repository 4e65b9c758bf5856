"""The backend switch: which kernel table and array module the library uses.

A backend is a module with one flat function table (``pack_bits``, ``xnor_gemm``, ...)
and an array module ``xp`` (NumPy or CuPy). ``numpy`` is the reference and always
exists; ``native`` (C, cffi) and ``cuda`` (CuPy) are loaded on demand.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from types import ModuleType

import numpy

# name -> module path; a backend that fails to import is reported, never silently used
_MODULES = {
    "numpy": "minibnn.backend.numpy_ref",
    "native": "minibnn.backend.native",
    "cuda": "minibnn.backend.cuda",
}
_loaded: dict[str, ModuleType] = {}
_errors: dict[str, str] = {}
_current: str | None = None


class BackendUnavailable(RuntimeError):
    """A backend was asked for but cannot run here (the message says why and the fix)."""


def _load(name: str) -> ModuleType:
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; valid choices: {sorted(_MODULES)}")
    if name in _loaded:
        return _loaded[name]
    try:
        module = importlib.import_module(_MODULES[name])
        check = getattr(module, "check_available", None)
        if check is not None:
            check()
    except (ImportError, BackendUnavailable, OSError) as exc:
        _errors[name] = str(exc) or type(exc).__name__
        raise BackendUnavailable(f"backend {name!r} is not available: {_errors[name]}") from exc
    _loaded[name] = module
    return module


def available() -> list[str]:
    """Names of the backends that can run on this machine."""
    names = []
    for name in _MODULES:
        try:
            _load(name)
            names.append(name)
        except BackendUnavailable:
            pass
    return names


def _default() -> str:
    env = os.environ.get("MINIBNN_BACKEND")
    if env:
        return env
    try:
        _load("native")
        return "native"
    except BackendUnavailable:
        return "numpy"


def use(name: str) -> None:
    """Make ``name`` ('numpy', 'native' or 'cuda') the current backend."""
    global _current
    _load(name)
    _current = name


@contextlib.contextmanager
def using(name: str) -> Iterator[None]:
    """Context manager: run the block on backend ``name``, then restore the previous one."""
    previous = current()
    use(name)
    try:
        yield
    finally:
        use(previous)


def current() -> str:
    """Name of the current backend."""
    global _current
    if _current is None:
        _current = _default()
        _load(_current)
    return _current


def kernels() -> ModuleType:
    """The current backend's function table."""
    return _load(current())


def xp() -> ModuleType:
    """The current backend's array module (numpy or cupy)."""
    return kernels().xp


def is_device_array(a) -> bool:
    """True for a GPU (CuPy) array."""
    return type(a).__module__.startswith("cupy")


def get_array_module(*arrays) -> ModuleType:
    """The array module that owns these arrays (cupy for CuPy arrays, else numpy)."""
    for a in arrays:
        if is_device_array(a):
            import cupy

            return cupy
    return numpy


def to_numpy(a) -> numpy.ndarray:
    """Copy a backend array to host memory as a NumPy array (no copy for NumPy input).

    For a CuPy array this waits for the GPU: the training loop does it once per step.
    """
    if is_device_array(a):
        return a.get()
    return numpy.asarray(a)


def to_backend(a, name: str | None = None):
    """``a`` as an array of backend ``name``'s array module (default: the current backend); no copy
    when it is there already."""
    return move_to(_load(name).xp if name is not None else xp(), a)


def move_to(array_module: ModuleType, a):
    """``a`` as an array of ``array_module`` (numpy or cupy), copied between host and GPU if needed."""
    if array_module is numpy:
        return to_numpy(a)
    return array_module.asarray(a)
