"""The binary tensor-core path of the cuda backend (native/cuda/minibnn_tc.cu), beyond the table tests.

test_cuda_backend.py compares every kernel path (each tile configuration forced, and the CUDA-core
fallback) with numpy_ref on the host emulator and, where there is one, on the GPU. Here: how the
path and the tile are chosen (compute capability, the setting, MINIBNN_CUDA_TENSOR_CORES, the
problem's shape), that the tile constants agree with the .cu, and that the cooperative emulator
itself is right: its b1 mma against NumPy for a kernel written from ../shared/GPU.md's fragment
table (on a GPU the same kernel runs on the hardware), and deadlocks reported, not hung.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cuda_backend import GPU_SKIP, HAS_GPU, TC_SOURCE, _conv_checks, _gemm_checks, kernel_path
from test_kernels import emulated_cuda, host

from minibnn.backend import BackendUnavailable, cuda
from minibnn.backend import numpy_ref as ref

ROOT = Path(__file__).resolve().parents[1]


def emulated_gpu(capability: tuple, multiprocessors: int = 2):
    """cuda.py's table on the emulator, standing for a GPU of another compute capability / size."""
    import cuda_emu

    rt = emulated_cuda().runtime
    return cuda_emu.EmulatedTable(cuda_emu.Runtime(rt.emulator, rt.tc_emulator, capability, multiprocessors))


def _gemm_kernel(kb, m: int, n: int, k: int) -> str:
    """Run xnor_gemm on (m, n, k) and return the name of the GEMM kernel it launched."""
    rng = np.random.default_rng(m * 1000 + n)
    a = ref.pack_bits(rng.standard_normal((m, k)).astype(np.float32))
    b = ref.pack_bits(rng.standard_normal((n, k)).astype(np.float32))
    runtime = kb.runtime
    for emulator in (runtime.emulator, runtime.tc_emulator):
        emulator.launches.clear()
    out = kb.xnor_gemm(kb.xp.asarray(a), kb.xp.asarray(b), k, kb.xp.empty((m, n), np.int32))
    np.testing.assert_array_equal(host(out), ref.xnor_gemm(a, b, k, np.empty((m, n), np.int32)))
    launched = [launch[0] for e in (runtime.emulator, runtime.tc_emulator) for launch in e.launches]
    return next(name for name in launched if "gemm" in name or name.startswith("mbk_tc_"))


def test_cuda_tc_tile_configs_match_the_source():
    """TC_CONFIGS (rows, columns, threads) equals each MBK_TC_KERNEL line's BM, BN and WM * WN * 32."""
    lines = re.findall(r"^MBK_TC_KERNEL\(mbk_tc_(\w+?)_(\w+?)_(v16|v8), (\d+), (\d+), (\d+), (\d+), (\d), (\d)\)",
                       TC_SOURCE.read_text(), flags=re.M)
    assert len(lines) == 18
    kinds = {"int": "0", "affine": "1", "threshold": "2"}
    for config, kind, vec, bm, bn, wm, wn, vw, kind_code in lines:
        assert cuda.TC_CONFIGS[config] == (int(bm), int(bn), int(wm) * int(wn) * 32), config
        assert vw == ("2" if vec == "v16" else "1") and kinds[kind] == kind_code
        assert int(bn) % 64 == 0 and int(bm) <= int(wm) * int(wn) * 32  # packed words per tile; row counters
    assert set(kinds) == set(cuda.TC_EPILOGUES.values())


def test_cuda_tc_tile_choice_follows_the_shape():
    kb = emulated_gpu((9, 0), multiprocessors=2)  # large tiles when there are 2 per SM: at least 4
    assert _gemm_kernel(kb, 1, 300, 100).startswith("mbk_tc_skinny_")     # batch 1, fully connected
    assert _gemm_kernel(kb, 16, 70, 100).startswith("mbk_tc_skinny_")
    assert _gemm_kernel(kb, 17, 70, 100).startswith("mbk_tc_medium_")
    assert _gemm_kernel(kb, 100, 200, 100).startswith("mbk_tc_medium_")   # 1 x 2 large tiles
    assert _gemm_kernel(kb, 200, 200, 100).startswith("mbk_tc_large_")    # 2 x 2
    assert _gemm_kernel(emulated_gpu((9, 0), multiprocessors=1), 100, 200, 100).startswith("mbk_tc_large_")
    assert _gemm_kernel(kb, 1000, 64, 100).startswith("mbk_tc_medium_")   # 64 columns: a 64-wide tile
    with cuda.tile_config("skinny"):
        assert _gemm_kernel(kb, 200, 20, 100).startswith("mbk_tc_skinny_")
    with pytest.raises(ValueError, match="tile_config"):
        with cuda.tile_config("huge"):
            pass


def test_cuda_tc_fallback_on_gpus_without_b1_tensor_cores():
    """Compute capability 7.5 runs the CUDA-core kernels; asking for tensor cores there is a clear error."""
    turing = emulated_gpu((7, 5))
    previous = cuda._tensor_cores
    try:
        cuda.set_tensor_cores(None)
        assert not turing.uses_tensor_cores()
        assert _gemm_kernel(turing, 20, 30, 100) == "mbk_xnor_gemm"
        cuda.set_tensor_cores(True)
        with pytest.raises(BackendUnavailable, match=r"compute capability 7\.5.*8\.0"):
            turing.uses_tensor_cores()
        ampere = emulated_gpu((8, 0))
        assert ampere.uses_tensor_cores() and _gemm_kernel(ampere, 20, 30, 100).startswith("mbk_tc_")
        cuda.set_tensor_cores(False)
        assert _gemm_kernel(ampere, 20, 30, 100) == "mbk_xnor_gemm"
        with pytest.raises(ValueError, match="True, False or None"):
            cuda.set_tensor_cores("yes")
    finally:
        cuda._tensor_cores = previous


@pytest.mark.parametrize("value, expected", [("0", "mbk_xnor_gemm"), ("off", "mbk_xnor_gemm"),
                                             ("auto", "mbk_tc_"), ("1", "mbk_tc_")])
def test_cuda_tc_environment_variable(monkeypatch, value, expected):
    monkeypatch.setenv("MINIBNN_CUDA_TENSOR_CORES", value)
    monkeypatch.setattr(cuda, "_tensor_cores", cuda._FROM_ENV)
    assert _gemm_kernel(emulated_gpu((9, 0)), 20, 30, 100).startswith(expected)
    cuda.set_tensor_cores(False)  # the call wins over the variable
    assert _gemm_kernel(emulated_gpu((9, 0)), 20, 30, 100) == "mbk_xnor_gemm"


def test_cuda_tc_environment_variable_typo_is_named(monkeypatch):
    monkeypatch.setenv("MINIBNN_CUDA_TENSOR_CORES", "maybe")
    monkeypatch.setattr(cuda, "_tensor_cores", cuda._FROM_ENV)
    with pytest.raises(ValueError, match="MINIBNN_CUDA_TENSOR_CORES.*'maybe'"):
        cuda.uses_tensor_cores()


def test_cuda_tc_k_zero_and_empty_outputs():
    kb = emulated_cuda()
    with kernel_path(kb, "tc-auto"):
        a = kb.xp.asarray(np.zeros((3, 0), np.uint64))
        out = kb.xnor_gemm(a, a, 0, kb.xp.empty((3, 3), np.int32))
        np.testing.assert_array_equal(host(out), 0)
        assert kb.xnor_gemm(a, a[:0], 0, kb.xp.empty((3, 0), np.int32)).size == 0


@pytest.mark.parametrize("config", list(cuda.TC_CONFIGS))
def test_cuda_tc_kernels_on_the_hostile_schedule(config):
    """Copies landing at once and the last warp racing ahead: a missing barrier would change these results."""
    kb = emulated_cuda()
    with kb.runtime.tc_emulator.hostile(), kernel_path(kb, f"tc-{config}"):
        _gemm_checks(kb, 130, 129, 1025, seed=1, aligned=True)
        _gemm_checks(kb, 17, 65, 513, seed=2, aligned=False)
        for pad_value, channels, aligned in ((0, 65, True), (1, 128, True), (-1, 128, False)):
            _conv_checks(kb, batch=2, channels=channels, hw=(6, 5), kernel=(3, 3), out_channels=70, stride=(1, 2),
                         padding=(1, 1), pad_value=pad_value, seed=3, aligned=aligned)


# ---------------------------------------------------------------- the cooperative emulator checks itself

@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    import cuda_emu

    try:
        lib = cuda_emu.build(tmp_path_factory.mktemp("coop"), cuda_emu.COOP_SELFTEST, cooperative=True)
    except cuda_emu.EmulatorUnavailable as exc:
        pytest.skip(str(exc))
    return cuda_emu.Emulator(lib)


def _mma_operands(seed: int):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**32, (16, 8), dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 2**32, (8, 8), dtype=np.uint64).astype(np.uint32)
    a[3] = 0xFFFFFFFF  # a full row and a sparse column: counts 0 and 256 appear
    b[5] = 1
    bits = lambda w: np.unpackbits(w.view(np.uint8), axis=-1)  # noqa: E731
    expected = bits(a).astype(np.int32) @ bits(b).astype(np.int32).T  # popcount(A AND B) per (row, column)
    return a, b, expected


@pytest.mark.parametrize("seed", range(4))
def test_cuda_emu_mma_follows_the_fragment_table(selftest, seed):
    a, b, expected = _mma_operands(seed)
    import cuda_emu

    xp = cuda_emu.EmulatedXP()
    c = xp.asarray(np.full((16, 8), -7, np.int32))
    selftest.launch("emu_mma_once", (1, 1, 1), (32, 1, 1), (xp.asarray(a), xp.asarray(b), c))
    np.testing.assert_array_equal(host(c), expected)


def test_cuda_emu_reports_deadlocks_instead_of_hanging(selftest):
    import cuda_emu

    out = cuda_emu.EmulatedXP().asarray(np.zeros(32, np.int32))
    with pytest.raises(AssertionError, match="returned while others wait at __syncthreads"):
        selftest.launch("emu_diverged_barrier", (1, 1, 1), (32, 1, 1), (out,))
    with pytest.raises(AssertionError, match="warp-wide mma"):
        selftest.launch("emu_diverged_mma", (1, 1, 1), (32, 1, 1), (out,))
    with pytest.raises(AssertionError, match="whole number of warps"):
        selftest.launch("emu_diverged_mma", (1, 1, 1), (16, 1, 1), (out,))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=GPU_SKIP)
def test_cuda_gpu_mma_follows_the_fragment_table():
    """The same kernel on the GPU's tensor cores: the emulator's layout is the hardware's."""
    import cupy
    import cuda_emu

    if not cuda.uses_tensor_cores():
        pytest.skip("this GPU has no binary tensor cores")
    code = cuda_emu.COOP_SELFTEST.read_text().replace('#include "minibnn_tc.cu"', TC_SOURCE.read_text())
    kernel = cupy.RawModule(code=code, options=cuda.NVRTC_OPTIONS).get_function("emu_mma_once")
    for seed in range(4):
        a, b, expected = _mma_operands(seed)
        c = cupy.full((16, 8), -7, np.int32)
        kernel((1,), (32,), (cupy.asarray(a), cupy.asarray(b), c))
        np.testing.assert_array_equal(c.get(), expected)


def test_cuda_tc_module_is_compiled_only_where_tensor_cores_are_used():
    """check_available compiles minibnn_tc.cu only for GPUs that use it (a subprocess: no CuPy state leaks)."""
    code = """
import minibnn.backend.cuda as c
compiled = []
c._module = lambda source=None: compiled.append(source)
c._cupy = lambda: type("cupy", (), {"cuda": type("cuda", (), {"runtime": type("rt", (), {
    "getDeviceCount": staticmethod(lambda: 1)})})})
for capability, expected in (((7, 5), ["minibnn_kernels.cu"]), ((9, 0), ["minibnn_kernels.cu", "minibnn_tc.cu"])):
    compiled.clear()
    c._runtime.device_properties = lambda cap=capability: (cap, 132)
    c.check_available()
    assert compiled == expected, (capability, compiled)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
