"""JSB Chorales: the standard piano-roll file (pickle or JSON), the music21 stand-in, and their statistics.

A chorale is a float32[T, 88] piano roll: row t is time step t (one quarter note), column k is
MIDI note k + 21, 1.0 where the note sounds. The next-step task predicts row t + 1 from rows
0..t. Rows of zeros are silence and are kept.

    python -m odyssey.data.jsb --describe                 # the music21 build (built once, cached)
    python -m odyssey.data.jsb --describe jsb_chorales.pickle
"""

import importlib
import io
import json
import pathlib
import pickle

import numpy as np

from odyssey.data.jsb_music21 import LOWEST_NOTE, NUM_KEYS, SPLITS, build_music21, chorale_names

__all__ = ["load", "build_music21", "chorale_names", "statistics", "describe", "LOWEST_NOTE", "NUM_KEYS", "SPLITS"]

HIGHEST_NOTE = LOWEST_NOTE + NUM_KEYS - 1
_FORMAT = "a dict with keys train/valid/test -> list of sequences -> list of time steps -> MIDI notes 21..108"

# The only globals a JSB pickle may name: the numpy integers of the Python-2 upstream file, and
# containers a time step could be stored as. Anything else is refused before it can run.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
}
_BUILTIN_GLOBALS = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset")}


class _JsbUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals a JSB Chorales pickle needs."""

    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            # numpy 2 renamed numpy.core to numpy._core; going there directly avoids its warning.
            for candidate in ("numpy._core.multiarray", "numpy.core.multiarray") if name == "scalar" else ("numpy",):
                try:
                    return getattr(importlib.import_module(candidate), name)
                except (ImportError, AttributeError):
                    continue
        if (module, name) in _BUILTIN_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a JSB Chorales pickle never holds")


def load(path):
    """Reads the standard JSB Chorales file, as a pickle or as JSON (told apart by its content).

    The pickle may be the Python-2 upstream one whose notes are numpy integers (read with
    encoding="latin1"); it may name no other Python objects, so a stray pickle cannot run code.

    Args:
        path: str or os.PathLike, the file: a dict with keys "train", "valid", "test", each a list
            of sequences, each a list of time steps, each a collection of MIDI note numbers in
            21..108 (empty for silence). Other keys are ignored.

    Returns:
        dict with keys "train", "valid", "test", each a list of float32[T, 88] piano rolls
        (column = MIDI note - 21), in the file's order.

    Raises:
        FileNotFoundError: path does not exist.
        ValueError: the file is neither JSON nor a complete pickle, is not in this format, misses
            a split, or holds a note outside 21..108; the message says which split, sequence and
            time step.
    """
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (expected the JSB Chorales pickle or JSON)") from None
    data = _decode(raw, path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a {type(data).__name__}, expected {_FORMAT}")
    missing = [split for split in SPLITS if split not in data]
    if missing:
        raise ValueError(f"{path}: no split {', '.join(map(repr, missing))}; it has keys {sorted(map(str, data))}")
    return {split: _split_rolls(data[split], f"{path}: split {split!r}") for split in SPLITS}


def _decode(raw, path):
    if not raw.strip():
        raise ValueError(f"{path}: empty file, expected the JSB Chorales pickle or JSON")
    if raw.lstrip()[:1] in (b"{", b"["):
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: looks like JSON but is not UTF-8 ({e})") from None
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}); is the file truncated?") from None
    try:
        return _JsbUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except EOFError:
        raise ValueError(f"{path}: the pickle ends early; is the file truncated?") from None
    except pickle.UnpicklingError as e:
        if "truncated" in str(e):
            raise ValueError(f"{path}: the pickle ends early; is the file truncated?") from None
        raise ValueError(f"{path}: neither JSON nor a JSB Chorales pickle ({e})") from None
    except Exception as e:  # pylint: disable=broad-except
        # Unpickling garbage can fail with nearly any exception; say what the file is not.
        raise ValueError(f"{path}: neither JSON nor a readable pickle ({type(e).__name__}: {e})") from None


def _split_rolls(sequences, where):
    if not isinstance(sequences, (list, tuple)):
        raise ValueError(f"{where}: is a {type(sequences).__name__}, expected a list of sequences")
    return [_roll(seq, f"{where}, sequence {i}") for i, seq in enumerate(sequences)]


def _roll(steps, where):
    if not isinstance(steps, (list, tuple)):
        raise ValueError(f"{where}: is a {type(steps).__name__}, expected a list of time steps")
    if len(steps) < 2:
        raise ValueError(f"{where}: has {len(steps)} time step(s); the next-step task needs at least 2")
    roll = np.zeros((len(steps), NUM_KEYS), dtype=np.float32)
    for t, step in enumerate(steps):
        if not isinstance(step, (list, tuple, set, frozenset)):
            raise ValueError(f"{where}, time step {t}: is a {type(step).__name__}, expected a list of MIDI notes")
        for note in step:
            if isinstance(note, (bool, np.bool_)) or not isinstance(note, (int, np.integer)):
                raise ValueError(f"{where}, time step {t}: {note!r} is not an integer MIDI note")
            if not LOWEST_NOTE <= note <= HIGHEST_NOTE:
                raise ValueError(
                    f"{where}, time step {t}: note {int(note)} is outside the piano range {LOWEST_NOTE}..{HIGHEST_NOTE}")
            roll[t, note - LOWEST_NOTE] = 1.0
    return roll


def statistics(splits):
    """Per-split statistics of piano rolls.

    Args:
        splits: dict split name -> list of float32[T, 88] rolls.

    Returns:
        dict split name -> dict with sequences, mean_length, min_length, max_length, steps (total),
        empty_steps, notes_in_use (distinct MIDI notes), lowest_note, highest_note (MIDI, None when
        no note sounds) and max_notes_per_step.
    """
    stats = {}
    for split, rolls in splits.items():
        lengths = np.array([len(r) for r in rolls], dtype=np.int64)
        active = np.concatenate(rolls) if rolls else np.zeros((0, NUM_KEYS), np.float32)
        used = np.flatnonzero(active.any(axis=0)) + LOWEST_NOTE
        per_step = active.sum(axis=1)
        stats[split] = {
            "sequences": len(rolls),
            "mean_length": float(lengths.mean()) if len(rolls) else 0.0,
            "min_length": int(lengths.min()) if len(rolls) else 0,
            "max_length": int(lengths.max()) if len(rolls) else 0,
            "steps": int(lengths.sum()),
            "empty_steps": int((per_step == 0).sum()),
            "notes_in_use": len(used),
            "lowest_note": int(used[0]) if len(used) else None,
            "highest_note": int(used[-1]) if len(used) else None,
            "max_notes_per_step": int(per_step.max()) if len(per_step) else 0,
        }
    return stats


def describe(splits):
    """A plain-text table of ``statistics(splits)``, one row per split.

    Args:
        splits: dict split name -> list of float32[T, 88] rolls.

    Returns:
        str, a header and one line per split.
    """
    header = (f"{'split':<6} {'sequences':>9} {'mean len':>8} {'min':>4} {'max':>4} {'steps':>6} {'empty':>5} "
              f"{'notes in use':>12} {'MIDI range':>10} {'max/step':>8}")
    lines = [header]
    for split, s in statistics(splits).items():
        span = f"{s['lowest_note']}..{s['highest_note']}" if s["notes_in_use"] else "-"
        lines.append(f"{split:<6} {s['sequences']:>9} {s['mean_length']:>8.2f} {s['min_length']:>4} "
                     f"{s['max_length']:>4} {s['steps']:>6} {s['empty_steps']:>5} {s['notes_in_use']:>12} "
                     f"{span:>10} {s['max_notes_per_step']:>8}")
    return "\n".join(lines)


def _parse_flags(argv):
    from absl.flags import argparse_flags  # pylint: disable=import-outside-toplevel

    parser = argparse_flags.ArgumentParser(prog="python -m odyssey.data.jsb", description=__doc__.split("\n")[0])
    parser.add_argument("--describe", action="store_true", required=True,
                        help="print per-split statistics of the chorales")
    parser.add_argument("path", nargs="?", default=None,
                        help="the standard JSB Chorales pickle or JSON; without it, the music21 build")
    parser.add_argument("--cache_dir", default=None, help="cache folder of the music21 build")
    parser.add_argument("--seed", type=int, default=0, help="seed of the music21 build's split")
    return parser.parse_args(argv[1:])


def _main(args):
    if args.path is not None:
        splits = load(args.path)
        source = str(args.path)
    else:
        splits = build_music21(cache_dir=args.cache_dir, seed=args.seed)
        source = f"music21 Bach chorales (seed {args.seed})"
    print(f"JSB Chorales from {source}")
    print(describe(splits))


if __name__ == "__main__":
    from absl import app  # pylint: disable=import-outside-toplevel

    app.run(_main, flags_parser=_parse_flags)
