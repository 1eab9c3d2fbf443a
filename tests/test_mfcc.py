"""Tests of odyssey.data.mfcc against python_speech_features and hand-computed derivatives."""

import numpy as np
import pytest

from odyssey.data import mfcc

psf = pytest.importorskip("python_speech_features", reason="python_speech_features is the MFCC oracle (test extra)")


def _reference(signal, sample_rate=16000, nfft=512):
    """The same recipe through python_speech_features: 13 liftered cepstra with c0 -> log energy, + deltas."""
    static = psf.mfcc(signal, samplerate=sample_rate, winlen=0.025, winstep=0.01, numcep=13, nfilt=26, nfft=nfft,
                      lowfreq=0, highfreq=None, preemph=0.97, ceplifter=22, appendEnergy=True, winfunc=np.hamming)
    first = psf.delta(static, 2)
    return np.concatenate([static, first, psf.delta(first, 2)], axis=1)


def _speechlike(n, seed):
    """A voiced-like signal: harmonics of a wandering pitch under a slow envelope, plus noise, as int16."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000.0
    f0 = 120.0 + 30.0 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000.0
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.0 * t) ** 2
    return np.clip(3000 * envelope * voiced + rng.normal(0, 50, n), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("n", [1, 100, 400, 401, 560, 561, 16000, 48123])
def test_features_match_python_speech_features(n):
    signal = _speechlike(n, seed=n)
    ours = mfcc.features(signal)
    ref = _reference(signal.astype(np.float64))
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (mfcc.num_frames(n), 39)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


def test_features_match_at_8khz():
    # 200-sample windows, so the FFT is 256 points long.
    signal = np.random.default_rng(3).normal(0, 1000, 8000)
    np.testing.assert_allclose(mfcc.features(signal, sample_rate=8000), _reference(signal, 8000, nfft=256),
                               rtol=0, atol=1e-4)


def test_delta_hand_computed():
    # c_t = t^2 for t = 0..4, edges repeated: padded = [0, 0 | 0, 1, 4, 9, 16 | 16, 16];
    # d_t = (1 (c_{t+1} - c_{t-1}) + 2 (c_{t+2} - c_{t-2})) / 10:
    # t=0: (1 + 2*4)/10, t=1: (4 + 2*9)/10, t=2: (8 + 2*16)/10, t=3: (12 + 2*15)/10, t=4: (7 + 2*12)/10.
    feat = np.array([[0.0], [1.0], [4.0], [9.0], [16.0]])
    np.testing.assert_allclose(mfcc.delta(feat), [[0.9], [2.2], [4.0], [4.2], [3.1]], rtol=0, atol=1e-12)


def test_delta_of_ramp_is_slope_inside():
    # A ramp 3t - 1 in one column and a constant in the other: away from the edges the regression
    # slope is exactly 3 and 0.
    t = np.arange(10.0)
    feat = np.stack([3 * t - 1, np.full_like(t, 7.0)], axis=1)
    d = mfcc.delta(feat, window=2)
    np.testing.assert_allclose(d[2:-2], np.tile([3.0, 0.0], (6, 1)), rtol=0, atol=1e-12)


def test_frame_geometry_and_centres():
    assert mfcc.frame_geometry(16000) == (400, 160)
    # 1 + ceil((N - 400) / 160) frames for N > 400, else 1.
    for n, want in ((1, 1), (400, 1), (401, 2), (560, 2), (561, 3), (48000, 299)):
        assert mfcc.num_frames(n) == want
    np.testing.assert_array_equal(mfcc.frame_centres(3), [200, 360, 520])


def test_normalise_uses_train_statistics_only():
    rng = np.random.default_rng(0)
    train = [(rng.normal(5, 3, (n, 4)), np.zeros(n, np.int32)) for n in (7, 11, 2)]
    train[0][0][:, 3] = 1.5  # constant over the training set: centred only
    train[1][0][:, 3] = 1.5
    train[2][0][:, 3] = 1.5
    valid = [(rng.normal(-2, 1, (5, 4)), np.ones(5, np.int32))]
    out = mfcc.normalise({"train": train, "valid": valid})
    stacked = np.concatenate([f for f, _ in train])
    mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    std[3] = 1.0
    np.testing.assert_allclose(out["valid"][0][0], (valid[0][0] - mean) / std, rtol=1e-6, atol=1e-6)
    normed = np.concatenate([f for f, _ in out["train"]])
    assert normed.dtype == np.float32
    np.testing.assert_allclose(normed.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(normed.std(axis=0)[:3], 1.0, atol=1e-6)
    assert out["valid"][0][1] is valid[0][1]


@pytest.mark.parametrize("bad", [np.zeros((10, 2)), np.zeros(0), np.array([0.0, np.nan, 1.0])])
def test_features_rejects_bad_signals(bad):
    with pytest.raises(ValueError, match="features"):
        mfcc.features(bad)
