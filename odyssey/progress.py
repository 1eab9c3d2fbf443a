"""A study's progress line: trials finished, running and pending, the best metric per variant, and the time left.

The time left follows how the trainer spends it (`odyssey.train`): trials are trained in groups (program x
hidden bucket) one after another, and a group trains in lock-step epochs until its last trial ends. Each
epoch a device runs the chunks of its slots that hold a live trial, so an epoch costs about the same whatever
number of trials a chunk still holds: a group in one vmapped chunk (an accelerator's default) costs a full
epoch until its longest trial ends, one in many small chunks (a CPU's) about in proportion to its live
trials. How many epochs a trial lasts comes from the trials so far (`epochs_survival`).
"""

import datetime
import math
import time
from typing import NamedTuple

import numpy as np
from absl import logging


class GroupLayout(NamedTuple):
    """How the trainer lays out a group (program x bucket), as the ETA prices it."""

    slots: int | None  # the group's slots (None: one per trial)
    per_round: int     # the live trials one round of its chunks holds: trials per chunk times devices
    params: int | None  # one trial's parameters at the group's padded size (None: unknown)


def epochs_survival(finished, live, max_epochs):
    """P(a trial trains more than e epochs), e = 0..max_epochs, estimated from the trials so far.

    The Kaplan-Meier estimate: `finished` holds the epochs of the trials that ended, `live` those so far of the
    trials still training, each of which is known to last longer (a mean over the finished trials alone would
    count the early stops first). Past the last epoch any trial reached, the estimate holds; at max_epochs it
    is 0, where every trial ends.
    """
    reached = [0] * (max_epochs + 1)  # trials that trained at least e epochs
    ended = [0] * (max_epochs + 1)
    for epochs in finished:
        if epochs >= 1:
            reached[min(epochs, max_epochs)] += 1
            ended[min(epochs, max_epochs)] += 1
    for epochs in live:
        if epochs >= 1:
            reached[min(epochs, max_epochs)] += 1
    for e in range(max_epochs - 1, 0, -1):
        reached[e] += reached[e + 1]
    survival = [1.0] * (max_epochs + 1)
    for e in range(1, max_epochs + 1):
        survival[e] = survival[e - 1] * (1.0 - ended[e] / reached[e]) if reached[e] else survival[e - 1]
    survival[max_epochs] = 0.0
    return survival


def still_training(survival, epochs) -> np.ndarray:
    """P(R >= r) for r = 1..max_epochs, float64[len(epochs), max_epochs]: R is the epochs a trial has left that
    has trained `epochs[i]` epochs and goes on (0: one not started). From `epochs_survival`'s table S:
    P(R >= r) = S[a + r - 1] / S[a]; a trial that goes on trains at least one more epoch, also where S[a] = 0."""
    s = np.asarray(survival, np.float64)
    horizon = len(s) - 1
    a = np.minimum(np.asarray(epochs, np.int64).reshape(-1), horizon)
    table = np.concatenate([s, np.zeros(horizon)])[a[:, None] + np.arange(horizon)[None, :]]
    base = s[a][:, None]
    p = np.divide(table, base, out=np.zeros_like(table), where=base > 0)
    p[:, :1] = 1.0
    return np.minimum(p, 1.0)


def expected_rounds(survival, live, pending=0, slots=None, per_round=1, samples=256, seed=0) -> float:
    """The chunk rounds a group is expected to run before its last trial ends: E[sum over its epochs r of
    ceil(L(r) / per_round)], L(r) the trials live in its r-th epoch from now.

    Args:
      survival: `epochs_survival`'s table.
      live: the epochs so far of the group's trials in training.
      pending: its trials not started; each takes a slot freed by a trial's end, in slot order, at the next
        epoch (as the trainer refills its slots).
      slots: the group's slots (None: every trial has one, no waves).
      per_round: the live trials one round of chunks holds (a chunk's trials times the devices; the group's
        slots or more: a round is a whole epoch, paid while any trial trains; 1: trial epochs).
      samples, seed: of the Monte Carlo estimate, which serves groups with pending trials that wait for
        slots and more than one trial a round; the other cases are exact sums (each trial's epochs left
        independent of the others', drawn from `survival`).
    """
    live = [int(e) for e in live]
    pending = int(pending)
    if not live and not pending:
        return 0.0
    p_live = still_training(survival, live)
    p_new = still_training(survival, [0])[0]
    slots = len(live) + pending if slots is None else max(int(slots), len(live))
    if per_round <= 1:  # every trial epoch is paid for: the sum of the trials' expected epochs
        return float(p_live.sum() + pending * p_new.sum())
    if pending > slots - len(live):
        return _simulated_rounds(p_live, p_new, pending, slots, per_round, samples, seed)
    # Every trial trains from now on: the pending ones start at once, in free slots.
    p = np.concatenate([p_live, np.repeat(p_new[None], pending, axis=0)])
    if per_round >= len(p):  # a round per epoch while any trial trains: the longest trial's epochs
        return float(np.sum(1.0 - np.prod(1.0 - p, axis=0)))
    # The number still training at each epoch is a sum of independent Bernoullis (Poisson-binomial).
    pmf = np.zeros((p.shape[1], len(p) + 1))
    pmf[:, 0] = 1.0
    for row in p:
        pmf[:, 1:] = pmf[:, 1:] * (1.0 - row[:, None]) + pmf[:, :-1] * row[:, None]
        pmf[:, 0] *= 1.0 - row
    rounds = np.ceil(np.arange(len(p) + 1) / per_round)
    return float(np.sum(pmf @ rounds))


def _draw_epochs(p, u):
    """Epochs left R with P(R >= r) = p[r - 1] (non-increasing, p[0] = 1), for uniforms u: #{r: p[r - 1] > u}."""
    return np.searchsorted(-p, -u, side="left")


def _simulated_rounds(p_live, p_new, pending, slots, per_round, samples, seed):
    """`expected_rounds` by simulating the group's slots, the trainer's refill order included."""
    rng = np.random.default_rng(seed)
    left = np.zeros((samples, slots), np.int64)
    for i, p in enumerate(p_live):
        left[:, i] = _draw_epochs(p, rng.random(samples))
    queue = _draw_epochs(p_new, rng.random((samples, pending)))
    taken = np.zeros(samples, np.int64)

    def refill(free):
        nonlocal taken
        index = np.cumsum(free, axis=1) - 1 + taken[:, None]
        take = free & (index < pending)
        left[take] = np.take_along_axis(queue, np.minimum(index, pending - 1), axis=1)[take]
        taken = taken + take.sum(axis=1)

    refill(left == 0)
    rounds = np.zeros(samples)
    while True:
        training = left > 0
        count = training.sum(axis=1)
        if not count.any():
            return float(rounds.mean())
        rounds += np.ceil(count / per_round)
        left -= training
        refill(training & (left == 0))


class Progress:
    """Trials done/running/pending, the best validation metric per variant, updates/s and an ETA, logged.

    A line is logged only between two epochs of a group, never in the middle of an epoch's callbacks (where
    its counts and rate would miss the epoch's other trials): after an epoch that ended trials, or when
    `every_s` seconds have passed since the last line.

    The ETA prices each group's epochs left in rounds of chunks (`expected_rounds`): with a group's layout
    (`GroupLayout`: its slots and the live trials one round of its chunks holds, `odyssey.train.group_layout`),
    a group that runs in one vmapped chunk pays a whole epoch until its longest trial ends, as the trainer
    does; without layouts each trial epoch is paid for alone. A round costs what it took in its own group
    after the group's first epoch, which holds its compiling. A group not yet so measured is priced from the
    nearest one that is, of the same program where there is one, scaled by the trials a round holds and by
    the ratio of their trials' parameter counts (without layouts, of the buckets squared, which overstates the
    growth: a trial's update runs its input and output products as well as its recurrent one, and a small
    group is bound by launches on a GPU; per trial epoch, N = 40 : 120 : 200 cost 1 : 3 : 5.5 on 2 CPU cores
    against parameters 1 : 4.6 : 10.2 and N^2 1 : 9 : 25; on an H100, N = 80 cost 2.3x N = 40 against 2.5x
    and 4x). Each group yet to start adds the compiling time the started ones took on average. Groups run
    smallest bucket first, so one rate for the whole run would price the large buckets at the small ones'
    speed: on an H100 it read 2 minutes for a JSB study estimated at 16-19. The epochs each unfinished trial
    has left follow from how long the trials so far lasted (`epochs_survival`); before any has ended, every
    trial is expected to run to `max_epochs`. There is no ETA ("?") until some group has trained its second
    epoch.
    """

    def __init__(self, st, variants, n_train, max_epochs, every_s, groups=None, layouts=None):
        """st: the trial store (its trials, counts and best metrics are read once). groups: (program, bucket)
        -> the trials left to train (`odyssey.train.group_trials`); None: no ETA. layouts: (program, bucket) ->
        `GroupLayout`; None: each trial epoch paid for alone, unmeasured groups scaled by their buckets."""
        self._counts = st.counts()
        self._best = st.best_by_variant()
        finished = [r["epochs"] for r in st.trials() if r["status"] in ("done", "diverged") and r["epochs"]]
        self._finished_epochs = finished
        self._variants, self._n_train, self._max_epochs, self._every = variants, n_train, max_epochs, every_s
        self._variant_of = {r["trial_id"]: r["variant"] for r in st.trials()}
        self._group_of = {t.trial_id: key for key, members in (groups or {}).items() for t in members}
        self._pending_in = {key: len(members) for key, members in (groups or {}).items()}
        if layouts is not None and set(layouts) != set(groups or {}):
            raise ValueError(f"layouts must give each group's: got {sorted(layouts)} for {sorted(groups or {})}")
        self._layout = layouts or {key: GroupLayout(None, 1, None) for key in (groups or {})}
        self._priced = groups is not None
        self._first, self._later, self._open = {}, {}, {}  # group -> [seconds, rounds] ([seconds, trials] open)
        self._live = {}
        self._trial_epochs = 0
        self._ended_since_line = self._epochs_since_line = 0
        self._start = self._last = time.monotonic()

    def started(self, trial_ids):
        for i in trial_ids:
            self._live[i] = 0
            if i in self._group_of:
                self._pending_in[self._group_of[i]] -= 1
        self._counts["pending"] -= len(trial_ids)
        self._counts["running"] += len(trial_ids)

    def epoch(self, trial_id, epoch, seconds=0.0):
        """seconds: the trial's share of the epoch's time (the trainer's on_epoch gives it)."""
        self._live[trial_id] = epoch
        self._trial_epochs += 1
        self._epochs_since_line += 1
        if trial_id in self._group_of:
            spent = self._open.setdefault(self._group_of[trial_id], [0.0, 0])
            spent[0] += seconds
            spent[1] += 1

    def finished(self, result):
        self._live.pop(result.trial_id, None)
        self._counts["running"] -= 1
        self._counts[result.status] += 1
        self._finished_epochs.append(result.epochs or 0)
        self._ended_since_line += 1
        variant = self._variant_of[result.trial_id]
        # NaN (a trial that diverged before its first finite validation) is never below the best.
        if result.val_metric < self._best.get(variant, float("inf")):
            self._best[variant] = result.val_metric

    def group_epoch(self):
        """A group's epoch is over, with its trials' epochs and results counted."""
        for key, (seconds, trials) in self._open.items():
            table = self._later if key in self._first else self._first
            spent = table.setdefault(key, [0.0, 0])
            spent[0] += seconds
            spent[1] += math.ceil(trials / max(1, self._layout[key].per_round))
        self._open = {}
        if self._ended_since_line or time.monotonic() - self._last >= self._every:
            self.log()

    def flush(self):
        """Logs a last line unless the last one already holds every epoch and result."""
        if self._epochs_since_line or self._ended_since_line:
            self.log()

    def _scale(self, key):
        """What a round of group `key` weighs against other groups': its trials' parameters (the buckets
        squared without them) times the trials a round holds."""
        layout = self._layout[key]
        width = layout.per_round if layout.slots is None else min(layout.per_round, layout.slots)
        return (key[1] ** 2 if layout.params is None else layout.params) * width

    def _price(self, key, steady):
        """Seconds per round of group `key`: its own epochs after the first, else the nearest group's, scaled;
        None before any group has trained a second epoch."""
        if key in steady or not steady:
            return steady.get(key)
        program, bucket = key
        near = min(steady, key=lambda k: (k[0] != program, abs(math.log(k[1] / bucket)), k))
        return steady[near] * self._scale(key) / self._scale(near)

    def eta_seconds(self):
        """The seconds the unfinished trials are expected to take, or None before a group's second epoch."""
        if not self._priced:
            return None
        steady = {k: seconds / rounds for k, (seconds, rounds) in self._later.items() if rounds}
        survival = epochs_survival(self._finished_epochs, self._live.values(), self._max_epochs)
        live = {}
        for trial_id, epoch in self._live.items():
            live.setdefault(self._group_of[trial_id], []).append(epoch)
        left = 0.0
        for key in self._layout:
            if not live.get(key) and not self._pending_in[key]:
                continue
            price = self._price(key, steady)
            if price is None:
                return None
            layout = self._layout[key]
            left += price * expected_rounds(survival, live.get(key, []), self._pending_in[key], layout.slots,
                                            max(1, layout.per_round))
        # A group's first epoch took longer than its later ones by its compiling (none where the trainer compiled
        # it ahead): each group yet to start is expected to take as much more as the measured ones did on average.
        extra = [max(self._first[k][0] - self._first[k][1] * steady[k], 0.0) for k in steady if k in self._first]
        to_start = [k for k, n in self._pending_in.items() if n and k not in self._first and k not in self._open]
        if extra:
            left += len(to_start) * sum(extra) / len(extra)
        return left

    def line(self):
        c = self._counts
        total = sum(c.values())
        ended = c["done"] + c["diverged"]
        bar = "#" * round(20 * ended / max(total, 1))
        best = " ".join(f"{v} {self._best[v]:.4g}" if v in self._best else f"{v} -" for v in self._variants)
        elapsed = time.monotonic() - self._start
        rate = self._trial_epochs / elapsed if elapsed > 0 else 0.0
        left = self.eta_seconds()
        eta = "?" if left is None else str(datetime.timedelta(seconds=round(left)))
        return (f"[{bar:<20}] {ended}/{total} finished ({c['done']} done, {c['diverged']} diverged), "
                f"{c['running']} running, {c['pending']} pending | best val: {best} | "
                f"{rate * self._n_train:.0f} updates/s | ETA {eta}")

    def log(self):
        self._last = time.monotonic()
        self._ended_since_line = self._epochs_since_line = 0
        logging.info("%s", self.line())
