"""The native CPU backend (cffi-wrapped C popcount kernels). Not built yet."""
from __future__ import annotations

from minibnn.backend import BackendUnavailable


def check_available() -> None:
    """Raise BackendUnavailable: the C library is not part of this version yet."""
    raise BackendUnavailable(
        "the native C library is not part of this version of minibnn yet; "
        "use minibnn.use('numpy') (the reference backend)"
    )
