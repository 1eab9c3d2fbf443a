"""A run's analysis as one report: report.md and report.html (figures inline) in the run's directory."""

import base64
import dataclasses
import html
import math
import pathlib
import re

import numpy as np
from absl import logging

from odyssey import store
from odyssey.analysis import fanova, paper, plots, plots_fanova, stats

__all__ = ["TaskAnalysis", "MIN_FANOVA_TRIALS", "analyse_task", "data_statement", "write_report"]

# Below this many finished trials a forest of the search space says nothing useful.
MIN_FANOVA_TRIALS = 10


@dataclasses.dataclass
class TaskAnalysis:
    """Everything the report and the figures need about one task of a run.

    Attributes:
        task: "jsb", "timit" or "iam_online".
        trials: all of the task's trials, any status.
        done: the finished trials with finite metrics.
        counts: `stats.status_counts` of the task.
        top: `stats.compare_variants(..., "top")`: (vanilla, comparisons).
        all: `stats.compare_variants(..., "all")`.
        names: the fANOVA columns (keys of `stats.HYPERPARAMETERS`).
        metric_fanova: `fanova.Fanova` of the test metric, or None when skipped.
        time_fanova: `fanova.Fanova` of the training time, or None.
        fractions: `metric_fanova.fractions()` or None.
        time_fractions: `time_fanova.fractions()` or None.
        fanova_note: why the fANOVA was skipped, or "".
    """

    task: str
    trials: stats.Trials
    done: stats.Trials
    counts: dict
    top: tuple
    all: tuple
    names: list
    metric_fanova: object
    time_fanova: object
    fractions: dict
    time_fractions: dict
    fanova_note: str


def analyse_task(trials, task, n_trees=100, seed=0, space=None):
    """Significance tests and fANOVA for one task.

    Args:
        trials: `stats.Trials` (any tasks; those of `task` are used).
        task: the task's name.
        n_trees: trees per forest.
        seed: the forests' seed.
        space: config.search.space (config.json's), whose box the fANOVA's marginals integrate over
            (`stats.space_bounds`), widened to any trial outside it; None, or a column it does not bound:
            the trials' range.

    Returns:
        `TaskAnalysis`.
    """
    mine = trials.where(trials["task"] == task)
    done = mine.where(stats.scored(mine))
    names, fan, tfan, frac, tfrac, note = [], None, None, None, None, ""
    if len(done) < MIN_FANOVA_TRIALS or np.ptp(done["test_metric"]) == 0:
        note = (f"fANOVA skipped: {len(done)} finished trial(s), fewer than {MIN_FANOVA_TRIALS}; "
                "a forest over the search space needs more." if len(done) < MIN_FANOVA_TRIALS else
                f"fANOVA skipped: the test metric is {_fmt(done['test_metric'][0], 4)} in all {len(done)} "
                "finished trials, so there is no variance to apportion.")
        if len(done):
            names = stats.encode_hyperparameters(done)[1]
    else:
        X, names = stats.encode_hyperparameters(done)
        # The search space's box where config.search.space gives it, widened to any trial outside it (a store
        # drawn from another space); the trials' range elsewhere.
        reached = np.stack([X.min(axis=0), X.max(axis=0)], axis=1)
        box = stats.space_bounds(space, names)
        box = np.where(np.isfinite(box), box, reached)
        box = np.stack([np.minimum(box[:, 0], reached[:, 0]), np.maximum(box[:, 1], reached[:, 1])], axis=1)
        logging.info("%s: fANOVA of the test metric over %d trials, %d trees", task, len(done), n_trees)
        fan = fanova.Fanova(X, done["test_metric"], n_trees=n_trees, seed=seed, bounds=box)
        frac = fan.fractions()
        secs = done["train_seconds"]
        ok = np.isfinite(secs)
        if ok.sum() >= MIN_FANOVA_TRIALS:
            logging.info("%s: fANOVA of the training time over %d trials", task, int(ok.sum()))
            tfan = fanova.Fanova(X[ok], secs[ok], n_trees=n_trees, seed=seed, bounds=fan.bounds)
            tfrac = tfan.fractions()
    return TaskAnalysis(task, mine, done, stats.status_counts(mine), stats.compare_variants(mine, "top"),
                        stats.compare_variants(mine, "all"), names, fan, tfan, frac, tfrac, note)


def data_statement(config):
    """One sentence saying which data the run used, from config.json's "data" section."""
    data, task = config.get("data") or {}, config.get("task", "?")
    source, path = data.get("source"), data.get("path")
    name = paper.TASK_NAMES.get(task, task)
    where = f" ({pathlib.Path(path).name})" if path else ""
    if source == "standard":
        return f"**Data: the standard {name} file{where}**, as used by the paper."
    if source == "standin":
        return (f"**Data: the offline stand-in for {name}, not the paper's corpus.** Its numbers show that "
                "the pipeline works; they are not comparable with the paper's.")
    if source == "synthetic":
        return ("**Data: synthetic random piano rolls (the test configuration), not music.** Its numbers only "
                "exercise the pipeline.")
    if source == "real":
        return f"**Data: the real {name} corpus{where}**, as used by the paper."
    return f"**Data: unknown (config.json says source={source!r}).**"


# As odyssey.search.ORDER_STRATUM, for a config without train.order_stratum (the analysis stays free of JAX,
# which the search module imports).
ORDER_STRATUM = 8


def training_statement(config):
    """One sentence naming the config's departures from the paper's training (config.json's "train" section),
    or None when it trains as the paper did."""
    train = config.get("train") or {}
    departures = []
    if train.get("recurrent_dtype", "float32") != "float32":
        departures.append(f"the LSTM loops' recurrent products took {train['recurrent_dtype']} operands "
                          "(sums and weights in float32)")
    if train.get("data_order", "per_trial") == "shared":
        departures.append("every trial visited the training sequences in one data order shared by all trials "
                          "(a fresh shuffle each epoch, the same for all), not in its own")
    elif train.get("data_order", "per_trial") == "strata":
        departures.append(f"each trial's data order (a fresh shuffle of its own each epoch) kept to strata of "
                          f"{train.get('order_stratum', ORDER_STRATUM)} training sequences of similar length that "
                          "one order shared by all trials picked for each update, so trials trained together "
                          "presented sequences of similar length at once")
    if train.get("matmul_precision", "float32") != "float32":
        departures.append(f"float32 matrix products ran at {train['matmul_precision']} precision (inputs rounded "
                          "to a 10-bit mantissa on GPUs with TF32 tensor cores)")
    if not departures:
        return None
    return "**Training departs from the paper's:** " + "; ".join(departures) + "."


def _fmt(x, digits=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}g}"


def _pct(x):
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f} %"


def _md_row(cells):
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _html_inline(text):
    """Escapes text for HTML, keeping the one Markdown mark the report uses: **bold**."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


class _Doc:
    """A list of blocks rendered both as Markdown and as HTML."""

    def __init__(self):
        self.blocks = []

    def h(self, level, text):
        self.blocks.append(("h", level, text))

    def p(self, text):
        self.blocks.append(("p", text))

    def table(self, header, rows):
        self.blocks.append(("table", header, [[str(c) for c in r] for r in rows]))

    def figure(self, path, caption):
        self.blocks.append(("figure", path, caption))

    def markdown(self, root):
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "table":
                out.append(_md_row(b[1]))
                out.append("|" + "---|" * len(b[1]))
                out.extend(_md_row(r) for r in b[2])
            else:
                rel = pathlib.Path(b[1]).relative_to(root).as_posix()
                out.append(f"![{b[2]}]({rel})\n\n*{b[2]}*")
            out.append("")
        return "\n".join(out)

    def html(self, title):
        inline = _html_inline
        out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
               "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 6px}"
               "img{max-width:100%}</style></head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{inline(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{inline(b[1])}</p>")
            elif b[0] == "table":
                out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in b[1]) + "</tr>")
                out.extend("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in b[2])
                out.append("</table>")
            else:
                data = base64.b64encode(pathlib.Path(b[1]).read_bytes()).decode("ascii")
                out.append(f"<figure><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'>"
                           f"<figcaption>{inline(b[2])}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out)


def _best_section(doc, analyses):
    doc.h(2, "Best trial per task, beside the paper's best")
    doc.p("Ours: the trial with the lowest validation metric, and its test metric; the lowest test metric "
          "of any trial is given too. The paper reports its best test result per task.")
    header = ["task", "metric", "ours: test (val)", "variant", "hidden size", "learning rate", "momentum",
              "input noise", "Nesterov / clip", "epochs (best)", "lowest test of any trial", "paper's best"]
    rows = []
    for a in analyses:
        best = paper.BEST.get(a.task, {}).get("text", "-")
        if not len(a.done):
            rows.append([a.task, stats.METRIC_NAMES.get(a.task, "?"), "no finished trial"] + ["-"] * 8 + [best])
            continue
        k = int(np.argmin(a.done["val_metric"]))
        d = {c: a.done[c][k] for c in a.done.columns}
        flags = ("-" if not (np.isfinite(d["nesterov"]) and np.isfinite(d["clip"]))
                 else f"{int(d['nesterov'])} / {int(d['clip'])}")
        lowest = int(np.argmin(a.done["test_metric"]))
        rows.append([a.task, stats.METRIC_NAMES.get(a.task, "?"),
                     f"{_fmt(d['test_metric'], 4)} ({_fmt(d['val_metric'], 4)})", d["variant"],
                     _fmt(d["hidden_size"]), _fmt(d["learning_rate"]), _fmt(d["momentum"]),
                     _fmt(d["input_noise"]), flags, f"{_fmt(d['epochs'])} ({_fmt(d['best_epoch'])})",
                     f"{_fmt(a.done['test_metric'][lowest], 4)} ({a.done['variant'][lowest]})", best])
    doc.table(header, rows)


def _counts_section(doc, a):
    doc.h(3, "Trials per variant")
    doc.p("Only finished trials are analysed. A trial that diverged after a finite validation metric keeps its "
          "best epoch's parameters and metrics, as early stopping would have kept them (the paper excluded no "
          "trial); one that diverged before has no metric (`diverged` counts both, `no metric` the second). Many "
          "divergences in one variant are themselves a finding.")
    unscored = a.trials.where(np.isin(a.trials["status"], ("done", "diverged")) & ~stats.scored(a.trials))
    rows = [[v, c["done"], c["diverged"], int((unscored["variant"] == v).sum()), c["running"] + c["pending"],
             paper.TRIALS_PER_VARIANT] for v, c in a.counts.items()]
    doc.table(["variant", "done", "diverged", "no metric", "running or pending", "paper's trials"], rows)


def _significance_section(doc, a, subset):
    ref, comps = a.top if subset == "top" else a.all
    testable = sum(1 for c in comps if not c.note)
    which = ("top 10 % of each variant's trials by validation metric (Fig. 2)" if subset == "top"
             else "all finished trials (Fig. 7)")
    doc.h(3, f"Variants against vanilla: {which}")
    doc.p(f"Welch's t-test of the test metric against vanilla's, Bonferroni-corrected for the {testable} "
          f"variant(s) tested (8 in the paper), at p = 0.05. Lower is better: a positive difference means "
          f"the variant is worse. Vanilla: n = {ref.n}, mean {_fmt(ref.mean, 4)} +- {_fmt(ref.std)}, "
          f"mean parameter count {_fmt(ref.mean_params)}. The paper's column is its top-10 % verdict.")
    rows = []
    for c in comps:
        ours = c.verdict if not c.note else f"no test: {c.note}"
        theirs = paper.significance(c.variant, a.task) or "-"
        agree = "-" if c.note or theirs == "-" else ("yes" if theirs.startswith(c.verdict) else "no")
        rows.append([c.variant, c.n, f"{_fmt(c.mean, 4)} +- {_fmt(c.std)}", _fmt(c.diff, 3), _fmt(c.cohen_d, 3),
                     _fmt(c.p), _fmt(c.p_corrected), _fmt(c.mean_params), ours, theirs, agree])
    doc.table(["variant", "n", "test mean +- std", "diff to V", "Cohen's d", "p (Welch)", "p x m (Bonferroni)",
               "mean params", "ours", "paper", "agree"], rows)


def _importance_section(doc, a):
    doc.h(3, "Hyperparameter importance (fANOVA, Fig. 3)")
    if a.fractions is None:
        doc.p(a.fanova_note)
        return
    doc.p(f"Fraction of the variance of the predicted test metric (and of the training time) due to each "
          f"hyperparameter and pair: {len(a.metric_fanova.trees)} regression trees over the {len(a.done)} "
          f"finished trials of all variants, exact marginals over the search space's box (config.search.space; "
          f"the trials' range where it bounds no column), fractions per tree averaged. Encoding: "
          + ", ".join(stats.HYPERPARAMETERS[n] for n in a.names) + ". Paper: " + paper.IMPORTANCE_SUMMARY)
    rows = []
    short = {n: stats.HYPERPARAMETERS[n] for n in a.names}
    for (i,), f in sorted((k, v) for k, v in a.fractions.items() if len(k) == 1):
        t = a.time_fractions[(i,)] if a.time_fractions else None
        rows.append([short[a.names[i]], _pct(f), _pct(t), paper.IMPORTANCE.get(a.names[i], "-")])
    for (i, j), f in sorted(((k, v) for k, v in a.fractions.items() if len(k) == 2), key=lambda kv: -kv[1]):
        t = a.time_fractions[(i, j)] if a.time_fractions else None
        pair = {a.names[i], a.names[j]}
        theirs = paper.IMPORTANCE["pairs"] if pair == {"learning_rate", "hidden_size"} else "small"
        rows.append([f"{a.names[i]} x {a.names[j]}".replace("_", " "), _pct(f), _pct(t), theirs])
    higher = 1.0 - sum(a.fractions.values())
    thigher = 1.0 - sum(a.time_fractions.values()) if a.time_fractions else None
    rows.append(["higher order (the rest)", _pct(higher), _pct(thigher), "-"])
    doc.table(["component", "ours: test metric", "ours: training time", "paper (test metric)"], rows)
    singles = {a.names[k[0]]: v for k, v in a.fractions.items() if len(k) == 1}
    ranked = sorted(singles, key=singles.get, reverse=True)
    doc.p(f"Ours: most important is {ranked[0].replace('_', ' ')} ({_pct(singles[ranked[0]])}); learning rate above two thirds: "
          f"{'yes' if singles['learning_rate'] > 2 / 3 else 'no'} (paper: yes); momentum under 1 %: "
          f"{'yes' if singles['momentum'] < 0.01 else 'no'} (paper: yes).")


def _figures(analyses, figdir):
    """Draws every figure; returns (path, caption) pairs in the report's order."""
    figdir.mkdir(parents=True, exist_ok=True)
    out = []
    logging.info("drawing figures into %s", figdir)
    out.append((plots.boxplots(analyses, figdir / "fig2_top10.png", "top"),
                "Fig. 2: test metric of the top 10 % of trials per variant; colour = verdict against vanilla, "
                "grey bars = mean parameter count."))
    out.append((plots.boxplots(analyses, figdir / "fig7_all.png", "all"),
                "Fig. 7: the same over all finished trials."))
    out.append((plots.importance_pies(analyses, figdir / "fig3_importance.png"),
                "Fig. 3: fraction of the test metric's variance due to each hyperparameter, pair and higher order."))
    p = plots_fanova.marginals(analyses, figdir / "fig4_marginals.png")
    if p:
        out.append((p, "Fig. 4: predicted marginal test metric and training time, +-1 std over trees."))
    p = plots_fanova.lr_hidden(analyses, figdir / "fig5_lr_hidden.png")
    if p:
        out.append((p, "Fig. 5: learning rate x hidden size: predicted marginal and its pure interaction part."))
    for a in analyses:
        p = plots_fanova.pairs(a, figdir / f"fig8_pairs_{a.task}.png")
        if p:
            out.append((p, f"Fig. 8 ({a.task}): every pair of hyperparameters, marginal and interaction."))
    for a in analyses:
        p = plots.time_vs_metric(a, figdir / f"fig9_11_time_{a.task}.png")
        if p:
            out.append((p, f"Fig. 9-11 ({a.task}): training time against test metric per variant."))
    return out


def write_report(workdir, n_trees=100, seed=0):
    """Analyses a run's store and writes report.md, report.html and figures/ into it.

    Args:
        workdir: the run's directory (config.json, trials.sqlite).
        n_trees: trees per fANOVA forest.
        seed: the forests' seed.

    Returns:
        the path of report.md.
    """
    workdir = pathlib.Path(workdir)
    config = stats.read_config(workdir)
    trials = stats.load_trials(workdir / "trials.sqlite")
    tasks = [t for t in stats.TASKS if (trials["task"] == t).any()]
    tasks += sorted(set(trials["task"]) - set(tasks))
    if not tasks:
        tasks = [config["task"]]
    logging.info("report of %s: %d trials, tasks %s", workdir, len(trials), tasks)
    space = (config.get("search") or {}).get("space")
    analyses = [analyse_task(trials, t, n_trees=n_trees, seed=seed, space=space if t == config["task"] else None)
                for t in tasks]
    figures = _figures(analyses, workdir / "figures")

    doc = _Doc()
    title = "odyssey report: " + ", ".join(paper.TASK_NAMES.get(t, t) for t in tasks)
    doc.h(1, title)
    doc.p(data_statement(config))
    departures = training_statement(config)
    if departures:
        doc.p(departures)
    statuses = {s: int((trials["status"] == s).sum()) for s in ("done", "diverged", "running", "pending")}
    search = config.get("search") or {}
    doc.p(f"Run {workdir.name}: {len(trials)} trials in the store ({statuses['done']} done, "
          f"{statuses['diverged']} diverged, {statuses['running'] + statuses['pending']} unfinished); "
          f"config asks for {search.get('num_trials', '?')} trials per variant, variants "
          f"{', '.join(search.get('variants', [])) or '?'}. All metrics are lower-is-better.")
    _best_section(doc, analyses)
    for a in analyses:
        doc.h(2, f"{paper.TASK_NAMES.get(a.task, a.task)}: {stats.METRIC_NAMES.get(a.task, 'metric')}")
        _counts_section(doc, a)
        _significance_section(doc, a, "top")
        _significance_section(doc, a, "all")
        _importance_section(doc, a)
    doc.h(2, "Figures")
    for path, caption in figures:
        doc.figure(path, caption)
    md = workdir / "report.md"
    store.write_whole(md, doc.markdown(workdir))  # a kill leaves the old report or the new
    store.write_whole(workdir / "report.html", doc.html(title))
    logging.info("wrote %s, %s and %d figures", md, workdir / "report.html", len(figures))
    return md
