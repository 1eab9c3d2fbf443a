"""Benchmark: one LSTM layer's forward and forward+grad with its loops as Pallas kernels against XLA's loops.

`odyssey.fast_lstm.lstm_layer(..., loops="pallas")` runs each of the layer's two time loops as one Pallas
(Triton) kernel, one program per trial running all its steps (`odyssey.pallas_loops`), where the trainer's
default XLA loops launch a few kernels per time step (bench/gpu_kernels.py) and a step of a group of small
trials costs about its launches. This script times the layer both ways, vmapped over K trials, at the
tasks' shapes, and checks that they agree:

  * `pallas`: `lstm_layer(..., loops="pallas")`;
  * `xla`: `lstm_layer(..., loops="xla")`, the trainer's default (its loops unrolled by the platform's factor).

Both run the same input projection before the forward loop and the same weight-gradient products after
the backward loop; only the loops differ. Each trial runs its own length with Pallas (a program's loop
stops there), while the XLA loops run every trial to the longest (`steps`) and mask the rest:
--lengths=uneven measures what that is worth. With --cell=mixed every trial runs the mixed cell (V's
layout with switches, as the trainer's mixed program), the trials' variants in turn over the eight mixable.

Where this could go past the streamed-weight roofline (README "How fast"): a step of the XLA loop streams
every trial's R from memory; in the kernel a trial's R is read by one program, held in registers for
P ≤ --hoist_max (P: N rounded up to a power of two) and read in chunks of --chunk rows every step above,
and while the R of all programs resident on the chip fits its L2 cache (50 MB on an H100: ~75 trials at
N = 200 in float32) those reads need not reach memory. --shapes includes N = 200 with 64 trials to see that.

Timed at the tasks' shapes (JSB T = 60, M = 88; TIMIT T = 300, M = 39), arrays padded to 3T/2 steps,
with every trial's length T ("equal") or drawn uniformly in [T/2, 3T/2] ("uneven"); one compiled
program per shape serves both. Sequence-updates/s here count the layer's forward+grad only. The kernels'
values are tested in tests/test_pallas_loops.py (interpret mode); on a CPU this script runs the same timing
path with interpret-mode kernels, which is slow and says nothing about speed (use small --shapes).

    python bench/pallas_lstm_speed.py --device=gpu    # times forward and forward+grad, checks the values agree
    python bench/pallas_lstm_speed.py --deviceless    # compiles all programs for an H100 here (JAX's CUDA plugin,
                                                      # see bench/gpu_kernels.py), to catch errors before a GPU run
    python bench/pallas_lstm_speed.py --shapes=jsb:20:3 --repeats=1 --min_time=0   # CPU: the path, interpreted
"""

import functools
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "Where to run; on a CPU the Pallas kernels are interpreted.")
flags.DEFINE_bool("deviceless", False, "Compile every program for an H100 without a device, and stop.")
flags.DEFINE_list("shapes", ["jsb:40:487", "jsb:120:200", "jsb:200:64", "jsb:200:200", "timit:200:64"],
                  "task:hidden:trials (the JSB study's first group; N = 120, whose bfloat16 R the kernels hold "
                  "(P = 128); N = 200 with trials whose R fit / do not fit an H100's L2 cache); task jsb (T = 60, "
                  "M = 88) or timit (T = 300, M = 39).")
flags.DEFINE_enum("cell", "mixed", ["V", "mixed"], "V's cell, or the mixed cell with the eight mixable variants' "
                  "switches in turn over the trials (the trainer's mixed program).")
flags.DEFINE_list("recurrent_dtypes", ["float32"], "float32 and/or bfloat16: R's dtype in the loops (both programs).")
flags.DEFINE_list("passes", ["forward", "grad"], "forward and/or grad (forward+grad of the layer).")
flags.DEFINE_list("lengths", ["equal", "uneven"], "equal (every trial T steps) and/or uneven (each trial's length "
                  "uniform in [T/2, 3T/2]: xla runs all to the longest, pallas each to its own).")
flags.DEFINE_integer("hoist_max", 64, "Largest padded width P whose float32 R a program holds for its whole loop "
                     "(odyssey.pallas_loops.HOIST_MAX; bfloat16 R: pallas_loops.DOT_MAX, 128).")
flags.DEFINE_integer("chunk", 32, "Rows of R a program reads at a time above --hoist_max (pallas_loops.CHUNK).")
flags.DEFINE_integer("repeats", 5, "Timed measurements per program; the table shows the median.")
flags.DEFINE_float("min_time", 0.2, "Seconds of whole calls each measurement runs at least.")
flags.DEFINE_string("out", None, "Where to write the rows as JSON (rewritten as rows are measured, with complete: "
                    "false until the run ends).")

GATES = 4  # V: z, i, f, o


def layer(loops, recurrent_dtype, params, xs, length, switches, steps):
    """`odyssey.fast_lstm.lstm_layer("V", ...)` of one trial with mask 1 for its first `length` steps, its
    loops bounded by `steps` (unbatched under vmap: the longest length of all trials)."""
    import jax.numpy as jnp
    from odyssey import fast_lstm
    mask = (jnp.arange(xs.shape[0]) < length).astype(xs.dtype)
    return fast_lstm.lstm_layer("V", params, xs, mask, steps=steps, switches=switches, loops=loops,
                                recurrent_dtype=recurrent_dtype)


def trial_params(k, n, m, seed=0, dtype=np.float32):
    """k trials' V parameters at hidden size n (`odyssey.cells.init`), stacked on axis 0."""
    import jax
    from odyssey import cells
    out = [{name: np.asarray(v, dtype) for name, v in cells.init(key, "V", m, n).items()}
           for key in jax.random.split(jax.random.PRNGKey(seed), k)]
    return {name: np.stack([p[name] for p in out]) for name in out[0]}


def trial_switches(cell, k):
    """float[K, 6]: the mixable variants' switches in turn (cell "mixed"), or None (V's cell)."""
    from odyssey import cells
    if cell == "V":
        return None
    return np.stack([cells.switches(cells.MIXABLE[j % len(cells.MIXABLE)]) for j in range(k)])


def forward_program(fn, mixed):
    """jit(vmap) of fn(params, xs, length, switches, steps) over trials, `steps` shared (unbatched)."""
    import jax
    return jax.jit(jax.vmap(fn, in_axes=(0, 0, 0, 0 if mixed else None, None)))


def loss_and_grads(fn, mixed):
    """jit(vmap) of (params, xs, cotangents, length, switches, steps) -> Σ y ⊙ cotangents and its gradient
    w.r.t. (params, xs), for fn(params, xs, length, switches, steps); `steps` shared (unbatched)."""
    import jax
    import jax.numpy as jnp

    def loss(params, xs, cot, length, switches, steps):
        return jnp.sum(fn(params, xs, length, switches, steps) * cot)

    return jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)), in_axes=(0, 0, 0, 0, 0 if mixed else None, None)))


TASK_SHAPES = {"jsb": (60, 88), "timit": (300, 39)}  # steps (mean length) and inputs, as bench/trainer_speed.py


def _shapes():
    out = []
    for item in FLAGS.shapes:
        task, n, k = item.split(":")
        if task not in TASK_SHAPES:
            raise app.UsageError(f"--shapes: {item!r}: task must be one of {sorted(TASK_SHAPES)}")
        out.append((task, int(n), int(k)))
    return out


def trial_lengths(mode, t, k, rng):
    """Each trial's sequence length: "equal", all T; "uneven", uniform integers in [T/2, 3T/2] (mean T)."""
    if mode == "equal":
        return np.full(k, t, np.int32)
    return rng.integers(t // 2, 3 * t // 2 + 1, size=k).astype(np.int32)


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    from jax.sharding import SingleDeviceSharding
    import trainer_speed
    from odyssey import pallas_loops
    jax.config.update("jax_default_matmul_precision", "highest")  # true float32 products on both sides
    pallas_loops.HOIST_MAX, pallas_loops.CHUNK = FLAGS.hoist_max, FLAGS.chunk
    shapes = _shapes()
    mixed = FLAGS.cell == "mixed"
    programs = {}
    for rdt in FLAGS.recurrent_dtypes:
        rd = None if rdt == "float32" else jnp.dtype(rdt)
        programs[rdt] = {name: {"forward": forward_program(functools.partial(layer, name, rd), mixed),
                                "grad": loss_and_grads(functools.partial(layer, name, rd), mixed)}
                         for name in ("pallas", "xla")}
    if FLAGS.deviceless:
        import gpu_kernels
        from odyssey import fast_lstm
        sharding = SingleDeviceSharding(gpu_kernels.h100_topology().devices[0])  # the target of every compile
        fast_lstm.DEFAULT_UNROLL[jax.default_backend()] = fast_lstm.DEFAULT_UNROLL["gpu"]
        pallas_loops.INTERPRET = False  # Triton kernels for the GPU, though the host's backend is a CPU

        def spec(*shape, dtype=jnp.float32):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

        for task, n, k in shapes:
            t, m = TASK_SHAPES[task]
            t = 3 * t // 2
            params = {"W": spec(k, m, GATES, n), "R": spec(k, n, GATES, n), "b": spec(k, GATES, n), "p": spec(k, 3, n)}
            lengths, steps = spec(k, dtype=jnp.int32), spec(dtype=jnp.int32)
            sw = spec(k, 6) if mixed else None
            args = {"forward": (params, spec(k, t, m), lengths, sw, steps),
                    "grad": (params, spec(k, t, m), spec(k, t, n), lengths, sw, steps)}
            for rdt, by_name in programs.items():
                for name, fns in by_name.items():
                    for pass_ in FLAGS.passes:
                        with gpu_kernels.abstract_gpu_mesh(gpu_kernels.h100_topology()):
                            fns[pass_].lower(*args[pass_]).compile()
                    print(f"compiled for an H100: {task} N = {n}, K = {k}, {FLAGS.cell}, {rdt}, {name}: "
                          f"{', '.join(FLAGS.passes)}")
        return
    device = trainer_speed.jax_device(FLAGS.device)
    info = trainer_speed.machine_info(device)
    info["load_before"] = trainer_speed.load_average()
    run_flags = {"cell": FLAGS.cell, "hoist_max": FLAGS.hoist_max, "chunk": FLAGS.chunk}

    def save(rows, complete=False):
        if FLAGS.out:
            trainer_speed.write_json(FLAGS.out, {"machine": info, "flags": run_flags, "rows": rows,
                                                 "complete": complete})

    rows = time_shapes(device, shapes, FLAGS.passes, FLAGS.lengths, programs, on_rows=save)
    info["load_after"] = trainer_speed.load_average()
    print()
    print(f"cell: {FLAGS.cell}")
    print("| task | N | K | recurrent | lengths | pass | loops | ms a call | x XLA's loops | "
          "trials x sequences/s | max rel. diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['task']} | {r['hidden']} | {r['trials']} | {r['recurrent_dtype']} | {r['lengths']} | {r['pass']} | "
              f"{r['program']} | {1e3 * r['seconds']:.3f} | {r['x_xla']:.2f} | {r['sequences_per_second']:,.0f} | "
              f"{r['max_rel_diff_vs_xla']:.1e} |")
    print("'grad': forward+grad of the layer, a sequence-update's work in it less the optimizer and the output "
          "layer. Lengths: 'equal', every trial T steps (JSB 60, TIMIT 300); 'uneven', each trial's drawn "
          "uniformly in [T/2, 3T/2] (mean T), where xla runs every trial to the longest (the trainer's way) and "
          "pallas each to its own; arrays padded to 3T/2 in both. 'max rel. diff': the largest difference of "
          "pallas from xla over all outputs, relative to each output's largest magnitude.")
    trainer_speed.print_machine(info)
    save(rows, complete=True)


def _max_rel_diff(a, b):
    import jax
    worst = 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        worst = max(worst, float(np.abs(x - y).max()) / max(float(np.abs(y).max()), 1e-30))
    return worst


def time_shapes(device, shapes, passes, modes, programs, on_rows=None):
    """Rows of the timing table: for each shape, recurrent dtype, lengths mode and pass, both programs timed
    in turn (`trainer_speed.measure`, interleaved repeats). One compiled program per shape serves both
    modes: arrays are padded to 3T/2, and the lengths and the shared step count are inputs. `on_rows(rows)`,
    if given, is called with the rows so far each time new ones are measured, before they are printed."""
    import jax
    import trainer_speed
    from odyssey import pallas_loops
    rows = []
    rng = np.random.default_rng(0)
    for task, n, k in shapes:
        t, m = TASK_SHAPES[task]
        padded = 3 * t // 2
        params = jax.device_put(trial_params(k, n, m), device)
        switches = trial_switches(FLAGS.cell, k)
        switches = None if switches is None else jax.device_put(switches, device)
        xs = jax.device_put(rng.normal(size=(k, padded, m)).astype(np.float32), device)
        cot = jax.device_put(rng.normal(size=(k, padded, n)).astype(np.float32), device)
        for mode in modes:
            lengths = trial_lengths(mode, t, k, rng)
            length_arg = jax.device_put(lengths, device)
            steps = jax.device_put(np.int32(lengths.max()), device)
            args = {"forward": (params, xs, length_arg, switches, steps),
                    "grad": (params, xs, cot, length_arg, switches, steps)}
            for rdt, by_name in programs.items():
                for pass_ in passes:
                    values = {name: fns[pass_](*args[pass_]) for name, fns in by_name.items()}
                    diff = _max_rel_diff(values["pallas"], values["xla"])

                    def seconds(fn, a=args[pass_]):
                        def call():
                            start = time.perf_counter()
                            jax.block_until_ready(fn(*a))
                            return time.perf_counter() - start
                        return call

                    times = trainer_speed.measure({name: seconds(fns[pass_]) for name, fns in by_name.items()},
                                                  FLAGS.repeats, FLAGS.min_time)
                    base = times["xla"]["median"]
                    new = []
                    for name, r in times.items():
                        new.append({"task": task, "program": name, "pass": pass_, "recurrent_dtype": rdt,
                                    "lengths": mode, "hidden": n, "width": pallas_loops._pow2(n), "trials": k, "steps": t,
                                    "padded_steps": padded, "longest": int(lengths.max()),
                                    "mean_length": float(lengths.mean()), "seconds": r["median"],
                                    "x_xla": base / r["median"], "sequences_per_second": k / r["median"],
                                    "max_rel_diff_vs_xla": diff})
                    rows += new
                    if on_rows is not None:
                        on_rows(rows)
                    for r in new:
                        print(f"{task} N={n} K={k} {rdt} {mode} {pass_:>7} {r['program']:>6}: "
                              f"{1e3 * r['seconds']:.3f} ms a call, {r['x_xla']:.2f}x XLA's loops, diff {diff:.1e}",
                              flush=True)
    return rows


if __name__ == "__main__":
    app.run(main)
