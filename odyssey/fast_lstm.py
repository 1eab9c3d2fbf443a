"""The LSTM layer of `odyssey.nets.lstm_layer` with a hand-written backward pass (BPTT, Supplement A.2).

Autodiff through `lax.scan` adds an outer product y_{t-1} ⊗ δ_t of size N × GN into the recurrent-weight
gradient at every time step (K of them under vmap over trials). Here the backward pass is a reverse scan that
only carries the deltas of the state (δy, δc and, for FGR, the gates') and emits the deltas of the gate
pre-activations δā_t; every weight gradient is then one product over all time steps after the loop:

    dW = xsᵀ δA,   dR = Y'ᵀ δA,   db = Σ_t δA_t,   dp_g = Σ_t δā_g,t ⊙ c_(t or t−1),   dRg = G'ᵀ δA_ifo,
    dxs = δA Wᵀ,

where Y' and G' are the previous steps' outputs and gates. Inside the loop, one step (DESIGN §1, with
σ'(a) = a(1 − a) written in terms of the activation and h', g' the variant's activation slopes) is

    δy = dy_t + δy',            δo = δy ⊙ h(c) (+ δo' for FGR),     δā_o = δo ⊙ σ'(o)
    δc = δc' + δy ⊙ o ⊙ h'(c) + δā_o ⊙ p_o
    δā_z = δc ⊙ i ⊙ g'(ā_z),    δi = δc ⊙ z,    δf = δc ⊙ c_{t−1}     (CIFG: δi −= δf, as f = 1 − i)
    δā_i = δi ⊙ σ'(i),          δā_f = δf ⊙ σ'(f)
    δc_{t−1} = δc ⊙ f + δā_i ⊙ p_i + δā_f ⊙ p_f,   δy_{t−1} = R δā,   δgates_{t−1} = Rg δā_ifo (FGR)

and a masked step passes the state's deltas through unchanged and has δā = 0, as its carry is kept. The
products that do not involve a delta are taken out of the loop (`_coefficients`), so a step reads seven
float[N] coefficients (FGR: twelve) and does a few multiply-adds before its product with R.

How the loops are laid out, by in-process A/B on 2 shared CPU cores (JSB shape, N = 200, one trial):
every per-step input and output is its own float[T, N] array, one per gate, never a step's float[G, N]
slice of a [T, G, N] array: XLA's CPU backend compiled the kernel that slices a gate out of such a step
into scalar code (7.4 µs per step for three sigmoids of 200 units), and gate-major arrays made the forward
pass 1.22× and forward+grad 1.09× faster. Fewer kernels per step (storing only the pre-activations and
recomputing the gates after the loop: 8 instead of 13) changed nothing measurable, nor did one product for
dW and dR together; folding the backward coefficients gained 1-5 %.

Measured on 2 shared CPU cores (bench/fast_lstm_speed.py, 2026-11-27, under heavy steal; vanilla, JSB
shape T = 60, M = 88, float32, jit(vmap), medians): forward+grad 1.7× faster than autodiff of
`nets.lstm_layer` at N = 100 with K = 1 and 8 trials, 1.9× at N = 200, K = 1 and 1.8× at N = 200, K = 8
(one trial: NP 1.9×, CIFG 1.4-1.5×, FGR 1.6-1.9×).
The loop's product δy_{t−1} = R δā is written in R's stored layout: as δāᵀ Rᵀ it was 2-4× slower on CPU.
Unrolling either scan by 2 or 4 steps made CPU runs 3-10 % slower, so on CPU both scans step once per
iteration; on a GPU they run 8 steps per iteration (`DEFAULT_UNROLL`: 1.5-2.8× the trainer's throughput),
and an iteration writes its 8 steps' outputs as one block per output array (`_unrolled_range`): compiled for
an H100, that took the loops of the JSB study's first group from 110 to 54 kernels per 8 time steps
(forward 73 → 31, backward 37 → 23; bench/gpu_kernels.py), where such groups are bound by launches.
With `steps`, both loops skip the padding (a while loop of `steps` iterations): exact, and on padded data
as much faster as the padding was long; with no padding the plain scan is the faster (~5-10 % on CPU).

`recurrent_dtype` (e.g. bfloat16) rounds the operands of the loops' recurrent products only: R once per
call, y_{t−1} (forward) and δā_t (backward) at every step, each product summed in the layer's dtype. A
step of many vmapped trials on a GPU streams every trial's R from memory, so 2-byte weights halve what
bounds it there. The weight gradients after the loops are products of the unrounded states and deltas.
On 2 CPU cores the trainer's epoch ran at the same speed either way (JSB shape, N = 100, K = 1 and 8).
"""

import functools

import jax
import jax.numpy as jnp

from odyssey import cells, pallas_loops


def lstm_layer(variant: str, params: dict, xs: jax.Array, mask: jax.Array | None = None,
               reverse: bool = False, steps: jax.Array | int | None = None,
               unroll: int | None = None, switches: jax.Array | None = None,
               recurrent_dtype=None, loops: str | None = None) -> jax.Array:
    """Runs one LSTM layer over a sequence from the zero state; same values as `odyssey.nets.lstm_layer`.

    Differentiable w.r.t. `params` and `xs` by a hand-written backward pass (see the module docstring);
    works under `jax.jit` and `jax.vmap` (e.g. over trials) in float32 and float64.

    Args:
      variant: one of `odyssey.cells.VARIANTS` (static).
      params: the layer's parameters in the layout of `odyssey.cells` (W float[M, G, N], R float[N, G, N],
        b float[G, N], p float[P, N] unless NP, Rg float[3, N, 3, N] for FGR).
      xs: float[T, M] inputs.
      mask: float[T], 1 (any value > 0) for valid steps and 0 for padding; a padded step keeps the state and
        outputs 0. No gradient flows into the mask.
      reverse: run from the last step to the first.
      steps: optional int scalar (may be traced): the sequence is padding from step `steps` on (the mask,
        if any, is 0 there). Both passes then run `steps` steps instead of T, so a padded sequence costs
        what its length costs. Under `vmap` pass it unbatched (e.g. the longest length of the batch,
        `in_axes=None`): a batched step count makes every step's slices gathers.
      unroll: time steps per loop iteration in both passes (static; default `default_unroll()`, by the
        platform JAX runs on). The values do not change: with `steps`, a step past the bound within the
        last iteration writes nowhere.
      switches: optional float[6], the mixed cell's switches (`odyssey.cells.switches`; may be traced and
        batched under vmap, e.g. one row per trial); only with variant "V", whose layout then holds a
        mixed-cell trial's parameters (`odyssey.cells.to_mixed`). The gradients of the entries the trial's
        variant lacks are not meaningful (the trainer masks them).
      recurrent_dtype: optional dtype (static) the loops' recurrent products take their operands in, e.g.
        `jnp.bfloat16`: R (and FGR's Rg) are rounded to it once per call, and at every step the vector
        (y_{t−1} forward, δā_t backward) is rounded to it and the product accumulated in the layer's dtype.
        It halves the bytes each step reads where those bound the speed (a GPU); everything else, the
        state included, stays in the layer's dtype. None (default): the layer's dtype, no rounding.
      loops: static; how the two time loops run. "xla" (None, the default): XLA loops (`lax.scan` or a while
        loop), `unroll` steps per iteration. "pallas": one Pallas kernel per loop, each trial's program
        running its own steps (`odyssey.pallas_loops`; V, the mixed cell and FGR, on GPUs, and on CPUs in the
        slow interpret mode); `unroll` is then unused. The same values up to the order of the sums in the
        recurrent products.

    Returns:
      float[T, N], the block outputs y_t (0 at padded steps), in the promoted dtype of xs and params.

    Raises:
      ValueError: for an unknown variant, missing or extra parameters, shapes that do not fit together, or
        `loops` it cannot run here.
    """
    xs = jnp.asarray(xs)
    _check(variant, params, xs, mask)
    loops = "xla" if loops is None else loops
    pallas_loops.check(loops, variant)
    if switches is not None:
        cells._check_switches(variant, switches)
    if reverse:
        xs = jnp.flip(xs, 0)
        mask = None if mask is None else jnp.flip(mask, 0)
    dtype = jnp.result_type(xs.dtype, *(v.dtype for v in params.values()))
    keep = None if mask is None else (jnp.asarray(mask) > 0).astype(dtype)
    bounds = None
    if steps is not None:
        t = xs.shape[0]
        count = jnp.clip(jnp.asarray(steps, jnp.int32), 0, t)
        # After the flip of a reversed run the padding comes first: the valid steps are the last ones.
        bounds = (t - count, jnp.int32(t)) if reverse else (jnp.int32(0), count)
    if unroll is None:
        unroll = default_unroll()
    if not isinstance(unroll, int) or isinstance(unroll, bool) or unroll < 1:
        raise ValueError(f"fast_lstm.lstm_layer: unroll must be a positive int, got {unroll!r}")
    if switches is not None:
        switches = jnp.asarray(switches, dtype)
    rdt = recurrent_operand_dtype(recurrent_dtype, dtype)
    ys = _layer(variant, unroll, rdt, loops, params, xs, keep, bounds, switches)
    return jnp.flip(ys, 0) if reverse else ys


# Time steps per loop iteration by platform (`jax.default_backend()`), where not given to `lstm_layer`.
# CPU: 1 (unrolling by 2 or 4 was 3-10 % slower on 2 CPU cores, see the module docstring). GPU: 8, measured
# on an NVIDIA H200 (2026-11-27, bench/trainer_speed.py, 64 trials of V; bench/results/): on a GPU a step of
# a few dozen small trials is bound by per-iteration launch overhead, not by the work. Sequence-updates/s at
# unroll 1 / 4 / 8: JSB shape N = 40 43,840 / 86,240 / 99,146, N = 200 22,818 / 32,440 / 33,494; TIMIT
# shape N = 40 4,877 / 10,980 / 13,418, N = 200 2,637 / 4,019 / 4,323. A JSB study of V (200 trials, the
# standard file, with `steps`) went from 1.26-1.39 s to 0.66-0.79 s an epoch per group; compiling took
# 3-4 s longer. TPU: not measured.
DEFAULT_UNROLL = {"cpu": 1, "gpu": 8, "tpu": 1}


def default_unroll() -> int:
    """`DEFAULT_UNROLL` for the platform JAX runs on (1 for one it does not list)."""
    return DEFAULT_UNROLL.get(jax.default_backend(), 1)


def recurrent_operand_dtype(recurrent_dtype, dtype) -> jnp.dtype:
    """The operand dtype of the loops' recurrent products: `recurrent_dtype`, or the layer's `dtype` for None.

    Raises:
      ValueError: `recurrent_dtype` is not a float dtype, or is wider than `dtype`.
    """
    if recurrent_dtype is None:
        return jnp.dtype(dtype)
    try:
        rdt = jnp.dtype(recurrent_dtype)
    except TypeError:
        rdt = None
    if rdt is None or not jnp.issubdtype(rdt, jnp.floating) or rdt.itemsize > jnp.dtype(dtype).itemsize:
        raise ValueError(f"recurrent_dtype must be None or a float dtype no wider than the "
                         f"layer's {jnp.dtype(dtype).name} (e.g. jnp.bfloat16), got {recurrent_dtype!r}")
    return rdt


def _product(rdt, dtype):
    """a, b -> a @ b with both operands rounded to `rdt` and the sum accumulated in `dtype`."""
    if rdt == dtype:
        return jnp.matmul
    return lambda a, b: jnp.matmul(a.astype(rdt), b.astype(rdt), preferred_element_type=dtype)


def _check(variant, params, xs, mask):
    """Validates names and static shapes, so a mismatch is reported by name instead of deep inside XLA."""
    s = cells.spec(variant)
    expected = {"W", "R", "b"} | ({"p"} if s.peepholes else set()) | ({"Rg"} if s.fgr else set())
    if not isinstance(params, dict) or set(params) != expected:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"fast_lstm.lstm_layer: {variant} parameters need the keys {sorted(expected)}, got {got}")
    if jnp.ndim(xs) != 2:
        raise ValueError(f"fast_lstm.lstm_layer: xs must be float[T, M] (vmap over trials or batches), "
                         f"got shape {jnp.shape(xs)}")
    t, m = xs.shape
    n = params["R"].shape[0]
    g = len(s.gates)
    want = cells.shapes(variant, m, n)
    for name, shape in want.items():
        if params[name].shape != shape:
            raise ValueError(f"fast_lstm.lstm_layer: {variant} parameter {name} has shape {params[name].shape}, "
                             f"expected {shape} for M={m} inputs, N={n} blocks and G={g} gates")
    if mask is not None and jnp.shape(mask) != (t,):
        raise ValueError(f"fast_lstm.lstm_layer: mask must be float[T] with T={t}, got shape {jnp.shape(mask)}")


def _slope(fn, value):
    """The derivative of the activation `fn` as a function of its output `value`."""
    if fn is jnp.tanh:
        return 1.0 - value * value
    if fn is cells._identity:
        return jnp.ones_like(value)
    raise NotImplementedError(f"fast_lstm has no derivative for the activation {fn!r}; add it to _slope")


def _shift(values):
    """values[t - 1] at step t, zeros at t = 0: the previous step's state for every step (axis 0 is time)."""
    return jnp.concatenate([jnp.zeros_like(values[:1]), values[:-1]])


def _scan_range(body, carry0, xs, lo, hi, reverse=False, unroll=1):
    """`lax.scan` of `body` over the steps lo..hi-1 of xs only (all T steps when lo is None).

    Outputs at the skipped steps are zeros. The bounds may be traced (a while loop of hi - lo steps); they
    must not be batched under vmap (a batched step index turns every slice into a gather). With `unroll`
    > 1 each iteration runs `unroll` steps and writes their outputs as one block per output array (see
    `_unrolled_range`); the final carry is then not meaningful (callers use the outputs).
    """
    if unroll > 1:
        t = jax.tree_util.tree_leaves(xs)[0].shape[0]
        return _unrolled_range(body, carry0, xs, 0 if lo is None else lo, t if hi is None else hi, reverse, unroll)
    if lo is None:
        return jax.lax.scan(body, carry0, xs, reverse=reverse)
    t = jax.tree_util.tree_leaves(xs)[0].shape[0]
    _, out_shape = jax.eval_shape(body, carry0, jax.tree_util.tree_map(lambda a: a[0], xs))
    outs0 = jax.tree_util.tree_map(lambda o: jnp.zeros((t,) + o.shape, o.dtype), out_shape)

    def step(i, state):
        carry, outs = state
        k = hi - 1 - i if reverse else lo + i
        new, out = body(carry, jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, k, 0, False), xs))
        outs = jax.tree_util.tree_map(lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v, k, 0), outs, out)
        return new, outs

    return jax.lax.fori_loop(0, hi - lo, step, (carry0, outs0))


def _unrolled_range(body, carry0, xs, lo, hi, reverse, unroll):
    """`_scan_range` with `unroll` steps per loop iteration, whose outputs are written as one block.

    Writing each step's outputs into the [T, ...] output arrays on its own made XLA's GPU backend launch
    one dynamic-update-slice kernel per output array per step: compiled for an H100 (deviceless, jax 0.10.2;
    the JSB study's first group, 487 trials of the mixed program at N = 40, unroll 8) the forward loop's
    iteration held 48 such kernels of its 73 (six outputs a step: y, c and four gates) and the backward's 16
    of 37. Here the `unroll` steps' outputs are stacked and written with one dynamic_update_slice per output
    array per iteration. A step past the range (within the last iteration) writes zeros, the value of a
    skipped step, so the output arrays carry `unroll` spare rows on each side, cut off at the end, and every
    block lands inside them.
    """
    t = jax.tree_util.tree_leaves(xs)[0].shape[0]
    _, out_shape = jax.eval_shape(body, carry0, jax.tree_util.tree_map(lambda a: a[0], xs))
    outs0 = jax.tree_util.tree_map(lambda o: jnp.zeros((t + 2 * unroll,) + o.shape, o.dtype), out_shape)
    count = hi - lo

    def block(b, state):
        carry, outs = state
        first = b * unroll
        rows = []
        for j in range(unroll):
            i = first + j
            k = hi - 1 - i if reverse else lo + i
            carry, out = body(carry, jax.tree_util.tree_map(
                lambda a: jax.lax.dynamic_index_in_dim(a, jnp.clip(k, 0, t - 1), 0, False), xs))
            valid = i < count
            rows.append(jax.tree_util.tree_map(lambda v: jnp.where(valid, v, jnp.zeros_like(v)), out))
        if reverse:  # the block's rows in time order: its steps ran from its last row to its first
            rows = rows[::-1]
        stacked = jax.tree_util.tree_map(lambda *vs: jnp.stack(vs), *rows)
        # The block's first row, shifted by the `unroll` spare rows in front.
        at = (hi - first - unroll if reverse else lo + first) + unroll
        outs = jax.tree_util.tree_map(lambda o, v: jax.lax.dynamic_update_slice_in_dim(o, v, at, 0), outs, stacked)
        return carry, outs

    carry, outs = jax.lax.fori_loop(0, (count + unroll - 1) // unroll, block, (carry0, outs0))
    return carry, jax.tree_util.tree_map(lambda o: o[unroll:unroll + t], outs)


def _forward(variant, unroll, rdt, loops, params, xs, keep, bounds, sw):
    """The forward scan; returns ys float[T, N] and the residuals the backward pass needs."""
    s = cells.spec(variant)
    n = params["R"].shape[0]
    ng = len(s.gates)
    dtype = jnp.result_type(xs.dtype, *(v.dtype for v in params.values()))
    params = {k: v.astype(dtype) for k, v in params.items()}
    if loops == "pallas":
        states, acts = pallas_loops.forward(cells.input_projection(params, xs.astype(dtype)), params["R"],
                                            params["p"], sw, keep, bounds, rdt, params.get("Rg"))
        ys = states[0] if keep is None else jnp.where(keep[:, None] > 0, states[0], 0.0)
        return ys, (states, acts)
    # Every per-step input and output of the loops is its own float[T, N] array: a step's slice of a
    # [T, G, N] array, split into gates inside the step's fused kernel, compiled to slow scalar code on CPU.
    xw = jnp.moveaxis(cells.input_projection(params, xs.astype(dtype)), 1, 0)
    # The recurrent weights in the products' operand dtype, rounded once here rather than at every step.
    r = params["R"].reshape(n, ng * n).astype(rdt)
    rg = params["Rg"].reshape(3 * n, 3 * n).astype(rdt) if s.fgr else None
    dot = _product(rdt, dtype)
    one = jnp.ones((n,), dtype)
    on = None if sw is None else cells.switch_flags(sw)

    def body(carry, inputs):
        xw_t, k_t = inputs
        y_prev, c_prev = carry[0], carry[1]
        rec = dot(y_prev, r)
        if s.fgr:
            rec = rec + jnp.concatenate([jnp.zeros((n,), dtype), dot(carry[2].reshape(-1), rg)])
        pre = {gate: xw_t[j] + rec[j * n:(j + 1) * n] for j, gate in enumerate(s.gates)}

        def peep(gate, cell):
            return params["p"][s.peepholes.index(gate)] * cell if gate in s.peepholes else 0.0

        if sw is not None:  # the mixed cell (V's layout): each gate is its own or held/coupled by a switch
            acts = {"z": jnp.where(on["linear_g"], pre["z"], jnp.tanh(pre["z"]))}
            acts["i"] = jnp.where(on["no_i"], one, cells.sigmoid(pre["i"] + peep("i", c_prev)))
            acts["f"] = jnp.where(on["no_f"], one, jnp.where(on["cifg"], 1.0 - acts["i"],
                                                              cells.sigmoid(pre["f"] + peep("f", c_prev))))
            c = acts["z"] * acts["i"] + c_prev * acts["f"]
            acts["o"] = jnp.where(on["no_o"], one, cells.sigmoid(pre["o"] + peep("o", c)))
            y = jnp.where(on["linear_h"], c, jnp.tanh(c)) * acts["o"]
        else:
            acts = {"z": s.g(pre["z"])}
            for gate in ("i", "f"):
                if gate in s.gates:
                    acts[gate] = cells.sigmoid(pre[gate] + peep(gate, c_prev))
            i = acts.get("i", one)
            f = acts.get("f", 1.0 - i if s.cifg else one)
            c = acts["z"] * i + c_prev * f
            if "o" in s.gates:
                acts["o"] = cells.sigmoid(pre["o"] + peep("o", c))
            y = s.h(c) * acts.get("o", one)
        new = (y, c, jnp.stack([acts["i"], acts["f"], acts["o"]])) if s.fgr else (y, c)
        if k_t is not None:
            new = tuple(jnp.where(k_t > 0, a, b) for a, b in zip(new, carry))
        return new, (new, tuple(acts[gate] for gate in s.gates))

    carry0 = (jnp.zeros((n,), dtype), jnp.zeros((n,), dtype))
    if s.fgr:
        carry0 += (jnp.zeros((3, n), dtype),)
    lo, hi = bounds if bounds is not None else (None, None)
    _, (states, acts) = _scan_range(body, carry0, (tuple(xw[j] for j in range(ng)), keep), lo, hi,
                                    unroll=unroll)
    ys = states[0] if keep is None else jnp.where(keep[:, None] > 0, states[0], 0.0)
    return ys, (states, acts)


def _layer_fwd(variant, unroll, rdt, loops, params, xs, keep, bounds, sw):
    ys, (states, acts) = _forward(variant, unroll, rdt, loops, params, xs, keep, bounds, sw)
    return ys, (params, xs, keep, bounds, sw, states, acts)


def _mixed_coefficients(on, peep, gate, cell, cell_prev, hc):
    """`_coefficients` of the mixed cell (V's layout, `on`: the switches as booleans): a gate held at 1 has
    slope 0, a replaced activation slope 1, and CIFG's i carries ∂c/∂i = z − c_{t−1} while f has no slope."""
    zero = jnp.zeros((), cell.dtype)
    z, i, f, o = gate["z"], gate["i"], gate["f"], gate["o"]
    so = jnp.where(on["no_o"], zero, o * (1.0 - o))
    out = {"z_c": jnp.where(on["linear_g"], 1.0, 1.0 - z * z) * i, "o_y": hc * so}
    out["c_y"] = jnp.where(on["linear_h"], 1.0, 1.0 - hc * hc) * o + out["o_y"] * peep["o"]
    out["i_c"] = jnp.where(on["cifg"], z - cell_prev, z) * jnp.where(on["no_i"], zero, i * (1.0 - i))
    out["f_c"] = cell_prev * jnp.where(on["no_f"] | on["cifg"], zero, f * (1.0 - f))
    out["c_c"] = f + out["i_c"] * peep["i"] + out["f_c"] * peep["f"]
    return out


def _coefficients(s, peep, gate, cell, cell_prev, hc):
    """The per-step coefficients of the backward step, for all steps at once (float[T, N] each).

    With δy = dy_t + δy' and δc = δc' + δy c_y (+ δo_fgr c_go), one step is

        δā_o = δy o_y,  δā_z = δc z_c,  δā_i = δc i_c,  δā_f = δc f_c,  δc_{t−1} = δc c_c

    (FGR adds the gate deltas δg' of the next step: δā_i += δg'_i σ'(i), δā_f += δg'_f σ'(f),
    δā_o += δg'_o σ'(o), δc_{t−1} += δg'_i c_gi + δg'_f c_gf), which is the module docstring's step with the
    products of activations and peepholes taken out of the loop.
    """
    one = 1.0
    out = {}
    i = gate.get("i", one)
    f = gate.get("f", 1.0 - i if s.cifg else one)
    out["z_c"] = _slope(s.g, gate["z"]) * i
    c_y = _slope(s.h, hc) * gate.get("o", one)
    if "o" in s.gates:
        so = gate["o"] * (1.0 - gate["o"])
        out["o_y"] = hc * so
        if "o" in peep:
            c_y = c_y + out["o_y"] * peep["o"]
        if s.fgr:
            out["so"] = so
            out["c_go"] = so * peep["o"]
    out["c_y"] = c_y
    c_c = f
    # ∂c/∂i = z (CIFG: z − c_{t−1}, as f = 1 − i) and ∂c/∂f = c_{t−1}, each times the gate's σ'.
    for g in ("i", "f"):
        if g in s.gates:
            dc_dg = (gate["z"] - cell_prev if s.cifg else gate["z"]) if g == "i" else cell_prev
            slope = gate[g] * (1.0 - gate[g])
            out[g + "_c"] = dc_dg * slope
            if g in peep:
                c_c = c_c + out[g + "_c"] * peep[g]
            if s.fgr:
                out["s" + g] = slope
                out["c_g" + g] = slope * peep[g]
    out["c_c"] = jnp.broadcast_to(c_c, cell.shape)
    return out


def _layer_bwd(variant, unroll, rdt, loops, residuals, dys):
    params, xs, keep, bounds, sw, states, acts = residuals
    s = cells.spec(variant)
    t, n = dys.shape
    ng = len(s.gates)
    dtype = acts[0].dtype
    p = {k: v.astype(dtype) for k, v in params.items()}
    r = p["R"].reshape(n, ng * n).astype(rdt)
    rg = p["Rg"].reshape(3 * n, 3 * n).astype(rdt) if s.fgr else None
    dot = _product(rdt, dtype)
    cell, cell_prev = states[1], _shift(states[1])
    gate = dict(zip(s.gates, acts))
    # Everything that does not depend on the deltas is computed for all steps at once, outside the loop, and
    # folded into one coefficient per product the step needs (see `_coefficients`).
    peep = {g: p["p"][s.peepholes.index(g)] for g in s.peepholes}
    if sw is None:
        per_step = _coefficients(s, peep, gate, cell, cell_prev, s.h(cell))
    else:
        on = cells.switch_flags(sw)
        hc = jnp.where(on["linear_h"], cell, jnp.tanh(cell))
        per_step = _mixed_coefficients(on, peep, gate, cell, cell_prev, hc)
    per_step["dy_ext"] = dys.astype(dtype)
    if loops == "pallas":
        return _gradients(s, params, xs, keep, sw, states, cell, cell_prev, p,
                          pallas_loops.backward(per_step, p["R"], keep, bounds, rdt, p.get("Rg")))

    def body(carry, inputs):
        v, k_t = inputs
        dy = v["dy_ext"] + carry[0]
        dc = carry[1] + dy * v["c_y"]
        if s.fgr:
            dg = carry[2]
            dc = dc + dg[2] * v["c_go"]
        da = {"z": dc * v["z_c"]}
        if "o" in s.gates:
            da["o"] = dy * v["o_y"] + (dg[2] * v["so"] if s.fgr else 0.0)
        if "i" in s.gates:
            da["i"] = dc * v["i_c"] + (dg[0] * v["si"] if s.fgr else 0.0)
        if "f" in s.gates:
            da["f"] = dc * v["f_c"] + (dg[1] * v["sf"] if s.fgr else 0.0)
        dc_prev = dc * v["c_c"]
        if s.fgr:
            dc_prev = dc_prev + dg[0] * v["c_gi"] + dg[1] * v["c_gf"]
        d_pre = jnp.concatenate([da[g] for g in s.gates])
        dy_prev = dot(r, d_pre)
        new = (dy_prev, dc_prev)
        if s.fgr:
            new += (dot(rg, d_pre[n:]).reshape(3, n),)
        if k_t is not None:
            valid = k_t > 0
            new = tuple(jnp.where(valid, a, b) for a, b in zip(new, carry))
            d_pre = jnp.where(valid, d_pre, 0.0)
        return new, d_pre

    carry0 = (jnp.zeros((n,), dtype), jnp.zeros((n,), dtype))
    if s.fgr:
        carry0 += (jnp.zeros((3, n), dtype),)
    lo, hi = bounds if bounds is not None else (None, None)
    _, d_pre = _scan_range(body, carry0, (per_step, keep), lo, hi, reverse=True, unroll=unroll)
    return _gradients(s, params, xs, keep, sw, states, cell, cell_prev, p, d_pre)


def _gradients(s, params, xs, keep, sw, states, cell, cell_prev, p, d_pre):
    """The cotangents of `_layer`'s inputs from the pre-activation deltas d_pre float[T, GN] (the backward
    loop's outputs): every weight gradient as one product over all steps (module docstring)."""
    t, n = cell.shape
    ng = len(s.gates)
    dtype = cell.dtype
    flat = d_pre
    d_pre = d_pre.reshape(t, ng, n)
    m = xs.shape[1]
    grads = {"W": (xs.astype(dtype).T @ flat).reshape(m, ng, n),
             "R": (_shift(states[0]).T @ flat).reshape(n, ng, n),
             "b": d_pre.sum(0)}
    if s.peepholes:
        grads["p"] = jnp.stack([jnp.sum(d_pre[:, s.gate_index(g)] * (cell if g == "o" else cell_prev), axis=0)
                                for g in s.peepholes])
    if s.fgr:
        gates_prev = _shift(states[2]).reshape(t, 3 * n)
        grads["Rg"] = (gates_prev.T @ d_pre[:, 1:].reshape(t, 3 * n)).reshape(3, n, 3, n)
    grads = {k: v.astype(params[k].dtype) for k, v in grads.items()}
    dxs = (flat @ p["W"].reshape(m, ng * n).T).astype(xs.dtype)
    dkeep = None if keep is None else jnp.zeros_like(keep)
    dsw = None if sw is None else jnp.zeros_like(sw)
    return grads, dxs, dkeep, None, dsw


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _layer(variant, unroll, rdt, loops, params, xs, keep, bounds, sw):
    """float[T, N] outputs of the layer; rdt the recurrent products' operand dtype; loops "xla" or "pallas";
    keep is float[T] of 0/1 or None; bounds None or int (lo, hi); sw None or the mixed cell's float[6]
    switches."""
    return _forward(variant, unroll, rdt, loops, params, xs, keep, bounds, sw)[0]


_layer.defvjp(_layer_fwd, _layer_bwd)
