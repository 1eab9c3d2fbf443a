"""JSB Chorales stand-in: quarter-note piano rolls built offline from music21's Bach corpus, cached on disk."""

import hashlib
import importlib.metadata
import json
import math
import os
import pathlib
import uuid
import zipfile

from absl import logging
import numpy as np

from odyssey.data import default_cache_dir

LOWEST_NOTE = 21  # MIDI A0, column 0 of a piano roll
NUM_KEYS = 88  # A0..C8, MIDI 21..108
SPLITS = ("train", "valid", "test")

# Bump whenever the recipe below changes what is built: a cache with another version is rebuilt, and a study
# begun on another version's chorales is not resumed on these (`odyssey.search.study_identity`).
# 2: one file per score, near-copies dropped, the tonic from the key signature and the final bass.
RECIPE_VERSION = 2
# The benchmark's split of 382 chorales (Allan & Williams 2005), kept as proportions.
_BENCHMARK_SIZES = (229, 76, 77)
# In order of preference, where the corpus has a score in several formats (BWV 277, 281 and 366 in .mxl and .krn).
_SCORE_SUFFIXES = (".mxl", ".xml", ".krn")
# A roll with at least this share of its steps equal to those of a roll kept before it (of the same length) is
# a copy of that chorale: the benchmark's file has no two chorales past 75 %; the corpus's copies (one
# harmonisation in two cantatas, or in two formats) differ in a step or two.
_COPY_SHARE = 0.9
_LOG_EVERY = 50


def build_music21(cache_dir=None, seed=0):
    """JSB-style chorales from music21's Bach corpus, built once and then read from a cache.

    The recipe follows Boulanger-Lewandowski et al. (2012) as closely as music21's corpus allows:

    * every Bach score of the corpus (MusicXML or Humdrum, not the roman-numeral analyses; of a
      score in both, the MusicXML) with exactly four parts (SATB); scores with instruments or a
      fifth voice are left out;
    * repeats expanded (music21's repeat expander); a score whose repeats music21 calls badly
      formed is left out;
    * transposed to C major or C minor: the tonic is that of the two keys the score's first key
      signature names (its major key and the relative minor) on which the final chord's lowest
      note lies, else (a modal signature, a chorale that ends elsewhere) that of music21's
      ``analyze("key")``, which confuses relative keys in ~4 % of the chorales; the shift is the
      one of -5..+6 semitones that takes the tonic to C; then up
      an octave, the register of the benchmark's file (its notes sit an octave above the written
      pitch, in MIDI 43..96; so do these, in the same columns 22..75);
    * one time step per quarter note: step t holds every pitch sounding at offset t quarters
      (onset at or before t, end after t), so a held note repeats and grace notes never sound;
      steps of silence inside a chorale are kept, silence before the first and after the last
      note is trimmed;
    * a score whose roll is a copy of one already kept (the same harmonisation in two places: as
      long, and at least 90 % of its steps equal) is dropped;
    * the chorales, ranked by the SHA-256 hex digest of "<seed>:<corpus path>", go to train,
      valid and test in that order, in the benchmark's proportions 229/76/77 of 382 rounded half
      up (``split_sizes``); each split is sorted by corpus path.

    With music21 10.5 this yields 359 chorales: 215/71/73 for seed 0 (of the corpus's 410 scores,
    one file each, 365 have four parts; 6 copy another's roll), 22 461 steps.
    The first build parses every score (about 25 s on 2 cores, up to a minute on a busy machine) and logs
    progress; later calls read ``<cache_dir>/chorales_seed<seed>.npz`` in well under a second.
    The cache also records the recipe version and music21's version, and is rebuilt when either
    differs.

    Args:
        cache_dir: folder for the cache; default ``odyssey.data.default_cache_dir("jsb_music21")``.
        seed: int, the seed of the split.

    Returns:
        dict with keys "train", "valid", "test", each a list of float32[T, 88] piano rolls
        (column = MIDI note - 21, 1.0 where the note sounds).
    """
    rolls, _ = _load_or_build(cache_dir, seed)
    return rolls


def chorale_names(cache_dir=None, seed=0):
    """The corpus path of each chorale that ``build_music21`` returns, in the same order.

    Args:
        cache_dir: as for ``build_music21``.
        seed: as for ``build_music21``.

    Returns:
        dict with keys "train", "valid", "test", each a list of str such as "bach/bwv10.7.mxl".
    """
    _, names = _load_or_build(cache_dir, seed)
    return names


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _cache_paths(cache_dir, seed):
    folder = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir("jsb_music21")
    stem = folder / f"chorales_seed{seed}"
    return folder, stem.with_suffix(".npz"), stem.with_suffix(".json")


def _recipe(seed):
    # The installed version, read without importing music21 (seconds), so a cache hit stays fast.
    try:
        version = importlib.metadata.version("music21")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError("the JSB Chorales stand-in is built from music21's corpus: pip install music21") from None
    return {"recipe": RECIPE_VERSION, "music21": version, "seed": seed}


def _load_or_build(cache_dir, seed):
    seed = _check_seed(seed)
    folder, npz_path, json_path = _cache_paths(cache_dir, seed)
    recipe = _recipe(seed)
    cached = _read_cache(npz_path, json_path, recipe)
    if cached is not None:
        return cached
    logging.info("JSB music21 build: no valid cache at %s, building (slow, once)", npz_path)
    rolls, names = _build(seed)
    folder.mkdir(parents=True, exist_ok=True)
    _write_cache(npz_path, json_path, recipe, rolls, names)
    logging.info("JSB music21 build: cached at %s", npz_path)
    return rolls, names


def _read_cache(npz_path, json_path, recipe):
    """The cached (rolls, names), or None when absent, stale or unreadable (then it is rebuilt)."""
    try:
        with open(json_path, encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    if stored != recipe:
        logging.info("JSB music21 cache %s was built by %s, not %s: rebuilding", json_path, stored, recipe)
        return None
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            if json.loads(str(data["recipe"])) != recipe:
                return None
            rolls, names = {}, {}
            for split in SPLITS:
                steps = data[f"{split}_steps"]
                bounds = np.cumsum(data[f"{split}_lengths"])[:-1]
                rolls[split] = [r.astype(np.float32) for r in np.split(steps, bounds)]
                names[split] = [str(n) for n in data[f"{split}_names"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        logging.warning("JSB music21 cache %s is unreadable (%s): rebuilding", npz_path, e)
        return None
    return rolls, names


def _atomic_write(path, write):
    """Calls write(file) on a temporary file beside path, then renames it over path."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    # os.open with 0o666 honours the umask (mkstemp would leave the cache readable by its owner only).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_cache(npz_path, json_path, recipe, rolls, names):
    # The .npz goes first and carries the recipe too, so a kill between the two renames leaves a
    # cache that is rebuilt, never a .json that vouches for the wrong arrays.
    arrays = {"recipe": np.array(json.dumps(recipe))}
    for split in SPLITS:
        arrays[f"{split}_steps"] = np.concatenate(rolls[split]).astype(np.uint8)
        arrays[f"{split}_lengths"] = np.array([len(r) for r in rolls[split]], dtype=np.int64)
        arrays[f"{split}_names"] = np.array(names[split], dtype=str)
    _atomic_write(npz_path, lambda f: np.savez(f, **arrays))
    _atomic_write(json_path, lambda f: f.write(json.dumps(recipe).encode("utf-8")))


def _corpus_paths():
    """The corpus's Bach scores as (name such as "bach/bwv10.7.mxl", absolute path), sorted by name: one file
    per score, the first format of `_SCORE_SUFFIXES` the corpus has it in."""
    from music21 import corpus  # pylint: disable=import-outside-toplevel

    best = {}
    for path in map(pathlib.Path, corpus.getComposer("bach")):
        if path.suffix in _SCORE_SUFFIXES:
            score = path.name[:-len(path.suffix)]
            if score not in best or _SCORE_SUFFIXES.index(path.suffix) < _SCORE_SUFFIXES.index(best[score].suffix):
                best[score] = path
    return sorted((f"bach/{p.name}", p) for p in best.values())


def _copy_of(roll, kept):
    """Whether `roll` is a copy of a roll in `kept` (lists of rolls by shape): as long, and at least
    `_COPY_SHARE` of its steps equal."""
    return any(np.mean(np.all(roll == other, axis=1)) >= _COPY_SHARE for other in kept.get(roll.shape, ()))


def _build(seed, paths=None):
    """Parses the corpus (or paths, a subset of ``_corpus_paths()``) into (rolls, names) split by seed."""
    rolls, names, skipped = [], [], {"parts": 0, "repeats": 0, "empty": 0, "duplicate": 0}
    kept = {}  # shape -> the rolls kept
    paths = _corpus_paths() if paths is None else paths
    for i, (name, path) in enumerate(paths):
        if i % _LOG_EVERY == 0:
            logging.info("JSB music21 build: score %d of %d (%s), %d chorales kept", i + 1, len(paths), name, len(rolls))
        try:
            roll, reason = _chorale_roll(path)
        except Exception as e:  # pylint: disable=broad-except
            raise RuntimeError(f"JSB music21 build: could not turn {path} into a piano roll: {e}") from e
        if roll is None:
            skipped[reason] += 1
            continue
        if _copy_of(roll, kept):
            skipped["duplicate"] += 1
            continue
        kept.setdefault(roll.shape, []).append(roll)
        rolls.append(roll)
        names.append(name)
    logging.info(
        "JSB music21 build: %d chorales from %d scores (left out: %d not four parts, %d badly formed"
        " repeats, %d without notes, %d duplicates)", len(rolls), len(paths), skipped["parts"], skipped["repeats"],
        skipped["empty"], skipped["duplicate"])
    return _split(rolls, names, seed)


def split_sizes(n):
    """Split sizes for n chorales in the benchmark's proportions 229/76/77 of 382, rounded half up.

    Args:
        n: int, number of chorales.

    Returns:
        (train, valid, test) ints that sum to n.
    """
    total = sum(_BENCHMARK_SIZES)
    train = (2 * n * _BENCHMARK_SIZES[0] + total) // (2 * total)
    valid = (2 * n * _BENCHMARK_SIZES[1] + total) // (2 * total)
    return train, valid, n - train - valid


def _split(rolls, names, seed):
    # Ranking by a hash, not a numpy permutation, keeps the split the same under every numpy.
    rank = sorted(range(len(rolls)), key=lambda j: hashlib.sha256(f"{seed}:{names[j]}".encode()).hexdigest())
    out_rolls, out_names = {}, {}
    start = 0
    for split, size in zip(SPLITS, split_sizes(len(rolls))):
        picked = sorted(rank[start:start + size], key=lambda j: names[j])
        start += size
        out_rolls[split] = [rolls[j].astype(np.float32) for j in picked]
        out_names[split] = [names[j] for j in picked]
    return out_rolls, out_names


def _shift_to_c(tonic_pitch_class):
    """Semitones in -5..+6 that take a tonic's pitch class to C."""
    return (5 - tonic_pitch_class) % 12 - 5


# The benchmark's rolls sit an octave above the written pitch; the stand-in keeps its register.
_BENCHMARK_OCTAVE = 12


def _chorale_roll(path):
    """(uint8[T, 88] roll, None) for a four-part score, else (None, why it was left out)."""
    from music21 import converter, repeat  # pylint: disable=import-outside-toplevel

    # Parsing from source (no music21 pickle cache) keeps the build independent of earlier runs.
    score = converter.parse(path, forceSource=True, storePickle=False)
    parts = list(score.parts)
    if len(parts) != 4:
        return None, "parts"
    shift = _shift_to_c(_tonic_pitch_class(score)) + _BENCHMARK_OCTAVE
    expandable = repeat.Expander(parts[0]).isExpandable()
    if expandable is False:
        logging.warning("JSB music21 build: %s has badly formed repeats, left out", path.name)
        return None, "repeats"
    order = None if expandable is None else _measure_order(parts)
    if expandable is not None and order is None:
        parts, order = list(score.expandRepeats().parts), None
    events = []
    for part in parts:
        events.extend(_part_events(part, order))
    if not any(end > start for start, end, _ in events):
        return None, "empty"
    return _events_to_roll(events, shift), None


def _tonic_pitch_class(score):
    """Pitch class of the score's tonic: of the major key its first key signature names and the relative
    minor, the one whose tonic the lowest note of the final chord has; else that of music21's
    ``score.analyze("key")`` (a modal signature, as a minor chorale written a flat short, or a chorale
    that ends off its tonic).

    The analyser is called without the 23 alternative Key objects analyze builds: they cost a fifth of
    the whole build.
    """
    from music21 import key  # pylint: disable=import-outside-toplevel
    from music21.analysis import discrete  # pylint: disable=import-outside-toplevel

    signature = next(iter(score.recurse().getElementsByClass(key.KeySignature)), None)
    # Each part's last note, with its end in quarters from the score's start (the parts start together).
    finals = []
    for part in score.parts:
        notes = part.flatten().notes
        if notes:
            finals.append((notes[-1].offset + notes[-1].quarterLength, notes[-1]))
    if signature is not None and finals:
        end = max(e for e, _ in finals)
        bass = min(p.midi for e, n in finals if e == end for p in n.pitches) % 12
        major = (7 * signature.sharps) % 12
        for tonic in (major, (major + 9) % 12):
            if bass == tonic:
                return tonic
    (tonic, _, _), _ = discrete.analysisClassFromMethodName("key")().process(score)
    return tonic.pitchClass


def _measure_order(parts):
    """Index of the written measure at each place of the expanded first part, or None.

    Expanding one part and applying its order to all four is four times faster than music21's
    Score.expandRepeats, and the same when the parts share their barlines (None when they do not
    even have as many measures). The origin of each expanded measure is followed back through
    music21's derivation chain: its measure numbers cannot tell a copy "4a" from a written "4a".
    """
    from music21 import repeat, stream  # pylint: disable=import-outside-toplevel

    counts = {len(part.getElementsByClass(stream.Measure)) for part in parts}
    if len(counts) != 1:
        return None
    written = {id(m): i for i, m in enumerate(parts[0].getElementsByClass(stream.Measure))}
    order = []
    for measure in repeat.Expander(parts[0]).process().getElementsByClass(stream.Measure):
        origin = measure
        while origin is not None and id(origin) not in written:
            origin = origin.derivation.origin
        if origin is None:
            return None
        order.append(written[id(origin)])
    return order


def _part_events(part, measure_map):
    """(start, end, midi) of each pitch of a part, with its measures played in measure_map's order.

    measure_map lists the index of the written measure at each place of the expanded part (see
    _measure_order); None plays the measures as written.
    """
    from music21 import stream  # pylint: disable=import-outside-toplevel

    measures = list(part.getElementsByClass(stream.Measure))
    starts = [m.offset for m in measures]
    ends = starts[1:] + [starts[-1] + measures[-1].duration.quarterLength]
    order = list(range(len(measures))) if measure_map is None else measure_map
    new_starts = {}
    at = 0
    for index in order:
        new_starts.setdefault(index, []).append(at)
        at += ends[index] - starts[index]
    events = []
    index = 0
    for note in part.flatten().notes:
        while index + 1 < len(measures) and note.offset >= starts[index + 1]:
            index += 1
        within = note.offset - starts[index]
        for start in new_starts.get(index, ()):
            for pitch in note.pitches:
                events.append((start + within, start + within + note.quarterLength, pitch.midi))
    return events


def _events_to_roll(events, shift):
    """uint8[T, 88]: step t is on for each (start, end, midi) with start <= t < end, midi shifted."""
    length = max(math.ceil(end) for _, end, _ in events)
    low, high = min(m for _, _, m in events) + shift, max(m for _, _, m in events) + shift
    if low < LOWEST_NOTE or high >= LOWEST_NOTE + NUM_KEYS:
        raise ValueError(f"transposed notes {low}..{high} leave the piano range 21..108")
    roll = np.zeros((length, NUM_KEYS), dtype=np.uint8)
    for start, end, midi in events:
        roll[math.ceil(start):math.ceil(end), midi + shift - LOWEST_NOTE] = 1
    sounding = np.flatnonzero(roll.any(axis=1))
    return roll[sounding[0]:sounding[-1] + 1]
