"""Build script: the package, its data (shipped MNIST), the CUDA kernel sources and the cffi native
kernels (minibnn._native).

The native module is optional: when the C build fails (no compiler, a compiler error) the package
still installs, with a warning, and runs on the numpy backend; minibnn.use("native") then says
how to fix it.

The cuda backend's kernels (native/cuda/*.cu) are not compiled here: they are copied into the
package as minibnn/backend/cuda_src/ and compiled at run time by CuPy (NVRTC). The C kernel sources
(native/minibnn_*.c/.h) are copied as minibnn/deploy/c_src/, for the C programs that
minibnn.deploy.export_c writes. In a source checkout or an editable install both are read from
native/ directly.
"""
import glob
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.errors import BaseError, CCompilerError, CompileError, LinkError

BUILD_ERRORS = (BaseError, CCompilerError, CompileError, LinkError, OSError)


def _warn(exc: BaseException) -> None:
    bar = "*" * 78
    print(f"\n{bar}\nWARNING: minibnn's native C kernels (minibnn._native) were not built:\n  "
          f"{type(exc).__name__}: {exc}\nminibnn installs anyway and runs on the numpy backend. To get the "
          f"native backend, install a C compiler (gcc or clang) and run `pip install -e .` again.\n{bar}\n")


class OptionalBuildExt(build_ext):
    """build_ext that turns a failed C build into a warning and leaves the failed module out."""

    def run(self):
        self._failed = set()
        try:
            super().run()
        except BUILD_ERRORS as exc:
            _warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as exc:
            self._failed.add(ext.name)
            _warn(exc)

    def build_extensions(self):
        super().build_extensions()
        # what failed is not an output (setuptools would copy it in place or into the wheel)
        self.extensions = [ext for ext in self.extensions if ext.name not in getattr(self, "_failed", ())]


# Sources shipped inside the package, copied by build_py (what a wheel packs), as (glob relative to
# this folder, package folder): the cuda backend's kernels (compiled at run time by CuPy) and the C
# kernels that minibnn.deploy.export_c copies next to an exported model (test_*.c are not shipped).
# In a source checkout or an editable install both are read from native/ directly.
SHIPPED_SOURCES = (
    ("native/cuda/*.cu", os.path.join("minibnn", "backend", "cuda_src")),
    ("native/minibnn_*.[ch]", os.path.join("minibnn", "deploy", "c_src")),
)


class BuildPyWithSources(build_py):
    """build_py that also copies the SHIPPED_SOURCES into the package (minibnn/backend/cuda_src/,
    minibnn/deploy/c_src/)."""

    def _shipped(self):
        here = os.path.dirname(os.path.abspath(__file__))
        for pattern, package_dir in SHIPPED_SOURCES:
            files = sorted(glob.glob(os.path.join(here, pattern)))
            yield pattern, os.path.join(self.build_lib, package_dir), files

    def run(self):
        super().run()
        for pattern, target, files in self._shipped():
            if not files:
                print(f"WARNING: no sources match {pattern}: the installed package will lack them")
                continue
            os.makedirs(target, exist_ok=True)
            for src in files:
                shutil.copyfile(src, os.path.join(target, os.path.basename(src)))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(target, os.path.basename(f))
                                                        for _, target, files in self._shipped() for f in files]


setup(
    name="minibnn",
    version="0.1.0",
    description="Binary and quantized neural networks from scratch: NumPy autograd, popcount kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["minibnn", "minibnn.*"]),
    package_data={"minibnn.data": ["mnist/*.gz"]},
    install_requires=["numpy>=2.0", "tqdm>=4.60", "cffi>=1.15"],  # cffi: runtime of the native module
    extras_require={
        # the tests run the tutorials in a Jupyter kernel and test the plots and the image-folder reader
        # (wheel: a test builds minibnn's wheel, without build isolation, to check what it ships)
        "test": ["pytest>=7", "hypothesis>=6.80", "nbclient>=0.8", "nbformat>=5.7", "ipykernel>=6", "matplotlib>=3.7",
                 "Pillow>=9", "wheel>=0.38"],
        "gpu": ["cupy-cuda13x>=13"],         # CUDA 13 drivers
        "gpu-cuda12": ["cupy-cuda12x>=13"],  # CUDA 12 drivers
        "plot": ["matplotlib>=3.7"],         # minibnn train --plot, eval --plot, minibnn.plots
        "images": ["Pillow>=9"],             # --dataset imagefolder
    },
    entry_points={"console_scripts": ["minibnn = minibnn.cli:main"]},
    cffi_modules=["native/build_native.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPyWithSources},
)
