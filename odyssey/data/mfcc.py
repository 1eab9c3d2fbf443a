"""The paper's speech features: 12 MFCC + log energy with first and second derivatives, and their normalisation."""

import functools
import math

import numpy as np
import scipy.fft

# Supplement B.1 of the paper; the filterbank size, FFT length and lifter are the usual HTK-style choices
# (26 channels, the next power of two above the window, sinusoidal lifter 22).
PREEMPHASIS = 0.97
WINDOW_SECONDS = 0.025
STEP_SECONDS = 0.010
NUM_FILTERS = 26
NUM_CEPSTRA = 13  # c0 is replaced by the log energy, so 12 MFCC + log energy
LIFTER = 22
DELTA_WINDOW = 2
NUM_FEATURES = 3 * NUM_CEPSTRA


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def frame_geometry(sample_rate: int = 16000) -> tuple[int, int]:
    """Window length and step in samples (400 and 160 at 16 kHz)."""
    return _round_half_up(WINDOW_SECONDS * sample_rate), _round_half_up(STEP_SECONDS * sample_rate)


def num_frames(num_samples: int, sample_rate: int = 16000) -> int:
    """How many frames `features` makes of `num_samples` samples (the last window is zero-padded)."""
    length, step = frame_geometry(sample_rate)
    if num_samples <= length:
        return 1
    return 1 + math.ceil((num_samples - length) / step)


def frame_centres(count: int, sample_rate: int = 16000) -> np.ndarray:
    """The sample under the centre of each frame: int64[count], frame k spans [k*step, k*step + length)."""
    length, step = frame_geometry(sample_rate)
    return np.arange(count, dtype=np.int64) * step + length // 2


def _mel(hz):
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _hz(mel):
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def _filterbank(nfft: int, sample_rate: int) -> np.ndarray:
    """Triangular mel filters on FFT bins, float64[NUM_FILTERS, nfft // 2 + 1]."""
    edges = np.linspace(_mel(0.0), _mel(sample_rate / 2.0), NUM_FILTERS + 2)
    bins = np.floor((nfft + 1) * _hz(edges) / sample_rate)
    left, centre, right = bins[:-2, None], bins[1:-1, None], bins[2:, None]
    k = np.arange(nfft // 2 + 1, dtype=np.float64)[None, :]
    rising = (k - left) / np.maximum(centre - left, 1.0)
    falling = (right - k) / np.maximum(right - centre, 1.0)
    return np.where((k >= left) & (k < centre), rising, np.where((k >= centre) & (k < right), falling, 0.0))


def delta(feat: np.ndarray, window: int = DELTA_WINDOW) -> np.ndarray:
    """Regression derivative over +-`window` frames, edges repeated (HTK's delta formula).

    d_t = sum_{n=1..W} n (c_{t+n} - c_{t-n}) / (2 sum_{n=1..W} n^2)

    Args:
      feat: float[T, D].
      window: W >= 1.

    Returns:
      float64[T, D].
    """
    feat = np.asarray(feat, dtype=np.float64)
    if feat.ndim != 2:
        raise ValueError(f"delta expects [T, D] features, got shape {feat.shape}")
    if window < 1:
        raise ValueError(f"delta window must be >= 1, got {window}")
    count = feat.shape[0]
    padded = np.pad(feat, ((window, window), (0, 0)), mode="edge")
    out = np.zeros_like(feat)
    for n in range(1, window + 1):
        out += n * (padded[window + n:window + n + count] - padded[window - n:window - n + count])
    return out / (2.0 * sum(n * n for n in range(1, window + 1)))


def features(signal, sample_rate: int = 16000) -> np.ndarray:
    """The 39 features per 10 ms frame of one utterance, not normalised.

    Pre-emphasis 0.97 over the whole signal; 25 ms Hamming windows every 10 ms (the last one
    zero-padded); power spectrum |FFT|^2 / nfft; 26 triangular mel filters from 0 Hz to Nyquist;
    log; orthonormal DCT-II; cepstra 1..12 liftered by 1 + 11 sin(pi n / 22); c0 replaced by
    the log of the frame's spectral energy (HTK style); then first and second derivatives
    (`delta` with W = 2).

    Args:
      signal: float or int[N], one channel; int16 PCM values are used as they are.
      sample_rate: in Hz.

    Returns:
      float32[T, 39]: [log E, c1..c12, their deltas, their delta-deltas], T = `num_frames(N)`.
    """
    x = np.asarray(signal)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"features expects a non-empty 1-D signal, got shape {x.shape}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("features: the signal contains NaN or infinity")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    length, step = frame_geometry(sample_rate)
    nfft = 1 << (length - 1).bit_length()
    emphasised = np.concatenate([x[:1], x[1:] - PREEMPHASIS * x[:-1]])
    count = num_frames(x.size, sample_rate)
    padded = np.zeros((count - 1) * step + length)
    padded[:x.size] = emphasised
    frames = np.lib.stride_tricks.sliding_window_view(padded, length)[::step] * np.hamming(length)
    spectrum = np.fft.rfft(frames, nfft)
    power = (spectrum.real ** 2 + spectrum.imag ** 2) / nfft
    tiny = np.finfo(np.float64).eps
    energy = power.sum(axis=1)
    mel = power @ _filterbank(nfft, sample_rate).T
    cepstra = scipy.fft.dct(np.log(np.where(mel == 0.0, tiny, mel)), type=2, axis=1, norm="ortho")
    cepstra = cepstra[:, :NUM_CEPSTRA] * (1.0 + LIFTER / 2.0 * np.sin(np.pi * np.arange(NUM_CEPSTRA) / LIFTER))
    cepstra[:, 0] = np.log(np.where(energy == 0.0, tiny, energy))
    first = delta(cepstra)
    return np.concatenate([cepstra, first, delta(first)], axis=1).astype(np.float32)


def normalise(splits: dict) -> dict:
    """Scales every split's features to zero mean and unit variance with the training split's statistics.

    Args:
      splits: `{"train": [(float[T, D], labels), ...], "valid": [...], "test": [...]}`; other keys
        are normalised the same way.

    Returns:
      The same structure with features float32[T, D] and labels left as they are. A dimension
      that is constant over the training frames is only centred.
    """
    train = splits.get("train")
    if not train:
        raise ValueError("normalise needs a non-empty 'train' split for the statistics")
    total = sum(f.shape[0] for f, _ in train)
    mean = sum(np.asarray(f, np.float64).sum(axis=0) for f, _ in train) / total
    var = sum(((np.asarray(f, np.float64) - mean) ** 2).sum(axis=0) for f, _ in train) / total
    std = np.sqrt(var)
    std = np.where(std > 0.0, std, 1.0)
    return {name: [(((np.asarray(f, np.float64) - mean) / std).astype(np.float32), y) for f, y in items]
            for name, items in splits.items()}
