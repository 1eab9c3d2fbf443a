"""The package's import contract: `odyssey.__all__` names every submodule; importing the package loads no JAX,
nor does the analysis (a study's report can be written on a machine without JAX)."""

import pathlib
import pkgutil
import subprocess
import sys

import odyssey

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_all_names_every_submodule_on_disk():
    on_disk = {m.name for m in pkgutil.iter_modules([str(ROOT / "odyssey")])}
    assert sorted(odyssey.__all__) == sorted(on_disk), set(odyssey.__all__) ^ on_disk
    assert len(set(odyssey.__all__)) == len(odyssey.__all__)


def _modules_after(statement):
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.split())


def test_importing_the_package_loads_no_jax():
    loaded = _modules_after("import odyssey")
    assert "odyssey" in loaded and "jax" not in loaded and "numpy" not in loaded


def test_star_import_gives_every_submodule():
    loaded = _modules_after("from odyssey import *")
    assert {f"odyssey.{name}" for name in odyssey.__all__} <= loaded and "jax" in loaded


def test_the_analysis_and_the_report_command_load_no_jax():
    loaded = _modules_after("import experiments.report; from odyssey.analysis import fanova, paper, plots, "
                            "plots_fanova, report, stats")
    assert "odyssey.analysis.report" in loaded and not {"jax", "flax", "optax", "chex"} & loaded
