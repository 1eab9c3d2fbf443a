"""Tests of the sentence generator of the stand-in corpora."""

import numpy as np
import pytest

from odyssey.data import text

_HANDWRITING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !\"#&'()*+,-./[]:;?"


def test_unique_sentences_are_distinct_and_reproducible():
    a = text.unique_sentences(500, seed=3)
    assert len(a) == len(set(a)) == 500
    assert a == text.unique_sentences(500, seed=3)
    assert a != text.unique_sentences(500, seed=4)


def test_plain_sentences_are_words_only():
    for s in text.unique_sentences(300, seed=0):
        body = s[:-1].replace(",", "")
        assert s[0].isupper() and s[-1] in ".?!"
        assert all(w.isalpha() for w in body.split()), s


def test_rich_sentences_cover_the_handwriting_alphabet():
    chars = set("".join(text.unique_sentences(2000, seed=0, rich=True)))
    assert chars == set(_HANDWRITING)


def test_negative_count_is_an_error():
    with pytest.raises(ValueError, match="n must be"):
        text.unique_sentences(-1)
