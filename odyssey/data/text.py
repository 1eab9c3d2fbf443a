"""Sentences from a small grammar and word list of the project's own, for the offline stand-in corpora."""

import numpy as np

_NAMES = ("Anna", "Boris", "Clara", "David", "Elena", "Felix", "Greta", "Hugo", "Ida", "Jonas", "Karl",
          "Lena", "Marta", "Nils", "Olga", "Paul", "Quinn", "Rosa", "Simon", "Tara", "Ulla", "Victor",
          "Wanda", "Xaver", "Yusuf", "Zoe")
_PLACES = ("Berlin", "Cairo", "Dublin", "Oslo", "Lima", "Quebec", "Vienna", "Kyoto", "Madrid", "Prague",
           "Zurich", "Jakarta", "Nairobi", "Geneva", "Toronto", "Warsaw")
_DETERMINERS = ("the", "a", "every", "one", "that", "this", "some", "no")
_ADJECTIVES = ("small", "quiet", "bright", "old", "young", "heavy", "quick", "gentle", "strange", "wooden",
               "golden", "narrow", "distant", "cold", "warm", "patient", "lazy", "clever", "broken", "silver",
               "yellow", "proud", "hungry", "tired", "empty", "famous", "modest", "rough", "smooth", "wild")
_NOUNS = ("river", "teacher", "garden", "window", "letter", "machine", "mountain", "doctor", "village",
          "engine", "bottle", "farmer", "market", "station", "kitten", "painter", "forest", "harbour",
          "ladder", "pocket", "singer", "bridge", "jacket", "tower", "dragon", "pilot", "wizard", "basket",
          "judge", "violin", "zebra", "oyster", "kettle", "quilt", "fox", "owl", "ship", "road", "cloud",
          "box", "lamp", "horse", "piano", "storm", "sailor", "cabin", "carpet", "shadow", "voice", "clock")
_VERBS = ("saw", "found", "carried", "painted", "followed", "visited", "opened", "watched", "fixed", "lifted",
          "pushed", "cleaned", "answered", "remembered", "questioned", "admired", "joined", "measured",
          "borrowed", "noticed", "welcomed", "judged", "mixed", "squeezed", "wrapped", "expected")
_ADVERBS = ("slowly", "quietly", "often", "never", "always", "suddenly", "gladly", "rarely", "twice",
            "yesterday", "today", "carefully", "early", "late", "again", "badly")
_PREPOSITIONS = ("near", "under", "behind", "beside", "over", "across", "inside", "around", "past", "beyond")
_CONJUNCTIONS = ("and", "but", "because", "while", "so", "although")


def _pick(rng, words):
    return words[rng.integers(len(words))]


def _noun_phrase(rng, rich):
    if rng.random() < 0.2:
        return _pick(rng, _NAMES)
    words = [_pick(rng, _DETERMINERS)]
    if rng.random() < 0.6:
        words.append(_pick(rng, _ADJECTIVES))
    noun = _pick(rng, _NOUNS)
    if rich and rng.random() < 0.1:
        noun = f"{noun}-{_pick(rng, _NOUNS)}"
    words.append(noun)
    if rng.random() < 0.25:
        words += [_pick(rng, _PREPOSITIONS), _pick(rng, _DETERMINERS), _pick(rng, _NOUNS)]
    return " ".join(words)


def _number(rng):
    kind = rng.integers(4)
    if kind == 0:
        return str(rng.integers(2, 100))
    if kind == 1:
        return str(rng.integers(1900, 2030))
    if kind == 2:
        return f"{rng.integers(1, 10)}.{rng.integers(0, 10)}"
    return f"#{rng.integers(1, 50)}"


def _clause(rng, rich):
    words = [_noun_phrase(rng, rich)]
    if rng.random() < 0.3:
        words.append(_pick(rng, _ADVERBS))
    words.append(_pick(rng, _VERBS))
    if rich and rng.random() < 0.3:
        words.append(f"{_number(rng)} {_pick(rng, _NOUNS)}s")
    else:
        words.append(_noun_phrase(rng, rich))
    if rng.random() < 0.25:
        words += ["in", _pick(rng, _PLACES)]
    return " ".join(words)


def _decorate(rng, text):
    """Adds the punctuation and symbols of the handwriting alphabet around and inside a sentence."""
    r = rng.random()
    if r < 0.08:
        text = f'"{text}"'
    elif r < 0.14:
        text = f"({text})"
    elif r < 0.18:
        text = f"[{text}]"
    r = rng.random()
    if r < 0.06:
        text = text.replace(" and ", " & ", 1)
    elif r < 0.10:
        text += f" {rng.integers(1, 10)} + {rng.integers(1, 10)} * {rng.integers(1, 10)}"
    elif r < 0.14:
        text += f" {rng.integers(1, 13)}/{rng.integers(1, 29)}"
    elif r < 0.20:
        text = f"{_pick(rng, _NAMES)}'s note: {text}"
    return text


def sentence(rng: np.random.Generator, rich: bool = False) -> str:
    """One sentence of the grammar.

    Args:
      rng: the source of randomness.
      rich: add digits, symbols and the rarer punctuation of the handwriting alphabet
        (`!"#&'()*+,-./[]:;?`); without it, plain words a speech engine reads naturally.

    Returns:
      The sentence, starting with a capital letter and ending in `.`, `?` or `!`.
    """
    text = _clause(rng, rich)
    r = rng.random()
    if r < 0.3:
        text += f", {_pick(rng, _CONJUNCTIONS)} {_clause(rng, rich)}"
    elif rich and r < 0.4:
        text += f"; {_clause(rng, rich)}"
    text = text[0].upper() + text[1:]
    if rich:
        text = _decorate(rng, text)
    end = rng.random()
    return text + ("." if end < 0.75 else "?" if end < 0.9 else "!")


def unique_sentences(n: int, seed: int = 0, rich: bool = False) -> list[str]:
    """`n` distinct sentences, the same for the same arguments.

    Args:
      n: how many.
      seed: the seed of the generator.
      rich: as in `sentence`.

    Returns:
      A list of `n` different sentences; slicing it gives disjoint sets for the splits.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    seen, out = set(), []
    while len(out) < n:
        s = sentence(rng, rich)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out
