"""The paper's fANOVA figures: Fig. 4 (marginals with std bands), Fig. 5 and 8 (pairwise marginals, interactions)."""

import itertools

import numpy as np
from matplotlib import colors as mcolors

from odyssey.analysis import paper, stats
from odyssey.analysis.plots import AXES, log_ticks, new_figure, save

__all__ = ["marginals", "lr_hidden", "pairs", "MARGINAL_HYPERPARAMETERS"]

# Fig. 4's columns, in the paper's order.
MARGINAL_HYPERPARAMETERS = ("learning_rate", "hidden_size", "input_noise")
_PAIR_HYPERPARAMETERS = ("learning_rate", "momentum", "hidden_size", "input_noise")


def _grid(fanova, i, n):
    lo, hi = fanova.bounds[i]
    return np.linspace(lo, hi, n)


def _set_axis(ax, name, bounds, which="x"):
    """Labels an axis that holds a hyperparameter in its fANOVA encoding."""
    label, log = AXES[name]
    getattr(ax, f"set_{which}label")(label + (" (log scale)" if log else ""))
    if log:
        log_ticks(ax, which, *bounds)
    else:
        getattr(ax, f"set_{which}lim")(*bounds)


def marginals(analyses, path, n_points=100):
    """Fig. 4: predicted marginal test metric and training time along each hyperparameter.

    One row per task with a fANOVA, one column per hyperparameter; shaded bands are
    +-1 std over the trees.

    Returns:
        the path written, or None when no task has a fANOVA.
    """
    rows = [a for a in analyses if a.fractions is not None]
    if not rows:
        return None
    fig = new_figure(4.6 * len(MARGINAL_HYPERPARAMETERS), 3.4 * len(rows))
    axes = fig.subplots(len(rows), len(MARGINAL_HYPERPARAMETERS), squeeze=False)
    for r, a in enumerate(rows):
        for c, name in enumerate(MARGINAL_HYPERPARAMETERS):
            ax = axes[r, c]
            i = a.names.index(name)
            x = _grid(a.metric_fanova, i, n_points)
            mean, std = a.metric_fanova.marginal(i, x)
            ax.plot(x, mean, color="#1f77b4", label="test metric")
            ax.fill_between(x, mean - std, mean + std, color="#1f77b4", alpha=0.25, linewidth=0)
            ax.set_ylabel(f"{stats.METRIC_NAMES.get(a.task, 'metric')}", color="#1f77b4", fontsize=8)
            _set_axis(ax, name, a.metric_fanova.bounds[i])
            if a.time_fanova is not None:
                tax = ax.twinx()
                tm, ts = a.time_fanova.marginal(i, x)
                tax.plot(x, tm, color="#2ca02c", label="training time")
                tax.fill_between(x, tm - ts, tm + ts, color="#2ca02c", alpha=0.2, linewidth=0)
                tax.set_ylabel("training time (s)", color="#2ca02c", fontsize=8)
            ax.set_title(f"{paper.TASK_NAMES.get(a.task, a.task)}", fontsize=9)
    fig.suptitle("Predicted marginal test metric (blue) and training time (green), +-1 std over trees")
    return save(fig, path)


def _heat(fig, ax, a, i, j, values, title, diverging, lim=None):
    """One heatmap of a pair, hyperparameter i along x and j along y.

    A diverging map is centred on 0 and spans +-lim (default: the largest |value|).
    """
    ni, nj = a.names[i], a.names[j]
    if diverging:
        lim = lim or float(np.abs(values).max()) or 1.0
        norm, cmap = mcolors.Normalize(-lim, lim), "RdBu_r"
    else:
        norm, cmap = None, "viridis"
    bi, bj = a.metric_fanova.bounds[i], a.metric_fanova.bounds[j]
    mesh = ax.imshow(values.T, origin="lower", extent=(*bi, *bj), aspect="auto", cmap=cmap, norm=norm,
                     interpolation="nearest")
    _set_axis(ax, ni, bi, "x")
    _set_axis(ax, nj, bj, "y")
    ax.set_title(title, fontsize=9)
    bar = fig.colorbar(mesh, ax=ax)
    metric = stats.METRIC_NAMES.get(a.task, "metric")
    bar.set_label(("interaction part of " if diverging else "") + metric, fontsize=7)


def _pair_values(a, i, j, n):
    f = a.metric_fanova
    # Cell centres of an n x n grid over the box, so that each image pixel shows its own cell.
    ei = np.linspace(*f.bounds[i], n + 1)
    ej = np.linspace(*f.bounds[j], n + 1)
    ci, cj = (ei[1:] + ei[:-1]) / 2, (ej[1:] + ej[:-1]) / 2
    total, _ = f.pair_marginal(i, j, ci, cj)
    pure, _ = f.pair_interaction(i, j, ci, cj)
    return total, pure


def lr_hidden(analyses, path, n=40):
    """Fig. 5: learning rate x hidden size, total marginal and pure interaction, one row per task.

    Returns:
        the path written, or None when no task has a fANOVA.
    """
    rows = [a for a in analyses if a.fractions is not None]
    if not rows:
        return None
    fig = new_figure(11.0, 4.0 * len(rows))
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for r, a in enumerate(rows):
        i, j = a.names.index("learning_rate"), a.names.index("hidden_size")
        total, pure = _pair_values(a, i, j, n)
        task = paper.TASK_NAMES.get(a.task, a.task)
        _heat(fig, axes[r, 0], a, i, j, total, f"{task}: predicted marginal", False)
        _heat(fig, axes[r, 1], a, i, j, pure, f"{task}: interaction only", True)
    return save(fig, path)


def pairs(analysis, path, n=30):
    """Fig. 8 for one task: every pair of the four searched hyperparameters, total and interaction.

    Returns:
        the path written, or None when the task has no fANOVA.
    """
    a = analysis
    if a.fractions is None:
        return None
    combos = list(itertools.combinations([a.names.index(h) for h in _PAIR_HYPERPARAMETERS], 2))
    rows = -(-len(combos) // 2)
    # A fixed grid: constrained layout would double the drawing time of these 12 panels.
    fig = new_figure(20.0, 3.6 * rows, layout=None)
    axes = fig.subplots(rows, 4, squeeze=False)
    fig.subplots_adjust(left=0.045, right=0.975, bottom=0.07, top=0.92, wspace=0.45, hspace=0.45)
    values = [_pair_values(a, i, j, n) for i, j in combos]
    # One scale for every interaction panel, so that a weak interaction looks weak.
    lim = max(float(np.abs(pure).max()) for _, pure in values) or 1.0
    for k, ((i, j), (total, pure)) in enumerate(zip(combos, values)):
        r, c = divmod(k, 2)
        frac = a.fractions[(i, j)]
        _heat(fig, axes[r, 2 * c], a, i, j, total, "predicted marginal", False)
        _heat(fig, axes[r, 2 * c + 1], a, i, j, pure, f"interaction only ({100 * frac:.1f} % of variance)",
              True, lim)
    fig.suptitle(f"{paper.TASK_NAMES.get(a.task, a.task)}: pairwise marginals of the test metric")
    return save(fig, path)
