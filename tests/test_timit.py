"""Tests of odyssey.data.timit on a miniature TIMIT tree written here."""

import math
import shutil
import wave

import numpy as np
import pytest

from odyssey.data import mfcc
from odyssey.data import timit


def _sphere_bytes(samples, byte_format="01", header_size=1024, drop=(), extra=()):
    lines = ["NIST_1A", f"   {header_size}", "database_id -s5 TIMIT", "utterance_id -s8 xxx_yyy",
             f"sample_count -i {samples.size}", "sample_rate -i 16000", "channel_count -i 1",
             "sample_n_bytes -i 2", f"sample_byte_format -s2 {byte_format}", "sample_sig_bits -i 16", *extra,
             "end_head"]
    header = "\n".join(line for line in lines if not any(line.startswith(d) for d in drop)) + "\n"
    header = header.encode("ascii").ljust(header_size, b" ")
    return header + samples.astype("<i2" if byte_format == "01" else ">i2").tobytes()


def _riff_bytes(path, samples):
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(samples.astype("<i2").tobytes())


def _utterance(rng, n, gap=False):
    """Samples int16[n] and segments [(start, end, phone)] tiling [0, n) (with one gap if asked)."""
    samples = rng.integers(-3000, 3000, n).astype(np.int16)
    cuts = np.sort(rng.choice(np.arange(200, n - 200), size=12, replace=False))
    bounds = [0, *cuts.tolist(), n]
    phones = ["h#"] + [timit.PHONES[k] for k in rng.integers(len(timit.PHONES), size=len(bounds) - 3)] + ["h#"]
    segments = [(bounds[k], bounds[k + 1], phones[k]) for k in range(len(bounds) - 1)]
    if gap:  # shorten one segment so that a stretch of samples belongs to none
        s, e, p = segments[5]
        segments[5] = (s, s + (e - s) // 3, p)
    return samples, segments


# (folder under the root, sentence, audio files, sphere byte order, split or None when dropped)
_LAYOUT = [
    ("TRAIN/DR1/FCJF0", "SA1", ("SA1.WAV",), "01", None),
    ("TRAIN/DR1/FCJF0", "SI1027", ("SI1027.WAV",), "01", "train"),
    ("TRAIN/DR1/FCJF0", "SX37", ("SX37.WAV",), "01", "train"),
    ("TRAIN/DR2/mkls0", "sx87", ("sx87.wav",), "01", "train"),  # a distribution with lower-case names
    ("TEST/DR1/FAKS0", "SA2", ("SA2.WAV",), "01", None),  # development speaker
    ("TEST/DR1/FAKS0", "SI943", ("SI943.WAV",), "10", "valid"),
    ("TEST/DR1/MDAB0", "SI1036", ("SI1036.WAV", "SI1036.WAV.wav"), "01", "test"),  # core test speaker
    ("TEST/DR1/MDAB0", "SX139", ("SX139.WAV.wav",), None, "test"),  # only a RIFF copy
    ("TEST/DR2/MABC0", "SI100", ("SI100.WAV",), "01", None),  # neither development nor core
]


@pytest.fixture()
def tree(tmp_path):
    """Writes the miniature corpus; returns (root, {split: [(samples, segments), ...] in reading order})."""
    rng = np.random.default_rng(0)
    root = tmp_path / "timit"
    expected = {"train": [], "valid": [], "test": []}
    for k, (folder, sentence, audio_names, order, split) in enumerate(_LAYOUT):
        samples, segments = _utterance(rng, 9000 + 1733 * k, gap=(k == 2))
        speaker = root / folder
        speaker.mkdir(parents=True, exist_ok=True)
        for name in audio_names:
            if name.endswith(".wav") and name.upper().endswith(".WAV.WAV") or order is None:
                _riff_bytes(speaker / name, samples)
            else:
                (speaker / name).write_bytes(_sphere_bytes(samples, order))
        phn = "".join(f"{s} {e} {p}\n" for s, e, p in segments)
        (speaker / (sentence + (".phn" if sentence.islower() else ".PHN"))).write_text(phn)
        (speaker / (sentence + ".TXT")).write_text("0 1000 Some text.\n")
        if split:
            expected[split].append((samples, segments))
    return root, expected


def _brute_force_labels(segments, n):
    """Frame k is labelled by the last segment starting at or before its centre sample 160 k + 200."""
    count = 1 if n <= 400 else 1 + math.ceil((n - 400) / 160)
    labels = []
    for k in range(count):
        centre = 160 * k + 200
        label = segments[0][2]
        for start, _, phone in segments:
            if start <= centre:
                label = phone
        labels.append(timit.PHONES.index(label))
    return np.array(labels)


def test_phones():
    assert len(timit.PHONES) == 61 == len(set(timit.PHONES))
    for p in ("h#", "pau", "epi", "ax-h", "eng", "bcl", "q", "ux", "nx"):
        assert timit.PHONES[timit.PHONE_INDEX[p]] == p


def test_utterances_split_by_speaker_and_drop_sa(tree):
    root, _ = tree
    files = timit.utterances(root)
    names = {split: [f"{a.parent.name}/{a.name}" for a, _ in pairs] for split, pairs in files.items()}
    assert names == {
        "train": ["FCJF0/SI1027.WAV", "FCJF0/SX37.WAV", "mkls0/sx87.wav"],
        "valid": ["FAKS0/SI943.WAV"],
        "test": ["MDAB0/SI1036.WAV", "MDAB0/SX139.WAV.wav"],
    }
    assert all(p.suffix.upper() == ".PHN" and p.stem.upper() == a.name.upper().split(".")[0]
               for pairs in files.values() for a, p in pairs)


def test_utterances_found_one_level_down(tree):
    root, _ = tree
    assert {k: len(v) for k, v in timit.utterances(root.parent).items()} == {"train": 3, "valid": 1, "test": 2}


def test_load_features_and_frame_labels(tree):
    root, expected = tree
    data = timit.load(root)
    assert {k: len(v) for k, v in data.items()} == {k: len(v) for k, v in expected.items()}
    raw = {split: [mfcc.features(s) for s, _ in items] for split, items in expected.items()}
    stacked = np.concatenate(raw["train"]).astype(np.float64)
    mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    for split, items in expected.items():
        for (feats, labels), (samples, segments), want in zip(data[split], items, raw[split]):
            assert feats.dtype == np.float32 and labels.dtype == np.int32
            assert feats.shape == (mfcc.num_frames(samples.size), 39)
            np.testing.assert_allclose(feats, (want - mean) / std, rtol=0, atol=1e-4)
            np.testing.assert_array_equal(labels, _brute_force_labels(segments, samples.size))
            # A frame whose centre lies inside a segment carries that segment's phone.
            centres = 160 * np.arange(labels.size) + 200
            for start, end, phone in segments:
                inside = (centres >= start) & (centres < end)
                assert np.all(labels[inside] == timit.PHONE_INDEX[phone])


def test_read_audio_formats_agree(tmp_path):
    samples = np.random.default_rng(1).integers(-32768, 32768, 1234).astype(np.int16)
    (tmp_path / "le.WAV").write_bytes(_sphere_bytes(samples, "01"))
    (tmp_path / "be.WAV").write_bytes(_sphere_bytes(samples, "10"))
    _riff_bytes(tmp_path / "riff.wav", samples)
    for name in ("le.WAV", "be.WAV", "riff.wav"):
        got, rate = timit.read_audio(tmp_path / name)
        assert rate == 16000
        np.testing.assert_array_equal(got, samples)


def _damage_header(path, old, new):
    data = path.read_bytes()
    header, body = data[:1024], data[1024:]
    assert old in header
    path.write_bytes(header.replace(old, new, 1).ljust(1024, b" ")[:1024] + body)


def _damage_phn(path, line_from, line_to):
    path.write_text(path.read_text().replace(line_from, line_to, 1))


_SX37 = "TRAIN/DR1/FCJF0/SX37"


def _first_phn_line(root, n=0):
    return (root / f"{_SX37}.PHN").read_text().splitlines()[n] + "\n"


_DAMAGE = {
    "missing audio": (lambda r: (r / f"{_SX37}.WAV").unlink(), FileNotFoundError, "SX37.WAV"),
    "missing phones": (lambda r: (r / f"{_SX37}.PHN").unlink(), FileNotFoundError, "SX37.PHN"),
    "not sphere": (lambda r: (r / f"{_SX37}.WAV").write_bytes(b"GARBAGE" * 300), ValueError, "SX37.WAV.*NIST"),
    "header size": (lambda r: _damage_header(r / f"{_SX37}.WAV", b"   1024\n", b"   1o24\n"), ValueError,
                    "SX37.WAV.*header size"),
    "no end_head": (lambda r: _damage_header(r / f"{_SX37}.WAV", b"end_head", b"        "), ValueError,
                    "SX37.WAV.*end_head"),
    "compressed": (lambda r: _damage_header(r / f"{_SX37}.WAV", b"sample_sig_bits -i 16",
                                            b"sample_coding -s26 pcm,embedded-shorten-v2.00"), ValueError,
                   "SX37.WAV.*shorten"),
    "two bytes": (lambda r: _damage_header(r / f"{_SX37}.WAV", b"sample_n_bytes -i 2", b"sample_n_bytes -i 4"),
                  ValueError, "SX37.WAV.*sample_n_bytes"),
    "truncated": (lambda r: (r / f"{_SX37}.WAV").write_bytes((r / f"{_SX37}.WAV").read_bytes()[:3000]),
                  ValueError, "SX37.WAV.*truncated"),
    "unknown phone": (lambda r: _damage_phn(r / f"{_SX37}.PHN", " h#\n", " xx\n"), ValueError,
                      "SX37.PHN.*'xx'"),
    "overlap": (lambda r: _damage_phn(r / f"{_SX37}.PHN", _first_phn_line(r, 1),
                                      "150 " + _first_phn_line(r, 1).split(" ", 1)[1]), ValueError,
                "SX37.PHN, line 2.*before the previous"),
    "past the audio": (lambda r: _damage_phn(r / f"{_SX37}.PHN", _first_phn_line(r, -1),
                                             _first_phn_line(r, -1).split()[0] + " 99999 h#\n"), ValueError,
                       "SX37.PHN.*99999"),
    "bad line": (lambda r: _damage_phn(r / f"{_SX37}.PHN", _first_phn_line(r, 3), "12 x\n"), ValueError,
                 "SX37.PHN, line 4"),
    "no TRAIN": (lambda r: shutil.rmtree(r / "TRAIN"), FileNotFoundError, "no TRAIN and TEST"),
}


@pytest.mark.parametrize("kind", sorted(_DAMAGE))
def test_damage_raises_naming_the_file(tree, kind):
    root, _ = tree
    damage, error, pattern = _DAMAGE[kind]
    damage(root)
    with pytest.raises(error, match=pattern):
        timit.load(root)


def test_sa_sentences_may_be_broken(tree):
    # SA sentences are never read, so their damage does not matter.
    root, _ = tree
    (root / "TRAIN/DR1/FCJF0/SA1.WAV").write_bytes(b"junk")
    assert len(timit.load(root)["train"]) == 3


def test_messages_name_the_full_path(tree):
    root, _ = tree
    (root / f"{_SX37}.WAV").unlink()
    with pytest.raises(FileNotFoundError) as info:
        timit.load(root)
    assert str(root / "TRAIN" / "DR1" / "FCJF0" / "SX37.WAV") in str(info.value)
