"""Prototype benchmark: V's LSTM layer with both recurrences as Pallas kernels, against the trainer's loops.

On a GPU the trainer's LSTM loops launch a few kernels per time step (bench/gpu_kernels.py), and a step of a
group of small trials costs about their launches whatever they compute. Here each of the layer's two loops
is one Pallas (Triton) kernel per layer and pass: one program per trial runs all T steps itself, so a
forward+backward pass of K vmapped trials is two launches plus the products outside the loops. This script
measures whether that pays before the trainer is built around it.

  * `pallas` (`pallas_lstm_layer`): the input projection xs W + b (one XLA product), then the forward
    recurrence as one kernel that writes y_t, c_t and the four gate activations; its backward pass is a
    second kernel, the reverse loop of `odyssey.fast_lstm` (it emits the pre-activation deltas δā_t and
    carries δy, δc), and then every weight gradient is one XLA product over all steps (dW = xsᵀ δA,
    dR = Y'ᵀ δA, ...), as in `odyssey.fast_lstm`;
  * `xla`: the trainer's layer, `odyssey.fast_lstm.lstm_layer` (its loops unrolled by the platform's factor).

Triton's blocks need power-of-two shapes: a trial of N units runs in blocks of P = next power of two, its
weights zero-padded (padded units stay exactly 0), and where N < P the kernels load R with a mask so that
only the N × N entries are read from memory. For P ≤ --hoist_max the kernels load each trial's R once,
before the time loop (held in registers); above it they load R at every step (from the L1/L2 caches or
memory). Each trial runs its own length (a program's loop stops there), where the trainer's loops run all
trials of an update to the longest (`steps`) and mask the rest: --lengths=uneven measures what that is
worth. The mixed cell's switches, FGR and the bidirectional layers are left out: V only.

Where this could go past the streamed-weight roofline (README "How fast"): a step of the XLA loop streams
every trial's R from memory; in the kernel a trial's R is read by one program, and while the R of all
programs resident on the chip fits its L2 cache (50 MB on an H100: ~75 trials at N = 200 in float32) those
reads need not reach memory at all. --shapes includes N = 200 with 64 trials to see that.

Timed at the tasks' shapes (JSB T = 60, M = 88; TIMIT T = 300, M = 39), arrays padded to 3T/2 steps,
with every trial's length T ("equal") or drawn uniformly in [T/2, 3T/2] ("uneven"); one compiled
program per shape serves both. Sequence-updates/s here count the layer's forward+grad only.

    python bench/pallas_lstm_speed.py                 # CPU: both kernels in interpret mode against references
    python bench/pallas_lstm_speed.py --device=gpu    # times forward and forward+grad, checks the values agree
    python bench/pallas_lstm_speed.py --deviceless    # compiles all programs for an H100 here (JAX's CUDA plugin,
                                                      # see bench/gpu_kernels.py), to catch errors before a GPU run
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
flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "cpu: check the kernels in interpret mode; gpu: time them.")
flags.DEFINE_bool("deviceless", False, "Compile every program for an H100 without a device, and stop.")
flags.DEFINE_list("shapes", ["jsb:40:487", "jsb:200:64", "jsb:200:200", "timit:200:64"],
                  "task:hidden:trials (the JSB study's first group; N = 200 with trials whose R fit / do not fit "
                  "an H100's L2 cache); task jsb (T = 60, M = 88) or timit (T = 300, M = 39).")
flags.DEFINE_list("recurrent_dtypes", ["float32"], "float32 and/or bfloat16: R's dtype in the loops (both programs).")
flags.DEFINE_list("passes", ["forward", "grad"], "forward and/or grad (forward+grad of the layer).")
flags.DEFINE_list("lengths", ["equal", "uneven"], "equal (every trial T steps) and/or uneven (each trial's length "
                  "uniform in [T/2, 3T/2]: xla runs all to the longest, pallas each to its own).")
flags.DEFINE_integer("num_warps", 0, "Warps per Triton program; 0: 4 where R is held, 8 where it is read in "
                     "chunks (compiled for an H100: 163-207 and 80-103 registers a thread, no spills).")
flags.DEFINE_integer("hoist_max", 64, "Largest padded width P whose R a program loads once, before its loop.")
flags.DEFINE_integer("chunk", 32, "Rows of R a program reads at a time, above --hoist_max.")
flags.DEFINE_integer("repeats", 5, "Timed measurements per program; the table shows the median.")
flags.DEFINE_float("min_time", 0.2, "Seconds of whole calls each measurement runs at least.")
flags.DEFINE_string("out", None, "Where to write the rows as JSON.")

GATES = 4  # V: z, i, f, o


def _pow2(n):
    return 1 << (n - 1).bit_length()


def _block(ref, g, start, chunk, n):
    """Rows start..start+chunk of gate g's [P, P] weight block, only entries inside n × n read (others 0)."""
    import jax.numpy as jnp
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pltriton
    width = ref.shape[-1]
    rows = (start + jnp.arange(chunk)) < n
    cols = jnp.arange(width) < n
    return pltriton.load(ref.at[jnp.int32(g), pl.ds(start, chunk), :], mask=rows[:, None] & cols[None, :], other=0.0)


def _row(ref, index, n, start=0, size=None):
    """ref[index..., start:start + size] of a kernel ref whose last axis is P units, entries from unit n on
    read as 0 and not loaded (padded units' rows may be unwritten memory). `index`: leading indices."""
    import jax.numpy as jnp
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pltriton
    size = ref.shape[-1] if size is None else size
    inside = (start + jnp.arange(size)) < n
    return pltriton.load(ref.at[tuple(jnp.int32(i) if isinstance(i, int) else i for i in index) + (pl.ds(start, size),)],
                         mask=inside, other=0.0)


def _matvec(block, vec):
    """Σ_k block[j, k] vec[k] for a [rows, P] weight block: the vector rounded to the block's dtype (as
    `odyssey.fast_lstm`'s `recurrent_dtype`), the products and sum in the vector's dtype."""
    import jax.numpy as jnp
    vec = vec.astype(block.dtype).astype(vec.dtype)
    return jnp.sum(block.astype(vec.dtype) * vec[None, :], axis=1)


def _weights(ref, n):
    """The four [P, P] blocks of a kernel's recurrent-weight ref float[4, P, P], loaded once (held in
    registers for the whole loop); only the n × n entries are read where n < P (the rest 0)."""
    return [_block(ref, g, 0, ref.shape[-1], n) for g in range(GATES)]


def _cell(pre, c_prev, peep):
    """V's step from its four pre-activations without peepholes (z, i, f, o) and c_{t−1}; peep = (p_i,
    p_f, p_o). Returns y_t, c_t and the activations (z, i, f, o)."""
    import jax
    import jax.numpy as jnp
    pi, pf, po = peep
    z = jnp.tanh(pre[0])
    i = jax.nn.sigmoid(pre[1] + pi * c_prev)
    f = jax.nn.sigmoid(pre[2] + pf * c_prev)
    c = z * i + c_prev * f
    o = jax.nn.sigmoid(pre[3] + po * c)
    return jnp.tanh(c) * o, c, (z, i, f, o)


def _cell_deltas(dy, dc_next, acts, c, c_prev, peep):
    """`odyssey.fast_lstm`'s backward step of V: from δy_t (this step's cotangent plus R δā_{t+1}), δc_{t+1},
    the activations (z, i, f, o), c_t and c_{t−1}, the pre-activation deltas (δā_z, δā_i, δā_f, δā_o) and
    δc_t, the cell delta the step before receives."""
    import jax.numpy as jnp
    z, i, f, o = acts
    pi, pf, po = peep
    hc = jnp.tanh(c)
    dao = dy * hc * o * (1.0 - o)
    dc = dc_next + dy * o * (1.0 - hc * hc) + dao * po
    dai = dc * z * i * (1.0 - i)
    daf = dc * c_prev * f * (1.0 - f)
    return (dc * i * (1.0 - z * z), dai, daf, dao), dc * f + dai * pi + daf * pf


def _forward_kernel(len_ref, xw_ref, rt_ref, p_ref, y_ref, c_ref, a_ref, *, n):
    """One trial's forward loop over its first len_ref[0] steps (int32[1], the trial's length). xw_ref
    float[T, 4, P] (xs W + b), rt_ref float[4, P, P] (gate g's Rᵀ: rt[g, j, k] = R[k, g, j]), p_ref
    float[3, P] (peepholes i, f, o); writes y_t, c_t into y_ref, c_ref float[T, P] and the activations
    z, i, f, o into a_ref float[T, 4, P] (steps from the length on are not written)."""
    import jax
    import jax.numpy as jnp
    weight = _weights(rt_ref, n)
    peep = (p_ref[0, :], p_ref[1, :], p_ref[2, :])

    def step(t, carry):
        y, c_prev = carry
        y, c, acts = _cell([_matvec(weight[g], y) + xw_ref[t, g, :] for g in range(GATES)], c_prev, peep)
        y_ref[t, :] = y
        c_ref[t, :] = c
        for g, act in enumerate(acts):
            a_ref[t, g, :] = act
        return y, c

    zero = jnp.zeros(y_ref.shape[1:], y_ref.dtype)
    jax.lax.fori_loop(0, len_ref[0], step, (zero, zero))


def _backward_kernel(len_ref, dy_ref, c_ref, a_ref, r_ref, p_ref, da_ref, *, n):
    """One trial's backward loop (`odyssey.fast_lstm`'s step, V): dy_ref float[T, P] (the outputs'
    cotangents), c_ref and a_ref the forward's cells and activations, r_ref float[4, P, P] (gate g's R:
    r[g, k, j] = R[k, g, j]); writes the pre-activation deltas δā_z, δā_i, δā_f, δā_o into da_ref, from
    the trial's last step (len_ref[0] − 1) back to its first."""
    import jax
    import jax.numpy as jnp
    weight = _weights(r_ref, n)
    peep = (p_ref[0, :], p_ref[1, :], p_ref[2, :])
    steps = len_ref[0]

    def step(s, carry):
        t = steps - 1 - s
        dy_next, dc_next = carry
        c_prev = jnp.where(t > 0, c_ref[jnp.maximum(t - 1, 0), :], 0.0)
        deltas, dc = _cell_deltas(dy_ref[t, :] + dy_next, dc_next, [a_ref[t, g, :] for g in range(GATES)],
                                  c_ref[t, :], c_prev, peep)
        for g, d in enumerate(deltas):
            da_ref[t, g, :] = d
        return sum(_matvec(weight[g], d) for g, d in enumerate(deltas)), dc

    zero = jnp.zeros(dy_ref.shape[1:], dy_ref.dtype)
    jax.lax.fori_loop(0, steps, step, (zero, zero))


def _forward_kernel_chunked(len_ref, xw_ref, rt_ref, p_ref, y_ref, c_ref, a_ref, *, n, chunk, barrier):
    """`_forward_kernel` for a width P whose weights do not fit in registers: at every step the units are
    computed `chunk` at a time, each chunk reading its rows of the four Rᵀ blocks ([chunk, P] each) and the
    whole y_{t−1} from y_ref, where the previous step wrote it; a barrier ends the step. Units from
    ceil(n / chunk) · chunk on are never written."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import pallas as pl

    def step(t, carry):
        prev = jnp.maximum(t - 1, 0)
        first = t == 0
        y_prev = jnp.where(first, 0.0, _row(y_ref, (prev,), n))

        def unit_chunk(j, carry):
            start = pl.multiple_of(j * chunk, chunk)
            rows = pl.ds(start, chunk)

            pre = [_matvec(_block(rt_ref, g, start, chunk, n), y_prev) + _row(xw_ref, (t, g), n, start, chunk)
                   for g in range(GATES)]
            c_prev = jnp.where(first, 0.0, _row(c_ref, (prev,), n, start, chunk))
            y, c, acts = _cell(pre, c_prev, (p_ref[0, rows], p_ref[1, rows], p_ref[2, rows]))
            y_ref[t, rows] = y
            c_ref[t, rows] = c
            for g, act in enumerate(acts):
                a_ref[t, g, rows] = act
            return carry

        jax.lax.fori_loop(0, -(-n // chunk), unit_chunk, 0)
        barrier()  # this step's y_t, c_t written by all of the program's threads
        return carry

    jax.lax.fori_loop(0, len_ref[0], step, 0)


def _backward_kernel_chunked(len_ref, dy_ref, c_ref, a_ref, r_ref, p_ref, da_ref, dyp_ref, *, n, chunk, barrier):
    """`_backward_kernel` for a width P whose weights do not fit in registers: a step's deltas are whole
    [P] vectors, and δy_{t−1} = R δā_t is computed `chunk` rows at a time into dyp_ref[t] (float[T, P]),
    which the next step (t − 1) reads back after a barrier. Padded units are read as 0."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import pallas as pl
    peep = tuple(_row(p_ref, (g,), n) for g in range(3))
    steps = len_ref[0]

    def step(s, dc_next):
        t = steps - 1 - s
        c_prev = jnp.where(t > 0, _row(c_ref, (jnp.maximum(t - 1, 0),), n), 0.0)
        dy_next = jnp.where(s > 0, _row(dyp_ref, (jnp.minimum(t + 1, steps - 1),), n), 0.0)
        deltas, dc = _cell_deltas(_row(dy_ref, (t,), n) + dy_next, dc_next,
                                  [_row(a_ref, (t, g), n) for g in range(GATES)], _row(c_ref, (t,), n), c_prev, peep)
        for g, d in enumerate(deltas):
            da_ref[t, g, :] = d

        def row_chunk(j, carry):
            start = pl.multiple_of(j * chunk, chunk)
            dyp_ref[t, pl.ds(start, chunk)] = sum(_matvec(_block(r_ref, g, start, chunk, n), d)
                                                  for g, d in enumerate(deltas))
            return carry

        jax.lax.fori_loop(0, -(-n // chunk), row_chunk, 0)
        barrier()  # δy_{t−1} written by all of the program's threads
        return dc

    jax.lax.fori_loop(0, steps, step, jnp.zeros(dy_ref.shape[1:], dy_ref.dtype))


def _call(kernel, out_shapes, args, interpret, num_warps):
    """pallas_call of `kernel`, one program per trial (vmap adds the grid), outputs in args[1]'s dtype."""
    import jax
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pltriton
    out_shape = [jax.ShapeDtypeStruct(s, args[1].dtype) for s in out_shapes]  # args[0]: the length
    params = None if interpret else pltriton.CompilerParams(num_warps=num_warps)
    return pl.pallas_call(kernel, out_shape=out_shape, interpret=interpret, compiler_params=params)(*args)


@functools.lru_cache(maxsize=None)
def _layer_fn(interpret, num_warps, hoist_max, chunk, recurrent_dtype):
    """The custom-VJP layer (params, xs) -> ys for one kernel configuration."""
    import jax
    import jax.numpy as jnp
    from jax.experimental.pallas import triton as pltriton
    # A barrier between a chunked kernel's steps (__syncthreads on a GPU); interpret mode runs a program's
    # operations in order and has no lowering for it.
    barrier = (lambda: None) if interpret else pltriton.debug_barrier

    def warps(width):
        return num_warps or (4 if width <= hoist_max else 8)

    def pad(a, axes, width):
        return jnp.pad(a, [(0, width - a.shape[d] if d in axes else 0) for d in range(a.ndim)])

    def forward(params, xs, length):
        t = xs.shape[0]
        n = params["R"].shape[0]
        width = _pow2(n)
        length = jnp.clip(jnp.asarray(length, jnp.int32), 0, t).reshape(1)
        xw = jnp.einsum("tm,mgn->tgn", xs, params["W"]) + params["b"]
        rdt = recurrent_dtype or params["R"].dtype
        rt = jnp.transpose(pad(params["R"], (0, 2), width), (1, 2, 0)).astype(rdt)  # [g, j, k] = R[k, g, j]
        if width <= hoist_max:
            kernel = functools.partial(_forward_kernel, n=n)
        else:
            kernel = functools.partial(_forward_kernel_chunked, n=n, chunk=min(chunk, width), barrier=barrier)
        y, c, a = _call(kernel, [(t, width), (t, width), (t, GATES, width)],
                        [length, pad(xw, (2,), width), rt, pad(params["p"], (1,), width)], interpret, warps(width))
        valid = (jnp.arange(t) < length)[:, None]
        y = jnp.where(valid, y[:, :n], 0.0)  # steps past the length: not written, output 0
        return y, (params, xs, length, y, c, a)

    def backward(res, dys):
        params, xs, length, y, c, a = res
        t, n = y.shape
        width = c.shape[1]
        rdt = recurrent_dtype or params["R"].dtype
        r = jnp.transpose(pad(params["R"], (0, 2), width), (1, 0, 2)).astype(rdt)  # [g, k, j] = R[k, g, j]
        args = [length, pad(dys, (1,), width), c, a, r, pad(params["p"], (1,), width)]
        if width <= hoist_max:
            kernel = functools.partial(_backward_kernel, n=n)
            (da,) = _call(kernel, [(t, GATES, width)], args, interpret, warps(width))
        else:
            kernel = functools.partial(_backward_kernel_chunked, n=n, chunk=min(chunk, width), barrier=barrier)
            da, _ = _call(kernel, [(t, GATES, width), (t, width)], args, interpret, warps(width))
        valid = jnp.arange(t) < length
        da = jnp.where(valid[:, None, None], da[:, :, :n], 0.0)  # not written past the length
        c_now = jnp.where(valid[:, None], c[:, :n], 0.0)
        y_prev = jnp.concatenate([jnp.zeros_like(y[:1]), y[:-1]])
        c_prev = jnp.concatenate([jnp.zeros_like(c_now[:1]), c_now[:-1]])
        grads = {"W": jnp.einsum("tm,tgn->mgn", xs, da), "R": jnp.einsum("tk,tgn->kgn", y_prev, da),
                 "b": da.sum(0), "p": jnp.stack([(da[:, 1] * c_prev).sum(0), (da[:, 2] * c_prev).sum(0),
                                                 (da[:, 3] * c_now).sum(0)])}
        return grads, jnp.einsum("tgn,mgn->tm", da, params["W"]), None

    @jax.custom_vjp
    def layer(params, xs, length):
        return forward(params, xs, length)[0]

    layer.defvjp(forward, backward)
    return layer


def pallas_lstm_layer(params, xs, length=None, interpret=False, num_warps=0, hoist_max=64, chunk=32,
                      recurrent_dtype=None):
    """V's layer over xs float[T, M] from the zero state, params in `odyssey.cells`' layout (W, R, b, p);
    the values of `odyssey.fast_lstm.lstm_layer("V", params, xs, mask, recurrent_dtype=recurrent_dtype)`
    with mask 1 for the first `length` steps (int scalar, may be traced and batched: under vmap each trial
    runs its own length, not the longest; None: all T), differentiable w.r.t. params and xs.
    recurrent_dtype: a dtype name (e.g. "bfloat16") R is stored in for the kernels and each step's vector
    rounded to, the products summed in the layer's dtype; None: R's."""
    fn = _layer_fn(bool(interpret), int(num_warps), int(hoist_max), int(chunk), recurrent_dtype)
    return fn(params, xs, xs.shape[0] if length is None else length)


def xla_layer(params, xs, length=None, steps=None, recurrent_dtype=None):
    """The trainer's layer: `odyssey.fast_lstm.lstm_layer("V", ...)`, with length: masked past it, and with
    steps (unbatched under vmap: the longest length of all trials) its loops stop there, as the trainer's."""
    import jax.numpy as jnp
    from odyssey import fast_lstm
    mask = None if length is None else (jnp.arange(xs.shape[0]) < length).astype(xs.dtype)
    return fast_lstm.lstm_layer("V", params, xs, mask, steps=steps, recurrent_dtype=recurrent_dtype)


def reference(params, xs, length=None):
    """V's forward pass, stepped by hand in float64 numpy (DESIGN §1); outputs 0 from step `length` on."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    n = p["R"].shape[0]
    h, c = np.zeros(n), np.zeros(n)
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    out = np.zeros((len(xs), n))
    for t, x in enumerate(np.asarray(xs, np.float64)[:length]):
        a = np.einsum("m,mgn->gn", x, p["W"]) + p["b"] + np.einsum("k,kgn->gn", h, p["R"])
        z, i, f = np.tanh(a[0]), sig(a[1] + p["p"][0] * c), sig(a[2] + p["p"][1] * c)
        c = z * i + c * f
        h = np.tanh(c) * sig(a[3] + p["p"][2] * c)
        out[t] = h
    return out


def trial_params(k, n, m, seed=0, dtype=np.float32):
    """k trials' V parameters at hidden size n (`odyssey.cells.init`), stacked on axis 0."""
    import jax
    from odyssey import cells
    out = [{name: np.asarray(v, dtype) for name, v in cells.init(key, "V", m, n).items()}
           for key in jax.random.split(jax.random.PRNGKey(seed), k)]
    return {name: np.stack([p[name] for p in out]) for name in out[0]}


def forward_program(layer):
    """jit(vmap) of layer(params, xs, length, steps) over trials, `steps` shared (unbatched)."""
    import jax
    return jax.jit(jax.vmap(layer, in_axes=(0, 0, 0, None)))


def loss_and_grads(layer):
    """jit(vmap) of (params, xs, cotangents, length, steps) -> Σ y ⊙ cotangents and its gradient w.r.t.
    (params, xs), for layer(params, xs, length, steps); `steps` shared (unbatched)."""
    import jax
    import jax.numpy as jnp

    def loss(params, xs, cot, length, steps):
        return jnp.sum(layer(params, xs, length, steps) * cot)

    return jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)), in_axes=(0, 0, 0, 0, None)))


def check_interpret():
    """Both kernels in interpret mode, vmapped over trials. In float64: the outputs against the hand-stepped
    loop, the gradients against autodiff of `odyssey.nets.lstm_layer` (a plain scan, masked past each
    trial's length), for both forms (R held for the loop, and R read in chunks of rows every step), at
    N = P and N < P (masked loads), all trials at T steps or each at its own length (0 and T among them).
    In interpret mode the kernels' outputs start as NaN, so a read of an unwritten padded unit or step
    shows. With bfloat16 recurrent operands, in float32: against `odyssey.fast_lstm.lstm_layer` with the
    same `recurrent_dtype` (same roundings, other summation order)."""
    import jax
    jax.config.update("jax_enable_x64", True)
    from odyssey import nets
    rng = np.random.default_rng(1)
    t, m = 12, 7
    print(f"both kernels (interpret mode) against references, V, T = {t}:")
    # (N, K, hoist_max, chunk, recurrent dtype, lengths): held at P = 8; chunked at P = 16 in 4 or 8 rows,
    # the last chunk partly or wholly past N (N = 9: units 12..15 never written).
    uneven = np.array([t, 0, 5, 1])
    cases = [(8, 3, 64, 32, None, None), (5, 4, 64, 32, None, uneven), (16, 2, 8, 4, None, None),
             (13, 4, 8, 4, None, uneven), (9, 2, 8, 4, None, None), (13, 1, 8, 8, None, None),
             (5, 4, 64, 32, "bfloat16", uneven), (13, 2, 8, 4, "bfloat16", None)]
    for n, k, hoist_max, chunk, rdt, lengths in cases:
        dtype = np.float64 if rdt is None else np.float32
        params = trial_params(k, n, m, seed=n, dtype=dtype)
        xs = rng.normal(size=(k, t, m)).astype(dtype)
        cot = rng.normal(size=(k, t, n)).astype(dtype)
        length = np.full(k, t, np.int32) if lengths is None else lengths[:k].astype(np.int32)
        pallas = functools.partial(pallas_lstm_layer, interpret=True, hoist_max=hoist_max, chunk=chunk,
                                   recurrent_dtype=rdt)
        layer = lambda p, x, L, steps: pallas(p, x, L)  # noqa: E731
        if rdt is None:
            oracle = "a hand-stepped loop / autodiff, float64"
            plain = lambda p, x, L, steps: nets.lstm_layer("V", p, x, (np.arange(t) < L).astype(x.dtype))  # noqa
            want_y = reference
        else:
            oracle = f"fast_lstm with recurrent_dtype={rdt}, float32"
            plain = functools.partial(xla_layer, recurrent_dtype=rdt)
            want_y = lambda p, x, L: np.asarray(plain(p, x, L))  # noqa: E731
        ys = np.asarray(forward_program(layer)(params, xs, length, None))
        (_, (g_params, g_xs)) = loss_and_grads(layer)(params, xs, cot, length, None)
        (_, (w_params, w_xs)) = loss_and_grads(plain)(params, xs, cot, length, None)
        err_y = max(float(np.abs(ys[j] - want_y({kk: v[j] for kk, v in params.items()}, xs[j], length[j])).max())
                    for j in range(k))
        err_g = max(float(np.abs(np.asarray(g_params[name]) - np.asarray(w_params[name])).max()) /
                    max(1.0, float(np.abs(np.asarray(w_params[name])).max())) for name in params)
        err_g = max(err_g, float(np.abs(np.asarray(g_xs) - np.asarray(w_xs)).max()))
        form = "R held" if _pow2(n) <= hoist_max else f"R read every step in chunks of {chunk} rows"
        steps = "T steps" if lengths is None else "lengths " + ", ".join(str(v) for v in length)
        print(f"  N = {n} (P = {_pow2(n)}, {form}), K = {k}, {steps}, against {oracle}: "
              f"max |y error| {err_y:.1e}, max relative gradient error {err_g:.1e}")
        bound = 1e-10 if rdt is None else 1e-5
        if not (err_y < bound and err_g < bound):
            raise SystemExit(f"the kernels disagree with the references (errors {err_y:.1e}, {err_g:.1e})")


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
    if FLAGS.device == "cpu" and not FLAGS.deviceless:
        check_interpret()
        return
    import jax
    import jax.numpy as jnp
    from jax.sharding import SingleDeviceSharding
    import trainer_speed
    jax.config.update("jax_default_matmul_precision", "highest")  # true float32 products on both sides
    shapes = _shapes()
    programs = {}
    for rdt in FLAGS.recurrent_dtypes:
        rd = None if rdt == "float32" else rdt
        pallas = functools.partial(pallas_lstm_layer, num_warps=FLAGS.num_warps, hoist_max=FLAGS.hoist_max,
                                   chunk=FLAGS.chunk, recurrent_dtype=rd)
        layers = {"pallas": lambda p, x, L, steps, f=pallas: f(p, x, L),
                  "xla": functools.partial(xla_layer, recurrent_dtype=rd)}
        programs[rdt] = {name: {"forward": forward_program(f), "grad": loss_and_grads(f)} for name, f in layers.items()}
    if FLAGS.deviceless:
        import gpu_kernels
        from odyssey import fast_lstm
        sharding = SingleDeviceSharding(gpu_kernels.h100_topology().devices[0])  # the target of every compile
        fast_lstm.DEFAULT_UNROLL[jax.default_backend()] = fast_lstm.DEFAULT_UNROLL["gpu"]

        def spec(*shape, dtype=jnp.float32):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

        # jax >= 0.11 asks the abstract mesh which GPU Pallas' Triton lowering targets (the default device
        # here is the CPU); jax 0.10 asked nothing and ignores it.
        target = gpu_kernels.h100_topology().devices[0]
        mesh = jax.sharding.AbstractMesh((1,), ("trials",), abstract_device=jax.sharding.AbstractDevice(
            device_kind=target.device_kind, num_cores=getattr(target, "core_count", None), platform="cuda"))
        for task, n, k in shapes:
            t, m = TASK_SHAPES[task]
            t = 3 * t // 2
            params = {"W": spec(k, m, GATES, n), "R": spec(k, n, GATES, n), "b": spec(k, GATES, n), "p": spec(k, 3, n)}
            lengths, steps = spec(k, dtype=jnp.int32), spec(dtype=jnp.int32)
            args = {"forward": (params, spec(k, t, m), lengths, steps),
                    "grad": (params, spec(k, t, m), spec(k, t, n), lengths, steps)}
            for rdt, by_name in programs.items():
                for name, fns in by_name.items():
                    for pass_ in FLAGS.passes:
                        with jax.sharding.use_abstract_mesh(mesh):
                            fns[pass_].lower(*args[pass_]).compile()
                    print(f"compiled for an H100: {task} N = {n}, K = {k}, {rdt}, {name}: {', '.join(FLAGS.passes)}")
        return
    device = trainer_speed.jax_device("gpu")
    info = trainer_speed.machine_info(device)
    info["load_before"] = trainer_speed.load_average()
    rows = time_shapes(device, shapes, FLAGS.passes, FLAGS.lengths, programs)
    info["load_after"] = trainer_speed.load_average()
    print()
    print("| task | N | K | recurrent | lengths | pass | program | ms a call | x the trainer's layer | "
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
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump({"machine": info, "flags": {"num_warps": FLAGS.num_warps, "hoist_max": FLAGS.hoist_max,
                                                   "chunk": FLAGS.chunk}, "rows": rows}, f, indent=1)


def _max_rel_diff(a, b):
    import jax
    worst = 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        worst = max(worst, float(np.abs(x - y).max()) / max(float(np.abs(y).max()), 1e-30))
    return worst


def time_shapes(device, shapes, passes, modes, programs):
    """Rows of the timing table: for each shape, recurrent dtype, lengths mode and pass, both programs timed
    in turn (`trainer_speed.measure`, interleaved repeats). One compiled program per shape serves both
    modes: arrays are padded to 3T/2, and the lengths and the shared step count are inputs."""
    import jax
    import trainer_speed
    rows = []
    rng = np.random.default_rng(0)
    for task, n, k in shapes:
        t, m = TASK_SHAPES[task]
        padded = 3 * t // 2
        params = jax.device_put(trial_params(k, n, m), device)
        xs = jax.device_put(rng.normal(size=(k, padded, m)).astype(np.float32), device)
        cot = jax.device_put(rng.normal(size=(k, padded, n)).astype(np.float32), device)
        for mode in modes:
            lengths = trial_lengths(mode, t, k, rng)
            length_arg = jax.device_put(lengths, device)
            steps = jax.device_put(np.int32(lengths.max()), device)
            args = {"forward": (params, xs, length_arg, steps), "grad": (params, xs, cot, length_arg, steps)}
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
                    for name, r in times.items():
                        rows.append({"task": task, "program": name, "pass": pass_, "recurrent_dtype": rdt,
                                     "lengths": mode, "hidden": n, "width": _pow2(n), "trials": k, "steps": t,
                                     "padded_steps": padded, "longest": int(lengths.max()),
                                     "mean_length": float(lengths.mean()), "seconds": r["median"],
                                     "x_xla": base / r["median"], "sequences_per_second": k / r["median"],
                                     "max_rel_diff_vs_xla": diff})
                        print(f"{task} N={n} K={k} {rdt} {mode} {pass_:>7} {name:>6}: {1e3 * r['median']:.3f} ms a "
                              f"call, {base / r['median']:.2f}x the trainer's layer, diff {diff:.1e}", flush=True)
    return rows


if __name__ == "__main__":
    app.run(main)
