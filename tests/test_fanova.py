"""Tests of the fANOVA: brute-force grid enumeration, closed-form decompositions, sklearn's own predictions."""

import itertools

import numpy as np
import pytest

from odyssey.analysis import fanova


def _brute_force(forest, lo, hi):
    """fANOVA of each tree by enumerating every cell of the grid cut by all of the forest's splits.

    The tree is evaluated by sklearn's own `predict` at each cell's centre, and the
    marginals are weighted sums over the other axes of the full D-dimensional grid.

    Returns:
        (fractions dict key -> float64[trees], edges per dim, per-tree list of
        (f0, {i: a_i on cells}, {(i, j): a_ij on cells})).
    """
    dims = lo.shape[0]
    edges = []
    for d in range(dims):
        thr = np.concatenate([e.tree_.threshold[e.tree_.feature == d] for e in forest.estimators_])
        edges.append(np.unique(np.concatenate([[lo[d], hi[d]], np.clip(thr, lo[d], hi[d])])))
    centres = [(e[1:] + e[:-1]) / 2 for e in edges]
    probs = [np.diff(e) / (hi[d] - lo[d]) for d, e in enumerate(edges)]
    grid = np.stack(np.meshgrid(*centres, indexing="ij"), -1).reshape(-1, dims)
    weight = probs[0]
    for p in probs[1:]:
        weight = np.multiply.outer(weight, p)
    fractions, parts = {}, []
    for est in forest.estimators_:
        pred = est.predict(grid).reshape(weight.shape)
        f0 = (weight * pred).sum()
        var = (weight * (pred - f0) ** 2).sum()
        single, pair, v1 = {}, {}, {}
        for i in range(dims):
            axes = tuple(d for d in range(dims) if d != i)
            single[i] = (weight * pred).sum(axis=axes) / weight.sum(axis=axes)
            v1[i] = probs[i] @ (single[i] - f0) ** 2
            fractions.setdefault((i,), []).append(v1[i] / var)
        for i, j in itertools.combinations(range(dims), 2):
            axes = tuple(d for d in range(dims) if d not in (i, j))
            pair[(i, j)] = (weight * pred).sum(axis=axes) / weight.sum(axis=axes)
            vij = (np.outer(probs[i], probs[j]) * (pair[(i, j)] - f0) ** 2).sum() - v1[i] - v1[j]
            fractions.setdefault((i, j), []).append(vij / var)
        parts.append((f0, single, pair))
    return {k: np.array(v) for k, v in fractions.items()}, centres, parts


@pytest.fixture(scope="module")
def small_forest():
    rng = np.random.default_rng(0)
    # Multiples of 1/8: thresholds and cell centres are exact in float32, sklearn's dtype.
    X = rng.integers(0, 40, size=(80, 3)) / 8.0
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2] + 0.3 * rng.normal(size=80)
    return fanova.Fanova(X, y, n_trees=4, seed=1, max_features=0.67)


def test_fractions_match_brute_force_grid_enumeration(small_forest):
    f = small_forest
    expected, _, _ = _brute_force(f.forest, f.bounds[:, 0], f.bounds[:, 1])
    got = f.tree_fractions()
    assert set(got) == set(expected) == {(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)}
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-9, err_msg=str(key))
    means = f.fractions()
    for key in expected:
        assert means[key] == pytest.approx(expected[key].mean(), abs=1e-9)
    # The forest is noisy enough that every component is present, so the check is not vacuous.
    assert min(means.values()) > 1e-3


def test_marginals_match_brute_force_grid_enumeration(small_forest):
    f = small_forest
    _, centres, parts = _brute_force(f.forest, f.bounds[:, 0], f.bounds[:, 1])
    for i in range(3):
        per_tree = np.stack([p[1][i] for p in parts])
        mean, std = f.marginal(i, centres[i])
        np.testing.assert_allclose(mean, per_tree.mean(axis=0), rtol=0, atol=1e-9)
        np.testing.assert_allclose(std, per_tree.std(axis=0), rtol=0, atol=1e-9)
    for i, j in itertools.combinations(range(3), 2):
        total = np.stack([p[2][(i, j)] for p in parts])
        pure = np.stack([p[2][(i, j)] - p[1][i][:, None] - p[1][j][None, :] + p[0] for p in parts])
        mean, std = f.pair_marginal(i, j, centres[i], centres[j])
        np.testing.assert_allclose(mean, total.mean(axis=0), rtol=0, atol=1e-9)
        np.testing.assert_allclose(std, total.std(axis=0), rtol=0, atol=1e-9)
        mean, _ = f.pair_interaction(i, j, centres[i], centres[j])
        np.testing.assert_allclose(mean, pure.mean(axis=0), rtol=0, atol=1e-9)
    assert f.mean() == pytest.approx(np.mean([p[0] for p in parts]), abs=1e-12)


def test_one_dimensional_marginal_is_the_forest_prediction_even_on_splits():
    rng = np.random.default_rng(3)
    X = rng.uniform(0, 1, size=(50, 1))
    y = np.cos(5 * X[:, 0]) + 0.1 * rng.normal(size=50)
    f = fanova.Fanova(X, y, n_trees=7, seed=2)
    points = np.concatenate([X[:, 0], np.linspace(0, 1, 101)])
    mean, _ = f.marginal(0, points)
    np.testing.assert_allclose(mean, f.forest.predict(points[:, None]), rtol=0, atol=1e-12)
    # A point on a split belongs to the left cell, as in sklearn's `x <= threshold`. (sklearn
    # compares float32(x), so exactly on a float64 threshold it may round either way; a point
    # 1e-6 to the left is unambiguous.)
    thresholds = np.concatenate([e.tree_.threshold[e.tree_.feature == 0] for e in f.forest.estimators_])
    mean, _ = f.marginal(0, thresholds)
    np.testing.assert_allclose(mean, f.forest.predict(thresholds[:, None] - 1e-6), rtol=0, atol=1e-12)


def _grid(n):
    centres = (2 * np.arange(n) + 1) / (2 * n)
    return np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), -1).reshape(-1, 3)


def test_exact_fit_on_uniform_grid_gives_closed_form_decomposition():
    # y = a x0 + b x1 x2 on the centres of an n^3 grid over [0, 1]^3. Each tree fits the grid
    # exactly, so the fANOVA is that of the uniform discrete measure: with m = 1/2 and
    # s2 = (1 - 1/n^2) / 12 the mean and variance of one coordinate, x1 x2 =
    # (x1 - m)(x2 - m) + m (x1 - m) + m (x2 - m) + m^2, whose parts are orthogonal.
    # n = 8 keeps the grid, its midpoints and so the trees' thresholds exact in float32.
    n, a, b = 8, 1.0, 3.0
    X = _grid(n)
    y = a * X[:, 0] + b * X[:, 1] * X[:, 2]
    f = fanova.Fanova(X, y, n_trees=5, seed=0, bounds=[(0, 1)] * 3, bootstrap=False)
    m, s2 = 0.5, (1 - 1 / n**2) / 12
    parts = {(0,): a * a * s2, (1,): b * b * m * m * s2, (2,): b * b * m * m * s2, (1, 2): b * b * s2 * s2,
             (0, 1): 0.0, (0, 2): 0.0}
    total = sum(parts.values())
    got = f.fractions()
    for key, v in parts.items():
        assert got[key] == pytest.approx(v / total, abs=1e-9), key
    # The marginal along x0 is a x0 + b m^2; along the pair (1, 2) it is a m + b x1 x2.
    g = np.unique(X[:, 0])
    mean, std = f.marginal(0, g)
    np.testing.assert_allclose(mean, a * g + b * m * m, rtol=0, atol=1e-9)
    np.testing.assert_allclose(std, 0, atol=1e-9)
    mean, _ = f.pair_marginal(1, 2, g, g)
    np.testing.assert_allclose(mean, a * m + b * np.outer(g, g), rtol=0, atol=1e-9)
    mean, _ = f.pair_interaction(1, 2, g, g)
    np.testing.assert_allclose(mean, b * np.outer(g - m, g - m), rtol=0, atol=1e-9)
    mean, _ = f.pair_interaction(0, 1, g, g)
    np.testing.assert_allclose(mean, 0, atol=1e-9)


def test_default_forest_on_random_samples_recovers_product_decomposition():
    # Same function, continuous uniform measure on [0, 1]^3: s2 = 1/12.
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, size=(1500, 3))
    a, b, m, s2 = 1.0, 3.0, 0.5, 1 / 12
    y = a * X[:, 0] + b * X[:, 1] * X[:, 2]
    got = fanova.variance_fractions(X, y, n_trees=20, seed=0)
    total = a * a * s2 + 2 * b * b * m * m * s2 + b * b * s2 * s2
    # Tolerance: a forest of piecewise-constant trees on 1500 points; observed error about 0.012.
    assert got[(0,)] == pytest.approx(a * a * s2 / total, abs=0.03)
    assert got[(1,)] == pytest.approx(b * b * m * m * s2 / total, abs=0.03)
    assert got[(2,)] == pytest.approx(b * b * m * m * s2 / total, abs=0.03)
    assert got[(1, 2)] == pytest.approx(b * b * s2 * s2 / total, abs=0.03)
    assert abs(got[(0, 1)]) < 0.01 and abs(got[(0, 2)]) < 0.01


def test_default_forest_on_random_samples_recovers_additive_decomposition():
    # y = x0 + 2 x1^2 with x uniform on [-1, 1]^3: Var(x0) = 1/3, Var(2 x1^2) = 4 (1/5 - 1/9) = 16/45,
    # x2 unused, no interaction at all.
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, size=(1500, 3))
    y = X[:, 0] + 2 * X[:, 1] ** 2
    f = fanova.Fanova(X, y, n_trees=20, seed=0, bounds=[(-1, 1)] * 3)
    got = f.fractions()
    total = 1 / 3 + 16 / 45
    assert got[(0,)] == pytest.approx((1 / 3) / total, abs=0.03)
    assert got[(1,)] == pytest.approx((16 / 45) / total, abs=0.03)
    assert abs(got[(2,)]) < 0.005
    for pair in [(0, 1), (0, 2), (1, 2)]:
        assert abs(got[pair]) < 0.02
    # Marginal along x1: 2 x1^2 + E[x0] (= 0), within the forest's step resolution.
    g = np.linspace(-0.9, 0.9, 19)
    mean, _ = f.marginal(1, g)
    np.testing.assert_allclose(mean, 2 * g**2, atol=0.12)


def test_constant_column_has_no_share_and_constant_response_has_no_fractions():
    rng = np.random.default_rng(2)
    X = np.column_stack([rng.uniform(size=60), np.full(60, 4.0)])
    got = fanova.variance_fractions(X, X[:, 0] ** 2, n_trees=5)
    assert got[(1,)] == pytest.approx(0.0, abs=1e-12) and got[(0, 1)] == pytest.approx(0.0, abs=1e-12)
    assert got[(0,)] == pytest.approx(1.0, abs=1e-9)
    flat = fanova.variance_fractions(X, np.ones(60), n_trees=5)
    assert all(v == 0.0 for v in flat.values())


def test_bad_inputs_are_rejected_with_a_reason():
    X = np.zeros((5, 2))
    with pytest.raises(ValueError, match="X float"):
        fanova.Fanova(X, np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        fanova.Fanova(X, np.array([0, 1, np.nan, 2, 3.0]))
    with pytest.raises(ValueError, match="bounds"):
        fanova.Fanova(X, np.arange(5.0), bounds=[(1, 0), (0, 1)])
    f = fanova.Fanova(np.random.default_rng(0).uniform(size=(20, 2)), np.arange(20.0), n_trees=2)
    with pytest.raises(ValueError, match="out of range"):
        f.marginal(2, [0.5])
    with pytest.raises(ValueError, match="two different"):
        f.pair_marginal(1, 1, [0.5], [0.5])
