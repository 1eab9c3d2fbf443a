"""The one entry from a config's data section to train/valid/test splits: the real corpus or a stand-in."""

import importlib
import os

from absl import logging
import numpy as np

SPLITS = ("train", "valid", "test")
# What each task can read: the standard corpus the user brings, the offline stand-in, or (JSB only) a
# tiny random corpus made in memory for tests.
SOURCES = {
    "jsb": ("standard", "standin", "synthetic"),
    "timit": ("standard", "standin"),
    "iam_online": ("standard", "standin"),
}
_WHAT_PATH_IS = {
    "jsb": "the standard JSB Chorales file (the pickle or JSON with train/valid/test)",
    "timit": "the root of a TIMIT copy (the LDC tree with TRAIN/ and TEST/)",
    "iam_online": "the root of an IAM-OnDB copy (lineStrokes/, ascii/ and the split lists)",
}
_NUM_KEYS = 88


def absolute_path(path):
    """`path` with ~ expanded, made absolute (how a data path is compared between runs)."""
    return os.path.abspath(os.path.expanduser(path))


def resolve_source(data_config):
    """The data source a config means: `data.source` if set, else 'standard' when `data.path` is set, else 'standin'."""
    if data_config.get("source"):
        return data_config.source
    return "standard" if data_config.get("path") else "standin"


# The module that builds each task's stand-in, and its RECIPE_VERSION.
_STANDINS = {"jsb": "jsb_music21", "timit": "speech_standin", "iam_online": "handwriting_standin"}


def standin_recipe(task):
    """The recipe version of `task`'s stand-in data (its builder's RECIPE_VERSION; a new one builds other data)."""
    return importlib.import_module(f"odyssey.data.{_STANDINS[task]}").RECIPE_VERSION


def _check_sizes(where, sizes):
    if (not isinstance(sizes, (tuple, list)) or len(sizes) != 3
            or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in sizes)):
        raise ValueError(f"{where} = {sizes!r}: expected three positive integers (train, valid, test)")


def check_data_config(data_config, task=None):
    """Checks a data section without reading any data; cheap, so a study can fail before it writes anything.

    Args:
      data_config: `config.data`: task, source (or unset), path (or unset), seed, max_sequences
        (train/valid/test, each an int or unset), and per source: sizes (stand-ins of TIMIT and
        IAM-OnDB, synthetic), lengths (synthetic: shortest and longest sequence).
      task: the study's task; by default `data_config.task`.

    Raises:
      ValueError: an unknown source, or bad sizes, naming the field.
      FileNotFoundError: `data.path` is set but nothing is there.
    """
    task = task or data_config.task
    if data_config.get("task", task) != task:
        raise ValueError(f"config.data.task = {data_config.task!r} but config.task = {task!r}; they must agree")
    if task not in SOURCES:
        raise ValueError(f"config.data.task = {task!r}: unknown task; known: {', '.join(SOURCES)}")
    source = resolve_source(data_config)
    if source not in SOURCES[task]:
        raise ValueError(f"config.data.source = {source!r}: {task} reads one of {', '.join(SOURCES[task])}")
    path = data_config.get("path")
    if source == "standard":
        if not path:
            raise FileNotFoundError(f"config.data.source = 'standard' needs config.data.path: {_WHAT_PATH_IS[task]}")
        if not os.path.exists(absolute_path(path)):
            raise FileNotFoundError(f"config.data.path = {path!r}: nothing there; it should be {_WHAT_PATH_IS[task]}")
    elif path:
        raise ValueError(f"config.data.path = {path!r} is set but config.data.source = {source!r} does not "
                         f"read it; unset one of them")
    seed = data_config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"config.data.seed = {seed!r}: expected an integer >= 0")
    if source == "synthetic" or (source == "standin" and task != "jsb"):
        _check_sizes("config.data.sizes", data_config.sizes)
    if source == "synthetic":
        lengths = data_config.lengths
        if (not isinstance(lengths, (tuple, list)) or len(lengths) != 2
                or not all(isinstance(n, int) and n >= 2 for n in lengths) or lengths[0] > lengths[1]):
            raise ValueError(f"config.data.lengths = {lengths!r}: expected (shortest, longest), 2 <= shortest <= longest")
    limits = data_config.get("max_sequences") or {}
    for split in limits:
        n = limits[split]
        if split not in SPLITS:
            raise ValueError(f"config.data.max_sequences.{split}: unknown split; known: {', '.join(SPLITS)}")
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
            raise ValueError(f"config.data.max_sequences.{split} = {n!r}: expected an integer >= 1 or None (all)")


def synthetic_rolls(sizes, lengths, seed):
    """A tiny random JSB-like corpus: piano rolls with 3 or 4 notes per step in a chorale's range.

    Args:
      sizes: sequences in train, valid, test.
      lengths: (shortest, longest) number of time steps.
      seed: int.

    Returns:
      dict train/valid/test -> list of float32[T, 88], as `odyssey.data.jsb.load` returns.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in zip(SPLITS, sizes):
        rolls = []
        for _ in range(n):
            length = int(rng.integers(lengths[0], lengths[1] + 1))
            roll = np.zeros((length, _NUM_KEYS), np.float32)
            for t in range(length):
                # MIDI 43..96, the range the real chorales use (column = note - 21).
                roll[t, rng.choice(np.arange(22, 76), size=int(rng.integers(3, 5)), replace=False)] = 1.0
            rolls.append(roll)
        out[split] = rolls
    return out


def _read(data_config, task, source):
    path = absolute_path(data_config.path) if data_config.get("path") else None
    cache_dir = data_config.get("cache_dir")
    seed = int(data_config.get("seed", 0))
    if source == "synthetic":
        return synthetic_rolls(tuple(data_config.sizes), tuple(data_config.lengths), seed)
    if task == "jsb":
        if source == "standard":
            from odyssey.data import jsb
            return jsb.load(path)
        from odyssey.data import jsb_music21
        return jsb_music21.build_music21(cache_dir=cache_dir, seed=seed)
    if task == "timit":
        if source == "standard":
            from odyssey.data import timit
            return timit.load(path)
        from odyssey.data import speech_standin
        return speech_standin.build(cache_dir=cache_dir, seed=seed, sizes=tuple(data_config.sizes))
    if source == "standard":
        from odyssey.data import iam_ondb
        return iam_ondb.load(path)
    from odyssey.data import handwriting_standin
    return handwriting_standin.build(cache_dir=cache_dir, seed=seed, sizes=tuple(data_config.sizes))


def load_splits(data_config):
    """Reads the splits a data section names, then keeps the first `max_sequences` of each split.

    Args:
      data_config: `config.data`, see `check_data_config`.

    Returns:
      dict train/valid/test -> list of sequences in the form the task's reader returns (jsb: float32[T, 88]
      piano rolls; timit: (float32[T, 39] features, int32[T] phone labels); iam_online: (float32[T, 4]
      features, int32[L] labels)).

    Raises:
      ValueError, FileNotFoundError: as `check_data_config`, or from the reader for a broken corpus.
    """
    check_data_config(data_config)
    task, source = data_config.task, resolve_source(data_config)
    logging.info("Reading %s data (source %s%s)", task, source,
                 f", {absolute_path(data_config.path)}" if data_config.get("path") else "")
    splits = _read(data_config, task, source)
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise ValueError(f"the {task} reader (source {source}) returned no split {missing}")
    limits = data_config.get("max_sequences") or {}
    out = {}
    for split in SPLITS:
        n = limits.get(split)
        out[split] = list(splits[split])[:n] if n is not None else list(splits[split])
        if not out[split]:
            raise ValueError(f"the {split} split of {task} (source {source}) is empty")
    logging.info("%s splits: %s", task, ", ".join(f"{s} {len(out[s])}" for s in SPLITS))
    return out
