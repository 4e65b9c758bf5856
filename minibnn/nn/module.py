"""Module and Parameter: the base of every layer and model.

Every Module subclass records the arguments it was built with, so a model can be
described as JSON (``to_config``) and rebuilt from that alone (``from_config``)
without pickling anything.
"""
from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from collections.abc import Iterator
from typing import Any

import numpy as np

from minibnn import backend
from minibnn.autograd import Tensor, as_array

_REGISTRY: dict[str, type["Module"]] = {}


class Parameter(Tensor):
    """A trainable tensor of a Module. ``clip`` bounds latent weights after each optimizer step."""

    def __init__(self, data: Any, clip: float | None = None) -> None:
        super().__init__(data, requires_grad=True)
        self.clip = clip


class Module:
    """Base class of layers and models (PyTorch-like: attributes register parameters and children)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording(cls.__init__)

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)
        if "_init_args" not in self.__dict__:  # a subclass without its own __init__
            object.__setattr__(self, "_init_args", {})

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before setting attributes")
        for table in (self._parameters, self._modules, self._buffers):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array: Any) -> None:
        """Register a non-trained array (e.g. running statistics) saved in the state_dict."""
        self.__setattr__(name, as_array(array))
        self._buffers[name] = True

    # ---- forward --------------------------------------------------------------------
    def forward(self, *args: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ---- traversal ------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """This module and all descendants, with dotted names."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        """This module and all descendants."""
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator["Module"]:
        """Direct sub-modules."""
        yield from self._modules.values()

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """All parameters with dotted names, each once."""
        seen: set[int] = set()
        for prefix, m in self.named_modules():
            for name, p in m._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self) -> list[Parameter]:
        """All parameters, each once."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, Any]]:
        """All buffers (raw arrays) with dotted names."""
        for prefix, m in self.named_modules():
            for name in m._buffers:
                yield (f"{prefix}.{name}" if prefix else name), getattr(m, name)

    # ---- modes ----------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Training mode (batch statistics, dropout on); returns self."""
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":  # safe: the PyTorch-style mode switch, not Python's eval
        """Evaluation mode (running statistics, dropout off); returns self."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Clear the gradients of all parameters."""
        for p in self.parameters():
            p.grad = None

    def astype(self, dtype) -> "Module":
        """Cast parameters and buffers to ``dtype`` in place (e.g. float64 for gradient checks)."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
        for prefix, m in self.named_modules():
            for name in m._buffers:
                object.__setattr__(m, name, getattr(m, name).astype(dtype))
        return self

    def to(self, backend_name: str | None = None) -> "Module":
        """Move parameters and buffers to ``backend_name``'s arrays (default: the current backend), in
        place, like PyTorch's ``model.to("cuda")``; returns self. Gradients are dropped; optimizer
        state made before the move stays where it was, so build the optimizer after ``to``."""
        for p in self.parameters():
            p.data, p.grad = backend.to_backend(p.data, backend_name), None
        for prefix, m in self.named_modules():
            for name in m._buffers:
                object.__setattr__(m, name, backend.to_backend(getattr(m, name), backend_name))
        return self

    # ---- state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers as NumPy arrays, by dotted name."""
        state = {name: p.numpy().copy() for name, p in self.named_parameters()}
        state.update({name: backend.to_numpy(b).copy() for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy arrays into parameters and buffers; shapes must match; strict: same names too."""
        targets = dict(self.named_parameters())
        buffers = dict(self.named_buffers())
        expected = set(targets) | set(buffers)
        if strict:
            missing, unexpected = expected - set(state), set(state) - expected
            if missing or unexpected:
                raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {sorted(missing)}, "
                               f"unexpected keys {sorted(unexpected)}")
        checked = []  # every array is checked before any is copied, so a failure changes nothing
        for name, value in state.items():
            if name not in expected:
                continue
            current = targets[name].data if name in targets else buffers[name]
            value = np.asarray(backend.to_numpy(value))
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(f"{type(self).__name__}.load_state_dict: {name} has shape {value.shape}, "
                                 f"the model expects {tuple(current.shape)}")
            if value.dtype.kind not in "fiub":
                raise ValueError(f"{type(self).__name__}.load_state_dict: {name} has dtype {value.dtype}, "
                                 "expected real numbers")
            checked.append((current, value))
        for current, value in checked:
            current[...] = backend.get_array_module(current).asarray(value, dtype=current.dtype)

    # ---- architecture as JSON ---------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable description {"type", "args"} from which from_config rebuilds the module."""
        return {"type": type(self).__name__, "args": {k: _encode(v) for k, v in self._init_args.items()}}

    def extra_repr(self) -> str:
        """Constructor arguments shown by repr()."""
        return ", ".join(f"{k}={v!r}" for k, v in self._init_args.items() if not _holds_module(v))

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


MAX_CONFIG_DEPTH = 64  # nested containers in an architecture (ResNet-18 needs 6)


def from_config(config: dict[str, Any]) -> Module:
    """Rebuild a module from ``to_config`` output (only registered Module classes are built).

    Every argument is checked against the constructor's type hints before anything is built (an
    int where an int belongs, a finite number where a float does, and so on), so a description
    read from a file fails with a ValueError naming the module and the argument, never another
    exception. The constructors check the ranges.
    """
    _check_depth(config)
    return _build(config, "")


def _build(config: Any, where: str) -> Module:
    if not isinstance(config, dict) or not isinstance(config.get("type"), str) or \
            not isinstance(config.get("args", {}), dict):
        raise ValueError(f"{where or 'architecture'}: not a module description: {str(config)[:200]}")
    cls = _REGISTRY.get(config["type"])
    if cls is None:
        raise ValueError(f"unknown module type {config['type']!r}; known types: {sorted(_REGISTRY)}")
    where = f"{where}.{cls.__name__}" if where else cls.__name__
    args = {k: _decode(v, f"{where}.{k}") for k, v in config.get("args", {}).items()}
    signature, hints = _signature(cls)
    positional: list[Any] = []
    for name, value in args.items():
        p = signature.parameters.get(name)
        if p is None or name == "self" or p.kind in (p.POSITIONAL_ONLY, p.VAR_KEYWORD):
            raise ValueError(f"{where}: unknown argument {name!r}")
        if p.kind is p.VAR_POSITIONAL:  # a *layers parameter (Sequential) is passed positionally
            if not isinstance(value, list):
                raise ValueError(f"{where}: {name} must be a list, got {type(value).__name__}")
            bad = [i for i, v in enumerate(value) if not _conforms(v, hints.get(name, Any))]
            if bad:
                raise ValueError(f"{where}: item {bad[0]} of {name} is {_kind(value[bad[0]])}")
            positional = value
        elif not _conforms(value, hints.get(name, Any)):
            raise ValueError(f"{where}: argument {name} must be {_describe(hints.get(name, Any))}, "
                             f"got {_kind(value)}")
    kwargs = {k: v for k, v in args.items() if signature.parameters[k].kind is not inspect.Parameter.VAR_POSITIONAL}
    try:
        return cls(*positional, **kwargs)
    except TypeError as exc:
        raise ValueError(f"cannot build {where} from arguments {str(args)[:300]}: {exc}") from None
    except ValueError as exc:
        message = str(exc)
        message = message[len(cls.__name__) + 2:] if message.startswith(f"{cls.__name__}: ") else message
        raise ValueError(f"{where}: {message}") from None


@functools.lru_cache(maxsize=None)
def _signature(cls: type) -> tuple[inspect.Signature, dict[str, Any]]:
    """A constructor's signature and resolved type hints (cached: building a model asks often)."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - a user's class with hints that do not resolve: constructor checks only
        hints = {}
    return inspect.signature(cls.__init__), hints


def _check_depth(config: Any) -> None:
    """Refuse descriptions nested deeper than MAX_CONFIG_DEPTH (checked without recursion)."""
    stack = [(config, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise ValueError(f"architecture nested deeper than {MAX_CONFIG_DEPTH} levels")
        if isinstance(value, dict):
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a decoded JSON value fits a constructor's type hint (unknown hints: any JSON value)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return _plain(value)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, h) for h in args)
    if origin in (tuple, list):
        if not isinstance(value, list):
            return False
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return all(_conforms(v, args[0] if args else Any) for v in value)
        return len(value) == len(args) and all(_conforms(v, h) for v, h in zip(value, args))
    if isinstance(hint, type) and issubclass(hint, Module):
        return isinstance(value, hint)
    if hint is tuple or hint is list:
        return isinstance(value, list) and all(_plain(v) for v in value)
    return _plain(value)


def _plain(value: Any) -> bool:
    """A JSON scalar (finite if a number), a module, or a list of those."""
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (bool, int, str, Module))


def _describe(hint: Any) -> str:
    names = {int: "an int", float: "a finite number", bool: "true or false", str: "a string"}
    if hint in names:
        return names[hint]
    return "of type " + (hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", ""))


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {str(value)[:60]}"


def _recording(init):
    """Wrap a subclass __init__ so the outermost call records its arguments in ``_init_args``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args: Any, **kwargs: Any) -> None:
        if "_init_args" not in self.__dict__:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            recorded = {k: v for k, v in list(bound.arguments.items())[1:]}
            for k, p in signature.parameters.items():
                if p.kind is inspect.Parameter.VAR_POSITIONAL:
                    recorded[k] = list(recorded.get(k, ()))
            object.__setattr__(self, "_init_args", recorded)
        init(self, *args, **kwargs)

    wrapper.__signature__ = signature
    return wrapper


def _holds_module(value: Any) -> bool:
    """True for a Module or a list of them (shown as children in repr, not as arguments)."""
    return isinstance(value, Module) or (isinstance(value, list) and any(isinstance(v, Module) for v in value))


def _encode(value: Any) -> Any:
    if isinstance(value, Module):
        return {"module": value.to_config()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot describe constructor argument {value!r} as JSON")


def _decode(value: Any, where: str = "") -> Any:
    if isinstance(value, dict):
        if set(value) != {"module"}:
            raise ValueError(f"{where}: an object argument must be {{\"module\": ...}}, got keys {sorted(value)[:5]}")
        return _build(value["module"], where)
    if isinstance(value, list):
        return [_decode(v, where) for v in value]
    return value
