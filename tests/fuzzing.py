"""A seeded mutator for the files minibnn reads, and a runner that classifies each load.

Each case starts from the bytes of a good file set (a .json + .npz pair, or an IDX file),
applies one mutation and loads the result. The outcome must be a successful load or one of the
library's documented errors (ModelFileError, IDXError, ValueError, OSError) whose message names
the file; anything else (another exception, a hang past ``TIME_LIMIT_S``, a traced allocation
over ``MEMORY_LIMIT``) is a failure. Mutations:

- bytes: flip bits, overwrite, truncate, insert, duplicate a range, of either file;
- JSON: at a random node of the header, replace the value by one of every JSON type (including
  0, negatives, huge numbers, NaN and infinity, long strings, deep nesting), delete a key, add
  one, or wrap the value in a list;
- arrays: replace an array by one of another shape, dtype or with NaN / inf / huge values, with
  the header's shape list and checksum rewritten so only the deeper checks can catch it;
- partners: the other file of another good set (swapped pair), or a missing file.
"""
from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import signal
import tempfile
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from minibnn.data.idx import IDXError
from minibnn.io import ModelFileError

ALLOWED = (ModelFileError, IDXError, ValueError, OSError)
TIME_LIMIT_S = 10.0
MEMORY_LIMIT = 64 << 20  # bytes of traced allocations a load of these small files may need

Files = dict[str, bytes]  # file name -> contents
DEEP = "__deeply_nested__"


class Hang(Exception):
    """Raised by the alarm when a load runs past the time limit."""


@dataclass
class Report:
    """Outcomes of a fuzz run: counts by outcome and the failing cases."""

    counts: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def add(self, outcome: str, detail: str | None) -> None:
        self.counts[outcome] += 1
        if detail is not None:
            self.failures.append(detail)


# ---------------------------------------------------------------- mutations

def _json_values(rng: np.random.Generator) -> list[Any]:
    """Replacement values of every JSON type, edge cases included."""
    huge = int(rng.integers(1, 10)) * 10 ** int(rng.integers(9, 40))
    nested = DEEP  # spliced into the text as thousands of nested lists (see _dump)
    return [None, True, False, 0, 1, -1, 2, 3, 63, 64, 65, huge, -huge, 0.5, -0.0, 1e308, float("nan"),
            float("inf"), float("-inf"), "", "x", "1", "conv", "binary_dense", "a" * 10_000, [], [1],
            [0, 0], [-1, 5], {}, {"type": "Linear"}, {"module": {"type": "Sequential"}}, nested,
            {"k": nested}]


def _nodes(obj: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every node of a parsed JSON document."""
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _nodes(v, path + (i,))
    return out


def _set(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return obj


def _get(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def mutate_json(doc: Any, rng: np.random.Generator) -> Any:
    """One edit at a random node of a parsed header."""
    doc = copy.deepcopy(doc)
    nodes = _nodes(doc)
    path = nodes[int(rng.integers(len(nodes)))]
    kind = rng.choice(["replace", "replace", "replace", "delete", "add", "wrap", "number"])
    if kind == "delete" and path:
        parent = _get(doc, path[:-1])
        del parent[path[-1]]
        return doc
    target = _get(doc, path)
    if kind == "add" and isinstance(target, dict):
        values = _json_values(rng)
        target[rng.choice(["extra", "type", "args", "op", "config", "shape", "dtype"])] = \
            values[int(rng.integers(len(values)))]
        return doc
    if kind == "wrap":
        return _set(doc, path, [target])
    if kind == "number" and isinstance(target, (int, float)) and not isinstance(target, bool):
        return _set(doc, path, target * int(rng.choice([-1, 0, 2, 1000, 10 ** 9])) + int(rng.integers(-2, 3)))
    values = _json_values(rng)
    return _set(doc, path, values[int(rng.integers(len(values)))])


def _dump(doc: Any, rng: np.random.Generator) -> bytes:
    """JSON text of ``doc`` with each DEEP marker replaced by deeply nested lists."""
    depth = int(rng.integers(50, 100_000))
    return json.dumps(doc).replace(json.dumps(DEEP), "[" * depth + "1" + "]" * depth).encode()


def mutate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """Flip, overwrite, truncate, insert or duplicate bytes."""
    b = bytearray(data)
    n = len(b)
    kind = rng.choice(["flip", "overwrite", "truncate", "insert", "duplicate"])
    if n == 0 or kind == "insert":
        at = int(rng.integers(n + 1))
        return bytes(b[:at] + rng.bytes(int(rng.integers(1, 64))) + b[at:])
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            b[int(rng.integers(n))] ^= 1 << int(rng.integers(8))
    elif kind == "overwrite":
        at = int(rng.integers(n))
        chunk = rng.bytes(int(rng.integers(1, 32)))
        b[at:at + len(chunk)] = chunk
    elif kind == "truncate":
        return bytes(b[:int(rng.integers(n))])
    else:
        at, length = int(rng.integers(n)), int(rng.integers(1, 256))
        return bytes(b[:at] + b[at:at + length] + b[at:])
    return bytes(b)


def _odd_array(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An array that differs from ``a`` in shape, dtype or values."""
    kind = rng.choice(["nan", "inf", "huge", "shape", "dtype", "empty", "scalar", "bytes"])
    if kind in ("nan", "inf", "huge") and a.size and a.dtype.kind == "f":
        b = a.copy()
        b.flat[int(rng.integers(a.size))] = {"nan": np.nan, "inf": -np.inf, "huge": 3e38}[kind]
        return b
    if kind == "shape" and a.size:
        return a.reshape(-1)[:max(a.size - int(rng.integers(1, 3)), 0)].copy()
    if kind == "dtype":
        return a.astype(rng.choice([np.float64, np.int64, np.uint8, np.float16, np.bool_, np.complex64]))
    if kind == "empty":
        return np.zeros((0,) * max(a.ndim, 1), a.dtype)
    if kind == "scalar":
        return np.array(7, a.dtype)
    if kind == "bytes":
        return np.array([b"abc", b"de"])
    return np.concatenate([a.reshape(-1), a.reshape(-1)[:1]]) if a.size else np.ones(3, a.dtype)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The .npz archive of ``arrays``, in memory."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def seal(header: dict, blob: bytes) -> dict:
    """``header`` agreeing with the .npz ``blob`` (checksum and size), as a careful attacker would make it."""
    header.update(npz_sha256=hashlib.sha256(blob).hexdigest(), npz_bytes=len(blob))
    return header


def mutate_arrays(files: Files, rng: np.random.Generator) -> Files:
    """Replace, add or drop one array of the .npz and rewrite the header to agree with it."""
    json_name = next(k for k in files if k.endswith(".json"))
    header = json.loads(files[json_name])
    npz_name = header.get("npz") or next(k for k in files if k.endswith(".npz"))
    with np.load(io.BytesIO(files[npz_name]), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    names = sorted(arrays)
    kind = rng.choice(["replace", "replace", "replace", "drop", "add"])
    name = names[int(rng.integers(len(names)))]
    if kind == "drop":
        del arrays[name]
    elif kind == "add":
        arrays[name.rsplit(":", 1)[0] + rng.choice([":extra", ".extra", ":threshold", ":weight"])] = np.ones(4, np.float32)
    else:
        arrays[name] = _odd_array(arrays[name], rng)
    blob = npz_bytes(arrays)
    header["arrays"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}
    seal(header, blob)
    return {**files, json_name: json.dumps(header).encode(), npz_name: blob}


def mutate(files: Files, rng: np.random.Generator, partners: list[Files] = ()) -> Files:
    """One random mutation of a file set (see the module docstring)."""
    names = sorted(files)
    name = names[int(rng.integers(len(names)))]
    kinds = ["bytes", "bytes", "json", "json", "json", "json", "arrays", "arrays", "missing"]
    kinds += ["partner"] * bool(partners)
    if len(files) == 1:
        kinds = ["bytes", "bytes", "bytes", "missing"] + ["inner"] * 4 * name.endswith(".gz")
    kind = rng.choice(kinds)
    if kind == "inner":  # mutate the decompressed content, mostly its header, and compress again
        data = gzip.decompress(files[name])
        head = int(rng.integers(4, 40))
        data = mutate_bytes(data[:head], rng) + data[head:] if rng.random() < 0.7 else mutate_bytes(data, rng)
        return {name: gzip.compress(data, mtime=0)}
    if kind == "missing":
        return {k: v for k, v in files.items() if k != name}
    if kind == "partner":
        other = partners[int(rng.integers(len(partners)))]
        npz = [k for k in other if k.endswith(".npz")]
        return {**files, **{k: other[k] for k in npz}} if npz else dict(other)
    if kind == "json":
        json_name = next(k for k in names if k.endswith(".json"))
        doc = mutate_json(json.loads(files[json_name]), rng)
        return {**files, json_name: _dump(doc, rng)}
    if kind == "arrays":
        return mutate_arrays(files, rng)
    return {**files, name: mutate_bytes(files[name], rng)}


# ---------------------------------------------------------------- running cases

def _alarm(signum, frame):
    raise Hang(f"load ran past {TIME_LIMIT_S} s")


def run_case(load: Callable[[Path], Any], entry: str, files: Files, folder: Path) -> tuple[str, str | None]:
    """Write ``files`` into ``folder``, load ``folder / entry``; return (outcome, failure detail or None)."""
    for old in folder.iterdir():
        old.unlink()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT_S)
    tracemalloc.start()
    try:
        load(folder / entry)
        outcome, detail = "loaded", None
    except ALLOWED as exc:
        message = str(exc)
        if not any(name in message for name in (entry, *files, folder.name)):
            outcome, detail = "unnamed", f"{type(exc).__name__} does not name the file: {message[:300]}"
        else:
            outcome, detail = f"refused:{type(exc).__name__}", None
    except Hang as exc:
        outcome, detail = "hang", str(exc)
    except BaseException as exc:  # noqa: BLE001 - classifying is the point
        if isinstance(exc, KeyboardInterrupt):
            raise
        outcome, detail = "crash", f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if peak > MEMORY_LIMIT and detail is None:
        outcome, detail = "memory", f"peak traced allocation {peak / 2**20:.0f} MiB"
    return outcome, detail


def fuzz(load: Callable[[Path], Any], entry: str, files: Files, cases: int, seed: int,
         partners: list[Files] = ()) -> Report:
    """Run ``cases`` mutated copies of ``files`` through ``load``; a Report of the outcomes."""
    report = Report()
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(cases):
            mutated = mutate(files, rng, partners)
            outcome, detail = run_case(load, entry, mutated, folder)
            report.add(outcome, None if detail is None else f"case {i} (seed {seed}): {outcome}: {detail}")
    return report


def read_files(folder: Path, names: list[str]) -> Files:
    """The bytes of ``names`` in ``folder``."""
    return {n: (folder / n).read_bytes() for n in names}

