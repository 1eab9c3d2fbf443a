"""An offline stand-in for TIMIT: espeak-ng speech with exact phone timing, labelled with TIMIT's 61 phones."""

import concurrent.futures
import ctypes
import functools
import multiprocessing
import os
import pathlib
import pickle
import tempfile
import time
from typing import NamedTuple
import warnings

from absl import logging
import numpy as np
import scipy.signal

from odyssey.data import default_cache_dir
from odyssey.data import mfcc
from odyssey.data import text
from odyssey.data import timit

# Bump when anything below changes the generated corpus; it is part of the cache file's name.
RECIPE_VERSION = 1
SAMPLE_RATE = timit.SAMPLE_RATE
SPLITS = ("train", "valid", "test")

# espeak-ng's English (America) phoneme mnemonics -> TIMIT phones. A mnemonic that stands for a vowel
# followed by r or a schwa gives two phones, which share its duration equally. The stress marks ' and ,
# are stripped first. Choices, following TIMIT's transcription conventions (PHONCODE.DOC):
#   reduced vowels I#, I2 -> ix and @, @2, a# -> ax; unstressed r-coloured 3 (and the r- that espeak
#   appends to it) -> axr, stressed 3: -> er; syllabic @L, n- -> el, en; the flap t# -> dx; the glottal
#   stop ? and espeak's glottal onset _! -> q; the y-glide ; that espeak inserts after i before a vowel -> y.
# Pauses (_:, _) become h# before the first and after the last phone of the utterance, pau inside it.
ESPEAK_TO_TIMIT = {
    # stops and affricates (their closures are found in the audio, see _segments)
    "p": ("p",), "t": ("t",), "t2": ("t",), "k": ("k",), "b": ("b",), "d": ("d",), "g": ("g",),
    "tS": ("ch",), "dZ": ("jh",), "t#": ("dx",), "?": ("q",), "_!": ("q",),
    # fricatives
    "s": ("s",), "z": ("z",), "S": ("sh",), "Z": ("zh",), "f": ("f",), "v": ("v",), "T": ("th",),
    "D": ("dh",), "h": ("hh",),
    # nasals, liquids, glides
    "m": ("m",), "n": ("n",), "N": ("ng",), "n-": ("en",), "m-": ("em",), "l": ("l",), "@L": ("el",),
    "l-": ("el",), "r": ("r",), "w": ("w",), "j": ("y",), ";": ("y",),
    # vowels
    "i:": ("iy",), "i": ("iy",), "I": ("ih",), "I#": ("ix",), "I2": ("ix",), "E": ("eh",), "a": ("ae",),
    "aa": ("ae",), "a#": ("ax",), "0": ("aa",), "A:": ("aa",), "O:": ("ao",), "O2": ("ao",), "V": ("ah",),
    "U": ("uh",), "u:": ("uw",), "@": ("ax",), "@2": ("ax",), "@5": ("ax",), "3": ("axr",), "r-": ("axr",),
    "3:": ("er",), "eI": ("ey",), "aI": ("ay",), "aU": ("aw",), "OI": ("oy",), "oU": ("ow",),
    # vowel + r / schwa
    "A@": ("aa", "r"), "O@": ("ao", "r"), "o@": ("ao", "r"), "e@": ("eh", "r"), "i@3": ("ih", "axr"),
    "i@": ("iy", "ax"), "U@": ("uh", "r"), "aI@": ("ay", "ax"), "aI3": ("ay", "axr"), "aU@": ("aw", "axr"),
    # pauses
    "_:": ("pau",), "_": ("pau",),
}
_CLOSURE = {"p": "pcl", "t": "tcl", "k": "kcl", "b": "bcl", "d": "dcl", "g": "gcl", "ch": "tcl", "jh": "dcl"}
_PAUSES = frozenset({"pau", "h#"})
# espeak closes a stop with digital silence at the end of the phoneme before it and reports the stop's
# event at the release; a run of at least this long with |x| <= _SILENCE is that closure.
_SILENCE = 16
_MIN_CLOSURE_S = 0.005

# Voices: espeak's American English with one of its voice variants, a base pitch, pitch range and rate
# (words per minute) per utterance; the rate range puts the mean near TIMIT's ~304 frames per utterance.
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "klatt4")
_PITCH = (25, 75)
_RANGE = (30, 90)
_RATE = (185, 245)
_SNR_DB = (30.0, 45.0)
_EDGE_SILENCE_S = (0.08, 0.22)


class Voice(NamedTuple):
    """How one utterance is spoken."""
    variant: str
    pitch: int
    pitch_range: int
    rate: int
    snr_db: float
    lead_s: float
    tail_s: float
    engine_seed: int


class _Event(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _EspeakEvent(ctypes.Structure):
    # espeak_EVENT of speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _Event)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_EspeakEvent))
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_RATE_PARAM, _PITCH_PARAM, _RANGE_PARAM = 1, 3, 4


class _Espeak:
    """The espeak-ng library of the espeakng-loader package, initialised in this process."""

    def __init__(self, espeakng_loader):
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        data_parent = os.path.dirname(espeakng_loader.get_data_path())
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent.encode(),
                                                 _INITIALIZE_PHONEME_EVENTS)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with the data in {data_parent}")
        self._lib = lib
        self._chunks, self._events, self._error = [], [], None
        self._callback = _CALLBACK(self._collect)  # held so that it outlives every synthesis
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, count, events):
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
        k = 0
        while events[k].type != _EVENT_LIST_TERMINATED:
            e = events[k]
            if e.type == _EVENT_PHONEME:
                # `sample` is documented as internal; it must agree with the documented ms position.
                if abs(e.sample * 1000 / self.sample_rate - e.audio_position) > 1.5:
                    self._error = f"event sample {e.sample} and audio_position {e.audio_position} ms disagree"
                    return 1  # an exception would not cross the C callback; abort and report after
                self._events.append((e.id.string.decode("utf-8"), e.sample))
            k += 1
        return 0

    def speak(self, sentence: str, voice: Voice) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """int16[N] audio at `sample_rate` and the (phoneme mnemonic, first sample) events."""
        if self._lib.espeak_SetVoiceByName(f"en-us+{voice.variant}".encode()) != 0:
            raise RuntimeError(f"espeak has no voice en-us+{voice.variant}")
        for param, value in ((_RATE_PARAM, voice.rate), (_PITCH_PARAM, voice.pitch), (_RANGE_PARAM, voice.pitch_range)):
            self._lib.espeak_SetParameter(param, value, 0)
        # espeak's noise sources draw from its own generator and from libc's rand().
        self._lib.espeak_ng_SetRandSeed(voice.engine_seed)
        ctypes.CDLL(None).srand(voice.engine_seed)
        self._chunks, self._events, self._error = [], [], None
        data = sentence.encode("utf-8")
        status = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0 or self._error:
            raise RuntimeError(f"espeak_Synth returned {status} for {sentence!r}; {self._error or ''}")
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio, self._events


def speak(sentence: str, voice: Voice) -> tuple[int, np.ndarray, list[tuple[str, int]]]:
    """espeak-ng's audio and phoneme events for one sentence, the same on every call.

    The library keeps state from one synthesis to the next that re-initialising does not reset
    (the same sentence spoken twice in one process comes out different), so each sentence is
    spoken by a child process forked for it from this one, which never synthesises itself; its
    random generators are seeded with `voice.engine_seed`.

    Args:
      sentence: the text.
      voice: how to speak it.

    Returns:
      (espeak's sample rate, int16[N] audio, [(phoneme mnemonic, first sample), ...]).
    """
    import espeakng_loader  # pylint: disable=import-outside-toplevel
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # A multithreaded parent (e.g. one that imported JAX) warns at fork; the child only runs espeak.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                engine = _Espeak(espeakng_loader)
                audio, events = engine.speak(sentence, voice)
                payload = pickle.dumps((engine.sample_rate, audio, events, None))
            except BaseException as e:  # pylint: disable=broad-exception-caught
                payload = pickle.dumps((0, None, None, f"{type(e).__name__}: {e}"))
            with os.fdopen(write_end, "wb") as f:
                f.write(payload)
        finally:
            os._exit(0)  # never return into the parent's code
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        payload = f.read()
    os.waitpid(pid, 0)
    if not payload:
        raise RuntimeError(f"the espeak child process died speaking {sentence!r}")
    rate, audio, events, error = pickle.loads(payload)
    if error:
        raise RuntimeError(f"espeak failed on {sentence!r} with voice {voice}: {error}")
    return rate, audio, events


def voice_for(seed: int, index: int) -> Voice:
    """The voice of utterance `index` (counted over train, valid, test in turn) of the corpus of `seed`."""
    rng = np.random.default_rng([seed, index])
    return Voice(variant=VARIANTS[rng.integers(len(VARIANTS))], pitch=int(rng.integers(*_PITCH)),
                 pitch_range=int(rng.integers(*_RANGE)), rate=int(rng.integers(*_RATE)),
                 snr_db=float(rng.uniform(*_SNR_DB)), lead_s=float(rng.uniform(*_EDGE_SILENCE_S)),
                 tail_s=float(rng.uniform(*_EDGE_SILENCE_S)), engine_seed=int(rng.integers(2 ** 31)))


def _segments(audio: np.ndarray, events: list[tuple[str, int]], sample_rate: int,
              sentence: str) -> tuple[np.ndarray, list[str]]:
    """TIMIT segments (first sample, phone) of espeak's int16 audio and phoneme events, at its sample rate."""
    starts, phones = [0], ["h#"]
    bounds = [s for _, s in events] + [audio.size]
    for k, (name, start) in enumerate(events):
        key = name.lstrip("',")
        if key not in ESPEAK_TO_TIMIT:
            raise ValueError(f"espeak phoneme {name!r} in {sentence!r} has no TIMIT phone in ESPEAK_TO_TIMIT")
        start = max(start, starts[-1])
        end = max(bounds[k + 1], start)
        mapped = ESPEAK_TO_TIMIT[key]
        if mapped[0] in _CLOSURE and phones[-1] not in _PAUSES:
            loud = np.flatnonzero(np.abs(audio[starts[-1]:start].astype(np.int32)) > _SILENCE)
            silent_from = starts[-1] + (loud[-1] + 1 if loud.size else 0)
            if start - silent_from >= _MIN_CLOSURE_S * sample_rate:
                starts.append(silent_from)
                phones.append(_CLOSURE[mapped[0]])
        cuts = np.linspace(start, end, len(mapped) + 1).round().astype(np.int64)
        for cut, phone in zip(cuts[:-1], mapped):
            starts.append(int(cut))
            phones.append(phone)
    spoken = [k for k, p in enumerate(phones) if p not in _PAUSES]
    if spoken:
        for k in range(len(phones)):
            if phones[k] == "pau" and not spoken[0] < k < spoken[-1]:
                phones[k] = "h#"
    return np.array(starts, np.int64), phones


@functools.lru_cache(maxsize=4)
def _resampling_filter(up: int, down: int) -> np.ndarray:
    """The low-pass filter that scipy.signal.resample_poly designs by default, designed once."""
    return scipy.signal.firwin(20 * max(up, down) + 1, 1.0 / max(up, down), window=("kaiser", 5.0))


def render(sentence: str, voice: Voice, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Speaks one sentence and labels its samples with TIMIT phones.

    espeak's audio is resampled to 16 kHz, framed by `voice.lead_s` and `voice.tail_s` of silence
    (h#), and given white noise at `voice.snr_db` below the speech's RMS.

    Args:
      sentence: the text.
      voice: how to speak it (`voice_for`).
      rng: the source of the noise.

    Returns:
      (audio float64[N] at 16 kHz in int16 units, starts int64[S] first samples of the segments,
      labels int32[S] indexing `timit.PHONES`).
    """
    rate, raw, events = speak(sentence, voice)
    if not events or raw.size == 0:
        raise RuntimeError(f"espeak produced no speech for {sentence!r}")
    starts, phones = _segments(raw, events, rate, sentence)
    divisor = np.gcd(SAMPLE_RATE, rate)
    up, down = SAMPLE_RATE // divisor, rate // divisor
    speech = scipy.signal.resample_poly(raw.astype(np.float64), up, down, window=_resampling_filter(up, down))
    lead, tail = round(voice.lead_s * SAMPLE_RATE), round(voice.tail_s * SAMPLE_RATE)
    audio = np.concatenate([np.zeros(lead), speech, np.zeros(tail)])
    starts = np.minimum(np.round(starts * (up / down)).astype(np.int64), speech.size) + lead
    starts[0] = 0
    starts = np.append(starts, lead + speech.size)
    labels = np.array([timit.PHONE_INDEX[p] for p in phones] + [timit.PHONE_INDEX["h#"]], np.int32)
    noise_std = np.sqrt(np.mean(speech ** 2)) * 10.0 ** (-voice.snr_db / 20.0)
    return audio + rng.normal(0.0, noise_std, audio.size), starts, labels


def example(sentence: str, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Features float32[T, 39] (not normalised) and frame labels int32[T] of utterance `index` of a corpus."""
    audio, starts, labels = render(sentence, voice_for(seed, index), np.random.default_rng([seed, index, 1]))
    feats = mfcc.features(audio, SAMPLE_RATE)
    return feats, timit.frame_labels(starts, labels, feats.shape[0], SAMPLE_RATE)


def _example_job(job: tuple[str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    return example(*job)


def sentences(seed: int, sizes: tuple[int, int, int]) -> dict[str, list[str]]:
    """The disjoint sentence sets of the splits: consecutive slices of one list of distinct sentences."""
    pool = text.unique_sentences(sum(sizes), seed=seed, rich=False)
    bounds = np.cumsum((0,) + tuple(sizes))
    return {name: pool[bounds[k]:bounds[k + 1]] for k, name in enumerate(SPLITS)}


def _generate(seed: int, sizes: tuple[int, int, int], processes: int) -> dict[str, list]:
    jobs, index = [], 0
    for split, items in sentences(seed, sizes).items():
        for sentence in items:
            jobs.append((sentence, seed, index))
            index += 1
    total, out, started = len(jobs), [], time.monotonic()
    logging.info("Speech stand-in: synthesising %d utterances with %d processes", total, processes)
    if processes <= 1:
        results = map(_example_job, jobs)
        pool = None
    else:
        pool = concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_example_job, jobs, chunksize=16)
    try:
        for done, result in enumerate(results, 1):
            out.append(result)
            if done % max(1, total // 20) == 0 or done == total:
                logging.info("Speech stand-in: %d/%d utterances, %.0f s", done, total, time.monotonic() - started)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    bounds = np.cumsum((0,) + tuple(sizes))
    return {name: out[bounds[k]:bounds[k + 1]] for k, name in enumerate(SPLITS)}


def _save(path: pathlib.Path, splits: dict[str, list]) -> None:
    arrays = {}
    for name, items in splits.items():
        arrays[f"{name}_lengths"] = np.array([f.shape[0] for f, _ in items], np.int64)
        arrays[f"{name}_features"] = (np.concatenate([f for f, _ in items]) if items
                                      else np.zeros((0, mfcc.NUM_FEATURES), np.float32))
        arrays[f"{name}_labels"] = (np.concatenate([y for _, y in items]) if items else np.zeros(0, np.int32))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
        tmp = pathlib.Path(f.name)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # the temporary file was created private
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load(path: pathlib.Path) -> dict[str, list]:
    splits = {}
    with np.load(path) as data:
        for name in SPLITS:
            lengths = data[f"{name}_lengths"]
            cuts = np.cumsum(lengths)[:-1]
            pairs = zip(np.split(data[f"{name}_features"], cuts), np.split(data[f"{name}_labels"], cuts))
            splits[name] = list(pairs) if lengths.size else []
    return splits


def cache_path(cache_dir, seed: int, sizes: tuple[int, int, int]) -> pathlib.Path:
    """Where `build` keeps the corpus of (seed, sizes) under the current `RECIPE_VERSION`."""
    root = default_cache_dir("timit_standin") if cache_dir is None else pathlib.Path(cache_dir)
    return root / f"standin-v{RECIPE_VERSION}-seed{seed}-{sizes[0]}-{sizes[1]}-{sizes[2]}.npz"


def build(cache_dir=None, seed: int = 0, sizes: tuple[int, int, int] = (3696, 400, 192),
          processes: int | None = None) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The stand-in corpus, generated once and then read from the cache.

    Args:
      cache_dir: folder of the cache; None for `default_cache_dir("timit_standin")`.
      seed: chooses the sentences, voices and noise; the same seed gives the same corpus.
      sizes: utterances in train, valid, test (TIMIT's split by default); sentences never repeat
        across or within splits.
      processes: synthesis processes; None for one per CPU.

    Returns:
      {"train", "valid", "test"} -> list of (features float32[T, 39] normalised with the training
      split's mean and standard deviation, labels int32[T] indexing `timit.PHONES`).
    """
    sizes = tuple(sizes)
    if len(sizes) != 3 or any(not isinstance(n, (int, np.integer)) or n < 0 for n in sizes) or sizes[0] < 1:
        raise ValueError(f"sizes must be three counts (train >= 1, valid, test >= 0), got {sizes}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    sizes = tuple(int(n) for n in sizes)
    path = cache_path(cache_dir, int(seed), sizes)
    if path.is_file():
        logging.info("Speech stand-in: reading %s", path)
        raw = _load(path)
    else:
        raw = _generate(int(seed), sizes, processes or os.cpu_count() or 1)
        _save(path, raw)
        logging.info("Speech stand-in: cached at %s", path)
    return mfcc.normalise(raw)
