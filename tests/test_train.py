"""Tests of the multi-trial trainer against a plain, unbatched reference loop written here."""

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from odyssey import cells, checkpoints, layout, nets, programs, search, train
from odyssey import tasks as tasks_module

N_OUT = {"jsb": 88, "timit": 61, "iam_online": 82}
KIND = {"jsb": "uni", "timit": "bi", "iam_online": "bi"}


def make_splits(task, seed=0, sizes=(5, 3, 3), lengths=(4, 6)):
    """Tiny random splits in the loaders' format; lengths from a small set to bound compilations."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, size in zip(("train", "valid", "test"), sizes):
        seqs = []
        for _ in range(size):
            t = int(rng.choice(lengths))
            if task == "jsb":
                seqs.append((rng.random((t + 1, 88)) < 0.1).astype(np.float32))
            elif task == "timit":
                seqs.append((rng.normal(size=(t, 5)).astype(np.float32), rng.integers(0, 61, t).astype(np.int32)))
            else:
                seqs.append((rng.normal(size=(t, 4)).astype(np.float32),
                             rng.integers(1, 82, int(rng.integers(1, 3))).astype(np.int32)))
        out[name] = seqs
    return out


def _pairs(task, split):
    """(inputs, targets) per sequence, unpadded."""
    if task == "jsb":
        return [(r[:-1], r[1:]) for r in split]
    return list(split)


def _ref_loss(task, variant, params, x, y, recurrent_dtype=None):
    # autodiff through the reference layer; with recurrent_dtype, odyssey.fast_lstm's layer (the only one that
    # rounds the recurrent products), checked against a hand-stepped loop in test_fast_lstm
    logits = nets.apply_net(variant, KIND[task], params, x, autodiff=recurrent_dtype is None,
                            recurrent_dtype=recurrent_dtype)
    if task == "jsb":
        return -jnp.sum(y * jax.nn.log_sigmoid(logits) + (1 - y) * jax.nn.log_sigmoid(-logits))
    if task == "timit":
        return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
    zeros = jnp.zeros((1, x.shape[0]))
    return optax.ctc_loss(logits[None], zeros, y[None], jnp.zeros((1, len(y))))[0]


def _levenshtein(a, b):
    d = np.arange(len(b) + 1)
    for i, ca in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, cb in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (ca != cb))
    return d[len(b)]


@functools.lru_cache(maxsize=None)
def _ref_forward(task, variant, recurrent_dtype):
    """The net's logits of one sequence through the same layer as `_ref_loss`, jit-compiled (one compile per
    sequence length) for the metric loop."""
    return jax.jit(lambda p, x: nets.apply_net(variant, KIND[task], p, x, autodiff=recurrent_dtype is None,
                                               recurrent_dtype=recurrent_dtype))


def _ref_metric(task, variant, params, split, recurrent_dtype=None):
    num = den = 0.0
    forward = _ref_forward(task, variant, recurrent_dtype)
    for x, y in _pairs(task, split):
        logits = np.asarray(forward(params, jnp.asarray(x)))
        if task == "jsb":
            num -= float(np.sum(y * jax.nn.log_sigmoid(logits) + (1 - y) * jax.nn.log_sigmoid(-logits)))
            den += len(x)
        elif task == "timit":
            num += 100.0 * np.sum(logits.argmax(1) != y)
            den += len(x)
        else:
            best = logits.argmax(1)
            hyp = [int(c) for k, c in enumerate(best) if c != 0 and (k == 0 or c != best[k - 1])]
            num += 100.0 * _levenshtein(list(y), hyp)
            den += len(y)
    return num / den


def reference_run(task, variant, trial, splits, max_epochs, patience, recurrent_dtype=None, order_seed=None,
                  losses=None, order_stratum=None):
    """The paper's protocol for one trial, one sequence at a time, in plain Python; with `order_seed`, the
    sequences of each epoch in the order drawn from that seed instead of the trial's (and with `order_stratum`
    too, `strata_order`'s). `losses`, a list, gets each epoch's mean training loss per sequence (each taken
    where its update's gradient is)."""
    key = jax.random.PRNGKey(trial.seed)
    order_key = key if order_seed is None else jax.random.PRNGKey(order_seed)
    n_in = _pairs(task, splits["train"])[0][0].shape[1]
    params = nets.init_net(jax.random.fold_in(key, 0), variant, KIND[task], n_in, trial.hidden_size, N_OUT[task],
                           dtype=np.float64)
    velocity = jax.tree_util.tree_map(np.zeros_like, params)
    grad_fn = jax.jit(jax.value_and_grad(lambda p, x, y: _ref_loss(task, variant, p, x, y, recurrent_dtype)))
    data = _pairs(task, splits["train"])
    t_max = max(len(x) for x, _ in data)
    mu = trial.momentum
    curve, best, best_epoch, best_params = [], np.inf, 0, None
    for epoch in range(max_epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.fold_in(order_key, 1), epoch),
                                                  len(data)))
        if order_stratum is not None:
            order = strata_order(order_key, key, epoch, [len(x) for x, _ in data], order_stratum)
        noise_key = jax.random.fold_in(jax.random.fold_in(key, 2), epoch)
        total = 0.0
        for s, idx in enumerate(order):
            x, y = data[idx]
            noise = np.asarray(jax.random.normal(jax.random.fold_in(noise_key, s), (t_max, n_in)))[:len(x)]
            look = jax.tree_util.tree_map(lambda p, v: p + (mu * v if trial.nesterov else 0), params, velocity)
            loss, g = grad_fn(look, jnp.asarray(x + trial.input_noise * noise), jnp.asarray(y))
            total += float(loss)
            g = jax.tree_util.tree_map(lambda a: np.clip(a, -1, 1) if trial.clip else np.asarray(a), g)
            velocity = jax.tree_util.tree_map(lambda v, a: mu * v - trial.learning_rate * (1 - mu) * a, velocity, g)
            params = jax.tree_util.tree_map(lambda p, v: p + v, params, velocity)
        if losses is not None:
            losses.append(total / len(data))
        val = _ref_metric(task, variant, params, splits["valid"], recurrent_dtype)
        curve.append(val)
        if val < best:
            best, best_epoch, best_params = val, epoch + 1, params
        if epoch + 1 - best_epoch >= patience:
            break
    return curve, best_epoch, best, _ref_metric(task, variant, best_params, splits["test"], recurrent_dtype)


def strata_order(order_key, key, epoch, lengths, m):
    """A trial's epoch order with strata of m (`train_trials(order_stratum=m)`), by hand: the sequences sorted by
    (length, index) fill places 0..n-1, m places to a stratum; the trial's random ranks of the places order each
    stratum's places, and the i-th sequence of a stratum (by length) is sent to the sequence at its i-th place
    in that order; update s presents the image of the shared order's P[s]."""
    n = len(lengths)
    p = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.fold_in(order_key, 1), epoch), n))
    ranks = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 3), epoch), n))
    by_length = sorted(range(n), key=lambda i: (lengths[i], i))
    image = {}
    for start in range(0, n, m):
        places = sorted(range(start, min(start + m, n)), key=lambda q: ranks[q])
        for i, seq in enumerate(by_length[start:start + m]):
            image[seq] = by_length[places[i]]
    return np.array([image[int(i)] for i in p])


@functools.lru_cache(maxsize=None)
def run_alone(task, split_seed, trial, bucket):
    """One float64 trial trained alone (3 epochs, patience 5) on make_splits(task, split_seed), memoised: the
    parametrized tests compare against the same solo runs. Returns (results, curves, training losses)."""
    losses = {}
    results, curves = run_trainer(task, make_splits(task, seed=split_seed), [trial], losses, max_epochs=3,
                                  patience=5, hidden_buckets=(bucket,), dtype=np.float64)
    return results, curves, losses


def run_trainer(task, splits, trials, losses=None, **kwargs):
    """Trains `trials` with the trainer; returns ({trial_id: result}, {trial_id: validation curve}), and fills
    `losses`, a dict if given, with {trial_id: each epoch's mean training loss}."""
    curves = {}

    def on_epoch(tid, epoch, loss, val, seconds):
        curves.setdefault(tid, []).append(val)
        if losses is not None:
            losses.setdefault(tid, []).append(loss)

    results = train.train_trials(task, splits, trials, on_epoch=on_epoch, **kwargs)
    return {r.trial_id: r for r in results}, curves


@pytest.mark.parametrize("task,variant,nesterov", [("jsb", "V", True), ("timit", "FGR", True),
                                                   ("iam_online", "CIFG", True), ("timit", "NOG", False)])
def test_one_trial_equals_the_reference_loop(task, variant, nesterov, x64):
    splits = make_splits(task)
    trial = train.Trial(0, variant, 4, learning_rate=3e-2, momentum=0.7, input_noise=0.3, nesterov=nesterov,
                        clip=task == "timit", seed=11)
    losses, ref_losses = {}, []
    results, curves = run_trainer(task, splits, [trial], losses, max_epochs=4, patience=2, hidden_buckets=(4,),
                                  dtype=np.float64)
    ref_curve, ref_best_epoch, ref_best, ref_test = reference_run(task, variant, trial, splits, 4, 2,
                                                                  losses=ref_losses)
    np.testing.assert_allclose(curves[0], ref_curve, rtol=1e-10)
    # the training losses follow the weights closely (a small net's frame error can stay at 100 % throughout)
    np.testing.assert_allclose(losses[0], ref_losses, rtol=1e-10)
    r = results[0]
    assert r.status == "done" and r.epochs == len(ref_curve) and r.best_epoch == ref_best_epoch
    np.testing.assert_allclose([r.val_metric, r.test_metric], [ref_best, ref_test], rtol=1e-10)
    assert r.n_params == nets.count_params(variant, KIND[task], splits["train"][0][0].shape[-1] if task != "jsb"
                                           else 88, 4, N_OUT[task])


def test_bfloat16_recurrent_products_reach_training_and_evaluation(x64):
    """recurrent_dtype=bfloat16 reaches both of the trainer's programs: a NIG trial padded from N = 4 to 6
    among trials of other variants (the mixed program) follows the plain loop that runs the same layer setting
    one sequence at a time, to float64 round-off."""
    splits = make_splits("jsb", seed=4)
    target = train.Trial(0, "NIG", 4, 3e-2, 0.7, 0.3, True, False, seed=5)
    others = [train.Trial(1, "V", 6, 1e-2, 0.5, 0.2, True, False, 6),
              train.Trial(2, "CIFG", 3, 2e-2, 0.9, 0.1, False, False, 7)]
    results, curves = run_trainer("jsb", splits, [target] + others, max_epochs=3, patience=5, hidden_buckets=(6,),
                                  dtype=np.float64, recurrent_dtype=jnp.bfloat16)
    ref_curve, ref_best_epoch, ref_best, ref_test = reference_run("jsb", "NIG", target, splits, 3, 5,
                                                                  recurrent_dtype=jnp.bfloat16)
    np.testing.assert_allclose(curves[0], ref_curve, rtol=1e-10)
    assert results[0].best_epoch == ref_best_epoch
    np.testing.assert_allclose([results[0].val_metric, results[0].test_metric], [ref_best, ref_test], rtol=1e-10)
    # (the rounded layer differs from the unrounded one by far more than 1e-10: test_fast_lstm, and the study's
    # bfloat16 test against its float32 reference)


def test_a_shared_data_order_is_each_trials_protocol_with_that_order(x64):
    """order_seed: trials of different variants, sizes and seeds in one program (lengths 3 and 7, so each update's
    loops are trimmed to its sequence) each follow the plain loop that visits the sequences in the order drawn
    from order_seed, to float64 round-off; with their own orders the plain loop differs by far more. (That the
    loops skip ended trials' sequences is speed only; test_divergence_is_isolated runs live trials beside dead
    ones against each trained alone.)"""
    splits = make_splits("jsb", seed=6, sizes=(6, 2, 2), lengths=(3, 7))
    trials = [train.Trial(0, "V", 4, 3e-2, 0.7, 0.3, True, False, seed=5),
              train.Trial(1, "CIFG", 3, 2e-2, 0.9, 0.1, False, False, seed=6),
              train.Trial(2, "NP", 5, 1e-2, 0.5, 0.2, True, False, seed=7)]
    results, curves = run_trainer("jsb", splits, trials, max_epochs=2, patience=5, hidden_buckets=(5,),
                                  dtype=np.float64, order_seed=77)
    for t in (trials[0], trials[2]):
        ref_curve, ref_best_epoch, ref_best, ref_test = reference_run("jsb", t.variant, t, splits, 2, 5, order_seed=77)
        np.testing.assert_allclose(curves[t.trial_id], ref_curve, rtol=1e-10, err_msg=t.variant)
        assert results[t.trial_id].best_epoch == ref_best_epoch
        np.testing.assert_allclose([results[t.trial_id].val_metric, results[t.trial_id].test_metric],
                                   [ref_best, ref_test], rtol=1e-10)
    own_curve = reference_run("jsb", "V", trials[0], splits, 1, 5)[0]
    assert abs(own_curve[0] - curves[0][0]) > 1e-4 * abs(own_curve[0])


def test_orders_in_strata_are_uniform_shuffles_that_keep_the_shared_strata():
    """programs.epoch_order with strata equals the hand-made `strata_order`; over 2400 epochs each of two trials
    sharing an order key visits 4 sequences (lengths 3, 7, 3, 7; strata of 2: {0, 2} and {1, 3}) in each of the
    24 orders equally often (chi-square), and at every update both present a sequence of one stratum, the same
    one about half the time. Strata of 1 give the shared order itself; without strata, P."""
    lengths = jnp.asarray([3, 7, 3, 7])
    shared, own = jax.random.PRNGKey(77), [jax.random.PRNGKey(5), jax.random.PRNGKey(6)]
    epochs = jnp.arange(2400)
    draw = jax.jit(jax.vmap(functools.partial(programs.epoch_order, lengths=lengths, stratum=2),
                            in_axes=(None, None, 0)))
    orders = [np.asarray(draw(shared, k, epochs)) for k in own]
    for e in (0, 1, 917):
        np.testing.assert_array_equal(orders[0][e], strata_order(shared, own[0], e, [3, 7, 3, 7], 2))
    counts = []
    for o in orders:
        assert all(sorted(row) == [0, 1, 2, 3] for row in o[:50])
        _, count = np.unique(o @ np.array([64, 16, 4, 1]), return_counts=True)
        assert len(count) == 24
        counts.append(count)
        assert scipy.stats.chisquare(count).pvalue > 1e-3, count
    stratum = np.array([0, 1, 0, 1])
    np.testing.assert_array_equal(stratum[orders[0]], stratum[orders[1]])
    same = np.mean(orders[0] == orders[1])
    assert 0.45 < same < 0.55, same
    p = np.asarray(jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(jax.random.fold_in(shared, 1), e), 4))(
        epochs[:20]))
    one = jax.vmap(functools.partial(programs.epoch_order, lengths=lengths, stratum=1), in_axes=(None, None, 0))
    np.testing.assert_array_equal(one(shared, own[0], epochs[:20]), p)
    plain = jax.vmap(functools.partial(programs.epoch_order, lengths=lengths), in_axes=(None, None, 0))
    np.testing.assert_array_equal(plain(shared, own[0], epochs[:20]), p)


def test_the_shuffle_within_strata_is_uniform_and_the_last_stratum_may_be_smaller():
    """For one shared order P (one epoch, one order key), a trial's own key picks each of the 2! x 2! orders that
    keep P's strata (lengths 3, 7, 3, 7; strata of 2) equally often over 2000 keys (chi-square). And on 11
    sequences with tied lengths, strata of 4 (the last of 3) and of 8 (the configs'; the last of 3), epoch_order
    equals the hand-made `strata_order`."""
    lengths = jnp.asarray([3, 7, 3, 7])
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(2000))
    draw = jax.jit(jax.vmap(functools.partial(programs.epoch_order, lengths=lengths, stratum=2),
                            in_axes=(None, 0, None)))
    orders = np.asarray(draw(jax.random.PRNGKey(77), keys, 0))
    stratum = np.array([0, 1, 0, 1])
    assert len({tuple(stratum[o]) for o in orders}) == 1
    _, count = np.unique(orders @ np.array([64, 16, 4, 1]), return_counts=True)
    assert len(count) == 4 and scipy.stats.chisquare(count).pvalue > 1e-3, count
    lengths = [5, 2, 9, 5, 5, 2, 7, 1, 9, 3, 5]
    for m in (4, 8):
        for e in (0, 3):
            got = programs.epoch_order(jax.random.PRNGKey(1), jax.random.PRNGKey(2), e, jnp.asarray(lengths), m)
            np.testing.assert_array_equal(got, strata_order(jax.random.PRNGKey(1), jax.random.PRNGKey(2), e,
                                                            lengths, m))


def test_orders_in_strata_are_each_trials_protocol_with_that_order(x64):
    """order_stratum: trials of different variants and seeds in one program (lengths 3 and 7 in turn, strata of
    2) each follow the plain loop that visits the sequences in its `strata_order`, to float64 round-off; it is
    neither the shared order's loop nor the trial's own."""
    splits = make_splits("jsb", seed=6, sizes=(6, 2, 2), lengths=(3, 7))
    trials = [train.Trial(0, "V", 4, 3e-2, 0.7, 0.3, True, False, seed=5),
              train.Trial(1, "NP", 5, 1e-2, 0.5, 0.2, True, False, seed=7)]
    results, curves = run_trainer("jsb", splits, trials, max_epochs=2, patience=5, hidden_buckets=(5,),
                                  dtype=np.float64, order_seed=77, order_stratum=2)
    for t in trials:
        ref_curve, ref_best_epoch, ref_best, ref_test = reference_run("jsb", t.variant, t, splits, 2, 5, order_seed=77,
                                                                      order_stratum=2)
        np.testing.assert_allclose(curves[t.trial_id], ref_curve, rtol=1e-10, err_msg=t.variant)
        assert results[t.trial_id].best_epoch == ref_best_epoch
        np.testing.assert_allclose([results[t.trial_id].val_metric, results[t.trial_id].test_metric],
                                   [ref_best, ref_test], rtol=1e-10)
    for other in (reference_run("jsb", "V", trials[0], splits, 1, 5, order_seed=77)[0],
                  reference_run("jsb", "V", trials[0], splits, 1, 5)[0]):
        assert abs(other[0] - curves[0][0]) > 1e-4 * abs(other[0])


@pytest.mark.parametrize("stratum, seed", [(0, 1), (2.0, 1), (True, 1), (2, None)])
def test_a_bad_order_stratum_is_refused(stratum, seed):
    with pytest.raises(ValueError, match=r"order_stratum must be None or, with an order_seed, an int >= 1"):
        train.train_trials("jsb", make_splits("jsb"), [train.Trial(0, "V", 4, 1e-2, 0.5, 0.0)], max_epochs=1,
                           order_seed=seed, order_stratum=stratum)


@pytest.mark.parametrize("seed", [-1, 2**31, 1.5, True])
def test_a_bad_order_seed_is_refused(seed):
    with pytest.raises(ValueError, match=r"order_seed must be None or an int in \[0, 2\*\*31\)"):
        train.train_trials("jsb", make_splits("jsb"), [train.Trial(0, "V", 4, 1e-2, 0.5, 0.0)], max_epochs=1,
                           order_seed=seed)


def test_recurrent_dtype_is_checked_before_training():
    with pytest.raises(ValueError, match="recurrent_dtype must be None or a float dtype no wider than the layer's"):
        train.train_trials("jsb", make_splits("jsb"), [train.Trial(0, "V", 4, 1e-2, 0.5, 0.0)], max_epochs=1,
                           recurrent_dtype="int8")


def _product_precisions(lowered):
    """The operand precisions of every matrix product in a lowered program's StableHLO text."""
    text = lowered.as_text()
    products = [line for line in text.splitlines() if "stablehlo.dot_general" in line]
    found = [re.search(r"precision = \[(\w+), (\w+)\]", line) for line in products]
    assert products and all(found), "every product names its precision"
    return {m.groups() for m in found}, len(products)


@pytest.mark.parametrize("caller", ["bfloat16", "float32"])
@pytest.mark.parametrize("precision", ["float32", "tensorfloat32", None])
def test_the_matmul_precision_reaches_every_product_of_the_programs(precision, caller):
    """A CPU computes float32 products whatever the setting, so the oracle is the programs themselves: every
    product of the mixed program's training epoch (forward, hand-written backward, loops) and evaluation,
    lowered under the caller's JAX setting, carries the trainer's precision, or the caller's with None."""
    name = {"float32": "HIGHEST", "tensorfloat32": "HIGH", "bfloat16": "DEFAULT"}[precision or caller]
    spec = tasks_module.get_task("timit")
    arrays = {n: tasks_module.to_arrays(spec, split) for n, split in make_splits("timit").items()}
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("trials",))
    group = train.Group(spec, train.MIXED, 4, 2, arrays, 5, mesh, 4, np.dtype(np.float32), matmul_precision=precision)
    with jax.default_matmul_precision(caller):
        lowered = group.lowered()
    for program in lowered.values():
        precisions, count = _product_precisions(program)
        assert precisions == {(name, name)}, (count, precisions)
    assert _product_precisions(lowered["epoch"])[1] >= 10  # the epoch's products: both directions, both passes


@pytest.mark.parametrize("k, lengths", [(3, (4, 6)), (1, (4, 6)), (3, (5,))])
def test_updates_past_the_epochs_end_change_nothing_whether_branched_or_run(x64, k, lengths, default_codegen):
    """An epoch of 11 updates runs in blocks of NOISE_BLOCK (8): the 5 past its end are skipped by a branch
    (on CPUs) or run as no-ops (on accelerators, with sequences of uneven length). Both give the same weights,
    velocities, losses and flags, for several trials, for one, and with equal lengths (where the untrimmed
    program always branches: against the trimming program's no-ops).
    Bit for bit under XLA's default CPU code generator (conftest: the suite's older one fuses the two
    programs differently, and they can differ in the last bit)."""
    assert 11 % train.NOISE_BLOCK
    spec = tasks_module.get_task("jsb")
    arrays = {n: tasks_module.to_arrays(spec, split, np.float64)
              for n, split in make_splits("jsb", seed=8, sizes=(11, 2, 2), lengths=lengths).items()}
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("trials",))
    group = train.Group(spec, train.MIXED, 5, k, arrays, 88, mesh, 4, np.dtype(np.float64))
    group.fill([train.Trial(i, v, 5 - i, 3e-2, 0.9, 0.2, seed=i) for i, v in enumerate(["V", "CIFG", "NP"][:k])])
    trim = len(lengths) > 1
    epoch = jnp.asarray([2] * k, jnp.int32)
    # With equal lengths the untrimmed program always branches; it is compared with the trimming one, which
    # runs the updates past the end as no-ops.
    settings = [(trim, True), (trim, False)] if trim else [(False, True), (True, False)]
    outs = [jax.jit(functools.partial(programs.train_epoch, spec, "V", trim=t, branch_past_end=branch),
                    compiler_options=default_codegen)(group.state, group.hp, group.train, epoch)
            for t, branch in settings]
    leaves = [jax.tree_util.tree_leaves(out) for out in outs]
    for a, b in zip(*leaves):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Nothing vanished: the epoch trained (the weights moved) and every trial is alive.
    moved = jax.tree_util.tree_leaves(outs[0][0]["params"])[0] - jax.tree_util.tree_leaves(group.state["params"])[0]
    assert np.abs(np.asarray(moved)).max() > 0 and bool(np.all(np.asarray(outs[0][0]["alive"])))


def test_train_trials_builds_its_groups_at_float32_unless_told(monkeypatch):
    built = []

    class Recording(train.Group):
        def __init__(self, *args, **kwargs):
            built.append(kwargs["matmul_precision"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(train, "Group", Recording)
    splits, trial = make_splits("jsb"), [train.Trial(0, "V", 4, 1e-2, 0.5, 0.0)]
    train.train_trials("jsb", splits, trial, max_epochs=1, hidden_buckets=(4,))
    train.train_trials("jsb", splits, trial, max_epochs=1, hidden_buckets=(4,), matmul_precision="tensorfloat32")
    train.train_trials("jsb", splits, trial, max_epochs=1, hidden_buckets=(4,), matmul_precision=None)
    assert built == ["float32", "tensorfloat32", None]


@pytest.mark.parametrize("precision", ["highest", "bfloat16", "TF32", 32])
def test_a_bad_matmul_precision_is_refused(precision):
    assert search.MATMUL_PRECISIONS == train.MATMUL_PRECISIONS  # what a study's config may ask for
    with pytest.raises(ValueError, match="matmul_precision must be None or one of float32, tensorfloat32"):
        train.train_trials("jsb", make_splits("jsb"), [train.Trial(0, "V", 4, 1e-2, 0.5, 0.0)], max_epochs=1,
                           matmul_precision=precision)


@pytest.mark.parametrize("chunk", [None, 3])
def test_batch_invariance_and_padding_in_a_mixed_batch(chunk, x64):
    """A trial alone (NP's own program) equals the same trial among 7 others of other sizes, variants and
    hyperparameters (in the mixed program).

    The 7 trials of the mixed program (NP, V, NIG) run as one vmapped step (chunk None) or in 3 chunks of 3
    slots (two of them empty) one after another; the trial alone runs without vmap. The chunked case leaves
    out the FGR trial (its group would be chunked alike and only add compilations).
    """
    splits = make_splits("timit", seed=1)
    target = train.Trial(0, "NP", 5, 1e-2, 0.9, 0.5, nesterov=False, clip=True, seed=3)
    others = [train.Trial(i, v, n, lr, 0.5, 0.2, True, False, 100 + i) for i, (v, n, lr) in enumerate(
        [("NP", 7, 3e-3), ("NP", 3, 1e-3), ("V", 8, 1e-2), ("NP", 8, 5e-2), ("FGR", 6, 1e-2), ("NP", 2, 1e-4),
         ("NIG", 5, 1e-2)], start=1)]
    if chunk is not None:
        others = [t for t in others if t.variant != "FGR"]
    alone, alone_curves, alone_losses = run_alone("timit", 1, target, 5)
    losses = {}
    batch, batch_curves = run_trainer("timit", splits, others[:2] + [target] + others[2:], losses, max_epochs=3,
                                      patience=5, trials_per_batch=8, hidden_buckets=(8,), trials_per_chunk=chunk,
                                      dtype=np.float64, mix_variants=True)
    # Alone unpadded (N = 5) against padded to 8 among others: equal to float64 round-off. The training losses
    # carry the check: this net's frame error is 100 % in every epoch, whatever it learns.
    np.testing.assert_allclose(losses[0], alone_losses[0], rtol=1e-10)
    np.testing.assert_allclose(batch_curves[0], alone_curves[0], rtol=1e-10)
    np.testing.assert_allclose([batch[0].val_metric, batch[0].test_metric],
                               [alone[0].val_metric, alone[0].test_metric], rtol=1e-10)
    assert (batch[0].epochs, batch[0].best_epoch) == (alone[0].epochs, alone[0].best_epoch)


def test_the_mixed_program_equals_each_variants_own_program(x64):
    """The eight variants other than FGR, trained together in one program (V's cell with per-trial switches,
    padded to N = 6) follow what each variant's own program gives (mix_variants=False), to float64 round-off;
    the variants' parameter counts are their own."""
    splits = make_splits("jsb", seed=7)
    trials = [train.Trial(i, v, 3 + i % 4, 2e-2, 0.8, 0.2, i % 2 == 0, i % 3 == 0, seed=20 + i)
              for i, v in enumerate(cells.MIXABLE)]
    kwargs = dict(max_epochs=2, patience=5, hidden_buckets=(6,), dtype=np.float64)
    mixed, mixed_curves = run_trainer("jsb", splits, trials, mix_variants=True, **kwargs)
    own, own_curves = run_trainer("jsb", splits, trials, mix_variants=False, **kwargs)
    for t in trials:
        assert len(mixed_curves[t.trial_id]) == 2
        np.testing.assert_allclose(mixed_curves[t.trial_id], own_curves[t.trial_id], rtol=1e-10, err_msg=t.variant)
        np.testing.assert_allclose(mixed[t.trial_id].test_metric, own[t.trial_id].test_metric, rtol=1e-10)
        assert mixed[t.trial_id].n_params == own[t.trial_id].n_params == nets.count_params(
            t.variant, "uni", 88, t.hidden_size, 88)
    # the variants do learn differently (the switches are not all off)
    finals = [mixed_curves[t.trial_id][-1] for t in trials]
    assert len(set(np.round(finals, 8))) == len(trials)


def test_zero_padding_is_exact(x64):
    """N = 23 trained padded to 200 follows N = 23 unpadded, for every variant (the gradient mask keeps FGR
    exact, and the mixed program's padded units too). One trial per variant, all in one call, the eight mixable
    ones in the mixed program and FGR in its own, at N = 23 and padded to 200 (that the mixed program equals
    each variant's own is the test above).

    In float64, to 1e-10: float32 runs differ by round-off (padded matrix products sum in another order)
    that a large learning rate amplifies over epochs (~1e-3 after 3 epochs at 5e-2).
    """
    splits = make_splits("jsb", seed=2, sizes=(4, 2, 2), lengths=(3,))
    trials = [train.Trial(i, v, 23, 5e-2, 0.8, 0.1, True, False, seed=5 + i) for i, v in enumerate(cells.VARIANTS)]
    small, small_curves = run_trainer("jsb", splits, trials, max_epochs=3, patience=5, hidden_buckets=(23, 200),
                                      dtype=np.float64)
    big, big_curves = run_trainer("jsb", splits, trials, max_epochs=3, patience=5, hidden_buckets=(200,),
                                  dtype=np.float64, mix_variants=True)
    for t in trials:
        assert len(small_curves[t.trial_id]) == 3, t.variant
        np.testing.assert_allclose(big_curves[t.trial_id], small_curves[t.trial_id], rtol=1e-10, err_msg=t.variant)
        np.testing.assert_allclose(big[t.trial_id].test_metric, small[t.trial_id].test_metric, rtol=1e-10,
                                   err_msg=t.variant)
        assert big[t.trial_id].n_params == small[t.trial_id].n_params == nets.count_params(t.variant, "uni", 88, 23, 88)


@pytest.mark.parametrize("chunk", [None, 2])
def test_divergence_is_isolated(chunk, x64, caplog):
    """A learning rate of 1e308 overflows at the first update; the trial is frozen and the others do not notice.

    With chunks of two slots, the two diverged trials (slots 0 and 2) leave one live trial in each chunk; with
    no trial pending, the live ones are packed into the first chunk and the second, all frozen, is skipped.
    """
    splits = make_splits("jsb", seed=3)
    good = [train.Trial(i, "V", 6, 1e-2, 0.9, 0.1, True, False, seed=i) for i in (1, 3)]
    bad = [train.Trial(i, "V", 6, 1e308, 0.0, 0.1, True, False, seed=i) for i in (0, 2)]
    caplog.set_level("INFO", logger="absl")
    batch, curves = run_trainer("jsb", splits, [bad[0], good[0], bad[1], good[1]], max_epochs=3, patience=5,
                                trials_per_batch=4, hidden_buckets=(8,), trials_per_chunk=chunk, dtype=np.float64)
    for b in bad:
        assert batch[b.trial_id].status == "diverged" and batch[b.trial_id].epochs == 1
        assert np.isnan(batch[b.trial_id].val_metric) and np.isnan(batch[b.trial_id].test_metric)
    packed = [r.getMessage() for r in caplog.records if "packed" in r.getMessage()]
    assert packed == (["jsb mixed N<=8: 2 live trials packed into 1 of 2 chunks"] if chunk else []), packed
    for g in good:
        alone, alone_curves, _ = run_alone("jsb", 3, g, 8)
        assert batch[g.trial_id].status == "done" and batch[g.trial_id].epochs == 3
        np.testing.assert_allclose(curves[g.trial_id], alone_curves[g.trial_id], rtol=1e-10)
        np.testing.assert_allclose(batch[g.trial_id].test_metric, alone[g.trial_id].test_metric, rtol=1e-10)
        assert batch[g.trial_id].best_epoch == alone[g.trial_id].best_epoch


def test_weights_that_overflow_from_finite_gradients_are_caught_after_the_epoch(x64):
    """Loss and gradient are checked at every update; weights that overflow from finite ones are caught at the end.

    Trial 1 holds 1e308 in the input weight and the velocity of a key that never sounds (its gradient is 0 and
    the forward pass never sees the weight), so with classical momentum its loss and gradient stay finite
    while θ + v overflows to inf at the first update. Trial 0 beside it is untouched.
    """
    rng = np.random.default_rng(4)
    roll = (rng.random((6, 88)) < 0.2).astype(np.float64)
    roll[:, 5] = 0.0
    splits = {name: [roll] for name in ("train", "valid", "test")}
    spec = tasks_module.get_task("jsb")
    arrays = {name: tasks_module.to_arrays(spec, split, np.float64) for name, split in splits.items()}
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("trials",))

    def group_of(trials):
        group = train.Group(spec, "V", 4, len(trials), arrays, 88, mesh, 4, np.dtype(np.float64))
        for slot, trial in enumerate(trials):
            group.assign(slot, trial)
        return group

    good = train.Trial(0, "V", 4, 1e-2, 0.9, 0.0, nesterov=False, seed=0)
    bad = train.Trial(1, "V", 4, 1e-2, 0.9, 0.0, nesterov=False, seed=1)
    pair = group_of([good, bad])
    huge = lambda a: a.at[1, 5, 0, 0].set(1e308)
    pair.state = {**pair.state, "params": {**pair.state["params"], "fwd": {
                      **pair.state["params"]["fwd"], "W": huge(pair.state["params"]["fwd"]["W"])}},
                  "velocity": {**pair.state["velocity"], "fwd": {
                      **pair.state["velocity"]["fwd"], "W": huge(pair.state["velocity"]["fwd"]["W"])}}}
    loss, diverged = pair.train_epoch()
    assert np.isfinite(loss).all()  # the update itself saw nothing wrong
    np.testing.assert_array_equal(diverged, [False, True])
    np.testing.assert_array_equal(np.asarray(pair.state["alive"]), [True, False])
    assert np.isinf(np.asarray(pair.state["params"]["fwd"]["W"])[1, 5, 0, 0])

    alone = group_of([good])
    alone.train_epoch()
    for a, b in zip(jax.tree_util.tree_leaves(alone.state["params"]), jax.tree_util.tree_leaves(pair.state["params"])):
        np.testing.assert_allclose(np.asarray(b)[0], np.asarray(a)[0], rtol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_a_trial_that_diverges_after_its_best_epoch_keeps_that_epochs_metrics(nesterov, x64):
    """DESIGN §3: keep the best parameters, report the best validation epoch's test metric. Early stopping on the
    paper's protocol keeps them for a trial whose weights later blow up (its validation never improves again),
    so the trainer's diverged trial carries them too.

    The trial holds 2.2e307 in the velocity of the input weight of a key that sounds in no split, with classical
    momentum 0.9 and no input noise: the weight never touches the forward pass nor gets a gradient, so the trial
    trains exactly as without it, while the weight grows by 0.9^k of it an update and overflows at the 23rd
    (9 x 2.2e307 x (1 - 0.9^n) > 1.8e308), in epoch 5 of 5 sequences; its validation that epoch is NaN. With
    Nesterov momentum the look-ahead point θ + μv overflows first, at the 23rd update too: its loss is NaN, the
    trial is frozen with the finite weights of 22 updates, whose validation is finite and better than any epoch's
    before; it must not count, as group.best never held those weights. The oracle is the same trial without
    that velocity and with the epoch bound at 4, which ends 'done' with its best of epochs 1-4."""
    splits = make_splits("jsb", seed=9, sizes=(5, 3, 3))
    for split in splits.values():
        for roll in split:
            roll[:, 5] = 0.0
    spec = tasks_module.get_task("jsb")
    arrays = {name: tasks_module.to_arrays(spec, split, np.float64) for name, split in splits.items()}
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("trials",))
    trial = train.Trial(0, "V", 4, 3e-2, 0.9, 0.0, nesterov=nesterov, seed=2)

    def run(velocity, max_epochs):
        group = train.Group(spec, "V", 4, 1, arrays, 88, mesh, 4, np.dtype(np.float64))
        fill = group.fill

        def fill_then_set(trials, saved):
            fill(trials, saved)
            if velocity:
                v = group.state["velocity"]
                group.state = {**group.state, "velocity": {**v, "fwd": {
                    **v["fwd"], "W": v["fwd"]["W"].at[0, 5, 0, 0].set(velocity)}}}

        group.fill = fill_then_set
        curve = []
        results = list(train._run_group(group, [trial], max_epochs, 15, lambda *a: curve.append(a[3])))
        assert len(results) == 1
        return results[0], curve

    blown, blown_curve = run(2.2e307, 8)
    plain, plain_curve = run(0.0, 4)
    assert blown.status == "diverged" and blown.epochs == 5, blown
    assert np.isfinite(blown_curve[:4]).all()
    if nesterov:  # the case that must not count: a finite validation, the best yet, in the epoch it diverged
        assert blown_curve[4] < min(blown_curve[:4]), blown_curve
    else:
        assert np.isnan(blown_curve[4]), blown_curve
    np.testing.assert_array_equal(blown_curve[:4], plain_curve)
    assert plain.status == "done" and plain.epochs == 4
    assert blown.best_epoch == plain.best_epoch == int(np.argmin(plain_curve)) + 1
    assert blown.val_metric == plain.val_metric == min(plain_curve)
    assert np.isfinite(blown.test_metric) and blown.test_metric == plain.test_metric


@pytest.fixture
def compiles(caplog):
    """(thread name, program) of every XLA compilation while the test runs, from JAX's compile log."""
    previous = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)  # global: a context manager would not reach other threads
    caplog.set_level("WARNING", logger="jax._src.interpreters.pxla")
    yield lambda: [(r.threadName, r.getMessage().split()[1]) for r in caplog.records
                   if r.getMessage().startswith("Compiling ")]
    jax.config.update("jax_log_compiles", previous)


def test_compile_ahead_compiles_each_group_beside_the_one_before_and_changes_nothing(x64, compiles):
    """Three groups (V at N <= 5 with 4 trials on 3 slots, so a slot is refilled; FGR at 5; V at 8): with compile_ahead
    every group program is compiled in the background thread, none by the training loop, and every number is
    the same as without it (the same programs)."""
    splits = make_splits("jsb", seed=6)
    trials = [train.Trial(i, v, n, 1e-2, 0.9, 0.1, True, False, seed=i) for i, (v, n) in enumerate(
        [("V", 3), ("V", 5), ("FGR", 4), ("V", 7), ("V", 4), ("V", 2)])]
    kwargs = dict(max_epochs=3, patience=1, trials_per_batch=3, hidden_buckets=(5, 8), dtype=np.float64)
    group_jits = {"jit(local_epoch)", "jit(local_eval)", "jit(_set_slot)", "jit(_select)"}
    runs = {}
    for ahead in (False, True):
        programs.group_programs.cache_clear()  # else the second run compiles nothing
        before = len(compiles())
        runs[ahead] = run_trainer("jsb", splits, trials, compile_ahead=ahead, **kwargs)
        threads = {thread for thread, name in compiles()[before:] if name in group_jits}
        assert threads == ({"MainThread"} if not ahead else {"odyssey-compile_0"}), (ahead, threads)
        epochs = sorted(name for _, name in compiles()[before:] if name == "jit(local_epoch)")
        # one epoch program per group, whether compiled ahead or not
        assert len(epochs) == 3, (ahead, epochs)
    (plain, plain_curves), (ahead, ahead_curves) = runs[False], runs[True]
    assert plain_curves == ahead_curves and set(plain_curves) == set(range(6))
    for i in range(6):
        assert (plain[i].epochs, plain[i].best_epoch, plain[i].status) == (ahead[i].epochs, ahead[i].best_epoch,
                                                                           ahead[i].status)
        np.testing.assert_array_equal([plain[i].val_metric, plain[i].test_metric],
                                      [ahead[i].val_metric, ahead[i].test_metric])


def test_a_second_call_of_the_same_setting_reuses_the_compiled_programs(compiles):
    """train_trials again with the same task, program, padded size and slots (other trials, another learning
    rate) compiles no epoch or evaluation program and gives the numbers of a run whose programs were compiled
    afresh; a setting that changes the program (chunks of one slot) compiles its own."""
    splits = make_splits("jsb", seed=8)
    trials = [train.Trial(i, "V", n, lr, 0.9, 0.1, True, False, seed=i) for i, (n, lr) in enumerate(
        [(3, 1e-2), (4, 2e-2)])]
    others = [dataclasses.replace(t, learning_rate=t.learning_rate * 3, seed=t.seed + 5) for t in trials]
    kwargs = dict(max_epochs=2, patience=2, trials_per_batch=2, hidden_buckets=(4,))
    group_programs = {"jit(local_epoch)", "jit(local_eval)"}

    def run(ts, **extra):
        before = len(compiles())
        out = run_trainer("jsb", splits, ts, **kwargs, **extra)
        return out, sorted(name for _, name in compiles()[before:] if name in group_programs)

    programs.group_programs.cache_clear()
    _, compiled = run(trials)
    assert compiled == ["jit(local_epoch)", "jit(local_eval)"], compiled
    (again, again_curves), compiled = run(others)
    assert compiled == [], compiled
    programs.group_programs.cache_clear()
    (fresh, fresh_curves), compiled = run(others)
    assert compiled == ["jit(local_epoch)", "jit(local_eval)"], compiled
    assert again_curves == fresh_curves and set(again_curves) == {0, 1}
    assert ({i: dataclasses.replace(r, train_seconds=0) for i, r in again.items()}
            == {i: dataclasses.replace(r, train_seconds=0) for i, r in fresh.items()})
    _, compiled = run(others, trials_per_chunk=1)
    assert "jit(local_epoch)" in compiled, compiled


def test_early_stopping_on_a_scripted_metric():
    script = np.array([[5.0, 4.0, 4.5, 3.9, 4.0, 4.0, 4.0, 3.0, 3.0, 2.0],
                       [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
                       [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5]])
    max_epochs, patience = 8, 3
    # Oracle: the rule in words, one trial at a time.
    expected = []
    for row in script:
        best, best_ep = np.inf, 0
        for ep, v in enumerate(row, 1):
            if v < best:
                best, best_ep = v, ep
            if ep == max_epochs or ep - best_ep == patience:
                expected.append((ep, best_ep, best))
                break
    best_val, best_epoch = np.full(3, np.inf), np.zeros(3, int)
    stopped = {}
    for ep in range(1, 11):
        best_val, best_epoch, _, stop = train.early_stopping(best_val, best_epoch, np.full(3, ep), script[:, ep - 1],
                                                             max_epochs, patience)
        for k in np.flatnonzero(stop):
            stopped.setdefault(k, (ep, int(best_epoch[k]), float(best_val[k])))
    assert [stopped[k] for k in range(3)] == expected == [(7, 4, 3.9), (4, 1, 1.0), (8, 8, 2.0)]


def test_sharded_over_four_devices_equals_one_device(tmp_path):
    script = textwrap.dedent("""
        import json, sys, jax
        from absl import logging
        logging.set_verbosity(logging.INFO)  # the trainer logs when it packs
        sys.path.insert(0, %r)
        from test_train import make_splits
        from odyssey import train
        splits = make_splits("jsb", seed=4)
        out = {}
        # 10 trials on 4 devices in chunks of 2 (4 slots per device, 6 of the 16 empty): trials 0 and 2 diverge
        # at once, so device 0 packs trials 1 and 3 into its first chunk; against one device in one vmap.
        many = [train.Trial(i, "V", 3 + divmod(i, 5)[1], 1e308 if i in (0, 2) else 1e-2, 0.9, 0.2, True, False, seed=i)
                for i in range(10)]
        for name, devices, chunk in (("four_packed", jax.devices(), 2), ("one_whole", jax.devices()[:1], None)):
            res = train.train_trials("jsb", splits, many, max_epochs=2, patience=5, trials_per_batch=10,
                                     trials_per_chunk=chunk, hidden_buckets=(8,), devices=devices, dtype="float64")
            out[name] = [[r.val_metric, r.test_metric] for r in res if r.status == "done"]
            out[name + "_status"] = [r.status for r in res]
        print(json.dumps({"n": len(jax.devices()), **out}))
    """) % os.path.dirname(__file__)
    # The session's XLA_FLAGS (conftest: a fast compile) stay, with four CPU devices.
    flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=4"]))
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == 4
    assert out["four_packed_status"] == out["one_whole_status"] == ["diverged", "done", "diverged"] + ["done"] * 7
    assert "packed" in proc.stderr
    np.testing.assert_allclose(out["four_packed"], out["one_whole"], rtol=1e-10)


def test_bad_trials_are_named():
    splits = make_splits("jsb")
    with pytest.raises(ValueError, match="unknown variant 'LSTM'"):
        train.train_trials("jsb", splits, [train.Trial(0, "LSTM", 4, 1e-3, 0.9, 0.0)])
    with pytest.raises(ValueError, match="trial 0: need learning_rate > 0"):
        train.train_trials("jsb", splits, [train.Trial(0, "V", 4, -1e-3, 0.9, 0.0)])
    with pytest.raises(ValueError, match="exceeds the largest hidden bucket 200"):
        train.train_trials("jsb", splits, [train.Trial(0, "V", 201, 1e-3, 0.9, 0.0)])
    with pytest.raises(ValueError, match="unknown task 'speech'"):
        train.train_trials("speech", splits, [])
    with pytest.raises(ValueError, match="trials_per_chunk >= 1; got 150, 15, 64, 0"):
        train.train_trials("jsb", splits, [train.Trial(0, "V", 4, 1e-3, 0.9, 0.0)], trials_per_chunk=0)
    with pytest.raises(ValueError, match="trial_id 0 appears twice"):
        train.train_trials("jsb", splits, [train.Trial(0, "V", 4, 1e-3, 0.9, 0.0)] * 2)


def test_evaluation_split_into_smaller_steps_changes_nothing(x64, monkeypatch):
    """With EVAL_BYTES too small for more than one sequence per evaluation step, a study's curves and test
    metrics are those of 16 sequences per step; the halving rule itself, by hand."""
    # 4 trials x 300 steps x N = 50 x 8 bytes x 7 arrays x 2 layers = 6.72 MB per sequence
    monkeypatch.setattr(layout, "EVAL_BYTES", 30_000_000)
    assert train.eval_sequences_per_step(16, 4, 300, 50, 2, 8) == 4      # 16 -> 8 -> 4 (26.9 MB)
    assert train.eval_sequences_per_step(3, 4, 300, 50, 2, 8) == 3
    assert train.eval_sequences_per_step(16, 400, 300, 50, 2, 8) == 1    # never fewer than one
    monkeypatch.undo()
    trials = [train.Trial(i, v, 4, 1e-2, 0.9, 0.2, True, False, seed=30 + i) for i, v in enumerate(("V", "NOG"))]
    kwargs = dict(max_epochs=2, patience=5, hidden_buckets=(4,), dtype=np.float64)
    # JSB's NLL moves with every output (a chunk's loops stopped at its shortest sequence would show), TIMIT
    # the bidirectional net (its tiny net's frame error is 100 % here, a weak check on its own)
    for task in ("jsb", "timit"):
        splits = make_splits(task, seed=4, sizes=(5, 7, 7))
        monkeypatch.undo()
        plain, plain_curves = run_trainer(task, splits, trials, **kwargs)
        monkeypatch.setattr(layout, "EVAL_BYTES", 1)
        small, small_curves = run_trainer(task, splits, trials, **kwargs)
        for t in trials:
            assert len(plain_curves[t.trial_id]) == 2
            np.testing.assert_allclose(small_curves[t.trial_id], plain_curves[t.trial_id], rtol=1e-12)
            np.testing.assert_allclose(small[t.trial_id].test_metric, plain[t.trial_id].test_metric, rtol=1e-12)
        if task == "jsb":
            assert len({round(v, 9) for t in trials for v in plain_curves[t.trial_id]}) == 4  # it moves


def test_use_cpu_cores_makes_one_cpu_device_per_core_before_jax_starts():
    script = textwrap.dedent("""
        import json, os
        from odyssey import train
        out = {"set": train.use_cpu_cores(3)}
        import jax
        import numpy as np
        out["devices"] = len(jax.devices("cpu"))
        # the trainer's default devices are all of them
        roll = (np.arange(4 * 88).reshape(4, 88) % 7 == 0).astype(np.float32)
        res = train.train_trials("jsb", {"train": [roll] * 4, "valid": [roll] * 2, "test": [roll] * 2},
                                 [train.Trial(i, "V", 4, 1e-2, 0.9, 0.0, seed=i) for i in range(5)],
                                 max_epochs=2, hidden_buckets=(4,))
        one = train.train_trials("jsb", {"train": [roll] * 4, "valid": [roll] * 2, "test": [roll] * 2},
                                 [train.Trial(i, "V", 4, 1e-2, 0.9, 0.0, seed=i) for i in range(5)],
                                 max_epochs=2, hidden_buckets=(4,), devices=jax.devices("cpu")[:1])
        out["trained"] = len(res)
        out["same"] = bool(np.allclose([r.test_metric for r in res], [r.test_metric for r in one], rtol=1e-6))
        out["late"] = train.use_cpu_cores(2)  # JAX has started: too late, nothing changes
        out["after"] = len(jax.devices("cpu"))
        try:
            train.use_cpu_cores(0)
        except ValueError as err:
            out["error"] = str(err)
        print(json.dumps(out))
    """)
    # The session's XLA_FLAGS (conftest: a fast compile) stay; use_cpu_cores sets the device count itself.
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"set": 3, "devices": 3, "trained": 5, "same": True, "late": None, "after": 3,
                   "error": "use_cpu_cores: count must be a positive int, got 0"}
    assert "came too late" in proc.stderr


def test_compiler_options_reach_the_trainers_programs(monkeypatch):
    assert train.compiler_options("cpu") == {"xla_cpu_prefer_vector_width": 512}
    assert train.compiler_options(jax.devices("cpu")[0]) == {"xla_cpu_prefer_vector_width": 512}
    assert train.compiler_options("gpu") == {}
    splits = make_splits("jsb")
    trial = [train.Trial(0, "V", 4, 1e-2, 0.9, 0.0)]
    # A value XLA refuses fails the trainer's compile: the options are those the programs are built with.
    monkeypatch.setitem(programs.COMPILER_OPTIONS, "cpu", {"xla_cpu_prefer_vector_width": "wide"})
    with pytest.raises(Exception, match="xla_cpu_prefer_vector_width"):
        train.train_trials("jsb", splits, trial, max_epochs=1, hidden_buckets=(4,))
    monkeypatch.setitem(programs.COMPILER_OPTIONS, "cpu", {})
    assert train.train_trials("jsb", splits, trial, max_epochs=1, hidden_buckets=(4,))[0].epochs == 1


# Five trials of the mixed program (two buckets, so also a group of one) and two of FGR, three slots a group:
# trials end early (patience 2) and pending ones take their slots.
CKPT_TRIALS = [train.Trial(i, v, n, lr, 0.9, 0.3, True, clip, seed=10 + i) for i, (v, n, lr, clip) in enumerate(
    [("V", 6, 1e-2, False), ("NIG", 4, 3e-2, True), ("FGR", 5, 1e-2, False), ("CIFG", 7, 2e-2, False),
     ("NP", 3, 5e-2, False), ("FGR", 3, 3e-2, True), ("NOAF", 6, 1e-3, False), ("V", 2, 1e-2, False)])]
CKPT_RUN = dict(max_epochs=6, patience=2, trials_per_batch=3, hidden_buckets=(4, 8))


class _Stop(Exception):
    pass


def run_stopping(splits, trials=CKPT_TRIALS, stop_after=None, record=None, events=None, **kwargs):
    """train_trials with an on_epoch that records (trial, epoch, loss, val) and raises _Stop after `stop_after`
    calls (a crash at the end of an epoch's bookkeeping, before that epoch's checkpoint). events, a list: every
    callback in the order made, as ("epoch", trial, epoch), ("result", trial, epochs) and ("group_epoch",)."""
    record = [] if record is None else record
    events = [] if events is None else events

    def on_epoch(trial_id, epoch, loss, val, seconds):
        record.append((trial_id, epoch, loss, val))
        events.append(("epoch", trial_id, epoch))
        if stop_after is not None and len(record) >= stop_after:
            raise _Stop

    results = train.train_trials("jsb", splits, trials, on_epoch=on_epoch,
                                 on_result=lambda r: events.append(("result", r.trial_id, r.epochs)),
                                 on_group_epoch=lambda: events.append(("group_epoch",)), **{**CKPT_RUN, **kwargs})
    return {r.trial_id: r for r in results}, record


def _by_trial(record):
    out = {}
    for trial_id, epoch, loss, val in record:
        out.setdefault(trial_id, []).append((epoch, loss, val))
    return out


@pytest.fixture(scope="module")
def uninterrupted_run():
    """(splits, results by trial, on_epoch rows, every callback in order) of CKPT_TRIALS run without a stop."""
    splits = make_splits("jsb", seed=4, sizes=(6, 3, 3))
    events = []
    return splits, *run_stopping(splits, events=events), events


def test_on_group_epoch_closes_each_epoch_of_a_group_after_its_rows_and_results(uninterrupted_run):
    """The callbacks of the uninterrupted run (4 groups of 3 slots, trials ending early and refilled), cut at
    each on_group_epoch: every piece holds one epoch of one group, its on_epoch rows (each live trial once)
    then the results of the trials that epoch ended; a trial's epochs fall in consecutive pieces (a live trial
    trains in every epoch of its group) and its result in the piece of its last epoch."""
    _, results, _, events = uninterrupted_run
    assert events[-1] == ("group_epoch",)
    pieces, piece = [], []
    for event in events:
        if event == ("group_epoch",):
            pieces.append(piece)
            piece = []
        else:
            piece.append(event)
    at = {}  # (trial, epoch) -> piece index
    ended = {}
    for index, piece in enumerate(pieces):
        kinds = [e[0] for e in piece]
        assert kinds and kinds == sorted(kinds), piece  # "epoch" rows, then "result"s
        rows = [e[1:] for e in piece if e[0] == "epoch"]
        assert rows and len({t for t, _ in rows}) == len(rows) <= CKPT_RUN["trials_per_batch"], piece
        keys = {(CKPT_TRIALS[t].variant == "FGR", min(b for b in CKPT_RUN["hidden_buckets"]
                                                         if b >= CKPT_TRIALS[t].hidden_size)) for t, _ in rows}
        assert len(keys) == 1, piece  # one program and bucket
        at.update({row: index for row in rows})
        for _, trial, epochs in (e for e in piece if e[0] == "result"):
            assert (trial, epochs) in rows and trial not in ended, piece
            ended[trial] = index
    assert sorted(ended) == sorted(results) == [t.trial_id for t in CKPT_TRIALS]
    for trial, r in results.items():
        assert [at[(trial, e)] for e in range(1, r.epochs + 1)] == list(range(at[(trial, 1)], ended[trial] + 1))


@pytest.mark.parametrize("stop_after", [2, 17])
def test_a_stopped_trainer_resumes_its_trials_to_the_uninterrupted_numbers(uninterrupted_run, tmp_path, stop_after,
                                                                           caplog):
    """Stopped after 2 epoch rows (inside the first epoch of the first group, before any checkpoint) or after
    17 (inside a later epoch, with trials ended, refilled and saved), then run again with the same checkpoints:
    every trial ends with the uninterrupted run's epochs and numbers, bitwise (CPU, float32), and the epoch
    rows of the first run up to each trial's checkpoint and those of the second together are the
    uninterrupted run's rows."""
    splits, want, want_record, _ = uninterrupted_run
    ck = checkpoints.Checkpoints(tmp_path / "ck", every_seconds=0)
    first = []
    with pytest.raises(_Stop):
        run_stopping(splits, stop_after=stop_after, record=first, checkpoints=ck)
    at = ck.epochs()
    if stop_after == 2:
        assert at == {}
    else:
        assert at and all(e >= 1 for e in at.values()), at
    caplog.set_level("INFO", logger="absl")
    got, second = run_stopping(splits, checkpoints=ck)
    for t in CKPT_TRIALS:
        g, w = got[t.trial_id], want[t.trial_id]
        assert dataclasses.replace(g, train_seconds=0) == dataclasses.replace(w, train_seconds=0)
    rows = _by_trial([r for r in first if r[1] <= at.get(r[0], 0)] + second)
    assert rows == _by_trial(want_record)
    resumed = [r.getMessage() for r in caplog.records if "resume from their checkpoints" in r.getMessage()]
    assert bool(resumed) == bool(at), resumed
    # Each trial's rows in the second run start right after its checkpoint.
    assert all(_by_trial(second)[i][0][0] == e + 1 for i, e in at.items())
    assert ck.files() == [], "a finished run leaves no checkpoints"


def _group_epochs(events):
    """The uninterrupted run's callbacks cut at each on_group_epoch: per group epoch, its (program, bucket) and
    the trials live in it."""
    out, rows = [], []
    for event in events:
        if event == ("group_epoch",):
            t = rows[0]
            key = (CKPT_TRIALS[t].variant == "FGR", min(b for b in CKPT_RUN["hidden_buckets"]
                                                       if b >= CKPT_TRIALS[t].hidden_size))
            out.append((key, set(rows)))
            rows = []
        elif event[0] == "epoch":
            rows.append(event[1])
    return out


@pytest.mark.parametrize("where, every, ahead", [("first epoch", float("inf"), False),
                                                 ("later epoch", float("inf"), False),
                                                 ("later epoch", 0.0, True), ("between groups", float("inf"), False)])
def test_a_stop_request_saves_the_group_at_once_and_resumes_to_the_uninterrupted_numbers(uninterrupted_run, tmp_path,
                                                                                        where, every, ahead):
    """`stop` turns True after a group epoch, with checkpoints that would never save on their own schedule (or
    that save after every epoch, the next group compiling in the background): the trainer saves every trial
    live in that epoch at the epoch it reached (nothing trained is lost), once, and raises Stopped; at the last
    epoch of the first group, nothing is left to save and Stopped comes before the next group. Run again, every
    trial ends with the uninterrupted run's epochs and numbers, bitwise (CPU, float32), and a saved trial's rows
    of the two runs together are the uninterrupted run's, none trained twice."""
    splits, want, want_record, events = uninterrupted_run
    pieces = _group_epochs(events)
    first_group = next(i for i, (key, _) in enumerate(pieces) if key != pieces[0][0])  # its group epochs
    after = {"first epoch": 1, "later epoch": first_group - 1, "between groups": first_group}[where]
    assert 1 <= after <= first_group and first_group >= 3, (after, first_group)
    calls, seen = [], []  # group epochs seen when stop was asked; the first run's callbacks

    def stop():
        calls.append(seen.count(("group_epoch",)))
        return calls[-1] >= after

    ck = checkpoints.Checkpoints(tmp_path / "ck", every_seconds=every)
    first = []
    saves = []
    original = checkpoints.Checkpoints.save
    with pytest.raises(train.Stopped) as stopped, pytest.MonkeyPatch.context() as mp:
        # each save stamped with the epoch rows so far: two saves of one group epoch share a stamp
        mp.setattr(ck, "save", lambda *a, **k: (saves.append(sum(e[0] == "epoch" for e in seen)),
                                                original(ck, *a, **k)))
        run_stopping(splits, record=first, events=seen, checkpoints=ck, stop=stop, compile_ahead=ahead)
    assert len(saves) == len(set(saves)), "a group epoch saved twice"
    ended = {r[0] for r in first if (r[0], r[1]) in {(t, want[t].epochs) for t in want}}
    live = pieces[after - 1][1] - ended if where != "between groups" else set()
    at = ck.epochs()
    assert sorted(at) == sorted(live) and stopped.value.saved == len(live)
    fgr, bucket = pieces[0][0]
    assert stopped.value.group == (None if where == "between groups" else ("FGR" if fgr else "mixed", bucket))
    # each saved trial at its last epoch of the first run: nothing it trained is lost
    last = {}
    for trial, epoch, _, _ in first:
        last[trial] = max(last.get(trial, 0), epoch)
    assert all(at[t] == last[t] for t in live), (at, last)
    # asked before the first group and after each of its group epochs, then once more before the second group
    assert calls[0] == 0 and calls == sorted(calls) and calls[-1] == after
    got, second = run_stopping(splits, checkpoints=ck)
    for t in CKPT_TRIALS:
        assert dataclasses.replace(got[t.trial_id], train_seconds=0) == dataclasses.replace(want[t.trial_id],
                                                                                            train_seconds=0)
    # (train_trials was given every trial again: those that ended in the first run train again from the start)
    assert _by_trial([r for r in first if r[0] in at] + second) == _by_trial(want_record)
    assert all(_by_trial(second)[t][0][0] == e + 1 for t, e in at.items())
    assert ck.files() == []


@pytest.mark.parametrize("settings", [dict(hidden_buckets=(8,), trials_per_batch=8, mix_variants=False),
                                      dict(trials_per_batch=1)])
def test_checkpoints_resume_in_other_buckets_batches_and_programs(uninterrupted_run, tmp_path, settings):
    """A trial's saved state is in its own layout, so it resumes in a group of another padded size, batch size
    and program (each variant its own instead of the mixed one), or one slot at a time (saved trials wait for
    a slot like pending ones): the same numbers up to float round-off."""
    splits, want, want_record, _ = uninterrupted_run
    ck = checkpoints.Checkpoints(tmp_path / "ck", every_seconds=0)
    first = []
    with pytest.raises(_Stop):
        run_stopping(splits, stop_after=17, record=first, checkpoints=ck)
    at = ck.epochs()
    assert at
    got, second = run_stopping(splits, checkpoints=ck, **settings)
    for t in CKPT_TRIALS:
        g, w = got[t.trial_id], want[t.trial_id]
        assert (g.status, g.epochs, g.best_epoch) == (w.status, w.epochs, w.best_epoch)
        np.testing.assert_allclose([g.val_metric, g.test_metric], [w.val_metric, w.test_metric], rtol=1e-5)
    rows, want_rows = _by_trial([r for r in first if r[1] <= at.get(r[0], 0)] + second), _by_trial(want_record)
    assert sorted(rows) == sorted(want_rows)
    for i in rows:
        assert [r[0] for r in rows[i]] == [r[0] for r in want_rows[i]]
        np.testing.assert_allclose(np.array(rows[i])[:, 1:], np.array(want_rows[i])[:, 1:], rtol=1e-5)


def test_a_run_of_other_buckets_keeps_the_saved_state_of_a_trial_whose_group_runs_later(uninterrupted_run, tmp_path,
                                                                                         caplog):
    """Trials 1, 4 and 7 (N = 4, 3, 2) saved at epoch 1 in one group of N <= 4, then resumed with buckets (2, 4):
    the group of N <= 4 (trials 1 and 4) runs first and saves under the old file's name; trial 7, whose group
    of N <= 2 runs after it, keeps its saved state through that save (before, it was lost and trial 7 trained
    again from its first epoch), and all three end with the uninterrupted run's numbers and rows."""
    splits, want, want_record, _ = uninterrupted_run
    trials = [CKPT_TRIALS[i] for i in (1, 4, 7)]
    assert [t.hidden_size for t in trials] == [4, 3, 2]
    ck = checkpoints.Checkpoints(tmp_path / "ck", every_seconds=float("inf"))
    first, second = [], []
    with pytest.raises(train.Stopped):
        run_stopping(splits, trials, record=first, checkpoints=ck, hidden_buckets=(4,), stop=lambda: len(first) >= 3)
    assert ck.epochs() == {1: 1, 4: 1, 7: 1} and [p.name for p in ck.files()] == ["mixed_N4.npz"]
    caplog.set_level("INFO", logger="absl")
    with pytest.raises(train.Stopped) as stopped:
        run_stopping(splits, trials, record=second, checkpoints=ck, hidden_buckets=(2, 4),
                     stop=lambda: len(second) >= 2)
    assert stopped.value.group == ("mixed", 4)
    assert ck.epochs() == {1: 2, 4: 2, 7: 1}
    assert sorted(p.name for p in ck.files()) == ["mixed_N2.npz", "mixed_N4.npz"]
    assert any("saved states of 3 trials regrouped" in r.getMessage() for r in caplog.records)
    got, third = run_stopping(splits, trials, checkpoints=ck, hidden_buckets=(2, 4))
    for t in trials:
        g, w = got[t.trial_id], want[t.trial_id]
        assert (g.status, g.epochs, g.best_epoch) == (w.status, w.epochs, w.best_epoch)
        np.testing.assert_allclose([g.val_metric, g.test_metric], [w.val_metric, w.test_metric], rtol=1e-5)
    rows, want_rows = _by_trial(first + second + third), _by_trial(want_record)
    for t in trials:
        assert [r[0] for r in rows[t.trial_id]] == [r[0] for r in want_rows[t.trial_id]], t.trial_id
        np.testing.assert_allclose(np.array(rows[t.trial_id])[:, 1:], np.array(want_rows[t.trial_id])[:, 1:],
                                   rtol=1e-5)
    assert ck.files() == []


def test_checkpoints_regroup_moves_trials_between_files_and_keeps_the_rest(tmp_path):
    """Checkpoints.regroup against the files' contents worked out by hand: assigned trials end in their file
    alone (their states as given), a file's unassigned trials stay in it, a file left empty goes."""
    ck = checkpoints.Checkpoints(tmp_path)

    def entry(i, epoch):
        return checkpoints.SavedTrial({"trial_id": i}, epoch, 0.5, 1, 2.0, np.full(3, i * 10 + epoch, np.float32))

    ident = {"task": "jsb"}
    ck.save("a", ident, [entry(1, 1), entry(2, 1), entry(9, 4)])  # 9: no group of this run takes it
    ck.save("b", ident, [entry(3, 2)])
    ck.save("c", ident, [entry(4, 5)])
    assert ck.regroup(ident, {"c": [entry(4, 5)]}) == 0  # already where it belongs
    assert ck.regroup(ident, {"a": [entry(1, 1)], "d": [entry(2, 1), entry(3, 2)], "c": [entry(4, 5)]}) == 3
    contents = {p.name: {t.trial_id: (t.epoch, t.state.tolist()) for t in checkpoints._read(p)[1]}
                for p in ck.files()}
    assert contents == {"a.npz": {1: (1, [11.0] * 3), 9: (4, [94.0] * 3)}, "c.npz": {4: (5, [45.0] * 3)},
                        "d.npz": {2: (1, [21.0] * 3), 3: (2, [32.0] * 3)}}


def test_the_test_pass_evaluates_the_trials_that_ended_only(uninterrupted_run, monkeypatch):
    """With validation metrics scripted so that trial i improves until epoch 2 + i % 2 (patience 1: it ends at
    3 + i % 2, beside trials that go on), each test pass is asked for the slots of the trials that epoch ended
    only (before, every occupied slot: on a CPU the chunks of trials still training were evaluated and thrown
    away), and each trial's test metric is that pass's."""
    splits = uninterrupted_run[0]
    asked, original = [], train.Group.evaluate

    def evaluate(self, split, params, slots=None):
        out = original(self, split, params, slots)
        if split == "valid":
            for i, t in enumerate(self.slots):
                if t is not None:
                    e = int(self.epoch[i])
                    out[i] = 10.0 - e if e <= 2 + t.trial_id % 2 else 10.0 + e
        else:
            asked.append({self.slots[i].trial_id: out[i] for i in np.flatnonzero(np.isfinite(out))})
        return out

    monkeypatch.setattr(train.Group, "evaluate", evaluate)
    events = []
    got, _ = run_stopping(splits, events=events, max_epochs=10, patience=1)
    assert all(got[t.trial_id].epochs == 3 + t.trial_id % 2 for t in CKPT_TRIALS)
    by_epoch, current = [], []  # the trials each group epoch ended
    for event in events:
        if event == ("group_epoch",):
            if current:
                by_epoch.append(sorted(current))
            current = []
        elif event[0] == "result":
            current.append(event[1])
    assert [sorted(a) for a in asked] == by_epoch and sum(map(len, asked)) == len(CKPT_TRIALS)
    assert any(len(group) < 3 for group in by_epoch)  # trials ended beside others that went on
    assert all(got[i].test_metric == a[i] for a in asked for i in a)


def test_checkpoints_of_other_settings_or_other_trials_are_refused(uninterrupted_run, tmp_path):
    splits, _, _, _ = uninterrupted_run
    ck = checkpoints.Checkpoints(tmp_path / "ck", every_seconds=0)
    with pytest.raises(_Stop):
        run_stopping(splits, stop_after=17, checkpoints=ck)
    with pytest.raises(ValueError, match="other settings.*order_seed"):
        run_stopping(splits, checkpoints=ck, order_seed=5)
    # the strata of a data order are a setting too, either way round
    strata = checkpoints.Checkpoints(tmp_path / "strata", every_seconds=0)
    with pytest.raises(_Stop):
        run_stopping(splits, stop_after=17, checkpoints=strata, order_seed=5, order_stratum=2)
    for other in ({"order_seed": 5}, {"order_seed": 5, "order_stratum": 3}):
        with pytest.raises(ValueError, match=r"other settings .*'order_stratum': \(2, "):
            run_stopping(splits, checkpoints=strata, **other)
    changed = [dataclasses.replace(t, learning_rate=t.learning_rate * 2) for t in CKPT_TRIALS]
    with pytest.raises(ValueError, match="trial 0: the checkpoint .* other fields"):
        run_stopping(splits, trials=changed, checkpoints=ck)
    assert ck.epochs(), "a refused run leaves the checkpoints alone"


def _emitting_nets(spec, trials, rng):
    """IAM-OnDB nets with weights large enough to emit characters, and their states to fill a group with (as
    saved trials: weights, zero velocity, best = weights)."""
    nets_of, saved = {}, {}
    for t in trials:
        template = nets.init_net(jax.random.PRNGKey(0), t.variant, "bi", 4, t.hidden_size, spec.n_out,
                                 dtype=np.float64)
        params = jax.tree_util.tree_map(lambda a: rng.normal(0.0, 1.5, a.shape), template)
        params["out"]["b"][[0, 5, 9]] += 4.0  # a few likely outputs: blanks, runs of one character, changes
        leaves = jax.tree_util.tree_leaves(params)
        state = np.concatenate([np.ravel(x) for x in leaves] + [np.zeros(x.size) for x in leaves]
                               + [np.ravel(x) for x in leaves])
        saved[t.trial_id] = checkpoints.SavedTrial(dataclasses.asdict(t), 1, 0.0, 1, 0.0, state)
        nets_of[t.trial_id] = params
    return nets_of, saved


def test_the_groups_character_error_rate_is_the_decoded_edit_distance_of_each_trial(x64):
    """IAM-OnDB's evaluation in the trainer's group (the mixed program, trials padded to the bucket, sequences
    in chunks sorted by length) against best-path decoding and an edit distance per sequence in plain Python,
    with weights large enough that the nets emit characters (a trained-for-epochs tiny net emits only blanks,
    so its CER is 100 % whatever the evaluation does)."""
    spec = tasks_module.get_task("iam_online")
    splits = make_splits("iam_online", seed=9, sizes=(2, 9, 2), lengths=(4, 7))
    arrays = {n: tasks_module.to_arrays(spec, split, np.float64) for n, split in splits.items()}
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("trials",))
    group = train.Group(spec, train.MIXED, 5, 2, arrays, 4, mesh, 4, np.dtype(np.float64))
    trials = [train.Trial(0, "V", 5, 1e-2, 0.5, 0.0, seed=1), train.Trial(1, "CIFG", 3, 1e-2, 0.5, 0.0, seed=2)]
    nets_of, saved = _emitting_nets(spec, trials, np.random.default_rng(10))
    group.fill(trials, saved)
    got = group.evaluate("valid", group.state["params"])
    for t in trials:
        want = _ref_metric("iam_online", t.variant, nets_of[t.trial_id], splits["valid"])
        assert 0 < want != 100.0, want  # characters were emitted, some right
        assert got[t.trial_id] == pytest.approx(want, rel=1e-12), t.variant


def test_validation_and_test_of_other_label_widths_share_one_evaluation_program(x64):
    """IAM-OnDB's test lines with longer labels than the validation lines: the test pass runs the validation's
    compiled program (before, their label widths made a second one, compiled in the training loop at the first
    trial's end, where compile_ahead had not built it), with the same CERs as plain Python's; and a pass of some
    slots only gives those slots' metrics (NaN elsewhere)."""
    spec = tasks_module.get_task("iam_online")
    splits = make_splits("iam_online", seed=9, sizes=(2, 4, 3), lengths=(4, 7))
    trials = [train.Trial(0, "V", 5, 1e-2, 0.5, 0.0, seed=1), train.Trial(1, "NP", 3, 1e-2, 0.5, 0.0, seed=2)]
    nets_of, saved = _emitting_nets(spec, trials, np.random.default_rng(11))
    # test labels: what V's net emits on the line and three more characters (some right, all longer)
    forward = _ref_forward("iam_online", "V", None)
    test = []
    for x, _ in _pairs("iam_online", splits["test"]):
        best = np.asarray(forward(nets_of[0], jnp.asarray(x))).argmax(1)
        hyp = [int(c) for k, c in enumerate(best) if c != 0 and (k == 0 or c != best[k - 1])]
        test.append((x, np.array(hyp + [5, 9, 5], np.int32)))
    splits["test"] = test
    arrays = {n: tasks_module.to_arrays(spec, split, np.float64) for n, split in splits.items()}
    assert arrays["test"].targets.shape[1] > arrays["valid"].targets.shape[1]
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("trials",))
    group = train.Group(spec, train.MIXED, 5, 2, arrays, 4, mesh, 4, np.dtype(np.float64))
    group.fill(trials, saved)
    group.evaluate("valid", group.state["params"])
    programs = group._eval_fn._cache_size()  # (the programs are shared with other groups of this setting)
    got = group.evaluate("test", group.best)
    assert group._eval_fn._cache_size() == programs, "the test pass compiled a program of its own"
    want = [_ref_metric("iam_online", t.variant, nets_of[t.trial_id], splits["test"]) for t in trials]
    assert 0 < want[0] < 100.0, want  # V's: the three extra characters wrong
    np.testing.assert_allclose(got, want, rtol=1e-12)
    some = group.evaluate("test", group.best, np.array([False, True]))
    assert np.isnan(some[0]) and some[1] == got[1]


@pytest.mark.parametrize("chunk", [1, 2, None])
def test_evaluation_in_chunks_of_trials_skips_empty_ones_and_changes_no_metric(chunk, x64):
    """A group's evaluation runs its trials in the training's chunks and skips chunks with no trial: the
    metrics of the trials left (slots 0 and 3 of 6, after the others are emptied) are those of all six
    evaluated at once, in chunks of 1, 2 or all; empty slots give NaN."""
    spec = tasks_module.get_task("jsb")
    splits = make_splits("jsb", seed=12, sizes=(3, 9, 3), lengths=(4, 7))
    arrays = {n: tasks_module.to_arrays(spec, split, np.float64) for n, split in splits.items()}
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("trials",))
    trials = [train.Trial(i, v, 3 + i % 3, 1e-2, 0.5, 0.0, seed=20 + i)
              for i, v in enumerate(["V", "CIFG", "NP", "V", "NIG", "NOAF"])]
    full = train.Group(spec, train.MIXED, 5, 6, arrays, 88, mesh, 4, np.dtype(np.float64), chunk=6)
    full.fill(trials)
    want = full.evaluate("valid", full.state["params"])
    assert np.all(np.isfinite(want)) and len(set(np.round(want, 9))) == 6
    group = train.Group(spec, train.MIXED, 5, 6, arrays, 88, mesh, 4, np.dtype(np.float64), chunk=chunk)
    group.fill(trials)
    np.testing.assert_allclose(group.evaluate("valid", group.state["params"]), want, rtol=1e-12)
    for slot in (1, 2, 4, 5):
        group.assign(slot, None)
    got = group.evaluate("valid", group.state["params"])
    np.testing.assert_allclose(got[[0, 3]], want[[0, 3]], rtol=1e-12)
    assert np.isnan(got[[1, 2, 4, 5]]).all()
