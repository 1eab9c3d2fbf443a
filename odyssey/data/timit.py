"""Reader of the LDC TIMIT corpus: the paper's splits, 39 MFCC features and framewise labels over 61 phones."""

import pathlib
import wave

from absl import logging
import numpy as np

from odyssey.data import mfcc
from odyssey.data import timit_splits

# The 61 phone labels of TIMIT's .PHN files (the corpus documentation's PHONCODE.DOC), sorted; label k is
# PHONES[k].
PHONES = (
    "aa", "ae", "ah", "ao", "aw", "ax", "ax-h", "axr", "ay", "b", "bcl", "ch", "d", "dcl", "dh", "dx",
    "eh", "el", "em", "en", "eng", "epi", "er", "ey", "f", "g", "gcl", "h#", "hh", "hv", "ih", "ix",
    "iy", "jh", "k", "kcl", "l", "m", "n", "ng", "nx", "ow", "oy", "p", "pau", "pcl", "q", "r", "s",
    "sh", "t", "tcl", "th", "uh", "uw", "ux", "v", "w", "y", "z", "zh",
)
PHONE_INDEX = {p: k for k, p in enumerate(PHONES)}
SAMPLE_RATE = 16000


def _sphere(path: pathlib.Path, data: bytes) -> tuple[np.ndarray, int]:
    """Samples and rate of a NIST SPHERE file with 16-bit PCM, one channel."""
    if not data.startswith(b"NIST_1A"):
        raise ValueError(f"{path}: not a NIST SPHERE file (no 'NIST_1A' magic)")
    lines = data[:4096].split(b"\n")
    try:
        header_size = int(lines[1])
    except (IndexError, ValueError):
        raise ValueError(f"{path}: broken SPHERE header: the second line must be the header size") from None
    if header_size < 16 or header_size > len(data):
        raise ValueError(f"{path}: broken SPHERE header: header size {header_size}, file has {len(data)} bytes")
    fields = {}
    for raw in data[:header_size].split(b"\n")[2:]:
        line = raw.decode("ascii", errors="replace").strip()
        if line == "end_head":
            break
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[1].startswith("-"):
            kind, value = parts[1], parts[2]
            try:
                fields[parts[0]] = int(value) if kind == "-i" else float(value) if kind == "-r" else value
            except ValueError:
                raise ValueError(f"{path}: broken SPHERE header field {line!r}") from None
    else:
        raise ValueError(f"{path}: broken SPHERE header: no 'end_head' within {header_size} bytes")
    coding = str(fields.get("sample_coding", "pcm"))
    if coding != "pcm":
        raise ValueError(f"{path}: SPHERE sample_coding {coding!r} is not supported (only uncompressed pcm); "
                         "decompress the corpus first (e.g. with NIST's sph2pipe)")
    for name, want in (("sample_n_bytes", 2), ("channel_count", 1)):
        if fields.get(name, want) != want:
            raise ValueError(f"{path}: SPHERE {name} is {fields[name]}, expected {want}")
    if "sample_rate" not in fields:
        raise ValueError(f"{path}: broken SPHERE header: no sample_rate")
    order = str(fields.get("sample_byte_format", "01"))
    if order not in ("01", "10"):
        raise ValueError(f"{path}: SPHERE sample_byte_format {order!r} is not '01' or '10'")
    body = data[header_size:]
    count = fields.get("sample_count", len(body) // 2)
    if len(body) < 2 * count:
        raise ValueError(f"{path}: truncated: header says {count} samples, file holds {len(body) // 2}")
    samples = np.frombuffer(body[:2 * count], dtype="<i2" if order == "01" else ">i2")
    return samples.astype(np.int16), int(fields["sample_rate"])


def _riff(path: pathlib.Path) -> tuple[np.ndarray, int]:
    try:
        with wave.open(str(path), "rb") as f:
            if f.getnchannels() != 1 or f.getsampwidth() != 2:
                raise ValueError(f"{path}: RIFF wave must be 16-bit mono, got {f.getnchannels()} channels of "
                                 f"{8 * f.getsampwidth()} bits")
            count = f.getnframes()
            frames = f.readframes(count)
            rate = f.getframerate()
    except (wave.Error, EOFError) as e:
        raise ValueError(f"{path}: broken RIFF wave: {e}") from None
    if len(frames) < 2 * count:
        raise ValueError(f"{path}: truncated: header says {count} samples, file holds {len(frames) // 2}")
    return np.frombuffer(frames, dtype="<i2").astype(np.int16), rate


def read_audio(path) -> tuple[np.ndarray, int]:
    """Reads a TIMIT audio file: NIST SPHERE (as distributed) or RIFF wave (as some copies add).

    Args:
      path: the file; its format is told by its first bytes, not its name.

    Returns:
      (samples int16[N], sample rate in Hz).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: audio file not found")
    data = path.read_bytes()
    if data.startswith(b"RIFF"):
        return _riff(path)
    return _sphere(path, data)


def read_phn(path, num_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads a .PHN file: one `start end phone` line per segment, in samples.

    Args:
      path: the .PHN file.
      num_samples: length of the utterance's audio; no segment may end after it.

    Returns:
      (starts int64[S], ends int64[S], labels int32[S]) with labels indexing `PHONES`.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: phone file not found")
    starts, ends, labels = [], [], []
    for number, line in enumerate(path.read_text(encoding="ascii", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}, line {number}"
        if len(parts) != 3:
            raise ValueError(f"{where}: expected 'start end phone', got {line!r}")
        try:
            start, end = int(parts[0]), int(parts[1])
        except ValueError:
            raise ValueError(f"{where}: start and end must be integers, got {line!r}") from None
        if parts[2] not in PHONE_INDEX:
            raise ValueError(f"{where}: phone {parts[2]!r} is not one of TIMIT's 61 phones")
        if not 0 <= start < end:
            raise ValueError(f"{where}: segment [{start}, {end}) is empty or negative")
        if ends and start < ends[-1]:
            raise ValueError(f"{where}: segment starts at {start}, before the previous one ends at {ends[-1]}")
        if end > num_samples:
            raise ValueError(f"{where}: segment ends at sample {end}, but the audio has {num_samples} samples")
        starts.append(start)
        ends.append(end)
        labels.append(PHONE_INDEX[parts[2]])
    if not starts:
        raise ValueError(f"{path}: no phone segments")
    return np.array(starts, np.int64), np.array(ends, np.int64), np.array(labels, np.int32)


def frame_labels(starts: np.ndarray, labels: np.ndarray, count: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Labels each frame with the segment under its centre sample.

    Args:
      starts: int[S], increasing first samples of the segments.
      labels: int[S], their labels.
      count: the number of frames (`mfcc.num_frames`).
      sample_rate: in Hz.

    Returns:
      int32[count]. A centre in a gap between segments takes the segment before it; one before the
      first segment takes the first.
    """
    index = np.searchsorted(np.asarray(starts), mfcc.frame_centres(count, sample_rate), side="right") - 1
    return np.asarray(labels, np.int32)[np.maximum(index, 0)]


def _child_dir(parent: pathlib.Path, name: str) -> pathlib.Path | None:
    matches = sorted(p for p in parent.iterdir() if p.is_dir() and p.name.upper() == name)
    return matches[0] if matches else None


def _corpus_dirs(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The TRAIN and TEST folders, at the root or one level below (e.g. root/TIMIT/TRAIN)."""
    if not root.is_dir():
        raise FileNotFoundError(f"TIMIT root {root} is not a directory")
    for base in [root] + sorted(p for p in root.iterdir() if p.is_dir()):
        train, test = _child_dir(base, "TRAIN"), _child_dir(base, "TEST")
        if train and test:
            return train, test
    raise FileNotFoundError(f"TIMIT root {root}: no TRAIN and TEST folders in it or one level below")


def _speaker_utterances(speaker: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
    """(audio, .PHN) pairs of a speaker's SI and SX sentences; the SA sentences are dropped."""
    files = {}
    for p in sorted(speaker.iterdir()):
        if p.is_file():
            files.setdefault(p.name.upper(), p)
    phn = {name[:-4]: p for name, p in files.items() if name.endswith(".PHN")}
    audio = {}
    for suffix in (".WAV.WAV", ".WAV"):  # a RIFF copy 'SX1.WAV.wav' only where no 'SX1.WAV' is
        audio.update({name[:-len(suffix)]: p for name, p in files.items()
                      if name.endswith(suffix) and not name[:-len(suffix)].endswith(".WAV")})
    pairs = []
    for utt in sorted(set(phn) | set(audio)):
        if utt.startswith("SA"):
            continue
        if utt not in audio:
            raise FileNotFoundError(f"{speaker / (utt + '.WAV')}: audio file missing for {phn[utt]}")
        if utt not in phn:
            raise FileNotFoundError(f"{speaker / (utt + '.PHN')}: phone file missing for {audio[utt]}")
        pairs.append((audio[utt], phn[utt]))
    return pairs


def utterances(root) -> dict[str, list[tuple[pathlib.Path, pathlib.Path]]]:
    """The (audio, .PHN) files of each split of the paper.

    train: every TRAIN speaker's SI and SX sentences (3696 in the full corpus); valid: the TEST
    sentences of Halberstadt's 50 development speakers (400); test: those of the 24 core test
    speakers (192). The other 94 TEST speakers are not used. SA sentences are dropped everywhere.

    Args:
      root: the corpus folder holding TRAIN and TEST (any letter case), or its parent.

    Returns:
      {"train", "valid", "test"} -> pairs sorted by dialect region, speaker, sentence.
    """
    train_dir, test_dir = _corpus_dirs(pathlib.Path(root))
    splits = {"train": [], "valid": [], "test": []}
    for top, is_train in ((train_dir, True), (test_dir, False)):
        for region in sorted(p for p in top.iterdir() if p.is_dir()):
            for speaker in sorted(p for p in region.iterdir() if p.is_dir()):
                name = speaker.name.upper()
                if is_train:
                    split = "train"
                elif name in timit_splits.CORE_TEST_SPEAKERS:
                    split = "test"
                elif name in timit_splits.DEV_SPEAKERS:
                    split = "valid"
                else:
                    continue
                splits[split] += _speaker_utterances(speaker)
    return splits


def read_utterance(audio_path, phn_path) -> tuple[np.ndarray, np.ndarray]:
    """Features float32[T, 39] (not normalised) and frame labels int32[T] of one utterance."""
    samples, rate = read_audio(audio_path)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{audio_path}: sample rate {rate} Hz, TIMIT's is {SAMPLE_RATE} Hz")
    if samples.size == 0:
        raise ValueError(f"{audio_path}: no samples")
    starts, _, labels = read_phn(phn_path, samples.size)
    feats = mfcc.features(samples, rate)
    return feats, frame_labels(starts, labels, feats.shape[0], rate)


def load(root) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Reads the corpus into the paper's splits.

    Args:
      root: the TIMIT folder as distributed by the LDC (TRAIN/TEST, dialect regions, speakers,
        SPHERE .WAV or RIFF copies, .PHN), or its parent.

    Returns:
      {"train", "valid", "test"} -> list of (features float32[T, 39] normalised with the training
      split's mean and standard deviation, labels int32[T] indexing `PHONES`), in the order of
      `utterances`.
    """
    files = utterances(root)
    total = sum(len(v) for v in files.values())
    logging.info("TIMIT at %s: %d train, %d valid, %d test utterances", root, len(files["train"]),
                 len(files["valid"]), len(files["test"]))
    for split, expected in timit_splits.EXPECTED_SIZES.items():
        if len(files[split]) != expected:
            logging.warning("TIMIT %s split has %d utterances; the full corpus gives %d", split,
                            len(files[split]), expected)
    if not files["train"]:
        raise ValueError(f"TIMIT root {root}: no training utterances found")
    raw, done = {}, 0
    for split, pairs in files.items():
        raw[split] = []
        for audio_path, phn_path in pairs:
            raw[split].append(read_utterance(audio_path, phn_path))
            done += 1
            if done % 500 == 0 or done == total:
                logging.info("TIMIT: read %d/%d utterances", done, total)
    return mfcc.normalise(raw)
