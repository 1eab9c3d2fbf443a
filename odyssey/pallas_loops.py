"""The two time loops of `odyssey.fast_lstm`'s layer as Pallas kernels: one program per trial, all steps inside.

On a GPU the XLA loops of `odyssey.fast_lstm` launch a few dozen kernels per 8 time steps (bench/gpu_kernels.py),
and a step of a group of small trials costs about its launches whatever it computes: the JSB study's groups
ran near their launch floor on an H100 (bench/README.md). Here each loop is one kernel per layer and pass,
and `jax.vmap` over trials makes it a grid of one program per trial, each running its trial's steps itself.
`fast_lstm.lstm_layer(..., loops="pallas")` swaps these in for its two loops and keeps everything else (the
input projection before the forward loop, the backward coefficients before the backward loop, every weight
gradient as one product after it), so the values are the XLA loops' up to the order of the sums in the
recurrent products.

  * The forward kernel takes a trial's input projection xs W + b, its recurrent weights and peepholes (and
    the mixed cell's switches) and writes y_t, c_t and the four gate activations at every step.
  * The backward kernel is `fast_lstm`'s reverse step: it reads the seven per-step coefficients that
    `fast_lstm` computes for all steps at once (the outputs' cotangent among them), carries δy and δc, and
    writes the pre-activation deltas δā_t.

Triton's blocks need power-of-two shapes: a trial of N units runs in blocks of P = the next power of two,
and loads mask the units from N on (read as 0, never read from memory), so its weights are used unpadded
and the padded units stay exactly 0. For P ≤ `HOIST_MAX` a program loads its trial's R once, before the
loop, and holds it in registers; above that it reads `CHUNK` rows of R at a time at every step, passes the
state between steps through its output arrays and ends each step with a barrier (compiled for an H100: 163-207
registers a thread held, 80-103 chunked, no spills; bench/pallas_lstm_speed.py --deviceless). With bfloat16
recurrent products a program holds R up to P = `DOT_MAX` (128) and computes its products as tensor-core
dots with float32 accumulation (`holds`, `_matvec_dot`): Triton keeps a dot's operand in shared memory, 128
KiB at P = 128, where the float32 copy of R that the elementwise products need would overflow the registers
(compiled for an H100: 52-152 registers a thread, no spills, R loaded before the loop and none of it inside).

Each trial runs only its own steps: from its first valid step to its last (by its mask, within the layer's
`steps` bound), where the XLA loops run every trial of a vmapped call to the shared bound. Inside that range
a masked step keeps the state, as in `fast_lstm`; outside it every output is 0.

Scope: V's cell, the mixed cell (V's layout with per-trial switches, `odyssey.cells.switches`), which
covers eight of the nine variants in the trainer, and FGR, whose gate recurrence Rg (nine N × N blocks)
never fits in registers: FGR's kernels always read R and Rg in chunks, and carry the gates i, f, o of the
step before (forward) and their deltas (backward) through their output arrays as they do y and δy. The
other variants' own layouts (the trainer's programs with `mix_variants=False`) are not built (`supports`).
On a CPU the kernels run in Pallas' interpret mode, which is exact but slow: it serves tests, not
training. TPUs are not supported (the kernels use Triton's masked loads).

Status: opt-in (`config.train.lstm_loops = "pallas"`), not yet timed on a GPU; the trainer's default stays
`"xla"` until a benchmark shows the kernels faster (bench/trainer_speed.py --lstm_loops=xla,pallas).
"""

import functools

import jax
import jax.numpy as jnp

from odyssey import cells

LOOPS = ("xla", "pallas")
GATES = 4  # V: z, i, f, o
COEFFICIENTS = ("dy_ext", "c_y", "o_y", "z_c", "i_c", "f_c", "c_c")  # the backward kernel's per-step inputs
FGR_COEFFICIENTS = ("so", "si", "sf", "c_go", "c_gi", "c_gf")  # and FGR's, after them
HOIST_MAX = 64  # the widest P whose float32 R a program holds in registers for its whole loop
DOT_MAX = 128  # the widest P whose bfloat16 R a program holds, as its tensor-core products' operand
DOT_COLUMNS = 16  # a tensor-core product's narrowest right-hand side: the vector, then zero columns
CHUNK = 32  # rows of R a program reads at a time where it does not hold R
# Whether the kernels run in Pallas' interpret mode. None (default): where JAX's default backend is a CPU.
# Scripts that compile for a GPU from a CPU host (bench/gpu_kernels.py) set False.
INTERPRET = None


def interpret_mode() -> bool:
    """Whether the kernels traced now run in interpret mode (`INTERPRET`)."""
    return jax.default_backend() == "cpu" if INTERPRET is None else bool(INTERPRET)


def supports(variant: str) -> bool:
    """Whether the kernels implement `variant`'s layer: "V" (alone or as the mixed cell with switches) and
    "FGR" (V's cell with the gate recurrence Rg)."""
    return variant in ("V", "FGR")


def check(loops, variant: str, platform: str | None = None) -> None:
    """Raises a ValueError for an unknown `loops`, or for "pallas" with a variant or platform it lacks."""
    if loops not in LOOPS:
        raise ValueError(f"loops must be one of {LOOPS}, got {loops!r}")
    if loops == "pallas":
        if not supports(variant):
            raise ValueError(f"loops='pallas' implements V, the mixed cell and FGR only, not {variant} "
                             f"(run it with loops='xla')")
        platform = platform or jax.default_backend()
        if platform not in ("cpu", "gpu", "cuda", "rocm"):
            raise ValueError(f"loops='pallas' runs on GPUs (and on CPUs in interpret mode), not on {platform}")


def _pow2(n):
    return 1 << (max(n, 1) - 1).bit_length()


def _load(ref, index, mask):
    from jax.experimental.pallas import triton as pltriton
    return pltriton.load(ref.at[index], mask=mask, other=0.0)


def _row(ref, index, n, start=0, size=None):
    """ref[index..., start:start + size] of a ref whose last axis is P units; units from n on read as 0 and
    not loaded. `index`: the leading indices (ints or traced scalars)."""
    from jax.experimental import pallas as pl
    size = ref.shape[-1] if size is None else size
    lead = tuple(jnp.int32(i) if isinstance(i, int) else i for i in index)
    return _load(ref, lead + (pl.ds(start, size),), (start + jnp.arange(size)) < n)


def _block(ref, g, start, rows, n):
    """Rows start..start+rows of the [P, P] block g of a weight ref float[..., P, P] (g: an int, or a tuple of
    ints for more leading axes); only the entries inside n × n are read (the others 0)."""
    from jax.experimental import pallas as pl
    inside = ((start + jnp.arange(rows)) < n)[:, None] & (jnp.arange(ref.shape[-1]) < n)[None, :]
    lead = tuple(jnp.int32(i) for i in (g if isinstance(g, tuple) else (g,)))
    return _load(ref, lead + (pl.ds(start, rows), slice(None)), inside)


def _matvec(block, vec):
    """Σ_k block[j, k] vec[k]: the vector rounded to the block's dtype (`fast_lstm`'s recurrent_dtype), the
    products and their sum in the vector's dtype."""
    vec = vec.astype(block.dtype).astype(vec.dtype)
    return jnp.sum(block.astype(vec.dtype) * vec[None, :], axis=1)


def _matvec_dot(block, vec):
    """`_matvec` of a bfloat16 block as a matrix product (a GPU's tensor cores, float32 accumulation): the
    vector, rounded to bfloat16, is the first of `DOT_COLUMNS` columns, the others 0, so the product's row
    sums are the first column's values exactly. Used by the held kernels with bfloat16 R: Triton keeps a
    product's operand in shared memory, where R then stays for the whole loop (P ≤ `DOT_MAX`), whereas the
    float32 copy `_matvec` makes of it fills the registers from P = 128 on (bench/README.md)."""
    first = jnp.arange(DOT_COLUMNS)[None, :] == 0
    columns = jnp.where(first, vec.astype(block.dtype)[:, None], jnp.zeros((), block.dtype))
    return jnp.sum(jnp.dot(block, columns, preferred_element_type=vec.dtype), axis=1)


def holds(width: int, rdt, fgr: bool = False) -> tuple[bool, bool]:
    """Whether a trial's kernels of padded width P = `width` hold its R for the whole loop, and whether their
    products are tensor-core dots: float32 R up to `HOIST_MAX` (in registers), bfloat16 R up to `DOT_MAX` (as
    the dots' operand); FGR's kernels never hold theirs (the gate recurrence's nine blocks besides R)."""
    if fgr:
        return False, False
    dot = jnp.dtype(rdt) == jnp.bfloat16
    return width <= (DOT_MAX if dot else HOIST_MAX), dot


def _switches(ref):
    """The mixed cell's switches (`cells.SWITCHES`) as scalar booleans by name, from a float[8] ref."""
    return {name: ref[k] > 0 for k, name in enumerate(cells.SWITCHES)}


def _cell(pre, c_prev, peep, on):
    """One step of V's cell (on None) or of the mixed cell (on: `_switches`), as `fast_lstm`'s forward step:
    from the four pre-activations without peepholes (z, i, f, o), c_{t−1} and the peepholes (i, f, o), the
    output y_t, the cell c_t and the activations (z, i, f, o)."""
    pi, pf, po = peep
    if on is None:
        z = jnp.tanh(pre[0])
        i = cells.sigmoid(pre[1] + pi * c_prev)
        f = cells.sigmoid(pre[2] + pf * c_prev)
        c = z * i + c_prev * f
        o = cells.sigmoid(pre[3] + po * c)
        return jnp.tanh(c) * o, c, (z, i, f, o)
    z = jnp.where(on["linear_g"], pre[0], jnp.tanh(pre[0]))
    i = jnp.where(on["no_i"], 1.0, cells.sigmoid(pre[1] + pi * c_prev))
    f = jnp.where(on["no_f"], 1.0, jnp.where(on["cifg"], 1.0 - i, cells.sigmoid(pre[2] + pf * c_prev)))
    c = z * i + c_prev * f
    o = jnp.where(on["no_o"], 1.0, cells.sigmoid(pre[3] + po * c))
    return jnp.where(on["linear_h"], c, jnp.tanh(c)) * o, c, (z, i, f, o)


def _deltas(co, dy_next, dc_next, dg_next=None):
    """`fast_lstm`'s backward step from a step's coefficients (`COEFFICIENTS`, then FGR's `FGR_COEFFICIENTS`),
    δy and δc of the step after (and FGR's deltas of this step's gates i, f, o, from the step after): the
    pre-activation deltas (δā_z, δā_i, δā_f, δā_o) and δc_{t−1}."""
    dy_ext, c_y, o_y, z_c, i_c, f_c, c_c = co[:len(COEFFICIENTS)]
    dy = dy_ext + dy_next
    dc = dc_next + dy * c_y
    if dg_next is None:
        return (dc * z_c, dc * i_c, dc * f_c, dy * o_y), dc * c_c
    so, si, sf, c_go, c_gi, c_gf = co[len(COEFFICIENTS):]
    dgi, dgf, dgo = dg_next
    dc = dc + dgo * c_go
    deltas = (dc * z_c, dc * i_c + dgi * si, dc * f_c + dgf * sf, dy * o_y + dgo * so)
    return deltas, dc * c_c + dgi * c_gi + dgf * c_gf


def _forward_held(range_ref, keep_ref, sw_ref, xw_ref, rt_ref, p_ref, y_ref, c_ref, a_ref, *, n, mixed, dot):
    """One trial's forward loop over steps range_ref[0]..range_ref[1] − 1 (int32[2]), R held (`holds`).
    keep_ref float[T] (0: a masked step, which keeps the state), sw_ref float[8] (switches), xw_ref
    float[T, 4, P] (xs W + b), rt_ref float[4, P, P] (rt[g, j, k] = R[k, g, j]), p_ref float[3, P]; writes
    y_t, c_t into y_ref, c_ref float[T, P] and the activations into a_ref float[T, 4, P]. `dot`: the products
    as `_matvec_dot`'s."""
    weight = [_block(rt_ref, g, 0, rt_ref.shape[-1], n) for g in range(GATES)]
    matvec = _matvec_dot if dot else _matvec
    peep = tuple(_row(p_ref, (g,), n) for g in range(3))
    on = _switches(sw_ref) if mixed else None

    def step(t, carry):
        y_prev, c_prev = carry
        pre = [matvec(weight[g], y_prev) + _row(xw_ref, (t, g), n) for g in range(GATES)]
        y, c, acts = _cell(pre, c_prev, peep, on)
        valid = keep_ref[t] > 0
        y, c = jnp.where(valid, y, y_prev), jnp.where(valid, c, c_prev)
        y_ref[t, :] = y
        c_ref[t, :] = c
        for g, act in enumerate(acts):
            a_ref[t, g, :] = act
        return y, c

    zero = jnp.zeros(y_ref.shape[1:], y_ref.dtype)
    jax.lax.fori_loop(range_ref[0], range_ref[1], step, (zero, zero))


def _backward_held(range_ref, keep_ref, co_ref, r_ref, da_ref, *, n, dot):
    """One trial's backward loop from step range_ref[1] − 1 down to range_ref[0], R held (`holds`).
    co_ref float[T, 7, P] (`COEFFICIENTS`), r_ref float[4, P, P] (r[g, k, j] = R[k, g, j]); writes the
    pre-activation deltas into da_ref float[T, 4, P] (0 at masked steps, whose deltas pass through). `dot`: as
    `_forward_held`'s."""
    weight = [_block(r_ref, g, 0, r_ref.shape[-1], n) for g in range(GATES)]
    matvec = _matvec_dot if dot else _matvec
    last = range_ref[1]

    def step(s, carry):
        t = last - 1 - s
        dy_next, dc_next = carry
        deltas, dc_prev = _deltas([_row(co_ref, (t, j), n) for j in range(len(COEFFICIENTS))], dy_next, dc_next)
        valid = keep_ref[t] > 0
        for g, d in enumerate(deltas):
            da_ref[t, g, :] = jnp.where(valid, d, 0.0)
        dy_prev = sum(matvec(weight[g], d) for g, d in enumerate(deltas))
        return jnp.where(valid, dy_prev, dy_next), jnp.where(valid, dc_prev, dc_next)

    zero = jnp.zeros(da_ref.shape[2:], da_ref.dtype)
    jax.lax.fori_loop(0, last - range_ref[0], step, (zero, zero))


def _forward_chunked(range_ref, keep_ref, sw_ref, xw_ref, rt_ref, p_ref, *refs, n, chunk, barrier, mixed, fgr):
    """`_forward_held` for a width whose R does not fit in registers, and FGR's: at every step the units are
    computed `chunk` at a time, each chunk reading its rows of the four Rᵀ blocks and the whole y_{t−1} from
    y_ref, where the step before wrote it; a barrier ends the step. Units from ceil(n / chunk) · chunk on are
    never written. FGR (refs: rgt_ref float[3, 3, P, P], rgt[b, a, k, j] = Rg[a, j, b, k], before the outputs;
    g_ref float[T, 3, P] after them): the gates i, f, o of the step before (the state, kept at masked steps,
    written to g_ref) also feed this step's through Rg."""
    from jax.experimental import pallas as pl
    if fgr:
        rgt_ref, y_ref, c_ref, a_ref, g_ref = refs
    else:
        y_ref, c_ref, a_ref = refs
    first = range_ref[0]
    on = _switches(sw_ref) if mixed else None

    def step(t, carry):
        prev = jnp.maximum(t - 1, 0)
        start_state = t == first  # the zero state before the trial's first step
        y_prev = jnp.where(start_state, 0.0, _row(y_ref, (prev,), n))
        g_prev = [jnp.where(start_state, 0.0, _row(g_ref, (prev, a), n)) for a in range(3)] if fgr else None
        valid = keep_ref[t] > 0

        def unit_chunk(j, carry):
            start = pl.multiple_of(j * chunk, chunk)
            rows = pl.ds(start, chunk)
            rec = [_matvec(_block(rt_ref, g, start, chunk, n), y_prev) for g in range(GATES)]
            if fgr:  # gates i, f, o (1, 2, 3) gain Σ_a Rg[a, :, b, :]ᵀ g_{t−1, a}
                rec = rec[:1] + [rec[1 + b] + sum(_matvec(_block(rgt_ref, (b, a), start, chunk, n), g_prev[a])
                                                  for a in range(3)) for b in range(3)]
            pre = [rec[g] + _row(xw_ref, (t, g), n, start, chunk) for g in range(GATES)]
            c_prev = jnp.where(start_state, 0.0, _row(c_ref, (prev,), n, start, chunk))
            y_kept = jnp.where(start_state, 0.0, _row(y_ref, (prev,), n, start, chunk))
            y, c, acts = _cell(pre, c_prev, tuple(_row(p_ref, (g,), n, start, chunk) for g in range(3)), on)
            y_ref[t, rows] = jnp.where(valid, y, y_kept)
            c_ref[t, rows] = jnp.where(valid, c, c_prev)
            for g, act in enumerate(acts):
                a_ref[t, g, rows] = act
            if fgr:
                for a in range(3):
                    g_kept = jnp.where(start_state, 0.0, _row(g_ref, (prev, a), n, start, chunk))
                    g_ref[t, a, rows] = jnp.where(valid, acts[1 + a], g_kept)
            return carry

        jax.lax.fori_loop(0, -(-n // chunk), unit_chunk, 0)
        barrier()  # this step's y_t, c_t written by all of the program's threads
        return carry

    jax.lax.fori_loop(first, range_ref[1], step, 0)


def _backward_chunked(range_ref, keep_ref, co_ref, r_ref, *refs, n, chunk, barrier, fgr):
    """`_backward_held` for a width whose R does not fit in registers, and FGR's: a step's deltas are whole
    [P] vectors, and δy_{t−1} = R δā_t (a masked step: δy passed on) is computed `chunk` rows at a time into
    dyp_ref[t] (float[T, P]), which the step t − 1 reads back after a barrier. FGR (refs: rgb_ref float[3, 3,
    P, P], rgb[a, b, j, k] = Rg[a, j, b, k], before the outputs; dgp_ref float[T, 3, P] after them; co_ref
    also holds `FGR_COEFFICIENTS`): likewise the deltas of the gates i, f, o at t − 1, Rg δā_{i,f,o}."""
    from jax.experimental import pallas as pl
    if fgr:
        rgb_ref, da_ref, dyp_ref, dgp_ref = refs
    else:
        da_ref, dyp_ref = refs
    last = range_ref[1]
    count = len(COEFFICIENTS) + (len(FGR_COEFFICIENTS) if fgr else 0)

    def step(s, dc_next):
        t = last - 1 - s
        after = jnp.minimum(t + 1, last - 1)
        dy_next = jnp.where(s > 0, _row(dyp_ref, (after,), n), 0.0)
        dg_next = [jnp.where(s > 0, _row(dgp_ref, (after, a), n), 0.0) for a in range(3)] if fgr else None
        deltas, dc_prev = _deltas([_row(co_ref, (t, j), n) for j in range(count)], dy_next, dc_next, dg_next)
        valid = keep_ref[t] > 0
        for g, d in enumerate(deltas):
            da_ref[t, g, :] = jnp.where(valid, d, 0.0)

        def row_chunk(j, carry):
            start = pl.multiple_of(j * chunk, chunk)
            passed = jnp.where(s > 0, _row(dyp_ref, (after,), n, start, chunk), 0.0)
            product = sum(_matvec(_block(r_ref, g, start, chunk, n), d) for g, d in enumerate(deltas))
            dyp_ref[t, pl.ds(start, chunk)] = jnp.where(valid, product, passed)
            if fgr:
                for a in range(3):
                    passed = jnp.where(s > 0, _row(dgp_ref, (after, a), n, start, chunk), 0.0)
                    product = sum(_matvec(_block(rgb_ref, (a, b), start, chunk, n), deltas[1 + b]) for b in range(3))
                    dgp_ref[t, a, pl.ds(start, chunk)] = jnp.where(valid, product, passed)
            return carry

        jax.lax.fori_loop(0, -(-n // chunk), row_chunk, 0)
        barrier()  # δy_{t−1} written by all of the program's threads
        return jnp.where(valid, dc_prev, dc_next)

    jax.lax.fori_loop(0, last - range_ref[0], step, jnp.zeros(da_ref.shape[2:], da_ref.dtype))


def _call(kernel, out_shapes, dtype, args, held):
    """pallas_call of `kernel` over whole arrays (vmap adds one program per trial): interpret mode on a CPU,
    Triton with 4 warps where R is held (`held`) and 8 where it is read in chunks elsewhere."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pltriton
    interpret = interpret_mode()
    params = None if interpret else pltriton.CompilerParams(num_warps=4 if held else 8)
    return pl.pallas_call(kernel, out_shape=[jax.ShapeDtypeStruct(s, dtype) for s in out_shapes],
                          interpret=interpret, compiler_params=params)(*args)


def _barrier():
    """A barrier between a chunked kernel's steps (__syncthreads); interpret mode runs in order and needs none."""
    if interpret_mode():
        return lambda: None
    from jax.experimental.pallas import triton as pltriton
    return pltriton.debug_barrier


def _pad(a, axes, width):
    return jnp.pad(a, [(0, width - a.shape[d] if d in axes else 0) for d in range(a.ndim)])


def step_range(t: int, keep, bounds):
    """The steps a trial's loops run: int32[2] (first, last + 1) of its valid steps (keep > 0, within the
    bounds (lo, hi) if given); (0, 0) when it has none. Also bool[T], True inside that range."""
    index = jnp.arange(t)
    inside = jnp.ones((t,), bool)
    if bounds is not None:
        inside = (index >= bounds[0]) & (index < bounds[1])
    if keep is not None:
        inside = inside & (keep > 0)
    some = jnp.any(inside)
    first = jnp.where(some, jnp.argmax(inside), 0)
    last = jnp.where(some, t - jnp.argmax(inside[::-1]), 0)
    return jnp.stack([first, last]).astype(jnp.int32), (index >= first) & (index < last)


def forward(xw, r, p, switches, keep, bounds, rdt, rg=None):
    """The forward loop of one trial (vmap for many).

    Args:
      xw: float[T, 4, N], the input projection xs W + b by gate (z, i, f, o).
      r: float[N, 4, N], R; rounded to `rdt` for the products.
      p: float[3, N], the peepholes (i, f, o).
      switches: float[6], the mixed cell's, or None for V's cell.
      keep: float[T] (0 at masked steps) or None; bounds: None or (lo, hi), the steps the layer runs.
      rdt: the recurrent products' operand dtype.
      rg: FGR's float[3, N, 3, N] gate recurrence (rounded to `rdt` too), or None.

    Returns:
      (states, acts): states (y, c), and for FGR also the gates (i, f, o) as float[T, 3, N], the state a
      masked step keeps; acts (z, i, f, o) as computed; each float[T, N] in xw's dtype, every one 0 outside
      the trial's range (`step_range`).
    """
    t, _, n = xw.shape
    width = _pow2(n)
    dtype = xw.dtype
    fgr = rg is not None
    ranges, inside = step_range(t, keep, bounds)
    keep = jnp.ones((t,), dtype) if keep is None else keep.astype(dtype)
    sw = jnp.zeros((8,), dtype) if switches is None else _pad(switches.astype(dtype), (0,), 8)
    rt = jnp.transpose(_pad(r, (0, 2), width), (1, 2, 0)).astype(rdt)  # [g, j, k] = R[k, g, j]
    args = [ranges, keep, sw, _pad(xw, (2,), width), rt, _pad(p.astype(dtype), (1,), width)]
    shapes = [(t, width), (t, width), (t, GATES, width)]
    held, dot = holds(width, rdt, fgr)
    if held:
        kernel = functools.partial(_forward_held, n=n, mixed=switches is not None, dot=dot)
    else:  # FGR's Rg (9 blocks) never fits in registers
        kernel = functools.partial(_forward_chunked, n=n, chunk=min(CHUNK, width), barrier=_barrier(),
                                   mixed=switches is not None, fgr=fgr)
    if fgr:
        args.append(jnp.transpose(_pad(rg, (1, 3), width), (2, 0, 3, 1)).astype(rdt))  # [b, a, k, j] = Rg[a, j, b, k]
        shapes.append((t, 3, width))
    outs = _call(kernel, shapes, dtype, args, held)
    # Steps outside the range and units from N on were never written.
    outs = [jnp.where(inside.reshape((t,) + (1,) * (v.ndim - 1)), v[..., :n], 0.0) for v in outs]
    y, c, a = outs[:3]
    return (y, c) + tuple(outs[3:]), tuple(a[:, g] for g in range(GATES))


def backward(coefficients, r, keep, bounds, rdt, rg=None):
    """The backward loop of one trial (vmap for many).

    Args:
      coefficients: dict of float[T, N] by `COEFFICIENTS` (and, for FGR, `FGR_COEFFICIENTS`): `fast_lstm`'s
        per-step coefficients of V's cell, the mixed cell or FGR's, with the outputs' cotangent as "dy_ext".
      r: float[N, 4, N], R; rounded to `rdt` for the products.
      keep, bounds, rdt, rg: as in `forward`.

    Returns:
      float[T, 4N], the pre-activation deltas δā_t by gate (z, i, f, o), 0 at masked steps and outside the
      trial's range.
    """
    t, n = coefficients["dy_ext"].shape
    width = _pow2(n)
    dtype = coefficients["dy_ext"].dtype
    fgr = rg is not None
    ranges, inside = step_range(t, keep, bounds)
    keep = jnp.ones((t,), dtype) if keep is None else keep.astype(dtype)
    names = COEFFICIENTS + (FGR_COEFFICIENTS if fgr else ())
    co = _pad(jnp.stack([jnp.broadcast_to(coefficients[name], (t, n)).astype(dtype) for name in names], axis=1),
              (2,), width)
    rr = jnp.transpose(_pad(r, (0, 2), width), (1, 0, 2)).astype(rdt)  # [g, k, j] = R[k, g, j]
    args = [ranges, keep, co, rr]
    held, dot = holds(width, rdt, fgr)
    if held:
        (da,) = _call(functools.partial(_backward_held, n=n, dot=dot), [(t, GATES, width)], dtype, args, True)
    else:
        kernel = functools.partial(_backward_chunked, n=n, chunk=min(CHUNK, width), barrier=_barrier(), fgr=fgr)
        shapes = [(t, GATES, width), (t, width)]
        if fgr:
            args.append(jnp.transpose(_pad(rg, (1, 3), width), (0, 2, 1, 3)).astype(rdt))  # [a, b, j, k] = Rg[a, j, b, k]
            shapes.append((t, 3, width))
        da = _call(kernel, shapes, dtype, args, False)[0]
    da = jnp.where(inside[:, None, None], da[:, :, :n], 0.0)
    return da.reshape(t, GATES * n)
