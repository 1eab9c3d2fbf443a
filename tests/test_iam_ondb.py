"""Tests of the IAM-OnDB reader on a miniature database tree written here."""

import logging
import pathlib

import numpy as np
import pytest

from odyssey.data import iam_ondb

# The paper's 81 characters, typed out independently of the module.
_PAPER_ALPHABET = ("abcdefghijklmnopqrstuvwxyz" "ABCDEFGHIJKLMNOPQRSTUVWXYZ" "0123456789"
                   " !\"#&'()*+,-./[]:;?")

# (x, y, time) per point; a01-000u-01 has a stroke break after its fifth point.
_BROKEN_LINE = [
    [(100, 200, 10.00), (101, 202, 10.01), (103, 203, 10.02), (104, 205, 10.03), (106, 206, 10.04)],
    [(110, 200, 11.00), (111, 201, 11.01), (112, 203, 11.02)],
]
# Its features by hand: stroke 1 keeps points 0, 2, 4 and stroke 2 points 0, 2; the first point of
# stroke 2 moves from (106, 206) to (110, 200) with the pen up; the pen lifts after each stroke's
# last kept point.
_BROKEN_LINE_FEATURES = np.array([
    [0, 0, 0.00, 0],
    [3, 3, 0.02, 0],
    [3, 3, 0.04, 1],
    [4, -6, 0.00, 0],
    [2, 3, 0.02, 1],
])
_OK_LINE = [[(50, 60, 20.00), (52, 61, 20.01), (55, 63, 20.02), (57, 62, 20.03)]]
_OK_LINE_FEATURES = np.array([[0, 0, 0.00, 0], [5, 3, 0.02, 1]])
_SHORT_LINE = [[(0, 0, 1.00), (2, 1, 1.01), (4, 1, 1.02)]]
_SHORT_LINE_FEATURES = np.array([[0, 0, 0.00, 0], [4, 1, 0.02, 1]])

# form -> (split list it is named in, [(CSR text, strokes)]).
_FORMS = {
    "a01-000u": ("trainset.txt", [("Hi there.", _BROKEN_LINE), ("Up 5 % now", _SHORT_LINE),
                                  ("ok", _OK_LINE)]),
    "a02-010x": ("testset_v.txt", [("Yes!", _SHORT_LINE)]),
    "a03-020w": ("testset_t.txt", [("No? [1]", _OK_LINE)]),
    "a04-030y": ("testset_f.txt", [("It's 3:45", _OK_LINE), ("a/b & c", _BROKEN_LINE)]),
    "a08-551z": ("trainset.txt", [("gone", _OK_LINE)]),
}


def _xml(strokes):
    body = "\n".join(
        f'    <Stroke colour="black" start_time="{s[0][2]}" end_time="{s[-1][2]}">\n'
        + "\n".join(f'      <Point x="{x}" y="{y}" time="{t:.2f}"/>' for x, y, t in s)
        + "\n    </Stroke>" for s in strokes)
    return ('<?xml version="1.0" encoding="ISO-8859-1"?>\n<WhiteboardCaptureSession>\n'
            '  <WhiteboardDescription><SensorLocation corner="top_left"/></WhiteboardDescription>\n'
            f"  <StrokeSet>\n{body}\n  </StrokeSet>\n</WhiteboardCaptureSession>\n")


def _write_tree(root: pathlib.Path):
    lists = {"trainset.txt": [], "testset_v.txt": [], "testset_t.txt": [], "testset_f.txt": []}
    for form, (list_name, lines) in _FORMS.items():
        folder = f"{form[:3]}/{form[:7]}"
        (root / "lineStrokes" / folder).mkdir(parents=True, exist_ok=True)
        (root / "ascii" / folder).mkdir(parents=True, exist_ok=True)
        for number, (_, strokes) in enumerate(lines, start=1):
            (root / "lineStrokes" / folder / f"{form}-{number:02d}.xml").write_text(_xml(strokes))
        # The OCR section differs from the CSR one, which alone must be read.
        ocr = "\n".join(text.upper() + " (ocr)" for text, _ in lines)
        csr = "\n".join(text for text, _ in lines)
        (root / "ascii" / folder / f"{form}.txt").write_text(
            f"Data ID:   {form}\nWriter ID: 10001\n\nOCR:\n\n{ocr}\n\nCSR:\n\n{csr}\n\n")
        # testset_t names a line rather than its form: both kinds of entry are read.
        lists[list_name].append(f"{form}-01" if list_name == "testset_t.txt" else form)
    for name, entries in lists.items():
        (root / name).write_text("".join(f"{e}\n" for e in entries))
    return root


@pytest.fixture
def tree(tmp_path):
    return _write_tree(tmp_path / "IAM-OnDB")


def _texts(items):
    return [iam_ondb.decode(labels) for _, labels in items]


def test_alphabet_is_the_papers_in_order():
    assert iam_ondb.ALPHABET == _PAPER_ALPHABET
    assert len(iam_ondb.ALPHABET) == 81
    labels = iam_ondb.encode("aZ0 ?")
    np.testing.assert_array_equal(labels, [1, 52, 53, 63, 81])
    assert labels.dtype == np.int32
    assert iam_ondb.decode(iam_ondb.encode(_PAPER_ALPHABET)) == _PAPER_ALPHABET
    with pytest.raises(ValueError, match="outside"):
        iam_ondb.encode("50 %")
    with pytest.raises(ValueError, match="1..81"):
        iam_ondb.decode([0, 3])


def test_line_features_by_hand():
    features = iam_ondb.line_features([np.array(s, dtype=float) for s in _BROKEN_LINE])
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, _BROKEN_LINE_FEATURES, rtol=0, atol=1e-6)


def test_subsampling_against_a_point_by_point_loop():
    rng = np.random.default_rng(0)
    strokes = []
    for n in (1, 2, 5, 8, 3):
        times = 100.0 + np.cumsum(rng.uniform(0.005, 0.02, n))
        strokes.append(np.column_stack([rng.normal(size=(n, 2)) * 50, times]))
    expected, previous = [], None
    for stroke in strokes:
        kept = [stroke[j] for j in range(len(stroke)) if j % 2 == 0]
        for j, point in enumerate(kept):
            delta = (0.0, 0.0) if previous is None else (point[0] - previous[0], point[1] - previous[1])
            expected.append([*delta, point[2] - stroke[0][2], 1.0 if j == len(kept) - 1 else 0.0])
            previous = point
    features = iam_ondb.line_features(strokes)
    assert features.shape == (1 + 1 + 3 + 4 + 2, 4)
    np.testing.assert_allclose(features, np.array(expected), rtol=1e-6, atol=1e-5)


def test_features_draw_back_the_kept_points():
    rng = np.random.default_rng(1)
    strokes = [np.column_stack([rng.uniform(0, 100, (n, 2)), np.arange(n) / 100]) for n in (4, 7, 1)]
    features = iam_ondb.line_features(strokes)
    mean, std = np.array([1.0, -2.0, 0.5, 0.3]), np.array([3.0, 2.0, 0.1, 0.4])
    drawn = iam_ondb.strokes_from_features((features - mean) / std, mean, std)
    origin = strokes[0][0, :2]
    assert len(drawn) == 3
    for got, stroke in zip(drawn, strokes):
        np.testing.assert_allclose(got, stroke[::2, :2] - origin, rtol=0, atol=1e-3)


def test_load_assigns_the_papers_splits_and_removes_a08_551z(tree):
    splits = iam_ondb.load(tree)
    assert set(splits) == {"train", "valid", "test"}
    # The line with '%' is skipped and board a08-551z ("gone") is removed.
    assert _texts(splits["train"]) == ["Hi there.", "ok"]
    assert _texts(splits["valid"]) == ["Yes!", "No? [1]"]
    assert _texts(splits["test"]) == ["It's 3:45", "a/b & c"]
    for items in splits.values():
        for features, labels in items:
            assert features.dtype == np.float32 and features.ndim == 2 and features.shape[1] == 4
            assert labels.dtype == np.int32


def test_load_standardises_every_split_with_training_statistics(tree):
    splits = iam_ondb.load(tree)
    train_raw = np.concatenate([_BROKEN_LINE_FEATURES, _OK_LINE_FEATURES])
    mean, std = train_raw.mean(axis=0), train_raw.std(axis=0)
    expected = {
        "train": [_BROKEN_LINE_FEATURES, _OK_LINE_FEATURES],
        "valid": [_SHORT_LINE_FEATURES, _OK_LINE_FEATURES],
        "test": [_OK_LINE_FEATURES, _BROKEN_LINE_FEATURES],
    }
    for name, raws in expected.items():
        assert len(splits[name]) == len(raws)
        for (features, _), raw in zip(splits[name], raws):
            np.testing.assert_allclose(features, (raw - mean) / std, rtol=1e-5, atol=1e-5)


def test_out_of_alphabet_line_is_reported_and_skipped(tree, caplog):
    with caplog.at_level(logging.WARNING):
        iam_ondb.load(tree)
    report = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 1 lines" in report
    assert "a01-000u-02" in report and "'%'" in report
    # the tiny tree is not the paper's corpus: each split's size is set beside the paper's
    assert "IAM-OnDB train split has 2 lines; the paper's has 5355" in report
    assert "valid split has 2 lines; the paper's has 2956" in report and "test split has 2 lines" in report


def test_missing_transcription_file_is_an_error(tree):
    next((tree / "ascii").rglob("a02-010x.txt")).unlink()
    with pytest.raises(ValueError, match=r"missing transcription.*a02-010x\.txt.*a02-010x-01"):
        iam_ondb.load(tree)


def test_stroke_file_without_transcription_line_is_an_error(tree):
    folder = next((tree / "lineStrokes").rglob("a01-000u-01.xml")).parent
    (folder / "a01-000u-04.xml").write_text(_xml(_OK_LINE))
    with pytest.raises(ValueError, match=r"a01-000u-04.*has 3 lines"):
        iam_ondb.load(tree)


def test_broken_xml_is_an_error_naming_the_file(tree):
    path = next((tree / "lineStrokes").rglob("a04-030y-02.xml"))
    path.write_text(path.read_text()[:200])
    with pytest.raises(ValueError, match=r"a04-030y-02\.xml: broken stroke XML"):
        iam_ondb.load(tree)


def test_point_without_time_is_an_error(tree):
    path = next((tree / "lineStrokes").rglob("a02-010x-01.xml"))
    path.write_text(path.read_text().replace(' time="1.01"', "", 1))
    with pytest.raises(ValueError, match=r"a02-010x-01\.xml: stroke 0 has a point without"):
        iam_ondb.load(tree)


def test_missing_split_list_or_folder_is_an_error(tree):
    (tree / "testset_t.txt").unlink()
    with pytest.raises(FileNotFoundError, match="testset_t.txt"):
        iam_ondb.load(tree)
    with pytest.raises(FileNotFoundError, match="lineStrokes"):
        iam_ondb.load(tree / "nowhere")


def test_line_in_two_splits_is_an_error(tree):
    with open(tree / "testset_f.txt", "a") as f:
        f.write("a02-010x\n")
    with pytest.raises(ValueError, match="a02-010x-01 is listed in both valid and test"):
        iam_ondb.load(tree)
