"""Model files: architecture as JSON + parameters as .npz (no pickle), written atomically.

``save(model, "run/lenet")`` writes ``run/lenet.npz`` and then ``run/lenet.json``; the
JSON names the format version, the architecture, every array's shape and dtype and the
SHA-256 of the .npz, so a file that was truncated, edited or paired with the wrong
partner is refused with an error that names the file.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import re
import secrets
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


_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write to another folder",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write to another folder",
    errno.EFBIG: "the file is larger than the file system or the file-size limit (ulimit -f) allows: "
                 "raise the limit or write to another folder",
    errno.EACCES: "the folder is not writable: fix its permissions or write to another folder",
    errno.EPERM: "the folder is not writable: fix its permissions or write to another folder",
    errno.EROFS: "the file system is read-only: write to another folder",
}


def _write_error(path: Path, exc: BaseException) -> OSError:
    """``exc`` (a failed write) as an OSError of the same errno (and subclass) naming ``path`` and the fix."""
    code = getattr(exc, "errno", None)
    reason = getattr(exc, "strerror", None) or str(exc)
    hint = f"; {_HINTS[code]}" if code in _HINTS else ""
    message = f"cannot write {path}: {reason}{hint} (the previous file, if any, is unchanged)"
    return OSError(code, message) if code else OSError(message)


def _temp_name(path: Path) -> Path:
    """A fresh temporary name ``.<name>.<8 hex digits>.tmp`` beside ``path`` (_remove_stale matches it)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new temporary file ``.<name>.<random>.tmp`` beside ``path``, flushed to disk.

    The file gets the usual permissions (0o666 less the umask); on any failure it is removed again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _sync_folder(folder: Path) -> None:
    """Make renames in ``folder`` durable (best effort: not every system can fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    A crash or kill leaves either the previous file or the new one under ``path``, never a partial
    one (at most a stray ``.<name>.<random>.tmp``). A failed write (disk full, file-size limit,
    read-only folder) raises an OSError of the same kind whose message names ``path`` and the fix,
    and leaves no temporary file.
    """
    path = Path(path)
    try:
        tmp = _write_temp(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise _write_error(path, exc) from exc
    _sync_folder(path.parent)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise arrays as an uncompressed .npz in memory."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_npz(path: Path, expected_sha256: str | None = None) -> dict[str, np.ndarray]:
    """Read every array of a .npz with allow_pickle=False; check the SHA-256 when given.

    Each member's .npy header is read first and its declared size compared with the bytes the
    member holds, so an edited header that declares a huge array is refused, never allocated.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: file not found (it is written next to its .json)") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a folder, expected a .npz file") from None
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ModelFileError(f"{path}: contents do not match the checksum in its .json "
                             "(truncated, edited, or from another save)")
    try:
        _check_members(data)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, KeyError,
            NotImplementedError, RuntimeError) as exc:  # RuntimeError: zipfile's bad members
        raise ModelFileError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None


def _check_members(data: bytes) -> None:
    """Every member of the archive is an uncompressed .npy whose header fits its size (ValueError if not)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
                raise ValueError(f"member {info.filename!r} is compressed or larger than the archive "
                                 "(minibnn writes uncompressed members)")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(member)
                if dtype.hasobject:
                    raise ValueError(f"member {info.filename!r} holds Python objects (refused: nothing is unpickled)")
                declared = math.prod(shape) * dtype.itemsize
                if member.tell() + declared != info.file_size:
                    raise ValueError(f"member {info.filename!r} declares {declared} bytes of {dtype}{list(shape)} "
                                     f"but holds {info.file_size - member.tell()}")


def write_pair(path: str | os.PathLike, header: dict[str, Any], arrays: dict[str, np.ndarray],
               versioned: bool = False) -> Path:
    """Atomically write ``arrays`` (.npz) and ``header`` (.json, with the .npz checksum); return the .json path.

    The .json names its .npz, and the .json is always replaced last, so a crash or kill at any moment
    leaves the previous pair or the new one, whole, never a partial file under a final name. The .npz
    first lands under a content-addressed name, ``name.<sha>.npz``, and the .json naming it commits
    the new pair. With ``versioned`` (checkpoints) that stays the .npz's name. Otherwise it is a
    hidden ``.name.<sha>.npz`` that is then published as ``name.npz`` (a hard link, else a copy, both
    written before the commit), followed by a .json naming ``name.npz``. Unreferenced .npz files and
    temporary files that an earlier crash left behind are removed after a successful write. A failed
    write (disk full, read-only folder) raises an OSError naming the file and leaves the previous
    pair as it was and no temporary file.
    """
    json_path, npz_path = split_path(path)
    blob = npz_bytes(arrays)
    digest = hashlib.sha256(blob).hexdigest()
    staged = npz_path.with_name(f"{'' if versioned else '.'}{json_path.stem}.{digest[:16]}.npz")
    header = dict(header, format=header.get("format", FORMAT), version=header.get("version", VERSION),
                  arrays={k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
                  npz=staged.name, npz_sha256=digest, npz_bytes=len(blob))
    had_staged, committed, temps, target = staged.exists(), False, [], staged if versioned else npz_path
    try:
        atomic_write_bytes(staged, blob)
        if not versioned:  # everything that takes disk space is written before the commit
            temps.append(_link_temp(staged, npz_path, blob))
        target = json_path
        if not versioned:
            temps.append(_write_temp(json_path, json.dumps(dict(header, npz=npz_path.name), indent=1).encode()))
        atomic_write_bytes(json_path, json.dumps(header, indent=1).encode())  # the commit
        committed = True
        if not versioned:  # the new pair under its final names: name.npz, then the .json naming it
            os.replace(temps[0], npz_path)
            os.replace(temps[1], json_path)
            temps.clear()
    except BaseException as exc:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if not had_staged and not committed:  # leave no .npz without its .json behind
            staged.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            raise _write_error(target, cause) from cause
        raise
    _remove_stale(json_path, keep=staged if versioned else npz_path, hidden=not versioned)
    _sync_folder(json_path.parent)
    return json_path


def _link_temp(source: Path, path: Path, data: bytes) -> Path:
    """A temporary file beside ``path`` holding ``data``: a hard link to ``source`` where possible."""
    tmp = _temp_name(path)
    try:
        os.link(source, tmp)
        return tmp
    except OSError:  # no hard links on this file system
        return _write_temp(path, data)


def _remove_stale(json_path: Path, keep: Path, hidden: bool) -> None:
    """Remove the temporary files and unreferenced ``[.]name.<sha>.npz`` files (all but ``keep``) of a pair.

    Only a crash or kill during an earlier write of the same pair leaves them behind.
    """
    stem = re.escape(json_path.stem)
    stale = re.compile(rf"{'[.]' if hidden else ''}{stem}\.[0-9a-f]{{16}}\.npz"
                       rf"|\.\.?{stem}\.(json|npz|[0-9a-f]{{16}}\.npz)\.\w{{8}}\.tmp")
    for p in json_path.parent.iterdir():
        if p != keep and stale.fullmatch(p.name):
            p.unlink(missing_ok=True)


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
    except IsADirectoryError:
        raise ModelFileError(f"{json_path}: is a folder, expected a .json file") from None
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, numbers too long, nesting too deep
        raise ModelFileError(f"{json_path}: not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
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


def load(path: str | os.PathLike, allow_nonfinite: bool = False):
    """Rebuild a model saved with ``save`` (nothing is unpickled).

    Parameters and statistics holding NaN or infinity are refused, naming the array, unless
    ``allow_nonfinite=True`` (e.g. to inspect a diverged run).
    """
    header, arrays = read_pair(path)
    json_path = split_path(path)[0]
    check_finite(json_path, arrays, allow_nonfinite)
    return _build_model(json_path, header.get("architecture"), arrays)


def _build_model(json_path: Path, architecture: Any, state: dict[str, np.ndarray]):
    """The model ``architecture`` describes, with ``state`` as its parameters and buffers.

    The architecture may allocate no more than the arrays hold (plus a little), so an edited
    description that declares huge layers is refused before anything is allocated.
    """
    from minibnn.nn.init import SLACK_BYTES, allocation_limit

    for name, a in state.items():
        if a.dtype.kind != "f":
            raise ModelFileError(f"{json_path}: array {name} has dtype {a.dtype}, parameters are floating-point")
    limit = sum(a.nbytes for a in state.values()) + SLACK_BYTES
    try:
        with allocation_limit(limit, "the file holds less, so it does not describe this architecture"):
            model = from_config(architecture)
        model.load_state_dict(state)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{json_path}: {exc}") from None
    return model


def check_finite(json_path: Path, arrays: dict[str, np.ndarray], allow: bool = False) -> None:
    """Refuse floating-point arrays holding NaN or infinity (naming the first), unless ``allow``."""
    if allow:
        return
    for name, a in arrays.items():
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad = int(np.size(a) - np.isfinite(a).sum())
            raise ModelFileError(f"{json_path}: array {name} holds {bad} NaN or infinite values (a diverged "
                                 "or damaged model); pass allow_nonfinite=True to load it anyway")
