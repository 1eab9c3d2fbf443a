"""IAM-OnDB online handwriting (CTC): the nine LSTM variants, 200 random-search trials each.

The full study on the offline handwriting stand-in (no database needed):

    python -m experiments.study --config=configs/iam_online.py --workdir=runs/iam_online

The same on an IAM-OnDB copy (5355 / 2956 / 3859 lines, board a08-551z removed):

    python -m experiments.study --config=configs/iam_online.py --config.data.path=/path/to/IAM-OnDB \\
        --workdir=runs/iam_online_db

A reduced study (all nine variants, a handful of trials each, a small stand-in corpus):

    python -m experiments.study --config=configs/iam_online.py:quick --workdir=runs/iam_online_quick

Any field can be overridden on the command line, e.g. `--config.search.num_trials=50`.
"""

from odyssey import study_config


def get_config(arg=None):
    """The study's config; `arg="quick"` shrinks it to minutes on a laptop."""
    quick = study_config.parse_arg("configs/iam_online.py", arg)
    config = study_config.study_config("iam_online", quick)
    # Handwriting: bidirectional layers, CTC over 81 characters + blank, test metric CER %.
    # data.source: "standard" (the corpus at data.path) or "standin" (lines drawn in single-stroke fonts by
    # random writers, built offline). data.path: the root of an IAM-OnDB copy: lineStrokes/, ascii/ and the
    # four split lists. The stand-in's cache: iam_standin; data.seed draws its content.
    # Lines of the stand-in's train, valid, test (IAM-OnDB's: 5355, 2956, 3859).
    config.data.sizes = (300, 60, 60) if quick else (5355, 2956, 3859)
    return config
