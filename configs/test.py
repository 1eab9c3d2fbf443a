"""A tiny study that runs the whole pipeline in seconds, for the tests.

    python -m experiments.study --config=configs/test.py --workdir=/tmp/odyssey_test
"""

import ml_collections

from odyssey import study_config


def get_config(arg=None):
    """A few tiny JSB-like trials on random piano rolls made in memory."""
    if arg not in (None, ""):
        raise ValueError(f"configs/test.py takes no argument, got {arg!r}")
    config = study_config.study_config("jsb", quick=False)
    # Random piano rolls from data.seed: no corpus, no cache, nothing to build (data.path and
    # data.cache_dir are unused).
    config.data.source = "synthetic"
    # Sequences in train, valid, test.
    config.data.sizes = (6, 3, 3)
    # Shortest and longest sequence, in time steps.
    config.data.lengths = (5, 9)
    # Blocks when search.space does not draw hidden_size.
    config.model.hidden_size = 4
    # Learning rate when search.space does not draw it.
    config.optim.learning_rate = 1e-2
    # Epochs per trial at most, and epochs without a better validation metric before a trial stops.
    config.train.max_epochs = 4
    config.train.patience = 2
    # Vanilla and FGR, the variant whose padded units need the trainer's mask; each variant compiles its own
    # programs, so every further variant costs the tests a compilation.
    config.search.variants = ("V", "FGR")
    # Trials per variant.
    config.search.num_trials = 3
    # The most trials per compiled program: 2 slots for 3 trials, so a slot is refilled when its trial ends.
    # The tests also run 1 and expect the same numbers.
    config.search.trials_per_batch = 2
    # One padding bucket (one program per variant); hidden sizes below 8 are zero-padded to it.
    config.search.hidden_buckets = (8,)
    # The paper's distributions over small ranges; learning rates high enough to move in a few epochs.
    config.search.space = ml_collections.ConfigDict({
        "hidden_size": ("log_uniform_int", 2, 8),
        "learning_rate": ("log_uniform", 1e-3, 1e-1),
        "momentum": ("one_minus_log_uniform", 0.01, 1.0),
        "input_noise": ("uniform", 0.0, 1.0),
    })
    return config
