"""cffi build (API mode) of the native kernels as the extension module ``minibnn._native``.

Used two ways:
- by setup.py (``cffi_modules=["native/build_native.py:ffibuilder"]``), so ``pip install .`` and
  ``pip install -e .`` compile it; a failed build only warns (setup.py), the numpy backend remains;
- directly, ``python native/build_native.py``, to build the module in place (``minibnn/_native*.so``)
  for development without reinstalling.

Flags: ``-O3 -std=c11 -ffp-contract=off`` (no -march=native: the AVX2 path is chosen at run
time) and ``-fopenmp`` when a probe program compiles and links with it. Set
``MINIBNN_NO_OPENMP=1`` to build without OpenMP.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CDEF = """
#define MBK_OK 0
#define MBK_EINVAL 1
#define MBK_ENOMEM 2
#define MBK_SIMD_AUTO 0
#define MBK_SIMD_SCALAR 1

int mbk_version(void);
const char *mbk_simd_name(void);
int mbk_set_simd(int mode);
int mbk_has_openmp(void);
int mbk_set_num_threads(int n);
int mbk_get_num_threads(void);

int mbk_pack_rows_f32(const float *x, int64_t rows, int64_t k, uint64_t *out);
int mbk_pack_channels_f32(const float *x, int64_t outer, int64_t c, int64_t inner, uint64_t *out);
int mbk_popcount_rows(const uint64_t *a, int64_t rows, int64_t words, int32_t *out);
int mbk_xnor_gemm(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n, int64_t words,
                  int64_t k, int32_t *out);
int mbk_xnor_gemm_affine(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n, int64_t words,
                         int64_t k, const float *scale, const float *bias, float *out);
int mbk_binary_conv2d(const uint64_t *x, const uint64_t *wt, int64_t batch, int64_t h, int64_t w,
                      int64_t c, int64_t o, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                      int64_t ph, int64_t pw, int pad_value, const int32_t *correction,
                      const float *scale, const float *bias, int32_t *out, float *out_f);
int mbk_conv_pad_correction(const uint64_t *wt, int64_t o, int64_t kh, int64_t kw, int64_t c,
                            int64_t h, int64_t w, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                            int32_t *correction);
"""

OPENMP_PROBE = """
#include <omp.h>
int main(void) {
    int n = 0;
#pragma omp parallel reduction(+ : n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def _compiler():
    import setuptools  # noqa: F401  (makes `distutils` the copy setuptools ships)
    from distutils.ccompiler import new_compiler
    from distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)
    return cc


def compiler_flags() -> tuple[list[str], list[str]]:
    """(compile args, link args) for this platform's C compiler, OpenMP included when it works."""
    try:
        cc = _compiler()
        msvc = cc.compiler_type == "msvc"
    except Exception:  # no usable compiler: the build itself will fail and say so
        return ["-O3", "-std=c11", "-ffp-contract=off"], []
    if msvc:  # MSVC's OpenMP 2.0 has no 64-bit loop counters: the scalar path, one thread
        return ["/O2", "/std:c11", "/fp:precise"], []
    cflags, omp = ["-O3", "-std=c11", "-ffp-contract=off"], (["-fopenmp"], ["-fopenmp"])
    if os.environ.get("MINIBNN_NO_OPENMP") or not _links_with(cc, *omp):
        return cflags, []
    return cflags + omp[0], omp[1]


def _links_with(cc, compile_args: list[str], link_args: list[str]) -> bool:
    """Whether a small OpenMP program compiles and links with these flags (quietly)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w", encoding="ascii") as f:
            f.write(OPENMP_PROBE)
        sys.stdout.flush()
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        saved = [os.dup(1), os.dup(2)]
        try:  # quietly: the commands, and complaints about an unknown flag, are expected
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            objects = cc.compile([src], output_dir=tmp, extra_postargs=compile_args)
            cc.link_executable(objects, os.path.join(tmp, "probe"), extra_postargs=link_args)
            return True
        except Exception:
            return False
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (*saved, devnull):
                os.close(fd)


def make_ffibuilder(absolute_paths: bool = False) -> FFI:
    """The FFI builder; source paths relative to the current directory (setup.py) unless absolute."""
    def path(*parts: str) -> str:
        full = os.path.join(HERE, *parts)
        if absolute_paths:
            return full
        try:
            return os.path.relpath(full)
        except ValueError:  # another drive (Windows)
            return full

    cflags, lflags = compiler_flags()
    builder = FFI()
    builder.cdef(CDEF)
    builder.set_source(
        "minibnn._native",
        '#include "minibnn_kernels.h"',
        sources=[path("minibnn_kernels.c")],
        include_dirs=[path()],
        depends=[path("minibnn_kernels.h")],
        extra_compile_args=cflags,
        extra_link_args=lflags,
    )
    return builder


ffibuilder = make_ffibuilder()


def build_in_place(verbose: bool = False) -> str:
    """Compile the module under build/cffi and copy it into minibnn/; returns the copied path."""
    tmpdir = os.path.join(ROOT, "build", "cffi")
    built = make_ffibuilder(absolute_paths=True).compile(tmpdir=tmpdir, verbose=verbose)
    package = os.path.join(ROOT, "minibnn")
    for name in os.listdir(package):  # an older build under another suffix would shadow this one
        if name.startswith("_native.") and name.endswith((".so", ".pyd")):
            os.remove(os.path.join(package, name))
    target = os.path.join(package, os.path.basename(built))
    shutil.copy2(built, target)
    return target


if __name__ == "__main__":
    print(f"built {build_in_place(verbose='-v' in sys.argv[1:])}")
