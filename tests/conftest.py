"""Shared test fixtures."""

import os
import pathlib

# The suite's programs are small and compiled once or twice each, so compiling dominates its time; LLVM's
# optimisation level changes how fast the CPU code runs, not what it computes (~20 % less time on the
# trainer's tests). Read when JAX starts its CPU backend, so it is set before any test runs JAX.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))

import jax  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def x64():
    """Runs a test in float64 without leaking the setting into other tests."""
    with jax.enable_x64(True):
        yield
