"""JSB Chorales: the vanilla LSTM and its eight variants, 200 random-search trials each (Greff et al. 2017).

The full study on the offline stand-in built from the Bach chorales that music21 ships:

    python -m experiments.study --config=configs/jsb.py --workdir=runs/jsb

The same on the standard JSB Chorales file:

    python -m experiments.study --config=configs/jsb.py --config.data.path=/path/to/jsb_chorales.pickle \\
        --workdir=runs/jsb_standard

A reduced study (all nine variants, a handful of trials each, fewer chorales and epochs; it ends with a report):

    python -m experiments.study --config=configs/jsb.py:quick --workdir=runs/jsb_quick

Any field can be overridden on the command line, e.g. `--config.search.num_trials=50`.
"""

from odyssey import study_config


def get_config(arg=None):
    """The study's config; `arg="quick"` shrinks it to minutes on a laptop."""
    quick = study_config.parse_arg("configs/jsb.py", arg)
    config = study_config.study_config("jsb", quick)
    # Music: one forward layer, 88 sigmoid outputs, test metric NLL per time step in nats.
    # data.source: "standard" (the corpus at data.path), "standin" (piano rolls built offline from music21's
    # Bach chorales) or "synthetic" (tiny random piano rolls, for tests).
    # data.path: the standard JSB Chorales pickle or JSON: dict train/valid/test of sequences of MIDI-note
    # tuples. The stand-in's cache: jsb_music21; data.seed draws its train/valid/test split.
    if quick:
        config.data.max_sequences.train = 40
        config.data.max_sequences.valid = 20
        config.data.max_sequences.test = 20
    return config
