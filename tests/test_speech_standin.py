"""Tests of odyssey.data.speech_standin: phone timing against espeak's events and the audio, features, cache."""

import math

import numpy as np
import pytest

from odyssey.data import mfcc
from odyssey.data import text
from odyssey.data import timit

pytest.importorskip("espeakng_loader", reason="the stand-in speaks with the espeakng-loader package")
from odyssey.data import speech_standin  # pylint: disable=wrong-import-position

_SENTENCE = "The patient doctor carried a broken kettle past the bridge, but Greta quickly fixed it."


def _brute_force_labels(starts, labels, n):
    count = 1 if n <= 400 else 1 + math.ceil((n - 400) / 160)
    out = []
    for k in range(count):
        centre = 160 * k + 200
        out.append([lab for s, lab in zip(starts, labels) if s <= centre][-1])
    return np.array(out)


def test_speak_repeats_exactly():
    # espeak carries state from one synthesis to the next; each call must start afresh.
    first = speech_standin.speak(_SENTENCE, speech_standin.voice_for(0, 1))
    speech_standin.speak("A different sentence, spoken by another voice.", speech_standin.voice_for(0, 2))
    again = speech_standin.speak(_SENTENCE, speech_standin.voice_for(0, 1))
    assert first[0] == again[0] and first[2] == again[2]
    np.testing.assert_array_equal(first[1], again[1])


def test_table_targets_are_timit_phones():
    targets = {p for phones in speech_standin.ESPEAK_TO_TIMIT.values() for p in phones}
    targets |= set(speech_standin._CLOSURE.values()) | {"h#"}
    assert targets <= set(timit.PHONES)


def test_sentences_are_disjoint_slices_of_one_list():
    got = speech_standin.sentences(4, (30, 7, 5))
    assert [len(got[s]) for s in ("train", "valid", "test")] == [30, 7, 5]
    assert got["train"] + got["valid"] + got["test"] == text.unique_sentences(42, seed=4, rich=False)
    assert len(set(got["train"]) | set(got["valid"]) | set(got["test"])) == 42


def test_voices_vary_and_repeat():
    voices = [speech_standin.voice_for(0, i) for i in range(64)]
    assert voices == [speech_standin.voice_for(0, i) for i in range(64)]
    assert voices != [speech_standin.voice_for(1, i) for i in range(64)]
    assert len({v.variant for v in voices}) >= 8 and len({v.pitch for v in voices}) >= 20
    assert all(v.variant in speech_standin.VARIANTS and 0 <= v.pitch <= 100 and 80 <= v.rate <= 450 for v in voices)


@pytest.mark.parametrize("index", [0, 5])
def test_render_keeps_espeak_timing(index):
    voice = speech_standin.voice_for(0, index)
    rate, raw, events = speech_standin.speak(_SENTENCE, voice)
    audio, starts, labels = speech_standin.render(_SENTENCE, voice, np.random.default_rng(0))
    lead = round(voice.lead_s * 16000)
    ratio = 16000 / rate
    assert audio.size == lead + math.ceil(raw.size * ratio) + round(voice.tail_s * 16000)
    assert np.all(np.diff(starts) >= 0) and starts[0] == 0 and starts[-1] <= audio.size
    assert starts[1] >= lead and timit.PHONES[labels[0]] == "h#" and timit.PHONES[labels[-1]] == "h#"
    # Every espeak phoneme event starts a segment at its own sample, carried to 16 kHz.
    assert {lead + round(s * ratio) for _, s in events} <= set(starts.tolist())
    assert len(events) > 40


def test_closures_are_silent_and_vowels_loud():
    voice = speech_standin.voice_for(0, 2)
    audio, starts, labels = speech_standin.render(_SENTENCE, voice, np.random.default_rng(0))
    bounds = np.append(starts, audio.size)
    rms = {}
    for k, lab in enumerate(labels):
        seg = audio[bounds[k]:bounds[k + 1]]
        if seg.size >= 80:
            rms.setdefault(timit.PHONES[lab], []).append(np.sqrt(np.mean(seg ** 2)))
    closures = [r for p in ("pcl", "tcl", "kcl", "bcl", "dcl", "gcl") for r in rms.get(p, [])]
    vowels = [r for p in ("aa", "ae", "ah", "ao", "eh", "ih", "iy", "ow", "ax") for r in rms.get(p, [])]
    assert len(closures) >= 4 and len(vowels) >= 8
    # espeak's closures are digital silence: only the added noise (>= 30 dB down) and filter ringing remain.
    assert max(closures) < 0.1 * np.median(vowels)


def test_example_is_features_and_centre_labels_of_render():
    feats, labels = speech_standin.example(_SENTENCE, 3, 7)
    audio, starts, seg_labels = speech_standin.render(_SENTENCE, speech_standin.voice_for(3, 7),
                                                      np.random.default_rng([3, 7, 1]))
    np.testing.assert_array_equal(feats, mfcc.features(audio))
    np.testing.assert_array_equal(labels, _brute_force_labels(starts, seg_labels, audio.size))
    assert labels.dtype == np.int32 and feats.dtype == np.float32


def test_utterances_are_timit_length():
    # TIMIT's SI/SX utterances average about 304 frames; 24 stand-in utterances (std ~130 frames)
    # land within 100 of that.
    items = speech_standin.sentences(0, (24, 0, 0))["train"]
    frames = [speech_standin.example(s, 0, i)[1].size for i, s in enumerate(items)]
    assert abs(np.mean(frames) - 304) < 100


def test_build_normalises_caches_and_repeats(tmp_path, monkeypatch):
    data = speech_standin.build(tmp_path / "a", seed=0, sizes=(3, 1, 2), processes=1)
    assert [len(data[s]) for s in ("train", "valid", "test")] == [3, 1, 2]
    for items in data.values():
        for feats, labels in items:
            assert feats.dtype == np.float32 and labels.dtype == np.int32
            assert feats.shape == (labels.size, 39) and 0 <= labels.min() and labels.max() < 61
    train = np.concatenate([f for f, _ in data["train"]]).astype(np.float64)
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-4)
    # The raw features of utterance 3 (the first valid one), normalised with the train statistics.
    raw_train = [speech_standin.example(s, 0, i)[0] for i, s in
                 enumerate(speech_standin.sentences(0, (3, 1, 2))["train"])]
    stacked = np.concatenate(raw_train).astype(np.float64)
    valid_raw = speech_standin.example(speech_standin.sentences(0, (3, 1, 2))["valid"][0], 0, 3)[0]
    np.testing.assert_allclose(data["valid"][0][0], (valid_raw - stacked.mean(0)) / stacked.std(0), atol=1e-4)

    path = speech_standin.cache_path(tmp_path / "a", 0, (3, 1, 2))
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == [path.name]

    def _no_generation(*args):
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(speech_standin, "_generate", _no_generation)
    again = speech_standin.build(tmp_path / "a", seed=0, sizes=(3, 1, 2))
    for split in data:
        for (f1, y1), (f2, y2) in zip(data[split], again[split]):
            np.testing.assert_array_equal(f1, f2)
            np.testing.assert_array_equal(y1, y2)


def test_process_pool_gives_the_same_corpus(tmp_path):
    one = speech_standin.build(tmp_path / "one", seed=5, sizes=(2, 1, 1), processes=1)
    two = speech_standin.build(tmp_path / "two", seed=5, sizes=(2, 1, 1), processes=2)
    for split in one:
        for (f1, y1), (f2, y2) in zip(one[split], two[split], strict=True):
            np.testing.assert_array_equal(f1, f2)
            np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("kwargs", [{"sizes": (0, 1, 1)}, {"sizes": (3, 1)}, {"sizes": (3, -1, 1)},
                                    {"seed": -1}, {"seed": 1.5}])
def test_build_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        speech_standin.build(tmp_path, **kwargs)
