"""A tiny study that runs the whole pipeline in seconds, for the tests.

    python -m experiments.study --config=configs/test.py --workdir=/tmp/odyssey_test
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
    """A few tiny JSB-like trials on random piano rolls made in memory."""
    if arg not in (None, ""):
        raise ValueError(f"configs/test.py takes no argument, got {arg!r}")
    config = ml_collections.ConfigDict()
    task = config_dict.FieldReference("jsb")
    # Music: one forward layer, 88 sigmoid outputs, NLL per time step.
    config.task = task

    config.data = ml_collections.ConfigDict()
    # The task the data is read for; the same reference as config.task.
    config.data.task = task
    # Random piano rolls from data.seed: no corpus, no cache, nothing to build.
    config.data.source = "synthetic"
    # Unused by the synthetic source.
    config.data.path = config_dict.placeholder(str)
    # Unused by the synthetic source.
    config.data.cache_dir = config_dict.placeholder(str)
    # Seed of the random piano rolls.
    config.data.seed = 0
    # Sequences in train, valid, test.
    config.data.sizes = (6, 3, 3)
    # Shortest and longest sequence, in time steps.
    config.data.lengths = (5, 9)
    # Keep only the first n sequences of each split (unset: all of it).
    config.data.max_sequences = ml_collections.ConfigDict({
        "train": config_dict.placeholder(int),
        "valid": config_dict.placeholder(int),
        "test": config_dict.placeholder(int),
    })

    config.model = ml_collections.ConfigDict()
    # Blocks when search.space does not draw hidden_size.
    config.model.hidden_size = 4

    config.optim = ml_collections.ConfigDict()
    # Learning rate when search.space does not draw it.
    config.optim.learning_rate = 1e-2
    # Momentum when search.space does not draw it.
    config.optim.momentum = 0.9
    # Nesterov (True) or classical momentum.
    config.optim.nesterov = True
    # Clip gradients to [-1, 1].
    config.optim.clip = False

    config.train = ml_collections.ConfigDict()
    # Epochs per trial at most...
    config.train.max_epochs = 4
    # ...and epochs without a better validation metric before a trial stops.
    config.train.patience = 2
    # Input-noise std when search.space does not draw it.
    config.train.input_noise = 0.0

    config.search = ml_collections.ConfigDict()
    # Vanilla and FGR, the variant whose padded units need the trainer's mask; each variant compiles its own
    # programs, so every further variant costs the tests a compilation.
    config.search.variants = ("V", "FGR")
    # Trials per variant.
    config.search.num_trials = 3
    # The seed every trial is drawn from.
    config.search.seed = 0
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
