"""Tests of the report and its figures, on trial stores fabricated with planted effects."""

import json
import pathlib
import re
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib import image as mimage

from odyssey.analysis import plots, report, stats

_VARIANTS = ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")
_N_TREES = 25


def _make_store(workdir, task, per_variant, dominant, worse, seed, source="standin", variants=_VARIANTS):
    """A run directory with config.json and a store whose metric has a planted structure.

    The test metric is dominated by `dominant` ("learning_rate": a parabola in log10 lr,
    "hidden_size": a slope in log10 hidden size) and the variant `worse` adds 15 to it.
    The first two trials of NOAF diverge, the first before any metric, the second after its best epoch.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps({
        "task": task, "data": {"source": source, "path": "/somewhere/jsb.pickle" if source == "standard" else None},
        "search": {"variants": list(variants), "num_trials": per_variant}}))
    rng = np.random.default_rng(seed)
    con = sqlite3.connect(workdir / "trials.sqlite")
    con.execute("CREATE TABLE trials (trial_id INTEGER PRIMARY KEY, task TEXT, variant TEXT, hidden_size INTEGER, "
                "learning_rate REAL, momentum REAL, input_noise REAL, nesterov INTEGER, clip INTEGER, seed INTEGER, "
                "status TEXT, epochs INTEGER, best_epoch INTEGER, val_metric REAL, test_metric REAL, "
                "n_params INTEGER, train_seconds REAL)")
    con.execute("CREATE TABLE epochs (trial_id INTEGER, epoch INTEGER, train_loss REAL, val_metric REAL, "
                "seconds REAL)")
    tid = 0
    for v in variants:
        for k in range(per_variant):
            lr, mom = 10 ** rng.uniform(-6, -2), 1 - 10 ** rng.uniform(-2, 0)
            hid, noise = int(round(10 ** rng.uniform(np.log10(20), np.log10(200)))), rng.uniform(0, 1)
            flags = (int(rng.integers(2)), int(rng.integers(2))) if task == "timit" else (None, None)
            if dominant == "learning_rate":
                metric = 30 + 10 * (np.log10(lr) + 3) ** 2 + 2 * np.log10(hid)
            else:
                metric = 30 + 40 * np.log10(hid) + 0.5 * np.log10(lr)
            metric += noise + rng.normal(0, 0.5) + (15 if v == worse else 0)
            # NOAF's first trial diverged before its first finite validation (no metric), its second after its
            # best epoch (which it keeps).
            diverged, unscored = v == "NOAF" and k < 2, v == "NOAF" and k == 0
            con.execute("INSERT INTO trials VALUES (" + ",".join("?" * 17) + ")", (
                tid, task, v, hid, lr, mom, noise, *flags, k, "diverged" if diverged else "done", 20, 17,
                None if unscored else metric + rng.normal(0, 0.3), None if unscored else metric,
                4 * hid * (hid + 40), hid * 0.05 * (1 + 3 * noise) * rng.uniform(0.9, 1.1)))
            tid += 1
    con.commit()
    con.close()
    return workdir


def _table(md, heading):
    """Rows (lists of cells) of the first Markdown table after the first heading containing `heading`."""
    lines = md.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("#") and heading in line)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def _pct(cell):
    return float(cell.rstrip(" %")) / 100


def _colour_share(png, colour, palette):
    """Share of the pixels of `colour` among the pixels of any colour of `palette` (within 3/255)."""
    img = mimage.imread(png)[..., :3]
    def near(c):
        return (np.abs(img - np.array(mcolors.to_rgb(c))) <= 3 / 255).all(axis=-1)
    counts = {c: int(near(c).sum()) for c in palette}
    return counts[colour] / sum(counts.values())


_PALETTE = (list(plots.HYPERPARAMETER_COLORS.values()) + list(plots.PAIR_COLORS)
            + [plots.OTHER_PAIRS_COLOR, plots.HIGHER_ORDER_COLOR])


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """Hundreds of TIMIT-like trials: learning rate dominant, NFG much worse."""
    workdir = _make_store(tmp_path_factory.mktemp("a"), "timit", 30, "learning_rate", "NFG", seed=0)
    md = report.write_report(workdir, n_trees=_N_TREES)
    return workdir, md.read_text()


def test_report_states_the_data_first_and_shows_the_planted_variant_effect(run_a):
    workdir, md = run_a
    first = [line for line in md.splitlines() if line.strip()][:2]
    assert first[0].startswith("# odyssey report: TIMIT")
    assert "stand-in" in first[1] and "not comparable" in first[1]
    assert "Training departs" not in md  # its config.json trains as the paper did
    rows = _table(md, "top 10 %")
    verdicts = {r[0]: r[8] for r in rows}
    assert set(verdicts) == set(_VARIANTS) - {"V"}
    assert verdicts["NFG"] == "worse"
    assert [v for v, x in verdicts.items() if x == "worse"] == ["NFG"]
    nfg = next(r for r in rows if r[0] == "NFG")
    assert nfg[1] == "3" and float(nfg[3]) > 10 and float(nfg[6]) < 0.05
    assert nfg[9] == "worse" and nfg[10] == "yes"   # the paper's verdict beside ours
    counts = {r[0]: r[1:] for r in _table(md, "Trials per variant")}
    assert counts["NOAF"] == ["28", "2", "1", "0", "200"] and counts["V"] == ["30", "0", "0", "0", "200"]
    # The diverged NOAF trial with a best epoch's metric is analysed, the one without is not.
    every = {r[0]: r for r in _table(md, "all finished trials")}
    assert every["NOAF"][1] == "29" and every["NFG"][1] == "30"


def test_report_shows_the_planted_importance_beside_the_paper(run_a):
    _, md = run_a
    rows = {r[0]: r for r in _table(md, "fANOVA")}
    lr = _pct(rows["log10 learning rate"][1])
    assert lr > 0.8
    others = [_pct(r[1]) for name, r in rows.items() if name != "log10 learning rate"]
    assert max(others) < 0.05
    assert "2/3" in rows["log10 learning rate"][3] and "1 %" in rows["log10(1 - momentum)"][3]
    # Nesterov and clipping vary in a TIMIT store, so they are columns of the forest.
    assert "Nesterov momentum (0/1)" in rows and "gradient clipping (0/1)" in rows
    # The training time was planted on hidden size and noise, not on learning rate.
    assert _pct(rows["log10 hidden size"][2]) > 0.4 and _pct(rows["log10 learning rate"][2]) < 0.05
    # The fractions are shares of one variance: the main effects and pairs never sum past 1, so the higher
    # orders' rest is not negative (a fraction counted twice, or not divided by the total, would break this).
    # (each cell is rounded to 0.1 %)
    assert sum(_pct(r[1]) for name, r in rows.items() if not name.startswith("higher order")) <= \
        1 + 0.0005 * len(rows)
    assert _pct(rows["higher order (the rest)"][1]) >= 0


def test_every_figure_exists_is_a_picture_and_is_in_both_reports(run_a):
    workdir, md = run_a
    names = {"fig2_top10.png", "fig7_all.png", "fig3_importance.png", "fig4_marginals.png",
             "fig5_lr_hidden.png", "fig8_pairs_timit.png", "fig9_11_time_timit.png"}
    assert {p.name for p in (workdir / "figures").iterdir()} == names
    html = (workdir / "report.html").read_text()
    assert len(re.findall(r"src='data:image/png;base64,", html)) == len(names)
    assert "stand-in" in html.split("<h2>")[0]
    for name in names:
        path = workdir / "figures" / name
        assert path.stat().st_size > 10_000
        assert f"(figures/{name})" in md
        img = mimage.imread(path)
        assert img.ndim == 3 and min(img.shape[:2]) > 300
        assert img[..., :3].std() > 0.05   # not a blank canvas


def test_importance_pie_shows_the_fractions_as_areas(run_a, tmp_path):
    workdir, md = run_a
    lr = _pct({r[0]: r for r in _table(md, "fANOVA")}["log10 learning rate"][1])
    red = plots.HYPERPARAMETER_COLORS["learning_rate"]
    blue = plots.HYPERPARAMETER_COLORS["hidden_size"]
    share_a = _colour_share(workdir / "figures" / "fig3_importance.png", red, _PALETTE)
    # Pie areas against the table, within antialiasing and the legend's colour patches.
    assert share_a == pytest.approx(lr, abs=0.03)
    # A second store with hidden size dominant gives a different picture.
    b = _make_store(tmp_path / "b", "jsb", 20, "hidden_size", "NOAF", seed=1)
    analysis = report.analyse_task(stats.load_trials(b / "trials.sqlite"), "jsb", n_trees=_N_TREES)
    hidden = analysis.fractions[(analysis.names.index("hidden_size"),)]
    assert hidden > 0.8 and analysis.names == ["learning_rate", "momentum", "hidden_size", "input_noise"]
    png = plots.importance_pies([analysis], tmp_path / "pie_b.png")
    assert _colour_share(png, blue, _PALETTE) == pytest.approx(hidden, abs=0.03)
    assert _colour_share(png, red, _PALETTE) < 0.1 < 0.7 < share_a


def test_a_saved_figure_cuts_off_nothing_drawn(tmp_path):
    """A label that sticks out of the figure (as a pie's outer labels can) is saved whole: no ink touches the
    image's border, which a cut label would."""
    fig = plots.new_figure(6.0, 4.0)
    fig.set_layout_engine("none")  # the axes where they are put, the labels outside the figure
    ax = fig.add_axes((0.1, 0.1, 0.8, 0.8))
    ax.plot([0, 1], [0, 1])
    ax.text(-0.45, 0.5, "momentum x hidden size 16.3 %", transform=ax.transAxes, fontsize=12)
    ax.text(1.02, -0.3, "a label below and right of the axes", transform=ax.transAxes, fontsize=12)
    img = mimage.imread(plots.save(fig, tmp_path / "edge.png"))[..., :3]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    assert (border > 0.99).all()
    dark = (img < 0.5).all(axis=2)  # the text's ink is in the picture
    assert dark[:, : img.shape[1] // 4].any() and dark[-img.shape[0] // 4:, -img.shape[1] // 4:].any()


def test_a_report_cut_while_written_leaves_the_one_before(tmp_path, monkeypatch):
    """A write that fails half way (a full disk, a kill) leaves the previous report.md and report.html whole."""
    workdir = _make_store(tmp_path / "r", "jsb", 4, "learning_rate", "NFG", seed=4)
    report.write_report(workdir, n_trees=5)
    before = {name: (workdir / name).read_text() for name in ("report.md", "report.html")}
    real = pathlib.Path.write_text

    def half_then_fail(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        report.write_report(workdir, n_trees=5)
    monkeypatch.undo()
    assert {name: (workdir / name).read_text() for name in before} == before


def test_quick_study_still_reports(tmp_path):
    # The README's quick study: 9 variants x 4 trials; top 10 % means 2 per variant.
    quick = _make_store(tmp_path / "quick", "jsb", 4, "learning_rate", "NFG", seed=2, source="standard")
    md = report.write_report(quick, n_trees=10).read_text()
    assert "standard JSB Chorales" in md.split("\n## ")[0] and "(jsb.pickle)" in md
    assert all(r[1] == "2" for r in _table(md, "top 10 %"))
    assert len(list((quick / "figures").iterdir())) == 7


def test_command_line_reports_a_tiny_study_without_fanova(tmp_path):
    # Fewer than 10 finished trials: no fANOVA, and a variant with one trial gets no test.
    tiny = _make_store(tmp_path / "tiny", "iam_online", 3, "learning_rate", "NFG", seed=3,
                       variants=("V", "NFG", "CIFG"))
    con = sqlite3.connect(tiny / "trials.sqlite")
    con.execute("DELETE FROM trials WHERE variant = 'CIFG' AND seed > 0")
    con.commit()
    con.close()
    config = json.loads((tiny / "config.json").read_text())
    (tiny / "config.json").write_text(json.dumps({**config, "train": {"data_order": "shared"}}))
    done = subprocess.run([sys.executable, "-m", "experiments.report", f"--workdir={tiny}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    md = (tiny / "report.md").read_text()
    assert md.startswith("# odyssey report: IAM-OnDB")
    # the run's departure from the paper's training, right after the data statement
    paragraphs = md.split("\n\n")
    assert paragraphs[1].startswith("**Data: ") and paragraphs[2].startswith("**Training departs from the paper's:**")
    assert "fANOVA skipped: 7 finished trial(s)" in md
    cifg = next(r for r in _table(md, "top 10 %") if r[0] == "CIFG")
    assert cifg[8].startswith("no test: 1 trial(s) with a metric")
    assert {p.name for p in (tiny / "figures").iterdir()} == {
        "fig2_top10.png", "fig7_all.png", "fig3_importance.png", "fig9_11_time_iam_online.png"}
    assert (tiny / "report.html").read_text().count("data:image/png;base64,") == 4


def _broken(case, tmp_path):
    run = _make_store(tmp_path / "run", "jsb", 2, "learning_rate", "NFG", seed=4)
    if case == "no run":
        return tmp_path / "nothing", [], "nothing/config.json not found: is "
    if case == "config not JSON":
        (run / "config.json").write_text("{task: jsb")
        return run, [], "run/config.json is not JSON ("
    if case == "store not SQLite":
        (run / "trials.sqlite").write_bytes(b"not a database, " * 64)
        return run, [], "run/trials.sqlite is not a readable SQLite trial store (file is not a database)"
    if case == "no trials table":
        con = sqlite3.connect(run / "trials.sqlite")
        con.execute("DROP TABLE trials")
        con.commit()
        con.close()
        return run, [], "run/trials.sqlite has no `trials` table"
    return run, ["--n_trees=0"], "--n_trees=0: give at least one tree per forest"


@pytest.mark.parametrize("case", ["no run", "config not JSON", "store not SQLite", "no trials table", "no trees"])
def test_command_line_says_in_one_line_why_it_cannot_report(case, tmp_path):
    workdir, flags, why = _broken(case, tmp_path)
    done = subprocess.run([sys.executable, "-m", "experiments.report", f"--workdir={workdir}", *flags],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("report: error: ") and why in last, done.stderr
    assert "Traceback" not in done.stderr and not (workdir / "report.md").exists()


@pytest.mark.parametrize("source,expected", [
    ("standard", "the standard JSB"),
    ("standin", "the offline stand-in for JSB"),
    ("synthetic", "synthetic random piano rolls"),
    ("real", "the real JSB"),
    ("mystery", "unknown (config.json says source='mystery')"),
])
def test_data_statement_names_each_source(source, expected):
    sentence = report.data_statement({"task": "jsb", "data": {"source": source, "path": None}})
    assert expected.lower() in sentence.lower()
    assert sentence.count("**") == 2


@pytest.mark.parametrize("train,expected", [
    ({}, None),
    ({"recurrent_dtype": "float32", "data_order": "per_trial"}, None),
    ({"recurrent_dtype": "bfloat16"}, ["bfloat16 operands"]),
    ({"data_order": "shared"}, ["one data order shared by all trials"]),
    ({"data_order": "strata"}, ["kept to strata of 8 training sequences of similar length"]),
    ({"data_order": "strata", "order_stratum": 4}, ["kept to strata of 4 training sequences"]),
    ({"order_stratum": 4}, None),
    ({"recurrent_dtype": "bfloat16", "data_order": "shared"}, ["bfloat16 operands", "one data order shared"]),
    ({"matmul_precision": "float32"}, None),
    ({"matmul_precision": "tensorfloat32"}, ["matrix products ran at tensorfloat32 precision"]),
    ({"recurrent_dtype": "bfloat16", "data_order": "shared", "matmul_precision": "tensorfloat32"},
     ["bfloat16 operands", "one data order shared", "tensorfloat32 precision"]),
])
def test_training_statement_names_each_departure_from_the_paper(train, expected):
    from odyssey import search
    assert report.ORDER_STRATUM == search.ORDER_STRATUM
    sentence = report.training_statement({"task": "jsb", "train": train})
    if expected is None:
        assert sentence is None
    else:
        assert sentence.startswith("**Training departs from the paper's:**")
        assert all(e in sentence for e in expected) and sentence.count(";") == len(expected) - 1


def test_a_constant_test_metric_skips_the_fanova_with_its_reason(tmp_path):
    """Every finished trial at one test metric: no variance to apportion, so no fractions (they would read 0 %
    each and 'higher order 100 %')."""
    workdir = _make_store(tmp_path, "jsb", 5, "learning_rate", "NFG", seed=3)
    con = sqlite3.connect(workdir / "trials.sqlite")
    con.execute("UPDATE trials SET test_metric = 7.25 WHERE test_metric IS NOT NULL")
    con.commit()
    con.close()
    a = report.analyse_task(stats.load_trials(workdir / "trials.sqlite"), "jsb", n_trees=4)
    assert a.fractions is None and a.metric_fanova is None
    assert a.fanova_note == f"fANOVA skipped: the test metric is 7.25 in all {len(a.done)} finished trials, so " \
                            "there is no variance to apportion."
    assert len(a.done) == 44  # 9 x 5, less NOAF's trial without a metric


def test_the_fanova_integrates_over_the_search_space_box_from_config_json(tmp_path, monkeypatch):
    """With config.search.space the marginals' box is the space's in the encoded units (hand values), widened
    to a trial outside it; without, the trials' range. write_report reads the space from config.json."""
    workdir = _make_store(tmp_path, "jsb", 5, "learning_rate", "NFG", seed=3)
    space = {"hidden_size": ["log_uniform_int", 20, 200], "learning_rate": ["log_uniform", 1e-6, 1e-2],
             "momentum": ["one_minus_log_uniform", 0.01, 1.0], "input_noise": ["uniform", 0.0, 1.0]}
    trials = stats.load_trials(workdir / "trials.sqlite")
    boxed = report.analyse_task(trials, "jsb", n_trees=4, space=space)
    np.testing.assert_allclose(boxed.metric_fanova.bounds, [[-6, -2], [-2, 0], [np.log10(20), np.log10(200)], [0, 1]],
                               rtol=1e-12)
    np.testing.assert_array_equal(boxed.time_fanova.bounds, boxed.metric_fanova.bounds)
    X, _ = stats.encode_hyperparameters(boxed.done)
    plain = report.analyse_task(trials, "jsb", n_trees=4)
    np.testing.assert_array_equal(plain.metric_fanova.bounds, np.stack([X.min(0), X.max(0)], 1))
    assert (plain.metric_fanova.bounds[:, 1] - plain.metric_fanova.bounds[:, 0] <
            boxed.metric_fanova.bounds[:, 1] - boxed.metric_fanova.bounds[:, 0]).all()
    con = sqlite3.connect(workdir / "trials.sqlite")
    con.execute("UPDATE trials SET learning_rate = 1e-7 WHERE trial_id = 3")
    con.commit()
    con.close()
    config = json.loads((workdir / "config.json").read_text())
    config["search"]["space"] = space
    (workdir / "config.json").write_text(json.dumps(config))
    seen = []
    analyse = report.analyse_task
    monkeypatch.setattr(report, "analyse_task", lambda *a, **k: seen.append(k) or analyse(*a, **k))
    md = report.write_report(workdir, n_trees=4).read_text()
    assert "exact marginals over the search space's box" in md and [k["space"] for k in seen] == [space]
    wide = report.analyse_task(stats.load_trials(workdir / "trials.sqlite"), "jsb", n_trees=4, space=space)
    assert wide.metric_fanova.bounds[0, 0] == pytest.approx(-7.0) and wide.metric_fanova.bounds[0, 1] == -2.0
