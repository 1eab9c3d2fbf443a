"""Tests of the nine LSTM variants against a hand-stepped loop over the paper's equations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats as scipy_stats
import pytest

from odyssey import cells, nets


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference_layer(variant, named, xs, y0=None, c0=None):
    """DESIGN §1 written out step by step with the paper's names, in numpy float64."""
    n = named["W_z"].shape[0]
    y = np.zeros(n) if y0 is None else np.array(y0, dtype=np.float64)
    c = np.zeros(n) if c0 is None else np.array(c0, dtype=np.float64)
    prev = {"i": np.zeros(n), "f": np.zeros(n), "o": np.zeros(n)}
    g = (lambda a: a) if variant == "NIAF" else np.tanh
    h = (lambda a: a) if variant == "NOAF" else np.tanh
    peep = variant != "NP"
    out = []
    for x in xs:
        def bar(gate):
            v = named[f"W_{gate}"] @ x + named[f"R_{gate}"] @ y + named[f"b_{gate}"]
            if variant == "FGR" and gate != "z":
                v = v + sum(named[f"R_{a}{gate}"] @ prev[a] for a in "ifo")
            return v

        z = g(bar("z"))
        i = np.ones(n) if variant == "NIG" else _sigmoid(bar("i") + (named["p_i"] * c if peep else 0))
        if variant == "NFG":
            f = np.ones(n)
        elif variant == "CIFG":
            f = 1.0 - i
        else:
            f = _sigmoid(bar("f") + (named["p_f"] * c if peep else 0))
        c = z * i + c * f
        o = np.ones(n) if variant == "NOG" else _sigmoid(bar("o") + (named["p_o"] * c if peep else 0))
        y = h(c) * o
        prev = {"i": i, "f": f, "o": o}
        out.append(y)
    return np.stack(out)


def _expected_count(variant, m, n):
    gates = 3 if variant in ("NIG", "NFG", "NOG", "CIFG") else 4
    peepholes = 0 if variant == "NP" else gates - 1
    extra = 9 * n * n if variant == "FGR" else 0
    return gates * (n * m + n * n + n) + peepholes * n + extra


def test_variants_are_the_nine_of_the_paper():
    assert cells.VARIANTS == ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")


@pytest.mark.parametrize("variant", cells.VARIANTS)
def test_scan_equals_hand_stepped_loop(variant, x64):
    m, n, t = 3, 5, 9
    params = cells.init(jax.random.PRNGKey(1), variant, m, n, std=0.5, dtype=jnp.float64)
    xs = np.random.default_rng(0).normal(size=(t, m))
    got = np.asarray(nets.lstm_layer(variant, params, jnp.asarray(xs)))
    want = reference_layer(variant, cells.to_paper(variant, params), xs)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("variant", cells.VARIANTS)
def test_nonzero_initial_state_and_reverse(variant, x64):
    m, n, t = 2, 4, 6
    params = cells.init(jax.random.PRNGKey(2), variant, m, n, std=0.5, dtype=jnp.float64)
    rng = np.random.default_rng(1)
    xs, y0, c0 = rng.normal(size=(t, m)), rng.normal(size=n), rng.normal(size=n)
    carry0 = (jnp.asarray(y0), jnp.asarray(c0))
    if variant == "FGR":
        # The reference starts FGR's previous gates at 0, so the carry must too.
        carry0 = carry0 + (jnp.zeros((3, n)),)
    named = cells.to_paper(variant, params)
    got = nets.lstm_layer(variant, params, jnp.asarray(xs), carry0=carry0)
    np.testing.assert_allclose(got, reference_layer(variant, named, xs, y0, c0), atol=1e-10)
    got_rev = nets.lstm_layer(variant, params, jnp.asarray(xs), reverse=True)
    np.testing.assert_allclose(got_rev, reference_layer(variant, named, xs[::-1])[::-1], atol=1e-10)


@pytest.mark.parametrize("variant", cells.VARIANTS)
def test_paper_names_round_trip(variant):
    params = cells.init(jax.random.PRNGKey(0), variant, 3, 4)
    named = cells.to_paper(variant, params)
    assert set(named) == set(cells.paper_names(variant))
    assert named["W_z"].shape == (4, 3) and named["R_z"].shape == (4, 4) and named["b_z"].shape == (4,)
    back = cells.from_paper(variant, named)
    for key in params:
        np.testing.assert_array_equal(np.asarray(back[key]), np.asarray(params[key]))
    assert sum(v.size for v in named.values()) == cells.count_params(variant, 3, 4)


def test_paper_names_follow_the_table():
    assert set(cells.paper_names("V")) == {"W_z", "W_i", "W_f", "W_o", "R_z", "R_i", "R_f", "R_o",
                                           "p_i", "p_f", "p_o", "b_z", "b_i", "b_f", "b_o"}
    for variant, gate in (("NIG", "i"), ("NFG", "f"), ("NOG", "o"), ("CIFG", "f")):
        assert set(cells.paper_names("V")) - set(cells.paper_names(variant)) == {
            f"W_{gate}", f"R_{gate}", f"p_{gate}", f"b_{gate}"}
    assert set(cells.paper_names("V")) - set(cells.paper_names("NP")) == {"p_i", "p_f", "p_o"}
    assert set(cells.paper_names("FGR")) - set(cells.paper_names("V")) == {
        f"R_{a}{b}" for a in "ifo" for b in "ifo"}
    assert cells.paper_names("NIAF") == cells.paper_names("NOAF") == cells.paper_names("V")


def test_fgr_matrix_carries_gate_a_into_gate_b():
    """Only R_fo non-zero: the layer follows the hand-stepped reference, in which R_fo carries the previous
    forget gate into the output gate; R_of in its place (the previous output gate into the forget gate) gives
    other outputs, so the two directions are told apart."""
    n = 2
    named = {k: np.zeros(s, np.float32) for k, s in cells._paper_shapes("FGR", 1, n).items()}
    named["b_f"] = np.full(n, 3.0, np.float32)
    named["R_fo"] = np.eye(n, dtype=np.float32) * 2.0
    named["W_z"] = np.ones((n, 1), np.float32)
    params = cells.from_paper("FGR", named)
    ys = np.asarray(nets.lstm_layer("FGR", params, jnp.ones((2, 1))))
    np.testing.assert_allclose(ys, reference_layer("FGR", named, np.ones((2, 1))), atol=1e-6)
    named["R_fo"] = np.zeros((n, n), np.float32)
    named["R_of"] = np.eye(n, dtype=np.float32) * 2.0
    ys_other = np.asarray(nets.lstm_layer("FGR", cells.from_paper("FGR", named), jnp.ones((2, 1))))
    assert not np.allclose(ys, ys_other)


@pytest.mark.parametrize("variant", cells.VARIANTS)
@pytest.mark.parametrize("m,n", [(3, 5), (1, 20), (7, 2)])
def test_parameter_counts(variant, m, n):
    assert cells.count_params(variant, m, n) == _expected_count(variant, m, n)
    params = cells.init(jax.random.PRNGKey(0), variant, m, n)
    assert nets.param_count_tree(params) == _expected_count(variant, m, n)
    assert nets.count_params(variant, "bi", m, n, 61) == 2 * _expected_count(variant, m, n) + (2 * n + 1) * 61
    assert nets.count_params(variant, "uni", m, n, 88) == _expected_count(variant, m, n) + (n + 1) * 88


def test_init_distribution():
    params = cells.init(jax.random.PRNGKey(0), "FGR", 50, 60)
    flat = np.concatenate([np.ravel(v) for v in params.values()])
    assert abs(flat.mean()) < 3 * 0.1 / np.sqrt(flat.size)
    assert abs(flat.std() - 0.1) < 0.002
    # every tensor of a whole net, the readout's included, is N(0, 0.1^2): a KS test per leaf of >= 1000 values
    net = nets.init_net(jax.random.PRNGKey(1), "V", "bi", 39, 100, 61)
    leaves = jax.tree_util.tree_leaves_with_path(net)
    assert {jax.tree_util.keystr(p) for p, _ in leaves} >= {"['out']['w']", "['out']['b']"}
    for path, leaf in leaves:
        values = np.ravel(np.asarray(leaf, np.float64))
        if values.size >= 1000:
            assert scipy_stats.kstest(values / 0.1, "norm").pvalue > 1e-3, jax.tree_util.keystr(path)
    bias = np.ravel(net["out"]["b"])  # 61 values: their mean and spread
    assert abs(bias.mean()) < 4 * 0.1 / np.sqrt(bias.size) and 0.06 < bias.std() < 0.14


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown variant 'LSTM'.*V, NIG"):
        cells.init(jax.random.PRNGKey(0), "LSTM", 2, 3)
    named = cells.to_paper("V", cells.init(jax.random.PRNGKey(0), "V", 2, 3))
    with pytest.raises(ValueError, match="missing \\['p_o'\\]"):
        cells.from_paper("V", {k: v for k, v in named.items() if k != "p_o"})
    with pytest.raises(ValueError, match="unexpected \\['R_ii'\\]"):
        cells.from_paper("V", {**named, "R_ii": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="R_f has shape \\(3, 2\\), expected \\(3, 3\\)"):
        cells.from_paper("V", {**named, "R_f": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="unknown variant"):
        cells.to_paper("XYZ", {})
    with pytest.raises(ValueError, match="NP parameters need the keys"):
        cells.to_paper("NP", cells.init(jax.random.PRNGKey(0), "V", 2, 3))


def test_layer_compiles_once_per_padded_length():
    params = cells.init(jax.random.PRNGKey(0), "V", 3, 4)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(xs, mask):
        return nets.lstm_layer("V", params, xs, mask)

    chex.clear_trace_counter()
    for length in (3, 7, 10):
        mask = (jnp.arange(10) < length).astype(jnp.float32)
        run(jnp.ones((10, 3)), mask)


def test_mixed_cell_computes_each_variant_from_its_embedded_parameters(x64):
    """V's cell with a variant's switches, on the variant's parameters embedded in V's layout (zeros elsewhere),
    against the hand-stepped loop of that variant; the embedding round-trips."""
    m, n, t = 3, 5, 9
    xs = np.random.default_rng(4).normal(size=(t, m))
    for variant in cells.MIXABLE:
        params = cells.init(jax.random.PRNGKey(2), variant, m, n, std=0.5, dtype=np.float64)
        mixed = cells.to_mixed(variant, params)
        assert {k: v.shape for k, v in mixed.items()} == cells.shapes("V", m, n)
        back = cells.from_mixed(variant, mixed)
        assert set(back) == set(params) and all(np.array_equal(back[k], params[k]) for k in params)
        # every entry of V's layout is either the variant's own or zero
        assert sum(int(np.count_nonzero(v)) for v in mixed.values()) == cells.count_params(variant, m, n)
        got = np.asarray(nets.lstm_layer("V", mixed, jnp.asarray(xs), switches=cells.switches(variant, np.float64)))
        want = reference_layer(variant, cells.to_paper(variant, params), xs)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10, err_msg=variant)


def test_mixed_cell_switches_and_bad_input():
    on = {v: {name for name, s in zip(cells.SWITCHES, cells.switches(v)) if s} for v in cells.MIXABLE}
    assert on == {"V": set(), "NIG": {"no_i"}, "NFG": {"no_f"}, "NOG": {"no_o"}, "NIAF": {"linear_g"},
                  "NOAF": {"linear_h"}, "NP": set(), "CIFG": {"cifg"}}
    assert "FGR" not in cells.MIXABLE and set(cells.MIXABLE) | {"FGR"} == set(cells.VARIANTS)
    with pytest.raises(ValueError, match="FGR has no mixed-cell form"):
        cells.switches("FGR")
    params = cells.init(jax.random.PRNGKey(0), "V", 2, 3)
    with pytest.raises(ValueError, match="must be 'V'"):
        nets.lstm_layer("NP", cells.init(jax.random.PRNGKey(0), "NP", 2, 3), jnp.zeros((4, 2)),
                        switches=cells.switches("NP"))
    with pytest.raises(ValueError, match=r"switches must be float\[6\]"):
        nets.lstm_layer("V", params, jnp.zeros((4, 2)), switches=np.zeros(5, np.float32))
