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

import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
    """The study's config; `arg="quick"` shrinks it to minutes on a laptop."""
    if arg not in (None, "", "quick"):
        raise ValueError(f"unknown config argument {arg!r}; use configs/jsb.py or configs/jsb.py:quick")
    quick = arg == "quick"
    config = ml_collections.ConfigDict()
    task = config_dict.FieldReference("jsb")
    # Music: one forward layer, 88 sigmoid outputs, test metric NLL per time step in nats.
    config.task = task

    config.data = ml_collections.ConfigDict()
    # The task the data is read for; the same reference as config.task.
    config.data.task = task
    # "standard" (the corpus at data.path) or "standin" (piano rolls built offline from music21's Bach chorales),
    # or "synthetic" (tiny random piano rolls, for tests).
    # Unset: "standard" when data.path is set, else "standin".
    config.data.source = config_dict.placeholder(str)
    # The standard JSB Chorales pickle or JSON: dict train/valid/test of sequences of MIDI-note tuples.
    config.data.path = config_dict.placeholder(str)
    # Where the stand-in is cached; unset: $ODYSSEY_CACHE/jsb_music21, else ~/.cache/odyssey/jsb_music21.
    config.data.cache_dir = config_dict.placeholder(str)
    # Seed of the stand-in's train/valid/test split.
    config.data.seed = 0
    # Keep only the first n sequences of each split (unset: all of it).
    config.data.max_sequences = ml_collections.ConfigDict({
        "train": config_dict.placeholder(int),
        "valid": config_dict.placeholder(int),
        "test": config_dict.placeholder(int),
    })
    if quick:
        config.data.max_sequences.train = 40
        config.data.max_sequences.valid = 20
        config.data.max_sequences.test = 20

    config.model = ml_collections.ConfigDict()
    # Blocks per hidden layer when search.space does not draw hidden_size.
    config.model.hidden_size = 100

    config.optim = ml_collections.ConfigDict()
    # SGD learning rate (scaled by 1 - momentum, DESIGN §3) when search.space does not draw it.
    config.optim.learning_rate = 1e-4
    # Momentum when search.space does not draw it.
    config.optim.momentum = 0.9
    # Nesterov (True) or classical momentum when search.space does not draw it.
    config.optim.nesterov = True
    # Clip gradients to [-1, 1] when search.space does not draw it.
    config.optim.clip = False

    config.train = ml_collections.ConfigDict()
    # Stop a trial after this many epochs...
    config.train.max_epochs = 6 if quick else 150
    # ...or after this many epochs without a better validation metric.
    config.train.patience = 3 if quick else 15
    # Std of the Gaussian noise added to the inputs when search.space does not draw it.
    config.train.input_noise = 0.0

    config.search = ml_collections.ConfigDict()
    # Which LSTM variants to study (DESIGN §1); default: all nine.
    config.search.variants = ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")
    # Random-search trials per variant (the paper: 200).
    config.search.num_trials = 4 if quick else 200
    # The one seed every trial's hyperparameters and training seed are drawn from.
    config.search.seed = 0
    # The most trials one compiled program trains at once; it changes speed and memory, never the numbers.
    config.search.trials_per_batch = 64
    # Trials are padded to the smallest of these hidden sizes that holds them. Each bucket is one compiled
    # program per variant: quick uses one, because compiling costs more than padding for a few trials.
    config.search.hidden_buckets = (200,) if quick else (40, 80, 120, 160, 200)
    # The search space (DESIGN §4): hyperparameter -> (distribution, *parameters). Distributions:
    # log_uniform(low, high), one_minus_log_uniform(low, high) = 1 - log_uniform, uniform(low, high),
    # log_uniform_int(low, high) (integers, inclusive), bernoulli(p). A hyperparameter left out takes its
    # value from model/optim/train above.
    config.search.space = ml_collections.ConfigDict({
        "hidden_size": ("log_uniform_int", 20, 200),
        "learning_rate": ("log_uniform", 1e-6, 1e-2),
        "momentum": ("one_minus_log_uniform", 0.01, 1.0),
        "input_noise": ("uniform", 0.0, 1.0),
    })
    return config
