"""odyssey.progress: the study's progress line and its ETA, against sums worked by hand and brute force."""

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest

from odyssey import progress


class _FakeStore:
    """What Progress reads of a store: the trials' rows, their counts and the best metric per variant."""

    def __init__(self, variants):
        self._rows = [{"trial_id": i, "variant": v, "status": "pending", "epochs": None}
                      for i, v in enumerate(variants)]

    def trials(self):
        return self._rows

    def counts(self):
        return {"pending": len(self._rows), "running": 0, "done": 0, "diverged": 0}

    def best_by_variant(self):
        return {}


def _progress(groups, max_epochs=10, layouts=None):
    ids = sorted(i for members in groups.values() for i in members)
    variant = {i: ("FGR" if program == "FGR" else "V") for (program, _), members in groups.items() for i in members}
    trials = {key: [SimpleNamespace(trial_id=i) for i in members] for key, members in groups.items()}
    return progress.Progress(_FakeStore([variant[i] for i in ids]), ("V", "FGR"), 1, max_epochs, 1e9, trials,
                             layouts)


def _train_alone(p, trial_id, seconds, first_epoch=1):
    """Epochs of one trial training alone in its group, each a group epoch of the given seconds."""
    for epoch, spent in enumerate(seconds, first_epoch):
        p.epoch(trial_id, epoch, spent)
        p.group_epoch()


def _done(trial_id, epochs):
    return SimpleNamespace(trial_id=trial_id, status="done", epochs=epochs, val_metric=1.0)


def test_the_eta_prices_each_group_at_its_own_measured_rate():
    mixed20, fgr20, mixed40, fgr40 = ("mixed", 20), ("FGR", 20), ("mixed", 40), ("FGR", 40)
    p = _progress({mixed20: [0, 1, 2, 3], fgr20: [4], mixed40: [5, 6], fgr40: [7]})
    assert p.eta_seconds() is None and p.line().endswith("| ETA ?")
    # A first epoch (5 s per trial, its compiling in it) prices nothing.
    p.started([0, 1])
    p.epoch(0, 1, 5.0)
    p.epoch(1, 1, 5.0)
    p.group_epoch()
    assert p.eta_seconds() is None and p.line().endswith("| ETA ?")
    # mixed20's second epoch: (1.0 + 1.5) / 2 = 1.25 s per trial epoch. No trial has finished, so each is priced
    # at max_epochs = 10. mixed20: 2 pending x 10 + 2 live x 8 left = 36 epochs x 1.25 = 45. fgr20 takes the
    # nearest group's price, mixed20's: 10 x 1.25 = 12.5; mixed40 and fgr40 take it x (40 / 20)^2 = 5 s:
    # 30 x 5 = 150. The first epoch took 10 - 2 x 1.25 = 7.5 s more than a later one: 3 groups to start, 22.5.
    p.epoch(0, 2, 1.0)
    p.epoch(1, 2, 1.5)
    p.group_epoch()
    assert p.eta_seconds() == pytest.approx(230.0)
    assert p.line().endswith("| ETA 0:03:50")
    # Trial 0 ends after 2 epochs and trial 1 goes on, so half the trials end at 2 epochs and half, for all
    # that is known, run to 10: a trial not started takes 6 epochs, trial 1 8 more. Trial 2 takes trial 0's
    # slot. mixed20: 1 pending x 6 + trial 1's 8 + trial 2's 6 = 20 x 1.25 = 25; fgr20: 6 x 1.25 = 7.5; mixed40
    # and fgr40: 3 x 6 epochs x 5 = 90; compiling 22.5. In all 145 s.
    p.finished(_done(0, 2))
    p.started([2])
    p.group_epoch()
    assert p.eta_seconds() == pytest.approx(145.0)


def test_an_unmeasured_group_is_priced_from_its_own_program_first():
    fgr20, mixed40, fgr40 = ("FGR", 20), ("mixed", 40), ("FGR", 40)
    p = _progress({fgr20: [0], mixed40: [1], fgr40: [2]})
    p.started([0])
    _train_alone(p, 0, [9.0, 3.0])
    # fgr20 at 3 s (6 s more in its first epoch): its trial has 8 epochs left, 24 s; the two groups at bucket
    # 40 cost 3 x 4 = 12 s per epoch for 10 epochs each, 240 s, and 6 s each of compiling. In all 276 s.
    assert p.eta_seconds() == pytest.approx(276.0)
    p.epoch(0, 3, 3.0)
    p.finished(_done(0, 3))
    p.group_epoch()
    p.started([1])
    _train_alone(p, 1, [4.0, 1.0])
    # Trial 0 ended at 3 epochs and trial 1 has trained 2: trials last 3 epochs (mixed40's has 1 left, at
    # 1 s). fgr40 is priced from fgr20: 3 epochs x 12 s = 36 (mixed40, in its own bucket, would give 3 s), and
    # the mean compiling of the two groups measured, (6 + 3) / 2 = 4.5. In all 41.5 s.
    assert p.eta_seconds() == pytest.approx(41.5)


def test_a_groups_first_epoch_does_not_price_it_once_another_is_measured():
    mixed20, mixed40 = ("mixed", 20), ("mixed", 40)
    p = _progress({mixed20: [0], mixed40: [1]})
    p.started([0])
    _train_alone(p, 0, [8.0])
    p.epoch(0, 2, 2.0)
    p.finished(_done(0, 2))
    p.group_epoch()
    # mixed20 costs 2 s per trial epoch after its first, which took 6 s more. mixed40, yet to start: 2 epochs x
    # 2 x (40 / 20)^2 = 16 s, and 6 s of compiling.
    assert p.eta_seconds() == pytest.approx(22.0)
    # mixed40's first epoch (50 s, its compiling in it) does not price its last epoch: mixed20's price, scaled,
    # does (8 s); then its own second epoch (3 s). No group is left to start. Having outlasted trial 0, its
    # trial is expected, for all that is known, to run to max_epochs = 10: 8 more epochs x 3 s.
    p.started([1])
    _train_alone(p, 1, [50.0])
    assert p.eta_seconds() == pytest.approx(8.0)
    _train_alone(p, 1, [3.0], first_epoch=2)
    assert p.eta_seconds() == pytest.approx(24.0)


def _mean_epochs_redistributed(finished, live, max_epochs):
    """Expected epochs of a trial by Efron's redistribution to the right, a construction of the Kaplan-Meier
    estimate independent of its product form: each trial starts with an equal mass; in epoch order (an end
    before a trial that went on past the same epoch), a trial still training hands its mass in equal parts to
    every trial after it; mass no one is left to take ends at max_epochs."""
    order = sorted([(e, 0) for e in finished] + [(e, 1) for e in live])
    mass = [1.0 / len(order)] * len(order)
    expected = 0.0
    for i, (epochs, still_training) in enumerate(order):
        if not still_training:
            expected += mass[i] * epochs
        elif i + 1 < len(order):
            for j in range(i + 1, len(order)):
                mass[j] += mass[i] / (len(order) - i - 1)
        else:
            expected += mass[i] * max_epochs
    return expected


def test_the_epochs_left_are_the_kaplan_meier_estimate():
    survival = progress.epochs_survival
    # Nothing known: every trial runs to max_epochs; with no trial still training, the mean of the finished.
    assert survival([], [], 6) == [1, 1, 1, 1, 1, 1, 0]
    assert survival([], [3], 6) == [1, 1, 1, 1, 1, 1, 0]
    assert sum(survival([2, 5, 5, 7], [], 10)) == pytest.approx(19 / 4)
    # Ended at 1 and 3, one trial at 2 epochs so far: 1/3 end at 1; of the two past 2, the one at risk at 3
    # ends there.
    assert survival([1, 3], [2], 4) == pytest.approx([1, 2 / 3, 2 / 3, 0, 0])
    rng = np.random.default_rng(0)
    for _ in range(200):
        max_epochs = int(rng.integers(3, 30))
        finished = [int(e) for e in rng.integers(1, max_epochs + 1, rng.integers(1, 12))]
        live = [int(e) for e in rng.integers(1, max_epochs, rng.integers(0, 12))]
        got = sum(survival(finished, live, max_epochs))
        assert got == pytest.approx(_mean_epochs_redistributed(finished, live, max_epochs)), (finished, live)


def test_without_its_groups_the_progress_gives_no_eta():
    p = progress.Progress(_FakeStore(["V"]), ("V",), 1, 10, 1e9)
    p.started([0])
    _train_alone(p, 0, [2.0, 2.0])
    assert p.eta_seconds() is None and p.line().endswith("| ETA ?")


def test_a_group_in_one_round_pays_each_epoch_until_its_longest_trial_ends():
    mixed20, fgr20 = ("mixed", 20), ("FGR", 20)
    # mixed20: one vmapped chunk of its 3 slots, trials of 1000 parameters; fgr20: one slot, 1600 parameters.
    layouts = {mixed20: progress.GroupLayout(3, 3, 1000), fgr20: progress.GroupLayout(1, 1, 1600)}
    p = _progress({mixed20: [0, 1, 2], fgr20: [3]}, max_epochs=4, layouts=layouts)
    p.started([0, 1, 2])
    for i in range(3):
        p.epoch(i, 1, 2.0)
    p.group_epoch()
    assert p.eta_seconds() is None
    for i in range(3):
        p.epoch(i, 2, 1.0)
    p.finished(_done(0, 2))
    p.group_epoch()
    # A round of mixed20 (its whole epoch) costs 3 s, its first 3 s more. One trial of three ended at 2 epochs,
    # the two still training are past it: survival (1, 1, 2/3, 2/3, 0), so each has 2 epochs left: 2 rounds,
    # 6 s. fgr20's trial, not started, takes 1 + 1 + 2/3 + 2/3 = 10/3 epochs at mixed20's price for one trial
    # of its three, scaled by the parameters, 3 x 1600 / (1000 x 3) = 1.6 s; and 3 s of compiling.
    assert p.eta_seconds() == pytest.approx(6 + 10 / 3 * 1.6 + 3)
    # Priced per trial epoch instead (no layouts), mixed20 would cost 1 s a trial epoch, 4 trial epochs, and
    # fgr20 (its bucket the same) 1 s.
    q = _progress({mixed20: [0, 1, 2], fgr20: [3]}, max_epochs=4)
    q.started([0, 1, 2])
    for epoch, seconds in ((1, 2.0), (2, 1.0)):
        for i in range(3):
            q.epoch(i, epoch, seconds)
        if epoch == 2:
            q.finished(_done(0, 2))
        q.group_epoch()
    assert q.eta_seconds() == pytest.approx(4 + 10 / 3 + 3)


def _epochs_left_distribution(survival, epochs):
    """P(R = r) of a trial at `epochs` that goes on, as {r: probability}, from the survival table directly."""
    if survival[epochs] == 0:
        return {1: 1.0}
    out = {}
    for r in range(1, len(survival) - epochs):
        prob = (survival[epochs + r - 1] - survival[epochs + r]) / survival[epochs]
        if prob > 0:
            out[r] = prob
    return out


def _rounds_by_enumeration(survival, live, pending, slots, per_round):
    """Mean and variance of the rounds a group runs, over every joint outcome of its trials' epochs left, each
    outcome played out slot by slot as the trainer refills its slots (pending trials in order, into the slots
    freed by the epoch's ends in slot order, from the next epoch on)."""
    dists = [_epochs_left_distribution(survival, a) for a in live] + [_epochs_left_distribution(survival, 0)] * pending
    mean = second = 0.0
    for outcome in itertools.product(*[d.items() for d in dists]):
        prob = math.prod(q for _, q in outcome)
        left = [r for r, _ in outcome]
        slot, queue = left[:len(live)] + [0] * (slots - len(live)), left[len(live):]
        for j in range(slots):
            if slot[j] == 0 and queue:
                slot[j] = queue.pop(0)
        rounds = 0
        while any(slot):
            rounds += math.ceil(sum(1 for x in slot if x) / per_round)
            ended = []
            for j in range(slots):
                if slot[j]:
                    slot[j] -= 1
                    if not slot[j]:
                        ended.append(j)
            for j in ended:
                if queue:
                    slot[j] = queue.pop(0)
        mean += prob * rounds
        second += prob * rounds ** 2
    return mean, second - mean ** 2


SURVIVAL = [1.0, 0.8, 0.5, 0.5, 0.2, 0.0]


@pytest.mark.parametrize("survival,live,pending,slots,per_round", [
    (SURVIVAL, [2, 1, 3], 0, 3, 1),      # every trial epoch paid for
    (SURVIVAL, [2, 1, 3], 0, 3, 3),      # one round an epoch: the longest trial
    (SURVIVAL, [2, 1, 3], 0, 3, 2),      # two trials a round: the Poisson-binomial count
    (SURVIVAL, [2, 1, 3, 1], 1, 5, 3),   # three a round, a pending trial in the free slot
    (SURVIVAL, [1, 4], 2, 4, 2),         # pending trials start at once in free slots
    (SURVIVAL, [], 3, 3, 3),             # a group not started
    (SURVIVAL, [1], 3, 2, 1),            # waves, one trial a round
    ([1.0, 0.5, 0.0, 0.0, 0.0], [3, 1], 0, 2, 2),  # a trial past every ending the table knows: one epoch left
])
def test_expected_rounds_are_exact_where_a_sum_gives_them(survival, live, pending, slots, per_round):
    want, _ = _rounds_by_enumeration(survival, live, pending, slots, per_round)
    assert progress.expected_rounds(survival, live, pending, slots, per_round) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("live,pending,slots,per_round", [
    ([2, 1], 2, 2, 2),
    ([3, 1, 2], 2, 3, 2),
    ([], 4, 2, 2),
    ([1, 1, 4], 2, 3, 3),
])
def test_expected_rounds_with_trials_waiting_for_slots_match_the_enumeration(live, pending, slots, per_round):
    # Monte Carlo: within 4 standard errors of the exact mean (the enumeration's variance), for a large and the
    # default number of samples.
    want, variance = _rounds_by_enumeration(SURVIVAL, live, pending, slots, per_round)
    for samples in (20000, 256):
        got = progress.expected_rounds(SURVIVAL, live, pending, slots, per_round, samples=samples)
        assert abs(got - want) <= 4 * math.sqrt(variance / samples), (samples, got, want)


def test_layouts_must_cover_the_groups():
    with pytest.raises(ValueError, match="layouts must give each group's"):
        _progress({("mixed", 20): [0], ("FGR", 20): [1]}, layouts={("mixed", 20): progress.GroupLayout(1, 1, 10)})


def test_still_training_reads_the_survival_table():
    p = progress.still_training(SURVIVAL, [0, 2, 5])
    np.testing.assert_allclose(p[0], SURVIVAL[:5])
    np.testing.assert_allclose(p[1], [1.0, 1.0, 0.4, 0.0, 0.0])  # S[2..] / S[2] = 0.5, 0.5, 0.2, 0 over 0.5
    np.testing.assert_allclose(p[2], [1.0, 0.0, 0.0, 0.0, 0.0])


def test_the_best_validation_shown_counts_a_diverged_trials_best_epoch_and_not_its_nan():
    """A trial that diverged after its best epoch keeps that epoch's validation metric (odyssey.train), which the
    line's best values count; one that diverged before any (NaN) changes nothing."""
    p = _progress({("mixed", 20): [0, 1, 2], ("FGR", 20): [3]})
    p.started([0, 1, 2, 3])
    p.finished(SimpleNamespace(trial_id=0, status="done", epochs=3, val_metric=2.0))
    p.finished(SimpleNamespace(trial_id=1, status="diverged", epochs=4, val_metric=1.5))
    p.finished(SimpleNamespace(trial_id=2, status="diverged", epochs=1, val_metric=float("nan")))
    p.finished(SimpleNamespace(trial_id=3, status="diverged", epochs=1, val_metric=float("nan")))
    assert "best val: V 1.5 FGR - |" in p.line(), p.line()
