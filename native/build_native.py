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

HEADER = os.path.join(HERE, "minibnn_kernels.h")


def cdef_from_header(path: str = HEADER) -> str:
    """The declarations cffi needs, read from the C header (one source of truth for the API)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text.split('extern "C" {\n#endif', 1)[1].split("#ifdef __cplusplus\n}", 1)[0]


CDEF = cdef_from_header()

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
