"""Shared test fixtures."""

import os
import pathlib
import subprocess
import sys

# The suite's programs are small and compiled once or twice each, so compiling dominates its time. Two XLA
# settings make the CPU compile faster and its code slower, both read when JAX starts its CPU backend (so set
# before any test runs JAX; pytest-xdist's workers inherit them):
# - LLVM's optimisation level 0: ~20 % less time on the trainer's tests.
# - XLA's older CPU code generator for fused kernels (`xla_cpu_use_fusion_emitters=false`), which the
#   library does not use: at level 0 the trainer's programs compile in 0.42-0.48x the default's time
#   (bench/cpu_codegen.py; 0.63-0.73x at level 0 alone), the mixed-program test in 18 s against 34 s
#   (three runs each), the whole suite in 418 s against 650-736 s on 2 cores. At XLA's default level
#   its programs ran 1.02-1.22x the default's epoch time, so the library keeps the default. The values
#   are the same maths up to round-off: two different programs whose results are equal bit for bit under
#   the default generator can differ in the last bit under this one (the branched and run epochs of
#   test_train). A test that asserts such equality of the programs users run compiles them with the
#   `default_codegen` fixture's options.
# XLA aborts on a flag it does not know, so the second is set only where a child process accepts it.
_LEGACY_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flag):
    env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
    probe = [sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"]
    try:
        return subprocess.run(probe, env=env, capture_output=True, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
if "xla_cpu_use_fusion_emitters" not in _flags and _xla_accepts(_LEGACY_EMITTERS):
    _flags += " " + _LEGACY_EMITTERS
os.environ["XLA_FLAGS"] = _flags.strip()

# Compiler options (jax.jit's compiler_options) that restore XLA's default code generator for one program.
_DEFAULT_CODEGEN = {"xla_cpu_use_fusion_emitters": True} if _LEGACY_EMITTERS in _flags else {}

import jax  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def x64():
    """Runs a test in float64 without leaking the setting into other tests."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def default_codegen():
    """jax.jit compiler options under which a program compiles with XLA's default CPU code generator, the one
    users run (the suite compiles with an older, faster-compiling one where this XLA has it)."""
    return dict(_DEFAULT_CODEGEN)
