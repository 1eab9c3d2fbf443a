"""Shared test fixtures."""

import pathlib

import jax
import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def x64():
    """Runs a test in float64 without leaking the setting into other tests."""
    with jax.enable_x64(True):
        yield
