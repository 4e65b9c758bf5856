"""Shared test setup: hypothesis profiles, the ``slow`` marker, a seeded-RNG fixture.

Profiles (select with the HYPOTHESIS_PROFILE environment variable):
- ``ci`` (default): few examples, derandomized, no deadline -> repeatable and fast on slow cores.
- ``dev``: many more examples, random, for hunting bugs locally.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import minibnn

# the helper modules (gradcheck.py, strategies.py) import as top-level modules under any import mode
sys.path.insert(0, str(Path(__file__).parent))

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")


@pytest.fixture
def seeded() -> None:
    """Seed minibnn's global generator (weight init, dropout) so the test is repeatable."""
    minibnn.manual_seed(0)
