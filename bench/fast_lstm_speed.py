"""Benchmark: forward+gradient of one LSTM layer, autodiff (`nets.lstm_layer`) against `fast_lstm.lstm_layer`.

Run: python bench/fast_lstm_speed.py [--repeats=20] [--variants=V,CIFG,FGR] [--hidden=100,200] [--trials=1,8]

The JSB shape (DESIGN §2): T = 60 steps of M = 88 inputs, N blocks, float32, with a padding mask as the
trainer passes one. K trials are vmapped (each its own parameters, inputs and cotangent), and the jitted
program returns the loss Σ_t <cotangent_t, y_t> and its gradient w.r.t. the layer's parameters, i.e. one
forward pass and BPTT. Both programs are compiled and checked against each other first, then called
alternately so that a change in the machine's load hits both alike; the table shows median wall times and
the speed-up autodiff / fast (above 1 means the hand-written backward pass is faster).
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from odyssey import cells, fast_lstm, nets

import trainer_speed  # bench/ is the script's folder, so on sys.path

_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per measurement; the median is shown.")
_VARIANTS = flags.DEFINE_list("variants", ["V"], "LSTM variants to time (odyssey.cells.VARIANTS).")
_HIDDEN = flags.DEFINE_list("hidden", ["100", "200"], "Hidden sizes N.")
_TRIALS = flags.DEFINE_list("trials", ["1", "8"], "Numbers K of vmapped trials.")
_STEPS = flags.DEFINE_integer("steps", 60, "Time steps T (JSB chorales: about 60 after the usual split).")
_INPUTS = flags.DEFINE_integer("inputs", 88, "Inputs per step M (JSB: 88 piano keys).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the parameters and data.")


def _program(layer, variant):
    """jit(vmap(value_and_grad)) of <cotangent, layer outputs> w.r.t. the layer's parameters."""
    def loss(params, xs, mask, cot):
        return jnp.sum(layer(variant, params, xs, mask) * cot)

    return jax.jit(jax.vmap(jax.value_and_grad(loss)))


def _inputs(variant, k, t, m, n, seed):
    rng = np.random.default_rng(seed)
    trials = [cells.init(jax.random.PRNGKey(seed + j), variant, m, n) for j in range(k)]
    params = {name: jnp.asarray(np.stack([p[name] for p in trials])) for name in trials[0]}
    xs = jnp.asarray(rng.normal(size=(k, t, m)).astype(np.float32))
    # each trial's sequence fills 80-100 % of the padded length, as in a batch of mixed lengths
    lengths = rng.integers(int(0.8 * t), t + 1, size=k)
    mask = jnp.asarray((np.arange(t)[None, :] < lengths[:, None]).astype(np.float32))
    cot = jnp.asarray(rng.normal(size=(k, t, n)).astype(np.float32))
    return params, xs, mask, cot


def main(argv):
    del argv
    print(f"device: {jax.devices()[0].device_kind}; T={_STEPS.value}, M={_INPUTS.value}, float32, jit(vmap); "
          f"median of {_REPEATS.value} calls of forward+grad; times in ms")
    header = ("variant", "N", "K", "compile a", "compile f", "autodiff", "fast", "speed-up")
    print("".join(f"{h:>10}" for h in header))
    for variant in _VARIANTS.value:
        autodiff, fast = _program(nets.lstm_layer, variant), _program(fast_lstm.lstm_layer, variant)
        for n in map(int, _HIDDEN.value):
            for k in map(int, _TRIALS.value):
                args = _inputs(variant, k, _STEPS.value, _INPUTS.value, n, _SEED.value)
                compile_s = []
                results = []
                for fn in (autodiff, fast):
                    start = time.perf_counter()
                    results.append(jax.block_until_ready(fn(*args)))
                    compile_s.append(time.perf_counter() - start)
                # a wrong gradient would make the timing meaningless
                for a, b in zip(jax.tree_util.tree_leaves(results[0]), jax.tree_util.tree_leaves(results[1])):
                    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4 * float(np.max(np.abs(a))))
                t_a, t_f = trainer_speed.paired_median_seconds(autodiff, fast, args, _REPEATS.value)
                row = (variant, n, k, f"{compile_s[0]:.2f}s", f"{compile_s[1]:.2f}s", f"{1e3 * t_a:.2f}",
                       f"{1e3 * t_f:.2f}", f"{t_a / t_f:.2f}")
                print("".join(f"{v:>10}" for v in row), flush=True)


if __name__ == "__main__":
    app.run(main)
