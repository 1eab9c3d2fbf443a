"""A group of the trainer: K slots of one program and padded hidden size, trained in lock-step epochs.

`Group` holds the slots' weights, velocities, best weights and hyperparameters on the trial mesh, fills and
refills slots with trials (from their start or a checkpoint), runs the training epoch and the evaluation of
`odyssey.programs`, packs live trials into the first chunks, and snapshots them for a checkpoint.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from odyssey import cells, checkpoints as ckpt, nets, tasks
from odyssey.layout import MIXED, cell_of, eval_sequences_per_step, group_layout
from odyssey.programs import (check_precision, compiler_options, group_loops, group_programs, per_trial_where,
                              recurrent_setting)


def trial_key(seed):
    return jax.random.PRNGKey(seed)


def _pad_split(arrays: tasks.Arrays, multiple: int) -> tasks.Arrays:
    """Appends all-padding sequences so the split divides into equal chunks (one compile for all chunks)."""
    extra = -arrays.size % multiple
    if not extra:
        return arrays

    def grow(a):
        return None if a is None else np.concatenate([a, np.zeros((extra,) + a.shape[1:], a.dtype)])

    lp = None if arrays.label_paddings is None else np.concatenate(
        [arrays.label_paddings, np.ones((extra,) + arrays.label_paddings.shape[1:], arrays.label_paddings.dtype)])
    return tasks.Arrays(grow(arrays.xs), grow(arrays.mask), grow(arrays.targets), lp)


def _eval_splits(arrays, chunk):
    """Validation and test for evaluation, as (arrays, order, steps per chunk).

    Both are padded to the same steps (and labels) and to whole chunks: one compiled evaluation. Their
    sequences are sorted by length (`order`: sorted position -> original index), so that a chunk holds
    sequences of similar length and its loops stop at its longest (`steps`).
    """
    steps = max(arrays[name].xs.shape[1] for name in ("valid", "test"))
    # CTC's labels too, though evaluation decodes without them: a split of other label width would compile a
    # second program, which compile_ahead (validation's shape) leaves to the first test pass, in the training loop
    width = max(arrays[name].targets.shape[1] for name in ("valid", "test"))
    out = {}
    for name in ("valid", "test"):
        a = arrays[name]
        order = np.argsort(a.mask.sum(1), kind="stable")
        a = tasks.Arrays(*(None if x is None else x[order] for x in a))
        widen = steps - a.xs.shape[1]
        xs = np.pad(a.xs, ((0, 0), (0, widen), (0, 0)))
        mask = np.pad(a.mask, ((0, 0), (0, widen)))
        targets, label_paddings = a.targets, a.label_paddings
        if label_paddings is None:  # frame targets grow with the steps
            targets = np.pad(targets, [(0, 0), (0, widen)] + [(0, 0)] * (targets.ndim - 2))
        else:  # labels to the common width, the new slots padding
            more = width - targets.shape[1]
            targets = np.pad(targets, ((0, 0), (0, more)))
            label_paddings = np.pad(label_paddings, ((0, 0), (0, more)), constant_values=1)
        padded = _pad_split(tasks.Arrays(xs, mask, targets, label_paddings), chunk)
        lengths = padded.mask.sum(1).astype(np.int32)
        chunk_steps = [np.int32(max(1, lengths[i:i + chunk].max())) for i in range(0, padded.size, chunk)]
        out[name] = (padded, order, chunk_steps)
    return out


class Group:
    """K slots of one program (a variant, or `MIXED`) and one padded hidden size, trained in lock-step epochs."""

    def __init__(self, task, variant, n_max, k, arrays, n_in, mesh, eval_chunk, dtype, chunk=None,
                 recurrent_dtype=None, order_seed=None, matmul_precision=None, lstm_loops="xla", order_stratum=None):
        check_precision(matmul_precision)
        self.task, self.variant, self.n_max, self.n_in, self.dtype = task, variant, n_max, n_in, dtype
        # Every slot's order key: its trial's own (None here), or the one all trials share.
        self._order_key = None if order_seed is None else np.asarray(trial_key(order_seed))
        recurrent_dtype = recurrent_setting(recurrent_dtype, dtype)
        self.mixed = variant == MIXED
        if not self.mixed:
            cells.spec(variant)
        # The variant whose cell the program runs: the mixed cell is V's with per-trial switches.
        self.cell = cell_of(variant)
        # The Pallas loops implement V's cell, the mixed cell and FGR's; other variants' own programs keep XLA's.
        self.loops = group_loops(lstm_loops, self.cell, mesh.devices.flat[0].platform)
        self.arrays = arrays
        n_dev = mesh.devices.size
        layers = nets.LAYERS[task.kind]
        self.k, self.chunk = group_layout(task, self.cell, n_max, k, n_in, list(mesh.devices.flat), chunk, dtype)
        self.n_dev = n_dev
        self.shard = NamedSharding(mesh, PartitionSpec("trials"))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        t_eval = max(arrays[name].xs.shape[1] for name in ("valid", "test"))
        self.eval_chunk = eval_sequences_per_step(eval_chunk, self.k, t_eval, n_max, layers, dtype.itemsize)
        self.train = jax.device_put(arrays["train"], self.replicated)
        self.eval_splits = _eval_splits(arrays, self.eval_chunk)
        # Trim the loops to each update's sequences when lengths differ; with equal lengths the plain scan
        # is ~5-10 % faster than the while loop that trimming needs (bench: fast_lstm, CPU).
        trim = not bool(np.all(arrays["train"].mask > 0))
        # The updates past an epoch's end (its last block of NOISE_BLOCK, when that does not divide it): on an
        # accelerator they run as no-ops with `trim` (their loops stop after one step) rather than be skipped
        # by a branch, for which XLA's GPU programs copied every weight and velocity array at every update
        # (15-23 copies per update compiled for an H100, bench/gpu_kernels.py). On a CPU the branch stays: a
        # no-op update there cost about a whole one (its input projection, loss and weight-gradient products
        # run over the padded length; 13 JSB-like sequences, 8 trials at N = 100: 77-90 ms an epoch against
        # 66-71), and the branch cost nothing measurable (16 sequences: 85-88 ms either way).
        branch_past_end = mesh.devices.flat[0].platform == "cpu"
        options = tuple(sorted(compiler_options(mesh.devices.flat[0]).items()))
        # Sequences per length stratum of the trials' orders (`programs.epoch_order`); None: no strata.
        stratum = None if order_stratum is None else int(order_stratum)
        self._epoch_fn, self._eval_fn = group_programs(task, self.cell, self.chunk, trim, recurrent_dtype,
                                                  branch_past_end, self.loops, mesh, matmul_precision, options,
                                                  stratum=stratum)
        self._empty = self._slot_values(None)
        self.fill([])

    def fill(self, trials, saved=None):
        """Puts `trials` into the first slots and empties the others, in one transfer per array (writing
        slot by slot took ~12 ms a trial on an H100: 6 s for a group of 487). A trial with an entry in
        `saved` (trial_id -> `ckpt.SavedTrial`) resumes from it."""
        if len(trials) > self.k:
            raise ValueError(f"{len(trials)} trials for {self.k} slots")
        saved = saved or {}
        values = ([self._slot_values(t, saved.get(t.trial_id)) for t in trials]
                  + [self._empty] * (self.k - len(trials)))
        stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *values)
        self.state = jax.device_put(stacked["state"], self.shard)
        self.hp = jax.device_put(stacked["hp"], self.shard)
        self.best = jax.device_put(stacked["best"], self.shard)
        self.epoch = np.zeros(self.k, np.int32)
        for slot, t in enumerate(trials):
            if t.trial_id in saved:
                self.epoch[slot] = saved[t.trial_id].epoch
        self.slots = list(trials) + [None] * (self.k - len(trials))

    def _to_slot(self, variant, n, params):
        """Own layout -> the slot's: padded to the group's N (and into the mixed cell's layout)."""
        params = nets.pad_hidden(params, n, self.n_max, self.task.kind)
        return nets.to_mixed(variant, params) if self.mixed else params

    def _from_slot(self, variant, n, params):
        """The inverse of `_to_slot`."""
        if self.mixed:
            params = nets.from_mixed(variant, params)
        return jax.tree_util.tree_map(np.asarray, nets.unpad_hidden(params, n, self.n_max, self.task.kind))

    def _slot_values(self, trial, saved=None):
        """Host values of one slot: a trial's initial state and hyperparameters (or those it resumes from,
        `saved`, a `ckpt.SavedTrial`), or an empty slot."""
        n = self.n_max if trial is None else trial.hidden_size
        key = trial_key(0 if trial is None else trial.seed)
        variant = self.cell if trial is None else trial.variant
        if variant != self.cell and not (self.mixed and variant in cells.MIXABLE):
            raise ValueError(f"a trial of {variant} cannot run in a group of {self.variant}")
        params = nets.init_net(jax.random.fold_in(key, 0), variant, self.task.kind, self.n_in, n,
                               self.task.n_out, dtype=self.dtype)
        mask = nets.hidden_mask(variant, self.task.kind, self.n_in, n, self.n_max, self.task.n_out, self.dtype,
                                mixed=self.mixed)
        if saved is not None:
            params, velocity, best = (self._to_slot(variant, n, tree) for tree in _unflatten(params, saved))
        else:
            params = self._to_slot(variant, n, params)
            if trial is None:
                params = jax.tree_util.tree_map(np.zeros_like, params)
            velocity, best = jax.tree_util.tree_map(np.zeros_like, params), jax.tree_util.tree_map(np.copy, params)
        state = {"params": params, "velocity": velocity, "alive": np.bool_(trial is not None)}
        real = self.dtype.type
        hp = {"lr": real(0 if trial is None else trial.learning_rate),
              "momentum": real(0 if trial is None else trial.momentum),
              "noise": real(0 if trial is None else trial.input_noise),
              "nesterov": np.bool_(True if trial is None else trial.nesterov),
              "clip": np.bool_(False if trial is None else trial.clip),
              "key": np.asarray(key), "mask": mask,
              "order_key": np.asarray(key) if self._order_key is None else self._order_key,
              "switches": cells.switches(variant, self.dtype) if self.mixed else None}
        return {"state": state, "hp": hp, "best": best}

    def assign(self, slot, trial, saved=None):
        """Puts `trial` (None: nothing) into `slot`, from its start or from `saved` (a `ckpt.SavedTrial`)."""
        values = self._slot_values(trial, saved)
        put = functools.partial(_set_slot, np.int32(slot))
        self.state = put(self.state, values["state"])
        self.hp = put(self.hp, values["hp"])
        self.best = put(self.best, values["best"])
        self.epoch[slot] = 0 if saved is None else saved.epoch
        self.slots[slot] = trial

    def snapshot(self, best_val, best_epoch, seconds) -> list:
        """The live trials that have trained an epoch, as `ckpt.SavedTrial`s in their own layouts (one
        transfer of the group's weights to the host). best_val, best_epoch, seconds: the caller's per-slot
        bookkeeping."""
        slots = [s for s, t in enumerate(self.slots) if t is not None and self.epoch[s] > 0]
        if not slots:
            return []
        host = jax.device_get((self.state["params"], self.state["velocity"], self.best))
        out = []
        for s in slots:
            t = self.slots[s]
            trees = [self._from_slot(t.variant, t.hidden_size, jax.tree_util.tree_map(lambda a: a[s], tree))
                     for tree in host]
            state = np.concatenate([np.ravel(x) for tree in trees for x in jax.tree_util.tree_leaves(tree)])
            out.append(ckpt.SavedTrial(dataclasses.asdict(t), int(self.epoch[s]), float(best_val[s]),
                                       int(best_epoch[s]), float(seconds[s]), state))
        return out

    def train_epoch(self):
        # A copy: on CPU a device array may alias the numpy buffer, which the host changes below while
        # the asynchronously dispatched epoch may still be reading it.
        epoch = jax.device_put(self.epoch.copy(), self.shard)
        self.state, loss, diverged = self._epoch_fn(self.state, self.hp, self.train, epoch)
        self.epoch += 1
        return np.asarray(loss), np.asarray(diverged)

    def evaluate(self, split, params, slots=None):
        """The metric of each slot's trial on `split` with `params` (the group's layout): float64[K], NaN for
        empty slots and, where `slots` (bool[K]) is given, for the slots it leaves out (the program may skip
        chunks of trials that are all left out: on a CPU, the test pass of the trials an epoch ended)."""
        arrays, order, chunk_steps = self.eval_splits[split]
        occupied = np.array([t is not None for t in self.slots])
        if slots is not None:
            occupied &= np.asarray(slots, bool)
        live = jax.device_put(occupied, self.shard)
        outs = []
        for start, steps in zip(range(0, arrays.size, self.eval_chunk), chunk_steps):
            chunk = arrays.take(slice(start, start + self.eval_chunk))
            chunk = tasks.Arrays(chunk.xs, chunk.mask, chunk.targets, None)
            outs.append(jax.tree_util.tree_map(np.asarray, self._eval_fn(params, self.hp["switches"], live, chunk,
                                                                         steps)))
        stats = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=1), *outs)
        # Back from length order to the split's order, the occupied slots only.
        unsort = np.empty_like(order)
        unsort[order] = np.arange(order.size)
        stats = jax.tree_util.tree_map(lambda s: s[occupied][:, :order.size][:, unsort], stats)
        out = np.full(self.k, np.nan)
        out[occupied] = tasks.finish_metric(self.task, stats, self.arrays[split])
        return out

    def pack(self):
        """Moves each device's live trials into its first slots when that empties chunks, so the chunks of
        ended trials are skipped (`local_epoch`) instead of trained frozen. Trials keep everything of theirs
        (weights, velocity, best weights, hyperparameters, keys, epoch counters); only their slots change.

        Returns:
          None when no chunk would be emptied, else perm int[K]: new slot -> old slot (the caller moves its own
          per-slot bookkeeping alike).
        """
        local = self.k // self.n_dev
        if self.chunk >= local:
            return None
        perm, gain = [], False
        for first in range(0, self.k, local):
            live = [s for s in range(first, first + local) if self.slots[s] is not None]
            busy = len({(s - first) // self.chunk for s in live})
            gain |= busy > math.ceil(len(live) / self.chunk)
            perm += live + [s for s in range(first, first + local) if self.slots[s] is None]
        if not gain:
            return None
        perm = np.asarray(perm)
        index = jax.device_put(perm.astype(np.int32), self.replicated)
        self.state, self.hp, self.best = _take(index, (self.state, self.hp, self.best))
        self.epoch = self.epoch[perm]
        self.slots = [self.slots[s] for s in perm]
        return perm

    def keep_best(self, improved):
        self.best = _select(jnp.asarray(improved), self.state["params"], self.best)

    def lowered(self, programs=("epoch", "eval")) -> dict:
        """The group's training-epoch and evaluation programs (or those of `programs`), lowered for its arrays
        (not compiled)."""
        out = {}
        if "epoch" in programs:
            out["epoch"] = self._epoch_fn.lower(self.state, self.hp, self.train,
                                                jax.device_put(self.epoch.copy(), self.shard))
        if "eval" in programs:
            arrays, _, chunk_steps = self.eval_splits["valid"]
            chunk = arrays.take(slice(0, self.eval_chunk))
            live = jax.device_put(np.ones(self.k, bool), self.shard)
            out["eval"] = self._eval_fn.lower(self.best, self.hp["switches"], live,
                                              tasks.Arrays(chunk.xs, chunk.mask, chunk.targets, None), chunk_steps[0])
        return out

    def compile_ahead(self):
        """Compiles the group's programs (training epoch, evaluation, slot writes, best-keeping) without running
        them. They land in JAX's compilation caches, where the group's calls then find them: a group built in a
        background thread while another trains starts at once."""
        for lowered in self.lowered().values():
            lowered.compile()
        values = self._empty
        for tree, value in ((self.state, values["state"]), (self.hp, values["hp"]),
                            (self.best, values["state"]["params"])):
            _set_slot.lower(np.int32(0), tree, value).compile()
        _select.lower(jnp.zeros(self.k, bool), self.state["params"], self.best).compile()


def _unflatten(template, saved):
    """A saved trial's (params, velocity, best) in the layout of `template` (its own parameters)."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    sizes = [x.size for x in leaves]
    if saved.state.size != 3 * sum(sizes) or saved.state.dtype != leaves[0].dtype:
        raise ValueError(f"trial {saved.trial_id}: its saved state holds {saved.state.size} {saved.state.dtype} "
                         f"values, its network 3 x {sum(sizes)} {leaves[0].dtype}; it was saved by other code")
    parts = np.split(saved.state, np.cumsum(np.tile(sizes, 3))[:-1])  # params, velocity, best, leaf by leaf
    trees = []
    for j in range(3):
        chunk = parts[j * len(leaves):(j + 1) * len(leaves)]
        trees.append(jax.tree_util.tree_unflatten(treedef, [p.reshape(x.shape) for p, x in zip(chunk, leaves)]))
    return trees


@functools.partial(jax.jit, donate_argnums=(1,))
def _set_slot(slot, tree, values):
    return jax.tree_util.tree_map(lambda a, v: a.at[slot].set(v), tree, values)


@functools.partial(jax.jit, donate_argnums=(1,))
def _take(index, tree):
    return jax.tree_util.tree_map(lambda a: a[index], tree)


@jax.jit
def _select(cond, a, b):
    return per_trial_where(cond, a, b)
