"""Model files: architecture as JSON + parameters as .npz (no pickle), written atomically.

``save(model, "run/lenet")`` writes ``run/lenet.npz`` and then ``run/lenet.json``; the
JSON names the format version, the architecture, every array's shape and dtype and the
SHA-256 of the .npz, so a file that was truncated, edited or paired with the wrong
partner is refused with an error that names the file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from minibnn.nn.module import from_config

FORMAT = "minibnn-model"
VERSION = 1


class ModelFileError(ValueError):
    """A model or checkpoint file is missing, corrupted, inconsistent or from a newer version."""


def split_path(path: str | os.PathLike) -> tuple[Path, Path]:
    """The (.json, .npz) pair for ``path`` given with or without either suffix."""
    p = Path(path)
    if p.suffix in (".json", ".npz"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".json"), p.with_name(p.name + ".npz")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise arrays as an uncompressed .npz in memory."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_npz(path: Path, expected_sha256: str | None = None) -> dict[str, np.ndarray]:
    """Read every array of a .npz with allow_pickle=False; check the SHA-256 when given."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: file not found (it is written next to its .json)") from None
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ModelFileError(f"{path}: contents do not match the checksum in its .json "
                             "(truncated, edited, or from another save)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ModelFileError(f"{path}: not a readable .npz archive ({exc})") from None


def write_pair(path: str | os.PathLike, header: dict[str, Any], arrays: dict[str, np.ndarray],
               versioned: bool = False) -> Path:
    """Atomically write ``arrays`` (.npz) then ``header`` (.json, with the .npz checksum); return the .json path.

    Each file is replaced atomically, but a crash between the two would leave a new .npz next to
    the old .json. With ``versioned`` the .npz gets a content-addressed name (``name.<sha>.npz``)
    named in the .json, so the previous pair stays whole until the new .json replaces the old;
    the .npz files no .json refers to any more are removed afterwards (used for checkpoints).
    """
    json_path, npz_path = split_path(path)
    blob = npz_bytes(arrays)
    digest = hashlib.sha256(blob).hexdigest()
    if versioned:
        npz_path = npz_path.with_name(f"{json_path.stem}.{digest[:16]}.npz")
    header = dict(header, format=header.get("format", FORMAT), version=header.get("version", VERSION),
                  arrays={k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
                  npz=npz_path.name, npz_sha256=digest, npz_bytes=len(blob))
    had_npz = npz_path.exists()
    atomic_write_bytes(npz_path, blob)
    try:
        atomic_write_bytes(json_path, json.dumps(header, indent=1).encode())
    except BaseException:  # leave no .npz without its .json behind
        if not had_npz:
            npz_path.unlink(missing_ok=True)
        raise
    if versioned:
        for stale in json_path.parent.glob(f"{json_path.stem}.*.npz"):
            if stale != npz_path:
                stale.unlink(missing_ok=True)
    return json_path


def _npz_beside(json_path: Path, header: dict[str, Any], default: Path) -> Path:
    """The .npz the header names (a bare file name in the same folder), else ``default``."""
    name = header.get("npz")
    if name is None:
        return default
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ModelFileError(f"{json_path}: bad .npz file name {name!r} (must be a file beside the .json)")
    return json_path.with_name(name)


def read_pair(path: str | os.PathLike, fmt: str = FORMAT,
              max_version: int = VERSION) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and cross-check a (.json, .npz) pair written by write_pair (format ``fmt``, version <= max_version)."""
    json_path, npz_path = split_path(path)
    try:
        header = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{json_path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{json_path}: not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != fmt:
        raise ModelFileError(f"{json_path}: not a {fmt} file (format {header.get('format') if isinstance(header, dict) else None!r})")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{json_path}: bad format version {version!r}")
    if version > max_version:
        raise ModelFileError(f"{json_path}: format version {version!r} is newer than this minibnn "
                             f"reads ({max_version}); upgrade minibnn")
    npz_path = _npz_beside(json_path, header, npz_path)
    arrays = read_npz(npz_path, header.get("npz_sha256"))  # without a checksum every array is still checked
    declared = header.get("arrays", {})
    if not isinstance(declared, dict) or not all(isinstance(m, dict) for m in declared.values()):
        raise ModelFileError(f"{json_path}: 'arrays' must map each array name to its shape and dtype")
    if set(declared) != set(arrays):
        raise ModelFileError(f"{npz_path}: arrays {sorted(arrays)} differ from those listed in "
                             f"{json_path.name}: {sorted(declared)}")
    for name, meta in declared.items():
        a = arrays[name]
        if list(a.shape) != meta.get("shape") or str(a.dtype) != meta.get("dtype"):
            raise ModelFileError(f"{npz_path}: array {name} is {a.dtype}{list(a.shape)}, "
                                 f"{json_path.name} says {meta.get('dtype')}{meta.get('shape')}")
    return header, arrays


def save(model, path: str | os.PathLike) -> Path:
    """Save ``model`` as ``path.json`` (architecture) + ``path.npz`` (parameters); returns the .json path."""
    return write_pair(path, {"architecture": model.to_config()}, model.state_dict())


def load(path: str | os.PathLike):
    """Rebuild a model saved with ``save`` (nothing is unpickled)."""
    header, arrays = read_pair(path)
    json_path = split_path(path)[0]
    try:
        model = from_config(header["architecture"])
        model.load_state_dict(arrays)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{json_path}: {exc}") from None
    return model
