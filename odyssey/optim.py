"""SGD with Nesterov or classical momentum in Sutskever's form, the paper's (1 − momentum) scaling, clipping.

The paper's update (Section 4.2), for learning rate η, momentum μ and ε = η (1 − μ):

    v ← μ v − ε ∇f(θ + μ v)     (Nesterov; classical momentum takes ∇f(θ))
    θ ← θ + v

The state keeps θ itself, so evaluation uses the parameters the paper's update defines. (optax's
`sgd(nesterov=True)` keeps the look-ahead point Θ = θ + μ v instead; `from_optax_nesterov` converts.)
Clipping, where switched on, bounds every gradient element to [−1, 1] before the update.
All hyperparameters may be traced arrays, so one compiled program serves trials with different ones.
"""

import jax
import jax.numpy as jnp


def gradient_point(params, velocity, momentum, nesterov):
    """The parameters at which the gradient of this update is taken: θ + μ v (Nesterov) or θ (classical).

    Args:
      params: θ, a pytree.
      velocity: v, a pytree like params.
      momentum: μ, a scalar.
      nesterov: a boolean scalar (Python or traced).
    """
    mu = jnp.where(nesterov, momentum, 0.0)
    return jax.tree_util.tree_map(lambda p, v: p + (mu * v).astype(p.dtype), params, velocity)


def update(params, velocity, grads, learning_rate, momentum, clip):
    """One momentum step; `grads` must be taken at `gradient_point(params, velocity, ...)`.

    Args:
      params: θ.
      velocity: v.
      grads: ∇f at the gradient point, a pytree like params.
      learning_rate: η (scaled by 1 − μ here).
      momentum: μ in [0, 1).
      clip: whether to clip each gradient element to [−1, 1] (boolean scalar).

    Returns:
      (new params, new velocity).
    """
    new_velocity = velocity_step(velocity, grads, learning_rate, momentum, clip)
    return jax.tree_util.tree_map(lambda p, v: p + v, params, new_velocity), new_velocity


def velocity_step(velocity, grads, learning_rate, momentum, clip):
    """v' = μ v − η (1 − μ) g (g clipped to [−1, 1] where `clip`): the velocity half of `update`, θ' = θ + v'."""
    eps = learning_rate * (1.0 - momentum)

    def one(v, g):
        g = jnp.where(clip, jnp.clip(g, -1.0, 1.0), g)
        return (momentum * v - eps * g).astype(v.dtype)

    return jax.tree_util.tree_map(one, velocity, grads)


def from_optax_nesterov(lookahead_params, trace, scaled_learning_rate, momentum):
    """θ from the state of `optax.sgd(ε, momentum=μ, nesterov=True)`: θ = Θ + ε μ t (since v = −ε t)."""
    return jax.tree_util.tree_map(lambda p, t: p + scaled_learning_rate * momentum * t, lookahead_params, trace)
