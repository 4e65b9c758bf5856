"""Host emulator of minibnn's CUDA kernels: run the cuda backend's whole table on the CPU.

``build()`` compiles native/cuda/minibnn_kernels.cu with g++ as host C++ (cuda_shim.h defines
``__global__``, ``threadIdx``, ``__ldg``, ``__popcll``, ``__fmul_rn``, ...) together with
emulator.cpp, a launcher that runs every thread of every block in turn. ``build(TC_KERNELS,
cooperative=True)`` builds the tensor-core kernels (native/cuda/minibnn_tc.cu) the same way, with
coop_shim.h: each block's threads run as fibers, with shared memory, ``__syncthreads``, queued
cp.async copies and the warp-wide b1 mma computed from the 32 lanes' fragments (a barrier that not
every thread reaches is reported as a deadlock). ``runtime()`` gives an object
that minibnn.backend.cuda accepts in ``use_runtime``: its array module ``xp`` makes ``DeviceArray``
(a NumPy array standing for device memory; plain NumPy arrays are "host memory" and the table
rejects them, as it would on a GPU), and its ``launch`` runs a planned kernel launch here.

What the emulator checks on every launch, beyond the results:
- every scalar argument is a NumPy scalar of exactly the C parameter's type and every array's dtype
  matches the pointer's element type (what CuPy would pass on blindly);
- every global read (all go through ``__ldg``) lies inside the arrays passed to the launch and is
  aligned (16-byte vector loads included);
- grid and block sizes are within CUDA's limits.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from minibnn.backend import cuda

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KERNELS = ROOT / "native" / "cuda" / "minibnn_kernels.cu"
TC_KERNELS = ROOT / "native" / "cuda" / "minibnn_tc.cu"
COOP_SELFTEST = HERE / "coop_selftest.cu"
FLAGS = ["-std=c++14", "-O2", "-ffp-contract=off", "-fno-strict-aliasing", "-fPIC", "-shared",
         "-Wall", "-Wextra", "-Wno-unknown-pragmas", "-Wno-unused-parameter"]


class EmulatorUnavailable(RuntimeError):
    """No C++ compiler here (the emulator tests skip with this message)."""


def kernel_names(source: Path = KERNELS) -> list[str]:
    """The extern "C" __global__ functions of the .cu, in order (MBK_TC_KERNEL(name, ...) lines included)."""
    text = re.sub(r"#define(?:[^\n]*\\\n)*[^\n]*", "", source.read_text(encoding="utf-8"))  # not macro bodies
    pattern = r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\('
    return re.findall(pattern, text) + re.findall(r"^MBK_TC_KERNEL\((\w+),", text, flags=re.M)


def build(out_dir: str | os.PathLike | None = None, source: Path = KERNELS, cooperative: bool = False) -> Path:
    """Compile the emulator library of ``source`` into ``out_dir`` (a new temporary directory when None)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise EmulatorUnavailable("no C++ compiler (g++) found: the host emulator of the CUDA kernels cannot be built")
    out = Path(out_dir or tempfile.mkdtemp(prefix="minibnn_cuda_emu_"))
    out.mkdir(parents=True, exist_ok=True)
    out = out / source.stem
    out.mkdir(exist_ok=True)
    (out / "kernels.inc").write_text("".join(f"EMU_KERNEL({n})\n" for n in kernel_names(source)), encoding="utf-8")
    lib = out / "libminibnn_cuda_emu.so"
    defines = [f'-DEMU_SOURCE="{source.name}"'] + (["-DEMU_COOPERATIVE"] if cooperative else [])
    cmd = [cxx, *FLAGS, *defines, f"-I{HERE}", f"-I{source.parent}", f"-I{KERNELS.parent}", f"-I{out}", str(HERE / "emulator.cpp"),
           "-o", str(lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the CUDA emulator failed:\n{' '.join(cmd)}\n{proc.stderr}")
    if proc.stderr.strip():
        raise RuntimeError(f"the CUDA kernels compile with warnings as host C++:\n{proc.stderr}")
    return lib


# ---------------------------------------------------------------- emulated device arrays

class DeviceArray(np.ndarray):
    """A NumPy array standing for GPU memory in the emulator (``.get()`` copies it to the host)."""

    def get(self) -> np.ndarray:
        return np.array(self, copy=True).view(np.ndarray)


def _wrap(value):
    if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
        return value.view(DeviceArray)
    return value


class EmulatedXP:
    """The array module of the emulated runtime: NumPy, returning DeviceArray."""

    ndarray = DeviceArray

    def asarray(self, a, dtype=None):
        """Like cupy.asarray: host data is copied to (emulated) device memory."""
        if isinstance(a, DeviceArray) and (dtype is None or a.dtype == np.dtype(dtype)):
            return a
        return np.array(a, dtype=dtype, copy=True).view(DeviceArray)

    def ascontiguousarray(self, a, dtype=None):
        return np.ascontiguousarray(a, dtype=dtype).view(DeviceArray)

    def asnumpy(self, a):
        return np.array(a, copy=True).view(np.ndarray)

    def __getattr__(self, name):
        attr = getattr(np, name)
        if callable(attr) and not isinstance(attr, type):
            def wrapped(*args, **kwargs):
                return _wrap(attr(*args, **kwargs))
            return wrapped
        return attr


# ---------------------------------------------------------------- the launcher

_CODES = {"i4": np.int32, "u4": np.uint32, "i8": np.int64, "u8": np.uint64, "f4": np.float32, "f8": np.float64,
          "u1": np.uint8}
_CTYPES = {"i4": ctypes.c_int32, "u4": ctypes.c_uint32, "i8": ctypes.c_int64, "u8": ctypes.c_uint64,
           "f4": ctypes.c_float, "f8": ctypes.c_double, "u1": ctypes.c_uint8}
MAX_GRID_X = 2**31 - 1
MAX_BLOCK = 1024


def _code(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return "u1"
    return f"{dtype.kind}{dtype.itemsize}"


class Emulator:
    """The built library, loaded with ctypes."""

    def __init__(self, lib_path: Path):
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.emu_launch.restype = ctypes.c_longlong
        self.lib.emu_error.restype = ctypes.c_char_p
        self.lib.emu_set_hostile.argtypes = [ctypes.c_int]
        self.lib.emu_launch.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                                        ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_ulonglong),
                                        ctypes.c_int, ctypes.POINTER(ctypes.c_ulonglong), ctypes.POINTER(ctypes.c_int)]
        self._signatures: dict[str, list[str]] = {}
        self.launches = collections.deque(maxlen=64)  # (kernel, grid, block, args) of the latest launches

    @contextlib.contextmanager
    def hostile(self):
        """Inside the block, cooperative kernels run on the hostile schedule (coop_shim.h): eager copies,
        the highest thread first."""
        self.lib.emu_set_hostile(1)
        try:
            yield
        finally:
            self.lib.emu_set_hostile(0)

    def kernels(self) -> list[str]:
        buf = ctypes.create_string_buffer(4096)
        self.lib.emu_kernels(buf, len(buf))
        return buf.value.decode().split(",")

    def signature(self, kernel: str) -> list[str]:
        if kernel not in self._signatures:
            buf = ctypes.create_string_buffer(1024)
            if self.lib.emu_signature(kernel.encode(), buf, len(buf)) < 0:
                raise LookupError(f"the CUDA source has no kernel named {kernel!r}")
            self._signatures[kernel] = buf.value.decode().split(",") if buf.value else []
        return self._signatures[kernel]

    def launch(self, kernel: str, grid, block, args) -> None:
        grid, block = _dims(grid), _dims(block)
        if not (1 <= grid[0] <= MAX_GRID_X and 1 <= grid[1] <= 65535 and 1 <= grid[2] <= 65535):
            raise ValueError(f"{kernel}: grid {grid} is outside CUDA's limits")
        if not (all(b >= 1 for b in block) and block[0] * block[1] * block[2] <= MAX_BLOCK and block[2] <= 64):
            raise ValueError(f"{kernel}: block {block} is outside CUDA's limits")
        sig = self.signature(kernel)
        if len(args) != len(sig):
            raise TypeError(f"{kernel} takes {len(sig)} arguments ({','.join(sig)}), got {len(args)}")
        values, ranges = [], []
        for i, (arg, code) in enumerate(zip(args, sig)):
            if code.startswith("*"):
                if not isinstance(arg, np.ndarray):
                    raise TypeError(f"{kernel} argument {i}: expected an array ({code}), got {type(arg).__name__}")
                if _code(arg.dtype) != code[1:]:
                    raise TypeError(f"{kernel} argument {i}: array dtype {arg.dtype} does not match the C type {code}")
                if not arg.flags.c_contiguous:
                    raise TypeError(f"{kernel} argument {i}: the array is not C-contiguous")
                address = arg.ctypes.data
                ranges += [address, address + arg.nbytes]
                values.append(ctypes.c_void_p(address))
            else:
                if not isinstance(arg, np.generic) or arg.dtype != np.dtype(_CODES[code]):
                    raise TypeError(f"{kernel} argument {i}: expected a numpy {np.dtype(_CODES[code]).name} scalar "
                                    f"(C type {code}), got {type(arg).__name__} {arg!r}")
                values.append(_CTYPES[code](arg.item()))
        argv = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p)
                                                        for v in values])
        rng = (ctypes.c_ulonglong * max(1, len(ranges)))(*ranges)
        bad_address, bad_size = ctypes.c_ulonglong(0), ctypes.c_int(0)
        self.launches.append((kernel, grid, block, tuple(args)))
        rc = self.lib.emu_launch(kernel.encode(), (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), argv,
                                 rng, len(ranges) // 2, ctypes.byref(bad_address), ctypes.byref(bad_size))
        if rc == -1:
            raise LookupError(f"the CUDA source has no kernel named {kernel!r}")
        if rc == -3:
            raise AssertionError(f"{kernel}: {self.lib.emu_error().decode()}")
        if rc:
            where = ", ".join(f"[{ranges[j]:#x}, {ranges[j + 1]:#x})" for j in range(0, len(ranges), 2))
            what = "misaligned" if bad_size.value < 0 else "out-of-bounds"
            raise AssertionError(f"{kernel}: {rc} bad reads, the first {what} ({abs(bad_size.value)} bytes at "
                                 f"{bad_address.value:#x}); arrays at {where}")


def _dims(d) -> tuple[int, int, int]:
    d = (d,) if isinstance(d, int) else tuple(d)
    if any(not isinstance(v, (int, np.integer)) for v in d):
        raise TypeError(f"grid / block sizes must be ints, got {d!r}")
    return tuple(int(v) for v in d) + (1,) * (3 - len(d))


class Runtime:
    """What minibnn.backend.cuda.use_runtime takes: the array module, the launcher, an address function.

    It stands for a GPU of compute capability ``capability`` with ``multiprocessors`` SMs (few, so
    that the tile choice for "enough blocks to fill the GPU" is exercised by small problems).
    """

    def __init__(self, emulator: Emulator, tc_emulator: Emulator | None = None, capability: tuple = (9, 0),
                 multiprocessors: int = 2):
        self.emulator = emulator
        self.tc_emulator = tc_emulator
        self.xp = EmulatedXP()
        self.pad_cache: dict = {}
        self.capability = capability
        self.multiprocessors = multiprocessors

    def launch(self, kernel: str, grid, block, args) -> None:
        if kernel.startswith("mbk_tc_"):
            if self.tc_emulator is None:
                raise LookupError(f"{kernel}: this emulated runtime has no tensor-core kernels")
            self.tc_emulator.launch(kernel, grid, block, args)
        else:
            self.emulator.launch(kernel, grid, block, args)

    def device_properties(self) -> tuple[tuple[int, int], int]:
        """(compute capability, number of SMs) of the emulated GPU."""
        return self.capability, self.multiprocessors

    @staticmethod
    def address(a) -> int:
        return a.ctypes.data

    @staticmethod
    def device() -> int:
        return 0


class EmulatedTable:
    """minibnn.backend.cuda's kernel table with every call run on the host emulator.

    Attribute access gives cuda.py's own functions, wrapped so that each call runs inside
    ``cuda.use_runtime(runtime)``; ``xp`` is the emulated array module, ``runtime`` the runtime.
    """

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.xp = runtime.xp

    def __getattr__(self, attr):
        value = getattr(cuda, attr)
        if not callable(value) or isinstance(value, type):
            return value

        @functools.wraps(value)
        def call(*args, **kwargs):
            with cuda.use_runtime(self.runtime):
                return value(*args, **kwargs)

        return call


@functools.lru_cache(maxsize=None)
def emulated_table() -> EmulatedTable:
    """The table on an emulator built once per process (in a temporary directory removed at exit)."""
    out = tempfile.mkdtemp(prefix="minibnn_cuda_emu_")
    atexit.register(shutil.rmtree, out, True)
    return EmulatedTable(Runtime(Emulator(build(out)), Emulator(build(out, TC_KERNELS, cooperative=True))))
