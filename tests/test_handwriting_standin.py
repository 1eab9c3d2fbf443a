"""Tests of the offline handwriting stand-in corpus."""

import dataclasses
import functools
import logging

import numpy as np
import pytest
from HersheyFonts import HersheyFonts

from odyssey.data import handwriting_standin as standin
from odyssey.data import iam_ondb

_SMALL = (24, 8, 8)


@functools.lru_cache(maxsize=None)
def _package_glyphs(font):
    face = HersheyFonts()
    face.load_default_font(font)
    return face.all_glyphs


def _package_strokes(font, char):
    """The glyph's strokes straight from the Hershey-Fonts package, x from the glyph's left edge."""
    glyph = _package_glyphs(font)[char]
    return [np.asarray(s, dtype=float) - [glyph.left_offset, 0] for s in glyph.strokes]


def _distance_to_polyline(points, polyline):
    """Distance of each point to the nearest segment of the polyline, by brute force."""
    a, b = polyline[:-1], polyline[1:]
    ab = b - a
    t = np.clip(np.einsum("psk,sk->ps", points[:, None, :] - a[None], ab) / np.maximum((ab ** 2).sum(1), 1e-300),
                0, 1)
    nearest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None, :] - nearest, axis=2).min(axis=1)


@pytest.mark.parametrize("font", standin.FONTS)
def test_every_font_covers_the_alphabet(font):
    table = standin.glyphs(font)
    assert set(table) == set(iam_ondb.ALPHABET)
    for char in iam_ondb.ALPHABET.replace(" ", ""):
        vertices, ids, _ = table[char]
        package = _package_strokes(font, char)
        assert ids.max() + 1 == len(package), char
        np.testing.assert_array_equal(vertices, np.concatenate(package))


@pytest.mark.parametrize("char", ["A", "g", "&", "?"])
def test_a_steady_writer_traces_the_font_exactly(char):
    strokes = standin.write_line(char, standin.STEADY_WRITER, np.random.default_rng(0))
    package = _package_strokes(standin.STEADY_WRITER.font, char)
    assert len(strokes) == len(package)
    for stroke, glyph_stroke in zip(strokes, package):
        np.testing.assert_allclose(stroke[[0, -1], :2], glyph_stroke[[0, -1]], atol=1e-9)
        assert _distance_to_polyline(stroke[:, :2], glyph_stroke).max() < 1e-9
        np.testing.assert_allclose(stroke[:, 2], np.arange(len(stroke)) / standin.SAMPLE_RATE, atol=1e-12)


def test_pen_speed_sets_the_sampling_density():
    line = "Speed test 123"
    slow = standin.write_line(line, standin.STEADY_WRITER, np.random.default_rng(5))
    fast_writer = dataclasses.replace(standin.STEADY_WRITER, speed=2 * standin.STEADY_WRITER.speed)
    fast = standin.write_line(line, fast_writer, np.random.default_rng(5))
    # Same path, half the samples give or take one per stroke (each stroke rounds up, keeps >= 2).
    steps = lambda strokes: sum(len(s) - 1 for s in strokes)  # noqa: E731
    assert len(slow) == len(fast)
    assert abs(steps(fast) - steps(slow) / 2) <= len(slow)
    length = sum(np.linalg.norm(np.diff(s[:, :2], axis=0), axis=1).sum() for s in slow)
    seconds = steps(slow) / standin.SAMPLE_RATE
    assert 0.6 < length / seconds / standin.STEADY_WRITER.speed < 1.2


def test_writers_vary_the_same_line():
    rng = np.random.default_rng(0)
    lines = [standin.write_line("same words", standin.sample_writer(rng), np.random.default_rng(k))
             for k in range(4)]
    extents = [np.ptp(np.concatenate(s)[:, 0]) for s in lines]
    assert len(set(np.round(extents, 3))) == 4


def test_line_texts_are_disjoint_cover_the_alphabet_and_have_iam_lengths():
    texts = standin.line_texts(seed=0)
    assert [len(texts[s]) for s in standin.SPLITS] == list(standin.DEFAULT_SIZES)
    train, valid, test = (set(texts[s]) for s in standin.SPLITS)
    assert not train & valid and not train & test and not valid & test
    every = [line for s in standin.SPLITS for line in texts[s]]
    assert set("".join(every)) == set(iam_ondb.ALPHABET)
    lengths = np.array([len(line) for line in every])
    assert lengths.max() <= standin.LINE_CHARS[1]
    assert 28 < lengths.mean() < 38
    assert all(line == line.strip() and "  " not in line for line in every)
    assert texts == standin.line_texts(seed=0)
    # A smaller corpus reads the same text from the start: quick configs see a prefix of it.
    assert standin.line_texts(seed=0, sizes=(50, 1, 1))["train"] == texts["train"][:50]
    assert texts["train"][:50] != standin.line_texts(seed=1, sizes=(50, 1, 1))["train"]


def test_build_returns_the_iam_structure_standardised_on_train(tmp_path):
    splits = standin.build(tmp_path, seed=0, sizes=_SMALL)
    texts = standin.line_texts(0, _SMALL)
    assert set(splits) == set(standin.SPLITS)
    for split, size in zip(standin.SPLITS, _SMALL):
        assert len(splits[split]) == size
        assert [iam_ondb.decode(labels) for _, labels in splits[split]] == texts[split]
        for features, labels in splits[split]:
            assert features.dtype == np.float32 and features.shape[1] == 4
            assert labels.dtype == np.int32 and 1 <= labels.min() and labels.max() <= 81
            assert len(features) >= 2 * len(labels)  # room for CTC's blanks between repeats
    train = np.concatenate([f for f, _ in splits["train"]]).astype(np.float64)
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-5)
    info = standin.corpus_info(tmp_path, seed=0, sizes=_SMALL)
    # The pen-lift feature takes the standardised values of 0 and 1 only.
    lifted = train[:, 3] * info["std"][3] + info["mean"][3]
    np.testing.assert_allclose(np.unique(np.round(lifted, 4)), [0.0, 1.0])
    for split in standin.SPLITS:
        frames = np.array([len(f) for f, _ in splits[split]])
        strokes = np.array([np.sum(f[:, 3] * info["std"][3] + info["mean"][3] > 0.5) for f, _ in splits[split]])
        np.testing.assert_array_equal(info["frames"][split], frames)
        # A stroke of n points keeps ceil(n / 2): n = 2 * kept or 2 * kept - 1.
        assert np.all(info["raw_points"][split] >= 2 * frames - strokes)
        assert np.all(info["raw_points"][split] <= 2 * frames)
        assert np.any(info["raw_points"][split] < 2 * frames)


def test_build_is_deterministic_and_read_back_from_the_cache(tmp_path, monkeypatch):
    first = standin.build(tmp_path, seed=3, sizes=_SMALL)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [standin.cache_path(tmp_path, 3, _SMALL).name]  # no temporary file left behind

    def _fail(*args):
        raise AssertionError("the cached corpus was generated again")

    monkeypatch.setattr(standin, "_generate", _fail)
    again = standin.build(tmp_path, seed=3, sizes=_SMALL)
    monkeypatch.undo()
    fresh = standin.build(tmp_path / "elsewhere", seed=3, sizes=_SMALL)
    other_seed = standin.build(tmp_path, seed=4, sizes=_SMALL)
    for split in standin.SPLITS:
        for (f1, l1), (f2, l2), (f3, l3) in zip(first[split], again[split], fresh[split]):
            np.testing.assert_array_equal(f1, f2)
            np.testing.assert_array_equal(f1, f3)
            np.testing.assert_array_equal(l1, l3)
    assert not np.array_equal(first["train"][0][0], other_seed["train"][0][0])
    assert standin.cache_path(tmp_path, 3, (24, 8, 9)) != standin.cache_path(tmp_path, 3, _SMALL)


def test_an_unreadable_cache_is_written_again(tmp_path, caplog):
    path = standin.cache_path(tmp_path, 0, _SMALL)
    path.write_bytes(b"not a numpy archive")
    with caplog.at_level(logging.WARNING):
        splits = standin.build(tmp_path, seed=0, sizes=_SMALL)
    assert "unreadable" in caplog.text
    reference = standin.build(tmp_path / "clean", seed=0, sizes=_SMALL)
    np.testing.assert_array_equal(splits["valid"][2][0], reference["valid"][2][0])


@pytest.mark.parametrize("seed, sizes", [(-1, _SMALL), (0, (5, 5)), (0, (5, 0, 5)), (0.5, _SMALL)])
def test_bad_arguments_are_errors(tmp_path, seed, sizes):
    with pytest.raises(ValueError, match="seed|sizes"):
        standin.build(tmp_path, seed=seed, sizes=sizes)


def test_a_line_outside_the_alphabet_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        standin.write_line("50 %", standin.STEADY_WRITER, np.random.default_rng(0))
    with pytest.raises(ValueError, match="non-space"):
        standin.write_line("   ", standin.STEADY_WRITER, np.random.default_rng(0))
