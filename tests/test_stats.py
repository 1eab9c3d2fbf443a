"""Tests of the store reader, top-k selection and Welch + Bonferroni tests against scipy."""

import math
import sqlite3

import numpy as np
import pytest
from scipy import stats as sps

from odyssey.analysis import stats

_SCHEMA = ("CREATE TABLE trials (trial_id INTEGER PRIMARY KEY, task TEXT, variant TEXT, hidden_size INTEGER, "
           "learning_rate REAL, momentum REAL, input_noise REAL, nesterov INTEGER, clip INTEGER, seed INTEGER, "
           "status TEXT, epochs INTEGER, best_epoch INTEGER, val_metric REAL, test_metric REAL, "
           "n_params INTEGER, train_seconds REAL)")


def _store(path, rows):
    con = sqlite3.connect(path)
    con.execute(_SCHEMA)
    con.executemany("INSERT INTO trials VALUES (" + ",".join("?" * 17) + ")", rows)
    con.commit()
    con.close()
    return path


def _row(tid, variant, val, test, status="done", lr=1e-3, mom=0.9, hid=50, noise=0.2, nes=None, clip=None):
    return (tid, "jsb", variant, hid, lr, mom, noise, nes, clip, tid, status, 10, 7,
            val, test, 1000 + tid, 3.5)


def test_welch_matches_scipy_and_bonferroni_multiplies_by_the_tested_count():
    v = np.array([10.0, 11.0, 12.0, 10.5, 11.5])
    samples = {
        "V": v,
        "NFG": np.array([14.0, 15.5, 13.0, 16.0, 14.5, 15.0]),     # clearly worse
        "NP": np.array([10.2, 11.9, 11.1, 10.4]),                   # same
        "CIFG": np.array([9.0, 9.5, 8.8, 9.2, 9.9, 9.1, 8.7]),      # better
        "NOG": np.array([30.0]),                                    # untestable
    }
    out = {c.variant: c for c in stats.welch_bonferroni(samples)}
    assert list(out) == ["NFG", "NP", "CIFG", "NOG"]
    m = 3  # NOG has one value and is not counted
    for name in ("NFG", "NP", "CIFG"):
        ref = sps.ttest_ind(samples[name], v, equal_var=False)
        c = out[name]
        assert c.t == pytest.approx(ref.statistic, rel=1e-12)
        assert c.p == pytest.approx(ref.pvalue, rel=1e-12)
        assert c.p_corrected == pytest.approx(min(1.0, ref.pvalue * m), rel=1e-12)
        assert c.significant == (ref.pvalue * m < 0.05)
        x = samples[name]
        assert c.diff == pytest.approx(x.mean() - v.mean(), rel=1e-12)
        sd = math.sqrt((np.var(x, ddof=1) + np.var(v, ddof=1)) / 2)
        assert c.cohen_d == pytest.approx((x.mean() - v.mean()) / sd, rel=1e-12)
    assert out["NFG"].verdict == "worse"
    assert out["NP"].verdict == "n.s."
    assert out["CIFG"].verdict == "better"
    assert out["NOG"].verdict == "no test" and "1 trial(s) with a metric" in out["NOG"].note
    assert math.isnan(out["NOG"].p) and not out["NOG"].significant


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")  # scipy, on vanilla's constant sample
def test_bonferroni_does_not_count_a_comparison_whose_test_is_undefined():
    """Vanilla and NIG constant at one value: their t-test is undefined, so only NFG's test counts (m = 1) and
    the report's 'corrected for the k variant(s) tested' names the factor actually applied."""
    samples = {"V": np.full(6, 5.0), "NIG": np.full(5, 5.0), "NFG": np.array([5.5, 6.0, 5.2, 5.9, 6.3])}
    out = {c.variant: c for c in stats.welch_bonferroni(samples)}
    assert out["NIG"].verdict == "no test" and "constant" in out["NIG"].note and math.isnan(out["NIG"].p_corrected)
    ref = sps.ttest_ind(samples["NFG"], samples["V"], equal_var=False)
    assert out["NFG"].p_corrected == pytest.approx(ref.pvalue, rel=1e-12)


def test_bonferroni_factor_can_be_fixed_to_the_papers_eight():
    samples = {"V": np.array([1.0, 2.0, 3.0]), "NIG": np.array([2.5, 3.5, 4.0, 3.0])}
    (c,) = stats.welch_bonferroni(samples, n_comparisons=8)
    ref = sps.ttest_ind(samples["NIG"], samples["V"], equal_var=False)
    assert c.p_corrected == pytest.approx(min(1.0, 8 * ref.pvalue), rel=1e-12)


def test_a_significance_that_bonferroni_removes():
    # p about 0.017: significant alone, not after multiplying by 8.
    v = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    x = v + 3.0
    p = sps.ttest_ind(x, v, equal_var=False).pvalue
    assert 0.05 / 8 < p < 0.05
    (c,) = stats.welch_bonferroni({"V": v, "NP": x}, n_comparisons=8)
    assert not c.significant and c.verdict == "n.s."
    (c,) = stats.welch_bonferroni({"V": v, "NP": x}, n_comparisons=1)
    assert c.significant and c.verdict == "worse"


def test_top_count_is_ten_percent_rounded_up_at_least_two():
    assert [stats.top_count(n) for n in (200, 199, 36, 25, 10, 4, 2, 1, 0)] == [20, 20, 4, 3, 2, 2, 2, 1, 0]


def test_load_and_top_trials_against_a_hand_sort(tmp_path):
    rng = np.random.default_rng(1)
    rows, tid = [], 0
    for v, n in (("V", 25), ("NFG", 12), ("NP", 3)):
        for _ in range(n):
            val = float(rng.uniform(0, 10))
            rows.append(_row(tid, v, val, val + 1))
            tid += 1
    rows.append(_row(tid, "NP", None, None, status="diverged"))
    rows.append(_row(tid + 1, "V", None, None, status="pending"))
    # V: 25 done and 6 diverged make 31 finished, whose top 10 % is 4 (of the 25 alone it would be 3)
    rows += [_row(tid + 2 + i, "V", None, None, status="diverged") for i in range(6)]
    # NFG: 12 done and 10 diverged, top 3; NP: 3 done and 1 diverged, top 2
    rows += [_row(tid + 8 + i, "NFG", None, None, status="diverged") for i in range(10)]
    path = _store(tmp_path / "trials.sqlite", rows)
    before = path.read_bytes()
    trials = stats.load_trials(path)
    assert path.read_bytes() == before
    assert len(trials) == len(rows)
    assert np.isnan(trials["val_metric"][trials["status"] == "diverged"]).all()
    top = stats.top_trials(trials)
    for v, k in (("V", 4), ("NFG", 3), ("NP", 2)):
        done = [r for r in rows if r[2] == v and r[10] == "done"]
        want = sorted(r[0] for r in sorted(done, key=lambda r: r[13])[:k])
        assert sorted(top["trial_id"][top["variant"] == v].astype(int).tolist()) == want
    counts = stats.status_counts(trials)
    assert counts["NP"] == {"done": 3, "diverged": 1, "running": 0, "pending": 0}
    assert counts["V"]["pending"] == 1 and counts["V"]["diverged"] == 6 and list(counts) == ["V", "NFG", "NP"]


def test_compare_variants_tests_the_selected_subsets(tmp_path):
    rng = np.random.default_rng(2)
    rows = []
    for tid in range(60):
        v = ("V", "NFG", "CIFG")[tid % 3]
        val = float(rng.uniform(0, 10))
        rows.append(_row(tid, v, val, val + (5 if v == "NFG" else 0) + float(rng.normal(0, 0.1))))
    trials = stats.load_trials(_store(tmp_path / "trials.sqlite", rows))
    ref, comps = stats.compare_variants(trials, "top")
    by = {c.variant: c for c in comps}

    def top(v):
        return sorted((r for r in rows if r[2] == v), key=lambda r: r[13])[:2]

    x, v = [r[14] for r in top("NFG")], [r[14] for r in top("V")]
    assert by["NFG"].p == pytest.approx(sps.ttest_ind(x, v, equal_var=False).pvalue, rel=1e-12)
    assert by["NFG"].mean_params == pytest.approx(np.mean([r[15] for r in top("NFG")]))
    assert ref.n == 2 and ref.mean == pytest.approx(np.mean(v))
    _, comps = stats.compare_variants(trials, "all")
    x_all = [r[14] for r in rows if r[2] == "NFG"]
    v_all = [r[14] for r in rows if r[2] == "V"]
    nfg = next(c for c in comps if c.variant == "NFG")
    assert nfg.n == 20
    assert nfg.p == pytest.approx(sps.ttest_ind(x_all, v_all, equal_var=False).pvalue, rel=1e-12)
    assert nfg.p_corrected == pytest.approx(min(1.0, 2 * nfg.p), rel=1e-12)


def test_encoding_follows_the_paper_and_adds_flags_only_when_they_vary(tmp_path):
    rows = [_row(0, "V", 1, 1, lr=1e-4, mom=0.99, hid=100, noise=0.5, nes=1, clip=0),
            _row(1, "V", 1, 1, lr=1e-2, mom=0.0, hid=20, noise=0.0, nes=0, clip=0)]
    trials = stats.load_trials(_store(tmp_path / "trials.sqlite", rows))
    X, names = stats.encode_hyperparameters(trials)
    assert names == ["learning_rate", "momentum", "hidden_size", "input_noise", "nesterov"]
    np.testing.assert_allclose(X[0], [-4, -2, 2, 0.5, 1], atol=1e-12)
    np.testing.assert_allclose(X[1], [-2, 0, np.log10(20), 0, 0], atol=1e-12)


def test_reading_a_wal_store_leaves_no_side_files(tmp_path):
    """The study's store is in WAL mode; reading it (the report) leaves the file as it was and no -wal or -shm
    files beside it, as after the study closed it."""
    path = _store(tmp_path / "trials.sqlite", [_row(0, "V", 1, 1), _row(1, "NP", 2, 2)])
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    con.close()
    before = path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.sqlite"]
    assert list(stats.load_trials(path)["variant"]) == ["V", "NP"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.sqlite"] and path.read_bytes() == before


def test_bad_stores_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        stats.load_trials(tmp_path / "none.sqlite")
    bad = tmp_path / "bad.sqlite"
    sqlite3.connect(bad).execute("CREATE TABLE trials (trial_id INTEGER, variant TEXT)").connection.close()
    with pytest.raises(ValueError, match="lacks columns"):
        stats.load_trials(bad)
    odd = _store(tmp_path / "odd.sqlite", [_row(0, "GRU", 1, 1)])
    with pytest.raises(ValueError, match="unknown variants"):
        stats.load_trials(odd)
    one = stats.load_trials(_store(tmp_path / "mom.sqlite", [_row(0, "V", 1, 1, mom=1.0)]))
    with pytest.raises(ValueError, match="momentum out of its domain in trials \\[0\\]"):
        stats.encode_hyperparameters(one)
    with pytest.raises(FileNotFoundError, match="config.json"):
        stats.read_config(tmp_path)


def test_space_bounds_are_the_search_space_box_in_the_encoded_units():
    """The configs' spaces (DESIGN §4) in fANOVA's units, by hand: log10 lr [-6, -2], log10(1 - momentum) [-2, 0],
    log10 hidden [log10 20, log10 200], noise [0, 1], TIMIT's two flags [0, 1]."""
    import importlib.util
    import json
    import pathlib

    def config_of(task):
        path = pathlib.Path(__file__).resolve().parents[1] / "configs" / f"{task}.py"
        spec = importlib.util.spec_from_file_location(f"_stats_config_{task}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()

    names = ["learning_rate", "momentum", "hidden_size", "input_noise", "nesterov", "clip"]
    for task, flags in (("jsb", False), ("timit", True)):
        space = json.loads(config_of(task).to_json())["search"]["space"]  # as config.json holds it
        box = stats.space_bounds(space, names)
        expected = [[-6, -2], [-2, 0], [math.log10(20), math.log10(200)], [0, 1]]
        expected += [[0, 1], [0, 1]] if flags else [[math.nan, math.nan]] * 2
        np.testing.assert_allclose(box, expected, rtol=1e-12, err_msg=task)
    # A uniform momentum is log10(1 - high) .. log10(1 - low); a learning rate drawn from 0 has no log10 bound,
    # nor a hyperparameter the space does not draw.
    box = stats.space_bounds({"momentum": ["uniform", 0.5, 0.99], "learning_rate": ["uniform", 0.0, 0.1]},
                             ["momentum", "learning_rate", "input_noise"])
    np.testing.assert_allclose(box, [[-2, math.log10(0.5)], [math.nan, math.nan], [math.nan, math.nan]], rtol=1e-12)
