"""TIMIT framewise phone classification: the nine LSTM variants, 200 random-search trials each.

The full study on the offline speech stand-in (no corpus needed):

    python -m experiments.study --config=configs/timit.py --workdir=runs/timit

The same on a TIMIT copy (the LDC tree; Halberstadt's 3696 / 400 / 192 split):

    python -m experiments.study --config=configs/timit.py --config.data.path=/path/to/TIMIT --workdir=runs/timit_ldc

A reduced study (all nine variants, a handful of trials each, a small stand-in corpus):

    python -m experiments.study --config=configs/timit.py:quick --workdir=runs/timit_quick

Any field can be overridden on the command line, e.g. `--config.search.num_trials=50`.
"""

from odyssey import study_config


def get_config(arg=None):
    """The study's config; `arg="quick"` shrinks it to minutes on a laptop."""
    quick = study_config.parse_arg("configs/timit.py", arg)
    config = study_config.study_config("timit", quick)
    # Speech: bidirectional layers, 61 softmax outputs per frame, test metric frame error %.
    # data.source: "standard" (the corpus at data.path) or "standin" (synthesised speech with phone labels,
    # built offline). data.path: the root of a TIMIT copy, the LDC tree with TRAIN/ and TEST/. The
    # stand-in's cache: timit_standin; data.seed draws its content.
    # Utterances of the stand-in's train, valid, test (TIMIT's: 3696, 400, 192).
    config.data.sizes = (300, 60, 60) if quick else (3696, 400, 192)
    # TIMIT only (the paper's Section 4.4): Nesterov or classical momentum, gradient clipping on or off.
    config.search.space.nesterov = ("bernoulli", 0.5)
    config.search.space.clip = ("bernoulli", 0.5)
    return config
