"""Optimizers (SGD, Adam, AdamW, Bop) and learning-rate schedules.

An optimizer updates ``p.data`` in place from ``p.grad`` and then clips the latent weights
of binary layers (``p.clip`` not None) to [-clip, clip] (BinaryConnect). State is kept as
backend arrays; ``state_dict()`` returns plain JSON scalars plus NumPy arrays, so a
checkpoint never needs pickle. A schedule sets ``optimizer.lr`` once per ``step()``; the
caller decides whether a step is a batch or an epoch.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from minibnn import backend
from minibnn.nn.module import Module, Parameter


class Optimizer:
    """Base class: holds the parameters, ``lr``, per-parameter state and the step count."""

    SLOTS: tuple[str, ...] = ()  # names of the per-parameter state arrays

    def __init__(self, params: Iterable[Parameter], lr: float) -> None:
        self.params = _unique(params, type(self).__name__)
        self.lr = float(lr)
        self.step_count = 0  # calls to step()
        self.param_steps = [0] * len(self.params)  # updates of each parameter (grad not None)
        self.state: list[dict[str, Any]] = [{} for _ in self.params]  # slot name -> backend array

    def step(self) -> None:
        """Update every parameter that has a gradient, then clip those with ``clip``."""
        self.step_count += 1
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            self.param_steps[i] += 1
            self._update(i, p, p.grad)
            if p.clip is not None:
                xp = backend.get_array_module(p.data)
                xp.clip(p.data, -p.clip, p.clip, out=p.data)

    def _update(self, i: int, p: Parameter, g: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Clear the gradients of all parameters."""
        for p in self.params:
            p.grad = None

    def _hyper(self) -> dict[str, Any]:
        """Hyperparameters of this optimizer (JSON scalars), saved and restored with the state."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """{"hyper": JSON-serialisable scalars, "arrays": {"<param_index>.<slot>": np.ndarray}}."""
        hyper = {"type": type(self).__name__, "lr": self.lr, "step_count": self.step_count,
                 "param_steps": list(self.param_steps), **self._hyper()}
        arrays = {f"{i}.{slot}": backend.to_numpy(a).copy()
                  for i, slots in enumerate(self.state) for slot, a in slots.items()}
        return {"hyper": hyper, "arrays": arrays}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; ValueError naming the entry on a mismatch (nothing changes then)."""
        self._checked(state)()

    def _checked(self, state: dict[str, Any]) -> Callable[[], None]:
        """Check ``state`` completely; return the function that restores it."""
        name = type(self).__name__
        if not isinstance(state, dict) or not isinstance(state.get("hyper"), dict) or \
                not isinstance(state.get("arrays"), dict):
            raise ValueError(f"{name}.load_state_dict: expected {{'hyper': {{...}}, 'arrays': {{...}}}}")
        hyper, arrays = state["hyper"], state["arrays"]
        if hyper.get("type", name) != name:
            raise ValueError(f"{name}.load_state_dict: the state is from a {str(hyper['type'])[:40]}")
        steps = hyper.get("param_steps")
        if not isinstance(steps, list) or len(steps) != len(self.params):
            raise ValueError(f"{name}.load_state_dict: param_steps must list one count per parameter "
                             f"({len(self.params)}), got {str(steps)[:60]}")
        steps = [_step_count(name, f"param_steps[{i}]", s) for i, s in enumerate(steps)]
        step_count = _step_count(name, "step_count", hyper.get("step_count"))
        values = {key: _like(name, key, hyper.get(key), current)
                  for key, current in {"lr": self.lr, **self._hyper()}.items()}
        new_state = self._slots_from(arrays)

        def restore() -> None:
            self.state, self.step_count, self.param_steps = new_state, step_count, steps
            for key, value in values.items():
                setattr(self, key, value)
        return restore

    def _slots_from(self, arrays: dict[str, Any]) -> list[dict[str, Any]]:
        """Per-parameter state from "<index>.<slot>" arrays: every slot of this optimizer or none, right shapes."""
        name = type(self).__name__
        new_state: list[dict[str, Any]] = [{} for _ in self.params]
        for key, value in arrays.items():
            index, _, slot = str(key).partition(".")
            if not index.isdigit() or int(index) >= len(self.params) or slot not in self.SLOTS:
                raise ValueError(f"{name}.load_state_dict: bad slot {key!r} (expected '<index>.<slot>' with "
                                 f"index below {len(self.params)} and slot in {self.SLOTS})")
            p = self.params[int(index)]
            value = np.asarray(backend.to_numpy(value))
            if value.shape != tuple(p.data.shape) or value.dtype.kind != "f":
                raise ValueError(f"{name}.load_state_dict: slot {key!r} is {value.dtype}{list(value.shape)}, "
                                 f"parameter {index} is floating-point {list(p.data.shape)}")
            if not np.isfinite(value).all():
                raise ValueError(f"{name}.load_state_dict: slot {key!r} holds NaN or infinite values")
            new_state[int(index)][slot] = backend.get_array_module(p.data).asarray(value, dtype=p.data.dtype)
        for i, slots in enumerate(new_state):
            if slots and set(slots) != set(self.SLOTS):
                raise ValueError(f"{name}.load_state_dict: parameter {i} has slots {sorted(slots)}, "
                                 f"expected all of {self.SLOTS} or none")
        return new_state

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in {"lr": self.lr, **self._hyper()}.items())
        return f"{type(self).__name__}({len(self.params)} parameters, {args})"


def _step_count(owner: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
        raise ValueError(f"{owner}.load_state_dict: {key} must be a count >= 0, got {str(value)[:40]}")
    return value


def _like(owner: str, key: str, value: Any, current: Any) -> Any:
    """A restored hyperparameter of the type of its ``current`` value (a bool, a finite number or a list of them)."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, (int, float)):
        if not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
            return float(value)
    elif isinstance(current, (tuple, list)):
        if isinstance(value, list) and len(value) == len(current) and all(
                not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in value):
            return tuple(float(v) for v in value)
    raise ValueError(f"{owner}.load_state_dict: {key} must be like {current!r}, got {str(value)[:40]}")


def _unique(params: Iterable[Parameter], owner: str) -> list[Parameter]:
    """Parameters in order, each once (by identity); ValueError when empty or not Parameters."""
    out, seen = [], set()
    for p in params:
        if not isinstance(p, Parameter):
            raise ValueError(f"{owner}: expected Parameters, got {type(p).__name__}")
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    if not out:
        raise ValueError(f"{owner}: got an empty parameter list")
    return out


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov and L2 weight decay (PyTorch's rule)."""

    SLOTS = ("momentum_buffer",)

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov needs momentum > 0")
        super().__init__(params, lr)
        self.momentum, self.nesterov, self.weight_decay = float(momentum), bool(nesterov), float(weight_decay)

    def _hyper(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "nesterov": self.nesterov, "weight_decay": self.weight_decay}

    def _update(self, i: int, p: Parameter, g: Any) -> None:
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if self.momentum:
            buf = self.state[i].get("momentum_buffer")
            if buf is None:
                buf = self.state[i]["momentum_buffer"] = g.astype(p.data.dtype, copy=True)
            else:
                buf *= self.momentum
                buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        p.data -= self.lr * g


class Adam(Optimizer):
    """Adam with bias correction; ``weight_decay`` is L2 added to the gradient (PyTorch's Adam)."""

    decoupled = False
    SLOTS = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = (float(betas[0]), float(betas[1])), float(eps), float(weight_decay)

    def _hyper(self) -> dict[str, Any]:
        return {"betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def _update(self, i: int, p: Parameter, g: Any) -> None:
        xp = backend.get_array_module(p.data)
        b1, b2 = self.betas
        if self.weight_decay and self.decoupled:
            p.data *= 1 - self.lr * self.weight_decay
        elif self.weight_decay:
            g = g + self.weight_decay * p.data
        slots = self.state[i]
        if not slots:
            slots["exp_avg"], slots["exp_avg_sq"] = xp.zeros_like(p.data), xp.zeros_like(p.data)
        m, v, t = slots["exp_avg"], slots["exp_avg_sq"], self.param_steps[i]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        denom = xp.sqrt(v) / math.sqrt(1 - b2**t) + self.eps
        p.data -= (self.lr / (1 - b1**t)) * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay: w *= 1 - lr * weight_decay before the step (PyTorch's AdamW)."""

    decoupled = True

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)


class Bop(Optimizer):
    """Bop (Helwegen et al. 2019) for binary weights: flip w where the gradient momentum agrees with it.

    At construction each weight is set to sign(w) (+1 for w >= 0), so latent = binary. Each step:
    m = (1 - gamma) m + gamma g, then w = -w where |m| > threshold and sign(m) == sign(w)
    (written w * m > threshold, as in Larq). ``flip_ratio`` is the fraction of weights flipped
    by the last step. Bop has no learning rate: ``lr`` is an alias of ``gamma``.
    """

    SLOTS = ("m",)

    def __init__(self, binary_params: Iterable[Parameter], threshold: float = 1e-8, gamma: float = 1e-4) -> None:
        super().__init__(binary_params, gamma)
        self.threshold = float(threshold)
        self.flip_ratio = 0.0
        for p in self.params:
            xp = backend.get_array_module(p.data)
            p.data[...] = xp.where(p.data >= 0, 1, -1)

    @property
    def lr(self) -> float:
        """Alias of ``gamma``, so code that reads ``optimizer.lr`` still works."""
        return self.gamma

    @lr.setter
    def lr(self, value: float) -> None:
        self.gamma = float(value)

    def _hyper(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "threshold": self.threshold, "flip_ratio": self.flip_ratio}

    @property
    def flip_ratio(self) -> float:
        """Fraction of the weights flipped by the last step (counted on the device, read on demand)."""
        flipped, total = self._flips
        return float(flipped) / total if total else 0.0

    @flip_ratio.setter
    def flip_ratio(self, value: float) -> None:
        self._flips = (float(value), 1)

    def step(self) -> None:
        """One Bop step over the parameters with a gradient; sets ``flip_ratio``."""
        self._flipped, self._total = 0, 0
        super().step()
        self._flips = (self._flipped, self._total)  # the count stays a device scalar: no sync per step

    def _update(self, i: int, p: Parameter, g: Any) -> None:
        xp = backend.get_array_module(p.data)
        m = self.state[i].get("m")
        if m is None:
            m = self.state[i]["m"] = xp.zeros_like(p.data)
        m *= 1 - self.gamma
        m += self.gamma * g
        flip = p.data * m > self.threshold
        p.data[...] = xp.where(flip, -p.data, p.data)  # not p.data[flip]: a boolean index syncs on the GPU
        self._flipped = self._flipped + flip.sum()
        self._total += flip.size


class CombinedOptimizer(Optimizer):
    """Several optimizers over disjoint parameters driven as one (e.g. Bop for binary weights + Adam).

    ``lr`` reads the first non-Bop member's lr (the first member's if all are Bop); setting ``lr``
    sets it on every non-Bop member, so a schedule never touches Bop's gamma. ``state_dict`` numbers
    the parameters in the order of ``params`` (the members' parameters one after another).
    """

    def __init__(self, *optimizers: Optimizer) -> None:
        if not optimizers or not all(isinstance(o, Optimizer) for o in optimizers):
            raise ValueError("CombinedOptimizer: expected one or more Optimizers")
        self.optimizers = list(optimizers)
        self.params = [p for o in optimizers for p in o.params]
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("CombinedOptimizer: a parameter belongs to two optimizers")
        self.step_count = 0

    @property
    def lr(self) -> float:
        """The first non-Bop member's learning rate."""
        return next((o.lr for o in self.optimizers if not isinstance(o, Bop)), self.optimizers[0].lr)

    @lr.setter
    def lr(self, value: float) -> None:
        for o in self.optimizers:
            if not isinstance(o, Bop):
                o.lr = float(value)

    def step(self) -> None:
        """Step every member optimizer."""
        self.step_count += 1
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict[str, Any]:
        """The members' states: hyper {"optimizers": [...]}, arrays keyed by the overall parameter index."""
        hypers, arrays, offset = [], {}, 0
        for o in self.optimizers:
            s = o.state_dict()
            hypers.append(s["hyper"])
            for key, a in s["arrays"].items():
                index, _, slot = key.partition(".")
                arrays[f"{offset + int(index)}.{slot}"] = a
            offset += len(o.params)
        return {"hyper": {"type": "CombinedOptimizer", "step_count": self.step_count, "optimizers": hypers},
                "arrays": arrays}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned into each member (all checked before any is changed)."""
        self._checked(state)()

    def _checked(self, state: dict[str, Any]) -> Callable[[], None]:
        """Check ``state`` completely; return the function that restores it."""
        hyper = state.get("hyper") if isinstance(state, dict) else None
        arrays = state.get("arrays") if isinstance(state, dict) else None
        hypers = hyper.get("optimizers") if isinstance(hyper, dict) else None
        if not isinstance(hypers, list) or not isinstance(arrays, dict) or len(hypers) != len(self.optimizers):
            raise ValueError(f"CombinedOptimizer.load_state_dict: expected the states of {len(self.optimizers)} "
                             f"optimizers, got {str(hypers)[:80]}")
        step_count = _step_count("CombinedOptimizer", "step_count", hyper.get("step_count"))
        restores, offset, claimed = [], 0, 0
        for o, member in zip(self.optimizers, hypers):
            n, mine = len(o.params), {}
            for key, a in arrays.items():
                index, _, slot = str(key).partition(".")
                if index.isdigit() and offset <= int(index) < offset + n:
                    mine[f"{int(index) - offset}.{slot}"] = a
            restores.append(o._checked({"hyper": member, "arrays": mine}))
            offset, claimed = offset + n, claimed + len(mine)
        if claimed != len(arrays):
            raise ValueError(f"CombinedOptimizer.load_state_dict: {len(arrays) - claimed} arrays belong to no member")

        def restore() -> None:
            for member_restore in restores:
                member_restore()
            self.step_count = step_count
        return restore

    def __repr__(self) -> str:
        return "CombinedOptimizer(" + ", ".join(map(repr, self.optimizers)) + ")"


def binary_parameters(model: Module) -> list[Parameter]:
    """Parameters of binary layers: latent weights, marked by ``clip`` not None."""
    return [p for p in model.parameters() if p.clip is not None]


def float_parameters(model: Module) -> list[Parameter]:
    """All other parameters (float layers, biases, batch norm)."""
    return [p for p in model.parameters() if p.clip is None]


# ---- learning-rate schedules ------------------------------------------------------------

class Schedule:
    """Base class: sets ``optimizer.lr = lr_at(t)``; t starts at 0 and ``step()`` adds one."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.t = 0
        self.optimizer.lr = self.lr_at(0)

    def lr_at(self, t: int) -> float:  # pragma: no cover - abstract
        """The learning rate after ``t`` steps."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance one unit (a batch or an epoch, as the caller decides) and set the new lr."""
        self.t += 1
        self.optimizer.lr = self.lr_at(self.t)

    def state_dict(self) -> dict[str, int]:
        """The counter (the rest is rebuilt from the constructor arguments)."""
        return {"t": self.t}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the counter and set the matching lr."""
        self._checked(state)()

    def _checked(self, state: dict[str, int]) -> Callable[[], None]:
        """Check ``state``; return the function that restores it."""
        t = _step_count(type(self).__name__, "t", state.get("t") if isinstance(state, dict) else None)
        return lambda: self._restore(t)

    def _restore(self, t: int) -> None:
        self.t = t
        self.optimizer.lr = self.lr_at(self.t)


class StepLR(Schedule):
    """lr = base_lr * gamma ** (t // step_size)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer)

    def lr_at(self, t: int) -> float:
        """The learning rate after ``t`` steps."""
        return self.base_lr * self.gamma ** (t // self.step_size)


class LinearWarmup(Schedule):
    """lr rises linearly from 0 (t = 0) to base_lr (t = warmup_steps), then stays constant."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int) -> None:
        if warmup_steps < 0:
            raise ValueError(f"LinearWarmup: warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        super().__init__(optimizer)

    def lr_at(self, t: int) -> float:
        """The learning rate after ``t`` steps."""
        return self.base_lr * t / self.warmup_steps if t < self.warmup_steps else self.base_lr


class CosineLR(Schedule):
    """Linear warm-up from 0 over ``warmup_steps``, cosine from base_lr to min_lr at ``total_steps``, then min_lr."""

    def __init__(self, optimizer: Optimizer, total_steps: int, min_lr: float = 0.0, warmup_steps: int = 0) -> None:
        if not 0 <= warmup_steps <= total_steps or total_steps < 1:
            raise ValueError(f"CosineLR: need 0 <= warmup_steps <= total_steps and total_steps >= 1, "
                             f"got warmup_steps={warmup_steps}, total_steps={total_steps}")
        self.total_steps, self.min_lr, self.warmup_steps = int(total_steps), float(min_lr), int(warmup_steps)
        super().__init__(optimizer)

    def lr_at(self, t: int) -> float:
        """The learning rate after ``t`` steps."""
        if t < self.warmup_steps:
            return self.base_lr * t / self.warmup_steps
        if t >= self.total_steps:
            return self.min_lr
        progress = (t - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


SCHEDULES = ("constant", "step", "cosine", "warmup-cosine")
OPTIMIZERS = ("sgd", "adam", "adamw", "bop")


def make_schedule(name: str, optimizer: Optimizer, total_steps: int, **kw: Any) -> Schedule:
    """Build a schedule by name over ``total_steps`` units; ``kw`` go to its constructor.

    "constant": LinearWarmup (warmup_steps=0 unless given); "step": StepLR with step_size
    total_steps // 3 unless given; "cosine": CosineLR; "warmup-cosine": CosineLR with
    warmup_steps = total_steps // 20 (at least 1) unless given.
    """
    if name == "constant":
        return LinearWarmup(optimizer, **{"warmup_steps": 0, **kw})
    if name == "step":
        return StepLR(optimizer, **{"step_size": max(1, total_steps // 3), **kw})
    if name == "cosine":
        return CosineLR(optimizer, total_steps, **kw)
    if name == "warmup-cosine":
        return CosineLR(optimizer, total_steps, **{"warmup_steps": max(1, total_steps // 20), **kw})
    raise ValueError(f"unknown schedule {name!r}; valid choices: {', '.join(SCHEDULES)}")


def make_optimizer(name: str, model: Module, lr: float, **kw: Any) -> Optimizer:
    """Build an optimizer by name over ``model.parameters()``; ``kw`` go to its constructor.

    "bop" is Bop (``threshold``, ``gamma`` from kw) on the binary parameters plus Adam(lr, other kw)
    on the float ones, as a CombinedOptimizer.
    """
    if name in ("sgd", "adam", "adamw"):
        return {"sgd": SGD, "adam": Adam, "adamw": AdamW}[name](model.parameters(), lr=lr, **kw)
    if name == "bop":
        binary, floats = binary_parameters(model), float_parameters(model)
        if not binary:
            raise ValueError("make_optimizer('bop'): the model has no binary parameters (clip is not None)")
        bop_kw = {k: kw.pop(k) for k in ("threshold", "gamma") if k in kw}
        members: list[Optimizer] = [Bop(binary, **bop_kw)]
        if floats:
            members.append(Adam(floats, lr=lr, **kw))
        return CombinedOptimizer(*members)
    raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
