"""Build script: the package, its data (shipped MNIST) and the cffi native kernels (minibnn._native).

The native module is optional: when the C build fails (no compiler, a compiler error) the package
still installs, with a warning, and runs on the numpy backend; minibnn.use("native") then says
how to fix it.
"""
from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext
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
        "test": ["pytest>=7", "hypothesis>=6.80"],
        "gpu": ["cupy>=13"],
        "plot": ["matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["minibnn = minibnn.cli:main"]},
    cffi_modules=["native/build_native.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)
