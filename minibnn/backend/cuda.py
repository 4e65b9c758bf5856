"""The GPU backend: the kernel table of numpy_ref.py over CuPy RawKernels (``xp = cupy``).

Two kernel sources, shipped in the wheel under minibnn/backend/cuda_src/ and compiled once per
process with NVRTC (``cupy.RawModule``); results are bit for bit those of numpy_ref, float32
epilogues included:
- native/cuda/minibnn_tc.cu, the binary tensor cores (sm_80 and newer): one implicit-GEMM kernel
  (``mma.sync ... m16n8k256 ... b1 ... and.popc``, shared-memory tiles fed by double-buffered
  cp.async) for xnor_gemm and binary_conv2d with the int32, affine and threshold epilogues fused,
  in three tile shapes chosen per problem (``_tc_config``);
- native/cuda/minibnn_kernels.cu, the CUDA cores (``__popcll``) of any GPU CuPy supports: packing,
  popcounts, the padding correction, and the register-tiled GEMM and direct convolution that older
  GPUs (or ``set_tensor_cores(False)``, or ``MINIBNN_CUDA_TENSOR_CORES=0``) use instead.

Every argument is checked here as in the other backends (ValueError naming it); arrays must be
CuPy arrays (a NumPy array is host memory: ValueError saying how to move it) and kernel operands
C-contiguous. Python allocates every output. ``check_tails=False`` skips the tail-bit scan, the
only check that reads device memory (a device-to-host synchronisation).

Each table function plans its launches (kernel name, grid, block, arguments as NumPy scalars of
the C parameter types) in Python and hands them to the current runtime. ``use_runtime`` swaps
that runtime (its array module and launcher): the tests run this whole table on the CPU through
a host emulator of the .cu (tests/cuda_emu). CuPy is imported lazily: this module imports
without it, and ``check_available`` says what is missing.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy

from minibnn.backend import BackendUnavailable
from minibnn.backend import numpy_ref as _ref

name = "cuda"
conv_output_hw = _ref.conv_output_hw
n_words = _ref.n_words

SOURCE_NAME = "minibnn_kernels.cu"
TC_SOURCE_NAME = "minibnn_tc.cu"
NVRTC_OPTIONS = ("-std=c++14",)
TC_MIN_CAPABILITY = (8, 0)  # the b1 mma with .and.popc: Ampere and newer

# Launch shapes. TILE_ROWS / TILE_COLS / WORD_COLS are MBK_TM / MBK_TN / MBK_TW of the .cu (a test checks).
TILE_ROWS, TILE_COLS = 8, 4  # rows x columns of the register tile of one thread (GEMM and conv)
TILE_BLOCK = (8, 16)         # threads along columns (x) and rows (y): a block covers 128 rows x 32 columns
WORD_COLS = 64               # threshold kernels: columns per thread (one packed output word)
BLOCK_1D = 128               # threads per block of the 1-D kernels
# Tensor-core tiles: name -> (rows, columns, threads) of a block; MBK_TC_KERNEL lines of minibnn_tc.cu.
TC_CONFIGS = {"large": (128, 128, 256), "medium": (64, 64, 128), "skinny": (16, 128, 128)}
TC_EPILOGUES = {numpy.dtype(numpy.int32): "int", numpy.dtype(numpy.float32): "affine",
                numpy.dtype(numpy.uint64): "threshold"}
_INT32_MAX = _ref.INT32_MAX
_MAX_GRID = 2**31 - 1

_INSTALL_HINT = ("pip install 'minibnn[gpu]' (cupy-cuda13x for CUDA 13, or 'minibnn[gpu-cuda12]' / "
                 "cupy-cuda12x for CUDA 12)")
_MEANWHILE = "Meanwhile minibnn.use('native') or minibnn.use('numpy') runs on the CPU."


# ---------------------------------------------------------------- the runtime: where arrays live, how kernels run

def _cupy():
    import cupy  # noqa: PLC0415 (lazy: the module imports without CuPy)

    return cupy


def source_path(source: str | None = None) -> Path:
    """A .cu file (default SOURCE_NAME): native/cuda/ of a source checkout (or editable install), else the installed copy."""
    source = source or SOURCE_NAME
    here = Path(__file__).resolve().parent
    candidates = [here.parents[1] / "native" / "cuda" / source, here / "cuda_src" / source]
    for path in candidates:
        if path.is_file():
            return path
    raise BackendUnavailable(
        f"the CUDA kernel source {source} is missing (looked for {candidates[1]} and {candidates[0]}). "
        f"Fix: reinstall minibnn (`pip install .` copies native/cuda/{source} into minibnn/backend/cuda_src/), "
        f"or run from a source checkout that has native/cuda/{source}. {_MEANWHILE}")


@functools.lru_cache(maxsize=None)
def _module(source: str = SOURCE_NAME):
    """The compiled kernels of one source (NVRTC, once per process; CuPy caches the binary on disk as well)."""
    module = _cupy().RawModule(code=source_path(source).read_text(encoding="utf-8"), options=NVRTC_OPTIONS)
    module.compile()
    return module


@functools.lru_cache(maxsize=None)
def _function(kernel: str):
    return _module(TC_SOURCE_NAME if kernel.startswith("mbk_tc_") else SOURCE_NAME).get_function(kernel)


class _CupyRuntime:
    """The real runtime: CuPy arrays on the current device, kernels launched on its current stream."""

    def __init__(self) -> None:
        self.pad_cache: dict = {}

    @property
    def xp(self):
        return _cupy()

    @staticmethod
    def launch(kernel: str, grid: tuple, block: tuple, args: tuple) -> None:
        _function(kernel)(grid, block, args)

    @staticmethod
    def address(a) -> int:
        return a.data.ptr

    @staticmethod
    def device() -> int:
        return _cupy().cuda.Device().id

    @staticmethod
    def device_properties() -> tuple[tuple[int, int], int]:
        """(compute capability, number of SMs) of the current device."""
        return _device_properties(_cupy().cuda.Device().id)


@functools.lru_cache(maxsize=None)
def _device_properties(device: int) -> tuple[tuple[int, int], int]:
    props = _cupy().cuda.runtime.getDeviceProperties(device)
    return (int(props["major"]), int(props["minor"])), int(props["multiProcessorCount"])


_runtime: Any = _CupyRuntime()


@contextlib.contextmanager
def use_runtime(runtime) -> Iterator[None]:
    """Run the table on another runtime inside the block (tests only: the host emulator in tests/cuda_emu).

    A runtime has ``xp`` (the array module the table allocates from and accepts), ``launch(kernel,
    grid, block, args)``, ``address(array)`` (its data address, for alignment), ``device()`` and a
    ``pad_cache`` dict.
    """
    global _runtime
    previous, _runtime = _runtime, runtime
    try:
        yield
    finally:
        _runtime = previous


def __getattr__(attr: str):
    if attr == "xp":  # the array module, imported on first use
        try:
            return _runtime.xp
        except ImportError as exc:
            raise AttributeError(f"minibnn.backend.cuda.xp: CuPy is not installed ({exc}); {_INSTALL_HINT}") from exc
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


class Launch(NamedTuple):
    """One planned kernel launch."""

    kernel: str
    grid: tuple
    block: tuple
    args: tuple


def _launch(plan: Launch) -> None:
    _runtime.launch(plan.kernel, plan.grid, plan.block, plan.args)


# ---------------------------------------------------------------- availability

def check_available() -> None:
    """Raise BackendUnavailable with the reason and the fix unless CuPy, a GPU and the kernels work here."""
    try:
        cupy = _cupy()
    except ImportError as exc:
        raise BackendUnavailable(f"CuPy is not installed ({exc}): {_INSTALL_HINT}. {_MEANWHILE}") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 (CUDARuntimeError: no driver, a driver too old for this CuPy, ...)
        raise BackendUnavailable(
            f"no usable CUDA GPU/driver was found ({type(exc).__name__}: {exc}). Fix: run on a machine with an "
            f"NVIDIA GPU and its driver; a driver older than your CuPy's CUDA needs the matching CuPy "
            f"(cupy-cuda12x for CUDA 12 drivers: pip install 'minibnn[gpu-cuda12]'). {_MEANWHILE}") from exc
    if count < 1:
        raise BackendUnavailable(f"no CUDA GPU was found (the driver reports 0 devices). {_MEANWHILE}")
    sources = [SOURCE_NAME] + ([TC_SOURCE_NAME] if uses_tensor_cores() else [])
    for source in sources:
        source_path(source)
        try:
            _module(source)
        except Exception as exc:  # noqa: BLE001 (NVRTC missing or a compile error: say which)
            raise BackendUnavailable(
                f"the CUDA kernels ({source_path(source)}) could not be compiled with NVRTC ({type(exc).__name__}: "
                f"{exc}). Fix: install the CUDA runtime libraries CuPy needs (see CuPy's installation guide); "
                f"MINIBNN_CUDA_TENSOR_CORES=0 skips the tensor-core kernels. {_MEANWHILE}") from exc


def device_name() -> str:
    """The current GPU, e.g. 'NVIDIA H200 (sm_90)'."""
    cupy = _cupy()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    gpu = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return f"{gpu} (sm_{props['major']}{props['minor']})"


def set_num_threads(n: int) -> None:
    """The GPU kernels use the whole device; the count is checked and otherwise ignored."""
    _ref.check_int("n", n, 1)


def get_num_threads() -> int:
    return 1


# ---------------------------------------------------------------- tensor cores or CUDA cores

def _setting_from_env() -> bool | None:
    value = os.environ.get("MINIBNN_CUDA_TENSOR_CORES", "auto").strip().lower()
    choices = {"auto": None, "": None, "1": True, "on": True, "true": True, "0": False, "off": False, "false": False}
    if value not in choices:
        raise ValueError(f"MINIBNN_CUDA_TENSOR_CORES must be auto, 1 / on or 0 / off, got {value!r}")
    return choices[value]


_FROM_ENV = "env"
_tensor_cores: bool | None | str = _FROM_ENV  # set_tensor_cores' choice; until then MINIBNN_CUDA_TENSOR_CORES
_forced_tile: str | None = None


def set_tensor_cores(enabled: bool | None) -> None:
    """Choose the GEMM / convolution kernels: None = tensor cores where the GPU has them (compute
    capability 8.0+; overrides MINIBNN_CUDA_TENSOR_CORES), False = the CUDA-core kernels, True =
    tensor cores or an error."""
    global _tensor_cores
    if enabled is not None and not isinstance(enabled, bool):
        raise ValueError(f"set_tensor_cores takes True, False or None (automatic), got {enabled!r}")
    _tensor_cores = enabled


def uses_tensor_cores() -> bool:
    """Whether xnor_gemm and binary_conv2d run on the binary tensor cores of the current GPU."""
    wanted = _setting_from_env() if _tensor_cores == _FROM_ENV else _tensor_cores
    if wanted is False:
        return False
    capable = _runtime.device_properties()[0] >= TC_MIN_CAPABILITY
    if wanted and not capable:
        cc = ".".join(map(str, _runtime.device_properties()[0]))
        raise BackendUnavailable(f"tensor cores were requested but this GPU (compute capability {cc}) has no b1 "
                                 f"mma; it needs 8.0 or newer. Fix: set_tensor_cores(None) uses the CUDA cores.")
    return capable


@contextlib.contextmanager
def tile_config(name: str | None) -> Iterator[None]:
    """Force one tensor-core tile configuration (a key of TC_CONFIGS) inside the block (tests, benchmarks)."""
    global _forced_tile
    if name is not None and name not in TC_CONFIGS:
        raise ValueError(f"tile_config: expected one of {sorted(TC_CONFIGS)} or None, got {name!r}")
    previous, _forced_tile = _forced_tile, name
    try:
        yield
    finally:
        _forced_tile = previous


def _tc_config(rows: int, cols: int) -> str:
    """The tile shape for a rows x cols output: skinny for a few rows (batch-1 layers); large when its
    blocks fill the GPU twice over and the columns fill its 128 (64 output channels would waste half
    of every mma); medium otherwise."""
    if _forced_tile is not None:
        return _forced_tile
    if rows <= TC_CONFIGS["skinny"][0]:
        return "skinny"
    bm, bn, _ = TC_CONFIGS["large"]
    blocks = -(-rows // bm) * -(-cols // bn)
    return "large" if cols > TC_CONFIGS["medium"][1] and blocks >= 2 * _runtime.device_properties()[1] else "medium"


# ---------------------------------------------------------------- launch planning (pure Python)

def _i32(v) -> numpy.int32:
    return numpy.int32(v)


def _i64(v) -> numpy.int64:
    return numpy.int64(v)


def _blocks(threads: int, per_block: int) -> int:
    blocks = -(-threads // per_block)
    if blocks > _MAX_GRID:
        raise ValueError(f"the problem is too large for one launch ({threads} threads)")
    return blocks


def _plan_1d(kernel: str, threads: int, args: tuple) -> Launch:
    return Launch(kernel, (_blocks(threads, BLOCK_1D), 1, 1), (BLOCK_1D, 1, 1), args)


def _plan_tiles(kernel: str, rows: int, cols: int, args: tuple) -> Launch:
    """A 1-D grid of block tiles over a rows x cols output (register-tiled kernels)."""
    bx, by = TILE_BLOCK
    tiles = -(-rows // (by * TILE_ROWS)) * -(-cols // (bx * TILE_COLS))
    return Launch(kernel, (_blocks(tiles, 1), 1, 1), (bx, by, 1), args)


def _vec(words: int, *arrays) -> numpy.int32:
    """1 when the kernels may read two words at a time: an even word count and 16-byte aligned operands."""
    return _i32(words % 2 == 0 and all(_runtime.address(a) % 16 == 0 for a in arrays))


def _plan_tc(x, wt, pad, pb, corr, g: dict, epilogue: tuple, out) -> Launch:
    """The tensor-core launch for a convolution geometry ``g`` (a GEMM is a 1x1 one of 1x1 images).

    epilogue: (scale, bias) for float32 ``out``, (threshold, flip) for packed uint64, () for int32.
    """
    kind = TC_EPILOGUES[out.dtype]
    rows = g["batch"] * g["oh"] * g["ow"]
    config = _tc_config(rows, g["o"])
    bm, bn, threads = TC_CONFIGS[config]
    vec = _vec(g["wc"], x, wt, pad)  # 16-byte copies
    _ints_fit(h=g["h"], w=g["w"], o=g["o"], kh=g["kh"], kw=g["kw"], stride=max(g["sh"], g["sw"]),
              padding=max(g["ph"], g["pw"]), oh=g["oh"], ow=g["ow"], kwords=g["kh"] * g["kw"] * g["wc"])
    f32, i32, u8, u64 = (_unused(t) for t in (numpy.float32, numpy.int32, numpy.uint8, numpy.uint64))
    scale, bias = epilogue if kind == "affine" else (f32, f32)
    threshold, flip = epilogue if kind == "threshold" else (i32, u8)
    outs = {"int": (out, f32, u64), "affine": (i32, out, u64), "threshold": (i32, f32, out)}[kind]
    has_corr = corr is not None
    args = (x, wt, pad, pb, corr if has_corr else i32, _i32(has_corr), _i64(g["batch"]),
            *map(_i32, (g["h"], g["w"], g["wc"], g["o"], g["kh"], g["kw"], g["sh"], g["sw"], g["ph"], g["pw"],
                        g["oh"], g["ow"], g["k"])),
            scale, bias, threshold, flip, *outs)
    tiles = -(-rows // bm) * -(-g["o"] // bn)
    return Launch(f"mbk_tc_{config}_{kind}_{'v16' if vec else 'v8'}", (_blocks(tiles, 1), 1, 1), (threads, 1, 1), args)


def _unused(dtype):
    """An empty array of ``dtype`` for a kernel argument the launch does not read (cached per device)."""
    key = ("unused", _runtime.device(), numpy.dtype(dtype).str)
    if key not in _runtime.pad_cache:
        _runtime.pad_cache[key] = _runtime.xp.empty(0, dtype=dtype)
    return _runtime.pad_cache[key]


def _tc_gemm(a_words, b_words, k: int, epilogue: tuple, out) -> None:
    """xnor_gemm's three epilogues on the tensor cores: rows of a are 1x1 images, rows of b 1x1 filters."""
    m, w = a_words.shape
    g = dict(batch=m, h=1, w=1, wc=w, o=b_words.shape[0], kh=1, kw=1, sh=1, sw=1, ph=0, pw=0, oh=1, ow=1, k=k)
    _launch(_plan_tc(a_words, b_words, a_words, popcount_rows(b_words), None, g, epilogue, out))


def _tc_conv(x_words, w_words, g: dict, correction, epilogue: tuple, out) -> None:
    """binary_conv2d's three epilogues on the tensor cores (implicit GEMM over the taps)."""
    corr = None
    if g["pad_value"] == 0:
        corr = _correction(w_words, g) if correction is None else correction
    pb = popcount_rows(w_words.reshape(g["o"], -1))
    _launch(_plan_tc(x_words, w_words, _pad_words(g), pb, corr, g, epilogue, out))


def _ints_fit(**values) -> None:
    for key, v in values.items():
        if v > _INT32_MAX:
            raise ValueError(f"{key} = {v} does not fit the int32 kernel argument")


# ---------------------------------------------------------------- arrays

def _on_device(argname: str, a, xp):
    """``a`` as an array of the backend: a CuPy array stays, a NumPy array is an error, other data is copied."""
    if isinstance(a, xp.ndarray):
        return a
    _ref.check_host(argname, a, name)
    if isinstance(a, numpy.generic):
        raise ValueError(f"{argname} must be an array, got the scalar {a!r}")
    return xp.asarray(a)


def _check_axis(x, axis) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, numpy.integer)) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be an int in [{-x.ndim}, {x.ndim - 1}] for x of shape {x.shape}, got {axis!r}")
    return int(axis) % x.ndim


_PACK_KERNELS = {numpy.dtype(numpy.float32): "mbk_pack_f32", numpy.dtype(numpy.float64): "mbk_pack_f64"}


def pack_bits(x, axis: int = -1):
    """Sign-and-pack ``x`` along ``axis`` into uint64 words (bit 1 = x >= 0, LSB first, tail bits 0).

    The packed axis moves last. float32 and float64 are packed by one kernel from any axis (a
    non-contiguous view is copied first); other real dtypes go through ``x >= 0`` on the GPU.
    """
    xp = _runtime.xp
    x = _on_device("x", x, xp)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"x must be a real (bool, int or float) array, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("x must have at least one axis to pack along, got a 0-d array")
    axis = _check_axis(x, axis)
    k = x.shape[axis]
    outer, inner = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
    out = xp.empty(x.shape[:axis] + x.shape[axis + 1:] + (n_words(k),), dtype=numpy.uint64)
    if out.size == 0:
        return out
    kernel = _PACK_KERNELS.get(x.dtype)
    if kernel is None:
        x, kernel = x >= 0, "mbk_pack_u8"  # bool: one byte, 0 or 1
    x = xp.ascontiguousarray(x)
    _launch(_plan_1d(kernel, outer * n_words(k) * inner, (x, _i64(outer), _i64(k), _i64(inner), out)))
    return out


def pack_channels(x):
    """Sign-and-pack NCHW activations along channels: uint64 (N, H, W, ceil(C/64)), tail bits 0."""
    x = _on_device("x", x, _runtime.xp)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    return pack_bits(x, axis=1)


def unpack_bits(words, k: int):
    """Inverse of pack_bits along the last axis: float32 +-1 values of true length ``k``."""
    xp = _runtime.xp
    words = _on_device("words", words, xp)
    if words.dtype != numpy.uint64 or words.ndim < 1:
        raise ValueError(f"words must be a uint64 array with at least one axis, got {words.dtype} {words.shape}")
    _ref.check_int("k", k, 0, 64 * words.shape[-1])
    words = xp.ascontiguousarray(words)
    as_bytes = words.view(numpy.uint8)  # little-endian: byte j holds bits 8j..8j+7
    bits = (as_bytes[..., None] >> xp.arange(8, dtype=numpy.uint8)) & numpy.uint8(1)
    bits = bits.reshape(words.shape[:-1] + (words.shape[-1] * 64,))[..., :k]
    return bits.astype(numpy.float32) * 2 - 1


def popcount_rows(words):
    """Set bits of each row (last axis) of a uint64 array, as int32 of shape words.shape[:-1]."""
    xp = _runtime.xp
    _ref.check_array("words", words, numpy.uint64, None, "packed rows", xp=xp, backend=name)
    if words.ndim < 1:
        raise ValueError("words must have at least one axis, got a 0-d array")
    out = xp.empty(words.shape[:-1], dtype=numpy.int32)
    if out.size == 0:
        return out
    if words.shape[-1] > _INT32_MAX // 64:
        raise ValueError(f"words: rows of {words.shape[-1]} words overflow the int32 count")
    words = xp.ascontiguousarray(words)
    _launch(_plan_1d("mbk_popcount_rows", out.size, (words, _i64(out.size), _i64(words.shape[-1]), out)))
    return out


# ---------------------------------------------------------------- GEMM

def _plan_gemm(kernel: str, a_words, b_words, k: int, extra: tuple, packed: bool = False) -> Launch:
    m, n, w = a_words.shape[0], b_words.shape[0], a_words.shape[1]
    args = (a_words, b_words, _i64(m), _i64(n), _i64(w), _i32(k), _vec(w, a_words, b_words), *extra)
    if packed:  # one thread per (row, output word)
        return _plan_1d(kernel, m * n_words(n), args)
    return _plan_tiles(kernel, m, n, args)


def xnor_gemm(a_words, b_words, k: int, out, check_tails: bool = True):
    """out[m, n] = K - 2 * popcount(a[m] XOR b[n]): the +-1 dot product of packed rows.

    a_words (M, W) and b_words (N, W) uint64 CuPy arrays with W = ceil(k / 64); out int32 (M, N).
    ``check_tails=False``: the caller vouches that the tail bits are 0 (saves a device sync).
    """
    k = _ref.check_gemm(a_words, b_words, k, out, numpy.int32, True, check_tails=check_tails,
                        xp=_runtime.xp, backend=name)
    if out.size and uses_tensor_cores():
        _tc_gemm(a_words, b_words, k, (), out)
    elif out.size:
        _launch(_plan_gemm("mbk_xnor_gemm", a_words, b_words, k, (out,)))
    return out


def xnor_gemm_affine(a_words, b_words, k: int, scale, bias, out, check_tails: bool = True):
    """out[m, n] = scale[n] * dot + bias[n] in float32 (multiply, round, add, round): the fused epilogue."""
    k = _ref.check_gemm(a_words, b_words, k, out, numpy.float32, True, scale, bias, check_tails=check_tails,
                        xp=_runtime.xp, backend=name)
    if out.size and uses_tensor_cores():
        _tc_gemm(a_words, b_words, k, (scale, bias), out)
    elif out.size:
        _launch(_plan_gemm("mbk_xnor_gemm_affine", a_words, b_words, k, (scale, bias, out)))
    return out


def xnor_gemm_threshold(a_words, b_words, k: int, threshold, flip, out, check_tails: bool = True):
    """Packed bits (dot >= threshold[n]) != flip[n]: uint64 (M, ceil(N / 64)), a folded batch norm + sign."""
    xp = _runtime.xp
    n = b_words.shape[0] if isinstance(b_words, xp.ndarray) and b_words.ndim == 2 else 0
    k = _ref.check_gemm(a_words, b_words, k, out, numpy.uint64, True, out_cols=n_words(n), check_tails=check_tails,
                        xp=xp, backend=name)
    _ref.check_threshold(threshold, flip, n, "(N,) = b_words rows", True, xp=xp, backend=name)
    _ref.check_disjoint(out, xp, threshold=threshold, flip=flip)  # threads read them while others write out
    if out.size and uses_tensor_cores():
        _tc_gemm(a_words, b_words, k, (threshold, flip), out)
    elif out.size:
        _launch(_plan_gemm("mbk_xnor_gemm_threshold", a_words, b_words, k, (threshold, flip, out), packed=True))
    return out


# ---------------------------------------------------------------- convolution

def _pad_words(g: dict):
    """The words a tap in the padding reads (cached per device): see numpy_ref.pad_words."""
    plus = g["pad_value"] == 1
    key = (_runtime.device(), g["wc"], g["c"] % 64 if plus else 0, plus)
    cache = _runtime.pad_cache
    if key not in cache:
        if len(cache) > 64:
            cache.clear()
        cache[key] = _runtime.xp.asarray(_ref.pad_words(g["c"], 1 if plus else -1))
    return cache[key]


def _plan_pad_correction(w_words, g: dict, out) -> Launch:
    return _plan_1d("mbk_conv_pad_correction", out.size,
                    (w_words, *map(_i32, (g["o"], g["kh"], g["kw"], g["c"], g["wc"], g["h"], g["w"], g["sh"], g["sw"],
                                          g["ph"], g["pw"], g["oh"], g["ow"])), out))


def _correction(w_words, g: dict):
    out = _runtime.xp.empty((g["oh"], g["ow"], g["o"]), dtype=numpy.int32)
    if out.size:
        _launch(_plan_pad_correction(w_words, g, out))
    return out


def _plan_conv(kernel: str, x_words, w_words, g: dict, correction, extra: tuple, packed: bool = False) -> Launch:
    _ints_fit(h=g["h"], w=g["w"], o=g["o"], kh=g["kh"], kw=g["kw"], stride=max(g["sh"], g["sw"]),
              padding=max(g["ph"], g["pw"]), oh=g["oh"], ow=g["ow"])
    pad = _pad_words(g)
    has_corr = g["pad_value"] == 0
    if has_corr and correction is None:
        correction = _correction(w_words, g)
    corr = correction if has_corr else _runtime.xp.empty(0, dtype=numpy.int32)  # not read
    args = (x_words, w_words, pad, corr, _i32(has_corr), _i64(g["batch"]),
            *map(_i32, (g["h"], g["w"], g["wc"], g["o"], g["kh"], g["kw"], g["sh"], g["sw"], g["ph"], g["pw"],
                        g["oh"], g["ow"], g["k"])),
            _vec(g["wc"], x_words, w_words, pad), *extra)
    pixels = g["batch"] * g["oh"] * g["ow"]
    if packed:  # one thread per (output pixel, output word)
        return _plan_1d(kernel, pixels * n_words(g["o"]), args)
    return _plan_tiles(kernel, pixels, g["o"], args)


def conv_pad_correction(w_words, channels: int, in_hw, stride, padding):
    """What -1 padding took away, per output position: int32 (OH, OW, O) (see numpy_ref)."""
    xp = _runtime.xp
    _ref.check_array("w_words", w_words, numpy.uint64, 4, "(O, kh, kw, ceil(C/64)) channel-packed weights", True,
                     xp=xp, backend=name)
    c = _ref.check_int("channels", channels, 1)
    if w_words.shape[3] != n_words(c):
        raise ValueError(f"w_words must have ceil(channels / 64) = {n_words(c)} words per tap, got {w_words.shape}")
    h, w = _ref.check_pair("in_hw", in_hw, 1)
    (sh, sw), (ph, pw) = _ref.check_pair("stride", stride, 1), _ref.check_pair("padding", padding, 0)
    o, kh, kw, _ = w_words.shape
    if kh * kw * c > _INT32_MAX:
        raise ValueError(f"kh * kw * channels = {kh * kw * c} does not fit int32")
    oh, ow = conv_output_hw((h, w), (kh, kw), (sh, sw), (ph, pw))
    if oh < 1 or ow < 1:
        raise ValueError(f"in_hw: input {h}x{w} with padding {(ph, pw)} is smaller than the kernel {kh}x{kw}")
    _ref.check_tail("w_words", w_words, c)
    _ints_fit(h=h, w=w, o=o, stride=max(sh, sw), padding=max(ph, pw), oh=oh, ow=ow)
    g = dict(o=o, kh=kh, kw=kw, c=c, wc=n_words(c), h=h, w=w, sh=sh, sw=sw, ph=ph, pw=pw, oh=oh, ow=ow)
    return _correction(w_words, g)


def binary_conv2d(x_words, w_words, channels: int, stride, padding, pad_value, out, correction=None,
                  check_tails: bool = True):
    """The exact +-1 convolution of channel-packed activations and weights, int32 (N, OH, OW, O).

    x_words (N, H, W, ceil(C/64)) from pack_channels, w_words (O, kh, kw, ceil(C/64)); equal to a
    float conv2d of sign(x) padded with ``pad_value`` (0, +1 or -1) against sign(w).
    ``correction`` (pad_value 0 only; computed on the GPU when None): conv_pad_correction of the weights.
    """
    g = _ref.check_conv(x_words, w_words, channels, stride, padding, pad_value, out, numpy.int32, True, correction,
                        check_tails=check_tails, xp=_runtime.xp, backend=name)
    if out.size and uses_tensor_cores():
        _tc_conv(x_words, w_words, g, correction, (), out)
    elif out.size:
        _launch(_plan_conv("mbk_binary_conv2d", x_words, w_words, g, correction, (out,)))
    return out


def binary_conv2d_affine(x_words, w_words, channels: int, stride, padding, pad_value, scale, bias, out,
                         correction=None, check_tails: bool = True):
    """binary_conv2d with the fused float32 epilogue out = scale[o] * y + bias[o], float32 (N, OH, OW, O)."""
    g = _ref.check_conv(x_words, w_words, channels, stride, padding, pad_value, out, numpy.float32, True,
                        correction, scale, bias, check_tails=check_tails, xp=_runtime.xp, backend=name)
    if out.size and uses_tensor_cores():
        _tc_conv(x_words, w_words, g, correction, (scale, bias), out)
    elif out.size:
        _launch(_plan_conv("mbk_binary_conv2d_affine", x_words, w_words, g, correction, (scale, bias, out)))
    return out


def binary_conv2d_threshold(x_words, w_words, channels: int, stride, padding, pad_value, threshold, flip, out,
                            correction=None, check_tails: bool = True):
    """binary_conv2d emitting packed bits (y >= threshold[o]) != flip[o]: uint64 (N, OH, OW, ceil(O/64))."""
    xp = _runtime.xp
    g = _ref.check_conv(x_words, w_words, channels, stride, padding, pad_value, out, numpy.uint64, True,
                        correction, packed_out=True, check_tails=check_tails, xp=xp, backend=name)
    _ref.check_threshold(threshold, flip, g["o"], "(O,) = w_words.shape[0]", True, xp=xp, backend=name)
    _ref.check_disjoint(out, xp, threshold=threshold, flip=flip)  # threads read them while others write out
    if out.size and uses_tensor_cores():
        _tc_conv(x_words, w_words, g, correction, (threshold, flip), out)
    elif out.size:
        _launch(_plan_conv("mbk_binary_conv2d_threshold", x_words, w_words, g, correction, (threshold, flip, out),
                           packed=True))
    return out
