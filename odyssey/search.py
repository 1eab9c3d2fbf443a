"""Random search: the search space as config data, checking a study config, drawing trials, scheduling them."""

import hashlib
import json
import math
import zlib

import numpy as np

from odyssey.cells import VARIANTS
from odyssey.data import splits as data_splits

TASKS = ("jsb", "timit", "iam_online")

# Every field of a trial that random search may draw, its kind, and the config field that holds its value
# when the search space does not draw it. The order here is the order of the draws, so it never changes.
_DIMENSIONS = {
    "hidden_size": ("int", "model.hidden_size"),
    "learning_rate": ("float", "optim.learning_rate"),
    "momentum": ("float", "optim.momentum"),
    "input_noise": ("float", "train.input_noise"),
    "nesterov": ("bool", "optim.nesterov"),
    "clip": ("bool", "optim.clip"),
}
# Distribution name -> (kinds of dimension it can draw, number of parameters).
_DISTRIBUTIONS = {
    "log_uniform": (("float",), 2),
    "one_minus_log_uniform": (("float",), 2),
    "uniform": (("float",), 2),
    "log_uniform_int": (("int",), 2),
    "bernoulli": (("bool",), 1),
}
# Fields added after studies were run, with the value those studies had: a config with that value keeps
# its earlier fingerprint (and resumes its workdir), any other value counts. One is not quite so: before
# train.matmul_precision, a GPU with TF32 ran the products at TF32 (JAX's default), not float32; the study
# warns when it resumes a store from then (experiments/study.py, the store's "products" meta row).
_LATER_FIELDS = {"train.recurrent_dtype": "float32", "train.data_order": "per_trial",
                 "train.matmul_precision": "float32", "search.draw_by_task": False, "train.order_stratum": 8}
# Not a config field: the recipe version of the stand-in data a study trains on (`data.source` "standin"), in its
# identity so that a study begun on one recipe's data is not resumed on another's; absent at 1, the version
# of every study before it (their fingerprints stay).
_STANDIN_RECIPE = "data.standin_recipe"
RECURRENT_DTYPES = ("float32", "bfloat16")
DATA_ORDERS = ("per_trial", "shared", "strata")
# Sequences per length stratum of data_order "strata" where config.train.order_stratum is absent
# (`odyssey.train.train_trials(order_stratum=...)`).
ORDER_STRATUM = 8
# As odyssey.train.MATMUL_PRECISIONS (this module stays free of the trainer's imports).
MATMUL_PRECISIONS = ("float32", "tensorfloat32")
# As odyssey.pallas_loops.LOOPS.
LSTM_LOOPS = ("xla", "pallas")
# Config fields that only decide how trials are packed into compiled programs: they change no trial's
# numbers beyond float round-off, so a study may be resumed with other values.
_SCHEDULING_ONLY = ("search.trials_per_batch", "search.trials_per_chunk", "search.hidden_buckets", "search.mix_variants",
                    "train.lstm_loops", "data.cache_dir")


class ConfigError(ValueError):
    """A study config that cannot run; the message names the field and what is wrong."""


def _is_number(x):
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _get(config, dotted):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _support(name, dist, params):
    """Checks one distribution's parameters; returns the closed interval its draws lie in."""
    where = f"config.search.space.{name} = {(dist, *params)!r}"
    if not all(_is_number(p) and math.isfinite(p) for p in params):
        raise ConfigError(f"{where}: the parameters of {dist!r} must be finite numbers")
    if dist == "bernoulli":
        (p,) = params
        if not 0 <= p <= 1:
            raise ConfigError(f"{where}: bernoulli needs a probability in [0, 1], got {p}")
        return 0, 1
    low, high = params
    if not low < high:
        raise ConfigError(f"{where}: {dist} needs low < high, got low={low}, high={high}")
    if dist in ("log_uniform", "log_uniform_int") and low <= 0:
        raise ConfigError(f"{where}: {dist} needs 0 < low < high, got low={low}, high={high}")
    if dist == "log_uniform_int":
        if int(low) != low or int(high) != high:
            raise ConfigError(f"{where}: log_uniform_int needs integer bounds, got low={low}, high={high}")
        return int(low), int(high)
    if dist == "one_minus_log_uniform":
        if not 0 < low < high <= 1:
            raise ConfigError(f"{where}: one_minus_log_uniform draws 1 - x with x log-uniform in [low, high]; "
                              f"it needs 0 < low < high <= 1, got low={low}, high={high}")
        return 1 - high, 1 - low
    return low, high


def _check_value_range(where, name, low, high, max_hidden):
    """Checks that a dimension's values (all in [low, high]) make sense for the trainer."""
    if name == "hidden_size" and not 1 <= low <= high <= max_hidden:
        raise ConfigError(f"{where}: hidden sizes must lie in [1, {max_hidden}] (the largest of "
                          f"config.search.hidden_buckets), got [{low}, {high}]")
    if name == "learning_rate" and low <= 0:
        raise ConfigError(f"{where}: learning rates must be positive, got the range [{low}, {high}]")
    if name == "momentum" and not (0 <= low and high <= 1 and low < 1):
        raise ConfigError(f"{where}: momentum must lie in [0, 1), got the range [{low}, {high}]")
    if name == "input_noise" and low < 0:
        raise ConfigError(f"{where}: an input-noise std must be >= 0, got the range [{low}, {high}]")


def _check_space(config):
    space = config.search.space
    buckets = tuple(config.search.hidden_buckets)
    for name in space:
        if name not in _DIMENSIONS:
            raise ConfigError(f"config.search.space.{name}: unknown hyperparameter; known: {', '.join(_DIMENSIONS)}")
        spec = space[name]
        if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in _DISTRIBUTIONS:
            raise ConfigError(f"config.search.space.{name} = {spec!r}: expected (distribution, *parameters) "
                              f"with a distribution among {', '.join(_DISTRIBUTIONS)}")
        dist, params = spec[0], tuple(spec[1:])
        kinds, arity = _DISTRIBUTIONS[dist]
        kind = _DIMENSIONS[name][0]
        if kind not in kinds:
            usable = [d for d, (k, _) in _DISTRIBUTIONS.items() if kind in k]
            raise ConfigError(f"config.search.space.{name}: {dist} cannot draw {kind} values; use one of {usable}")
        if len(params) != arity:
            raise ConfigError(f"config.search.space.{name} = {spec!r}: {dist} takes {arity} parameter(s)")
        low, high = _support(name, dist, params)
        _check_value_range(f"config.search.space.{name} = {spec!r}", name, low, high, buckets[-1])
    for name, (kind, field) in _DIMENSIONS.items():
        if name in space:
            continue
        value = _get(config, field)
        where = f"config.{field} = {value!r} (used because config.search.space has no {name!r})"
        if kind == "bool" and not isinstance(value, (bool, np.bool_)):
            raise ConfigError(f"{where}: expected True or False")
        if kind == "int" and not (isinstance(value, (int, np.integer)) and not isinstance(value, bool)):
            raise ConfigError(f"{where}: expected an integer")
        if kind == "float" and not (_is_number(value) and math.isfinite(value)):
            raise ConfigError(f"{where}: expected a finite number")
        if kind != "bool":
            _check_value_range(where, name, value, value, buckets[-1])


def _check_int(config, dotted, minimum):
    value = _get(config, dotted)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"config.{dotted} = {value!r}: expected an integer >= {minimum}")


def validate_config(config):
    """Checks everything a study needs from its config before anything is read or written.

    Args:
      config: the study's `ml_collections.ConfigDict` (sections data, model, optim, train, search).

    Raises:
      ConfigError: naming the field and what is wrong: an unknown task or variant, a bad range in
        the search space, bad sizes; FileNotFoundError from the data section for a missing path.
    """
    if config.task not in TASKS:
        raise ConfigError(f"config.task = {config.task!r}: unknown task; known: {', '.join(TASKS)}")
    variants = config.search.variants
    if isinstance(variants, str) or not isinstance(variants, (tuple, list)) or not variants:
        raise ConfigError(f"config.search.variants = {variants!r}: expected a non-empty tuple of variant names")
    for v in variants:
        if v not in VARIANTS:
            # A flag --config.search.variants=V,NP reaches here as the one name 'V,NP'.
            hint = (""" (to name several on the command line: --config.search.variants='("V","NP")')"""
                    if isinstance(v, str) and any(c in v for c in ",()[] ") else "")
            raise ConfigError(f"config.search.variants: unknown variant {v!r}; known: {', '.join(VARIANTS)}{hint}")
    if len(set(variants)) != len(variants):
        raise ConfigError(f"config.search.variants = {variants!r}: a variant is listed twice")
    for dotted, minimum in (("search.num_trials", 1), ("search.seed", 0), ("search.trials_per_batch", 1),
                            ("train.max_epochs", 1), ("train.patience", 1)):
        _check_int(config, dotted, minimum)
    if config.train.get("order_stratum") is not None:
        _check_int(config, "train.order_stratum", 1)
    if config.search.get("trials_per_chunk") is not None:
        _check_int(config, "search.trials_per_chunk", 1)
    recurrent = config.train.get("recurrent_dtype", "float32")
    if recurrent not in RECURRENT_DTYPES:
        raise ConfigError(f"config.train.recurrent_dtype = {recurrent!r}: expected one of {', '.join(RECURRENT_DTYPES)}")
    data_order = config.train.get("data_order", "per_trial")
    if data_order not in DATA_ORDERS:
        raise ConfigError(f"config.train.data_order = {data_order!r}: expected one of {', '.join(DATA_ORDERS)}")
    precision = config.train.get("matmul_precision", "float32")
    if precision not in MATMUL_PRECISIONS:
        raise ConfigError(f"config.train.matmul_precision = {precision!r}: expected one of "
                          f"{', '.join(MATMUL_PRECISIONS)}")
    loops = config.train.get("lstm_loops", "xla")
    if loops not in LSTM_LOOPS:
        raise ConfigError(f"config.train.lstm_loops = {loops!r}: expected one of {', '.join(LSTM_LOOPS)}")
    if not isinstance(config.search.get("draw_by_task", False), bool):
        raise ConfigError(f"config.search.draw_by_task = {config.search.draw_by_task!r}: expected True or False")
    if not isinstance(config.search.get("mix_variants", True), bool):
        raise ConfigError(f"config.search.mix_variants = {config.search.mix_variants!r}: expected True or False")
    buckets = config.search.hidden_buckets
    if (not isinstance(buckets, (tuple, list)) or not buckets
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in buckets)
            or list(buckets) != sorted(set(buckets))):
        raise ConfigError(f"config.search.hidden_buckets = {buckets!r}: expected increasing positive integers")
    _check_space(config)
    data_splits.check_data_config(config.data, config.task)


def _draw(rng, dist, params):
    if dist == "bernoulli":
        return bool(rng.random() < params[0])
    low, high = params
    if dist == "uniform":
        return float(rng.uniform(low, high))
    if dist == "log_uniform":
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))
    if dist == "one_minus_log_uniform":
        return float(1.0 - np.exp(rng.uniform(np.log(low), np.log(high))))
    # The integer n holds the log-uniform mass of [n, n + 1), so every integer of [low, high] is reachable.
    n = int(np.floor(np.exp(rng.uniform(np.log(low), np.log(high + 1)))))
    return min(max(n, int(low)), int(high))


def draw_trials(config):
    """Draws the study's trials: `num_trials` per variant, from `config.search.seed` and the task alone.

    Trial k of a variant gets its own generator, keyed by (seed, a checksum of the task's name, a checksum of
    the variant's name, k), so its hyperparameters and its training seed do not depend on num_trials, on the
    other variants or on the other tasks' searches. With `config.search.draw_by_task` False the task is left
    out of the key (studies made before that field): then trial k of a variant draws alike in every task.

    Args:
      config: a study config that passed `validate_config`.

    Returns:
      list of dicts with the fields of `odyssey.train.Trial` (trial_id, variant, hidden_size, learning_rate,
      momentum, input_noise, nesterov, clip, seed); trial ids 0, 1, ... in the order of
      config.search.variants, then k.
    """
    space = config.search.space
    trials = []
    task = _task_key(config)
    for variant in config.search.variants:
        for k in range(config.search.num_trials):
            rng = np.random.default_rng(np.random.SeedSequence(
                int(config.search.seed), spawn_key=(*task, zlib.crc32(variant.encode()), k)))
            values = {"seed": int(rng.integers(0, 2**31 - 1))}
            for name, (kind, field) in _DIMENSIONS.items():
                if name in space:
                    values[name] = _draw(rng, space[name][0], tuple(space[name][1:]))
                else:
                    values[name] = _get(config, field)
                values[name] = {"int": int, "float": float, "bool": bool}[kind](values[name])
            trials.append({"trial_id": len(trials), "variant": variant, **values})
    return trials


def order_seed(config):
    """The seed of the data order every trial shares (`odyssey.train.train_trials(order_seed=...)`), drawn from
    `config.search.seed` (and the task, `config.search.draw_by_task`), or None when each trial shuffles by its own
    seed (data_order "per_trial"). Data orders "shared" and "strata" draw the same seed."""
    if config.train.get("data_order", "per_trial") == "per_trial":
        return None
    rng = np.random.default_rng(np.random.SeedSequence(int(config.search.seed),
                                                       spawn_key=(*_task_key(config), zlib.crc32(b"data order"))))
    return int(rng.integers(0, 2**31 - 1))


def order_stratum(config):
    """For data_order "strata", config.train.order_stratum (default `ORDER_STRATUM`), the sequences per stratum
    (`odyssey.train.train_trials(order_stratum=...)`); else None."""
    if config.train.get("data_order", "per_trial") != "strata":
        return None
    return int(config.train.get("order_stratum", ORDER_STRATUM))


def _task_key(config):
    """The task's part of the draws' keys: a checksum of its name, or nothing (`config.search.draw_by_task`)."""
    return (zlib.crc32(config.task.encode()),) if config.search.get("draw_by_task", False) else ()


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    return x


def study_identity(config):
    """The part of the config that decides the trials and their numbers, as plain JSON-able data.

    Everything counts except the fields in `_SCHEDULING_ONLY` (how trials are packed into programs) and
    fields of `_LATER_FIELDS` at the value studies had before the field existed.
    The data path counts as an absolute path; stand-in data count by the version of their recipe as well
    (data.standin_recipe, absent at version 1).
    """
    ident = _plain(config.to_dict())
    for dotted in _SCHEDULING_ONLY:
        section, key = dotted.split(".")
        ident.get(section, {}).pop(key, None)
    if data_splits.resolve_source(config.data) == "standin" and data_splits.standin_recipe(config.task) != 1:
        ident.setdefault("data", {})[_STANDIN_RECIPE.split(".")[1]] = data_splits.standin_recipe(config.task)
    for dotted, earlier in _LATER_FIELDS.items():
        section, key = dotted.split(".")
        if ident.get(section, {}).get(key, earlier) == earlier:
            ident.get(section, {}).pop(key, None)
    if ident.get("data", {}).get("path"):
        ident["data"]["path"] = data_splits.absolute_path(ident["data"]["path"])
    return ident


def fingerprint(config):
    """A short hash of `study_identity(config)`: two configs that draw and train the same trials share it."""
    text = json.dumps(study_identity(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity_diff(old, new, prefix="config"):
    """The fields where two `study_identity` dicts differ, as 'field: old -> new' strings."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(identity_diff(a, b, f"{prefix}.{key}"))
        elif a != b:
            out.append(f"{prefix}.{key}: {_shown(a, prefix, key)} -> {_shown(b, prefix, key)}")
    return out


def _shown(value, prefix, key):
    """A value of `identity_diff`; a later field's absence is its value before it existed."""
    dotted = f"{prefix}.{key}".removeprefix("config.")
    if dotted == _STANDIN_RECIPE:
        return ("absent (stand-in data of recipe 1, or no stand-in)" if value == "<absent>" else
                f"{value!r} (the version of the recipe that builds the stand-in data: a study is not resumed on "
                f"data another recipe built)")
    if value == "<absent>" and dotted in _LATER_FIELDS:
        return f"{_LATER_FIELDS[dotted]!r} (absent: the field is newer than the study)"
    return repr(value)


def bucket_of(hidden_size, hidden_buckets):
    """The smallest bucket that holds `hidden_size` (the width the trainer pads the trial to); the buckets may
    come in any order."""
    buckets = sorted(hidden_buckets)
    for b in buckets:
        if hidden_size <= b:
            return b
    raise ValueError(f"hidden size {hidden_size} exceeds the largest hidden bucket {buckets[-1]}")


def schedule(trials, hidden_buckets):
    """Orders trials by variant and hidden bucket, in the order to start them.

    A group holds the trials of one variant and one hidden bucket, in trial-id order. The groups take turns
    over the variants (smallest bucket first), so every variant has results early in a study. The trainer
    compiles one program per group of `odyssey.train.group_trials` (by default the eight variants other than
    FGR share one per bucket, taking their trials in this order), runs it with `trials_per_batch` slots and
    refills a slot as soon as its trial ends.

    Args:
      trials: objects with trial_id, variant and hidden_size (e.g. `odyssey.train.Trial`).
      hidden_buckets: increasing ints; every hidden size fits the last.

    Returns:
      list of non-empty lists of the given trials; each trial appears exactly once.
    """
    per_variant = {}
    for t in sorted(trials, key=lambda t: t.trial_id):
        per_variant.setdefault(t.variant, {}).setdefault(bucket_of(t.hidden_size, hidden_buckets), []).append(t)
    queues = [[groups[b] for b in sorted(groups)] for groups in per_variant.values()]
    order = []
    for turn in range(max((len(q) for q in queues), default=0)):
        order.extend(q[turn] for q in queues if turn < len(q))
    return order
