"""Reader and writer for the IDX format (MNIST-style files), raw or gzip-compressed.

Layout: magic (two zero bytes, a dtype code, ndim), ndim big-endian uint32 dims,
then exactly prod(dims) big-endian items. Every format problem raises IDXError
with the file name and what is wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from minibnn.io import atomic_write_bytes

__all__ = ["IDXError", "IDX_DTYPES", "read_idx", "write_idx", "parse_idx",
           "read_bytes", "md5_of_decompressed"]

GZIP_MAGIC = b"\x1f\x8b"

# IDX dtype code -> big-endian numpy dtype
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
_SUPPORTED = ", ".join(f"0x{c:02x} ({dt.name})" for c, dt in IDX_DTYPES.items())


class IDXError(ValueError):
    """A malformed, truncated or corrupt IDX file (the message names the file)."""


MAX_BYTES = 1 << 33  # decompressed files larger than this (8 GiB) are refused; MNIST is 47 MB
_CHUNK = 1 << 22


def read_bytes(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> bytes:
    """Return the file's content, decompressed if it starts with the gzip magic.

    Decompression runs in chunks and stops past ``max_bytes``, so a small file that inflates to
    terabytes is refused, not allocated; the CRC and length in the gzip trailer are checked.
    """
    data = Path(path).read_bytes()  # FileNotFoundError names the path
    if not data.startswith(GZIP_MAGIC):
        return data
    inflate, out, tail = zlib.decompressobj(wbits=31), bytearray(), data
    try:
        while not inflate.eof:
            chunk = inflate.decompress(tail, _CHUNK)
            tail = inflate.unconsumed_tail
            out += chunk
            if len(out) > max_bytes:
                raise IDXError(f"{path}: decompresses to more than {max_bytes} bytes (limit max_bytes)")
            if not chunk and not tail:
                break
    except zlib.error as exc:
        raise IDXError(f"{path}: corrupt gzip stream: {exc}") from None
    if not inflate.eof:
        raise IDXError(f"{path}: corrupt gzip stream: truncated (the stream ends early)")
    if inflate.unused_data:
        raise IDXError(f"{path}: corrupt gzip stream: {len(inflate.unused_data)} bytes after its end")
    return bytes(out)


def md5_of_decompressed(path: str | os.PathLike) -> str:
    """Hex MD5 of the file's decompressed content."""
    return hashlib.md5(read_bytes(path)).hexdigest()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a raw or gzip IDX file into a writable native-byte-order array."""
    return parse_idx(read_bytes(path), str(path))


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse decompressed IDX bytes; `name` is used in error messages."""
    dtype, dims = _parse_header(data, name)
    offset = 4 + 4 * len(dims)
    expected = math.prod(dims) * dtype.itemsize
    got = len(data) - offset
    if got != expected:
        problem = "truncated" if got < expected else "trailing bytes"
        shape = " x ".join(map(str, dims))
        raise IDXError(f"{name}: {problem}: header says {expected} bytes of data "
                       f"({shape} {dtype.name}), file has {got}")
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=offset)
    return flat.astype(dtype.newbyteorder("=")).reshape(dims)


def _parse_header(data: bytes, name: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Validate the magic number and return (dtype, dims)."""
    if len(data) < 4:
        raise IDXError(f"{name}: truncated: {len(data)} bytes, an IDX header needs at least 4")
    magic = int.from_bytes(data[:4], "big")
    zero, code, ndim = data[:2], data[2], data[3]
    if zero != b"\0\0":
        raise IDXError(f"{name}: wrong magic number 0x{magic:08x}, expected 0x0000TTNN "
                       f"(two zero bytes, dtype code TT, ndim NN)")
    if code not in IDX_DTYPES:
        raise IDXError(f"{name}: wrong magic number 0x{magic:08x}: unsupported dtype code "
                       f"0x{code:02x}, expected one of {_SUPPORTED}")
    if ndim == 0:
        raise IDXError(f"{name}: wrong magic number 0x{magic:08x}: ndim is 0, expected >= 1")
    if len(data) < 4 + 4 * ndim:
        raise IDXError(f"{name}: truncated: header declares {ndim} dims ({4 + 4 * ndim} bytes), "
                       f"file has {len(data)} bytes")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return IDX_DTYPES[code], dims


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write `array` as IDX; gzip when `compress` (default: path ends in .gz)."""
    arr = np.asarray(array)
    code = _CODES.get(arr.dtype.newbyteorder("="))
    if code is None or arr.ndim == 0 or arr.ndim > 255:
        raise ValueError(f"cannot write {arr.dtype} array of ndim {arr.ndim} as IDX "
                         f"(supported dtypes: {_SUPPORTED}; ndim 1..255)")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = str(path).endswith(".gz")
    atomic_write_bytes(Path(path), gzip.compress(data, mtime=0) if compress else data)
