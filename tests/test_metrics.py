"""Tests of edit distance against a hand-written dynamic programme; CER and frame error on hand-made cases."""

import numpy as np
import pytest

from odyssey import ctc, metrics


def _levenshtein_dp(a, b):
    """The textbook Wagner-Fischer table, filled cell by cell."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        table[i][0] = i
    for j in range(len(b) + 1):
        table[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1,
                              table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return table[len(a)][len(b)]


def test_edit_distance_equals_the_dynamic_programme_on_random_strings():
    rng = np.random.default_rng(0)
    alphabet = np.array(list("abcd"))  # a small alphabet, so that matches and runs are common
    for _ in range(300):
        a = "".join(rng.choice(alphabet, size=rng.integers(0, 13)))
        b = "".join(rng.choice(alphabet, size=rng.integers(0, 13)))
        expected = _levenshtein_dp(a, b)
        assert metrics.edit_distance(a, b) == expected, (a, b)
        assert metrics.edit_distance(b, a) == expected, (b, a)


def test_edit_distance_equals_the_dynamic_programme_on_int_sequences():
    rng = np.random.default_rng(1)
    for _ in range(200):
        a = rng.integers(0, 82, size=rng.integers(0, 20)) % rng.integers(1, 6)
        b = rng.integers(0, 82, size=rng.integers(0, 20)) % rng.integers(1, 6)
        expected = _levenshtein_dp(a.tolist(), b.tolist())
        got = metrics.edit_distance(a, b)
        assert isinstance(got, int) and got == expected, (a, b)
        assert metrics.edit_distance(a.tolist(), tuple(b.astype(np.int32))) == expected


def test_edit_distance_hand_made():
    assert metrics.edit_distance("kitten", "sitting") == 3  # 2 substitutions, 1 insertion
    assert metrics.edit_distance("", "abc") == 3
    assert metrics.edit_distance([], []) == 0
    assert metrics.edit_distance([7, 7, 7], [7, 7]) == 1


def test_edit_distance_rejects_matrices():
    with pytest.raises(ValueError, match="hyp"):
        metrics.edit_distance([1, 2], np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="ref"):
        metrics.edit_distance([0.5, 1.0], [1])


def test_character_error_rate_hand_made():
    # One substitution in "abc", one deletion in "de": 2 edits over 5 reference characters.
    assert metrics.character_error_rate(["abc", "de"], ["abd", "e"]) == pytest.approx(40.0, abs=1e-12)
    # Int labels: 1 deletion + 2 insertions over 4 reference labels.
    cer = metrics.character_error_rate([[1, 2, 3], [4]], [np.array([1, 3]), [4, 4, 4]])
    assert cer == pytest.approx(75.0)
    # Pooled, not averaged per line: a perfect long line and a wrong short one.
    assert metrics.character_error_rate(["abcdefghi", "x"], ["abcdefghi", "y"]) == pytest.approx(10.0)
    assert metrics.character_error_rate(["a"], ["bcd"]) == pytest.approx(300.0)
    assert metrics.character_error_rate(["abc"], ["abc"]) == 0.0


def test_character_error_rate_of_best_path_decoding():
    # Frame-wise argmax paths over blank 0 and classes 1..3, one-hot logits.
    paths = np.array([[1, 1, 0, 2, 2, 3, 0, 0], [3, 0, 3, 3, 0, 0, 1, 0]])
    paddings = np.zeros((2, 8))
    paddings[1, 6:] = 1.0  # the final 1 of item 1 lies in padding
    hyps = ctc.best_path_decode(np.eye(4)[paths], paddings)  # [1, 2, 3] and [3, 3]
    refs = [[1, 2, 2, 3], [3, 3]]
    assert metrics.character_error_rate(refs, hyps) == pytest.approx(100.0 * 1 / 6)


def test_character_error_rate_rejects_bad_input():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        metrics.character_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no symbol"):
        metrics.character_error_rate(["", ""], ["a", ""])


def test_frame_error_rate_hand_made():
    assert metrics.frame_error_rate([1, 2, 3, 4], [1, 2, 0, 4]) == pytest.approx(25.0)
    # Padded batch: of the 4 valid frames only [0, 1] is wrong; the padded errors do not count.
    pred = np.array([[1, 2, 3], [0, 0, 0]])
    true = np.array([[1, 1, 3], [0, 5, 5]])
    mask = np.array([[1, 1, 1], [1, 0, 0]], dtype=np.float32)
    assert metrics.frame_error_rate(pred, true, mask) == pytest.approx(25.0)
    assert metrics.frame_error_rate(pred, true) == pytest.approx(100.0 * 3 / 6)
    # Ragged list of utterances: 2 wrong frames out of 5.
    assert metrics.frame_error_rate([[1, 2], [3, 3, 3]], [[1, 1], [3, 3, 0]]) == pytest.approx(40.0)


def test_frame_error_rate_equals_a_count_on_random_batches():
    rng = np.random.default_rng(2)
    pred = rng.integers(0, 4, size=(6, 30))
    true = rng.integers(0, 4, size=(6, 30))
    lengths = rng.integers(1, 31, size=6)
    mask = np.arange(30)[None, :] < lengths[:, None]
    wrong = sum(int(pred[b, t] != true[b, t]) for b in range(6) for t in range(lengths[b]))
    expected = 100.0 * wrong / lengths.sum()
    assert metrics.frame_error_rate(pred, true, mask) == pytest.approx(expected, rel=1e-12)
    ragged = metrics.frame_error_rate([p[:n] for p, n in zip(pred, lengths)],
                                      [t[:n] for t, n in zip(true, lengths)])
    assert ragged == pytest.approx(expected, rel=1e-12)


def test_frame_error_rate_rejects_bad_input():
    with pytest.raises(ValueError, match="pred_labels has shape"):
        metrics.frame_error_rate([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="mask has shape"):
        metrics.frame_error_rate([1, 2, 3], [1, 2, 3], [1, 1])
    with pytest.raises(ValueError, match="no valid frame"):
        metrics.frame_error_rate([1, 2], [1, 2], [0, 0])
