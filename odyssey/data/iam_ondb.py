"""IAM-OnDB reader: line stroke files and CSR transcriptions as the paper's four-feature CTC task."""

import collections
import os
import pathlib
import re
import xml.etree.ElementTree as ElementTree
from typing import Sequence

import numpy as np
from absl import logging

# Label k is ALPHABET[k - 1]; label 0 is the CTC blank.
# Lines per split as the paper used them (DESIGN §7): `load` warns when a copy of the corpus gives others.
EXPECTED_SIZES = {"train": 5355, "valid": 2956, "test": 3859}

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !\"#&'()*+,-./[]:;?"
_LABEL = {c: k + 1 for k, c in enumerate(ALPHABET)}

# The paper drops this board from every split.
REMOVED_FORMS = ("a08-551z",)

# Split -> the list files whose entries it takes; the paper joins both validation sets.
SPLIT_FILES = {
    "train": ("trainset.txt",),
    "valid": ("testset_v.txt", "testset_t.txt"),
    "test": ("testset_f.txt",),
}

_LINE_ID = re.compile(r"^(?P<form>.+)-(?P<number>\d+)$")
_PROGRESS_EVERY = 1000


def encode(text: str) -> np.ndarray:
    """The labels of a transcription.

    Args:
      text: characters of `ALPHABET`.

    Returns:
      int32[L], label k for `ALPHABET[k - 1]`.

    Raises:
      ValueError: if a character is outside the alphabet (all of them are listed).
    """
    bad = sorted({c for c in text if c not in _LABEL})
    if bad:
        raise ValueError(f"characters outside the 81-character alphabet: {bad} in {text!r}")
    return np.fromiter((_LABEL[c] for c in text), dtype=np.int32, count=len(text))


def decode(labels: Sequence[int]) -> str:
    """The text of labels in 1..81 (the inverse of `encode`); a 0 (blank) is an error."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > len(ALPHABET)):
        raise ValueError(f"labels must be in 1..{len(ALPHABET)}, got {labels.min()}..{labels.max()}")
    return "".join(ALPHABET[k - 1] for k in labels)


def line_features(strokes: Sequence[np.ndarray]) -> np.ndarray:
    """The four input features of one text line, every second point of each stroke kept.

    Each stroke keeps its points 0, 2, 4, ... (so its first point always survives); then, per kept
    point: the change in x and y from the previous kept point of the line (0 for the line's first
    point, the pen-up jump for a stroke's first point), the time since the stroke's first point, and
    1 at the last kept point of a stroke (the pen is lifted after it), else 0. Subsampling each stroke
    rather than the whole line keeps every pen lift in the features.

    Args:
      strokes: the pen-down strokes in writing order, each float[n, 3] of (x, y, time in seconds);
        empty strokes are ignored.

    Returns:
      float32[T, 4], not standardised; T is the number of kept points.

    Raises:
      ValueError: if a stroke is not [n, 3] or the line has no points.
    """
    arrays = []
    for k, stroke in enumerate(strokes):
        stroke = np.asarray(stroke, dtype=np.float64)
        if stroke.ndim != 2 or stroke.shape[1] != 3:
            raise ValueError(f"stroke {k} must be [n, 3] (x, y, time), got shape {stroke.shape}")
        if len(stroke):
            arrays.append(stroke)
    if not arrays:
        raise ValueError("a line needs at least one point")
    return features_of_points(np.concatenate(arrays), np.array([len(s) for s in arrays]))


def features_of_points(points: np.ndarray, stroke_lengths: np.ndarray) -> np.ndarray:
    """`line_features` of the strokes laid end to end: float64[N, 3] points, int[S] lengths >= 1."""
    lengths = np.asarray(stroke_lengths, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    # Point j of its stroke is kept when j is even.
    within = np.arange(len(points)) - np.repeat(starts, lengths)
    kept = points[within % 2 == 0]
    kept_lengths = (lengths + 1) // 2
    kept_starts = np.cumsum(kept_lengths) - kept_lengths
    features = np.zeros((len(kept), 4), dtype=np.float64)
    features[1:, :2] = np.diff(kept[:, :2], axis=0)
    features[:, 2] = kept[:, 2] - np.repeat(kept[kept_starts, 2], kept_lengths)
    features[kept_starts + kept_lengths - 1, 3] = 1.0
    return features.astype(np.float32)


def standardise(splits: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """Standardises every split's features with the mean and std of all training frames.

    Args:
      splits: dict `train`/`valid`/`test` -> list of (float32[T, 4] features, int32[L] labels).

    Returns:
      (the splits with standardised features, mean float32[4], std float32[4]); a feature that is
      constant over the training frames keeps std 1 so that it is only centred.

    Raises:
      ValueError: if the training split is empty.
    """
    if not splits.get("train"):
        raise ValueError("cannot standardise: the training split is empty")
    frames = np.concatenate([f for f, _ in splits["train"]]).astype(np.float64)
    mean = frames.mean(axis=0)
    std = frames.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    out = {name: [(((f - mean) / std).astype(np.float32), labels) for f, labels in items]
           for name, items in splits.items()}
    return out, mean.astype(np.float32), std.astype(np.float32)


def strokes_from_features(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> list[np.ndarray]:
    """The pen trajectory that standardised features describe (for drawing a line).

    Args:
      features: float32[T, 4] standardised features of one line.
      mean: float32[4], the training mean used to standardise them.
      std: float32[4], the training std.

    Returns:
      The strokes, each float64[n, 2] of (x, y) kept points, the line starting at (0, 0).
    """
    raw = np.asarray(features, dtype=np.float64) * std + mean
    xy = np.cumsum(raw[:, :2], axis=0)
    ends = np.flatnonzero(raw[:, 3] > 0.5) + 1
    return [s for s in np.split(xy, ends) if len(s)]


def read_strokes(path: os.PathLike) -> list[np.ndarray]:
    """The strokes of one `lineStrokes` file.

    Args:
      path: a `<form>-NN.xml` file: `Stroke` elements of `Point` elements with x, y and time.

    Returns:
      One float64[n, 3] array of (x, y, time) per stroke, in file order.

    Raises:
      ValueError: if the file is not well-formed XML or a point lacks a number for x, y or time.
    """
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as err:
        raise ValueError(f"{path}: broken stroke XML ({err})") from err
    strokes = []
    for k, stroke in enumerate(root.iter("Stroke")):
        points = []
        for point in stroke.iter("Point"):
            try:
                points.append((float(point.attrib["x"]), float(point.attrib["y"]), float(point.attrib["time"])))
            except (KeyError, ValueError) as err:
                raise ValueError(f"{path}: stroke {k} has a point without numeric x, y, time: "
                                 f"{point.attrib}") from err
        strokes.append(np.array(points, dtype=np.float64).reshape(-1, 3))
    return strokes


def read_transcriptions(path: os.PathLike) -> list[str]:
    """The non-empty lines of the `CSR:` section of an `ascii/.../<form>.txt` file, stripped.

    Raises:
      ValueError: if the file has no `CSR:` section.
    """
    text = pathlib.Path(path).read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    try:
        start = [line.strip() for line in lines].index("CSR:")
    except ValueError:
        raise ValueError(f"{path}: no 'CSR:' section") from None
    return [line.strip() for line in lines[start + 1:] if line.strip()]


def _find_split_file(root: pathlib.Path, name: str) -> pathlib.Path:
    candidates = [root / name] + sorted(root.glob(f"*/{name}"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"IAM-OnDB split list {name} not found in {root} or its subfolders")


def _index_files(folder: pathlib.Path, suffix: str) -> dict[str, pathlib.Path]:
    index = {}
    for path in sorted(folder.rglob(f"*{suffix}")):
        if path.stem in index:
            raise ValueError(f"{path.stem}{suffix} appears twice: {index[path.stem]} and {path}")
        index[path.stem] = path
    return index


def _split_line_ids(root, stroke_files, lines_of_form):
    """Split name -> the sorted line ids it takes, board a08-551z removed."""
    assigned, owner = {}, {}
    for split, names in SPLIT_FILES.items():
        ids = set()
        for name in names:
            path = _find_split_file(root, name)
            entries = [e.strip() for e in path.read_text().splitlines() if e.strip()]
            unmatched = []
            for entry in entries:
                if entry in lines_of_form:
                    ids.update(lines_of_form[entry])
                elif entry in stroke_files:
                    ids.add(entry)
                else:
                    unmatched.append(entry)
            if unmatched and len(unmatched) == len(entries):
                raise ValueError(f"{path}: none of its {len(entries)} entries has a stroke file under "
                                 f"{root / 'lineStrokes'} (e.g. {unmatched[0]!r}); is the root right?")
            if unmatched:
                logging.warning("%s: %d of %d entries have no stroke file, e.g. %r", path, len(unmatched),
                                len(entries), unmatched[0])
        removed = {i for i in ids if _LINE_ID.match(i).group("form") in REMOVED_FORMS}
        if removed:
            logging.info("%s: removed %d lines of %s", split, len(removed), ", ".join(REMOVED_FORMS))
        for line_id in ids - removed:
            if line_id in owner:
                raise ValueError(f"line {line_id} is listed in both {owner[line_id]} and {split}")
            owner[line_id] = split
        assigned[split] = sorted(ids - removed)
    return assigned


def load(root: os.PathLike) -> dict:
    """Reads IAM-OnDB as the paper did: 5355 / 2956 / 3859 lines, 4 features, 81 characters.

    Training is `trainset.txt`, validation `testset_v.txt` and `testset_t.txt` joined, test
    `testset_f.txt` (entries are form ids such as `a01-000u`, or line ids such as `a01-000u-01`);
    board a08-551z is removed. Line NN of a form is the NN-th non-empty line of the `CSR:` section
    of its transcription. Features are those of `line_features`, standardised with the training
    frames' mean and std. A line whose transcription has a character outside `ALPHABET` is skipped
    and reported (count and an example), never altered.

    Args:
      root: the database folder, holding `lineStrokes/`, `ascii/` and the four split lists (in it or
        in one of its subfolders).

    Returns:
      dict `train`/`valid`/`test` -> list of (float32[T, 4] standardised features, int32[L] labels),
      lines in sorted id order.

    Raises:
      FileNotFoundError: if a folder or split list is missing.
      ValueError: for a missing transcription, broken stroke XML, or inconsistent split lists.
    """
    root = pathlib.Path(root)
    for sub in ("lineStrokes", "ascii"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"IAM-OnDB folder {root / sub} not found (root given: {root})")
    stroke_files = {stem: path for stem, path in _index_files(root / "lineStrokes", ".xml").items()
                    if _LINE_ID.match(stem)}
    transcription_files = _index_files(root / "ascii", ".txt")
    lines_of_form = collections.defaultdict(list)
    for line_id in stroke_files:
        lines_of_form[_LINE_ID.match(line_id).group("form")].append(line_id)
    assigned = _split_line_ids(root, stroke_files, lines_of_form)

    transcriptions = {}
    splits = {}
    total = sum(len(ids) for ids in assigned.values())
    done = 0
    skipped, empty = [], []
    for split, ids in assigned.items():
        items = []
        for line_id in ids:
            match = _LINE_ID.match(line_id)
            form, number = match.group("form"), int(match.group("number"))
            if form not in transcriptions:
                if form not in transcription_files:
                    raise ValueError(f"missing transcription: no {form}.txt under {root / 'ascii'} "
                                     f"for line {line_id} ({stroke_files[line_id]})")
                transcriptions[form] = read_transcriptions(transcription_files[form])
            lines = transcriptions[form]
            if not 1 <= number <= len(lines):
                raise ValueError(f"missing transcription for line {line_id}: the CSR section of "
                                 f"{transcription_files[form]} has {len(lines)} lines")
            text = lines[number - 1]
            bad = sorted({c for c in text if c not in _LABEL})
            if bad:
                skipped.append((line_id, text, bad))
                continue
            strokes = read_strokes(stroke_files[line_id])
            if not any(len(s) for s in strokes):
                empty.append(line_id)
                continue
            items.append((line_features(strokes), encode(text)))
            done += 1
            if done % _PROGRESS_EVERY == 0:
                logging.info("IAM-OnDB: read %d of %d lines", done, total)
        splits[split] = items
    if skipped:
        line_id, text, bad = skipped[0]
        logging.warning("IAM-OnDB: skipped %d lines whose transcription has characters outside the "
                        "alphabet, e.g. %s %r has %s", len(skipped), line_id, text, bad)
    if empty:
        logging.warning("IAM-OnDB: skipped %d lines without points, e.g. %s", len(empty), empty[0])
    splits, _, _ = standardise(splits)
    logging.info("IAM-OnDB: %s lines", {name: len(items) for name, items in splits.items()})
    for name, expected in EXPECTED_SIZES.items():
        if len(splits[name]) != expected:
            logging.warning("IAM-OnDB %s split has %d lines; the paper's has %d", name, len(splits[name]), expected)
    return splits
