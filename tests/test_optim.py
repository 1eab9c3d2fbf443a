"""Tests of the momentum update against hand-written Sutskever steps and against optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from odyssey import optim


def _quadratic_grad(a, target):
    return lambda theta: a * (theta - target) + 0.3 * np.sin(theta)


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("clip", [True, False])
def test_matches_hand_written_sutskever_steps(nesterov, clip, x64):
    rng = np.random.default_rng(0)
    a, target = rng.uniform(0.5, 30.0, 6), rng.normal(size=6)
    grad = _quadratic_grad(a, target)
    lr, mu = 0.05, 0.9
    theta, v = rng.normal(size=6), np.zeros(6)
    params, velocity = {"w": jnp.asarray(theta)}, {"w": jnp.zeros(6)}
    for _ in range(20):
        # The paper: v <- mu v - lr (1 - mu) g(theta + mu v); theta <- theta + v.
        g = grad(theta + mu * v) if nesterov else grad(theta)
        if clip:
            g = np.clip(g, -1, 1)
        v = mu * v - lr * (1 - mu) * g
        theta = theta + v
        point = optim.gradient_point(params, velocity, mu, nesterov)
        grads = {"w": jnp.asarray(grad(np.asarray(point["w"])))}
        params, velocity = optim.update(params, velocity, grads, lr, mu, clip)
    np.testing.assert_allclose(params["w"], theta, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(velocity["w"], v, rtol=1e-12, atol=1e-12)


def test_optax_nesterov_converts_to_the_paper_parameters(x64):
    """optax keeps the look-ahead point; θ = Θ + ε μ t recovers the paper's θ at every step."""
    rng = np.random.default_rng(1)
    a, target = rng.uniform(0.5, 10.0, 5), rng.normal(size=5)
    grad = _quadratic_grad(a, target)
    lr, mu = 0.2, 0.8
    eps = lr * (1 - mu)
    start = rng.normal(size=5)
    tx = optax.sgd(eps, momentum=mu, nesterov=True)
    big_theta = jnp.asarray(start)
    opt_state = tx.init(big_theta)
    params, velocity = {"w": jnp.asarray(start)}, {"w": jnp.zeros(5)}
    for _ in range(15):
        updates, opt_state = tx.update(jnp.asarray(grad(np.asarray(big_theta))), opt_state)
        big_theta = optax.apply_updates(big_theta, updates)
        point = optim.gradient_point(params, velocity, mu, True)
        params, velocity = optim.update(params, velocity, {"w": jnp.asarray(grad(np.asarray(point["w"])))}, lr, mu,
                                        False)
        trace = opt_state[0].trace
        np.testing.assert_allclose(optim.from_optax_nesterov(big_theta, trace, eps, mu), params["w"], rtol=1e-10)
        np.testing.assert_allclose(optim.gradient_point(params, velocity, mu, True)["w"], big_theta, rtol=1e-10)


def test_traced_per_trial_hyperparameters_under_vmap(x64):
    lr = jnp.array([0.1, 0.01])
    mu = jnp.array([0.5, 0.99])
    nesterov = jnp.array([True, False])
    clip = jnp.array([False, True])
    params = {"w": jnp.ones((2, 3))}
    velocity = {"w": jnp.full((2, 3), 0.5)}
    grads = {"w": jnp.full((2, 3), 4.0)}
    new_p, new_v = jax.vmap(optim.update)(params, velocity, grads, lr, mu, clip)
    for k in range(2):
        g = min(4.0, 1.0) if bool(clip[k]) else 4.0
        v = float(mu[k]) * 0.5 - float(lr[k]) * (1 - float(mu[k])) * g
        np.testing.assert_allclose(new_v["w"][k], v, rtol=1e-12)
        np.testing.assert_allclose(new_p["w"][k], 1.0 + v, rtol=1e-12)
    point = jax.vmap(optim.gradient_point)(params, velocity, mu, nesterov)
    np.testing.assert_allclose(point["w"][0], 1.0 + 0.5 * 0.5)
    np.testing.assert_allclose(point["w"][1], 1.0)
