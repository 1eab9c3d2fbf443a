"""constraints.txt pins every package setup.py installs, and the README's commands and CI install with it."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalized as PEP 503 does (case, and runs of -_. as one -)."""
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _setup_requirements():
    """install_requires and the `test` extra of setup.py, read from its syntax tree (nothing is run)."""
    call = next(node for node in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup")
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords
              if kw.arg in ("install_requires", "extras_require")}
    return kwargs["install_requires"], kwargs["extras_require"]["test"]


def _pins():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)", line)
        assert m, f"constraints.txt: not an exact pin: {line!r}"
        assert _name(m.group(1)) not in pins, f"constraints.txt pins {m.group(1)} twice"
        pins[_name(m.group(1))] = m.group(2)
    return pins


def test_name_normalization():
    assert _name("scikit-learn") == "scikit-learn"
    assert _name("Hershey_Fonts") == _name("hershey-fonts") == "hershey-fonts"
    assert _name("pytest-xdist>=3") == "pytest-xdist"
    assert _name("ml_collections") == _name("ML.Collections") == "ml-collections"


def test_every_requirement_is_pinned():
    install, test = _setup_requirements()
    assert "jax" in install and "pytest" in test  # the parse found the lists
    pins = _pins()
    missing = sorted({_name(r) for r in install + test} - set(pins))
    assert not missing, f"constraints.txt does not pin {missing}"
    # A pin must satisfy setup.py's own lower bounds (the only bound it states: pytest-xdist>=3).
    assert int(pins["pytest-xdist"].split(".")[0]) >= 3


def test_commands_install_with_the_constraints():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    main, tests = blocks[0].strip(), blocks[1].strip()
    assert "pip install -c constraints.txt -e ." in main and "experiments.study" in main
    assert tests.endswith("pip install -c constraints.txt -e '.[test]' && pytest")
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == tests, "CI must run the README's test command"
