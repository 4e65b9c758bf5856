"""Build script: the package, its data (shipped MNIST) and, later, the cffi native module."""
from setuptools import find_packages, setup

setup(
    name="minibnn",
    version="0.1.0",
    description="Binary and quantized neural networks from scratch: NumPy autograd, popcount kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["minibnn", "minibnn.*"]),
    package_data={"minibnn.data": ["mnist/*.gz"]},
    install_requires=["numpy>=2.0", "tqdm>=4.60"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.80"],
        "gpu": ["cupy>=13"],
        "plot": ["matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["minibnn = minibnn.cli:main"]},
)
