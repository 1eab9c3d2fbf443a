"""Offline stand-in for IAM-OnDB: text lines written as pen trajectories in Hershey single-stroke fonts."""

import dataclasses
import functools
import math
import os
import pathlib
import tempfile
import time
from typing import Optional

import numpy as np
import scipy.signal
from absl import logging
from HersheyFonts import HersheyFonts

from odyssey.data import default_cache_dir, iam_ondb, text

# Bump when anything changes what `build` returns for the same arguments; it names the cache file.
RECIPE_VERSION = 1
# The paper's IAM-OnDB line counts: training, validation (both sets), test.
DEFAULT_SIZES = (5355, 2956, 3859)
# Single-stroke faces of the Hershey-Fonts package: two upright (sans) and two script hands.
FONTS = ("futural", "rowmans", "cursive", "scripts")
SPLITS = ("train", "valid", "test")
# Line lengths in characters, drawn uniformly per line; IAM-OnDB lines hold about 25-45.
LINE_CHARS = (25, 45)
# Pen samples per second: all time features are multiples of 1 / SAMPLE_RATE.
SAMPLE_RATE = 100.0
# Lines a writer writes in a row (about one IAM-OnDB form), and lines per writer in a split.
_LINES_PER_FORM = 8
_LINES_PER_WRITER = 40
_BASELINE = 9.0  # Hershey y of the baseline; y grows downwards, the cap line is at -12.
_PROGRESS_EVERY = 1000


@dataclasses.dataclass(frozen=True)
class Writer:
    """One writer's hand; lengths are in Hershey font units (21 from baseline to cap line).

    Attributes:
      font: a name from `FONTS`.
      size: overall scale of the writing.
      width: horizontal stretch of every glyph.
      slant: shear of the writing in radians, positive leaning right.
      letter_gap: space added after every character.
      word_gap: multiple of the font's space width between words.
      speed: mean pen speed in font units per second.
      jitter: std of independent noise on every pen sample.
      wobble: std of slowly varying (AR(1)) noise on the pen position.
      drift: amplitude of the baseline's slow wave.
      drift_period: wavelength of that wave along the line.
      char_size_sd: relative std of one character's size.
      char_shift_sd: std of one character's vertical offset.
      char_turn_sd: std of one character's rotation in radians.
      tilt_sd: std of a whole line's rotation in radians.
    """

    font: str
    size: float
    width: float
    slant: float
    letter_gap: float
    word_gap: float
    speed: float
    jitter: float
    wobble: float
    drift: float
    drift_period: float
    char_size_sd: float
    char_shift_sd: float
    char_turn_sd: float
    tilt_sd: float


def sample_writer(rng: np.random.Generator) -> Writer:
    """A random writer: a font and the variation of its hand."""
    return Writer(
        font=FONTS[rng.integers(len(FONTS))],
        size=rng.uniform(0.8, 1.25),
        width=rng.uniform(0.85, 1.2),
        slant=float(np.clip(rng.normal(0.12, 0.15), -0.25, 0.5)),
        letter_gap=rng.uniform(-1.5, 3.0),
        word_gap=rng.uniform(0.6, 1.4),
        speed=rng.uniform(160.0, 280.0),
        jitter=rng.uniform(0.05, 0.3),
        wobble=rng.uniform(0.1, 0.6),
        drift=rng.uniform(0.0, 3.0),
        drift_period=rng.uniform(150.0, 600.0),
        char_size_sd=rng.uniform(0.02, 0.08),
        char_shift_sd=rng.uniform(0.2, 1.0),
        char_turn_sd=rng.uniform(0.0, 0.06),
        tilt_sd=0.02,
    )


# A writer without any variation: it writes the font exactly (used by the tests).
STEADY_WRITER = Writer(font="futural", size=1.0, width=1.0, slant=0.0, letter_gap=0.0, word_gap=1.0,
                       speed=250.0, jitter=0.0, wobble=0.0, drift=0.0, drift_period=1.0,
                       char_size_sd=0.0, char_shift_sd=0.0, char_turn_sd=0.0, tilt_sd=0.0)


@functools.lru_cache(maxsize=None)
def glyphs(font: str) -> dict:
    """The glyphs of a Hershey font for the characters of `iam_ondb.ALPHABET`.

    Args:
      font: a name from `FONTS` (any built-in font of the Hershey-Fonts package works).

    Returns:
      dict character -> (float64[n, 2] vertices with x measured from the glyph's left edge,
      int64[n] stroke index within the glyph, advance width).

    Raises:
      ValueError: if the font lacks a character of the alphabet.
    """
    face = HersheyFonts()
    face.load_default_font(font)
    table = face.all_glyphs
    out = {}
    for char in iam_ondb.ALPHABET:
        glyph = table.get(char)
        if glyph is None or (char != " " and not glyph.strokes):
            raise ValueError(f"Hershey font {font!r} has no glyph for {char!r}")
        strokes = [np.asarray(s, dtype=np.float64) for s in glyph.strokes if len(s)]
        vertices = np.concatenate(strokes) if strokes else np.zeros((0, 2))
        vertices[:, 0] -= glyph.left_offset
        ids = np.repeat(np.arange(len(strokes)), [len(s) for s in strokes])
        out[char] = (vertices, ids, float(glyph.char_width))
    return out


def _layout(line: str, writer: Writer, rng: np.random.Generator):
    """Glyph vertices placed along the line: (float64[n, 2] positions, int64[n] global stroke ids)."""
    table = glyphs(writer.font)
    n = len(line)
    size = 1.0 + writer.char_size_sd * rng.standard_normal(n)
    shift = writer.char_shift_sd * rng.standard_normal(n)
    turn = writer.char_turn_sd * rng.standard_normal(n)
    entries = [table[c] for c in line]
    width = np.array([e[2] for e in entries])
    is_space = np.array([c == " " for c in line])
    advance = np.where(is_space, width * writer.word_gap, width * size + writer.letter_gap)
    left = np.cumsum(advance) - advance
    drawn = np.flatnonzero(~is_space)
    vertices = np.concatenate([entries[k][0] for k in drawn])
    char = np.repeat(drawn, [len(entries[k][0]) for k in drawn])
    counts = np.array([entries[k][1][-1] + 1 for k in drawn])
    stroke = np.concatenate([entries[k][1] for k in drawn]) + np.repeat(
        np.cumsum(counts) - counts, [len(entries[k][0]) for k in drawn])
    # Each character is turned and scaled about its centre, then placed.
    centre_x = width[char] / 2
    dx, dy = vertices[:, 0] - centre_x, vertices[:, 1]
    cos, sin, grow = np.cos(turn[char]), np.sin(turn[char]), size[char]
    x = left[char] + grow * (cos * dx - sin * dy + centre_x)
    y = grow * (sin * dx + cos * dy) + shift[char]
    y = y + writer.drift * np.sin(2 * np.pi * x / writer.drift_period + rng.uniform(0, 2 * np.pi))
    x = writer.width * x + np.tan(writer.slant) * (_BASELINE - y)
    tilt = writer.tilt_sd * rng.standard_normal()
    x, y = np.cos(tilt) * x - np.sin(tilt) * y, np.sin(tilt) * x + np.cos(tilt) * y
    return writer.size * np.stack([x, y], axis=1), stroke


def _pen_samples(vertices, stroke, writer: Writer, rng: np.random.Generator):
    """Samples each stroke's polyline at the pen rate, slow at its ends as a real pen is.

    Returns:
      (float64[N, 3] points (x, y, seconds since the stroke began) of all strokes end to end,
      int64[S] points per stroke).
    """
    boundary = stroke[1:] != stroke[:-1]
    steps = np.linalg.norm(np.diff(vertices, axis=0), axis=1)
    # A unit jump between strokes keeps the arc length strictly increasing across them.
    arc = np.concatenate([[0.0], np.cumsum(np.where(boundary, 1.0, steps))])
    first = np.concatenate([[0], np.flatnonzero(boundary) + 1])
    last = np.concatenate([first[1:] - 1, [len(stroke) - 1]])
    start, length = arc[first], arc[last] - arc[first]
    speed = writer.speed * writer.size * np.exp(0.15 * rng.standard_normal(len(first)))
    count = np.maximum(2, np.ceil(length * SAMPLE_RATE / speed).astype(np.int64) + 1)
    index = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    u = index / np.repeat(count - 1, count)
    ease = rng.uniform(0.3, 0.8)
    # A blend of constant speed and the minimum-jerk profile 10u^3 - 15u^4 + 6u^5.
    progress = (1 - ease) * u + ease * u ** 3 * (10 - 15 * u + 6 * u ** 2)
    s = np.repeat(start, count) + np.repeat(length, count) * progress
    points = np.empty((len(s), 3))
    points[:, 0] = np.interp(s, arc, vertices[:, 0])
    points[:, 1] = np.interp(s, arc, vertices[:, 1])
    points[:, 2] = index / SAMPLE_RATE
    noise = writer.jitter * rng.standard_normal((len(s), 2))
    if writer.wobble > 0:
        rho = 0.9
        noise += scipy.signal.lfilter([writer.wobble * math.sqrt(1 - rho ** 2)], [1.0, -rho],
                                      rng.standard_normal((len(s), 2)), axis=0)
    points[:, :2] += writer.size * noise
    return points, count


def _write(line: str, writer: Writer, rng: np.random.Generator):
    if not line.strip():
        raise ValueError(f"a line needs a non-space character, got {line!r}")
    iam_ondb.encode(line)  # rejects characters outside the alphabet with a clear message
    vertices, stroke = _layout(line, writer, rng)
    return _pen_samples(vertices, stroke, writer, rng)


def write_line(line: str, writer: Writer, rng: np.random.Generator) -> list[np.ndarray]:
    """The pen trajectory of a writer writing one line.

    Args:
      line: text of `iam_ondb.ALPHABET` with at least one non-space character.
      writer: the hand (see `sample_writer`, `STEADY_WRITER`).
      rng: the source of the line's own variation.

    Returns:
      The pen-down strokes in writing order, each float64[n, 3] of (x, y, seconds since the stroke
      began), y growing downwards as on a tablet.
    """
    points, count = _write(line, writer, rng)
    return np.split(points, np.cumsum(count)[:-1])


def _sentences(seed: int, first_batch: int):
    """The rich sentences of `text.unique_sentences(·, seed)`, as many as are asked for."""
    done, batch = 0, max(first_batch, 64)
    while True:
        sentences = text.unique_sentences(batch, seed, rich=True)
        yield from sentences[done:]
        done, batch = batch, 2 * batch


def line_texts(seed: int = 0, sizes: tuple = DEFAULT_SIZES) -> dict:
    """The text lines of the corpus, cut from one stream of sentences per split.

    Each split takes the next sentences of the stream, so no sentence is in two splits; a line that
    happens to equal a line of an earlier split is left out, so no line is either. Lines are cut
    at spaces to a length drawn uniformly from `LINE_CHARS` (a word longer than that stands alone).

    Args:
      seed: seed of the sentences and of the line lengths.
      sizes: lines in train, valid, test.

    Returns:
      dict split -> list of `sizes[i]` strings.
    """
    rng = np.random.default_rng([seed, 1])
    stream = _sentences(seed, int(0.6 * sum(sizes)) + 64)
    seen, out = set(), {}
    for split, size in zip(SPLITS, sizes):
        lines, words = [], []
        split_lines = set()
        while len(lines) < size:
            target = rng.integers(LINE_CHARS[0], LINE_CHARS[1] + 1)
            line = ""
            while True:
                if not words:
                    words = next(stream).split(" ")
                candidate = f"{line} {words[0]}" if line else words[0]
                if line and len(candidate) > target:
                    break
                line = candidate
                words.pop(0)
            if line not in seen:
                lines.append(line)
                split_lines.add(line)
        seen |= split_lines
        out[split] = lines
    return out


def _generate(seed: int, sizes: tuple) -> dict:
    """Writes the corpus: dict of flat arrays ready for the cache file."""
    texts = line_texts(seed, sizes)
    arrays = {}
    started = time.perf_counter()
    done, total = 0, sum(sizes)
    for index, split in enumerate(SPLITS):
        # Writers are disjoint across splits, as in IAM-OnDB's writer-independent split.
        writer_rng = np.random.default_rng([seed, 2, index])
        writers = [sample_writer(writer_rng) for _ in range(max(1, -(-sizes[index] // _LINES_PER_WRITER)))]
        feats, labels, raw = [], [], []
        for k, line in enumerate(texts[split]):
            if k % _LINES_PER_FORM == 0:
                writer = writers[writer_rng.integers(len(writers))]
            points, count = _write(line, writer, np.random.default_rng([seed, 3, index, k]))
            raw.append(len(points))
            feats.append(iam_ondb.features_of_points(points, count))
            labels.append(iam_ondb.encode(line))
            done += 1
            if done % _PROGRESS_EVERY == 0:
                logging.info("handwriting stand-in: wrote %d of %d lines (%.0f s)", done, total,
                             time.perf_counter() - started)
        arrays[split] = (feats, labels, np.array(raw, dtype=np.int64))
    items = {split: list(zip(arrays[split][0], arrays[split][1])) for split in SPLITS}
    items, mean, std = iam_ondb.standardise(items)
    out = {"mean": mean, "std": std, "seconds": np.float64(time.perf_counter() - started)}
    for split in SPLITS:
        feats = [f for f, _ in items[split]]
        labels = [l for _, l in items[split]]
        out[f"{split}_features"] = np.concatenate(feats) if feats else np.zeros((0, 4), np.float32)
        out[f"{split}_frames"] = np.array([len(f) for f in feats], dtype=np.int64)
        out[f"{split}_labels"] = np.concatenate(labels) if labels else np.zeros((0,), np.int32)
        out[f"{split}_label_lengths"] = np.array([len(l) for l in labels], dtype=np.int64)
        out[f"{split}_raw_points"] = arrays[split][2]
    return out


def cache_path(cache_dir: Optional[os.PathLike] = None, seed: int = 0, sizes: tuple = DEFAULT_SIZES) -> pathlib.Path:
    """The cache file of one (recipe version, seed, sizes)."""
    folder = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir("iam_standin")
    return folder / f"v{RECIPE_VERSION}_seed{seed}_{'-'.join(str(s) for s in sizes)}.npz"


def _check_args(seed, sizes):
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if len(sizes) != 3 or any(not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
        raise ValueError(f"sizes must be three positive line counts (train, valid, test), got {sizes!r}")
    return int(seed), tuple(int(s) for s in sizes)


def _corpus(cache_dir, seed, sizes) -> dict:
    """The cached arrays, generating and caching them (atomically) when absent or unreadable."""
    seed, sizes = _check_args(seed, sizes)
    path = cache_path(cache_dir, seed, sizes)
    if path.exists():
        try:
            with np.load(path) as data:
                return {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError) as err:
            logging.warning("handwriting stand-in: cache %s unreadable (%s); writing it again", path, err)
    logging.info("handwriting stand-in: writing %s lines (seed %d) into %s", sizes, seed, path)
    arrays = _generate(seed, sizes)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    logging.info("handwriting stand-in: %d lines in %.1f s", sum(sizes), float(arrays["seconds"]))
    return arrays


def build(cache_dir: Optional[os.PathLike] = None, seed: int = 0, sizes: tuple = DEFAULT_SIZES) -> dict:
    """The stand-in corpus in the structure of `iam_ondb.load`.

    Args:
      cache_dir: where the corpus is cached, one file per (recipe version, seed, sizes); by default
        `default_cache_dir("iam_standin")`.
      seed: the one seed of the text, the writers and every pen sample.
      sizes: lines in train, valid, test (default: the paper's IAM-OnDB counts).

    Returns:
      dict `train`/`valid`/`test` -> list of (float32[T, 4] features standardised with the training
      statistics, int32[L] labels in 1..81).
    """
    arrays = _corpus(cache_dir, seed, sizes)
    out = {}
    for split in SPLITS:
        feats = np.split(arrays[f"{split}_features"], np.cumsum(arrays[f"{split}_frames"])[:-1])
        labels = np.split(arrays[f"{split}_labels"], np.cumsum(arrays[f"{split}_label_lengths"])[:-1])
        out[split] = list(zip(feats, labels))
    return out


def corpus_info(cache_dir: Optional[os.PathLike] = None, seed: int = 0, sizes: tuple = DEFAULT_SIZES) -> dict:
    """Facts about the corpus `build` returns for the same arguments (building it if needed).

    Returns:
      dict with `mean`, `std` (float32[4], the training statistics the features were standardised
      with), `raw_points` (dict split -> int64[lines], pen samples before subsampling), `frames`
      (dict split -> int64[lines], after), and `seconds` (the time it took to generate).
    """
    arrays = _corpus(cache_dir, seed, sizes)
    return {
        "mean": arrays["mean"],
        "std": arrays["std"],
        "raw_points": {s: arrays[f"{s}_raw_points"] for s in SPLITS},
        "frames": {s: arrays[f"{s}_frames"] for s in SPLITS},
        "seconds": float(arrays["seconds"]),
    }
