"""Functional ANOVA over a random forest, by exact marginalisation over each tree's partition.

A regression tree is piecewise constant on axis-aligned boxes. Under the uniform
measure on the box ``bounds`` (Hutter, Hoos & Leyton-Brown, ICML 2014), the
marginal of a tree over a set of hyperparameters U is

    a_U(x_U) = sum over leaves l containing x_U of  value_l * prod_{d not in U} frac_d(l),

where frac_d(l) is the fraction of the range of hyperparameter d that leaf l
spans. a_U is constant on the grid cut by the tree's own split points in U, so
it is computed exactly on that grid (a difference array over the leaves' index
ranges, then a cumulative sum). The pure effects are the orthogonal fANOVA
components: V_i = Var(a_i), V_ij = Var(a_ij) - V_i - V_j. Fractions V_U / Var(f)
are taken per tree and then averaged over the trees, as in the reference method.

Split thresholds are taken as exact float64 values with `x <= threshold` going
left. sklearn compares float32(x), which moves a cell boundary by at most one
float32 ulp: a relative effect near 1e-7 on the integrals, far below what a
forest's fit can resolve.
"""

import dataclasses
import itertools

import numpy as np
from sklearn import ensemble

__all__ = ["Fanova", "variance_fractions"]


@dataclasses.dataclass(frozen=True)
class _Tree:
    """One tree as leaves on a per-dimension grid of cells.

    Attributes:
        edges: per dimension, float64[K_d + 1] sorted cell edges (bounds included).
        cell_frac: per dimension, float64[K_d] cell width over the range width.
        first: int64[L, D] index of the first cell a leaf covers in each dimension.
        stop: int64[L, D] one past the last cell a leaf covers.
        leaf_frac: float64[L, D] fraction of each dimension's range a leaf spans.
        value: float64[L] the leaf predictions.
        mean: the tree's mean over the box.
        variance: the tree's variance over the box.
    """

    edges: list
    cell_frac: list
    first: np.ndarray
    stop: np.ndarray
    leaf_frac: np.ndarray
    value: np.ndarray
    mean: float
    variance: float


def _leaf_boxes(tree, lo, hi):
    """Boxes of the leaves of a fitted sklearn tree, clipped to [lo, hi].

    Returns:
        (box_lo float64[L, D], box_hi float64[L, D], value float64[L]).
    """
    t = tree.tree_
    n_nodes, dims = t.node_count, lo.shape[0]
    box_lo = np.empty((n_nodes, dims))
    box_hi = np.empty((n_nodes, dims))
    box_lo[0], box_hi[0] = lo, hi
    left, right = t.children_left, t.children_right
    frontier = np.array([0])
    # Level by level: every node's box is set before its children are visited.
    while frontier.size:
        parents = frontier[left[frontier] != -1]
        if not parents.size:
            break
        feat = t.feature[parents]
        thr = np.clip(t.threshold[parents], box_lo[parents, feat], box_hi[parents, feat])
        kids_l, kids_r = left[parents], right[parents]
        box_lo[kids_l], box_hi[kids_l] = box_lo[parents], box_hi[parents]
        box_lo[kids_r], box_hi[kids_r] = box_lo[parents], box_hi[parents]
        box_hi[kids_l, feat] = thr
        box_lo[kids_r, feat] = thr
        frontier = np.concatenate([kids_l, kids_r])
    leaves = left == -1
    return box_lo[leaves], box_hi[leaves], t.value[leaves, 0, 0].astype(np.float64)


def _tree_parts(tree, lo, hi):
    """Turns a fitted sklearn tree into a `_Tree` over the box [lo, hi]."""
    box_lo, box_hi, value = _leaf_boxes(tree, lo, hi)
    dims = lo.shape[0]
    width = hi - lo
    edges, cell_frac = [], []
    first = np.empty(box_lo.shape, np.int64)
    stop = np.empty(box_lo.shape, np.int64)
    for d in range(dims):
        e = np.unique(np.concatenate([[lo[d], hi[d]], box_lo[:, d], box_hi[:, d]]))
        edges.append(e)
        cell_frac.append(np.diff(e) / width[d])
        first[:, d] = np.searchsorted(e, box_lo[:, d])
        stop[:, d] = np.searchsorted(e, box_hi[:, d])
    leaf_frac = (box_hi - box_lo) / width
    volume = leaf_frac.prod(axis=1)
    mean = float(volume @ value)
    variance = float(volume @ (value - mean) ** 2)
    return _Tree(edges, cell_frac, first, stop, leaf_frac, value, mean, variance)


def _weights(tree, keep):
    """value_l times the product of leaf_frac over the dimensions not in `keep`."""
    others = [d for d in range(tree.leaf_frac.shape[1]) if d not in keep]
    return tree.value * tree.leaf_frac[:, others].prod(axis=1)


def _marginal_1d(tree, i):
    """Exact marginal a_i of one tree on its cells of dimension i: float64[K_i]."""
    k = tree.cell_frac[i].shape[0]
    w = _weights(tree, (i,))
    diff = np.bincount(tree.first[:, i], w, k + 1) - np.bincount(tree.stop[:, i], w, k + 1)
    return np.cumsum(diff)[:k]


def _marginal_2d(tree, i, j):
    """Exact marginal a_ij of one tree on its cells of dimensions (i, j): float64[K_i, K_j]."""
    ki, kj = tree.cell_frac[i].shape[0], tree.cell_frac[j].shape[0]
    w = _weights(tree, (i, j))
    lo_i, hi_i, lo_j, hi_j = tree.first[:, i], tree.stop[:, i], tree.first[:, j], tree.stop[:, j]
    # 2-D difference array: each leaf adds w on the rectangle [lo_i, hi_i) x [lo_j, hi_j).
    flat = np.concatenate([lo_i * (kj + 1) + lo_j, hi_i * (kj + 1) + lo_j,
                           lo_i * (kj + 1) + hi_j, hi_i * (kj + 1) + hi_j])
    signed = np.concatenate([w, -w, -w, w])
    diff = np.bincount(flat, signed, (ki + 1) * (kj + 1)).reshape(ki + 1, kj + 1)
    return np.cumsum(np.cumsum(diff, axis=0), axis=1)[:ki, :kj]


def _cell_index(edges, x):
    """Cell of each point; a point on a split goes left, as sklearn's `x <= threshold` does."""
    inner = edges[1:-1]
    return np.searchsorted(inner, np.asarray(x, np.float64), side="left")


class Fanova:
    """A random forest from hyperparameters to a metric, with exact fANOVA marginals.

    Attributes:
        bounds: float64[D, 2] the box the marginals integrate over (lower, upper).
        n_features: D.
        trees: the forest's trees as partitions of the box.
    """

    def __init__(self, X, y, n_trees=100, seed=0, *, bounds=None, bootstrap=True,
                 max_features=1.0, min_samples_leaf=1):
        """Fits the forest.

        Args:
            X: float[n, D] encoded hyperparameters (one row per trial).
            y: float[n] the response (metric or training time), finite.
            n_trees: number of regression trees.
            seed: seed of the forest's bootstrap and feature draws.
            bounds: float[D, 2] box to integrate over; default the data's range per column.
            bootstrap: whether each tree sees a bootstrap sample (sklearn's forest default).
            max_features: features tried per split, as in `RandomForestRegressor`.
            min_samples_leaf: smallest leaf, as in `RandomForestRegressor`.

        Raises:
            ValueError: on shapes that disagree, non-finite values, too few rows, or bad bounds.
        """
        X = np.asarray(X, np.float64)
        y = np.asarray(y, np.float64)
        if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(f"fANOVA needs X float[n, D] and y float[n]; got X{X.shape}, y{y.shape}")
        if X.shape[0] < 2:
            raise ValueError(f"fANOVA needs at least 2 rows, got {X.shape[0]}")
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ValueError("fANOVA inputs must be finite; drop the rows with NaN/inf first "
                             f"({int((~np.isfinite(X)).any(axis=1).sum())} bad rows in X, "
                             f"{int((~np.isfinite(y)).sum())} in y)")
        if n_trees < 1:
            raise ValueError(f"n_trees must be >= 1, got {n_trees}")
        if bounds is None:
            bounds = np.stack([X.min(axis=0), X.max(axis=0)], axis=1)
        bounds = np.array(bounds, np.float64)
        if bounds.shape != (X.shape[1], 2) or not (bounds[:, 1] >= bounds[:, 0]).all():
            raise ValueError(f"bounds must be float[{X.shape[1]}, 2] with lower <= upper, got {bounds.tolist()}")
        # A constant column never splits; a unit width keeps the fractions defined.
        flat = bounds[:, 1] == bounds[:, 0]
        bounds[flat, 1] = bounds[flat, 0] + 1.0
        self.bounds = bounds
        self.n_features = X.shape[1]
        forest = ensemble.RandomForestRegressor(
            n_estimators=n_trees, random_state=seed, bootstrap=bootstrap,
            max_features=max_features, min_samples_leaf=min_samples_leaf)
        forest.fit(X, y)
        self.forest = forest
        self.trees = [_tree_parts(est, bounds[:, 0], bounds[:, 1]) for est in forest.estimators_]
        self._single = {}
        self._fractions = None

    def _single_marginals(self, i):
        if i not in self._single:
            self._single[i] = [_marginal_1d(t, i) for t in self.trees]
        return self._single[i]

    def _check_dims(self, *dims):
        for d in dims:
            if not 0 <= d < self.n_features:
                raise ValueError(f"hyperparameter index {d} out of range [0, {self.n_features})")
        if len(set(dims)) != len(dims):
            raise ValueError(f"a pair needs two different hyperparameters, got {dims}")

    def tree_fractions(self):
        """Per-tree variance fractions.

        Returns:
            dict from (i,) and (i, j), i < j, to float64[T] fractions of the trees with
            non-zero variance (T of them; trees that predict a constant carry no fractions).
        """
        if self._fractions is None:
            var = np.array([t.variance for t in self.trees])
            scale = max(float(np.abs([t.mean for t in self.trees]).max()), 1.0)
            live = np.flatnonzero(var > 1e-24 * scale**2)
            single = {}
            for i in range(self.n_features):
                marg = self._single_marginals(i)
                single[i] = np.array([
                    self.trees[t].cell_frac[i] @ (marg[t] - self.trees[t].mean) ** 2 for t in live])
            out = {(i,): single[i] / var[live] for i in range(self.n_features)}
            for i, j in itertools.combinations(range(self.n_features), 2):
                v = np.empty(live.size)
                for n, t in enumerate(live):
                    tree = self.trees[t]
                    a = _marginal_2d(tree, i, j) - tree.mean
                    v[n] = tree.cell_frac[i] @ (a**2) @ tree.cell_frac[j]
                out[(i, j)] = (v - single[i] - single[j]) / var[live]
            self._fractions = out
        return self._fractions

    def fractions(self):
        """Mean over trees of each hyperparameter's and each pair's fraction of variance.

        Returns:
            dict from (i,) and (i, j), i < j, to float; all 0.0 when every tree is constant.
        """
        return {k: float(v.mean()) if v.size else 0.0 for k, v in self.tree_fractions().items()}

    def marginal(self, i, values):
        """Predicted marginal along hyperparameter i, averaged over the others.

        Args:
            i: column of X.
            values: float[n] points in the encoded units of column i.

        Returns:
            (mean float64[n], std float64[n]) over the trees.
        """
        self._check_dims(i)
        per_tree = np.stack([m[_cell_index(t.edges[i], values)]
                             for t, m in zip(self.trees, self._single_marginals(i))])
        return per_tree.mean(axis=0), per_tree.std(axis=0)

    def _pair_per_tree(self, i, j, values_i, values_j, pure):
        self._check_dims(i, j)
        out = []
        for n, t in enumerate(self.trees):
            ci, cj = _cell_index(t.edges[i], values_i), _cell_index(t.edges[j], values_j)
            grid = _marginal_2d(t, i, j)[np.ix_(ci, cj)]
            if pure:
                grid = (grid - self._single_marginals(i)[n][ci][:, None]
                        - self._single_marginals(j)[n][cj][None, :] + t.mean)
            out.append(grid)
        return np.stack(out)

    def pair_marginal(self, i, j, values_i, values_j):
        """Predicted marginal over the pair (i, j) on a grid, averaged over the others.

        Args:
            i, j: two different columns of X.
            values_i: float[n_i] points along column i; values_j: float[n_j] along column j.

        Returns:
            (mean float64[n_i, n_j], std float64[n_i, n_j]) over the trees.
        """
        per_tree = self._pair_per_tree(i, j, values_i, values_j, pure=False)
        return per_tree.mean(axis=0), per_tree.std(axis=0)

    def pair_interaction(self, i, j, values_i, values_j):
        """The pure interaction part a_ij - a_i - a_j + f0 on a grid.

        Args and Returns: as `pair_marginal`.
        """
        per_tree = self._pair_per_tree(i, j, values_i, values_j, pure=True)
        return per_tree.mean(axis=0), per_tree.std(axis=0)

    def mean(self):
        """The forest's mean prediction over the whole box."""
        return float(np.mean([t.mean for t in self.trees]))


def variance_fractions(X, y, n_trees=100, seed=0, **kwargs):
    """Fraction of variance of each hyperparameter and each pair, averaged over the trees.

    Args:
        X: float[n, D] encoded hyperparameters.
        y: float[n] response.
        n_trees: number of regression trees.
        seed: the forest's seed.
        **kwargs: keyword options of `Fanova` (bounds, bootstrap, max_features, min_samples_leaf).

    Returns:
        dict from (i,) and (i, j), i < j, to the mean fraction of variance; the rest,
        1 - sum of all values, is the higher-order part.
    """
    return Fanova(X, y, n_trees=n_trees, seed=seed, **kwargs).fractions()
