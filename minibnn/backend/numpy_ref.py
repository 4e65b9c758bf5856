"""The reference backend: plain NumPy, short and obviously right; the oracle for the others.

Binary semantics (DESIGN.md): bit 1 means +1 (x >= 0), bits are packed LSB-first along
the reduction axis into uint64 words, tail bits are 0, and
dot(a, b) = K - 2 * popcount(a XOR b) for the true length K.
"""
from __future__ import annotations

import numpy as np

xp = np
name = "numpy"


def pack_bits(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Sign-and-pack ``x`` along ``axis`` into uint64 words (bit 1 = x >= 0), moved to the last axis."""
    bits = np.moveaxis(np.asarray(x) >= 0, axis, -1)
    k = bits.shape[-1]
    words = -(-k // 64)
    padded = np.zeros(bits.shape[:-1] + (words * 64,), dtype=np.uint8)
    padded[..., :k] = bits
    packed8 = np.packbits(padded, axis=-1, bitorder="little")  # 8 bytes per word, LSB first
    return np.ascontiguousarray(packed8).view("<u8").astype(np.uint64, copy=False)


def unpack_bits(words: np.ndarray, k: int) -> np.ndarray:
    """Inverse of pack_bits along the last axis: float32 +-1 values of true length ``k``."""
    as_bytes = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :k]
    return bits.astype(np.float32) * 2 - 1


def xnor_gemm(a_words: np.ndarray, b_words: np.ndarray, k: int, out: np.ndarray) -> np.ndarray:
    """out[m, n] = K - 2 * popcount(a[m] XOR b[n]): the +-1 dot product of packed rows."""
    mismatches = np.bitwise_count(a_words[:, None, :] ^ b_words[None, :, :]).sum(axis=-1)
    out[...] = k - 2 * mismatches.astype(np.int32)
    return out
