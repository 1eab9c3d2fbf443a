"""The trainer's compiled programs: a training epoch of online updates for K trials, and evaluation.

Pure functions of arrays and static settings, jitted and sharded over the trial mesh by `group_programs`;
`odyssey.group.Group` holds their state and `odyssey.train.train_trials` runs them. The module docstring of
`odyssey.train` gives the choices behind them and their measurements.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from odyssey import fast_lstm, optim, pallas_loops, tasks


# Updates per draw of input noise. jax.random on CPU runs each draw as a loop of its own; drawing the noise
# of 8 updates in one batched call (the same numbers) made the epoch 1.11x faster for one trial and 1.05x
# for 8 (JSB shape, N = 200, paired A/B; blocks of 4 and 16 measured the same as 8).
NOISE_BLOCK = 8


# XLA options the trainer compiles its programs with, by platform (see `compiler_options`).
COMPILER_OPTIONS = {"cpu": {"xla_cpu_prefer_vector_width": 512}}


def compiler_options(device) -> dict:
    """The XLA options of the trainer's programs on `device` (a JAX device or its platform name).

    On a CPU, XLA's code generator vectorizes its fused kernels for 256-bit registers unless told to prefer
    512: on an AVX-512 CPU the per-step kernels of the LSTM loops (a dozen small elementwise fusions per
    time step around the recurrent product) then take half the vector instructions. Measured on 2 CPU cores
    (Intel Xeon @ 2.50GHz, AVX-512, 2026-11-27), one trial, sequence-updates/s with over without the option,
    both programs in one process, measured in turn: JSB shape N = 200 1.21x (9 pairs, 1.11-1.38x), N = 100
    1.11x; bench/trainer_speed.py --quick --xla_defaults (medians of 7): JSB N = 100 641 / 587, N = 200
    314 / 268, TIMIT shape (T = 100) N = 100 302 / 242, N = 200 119 / 99. Vmapped chunks of trials gained
    little (0.99-1.04x; their time is in the batched recurrent products, which the option leaves alone).
    Where the CPU has no 512-bit registers, LLVM keeps the widest it has, so the option is harmless there.
    The values change only by float round-off (the order of vectorized sums), as any change of vector width
    or chunk size does; an unstable trial can amplify that over its epochs (README). `COMPILER_OPTIONS` holds
    the options; set an entry to {} to compile with XLA's defaults.
    """
    return dict(COMPILER_OPTIONS.get(getattr(device, "platform", device), {}))


def recurrent_setting(recurrent_dtype, dtype):
    """The recurrent products' operand dtype as the programs take it: None for the parameters' own dtype (the
    default program), else the dtype; a ValueError for one `fast_lstm` refuses."""
    rdt = fast_lstm.recurrent_operand_dtype(recurrent_dtype, dtype)
    return None if rdt == np.dtype(dtype) else rdt


def group_loops(lstm_loops, cell, platform):
    """The LSTM loops a group's programs run: `lstm_loops`, except "xla" for a cell the Pallas kernels lack
    (`odyssey.pallas_loops.supports`); a ValueError for an unknown setting or a platform without them."""
    if lstm_loops not in pallas_loops.LOOPS:
        raise ValueError(f"lstm_loops must be one of {pallas_loops.LOOPS}, got {lstm_loops!r}")
    if lstm_loops == "pallas" and not pallas_loops.supports(cell):
        return "xla"
    pallas_loops.check(lstm_loops, cell, platform)
    return lstm_loops


# The float32 matrix-product precisions the trainer's programs can be traced under (`odyssey.train.train_trials`).
MATMUL_PRECISIONS = ("float32", "tensorfloat32")


def check_precision(matmul_precision):
    if matmul_precision is not None and matmul_precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be None or one of {', '.join(MATMUL_PRECISIONS)}, got "
                         f"{matmul_precision!r}")


def traced_under(fn, matmul_precision):
    """`fn`, traced under `jax.default_matmul_precision(matmul_precision)` (None: under the caller's setting).

    The setting is read when a product is traced, so every product of the program, those of its gradient and
    its loops included, carries it whatever context the program is later called or compiled in."""
    if matmul_precision is None:
        return fn

    @functools.wraps(fn)
    def traced(*args):
        with jax.default_matmul_precision(matmul_precision):
            return fn(*args)
    if isinstance(fn, functools.partial):  # named after its function in JAX's logs and profiles
        traced.__name__ = traced.__qualname__ = fn.func.__name__
    return traced


def per_trial_where(cond, a, b):
    """Per-trial select: cond bool[K] broadcast against leading-K pytrees."""
    def pick(x, y):
        c = cond.reshape(cond.shape + (1,) * (x.ndim - 1))
        return jnp.where(c, x, y)
    return jax.tree_util.tree_map(pick, a, b)


def epoch_order(order_key, key, epoch, lengths, stratum=None):
    """The order in which a trial visits the training sequences in its epoch `epoch`: int32[n], a permutation.

    stratum None: the permutation drawn from `order_key` (the trial's own key, or the one all trials share).
    stratum m: the sequences sorted by length (ties by index) fall into strata of m (the last may be smaller);
    P, drawn from `order_key` as above, picks a stratum for each update, and within each stratum the trial's
    own `key` shuffles which of its sequences goes where: the sequence at update s is σ(P[s]), σ a uniformly
    random permutation of each stratum onto itself. For every trial and epoch that is a uniform shuffle
    (σ ∘ P is uniform for any σ independent of a uniform P), independent across epochs and of everything
    else the trial draws; trials that share `order_key` present sequences of one stratum at each update,
    so an update's loops run to the longest of m similar lengths rather than of K random ones. m = 1 is the
    shared order P itself; m ≥ n, an order of the trial's own.
    """
    n = lengths.shape[0]
    p = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(order_key, 1), epoch), n)
    if stratum is None:
        return p
    by_length = jnp.argsort(lengths, stable=True)
    position = jnp.argsort(by_length)  # each sequence's place in the length order
    ranks = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 3), epoch), n)
    # within each stratum (block of `stratum` places), its places in the order of the trial's random ranks
    shuffled = jnp.argsort((jnp.arange(n) // stratum) * n + ranks)
    return by_length[shuffled[position[p]]]


def train_epoch(task, variant, state, hp, train, epoch, trim=False, recurrent_dtype=None, branch_past_end=True,
                 loops="xla", stratum=None):
    """One epoch of online updates for K trials at once.

    Args:
      task, variant: static.
      state: dict params/velocity (leading axis K), alive bool[K].
      hp: dict of per-trial arrays: lr, momentum, noise, nesterov, clip, key uint32[K, 2] (input noise),
        order_key uint32[K, 2] (the order of the sequences), mask (pytree), switches (the mixed cell's
        float[K, 6], or None).
      train: `tasks.Arrays` of the training split as device arrays.
      epoch: int32[K], each trial's own epoch counter (selects its shuffle and noise).
      trim: static; the training sequences differ in length: each update runs the LSTM loops only up to
        the longest of the sequences it presents to live trials (exact: the rest is padding, and a frozen
        trial's update is discarded).
      recurrent_dtype: static; the operand dtype of the LSTM loops' recurrent products (None: the
        parameters'; see `odyssey.fast_lstm.lstm_layer`).
      branch_past_end: static; where NOISE_BLOCK does not divide the epoch's updates, skip those past its end
        by a branch (True) or, with `trim`, run them as no-ops whose loops stop after one step (False; see
        `odyssey.group.Group`). The same numbers either way.
      loops: static; "xla" or "pallas", how the LSTM layers' time loops run (`odyssey.fast_lstm.lstm_layer`).
      stratum: static; None, or the sequences per length stratum of the trials' orders (`epoch_order`).

    Returns:
      (new state, summed train loss float[K], diverged bool[K]).
    """
    n_seq = train.xs.shape[0]
    sequence_loss = functools.partial(tasks.sequence_loss, recurrent_dtype=recurrent_dtype, loops=loops)
    lengths = jnp.sum(train.mask > 0, axis=1).astype(jnp.int32)
    perms = jax.vmap(functools.partial(epoch_order, lengths=lengths, stratum=stratum))(hp["order_key"], hp["key"],
                                                                                        epoch)
    noise_keys = jax.vmap(lambda k, e: jax.random.fold_in(jax.random.fold_in(k, 2), e))(hp["key"], epoch)

    def one(params, velocity, alive, mask, lr, mu, nesterov, clip, std, switches, eps, idx, steps):
        x = train.xs[idx] + std * eps
        lp = None if train.label_paddings is None else train.label_paddings[idx]
        point = optim.gradient_point(params, velocity, mu, nesterov)
        loss, grads = jax.value_and_grad(sequence_loss, argnums=2)(
            task, variant, point, x, train.mask[idx], train.targets[idx], lp, steps, exact, switches)
        # Loss and gradient are checked before the update, so that the update and the freeze are one pass
        # over each array (weights that overflow from finite gradients are caught after the epoch).
        finite = all_finite(grads) & jnp.isfinite(loss)
        keep = alive & finite
        grads = jax.tree_util.tree_map(jnp.multiply, grads, mask)
        new_v = optim.velocity_step(velocity, grads, lr, mu, clip)
        velocity = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new_v, velocity)
        # θ' = θ + v' (as optim.update) read from the stored v' (the barrier keeps XLA from recomputing v' from
        # the old v, which would need a copy of the old velocity to update it in place).
        params = jax.tree_util.tree_map(lambda p, v: jnp.where(keep, p + v, p), params,
                                        jax.lax.optimization_barrier(velocity))
        return params, velocity, keep, jnp.where(keep, loss, 0.0), alive & ~finite

    k = epoch.shape[0]
    # One trial runs without vmap and with unbatched arrays in the loop (a batch of one costs ~10-15 % more
    # on CPU, and its per-update expand/squeeze copies the weights).
    squeeze = k == 1
    # The LSTM loops need the mask only where a sequence ends before the loops do: with equal lengths (no
    # trim) there is no padding, and one trimmed trial's loops stop at its own sequence's end.
    exact = squeeze or not trim
    per_trial = one if squeeze else jax.vmap(one, in_axes=(0,) * 12 + (None,))
    unbatch = (lambda tree: jax.tree_util.tree_map(lambda x: x[0], tree)) if squeeze else (lambda tree: tree)
    rebatch = (lambda tree: jax.tree_util.tree_map(lambda x: x[None], tree)) if squeeze else (lambda tree: tree)
    trial_hp = unbatch([hp["mask"], hp["lr"], hp["momentum"], hp["nesterov"], hp["clip"], hp["noise"],
                        hp["switches"]])
    # The updates run in blocks of NOISE_BLOCK, whose input noise is drawn in one call per block: update s of
    # an epoch still adds normal(fold_in(noise key, s)), the draws are only batched (see NOISE_BLOCK).
    n_blocks = -(-n_seq // NOISE_BLOCK)
    branch = n_blocks * NOISE_BLOCK != n_seq and (branch_past_end or not trim)
    perms_t = jnp.pad(perms.T, ((0, n_blocks * NOISE_BLOCK - n_seq), (0, 0)))  # [updates, K]

    def block_noise(nkey, first):
        keys = jax.vmap(lambda j: jax.random.fold_in(nkey, first + j))(jnp.arange(NOISE_BLOCK))
        return jax.vmap(lambda key: jax.random.normal(key, train.xs.shape[1:], train.xs.dtype))(keys)

    def update(carry, s, eps):
        params, velocity, alive, diverged, loss_sum = carry
        idx = perms_t[s]
        # An update past the epoch's end (in its last block) trains no trial: it changes nothing.
        live = alive & (s < n_seq)
        # Frozen trials (ended, diverged, empty slots) do not extend the loops: their updates are discarded.
        steps = jnp.maximum(jnp.max(jnp.where(live, lengths[unbatch(idx)], 0)), 1) if trim else None
        params, velocity, keep, loss, div = per_trial(params, velocity, live, *trial_hp, eps, unbatch(idx), steps)
        return params, velocity, jnp.where(s < n_seq, keep, alive), diverged | div, loss_sum + loss

    def block(carry, b):
        first = b * NOISE_BLOCK
        noise = (block_noise(noise_keys[0], first) if squeeze
                 else jnp.moveaxis(jax.vmap(block_noise, in_axes=(0, None))(noise_keys, first), 1, 0))

        def step(carry, j):
            s = first + j
            if not branch:
                return update(carry, s, noise[j]), None
            return jax.lax.cond(s < n_seq, lambda c: update(c, s, noise[j]), lambda c: c, carry), None

        return jax.lax.scan(step, carry, jnp.arange(NOISE_BLOCK))[0], None

    init = unbatch((state["params"], state["velocity"], state["alive"], jnp.zeros(k, bool),
                    jnp.zeros(k, train.xs.dtype)))
    (params, velocity, alive, diverged, loss_sum), _ = jax.lax.scan(block, init, jnp.arange(n_blocks))
    params, velocity, alive, diverged, loss_sum = rebatch((params, velocity, alive, diverged, loss_sum))
    # Weights can overflow to ±inf from finite gradients; such a trial is caught here, once per epoch.
    overflow = alive & ~jax.vmap(all_finite)(params)
    return {"params": params, "velocity": velocity, "alive": alive & ~overflow}, loss_sum, diverged | overflow


def all_finite(tree):
    """True when every element of every leaf is finite (a bool scalar).

    As the finiteness of Σ 0·x: each term is 0 for a finite x and NaN for ±inf or NaN (a float sum is
    cheaper on CPU than reducing a boolean array; 0·x is not simplified away without fast math).
    """
    total = sum(jnp.sum(x * jnp.zeros((), x.dtype)) for x in jax.tree_util.tree_leaves(tree))
    return jnp.isfinite(total)


def local_epoch(task, variant, chunk, trim, recurrent_dtype, branch_past_end, loops, stratum, state, hp, train, epoch):
    """One epoch of the trials on one device, `chunk` trials at a time.

    The device's K trials are split into K / chunk chunks that run one after another (`lax.map`), each a
    vmapped epoch of `chunk` trials (`chunk` = K: all at once). A chunk whose trials are all frozen
    (empty slots, diverged trials) is skipped. Trials never interact, so the split changes no number.
    """
    k = epoch.shape[0]
    if chunk >= k:
        return train_epoch(task, variant, state, hp, train, epoch, trim, recurrent_dtype, branch_past_end, loops,
                           stratum)

    def run(args):
        st, h, ep = args
        def idle(st, h, ep):
            return st, jnp.zeros(ep.shape, train.xs.dtype), jnp.zeros(ep.shape, bool)
        def live(st, h, ep):
            return train_epoch(task, variant, st, h, train, ep, trim, recurrent_dtype, branch_past_end, loops,
                               stratum)
        return jax.lax.cond(jnp.any(st["alive"]), live, idle, st, h, ep)

    return _by_chunks(run, (state, hp, epoch), k, chunk)


def _by_chunks(run, args, k, chunk):
    """`run` over the K trials of `args` (pytrees with a leading axis K), `chunk` trials at a time, one chunk
    after another (`lax.map`); its outputs merged back to a leading axis K."""
    out = jax.lax.map(run, jax.tree_util.tree_map(lambda x: x.reshape((k // chunk, chunk) + x.shape[1:]), args))
    return jax.tree_util.tree_map(lambda x: x.reshape((k,) + x.shape[2:]), out)


def local_eval(task, variant, chunk, recurrent_dtype, loops, params, switches, live, seqs, steps):
    """Metric statistics of the device's K trials on a chunk of sequences (`eval_chunk`), `chunk` trials at a
    time, as `local_epoch` trains them. A chunk of trials none of which is live (bool[K] `live`: empty slots,
    trials ended) is skipped, its statistics zeros: once a group's last trials are packed into its first
    chunks, evaluation costs what they do (on 2 CPU cores, 2 live JSB trials of 32 at N = 200 took 0.91 s to
    validate unchunked, 3x their training epoch)."""
    k = live.shape[0]

    def stats(p, sw):
        return eval_chunk(task, variant, recurrent_dtype, loops, p, sw, seqs, steps)

    if chunk >= k:
        return stats(params, switches)

    def run(args):
        p, sw, lv = args
        shapes = jax.eval_shape(stats, p, sw)
        return jax.lax.cond(jnp.any(lv), stats,
                            lambda p, sw: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
                            p, sw)

    return _by_chunks(run, (params, switches, live), k, chunk)


def eval_chunk(task, variant, recurrent_dtype, loops, params, switches, chunk, steps):
    """Metric statistics of K trials on a chunk of sequences: vmapped over trials and sequences.

    switches: the mixed cell's float[K, 6], or None. steps: int32 scalar, the chunk's longest sequence; the
    LSTM loops stop there. recurrent_dtype, loops: static, as in `train_epoch`.
    """
    def per_trial(p, sw):
        return jax.vmap(lambda x, m, t: tasks.eval_statistics(task, variant, p, x, m, t, steps, sw,
                                                              recurrent_dtype, loops))(
            chunk.xs, chunk.mask, chunk.targets)
    return jax.vmap(per_trial)(params, switches)


@functools.lru_cache(maxsize=32)
def group_programs(task, cell, chunk, trim, recurrent_dtype, branch_past_end, loops, mesh, matmul_precision, options,
                   stratum=None):
    """A group's jitted training-epoch and evaluation functions, one pair per setting in a process: groups and
    `odyssey.train.train_trials` calls of the same setting share them, and with them JAX's compiled programs
    for each shape (a second call of the same trials compiles nothing). `options`: the compiler options as
    sorted items."""
    trials, whole = PartitionSpec("trials"), PartitionSpec()
    epoch_fn = jax.shard_map(functools.partial(local_epoch, task, cell, chunk, trim, recurrent_dtype,
                                               branch_past_end, loops, stratum), mesh=mesh,
                             in_specs=(trials, trials, whole, trials), out_specs=trials, check_vma=False)
    epoch_jit = jax.jit(traced_under(epoch_fn, matmul_precision), donate_argnums=(0,),
                        compiler_options=dict(options))
    eval_fn = jax.shard_map(functools.partial(local_eval, task, cell, chunk, recurrent_dtype, loops), mesh=mesh,
                            in_specs=(trials, trials, trials, whole, whole), out_specs=trials, check_vma=False)
    eval_jit = jax.jit(traced_under(eval_fn, matmul_precision), compiler_options=dict(options))
    return epoch_jit, eval_jit
