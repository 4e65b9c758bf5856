"""Exported C programs (``minibnn.deploy.export_c``) on their targets, and the wheel that ships them.

- aarch64: the exported LeNet and ResNet-18 (narrow and full width) cross-compiled with
  ``aarch64-linux-gnu-gcc -O2 -std=c11 -static`` (the NEON kernels) and run under ``qemu-aarch64``;
  skipped, saying which tool is missing, without the cross compiler, its C library or qemu-user
  (``.ci/run`` installs them as root from Debian's packages).
- x86-64 with AddressSanitizer + UndefinedBehaviorSanitizer: the exported LeNet and a small
  ResNet-18, the whole program (``main.c`` included) on raw-float and PGM inputs, no reports.
- The README's command, exactly ``cc -O2 -std=c11 DIR/*.c -o app -lm``, and ``./app digit.pgm`` on
  a real MNIST test digit.
- The wheel carries the kernel sources (``minibnn/deploy/c_src/``) and an installed minibnn exports
  from them.

Every program is the generated ``main.c`` driver; its logits are printed with ``%.9g``, which gives
each float32 back exactly. Tolerance against ``PackedModel.predict``: the binary layers are exact
(integers), but the float layers (the float stem, batch norms, the float classifier) may sum in a
different order than NumPy's, so logits agree within ``|c - py| <= 1e-5 * (1 + max|py|)`` and the
predicted class is the same (measured: at most 1.8e-7 on these models; a much larger gap would mean
a sign flipped before a binary layer, i.e. a real difference). The aarch64 and x86-64 programs
compute the same float32 operations in the same order (``-std=c11``: no FMA contraction), so their
logits are equal bit for bit.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minibnn
from minibnn import data, deploy, models
from minibnn.backend import to_numpy
from c_program import CC, build_main, run_main

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "native"
CROSS, QEMU = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
RTOL = 1e-5  # relative to 1 + the largest |logit| (see the module docstring)

needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc, gcc or clang) on this machine")
needs_literal_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no `cc` on PATH (the README's command)")


def _probe(cmd: list[str], tmp: Path, run: list[str] | None = None) -> str | None:
    """None when ``cmd`` compiles a trivial C program to ``tmp/probe`` (and ``run`` runs it), else why not."""
    src = tmp / "probe.c"
    src.write_text("#include <stdint.h>\n#include <stdio.h>\nint main(void) { return (int)sizeof(uint64_t) - 8; }\n")
    proc = subprocess.run([*cmd, str(src), "-o", str(tmp / "probe")], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "error" in line] or proc.stderr.splitlines()[-1:]
        return f"`{' '.join(cmd)}` cannot build a C program here: {' '.join(errors[:1]).strip()}"
    if run is not None:
        proc = subprocess.run([*run, str(tmp / "probe")], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            return f"`{' '.join(run)}` cannot run the program it built: {proc.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def aarch64(tmp_path_factory) -> None:
    if CROSS is None or QEMU is None:
        missing = " and ".join(n for n, p in (("aarch64-linux-gnu-gcc", CROSS), ("qemu-aarch64", QEMU)) if p is None)
        pytest.skip(f"{missing} not found (Debian: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross "
                    "qemu-user; .ci/run does it as root)")
    why = _probe([CROSS, "-static"], tmp_path_factory.mktemp("probe"), run=[QEMU])
    if why:
        pytest.skip(why + " (the aarch64 C library headers come with libc6-dev-arm64-cross)")


@pytest.fixture(scope="module")
def sanitizers(tmp_path_factory) -> list[str]:
    flags = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    if CC is None:
        pytest.skip("no C compiler (cc) on this machine")
    why = _probe([CC, *flags], tmp_path_factory.mktemp("probe"), run=[])
    if why:
        pytest.skip(why + " (no libasan / libubsan)")
    return flags


# ---------------------------------------------------------------- models and programs

MODELS = {  # name: (input shape, constructor)
    "lenet": ((1, 28, 28), lambda: models.lenet(act_bit=1, weight_bit=1)),
    "resnet18_w8": ((3, 32, 32), lambda: models.resnet18(in_channels=3, width=8)),
    "resnet18": ((3, 32, 32), lambda: models.resnet18(in_channels=3)),
}


def _packed(kind: str):
    """A converted zoo model with random weights and batch-norm statistics moved off their defaults."""
    shape, make = MODELS[kind]
    minibnn.manual_seed(7)
    model = make()
    model.train()
    rng = np.random.default_rng(3)
    with minibnn.no_grad():
        for _ in range(2):  # training-mode forwards update the running mean and variance
            model(minibnn.Tensor(rng.normal(0.2, 1.5, size=(8, *shape)).astype(np.float32)))
    model.eval()
    return deploy.convert(model, input_shape=shape, name=kind)


_EXPORTS: dict[str, tuple] = {}


def _exported(kind: str, tmp_path_factory) -> tuple:
    """(packed model, export folder) for ``kind``, exported once per test session."""
    if kind not in _EXPORTS:
        packed = _packed(kind)
        out = tmp_path_factory.mktemp("export") / kind
        deploy.export_c(packed, out)
        _EXPORTS[kind] = packed, out
    return _EXPORTS[kind]


def _inputs(shape, n: int = 3, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, size=(n, *shape)).astype(np.float32)


def _check(packed, app: Path, x: np.ndarray, prefix: list[str], tmp: Path, env=None) -> np.ndarray:
    """Run ``app`` on every sample of ``x`` (raw .f32 files), compare with PackedModel.predict; the C logits."""
    want = to_numpy(packed.predict(x))
    logits = []
    for i, sample in enumerate(x):
        path = tmp / f"x{i}.f32"
        path.write_bytes(np.ascontiguousarray(sample, np.float32).tobytes())
        cls, got, _ = run_main(prefix, app, path, env)
        tol = RTOL * (1 + float(np.abs(want[i]).max()))
        err = float(np.abs(got - want[i]).max())
        assert got.shape == want[i].shape and err <= tol, \
            f"sample {i}: C logits {got}\n PackedModel.predict {want[i]}\n max error {err:.3g} > {tol:.3g}"
        assert cls == int(np.argmax(want[i])), f"sample {i}: C class {cls}, PackedModel.predict {np.argmax(want[i])}"
        logits.append(got)
    return np.stack(logits)


def _pgm(path: Path, pixels: np.ndarray) -> None:
    """A binary (P5) PGM of uint8 ``pixels`` (H, W)."""
    h, w = pixels.shape
    path.write_bytes(f"P5\n{w} {h}\n255\n".encode() + np.ascontiguousarray(pixels, np.uint8).tobytes())


# ---------------------------------------------------------------- aarch64 (NEON) under qemu

@pytest.mark.parametrize("kind", ["lenet", "resnet18_w8", "resnet18"])
def test_aarch64_neon_program_matches_predict_under_qemu(kind, aarch64, tmp_path, tmp_path_factory):
    packed, out = _exported(kind, tmp_path_factory)
    macros = subprocess.run([CROSS, "-std=c11", "-dM", "-E", str(out / "minibnn_kernels.c")], capture_output=True,
                            text=True, timeout=120).stdout
    assert "#define MBK_NEON" in macros, "the aarch64 build does not take the NEON path"
    app = tmp_path / "app"
    build_main([CROSS, "-O2", "-std=c11", "-static"], out, app)
    assert app.read_bytes()[18:20] == (183).to_bytes(2, "little"), "not an AArch64 ELF file"  # e_machine
    x = _inputs(packed.input_shape)
    arm = _check(packed, app, x, [QEMU], tmp_path)
    if CC is not None:
        build_main([CC, "-O2", "-std=c11"], out, tmp_path / "app_x86")
        x86 = _check(packed, tmp_path / "app_x86", x, [], tmp_path)
        assert np.array_equal(arm.view(np.uint32), x86.view(np.uint32)), \
            f"aarch64 and x86-64 logits differ:\n{arm}\n{x86}"


# ---------------------------------------------------------------- x86-64 with the sanitizers

@pytest.mark.parametrize("kind", ["lenet", "resnet18_w8"])
def test_sanitized_program_runs_clean(kind, sanitizers, tmp_path, tmp_path_factory):
    packed, out = _exported(kind, tmp_path_factory)
    app = tmp_path / "app"
    build_main([CC, "-std=c11", *sanitizers], out, app)
    leaks = os.environ.get("MINIBNN_DETECT_LEAKS", "1")  # as native/sanitize.sh: 0 where LeakSanitizer cannot run
    env = {**os.environ, "ASAN_OPTIONS": f"abort_on_error=1:halt_on_error=1:detect_leaks={leaks}",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    _check(packed, app, _inputs(packed.input_shape), [], tmp_path, env)
    if packed.input_shape[0] == 1:  # the PGM reader too, on a real digit
        images, _ = data.load_mnist("test")
        _pgm(tmp_path / "digit.pgm", np.rint(images[0, 0] * 255))
        cls, got, err = run_main([], app, tmp_path / "digit.pgm", env)
        assert not err.strip() and cls == int(np.argmax(to_numpy(packed.predict(images[:1]))[0]))
    for bad in (b"", b"P5\n27 28\n255\n", b"\x00" * 17):  # wrong inputs: an error message, no report
        path = tmp_path / ("bad.pgm" if bad.startswith(b"P5") else "bad.f32")
        path.write_bytes(bad)
        proc = subprocess.run([str(app), str(path)], capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2 and "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, \
            proc.stderr


# ---------------------------------------------------------------- the README's command

@needs_literal_cc
def test_readme_command_builds_and_classifies_a_real_mnist_digit(tmp_path, tmp_path_factory):
    """``cc -O2 -std=c11 DIR/*.c -o app -lm`` (the shell expands the glob), then ``./app digit.pgm``.

    The generated main.c feeds a PGM as pixel / 255, so PackedModel.predict gets the same values.
    """
    packed, out = _exported("lenet", tmp_path_factory)
    build = subprocess.run(f"cc -O2 -std=c11 '{out}'/*.c -o app -lm", shell=True, cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    images, labels = data.load_mnist("test")
    for i in (0, 1):
        pixels = np.rint(images[i, 0] * 255).astype(np.uint8)
        assert np.array_equal(pixels / np.float32(255), images[i, 0])  # the PGM holds the digit exactly
        _pgm(tmp_path / "digit.pgm", pixels)
        cls, got, _ = run_main([], tmp_path / "app", tmp_path / "digit.pgm")
        want = to_numpy(packed.predict(images[i:i + 1]))[0]
        assert cls == int(np.argmax(want))
        assert np.abs(got - want).max() <= RTOL * (1 + np.abs(want).max())
    shipped = ROOT / "examples" / "c" / "digit7.pgm"
    if shipped.exists():  # the sample digit of examples/c is MNIST test image 0, a 7
        assert shipped.read_bytes() == b"P5\n28 28\n255\n" + np.rint(images[0, 0] * 255).astype(np.uint8).tobytes()
        assert labels[0] == 7


# ---------------------------------------------------------------- the wheel

def test_wheel_ships_the_c_kernel_sources_and_export_uses_them(tmp_path):
    """setup.py's build_py copies native/minibnn_*.c/.h into minibnn/deploy/c_src/ (the wheel), and an
    installed minibnn (the wheel unpacked, no native/ beside it) exports with those files."""
    src = tmp_path / "src"  # a copy of the checkout: the build writes build/ and *.egg-info/ into its tree
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "c_src", "cuda_src")
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "minibnn", src / "minibnn", ignore=ignore)
    shutil.copytree(NATIVE, src / "native", ignore=ignore)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", ".",
                           "-w", str(tmp_path / "dist")], cwd=src, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    native = src / "native"  # the sources the wheel was built from (native/ may change meanwhile)
    names_in_native = sorted(p.name for p in native.glob("minibnn_*.[ch]"))
    assert {"minibnn_kernels.c", "minibnn_kernels.h", "minibnn_infer.c", "minibnn_infer.h"} <= set(names_in_native)
    (wheel,) = (tmp_path / "dist").glob("minibnn-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        shipped = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("minibnn/deploy/c_src/"))
        assert shipped == names_in_native, f"the wheel's c_src holds {shipped}, native/ has {names_in_native}"
        for name in names_in_native:
            assert z.read(f"minibnn/deploy/c_src/{name}") == (native / name).read_bytes()
        assert "minibnn/backend/cuda_src/minibnn_kernels.cu" in names
        z.extractall(tmp_path / "site")
    if not any((tmp_path / "site" / "minibnn").glob("_native*")):
        pytest.skip("the wheel was built without the native module (no C compiler): export_c needs it")
    script = ("import importlib, sys, numpy as np, minibnn\n"
              "from minibnn import deploy, models\n"
              "ec = importlib.import_module('minibnn.deploy.export_c')\n"
              "print(minibnn.__file__); print(ec._native_dir())\n"
              "minibnn.manual_seed(0); m = models.lenet(); m.eval()\n"
              "deploy.export_c(deploy.convert(m, input_shape=(1, 28, 28)), sys.argv[1])\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "exported")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    module_file, native_dir = proc.stdout.split("\n")[:2]
    assert Path(module_file).is_relative_to(tmp_path / "site"), f"imported {module_file}, not the wheel's"
    assert Path(native_dir) == tmp_path / "site" / "minibnn" / "deploy" / "c_src"
    for name in names_in_native:
        if (tmp_path / "exported" / name).exists():
            assert (tmp_path / "exported" / name).read_bytes() == (native / name).read_bytes()
