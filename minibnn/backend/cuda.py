"""The GPU backend (CuPy RawKernels). Not built yet."""
from __future__ import annotations

from minibnn.backend import BackendUnavailable


def check_available() -> None:
    """Raise BackendUnavailable: the CuPy backend is not part of this version yet."""
    raise BackendUnavailable(
        "the cuda backend is not part of this version of minibnn yet; "
        "use minibnn.use('numpy') (the reference backend)"
    )
