"""Prototype benchmark: the LSTM's forward recurrence as one Pallas kernel per layer, against the trainer's loop.

On a GPU the trainer's LSTM loops launch a few kernels per time step (bench/gpu_kernels.py), and a step of a
group of small trials costs about their launches whatever they compute. A kernel that runs the whole time
loop itself, one trial per program with its recurrent weights held on chip, launches once per layer and
pass. This script measures whether that pays before the trainer is built around it: the forward pass of V
(peepholes, tanh, sigmoid gates) for K trials at once, vmapped,

  * `pallas`: the input projection (an XLA product) and then the recurrence as one Pallas (Triton) kernel,
    each program holding its trial's R (four N x N gate blocks) and running the T steps itself;
  * `xla`: the trainer's layer, `odyssey.fast_lstm.lstm_layer` (its loop unrolled by the platform's factor).

Both compute the same outputs; the kernel needs N a power of two (Triton's block shapes), so a trial of
N = 40 runs padded to 64 there (padded units stay exactly 0), and both are timed at the padded N and the
XLA layer also at the trial's own N. Only the forward pass is prototyped; the backward pass would be a
second kernel of the same form.

    python bench/pallas_forward_speed.py                 # CPU: the kernel in interpret mode against a hand-stepped loop
    python bench/pallas_forward_speed.py --device=gpu    # times both, prints a table, checks the outputs agree
    python bench/pallas_forward_speed.py --deviceless    # compiles both for an H100 here (JAX's CUDA plugin, see
                                                         # bench/gpu_kernels.py), to catch errors before a GPU run
"""

import functools
import json
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "cpu: check the kernel in interpret mode; gpu: time it.")
flags.DEFINE_bool("deviceless", False, "Compile both programs for an H100 without a device, and stop.")
flags.DEFINE_list("shapes", ["40:487", "200:200"], "hidden:trials pairs (the JSB study's first group; N = 200).")
flags.DEFINE_integer("steps", 60, "Time steps per sequence (JSB's mean).")
flags.DEFINE_integer("inputs", 88, "Inputs per step (JSB's 88 keys).")
flags.DEFINE_integer("num_warps", 4, "Warps per Triton program.")
flags.DEFINE_integer("repeats", 5, "Timed measurements per program; the table shows the median.")
flags.DEFINE_float("min_time", 0.2, "Seconds of whole calls each measurement runs at least.")
flags.DEFINE_string("out", None, "Where to write the rows as JSON.")


def _kernel(xw_ref, r_ref, p_ref, y_ref, *, steps):
    """One trial: xw_ref float[T, 4, N] (input projection and bias, gates z, i, f, o), r_ref float[N, 4, N],
    p_ref float[3, N] (peepholes i, f, o); writes the block outputs y_t into y_ref float[T, N]."""
    import jax
    import jax.numpy as jnp
    n = r_ref.shape[0]
    rz, ri, rf, ro = (r_ref[:, g, :] for g in range(4))
    pi, pf, po = p_ref[0, :], p_ref[1, :], p_ref[2, :]

    def step(t, carry):
        h, c = carry
        col = h[:, None]
        z = jnp.tanh(jnp.sum(col * rz, axis=0) + xw_ref[t, 0, :])
        i = jax.nn.sigmoid(jnp.sum(col * ri, axis=0) + xw_ref[t, 1, :] + pi * c)
        f = jax.nn.sigmoid(jnp.sum(col * rf, axis=0) + xw_ref[t, 2, :] + pf * c)
        c = z * i + c * f
        o = jax.nn.sigmoid(jnp.sum(col * ro, axis=0) + xw_ref[t, 3, :] + po * c)
        h = jnp.tanh(c) * o
        y_ref[t, :] = h
        return h, c

    zero = jnp.zeros((n,), jnp.float32)
    jax.lax.fori_loop(0, steps, step, (zero, zero))


def pallas_layer(params, xs, interpret=False, num_warps=4):
    """V's forward pass over xs float[T, M] with `_kernel` for the recurrence; params in `odyssey.cells`' layout."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pltriton
    t = xs.shape[0]
    n = params["R"].shape[0]
    xw = jnp.einsum("tm,mgn->tgn", xs, params["W"], precision="highest") + params["b"]
    params_ = None if interpret else pltriton.CompilerParams(num_warps=num_warps)
    return pl.pallas_call(functools.partial(_kernel, steps=t), out_shape=jax.ShapeDtypeStruct((t, n), jnp.float32),
                          interpret=interpret, compiler_params=params_)(xw, params["R"], params["p"])


def xla_layer(params, xs):
    from odyssey import fast_lstm
    return fast_lstm.lstm_layer("V", params, xs)


def reference(params, xs):
    """V's forward pass, stepped by hand in float64 numpy (DESIGN §1)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    n = p["R"].shape[0]
    h, c = np.zeros(n), np.zeros(n)
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    out = []
    for x in np.asarray(xs, np.float64):
        a = np.einsum("m,mgn->gn", x, p["W"]) + p["b"] + np.einsum("k,kgn->gn", h, p["R"])
        z, i, f = np.tanh(a[0]), sig(a[1] + p["p"][0] * c), sig(a[2] + p["p"][1] * c)
        c = z * i + c * f
        h = np.tanh(c) * sig(a[3] + p["p"][2] * c)
        out.append(h)
    return np.stack(out)


def trial_params(k, n, n_pad, m, seed=0):
    """k trials' V parameters at hidden size n, zero-padded to n_pad (float32, stacked on axis 0)."""
    import jax
    from odyssey import cells
    keys = jax.random.split(jax.random.PRNGKey(seed), k)
    out = []
    for key in keys:
        p = {name: np.asarray(v) for name, v in cells.init(key, "V", m, n).items()}
        grow = n_pad - n
        p = {"W": np.pad(p["W"], ((0, 0), (0, 0), (0, grow))), "R": np.pad(p["R"], ((0, grow), (0, 0), (0, grow))),
             "b": np.pad(p["b"], ((0, 0), (0, grow))), "p": np.pad(p["p"], ((0, 0), (0, grow)))}
        out.append(p)
    return {name: np.stack([p[name] for p in out]) for name in out[0]}


def _pow2(n):
    return 1 << (n - 1).bit_length()


def check_interpret():
    """The kernel in interpret mode against the hand-stepped loop, padded and not, vmapped over trials."""
    import jax
    rng = np.random.default_rng(1)
    print("the kernel (interpret mode) against a hand-stepped float64 loop, V, T = 12:")
    for n, n_pad, k in ((8, 8, 3), (5, 8, 2), (16, 32, 2)):
        params = trial_params(k, n, n_pad, 7, seed=n)
        xs = rng.normal(size=(k, 12, 7)).astype(np.float32)
        got = np.asarray(jax.vmap(functools.partial(pallas_layer, interpret=True))(params, xs))
        want = [reference({kk: v[j][..., :n] if kk != "R" else v[j][:n, :, :n] for kk, v in
                           {"W": params["W"], "R": params["R"], "b": params["b"], "p": params["p"]}.items()}, xs[j])
                for j in range(k)]
        err = max(float(np.abs(got[j, :, :n] - want[j]).max()) for j in range(k))
        pad = float(np.abs(got[:, :, n:]).max()) if n_pad > n else 0.0
        print(f"  N = {n} (padded to {n_pad}), K = {k}: max |error| {err:.2e}; padded units max |y| {pad:.1e}")
        if not (err < 1e-5 and pad == 0.0):
            raise SystemExit("the kernel disagrees with the hand-stepped loop")


def main(argv):
    del argv
    if FLAGS.device == "cpu" and not FLAGS.deviceless:
        check_interpret()
        return
    import jax
    import jax.numpy as jnp
    from jax.sharding import SingleDeviceSharding
    import trainer_speed
    shapes = [tuple(int(v) for v in item.split(":")) for item in FLAGS.shapes]
    t, m = FLAGS.steps, FLAGS.inputs
    pallas = jax.jit(jax.vmap(functools.partial(pallas_layer, num_warps=FLAGS.num_warps)))
    xla = jax.jit(jax.vmap(xla_layer))
    if FLAGS.deviceless:
        import gpu_kernels
        from odyssey import fast_lstm
        sharding = SingleDeviceSharding(gpu_kernels.h100_topology().devices[0])
        fast_lstm.DEFAULT_UNROLL[jax.default_backend()] = fast_lstm.DEFAULT_UNROLL["gpu"]
        for n, k in shapes:
            for name, fn, width in (("pallas", pallas, _pow2(n)), ("xla", xla, _pow2(n)), ("xla", xla, n)):
                shapes_of = {"W": (k, m, 4, width), "R": (k, width, 4, width), "b": (k, 4, width), "p": (k, 3, width)}
                params = {name: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding) for name, s in shapes_of.items()}
                fn.lower(params, jax.ShapeDtypeStruct((k, t, m), jnp.float32, sharding=sharding)).compile()
                print(f"compiled for an H100: {name} N = {width}, K = {k}, T = {t}")
        return
    device = trainer_speed.jax_device("gpu")
    info = trainer_speed.machine_info(device)
    info["load_before"] = trainer_speed.load_average()
    rows = time_shapes(device, shapes, t, m, pallas, xla)
    info["load_after"] = trainer_speed.load_average()
    print()
    print("| N | K | program | width | ms a forward pass | us a step | x the trainer's loop at N | max |y diff| |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['hidden']} | {r['trials']} | {r['program']} | {r['width']} | {1e3 * r['seconds']:.3f} | "
              f"{r['us_per_step']:.1f} | {r['x_xla_own']:.2f} | {r['max_abs_diff_vs_xla']:.1e} |")
    trainer_speed.print_machine(info)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)


def time_shapes(device, shapes, t, m, pallas, xla):
    """Rows of the timing table: for each (N, K), both programs timed in turn (`trainer_speed.measure`)."""
    import jax
    import trainer_speed
    rows = []
    rng = np.random.default_rng(0)
    for n, k in shapes:
        n_pad = _pow2(n)
        padded = jax.device_put(trial_params(k, n, n_pad, m), device)
        own = jax.device_put(trial_params(k, n, n, m), device)
        xs = jax.device_put(rng.normal(size=(k, t, m)).astype(np.float32), device)
        ys_pallas = np.asarray(pallas(padded, xs))
        ys_xla = np.asarray(xla(own, xs))
        agree = float(np.abs(ys_pallas[:, :, :n] - ys_xla).max())
        def seconds(fn, params):
            def call():
                start = time.perf_counter()
                fn(params, xs).block_until_ready()
                return time.perf_counter() - start
            return call

        fns = {("pallas", n_pad): seconds(pallas, padded), ("xla", n_pad): seconds(xla, padded),
               ("xla", n): seconds(xla, own)}
        times = trainer_speed.measure(fns, FLAGS.repeats, FLAGS.min_time)
        base = times[("xla", n)]["median"]
        for (name, width), r in times.items():
            rows.append({"program": name, "hidden": n, "width": width, "trials": k, "steps": t,
                         "seconds": r["median"], "us_per_step": 1e6 * r["median"] / t, "x_xla_own": base / r["median"],
                         "max_abs_diff_vs_xla": agree})
            print(f"N={n} K={k} {name:>6} at width {width}: {1e3 * r['median']:.3f} ms a forward pass, "
                  f"{1e6 * r['median'] / t:.1f} us a step, {base / r['median']:.2f}x the trainer's loop", flush=True)
    return rows


if __name__ == "__main__":
    app.run(main)
