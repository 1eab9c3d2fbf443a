"""The paper's figures of variant comparison and importance: Fig. 2, 7 (box plots), 3 (pies), 9-11 (time vs metric).

Figures are drawn on `matplotlib.figure.Figure` objects rendered by the Agg canvas,
so nothing here touches pyplot's global state or backend. Each function takes the
per-task analyses of `odyssey.analysis.report.analyse_task` and writes one PNG.
"""

import numpy as np
from matplotlib.backends import backend_agg
from matplotlib import figure as mpl_figure
from matplotlib import patches

from odyssey.analysis import paper, stats

__all__ = ["HYPERPARAMETER_COLORS", "PAIR_COLORS", "OTHER_PAIRS_COLOR", "HIGHER_ORDER_COLOR", "AXES",
           "new_figure", "log_ticks", "save", "pie_slices", "boxplots", "importance_pies", "time_vs_metric"]

# Fixed colours so that a slice can be recognised in the picture by its colour.
HYPERPARAMETER_COLORS = {
    "learning_rate": "#d62728",
    "hidden_size": "#1f77b4",
    "input_noise": "#2ca02c",
    "momentum": "#ff7f0e",
    "nesterov": "#9467bd",
    "clip": "#8c564b",
}
PAIR_COLORS = ("#f4b6c2", "#aec7e8", "#c7e9c0", "#ffd8a8", "#d9c6ef", "#e0c9b8", "#c6dbef", "#fdd0a2")
OTHER_PAIRS_COLOR = "#dddddd"
HIGHER_ORDER_COLOR = "#999999"
_VERDICT_COLORS = {"worse": "#e8786f", "better": "#7fc97f", "n.s.": "#9ecae1", "no test": "#f0f0f0",
                   "reference": "#6b6b6b"}

# name -> (axis label, whether the fANOVA encoding is log10 of it).
AXES = {
    "learning_rate": ("learning rate", True),
    "momentum": ("1 - momentum", True),
    "hidden_size": ("hidden size (blocks per layer)", True),
    "input_noise": ("input noise std", False),
    "nesterov": ("Nesterov momentum (0/1)", False),
    "clip": ("gradient clipping (0/1)", False),
}
_SHORT = {"learning_rate": "learning rate", "hidden_size": "hidden size", "input_noise": "input noise",
          "momentum": "momentum", "nesterov": "Nesterov", "clip": "clipping"}


def new_figure(width, height, layout="constrained"):
    """A figure on its own Agg canvas (no pyplot)."""
    fig = mpl_figure.Figure(figsize=(width, height), dpi=100, layout=layout)
    backend_agg.FigureCanvasAgg(fig)
    return fig


def log_ticks(ax, which, lo, hi):
    """Labels a linear axis that holds log10 values with the values themselves (1e-06, 2e-05, ...).

    Plotting log10 on a linear axis draws the same picture as a log axis, at a fraction
    of the cost of matplotlib's log locators.
    """
    ticks = []
    for k in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
        steps = (1,) if hi - lo >= 2.5 else (1, 2, 5)
        ticks += [k + np.log10(s) for s in steps if lo - 1e-9 <= k + np.log10(s) <= hi + 1e-9]
    getattr(ax, f"set_{which}ticks")(ticks, [f"{10.0**t:.3g}" for t in ticks])
    getattr(ax, f"set_{which}lim")(lo, hi)


def save(fig, path):
    """Writes `fig` as PNG to `path` and returns the path. The image grows or shrinks to what is drawn (a pie's
    labels stand outside its axes, and a long one would be cut at the figure's edge), with a white margin."""
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight", pad_inches=0.1)
    return path


def _task_title(task):
    return paper.TASK_NAMES.get(task, task)


def boxplots(analyses, path, subset="top"):
    """Fig. 2 (subset "top") or Fig. 7 ("all"): test metric per variant, one panel per task.

    Boxes are coloured by the Welch + Bonferroni verdict against vanilla; grey bars in
    the background give the sample's mean parameter count (right axis).

    Args:
        analyses: list of `TaskAnalysis`.
        path: the PNG to write.
        subset: "top" (top 10 % by validation metric) or "all".
    """
    fig = new_figure(6.0 * len(analyses), 4.8)
    axes = fig.subplots(1, len(analyses), squeeze=False)[0]
    for ax, a in zip(axes, analyses):
        ref, comps = a.top if subset == "top" else a.all
        rows = [ref] + comps
        names = [c.variant for c in rows]
        sel = stats.top_trials(a.trials) if subset == "top" else a.done
        data = [sel["test_metric"][sel["variant"] == v] for v in names]
        pos = np.arange(len(names))
        bars = ax.twinx()
        params = [c.mean_params if np.isfinite(c.mean_params) else 0.0 for c in rows]
        bars.bar(pos, params, width=0.8, color="#eeeeee", edgecolor="#cccccc", zorder=0)
        bars.set_ylabel("mean parameter count (bars)")
        ax.set_zorder(bars.get_zorder() + 1)
        ax.patch.set_visible(False)
        shown = [i for i, d in enumerate(data) if d.size]
        if shown:
            box = ax.boxplot([data[i] for i in shown], positions=pos[shown], widths=0.55,
                             patch_artist=True, showfliers=True)
            for i, b in zip(shown, box["boxes"]):
                verdict = "reference" if rows[i].variant == "V" else rows[i].verdict
                b.set_facecolor(_VERDICT_COLORS[verdict])
            for m in box["medians"]:
                m.set_color("black")
        ax.set_xticks(pos, names)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylabel(f"test {stats.METRIC_NAMES.get(a.task, 'metric')}")
        kind = "top 10 % of trials by validation metric" if subset == "top" else "all finished trials"
        ax.set_title(f"{_task_title(a.task)}: {kind}")
    handles = [patches.Patch(facecolor=_VERDICT_COLORS[k], edgecolor="black", label=label) for k, label in (
        ("reference", "vanilla (V)"), ("worse", "significantly worse than V"),
        ("better", "significantly better than V"), ("n.s.", "not significantly different"),
        ("no test", "too few trials to test"))]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(5, 3 * len(analyses)), fontsize=8,
               title="Welch's t-test, Bonferroni-corrected, p < 0.05")
    return save(fig, path)


def pie_slices(fractions, names, min_pair=0.02):
    """The slices of an importance pie.

    Args:
        fractions: dict from `Fanova.fractions` ((i,) and (i, j) -> fraction).
        names: hyperparameter name of each column.
        min_pair: pairs below this fraction are lumped into "other pairs".

    Returns:
        list of (label, fraction, colour), fractions clipped at 0 and summing to 1.
    """
    out = []
    for (i,), f in sorted(((k, v) for k, v in fractions.items() if len(k) == 1)):
        out.append((_SHORT[names[i]], max(f, 0.0), HYPERPARAMETER_COLORS[names[i]]))
    pairs = sorted(((v, k) for k, v in fractions.items() if len(k) == 2), reverse=True)
    other = 0.0
    n_shown = 0
    for f, (i, j) in pairs:
        if f >= min_pair and n_shown < len(PAIR_COLORS):
            out.append((f"{_SHORT[names[i]]} x {_SHORT[names[j]]}", f, PAIR_COLORS[n_shown]))
            n_shown += 1
        else:
            other += max(f, 0.0)
    if other > 0:
        out.append(("other pairs", other, OTHER_PAIRS_COLOR))
    higher = max(0.0, 1.0 - sum(f for _, f, _ in out))
    out.append(("higher order", higher, HIGHER_ORDER_COLOR))
    total = sum(f for _, f, _ in out)
    return [(label, f / total, c) for label, f, c in out]


def importance_pies(analyses, path):
    """Fig. 3: the fraction of the test metric's variance due to each hyperparameter and pair.

    Tasks whose fANOVA was skipped get a panel that says why.
    """
    fig = new_figure(5.5 * len(analyses), 5.0)
    axes = fig.subplots(1, len(analyses), squeeze=False)[0]
    for ax, a in zip(axes, analyses):
        ax.set_title(f"{_task_title(a.task)}\nvariance of the test metric (fANOVA)")
        if a.fractions is None:
            ax.text(0.5, 0.5, a.fanova_note, ha="center", va="center", wrap=True, transform=ax.transAxes)
            ax.set_axis_off()
            continue
        slices = [s for s in pie_slices(a.fractions, a.names) if s[1] > 0]
        labels = [f"{label} {100 * f:.1f} %" if f >= 0.03 else "" for label, f, _ in slices]
        ax.pie([f for _, f, _ in slices], labels=labels, colors=[c for _, _, c in slices],
               startangle=90, counterclock=False, wedgeprops={"linewidth": 0}, textprops={"fontsize": 8})
        ax.set_aspect("equal")
        ax.legend([patches.Patch(color=c) for _, _, c in slices],
                  [f"{label} ({100 * f:.1f} %)" for label, f, _ in slices],
                  loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7, ncols=2, frameon=False)
    return save(fig, path)


def time_vs_metric(analysis, path):
    """Fig. 9-11 for one task: training time against test metric, one panel per variant.

    The top 10 % by validation metric are drawn in a strong colour over the rest.

    Returns:
        the path written, or None when the task has no trial at all.
    """
    a = analysis
    present = [v for v in stats.VARIANTS if (a.trials["variant"] == v).any()]
    if not present:
        return None
    cols = 3
    nrows = -(-len(present) // cols)
    fig = new_figure(4.0 * cols, 3.2 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False, sharex=True, sharey=True)
    top_ids = stats.top_trials(a.trials)["trial_id"]
    done = a.done
    secs = done["train_seconds"]
    positive = np.isfinite(secs) & (secs > 0)
    logs = np.log10(np.where(positive, secs, 1.0))
    for n, ax in enumerate(axes.flat):
        if n >= len(present):
            ax.set_axis_off()
            continue
        v = present[n]
        mine = (done["variant"] == v) & positive
        top = mine & np.isin(done["trial_id"], top_ids)
        ax.scatter(logs[mine & ~top], done["test_metric"][mine & ~top], s=10, color="#9ecae1",
                   label="other trials")
        ax.scatter(logs[top], done["test_metric"][top], s=14, color="#08519c", label="top 10 %")
        ax.set_title(v)
        if n % cols == 0:
            ax.set_ylabel(f"test {stats.METRIC_NAMES.get(a.task, 'metric')}", fontsize=8)
        if n + cols >= len(present):
            ax.set_xlabel("training time (s, log scale)")
    if positive.any():
        lo, hi = logs[positive].min(), logs[positive].max()
        pad = max(0.05 * (hi - lo), 0.05)
        log_ticks(axes.flat[0], "x", lo - pad, hi + pad)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{_task_title(a.task)}: training time against test metric per variant")
    return save(fig, path)
