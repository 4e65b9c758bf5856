"""Compile a CUDA source with NVRTC (what cupy.RawModule does) without CuPy or a GPU: the library only.

NVRTC needs no driver, so where libnvrtc is installed (the CUDA toolkit, or the pip package
nvidia-cuda-nvrtc) the tests can check that the kernels compile with exactly the options
minibnn.backend.cuda passes, for a given architecture, before any GPU time is spent.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os


def find_library() -> str | None:
    """A libnvrtc path: the pip package (nvidia/cu13 or nvidia/cuda_nvrtc), the CUDA toolkit, the loader's path."""
    candidates = []
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec and spec.submodule_search_locations else []):
        candidates += sorted(glob.glob(os.path.join(root, "cu1*", "lib", "libnvrtc.so.*")), reverse=True)
        candidates += sorted(glob.glob(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so.*")), reverse=True)
    for home in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates += sorted(glob.glob(os.path.join(home, "lib64", "libnvrtc.so*")), reverse=True)
    candidates = [c for c in candidates if ".alt." not in c]
    found = ctypes.util.find_library("nvrtc")
    return candidates[0] if candidates else found


def compile_source(source: str, options: tuple[str, ...], arch: str, lib_path: str | None = None) -> tuple[int, str]:
    """(NVRTC's result code, 0 on success; the compile log) for ``source`` with ``options`` for ``arch`` (sm_XX)."""
    path = lib_path or find_library()
    if path is None:
        raise OSError("libnvrtc was not found")
    folder = os.path.dirname(path)
    for builtins in sorted(glob.glob(os.path.join(folder, "libnvrtc-builtins.so*"))):  # NVRTC dlopens it by name
        if ".alt." not in builtins:
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(path)
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"minibnn_kernels.cu", 0, None, None)
    if rc:
        return rc, "nvrtcCreateProgram failed"
    try:
        opts = [o.encode() for o in (*options, f"--gpu-architecture={arch}")]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(max(1, size.value))
        lib.nvrtcGetProgramLog(prog, log)
        return rc, log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
