"""The public names the issues promised, as they promised them: each callable takes the documented parameters,
in the documented order, with the documented defaults (so a call written from the issue keeps working), and
anything added after them has a default. The constants and the study's command-line fields likewise.

The oracle is the issues' text, copied here: renaming a parameter, reordering two, changing a default or
dropping a config field fails this file even where the behaviour tests, which call by position, still pass."""

import importlib
import inspect
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
REQUIRED = inspect.Parameter.empty

# (module, name): [(parameter, default or REQUIRED), ...] as the issues wrote them
SIGNATURES = {
    ("odyssey.cells", "init"): [("key", REQUIRED), ("variant", REQUIRED), ("n_in", REQUIRED),
                                ("n_hidden", REQUIRED), ("std", 0.1)],
    ("odyssey.cells", "to_paper"): [("variant", REQUIRED), ("params", REQUIRED)],
    ("odyssey.cells", "from_paper"): [("variant", REQUIRED), (None, REQUIRED)],  # "from_paper(variant, dict)"
    ("odyssey.nets", "lstm_layer"): [("variant", REQUIRED), ("params", REQUIRED), ("xs", REQUIRED),
                                     ("mask", None), ("reverse", False)],
    ("odyssey.ctc", "ctc_loss"): [("logits", REQUIRED), ("logit_paddings", REQUIRED), ("labels", REQUIRED),
                                  ("label_paddings", REQUIRED), ("blank_id", 0)],
    ("odyssey.ctc", "best_path_decode"): [("logits", REQUIRED), ("logit_paddings", REQUIRED), ("blank_id", 0)],
    ("odyssey.metrics", "edit_distance"): [("ref", REQUIRED), ("hyp", REQUIRED)],
    ("odyssey.metrics", "character_error_rate"): [("refs", REQUIRED), ("hyps", REQUIRED)],
    ("odyssey.data.jsb", "load"): [("path", REQUIRED)],
    ("odyssey.data.jsb", "build_music21"): [("cache_dir", None), ("seed", 0)],
    ("odyssey.data.mfcc", "features"): [("signal", REQUIRED), ("sample_rate", 16000)],
    ("odyssey.data.timit", "load"): [("root", REQUIRED)],
    ("odyssey.data.iam_ondb", "load"): [("root", REQUIRED)],
    ("odyssey.analysis.fanova", "variance_fractions"): [("X", REQUIRED), ("y", REQUIRED), ("n_trees", 100),
                                                        ("seed", 0)],
}


@pytest.mark.parametrize("where", sorted(SIGNATURES), ids=lambda w: ".".join(w))
def test_each_public_callable_takes_the_documented_parameters(where):
    module, name = where
    params = list(inspect.signature(getattr(importlib.import_module(module), name)).parameters.values())
    promised = SIGNATURES[where]
    assert len(params) >= len(promised), params
    for p, (want, default) in zip(params, promised):
        assert p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD), p
        if want is not None:
            assert p.name == want, (p.name, want)
        assert p.default == default if default is not REQUIRED else p.default is REQUIRED, (p.name, p.default)
    for p in params[len(promised):]:  # added later: a call written from the issue never has to pass them
        assert p.default is not REQUIRED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD), p


def test_the_documented_constants():
    from odyssey import cells
    from odyssey.data import iam_ondb, timit
    assert cells.VARIANTS == ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")
    assert iam_ondb.ALPHABET == "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !\"#&'()*+,-./[]:;?"
    assert len(timit.PHONES) == 61 and len(set(timit.PHONES)) == 61 and all(isinstance(p, str) for p in timit.PHONES)


@pytest.mark.parametrize("task", ["jsb", "timit", "iam_online"])
def test_the_study_fields_the_command_line_overrides(task, monkeypatch):
    """config.search.variants (all nine), num_trials (200), trials_per_batch; config.train.max_epochs (150) and
    patience (15): the full configs' defaults, and each field present in the quick variant too."""
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop(f"configs.{task}", None)
    module = importlib.import_module(f"configs.{task}")
    full, quick = module.get_config(), module.get_config("quick")
    assert tuple(full.search.variants) == ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")
    assert full.search.num_trials == 200 and full.train.max_epochs == 150 and full.train.patience == 15
    assert isinstance(full.search.trials_per_batch, int) and full.search.trials_per_batch >= 1
    for field in ("search.variants", "search.num_trials", "search.trials_per_batch", "train.max_epochs",
                  "train.patience"):
        section, key = field.split(".")
        assert key in quick[section], field


@pytest.mark.parametrize("module, flags", [("experiments.study", ("--config", "--workdir")),
                                           ("experiments.report", ("--workdir",))])
def test_the_commands_take_their_documented_flags(module, flags):
    """`python -m experiments.study --config=... --workdir=DIR` and `python -m experiments.report --workdir=DIR`."""
    done = subprocess.run([sys.executable, "-m", module, "--helpfull"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode in (0, 1), done.stderr[-2000:]  # absl's help exits with 1
    for flag in flags:
        assert f"{flag}:" in done.stdout, (flag, done.stdout[:2000], done.stderr[-2000:])
