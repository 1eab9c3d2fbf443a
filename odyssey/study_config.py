"""The fields every study config shares (DESIGN §3-4); the files in configs/ set what differs per task.

`study_config(task, quick)` returns the full config of a task with the paper's protocol and search space;
each task file then adds its data fields and its own deviations (a smaller quick corpus, TIMIT's extra
hyperparameters). Every field is documented here, where it is defined.
"""

import ml_collections
from ml_collections import config_dict

from odyssey.cells import VARIANTS


def parse_arg(path: str, arg) -> bool:
    """Whether a config file's argument asks for the quick study; anything but "" / None / "quick" is an error."""
    if arg not in (None, "", "quick"):
        raise ValueError(f"unknown config argument {arg!r}; use {path} or {path}:quick")
    return arg == "quick"


def study_config(task: str, quick: bool) -> ml_collections.ConfigDict:
    """The config of a study of `task` with the paper's protocol; `quick` shrinks it to minutes on a laptop."""
    config = ml_collections.ConfigDict()
    ref = config_dict.FieldReference(task)
    # The task: "jsb", "timit" or "iam_online" (DESIGN §2).
    config.task = ref

    config.data = ml_collections.ConfigDict()
    # The task the data is read for; the same reference as config.task.
    config.data.task = ref
    # "standard" (the corpus at data.path) or "standin" (built offline, see the task's config).
    # Unset: "standard" when data.path is set, else "standin".
    config.data.source = config_dict.placeholder(str)
    # The corpus for source "standard" (see the task's config for its form).
    config.data.path = config_dict.placeholder(str)
    # Where a stand-in is cached; unset: $ODYSSEY_CACHE/<name>, else ~/.cache/odyssey/<name>.
    config.data.cache_dir = config_dict.placeholder(str)
    # Seed of the stand-in (its content or its train/valid/test split).
    config.data.seed = 0
    # Keep only the first n sequences of each split (unset: all of it).
    config.data.max_sequences = ml_collections.ConfigDict({
        "train": config_dict.placeholder(int),
        "valid": config_dict.placeholder(int),
        "test": config_dict.placeholder(int),
    })

    config.model = ml_collections.ConfigDict()
    # Blocks per hidden layer (each direction) when search.space does not draw hidden_size.
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
    # The operand dtype of the LSTM loops' recurrent products: "float32" (the paper's numerics) or
    # "bfloat16" (recurrent weights and each step's vector rounded to bfloat16, sums in float32; the weights
    # themselves stay float32). It changes the numbers, so it is part of the study's identity when not
    # "float32". See odyssey.train.train_trials.
    config.train.recurrent_dtype = "float32"
    # The order of the training sequences in each epoch: "per_trial" (each trial shuffles by its own seed),
    # "shared" (one shuffle per epoch, drawn from search.seed, for every trial) or "strata" (each trial its own
    # shuffle within strata of train.order_stratum sequences of similar length, the strata's sequence shared).
    # Each trial sees a uniform shuffle every epoch in all three; "shared" lets trials trained together present
    # sequences of one length at each update, up to 2x faster on data of uneven lengths
    # (bench/data_order_check.py), and makes the trials' data orders common to all; "strata" of 8 run 2.5 %
    # more loop steps than "shared" on JSB while two trials present the same sequence at an update 1 time in
    # 8. Either changes the numbers, so it is part of the study's identity. See
    # odyssey.train.train_trials(order_seed=..., order_stratum=...).
    config.train.data_order = "per_trial"
    # Sequences per stratum of data_order "strata" (1: the shared order; more: closer to each trial's own).
    config.train.order_stratum = 8
    # The precision of the float32 matrix products: "float32" (true float32, the paper's arithmetic, on every
    # device) or "tensorfloat32" (inputs rounded to TF32 on GPUs with TF32 tensor cores, as JAX does there by
    # default). It changes the numbers on such GPUs, so it is part of the study's identity when not
    # "float32". See odyssey.train.train_trials(matmul_precision=...).
    config.train.matmul_precision = "float32"
    # How the LSTM layers' time loops run: "xla" (XLA loops, odyssey.fast_lstm) or "pallas" (one Pallas kernel
    # per loop, each trial's program running its own steps; the mixed program's and FGR's, the others stay
    # XLA's; GPUs only in practice, as a CPU runs it in the slow interpret mode). The numbers agree to float
    # round-off, so it is not part of the study's identity. See odyssey.train.train_trials(lstm_loops=...).
    config.train.lstm_loops = "xla"

    config.search = ml_collections.ConfigDict()
    # Which LSTM variants to study (DESIGN §1); default: all nine.
    config.search.variants = VARIANTS
    # Random-search trials per variant (the paper: 200).
    config.search.num_trials = 4 if quick else 200
    # The one seed every trial's hyperparameters and training seed are drawn from.
    config.search.seed = 0
    # Whether the task keys the draws too: each task's random search is its own, as the paper ran one per
    # dataset. False: trial k of a variant draws the same hyperparameters and seed in every task (and the
    # tasks share one data order), as studies made before this field did; resume such a study with False.
    config.search.draw_by_task = True
    # The most trials one compiled program trains at once, rounded up to whole equal chunks on every device (by
    # fewer than chunks x devices; the study's log says the slots); it changes speed and memory, never the numbers.
    # 640 holds a whole group of the full study (the mixed program's smallest bucket gets ~500 of its 1600
    # trials, 526 of TIMIT's draws; 512 split that group in two waves), so a group runs as long as its longest
    # trial rather than in waves.
    config.search.trials_per_batch = 640
    # Trials per vmapped step within a program (unset: odyssey.train.default_trials_per_chunk, ~2 MiB of
    # weights per layer on a CPU, ~512 MiB on an accelerator); speed only, never the numbers.
    config.search.trials_per_chunk = config_dict.placeholder(int)
    # Whether the eight variants other than FGR share one program per bucket (odyssey.train.MIXED); speed
    # only, the numbers agree to float round-off.
    config.search.mix_variants = True
    # Trials are padded to the smallest of these hidden sizes that holds them. Each bucket is one compiled
    # program for FGR and one for the other eight variants (odyssey.train.MIXED): quick uses one bucket,
    # because compiling costs more than padding for a few trials.
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
