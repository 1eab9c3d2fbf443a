"""The multi-trial trainer: many trials of online momentum SGD in one jit-compiled, vmapped program.

Protocol (DESIGN §3, paper Section 4.2), per trial: one sequence per update in a fresh shuffle each epoch,
Gaussian input noise of the trial's std at every presentation, Nesterov (or classical) momentum in
Sutskever's form with the learning rate scaled by (1 − momentum), optional element-wise gradient clipping,
full BPTT; after each epoch the validation metric, the best parameters kept, a stop at `max_epochs` or after
`patience` epochs without improvement, and the test metric of the best epoch.

How trials run together. Trials are grouped by (program, hidden-size bucket): each group is one compiled
program that trains K slots at once; the bucket fixes the padded hidden size, the program the cell: FGR's
own, or `MIXED`, V's cell with six per-trial switches that make it compute any of the other eight variants
(`odyssey.cells.to_mixed`; `mix_variants=False` gives every variant its own program). Per-trial
hyperparameters and switches are arrays. A trial's hidden size is zero-padded to its bucket's size and
its gradient multiplied by a 0/1 mask of its own units, which keeps it exactly equal to the unpadded trial
(FGR included, DESIGN §6). A slot whose trial stops (early stopping, the epoch bound, divergence) takes the
group's next pending trial at the next epoch, so slots do not idle while work is pending. With
`checkpoints` (`odyssey.checkpoints`), a group saves its live trials every few minutes, and a run stopped
in the middle of a group resumes them from there rather than from their first epochs. Every random draw
of a trial (initial weights, data order, noise) comes from its own seed and its own epoch counter, never
from the batch, so its numbers do not depend on the batch around it (up to float round-off of batched
matrix products: bitwise equal on CPU in the tests, ~1e-7 relative otherwise). The one exception is
chosen by the caller: with `order_seed` every trial takes its data order from that seed instead of its own
(with `order_stratum`, from that seed and its own).
The programs' float32 matrix products are true float32 on every device (`matmul_precision`), not the TF32
that JAX's default setting allows on recent NVIDIA GPUs.

Choices, by measurement (bench/trainer_speed.py, 2 shared CPU cores; sequence-updates/s summed over trials):
* One program for eight variants, FGR apart. On a GPU a step of a few dozen small trials is bound by
  launches, not work (H200, 64 trials of V, JSB shape: N = 40 ran 3× the sequence-updates/s of N = 200 with
  1/25 of the work), and one program per variant split a study into 45 groups per task of ≤ 61 trials each,
  run one after another. The mixed program makes them 5 groups of ~140-530 trials (plus FGR's 5): on an
  H100 (2026-11-27, unroll 8) 512 trials of it ran 3.9× the sequence-updates/s of 64 at N = 40 (JSB shape,
  353,037 against 90,395; TIMIT shape 44,362 against 10,314) and 1.1-1.3× at N = 200. A
  "universal" cell with FGR too would carry FGR's 3N×3N gate recurrence for every trial, and FGR costs 1.9×
  V per update at N = 100 and 3.3× at N = 200 (JSB shape, one trial on CPU: V 416 and 201, FGR 217 and 61).
  The switches cost a few selects per step; three-gate variants run V's four gates (their fourth is zero).
* Chunks: a device's slots run as vmapped chunks one after another (`lax.map`); a chunk whose trials are
  all frozen is skipped; a chunk of one trial runs without vmap (+18 % at N = 100 over a vmap of one).
  On a CPU a chunk holds ~2 MiB of weights per layer (`default_trials_per_chunk`: at N = 200, 32 trials
  ran 0.99x one trial's rate in chunks of 1, 0.92x in chunks of 2 and 0.82x in chunks of 4, and 8 trials
  1.04-1.10x in chunks of 2); on an accelerator ~512 MiB (a whole group of the full study in one
  vmap: H100, N = 200, 512 trials, 1.16x the rate of chunks of 128). Once a group has no pending trials, its
  live trials are packed into the first chunks (`odyssey.group.Group.pack`), so ended trials stop costing time where a
  group runs in several chunks.
* CPU cores and code: XLA runs one device's program on one core, so on a CPU `use_cpu_cores` (the study
  command's default) makes one JAX device per core and a group's trials are sharded over them like over
  accelerators: on 2 cores, 8 trials at N = 200 ran 1.6x and 96 at N = 40 2.8x one trial's rate (JSB
  shape, paired), against 1.0-1.1x and 1.8x on one device. The README's quick study: 66 s against 81 s
  (its first epochs are compiles). The programs are compiled preferring 512-bit vectors on CPUs
  (`compiler_options`): one trial 1.1-1.2x.
* Padding: sequences of a split are padded to its longest (one compiled shape), but when their lengths
  differ each update runs the LSTM loops only up to the longest sequence among the chunk's live trials
  (`fast_lstm.lstm_layer(steps=...)`; exact, the rest is padding). On the JSB stand-in's training
  chorales (mean 63.5 steps, padded to 143) that is 1.40× (N = 100) and 1.47× (N = 200) for one trial
  and 1.39× and 1.36× for 8 trials; the input projection, noise and loss still run over the padded length.
  The LSTM loops take no mask where no sequence can end before them (equal lengths, or one trial trimmed
  to its own sequence): exact, ~3 % of the layer's time. With each trial's own shuffle, a chunk of K trials
  runs to the longest of K random sequences: on the standard JSB file (229 chorales, mean 59.3 steps,
  longest 128) 1.73x the steps of one sequence at K = 16 and 2.15x at K = 487. `order_seed` (one data
  order for all trials; it changes the numbers, so it is the caller's choice) brings that to 1x for
  trials at the same epoch, and with `order_stratum` = 8 (each trial its own order within strata of 8
  sequences of similar length that the shared order picks) to 1.02-1.03x (bench/data_order_check.py).
* The update: loss and gradient are checked for finiteness before the step, so the step writes θ' and v'
  (frozen where the trial is not kept) in one pass per array; checking the new weights instead needed
  them materialized, a reduction over them and two more selecting passes, and for one trial the loop's
  expand/squeeze of the batch axis copied the weights at every update. Weights that overflow to ±inf from
  finite values are caught once per epoch. Together 1.11× for one trial (JSB shape, N = 200, paired A/B).
* Compiling: on an accelerator, a group's programs are compiled (`odyssey.group.Group.compile_ahead`) in a
  background thread while the group before it trains, so only the first group waits for the compiler. On an
  H200 a JSB group's first epoch took 10-12 s against 0.7-0.8 s for the next (LSTM loops unrolled by 8). On
  an H100, in the JSB study of 9 × 200 trials, the next group's program (12-22 s to compile) was ready before
  the group before it ended, and the first epoch of a group took what the others took. Not on CPUs: the
  README's quick study (then 9 groups, 2 cores) took 101.7 s without and 110.2 s with it, the compiler and
  the training sharing the two cores. Within a process, groups of one setting (task, program, slots per
  chunk, loops, precision, options) share their jitted functions (`odyssey.programs.group_programs`, the 32
  last settings), which keep one compiled program per shape: a second `train_trials` call of the same trials
  compiles nothing (2 CPU cores: a test that stops and resumes the trainer's 8 trials took 21.2 s with its
  own programs, 0.7 s with those of an earlier run).
* Recurrent products in bfloat16 (`recurrent_dtype`, off by default): at N = 200 a step of many trials
  on a GPU is bound by streaming every trial's recurrent weights (bench/README.md), which 2-byte weights
  halve. What it changes, measured on CPU (bench/recurrent_dtype_check.py, 54 JSB trials of all nine
  variants): a trial's best validation NLL moved by a median 8.7e-5 relative, against 7.0e-3 for a new
  training seed; its speed on a GPU is not measured yet.
* Hidden sizes: the default buckets 40, 80, ..., 200 pad a trial of the search's sizes (20..200) to less
  than twice its own N (arithmetic, not a measurement; its recurrent weights then grow by up to 4×).
* The LSTM loops as Pallas kernels (`lstm_loops="pallas"`, off by default; `odyssey.pallas_loops`): each
  loop one kernel, one program per trial running its own steps, instead of XLA loops that launch a few
  kernels per time step. Compiled for an H100 (bench/gpu_kernels.py), an update of the JSB study's first
  group launches 51 kernels instead of 68 plus 54 per 8 time steps (~500 at 60 steps); its speed on a GPU
  is not measured yet. The mixed program's and FGR's (and V's); a variant's own program otherwise
  (`mix_variants=False`) keeps the XLA loops. On a CPU the kernels are interpreted (slow).

The trial axis is sharded over all local devices (`jax.sharding`, a 1-D mesh named "trials"); data are
replicated. With several hosts, call `jax.distributed.initialize()` first (see `initialize_distributed`).
"""

import concurrent.futures
import dataclasses
import math
import os
import time
from typing import Callable, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from odyssey import cells, checkpoints as ckpt, nets, tasks
from odyssey.group import Group
# The trainer's names from before its parts had modules of their own, for the code that uses them. (The
# constants are read where they are defined: to change one, set it there, e.g. `odyssey.layout.EVAL_BYTES`.)
from odyssey.layout import (ACCELERATOR_CHUNK_BYTES, CPU_CHUNK_BYTES, DEFAULT_BUCKETS, EVAL_BYTES, MIXED,  # noqa: F401
                            bucket_of, chunk_layout, default_trials_per_chunk, eval_sequences_per_step, group_layout,
                            group_trials, program_of)
from odyssey.programs import (COMPILER_OPTIONS, MATMUL_PRECISIONS, NOISE_BLOCK, check_precision,  # noqa: F401
                              compiler_options, group_loops, recurrent_setting)


@dataclasses.dataclass(frozen=True)
class Trial:
    """One random-search trial: its hyperparameters and its seed (DESIGN §4)."""

    trial_id: int
    variant: str
    hidden_size: int
    learning_rate: float
    momentum: float
    input_noise: float
    nesterov: bool = True
    clip: bool = False
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class TrialResult:
    """How a trial ended; epochs are counted from 1. A trial that diverged (non-finite loss, weights or
    validation metric; it is frozen at that epoch) keeps the metrics of its best epoch before, as early stopping
    would give it: its validation never improves again. They are NaN, and best_epoch 0, if it diverged before
    its first finite validation metric."""

    trial_id: int
    status: str  # "done" or "diverged"
    epochs: int
    best_epoch: int
    val_metric: float
    test_metric: float
    n_params: int
    train_seconds: float


def initialize_distributed(**kwargs):
    """Joins several hosts into one JAX runtime; call it on every host before anything else touches JAX.

    A thin wrapper of `jax.distributed.initialize` (coordinator address, process count and id as keyword
    arguments or from the cluster's environment); the trial mesh then spans `jax.devices()`.
    """
    jax.distributed.initialize(**kwargs)


def use_cpu_cores(count: int | None = None) -> int | None:
    """Makes JAX's CPU platform `count` devices (default: one per core this process may use), so that
    `train_trials`, which shards its trials over all devices, trains them on every core.

    One CPU device runs a program on one core (XLA gives a single trial's loops no second core), so a study
    on a 2-core machine left a core idle. With one device per core, each trains its share of a group's
    trials at once: on 2 cores (bench/trainer_speed.py, JSB shape, paired against one trial on one device),
    8 trials at N = 200 ran 1.6x, 32 at N = 100 1.7x and 96 at N = 40 2.8x one trial's rate (one device:
    1.0-1.1x, 1.2x, 1.8x). The numbers do not change beyond float round-off (tests: 4 devices against 1).
    Without effect on accelerators, whose devices `train_trials` uses; the CPU devices are only made.

    It must run before JAX's first computation (as `jax_num_cpu_devices` must); later it changes nothing,
    logs a warning and returns None.

    Returns:
      the number of CPU devices set, or None when it came too late.
    """
    if count is None:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"use_cpu_cores: count must be a positive int, got {count!r}")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as err:  # JAX has started its backends: the CPU platform keeps its devices
        logging.warning("use_cpu_cores(%d) came too late, JAX keeps its CPU devices: %s", count, err)
        return None
    return count


def default_compile_ahead(device) -> bool:
    """Whether `train_trials` compiles each group while the one before it trains, by default: on accelerators,
    whose host is otherwise idle, not on CPUs, where the compiler and the training share the cores."""
    return device.platform != "cpu"


class Stopped(Exception):
    """`train_trials` stopped at the end of an epoch because its `stop` callable asked it to.

    The trials that ended before the stop have had their on_result calls; those the stopped group was training
    are saved in the call's checkpoints (where it has them), and the trials of later groups have not started.
    Run again with the same checkpoints, every trial ends with the numbers it would have had without the stop.

    Attributes:
      saved: the trials saved to the checkpoints at the stop (0: none, or the stop came between two groups).
      group: (program, bucket) of the group stopped in training, or None between two groups.
    """

    def __init__(self, saved: int = 0, group: tuple | None = None):
        where = "between two groups" if group is None else f"in group {group[0]} N<={group[1]}"
        super().__init__(f"training stopped on request {where}; {saved} trials in training saved")
        self.saved, self.group = saved, group


def early_stopping(best_val, best_epoch, epoch, val, max_epochs, patience):
    """The paper's stopping rule after one epoch, for arrays of trials (numpy, host side).

    Args:
      best_val: float[K], the best validation metric so far (inf before the first epoch).
      best_epoch: int[K], the epoch that reached it (0 before the first).
      epoch: int[K], the epoch just finished (counted from 1).
      val: float[K], its validation metric (lower is better; NaN counts as no improvement).
      max_epochs: the epoch bound.
      patience: epochs without improvement that end a trial.

    Returns:
      (best_val, best_epoch, improved bool[K], stop bool[K]).
    """
    improved = val < best_val
    best_val = np.where(improved, val, best_val)
    best_epoch = np.where(improved, epoch, best_epoch)
    stop = (epoch >= max_epochs) | (epoch - best_epoch >= patience)
    return best_val, best_epoch, improved, stop


def _check_trials(trials):
    seen = set()
    for t in trials:
        cells.spec(t.variant)
        if t.trial_id in seen:
            raise ValueError(f"trial_id {t.trial_id} appears twice")
        seen.add(t.trial_id)
        if t.hidden_size < 1:
            raise ValueError(f"trial {t.trial_id}: hidden_size must be >= 1, got {t.hidden_size}")
        if not (t.learning_rate > 0 and 0 <= t.momentum < 1 and t.input_noise >= 0):
            raise ValueError(f"trial {t.trial_id}: need learning_rate > 0, 0 <= momentum < 1, input_noise >= 0; "
                             f"got {t.learning_rate}, {t.momentum}, {t.input_noise}")


def train_trials(task: str, splits: dict, trials: Sequence[Trial], *, max_epochs: int = 150, patience: int = 15,
                 trials_per_batch: int = 64, hidden_buckets: Sequence[int] = DEFAULT_BUCKETS,
                 eval_chunk: int = 16, trials_per_chunk: int | None = None, on_epoch: Callable | None = None,
                 on_result: Callable | None = None, on_group_epoch: Callable | None = None, devices=None,
                 dtype=np.float32, compile_ahead: bool | None = None, mix_variants: bool = True,
                 recurrent_dtype=None, order_seed: int | None = None, order_stratum: int | None = None,
                 matmul_precision: str | None = "float32",
                 checkpoints: ckpt.Checkpoints | None = None, lstm_loops: str = "xla",
                 stop: Callable[[], bool] | None = None) -> list[TrialResult]:
    """Trains trials to the end of the paper's protocol, many at once.

    Args:
      task: "jsb", "timit" or "iam_online".
      splits: dict train/valid/test, as the data loaders return them.
      trials: the trials to train, in the order they should start.
      max_epochs: the epoch bound (paper: 150).
      patience: stop after this many epochs without improvement of the validation metric (paper: 15).
      trials_per_batch: the most trials one compiled program trains at once, rounded up to whole equal chunks
        on every device (`odyssey.layout.group_layout`: by fewer than chunks x devices); results never depend
        on it.
      hidden_buckets: padded hidden sizes; a trial runs padded to the smallest bucket that holds it.
      eval_chunk: sequences per evaluation step (per trial; all trials of a group evaluate together), fewer
        where the step's arrays would outgrow `EVAL_BYTES` (`eval_sequences_per_step`). Speed and memory only.
      trials_per_chunk: the most trials one device trains in one vmapped step; a device's slots run in
        chunks, one after another (default `default_trials_per_chunk`: about 2 MiB of weights per layer
        per chunk on a CPU, 512 MiB on an accelerator).
        Speed only; results never depend on it.
      on_epoch: called as on_epoch(trial_id, epoch, train_loss, val_metric, seconds) after every epoch of
        every live trial; train_loss is the mean over the epoch's sequences of the summed sequence loss,
        seconds the trial's share of the group's wall time for that epoch.
      on_result: called with each `TrialResult` as soon as its trial ends.
      on_group_epoch: called with no arguments once after each epoch of the trials trained together (a group
        of one program and hidden bucket), after that epoch's on_epoch calls, the on_result calls of the
        trials it ended, and its checkpoint: where a caller's view of the study is whole epochs (the study's
        progress lines are logged there).
      devices: the devices to shard the trial axis over (default: all devices, of every host).
      dtype: of parameters and data; float64 (with `jax.enable_x64`) serves tests of exactness.
      compile_ahead: compile each group's programs in a background thread while the group before it
        trains (default `default_compile_ahead`: on accelerators, not on CPUs). Speed only; results never
        depend on it.
      mix_variants: train the trials of the eight variants other than FGR in one program per hidden bucket
        (`MIXED`: V's cell with per-trial switches, `odyssey.cells.to_mixed`) rather than one per variant.
        The same numbers up to float round-off (a variant's products run over V's four gates, with zeros).
        Faster on both kinds of device: on a GPU by the size of its programs (module docstring), on 2 CPU
        cores by compiling 2 programs instead of 9 (the README's quick study: 119 s against 167 s), though
        the mixed cell's update cost 0-15 % more there (one trial, JSB shape, N = 100 and 200).
      recurrent_dtype: the operand dtype of the LSTM loops' recurrent products in training and evaluation,
        e.g. jnp.bfloat16: the recurrent weights are rounded to it once per sequence and each step's vector
        at every step, the products accumulate in `dtype` (`odyssey.fast_lstm.lstm_layer`). The weights,
        their updates and everything else stay in `dtype`. None (default) or `dtype`: no rounding.
      order_seed: None (default): each trial shuffles the training sequences every epoch by its own seed. An
        int in [0, 2**31): every trial's epoch e visits them in one order drawn from this seed (a uniform
        shuffle per epoch still, the same for all trials), which changes the numbers. Trials at the same
        epoch then present the same sequence at each update, so its loops run to that sequence's length,
        not to the longest of K random ones: on the standard JSB file an epoch's loop steps drop 1.73x for
        16 trials and 2.15x for 487 (bench/data_order_check.py). A trial's numbers still depend on its own
        hyperparameters and seeds and this seed only, not on the trials beside it.
      order_stratum: None (default), or with `order_seed` an int m >= 1: each trial visits the sequences in
        an order of its own that keeps the shared order's lengths. The training sequences sorted by length
        fall into strata of m; the order drawn from `order_seed` picks the stratum of each update, and the
        trial's own seed which of the stratum's sequences it presents there (`odyssey.programs.epoch_order`).
        Each trial still sees a uniform shuffle every epoch, independent of its other draws, and trials at
        the same epoch present sequences of one stratum at each update: on the standard JSB file, 8 to a
        stratum, an update's loops run 1.025x the steps of the shared order against 2.15x for 512 trials'
        own orders, while two trials present the same sequence at an update with probability 1/8, not 1
        (bench/data_order_check.py). m = 1 is `order_seed`'s shared order. It changes the numbers.
      matmul_precision: the precision of the programs' float32 matrix products, as
        `jax.default_matmul_precision` names it. "float32" (default): true float32 products, the paper's
        arithmetic, on every device. "tensorfloat32": inputs rounded to TF32 (10-bit mantissa) on GPUs with
        TF32 tensor cores (NVIDIA Ampere and later), float32 elsewhere; it changes the numbers there. None:
        the caller's `jax.default_matmul_precision` setting, whose default lets JAX take TF32 on those GPUs
        and bfloat16 passes on TPUs (JAX's "Matmul precision" docs). A CPU computes float32 products whatever
        the setting. The programs are traced under the setting, so it holds in the background compile
        thread and wherever they run. float64 products (`dtype`) are unaffected.
      checkpoints: an `odyssey.checkpoints.Checkpoints`, or None (default: none). Each group saves its live
        trials there at the end of an epoch, at most every `checkpoints.every_seconds`, and removes its file
        when it ends; a trial of `trials` that has a saved state resumes from it (in the first slots of its
        group), with the numbers it would have had without the stop: every random draw of a trial comes from
        its seed and its epoch counter. Saved trials that are not in `trials` are left alone until the
        call returns, when the saved states of all of `trials` are removed.
      lstm_loops: how the LSTM layers' time loops run in training and evaluation. "xla" (default): XLA
        loops (`odyssey.fast_lstm`). "pallas": one Pallas kernel per loop and layer, each trial's program
        running its own steps (`odyssey.pallas_loops`), for the mixed program's, FGR's and V's; the other
        variants' own programs (`mix_variants=False`) keep XLA's. On GPUs; on CPUs it runs in Pallas'
        interpret mode (exact, slow: for tests). The same numbers up to the order of the sums in the
        recurrent products. Speed only.
      stop: called with no arguments before each group starts and at the end of each of its epochs (after
        on_group_epoch); once it returns True, the group in training saves its live trials to `checkpoints`
        there and then, whatever `checkpoints.every_seconds` says, and `Stopped` is raised: a stop asked for
        in the middle of an epoch loses nothing but the rest of that epoch. (The study command asks on
        SIGTERM and Ctrl-C.) None (default): never.

    Returns:
      The results, in the order of `trials`.

    Raises:
      Stopped: `stop` asked to stop.
      ValueError: bad arguments; or checkpoints saved by a run of other settings (task, dtypes, data-order
        seed, product precision), or a saved trial whose fields differ from the trial of that id here.
    """
    spec = tasks.get_task(task)
    trials = list(trials)
    _check_trials(trials)
    bad_chunk = trials_per_chunk is not None and trials_per_chunk < 1
    if max_epochs < 1 or patience < 1 or trials_per_batch < 1 or bad_chunk:
        raise ValueError(f"need max_epochs, patience, trials_per_batch, trials_per_chunk >= 1; got {max_epochs}, "
                         f"{patience}, {trials_per_batch}, {trials_per_chunk}")
    rdt = recurrent_setting(recurrent_dtype, dtype)
    check_precision(matmul_precision)
    bad_seed = isinstance(order_seed, (bool, np.bool_)) or not isinstance(order_seed, (int, np.integer, type(None)))
    if bad_seed or (order_seed is not None and not 0 <= order_seed < 2**31):
        raise ValueError(f"order_seed must be None or an int in [0, 2**31), got {order_seed!r}")
    if order_stratum is not None:
        bad = isinstance(order_stratum, (bool, np.bool_)) or not isinstance(order_stratum, (int, np.integer))
        if bad or order_stratum < 1 or order_seed is None:
            raise ValueError(f"order_stratum must be None or, with an order_seed, an int >= 1; got {order_stratum!r} "
                             f"with order_seed {order_seed!r}")
    missing = [name for name in ("train", "valid", "test") if name not in splits]
    if missing:
        raise ValueError(f"splits lack {missing}; the loaders return train, valid and test")
    arrays = {name: tasks.to_arrays(spec, splits[name], dtype) for name in ("train", "valid", "test")}
    n_in = arrays["train"].xs.shape[-1]
    mesh = Mesh(np.asarray(devices if devices is not None else jax.devices()), ("trials",))
    group_loops(lstm_loops, "V", mesh.devices.flat[0].platform)  # a bad setting fails before any group
    if lstm_loops == "pallas":
        logging.info("LSTM loops: Pallas kernels for the programs of the mixed cell, V and FGR; XLA's for others")
    identity = {"task": spec.name, "dtype": np.dtype(dtype).name,
                "recurrent_dtype": None if rdt is None else np.dtype(rdt).name,
                "order_seed": None if order_seed is None else int(order_seed), "matmul_precision": matmul_precision}
    if order_stratum is not None:  # (absent from the identity of checkpoints saved before it existed)
        identity["order_stratum"] = int(order_stratum)
    saved = _saved_states(checkpoints, trials, identity)
    # Trials with saved states were running: they take their groups' first slots.
    groups = {key: sorted(members, key=lambda t: t.trial_id not in saved)
              for key, members in group_trials(trials, hidden_buckets, mix_variants).items()}
    keys = list(groups)
    if saved:
        # Each saved trial into its group's file: a run of other buckets or programs than the one that saved
        # them would otherwise have a group overwrite or remove a file of its name that holds later groups' trials.
        moved = checkpoints.regroup(identity, {_file_name(key): [saved[t.trial_id] for t in members
                                                                 if t.trial_id in saved]
                                               for key, members in groups.items()
                                               if any(t.trial_id in saved for t in members)})
        if moved:
            logging.info("%s: the saved states of %d trials regrouped into the files of this run's groups (%d files "
                         "changed)", task, len(saved), moved)
    if compile_ahead is None:
        compile_ahead = default_compile_ahead(mesh.devices.flat[0])

    # JAX's config contexts are per thread: a build in the background thread runs under the caller's float64
    # setting (which decides the dtype of the group's arrays) and matmul precision. Under any other context
    # the training loop would not find the programs built ahead and would compile its own (same numbers).
    x64, precision = jax.config.jax_enable_x64, jax.config.jax_default_matmul_precision

    def build(key):
        variant, n_max = key
        start = time.perf_counter()
        with jax.enable_x64(x64), jax.default_matmul_precision(precision):
            group = Group(spec, variant, n_max, min(trials_per_batch, len(groups[key])), arrays, n_in, mesh,
                           eval_chunk, np.dtype(dtype), chunk=trials_per_chunk, recurrent_dtype=rdt,
                           order_seed=None if order_seed is None else int(order_seed),
                           order_stratum=None if order_stratum is None else int(order_stratum),
                           matmul_precision=matmul_precision, lstm_loops=lstm_loops)
            if compile_ahead:
                group.compile_ahead()
                logging.info("%s %s N<=%d: compiled ahead in %.1fs", task, variant, n_max,
                             time.perf_counter() - start)
        return group

    results = {}
    for key, group in _built_in_turn(keys, build, compile_ahead):
        if stop is not None and stop():
            raise Stopped()
        logging.info("%s: %d trials of %s padded to N=%d", task, len(groups[key]), *key)
        saver = None if checkpoints is None else _Saver(checkpoints, _file_name(key), identity)
        for res in _run_group(group, groups[key], max_epochs, patience, on_epoch, saved, saver, on_group_epoch,
                              stop):
            results[res.trial_id] = res
            if on_result is not None:
                on_result(res)
    if checkpoints is not None:
        checkpoints.discard([t.trial_id for t in trials])
    return [results[t.trial_id] for t in trials]


def _file_name(key):
    """The checkpoint file of the group of (program, bucket) `key`."""
    return f"{key[0]}_N{key[1]}"


def _saved_states(checkpoints, trials, identity):
    """trial_id -> `ckpt.SavedTrial` for the trials of `trials` that `checkpoints` holds (checked)."""
    if checkpoints is None:
        return {}
    found, saved = checkpoints.load()
    if not saved:
        return {}
    if found != identity:
        diff = {k: (found.get(k), identity.get(k)) for k in {**found, **identity} if found.get(k) != identity.get(k)}
        raise ValueError(f"the checkpoints in {checkpoints.directory} were saved by a run of other settings "
                         f"(saved, this run: {diff}); resume with those settings or remove the files")
    out = {}
    for t in trials:
        if t.trial_id in saved:
            if saved[t.trial_id].trial != dataclasses.asdict(t):
                raise ValueError(f"trial {t.trial_id}: the checkpoint in {checkpoints.directory} holds a trial of "
                                 f"that id with other fields ({saved[t.trial_id].trial} against "
                                 f"{dataclasses.asdict(t)})")
            out[t.trial_id] = saved[t.trial_id]
    return out


class _Saver:
    """Saves one group's live trials to its checkpoint file, at most every `every_seconds`, with the saved
    states of its trials that wait for a slot to resume (the file replaces the one they were read from)."""

    def __init__(self, checkpoints, name, identity):
        self.checkpoints, self.name, self.identity = checkpoints, name, identity
        self.last = time.monotonic()

    def maybe_save(self, group, best_val, best_epoch, seconds, waiting=()) -> int | None:
        """Saves the group's live trials if `every_seconds` have passed since the last save: how many, or None."""
        if time.monotonic() - self.last >= self.checkpoints.every_seconds:
            return self.save(group, best_val, best_epoch, seconds, waiting)
        return None

    def save(self, group, best_val, best_epoch, seconds, waiting=()) -> int:
        """Saves the group's live trials now, and `waiting` (`ckpt.SavedTrial`s of its pending trials, as they
        were read); returns how many live trials were saved."""
        start = time.perf_counter()
        entries = group.snapshot(best_val, best_epoch, seconds)
        self.last = time.monotonic()
        if not entries and not waiting:  # every live trial is at its start: nothing to resume from
            self.checkpoints.remove(self.name)
            return 0
        self.checkpoints.save(self.name, self.identity, entries + list(waiting))
        logging.info("%s %s N<=%d: checkpoint of %d live trials (%.1f MB) in %.2fs%s", group.task.name,
                     group.variant, group.n_max, len(entries), sum(e.state.nbytes for e in entries) / 1e6,
                     time.perf_counter() - start,
                     f", with the saved states of {len(waiting)} trials waiting to resume" if waiting else "")
        return len(entries)

    def done(self):
        self.checkpoints.remove(self.name)


def _built_in_turn(keys, build, ahead):
    """Yields (key, build(key)) for each key in turn. With `ahead`, the next key's build runs in a background
    thread while the caller works with the current one (the compiler runs on the host, the training on the
    device), so only the first build is waited for. Closed early (the caller raised or was stopped), it does
    not wait for a build in progress: that finishes in the background and is dropped."""
    if not ahead:
        for key in keys:
            yield key, build(key)
        return
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="odyssey-compile")
    try:
        upcoming = pool.submit(build, keys[0]) if keys else None
        for i, key in enumerate(keys):
            current = upcoming.result()
            upcoming = pool.submit(build, keys[i + 1]) if i + 1 < len(keys) else None
            yield key, current
    except BaseException:  # GeneratorExit included
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _run_group(group, members, max_epochs, patience, on_epoch, saved=None, saver=None, on_group_epoch=None,
               stop_requested=None):
    """Runs a group's trials through their epochs, refilling slots as trials end; yields results.

    saved: trial_id -> `ckpt.SavedTrial`, the states those trials resume from. saver: a `_Saver` or None.
    on_group_epoch: called at the end of each epoch's bookkeeping (a generator: after the consumer has taken
    that epoch's results). stop_requested: `train_trials`' stop (checked after on_group_epoch).
    """
    saved = saved or {}
    pending = list(members)
    k = group.k
    best_val = np.full(k, np.inf)
    best_epoch = np.zeros(k, int)
    seconds = np.zeros(k)
    n_train = group.arrays["train"].size
    spec = group.task

    def resume(slot, trial):
        # The host-side bookkeeping of a trial that resumes from its saved state (the group holds the rest).
        if trial is not None and trial.trial_id in saved:
            s = saved[trial.trial_id]
            best_val[slot], best_epoch[slot], seconds[slot] = s.best_val, s.best_epoch, s.seconds

    first = [pending.pop(0) for _ in range(min(k, len(pending)))]
    group.fill(first, saved)
    for slot, trial in enumerate(first):
        resume(slot, trial)
    resumed = [saved[t.trial_id].epoch for t in first if t.trial_id in saved]
    if resumed:
        logging.info("%s %s N<=%d: %d trials resume from their checkpoints (epochs %d-%d)", spec.name, group.variant,
                     group.n_max, len(resumed), min(resumed), max(resumed))
    while any(t is not None for t in group.slots):
        live = np.array([t is not None for t in group.slots])
        start = time.perf_counter()
        loss, diverged = group.train_epoch()
        val = group.evaluate("valid", group.state["params"])
        elapsed = time.perf_counter() - start
        share = elapsed / live.sum()
        logging.info("%s %s N<=%d: %d live trials, epoch took %.2fs (%.0f sequence-updates/s)", spec.name,
                     group.variant, group.n_max, live.sum(), elapsed, live.sum() * n_train / elapsed)
        diverged = diverged | ~np.isfinite(val)
        new_best, new_epoch, improved, stop = early_stopping(best_val, best_epoch, group.epoch, val, max_epochs,
                                                             patience)
        # A trial that diverged this epoch is frozen at its last finite weights, whose validation may be finite
        # and even its best; it still does not count (on the paper's protocol its weights are NaN by then), so
        # the best epoch stays the one whose weights group.best holds.
        improved &= live & ~diverged
        best_val[improved], best_epoch[improved] = new_best[improved], new_epoch[improved]
        group.keep_best(improved)
        ended = []
        for slot in np.flatnonzero(live):
            trial, epoch = group.slots[slot], int(group.epoch[slot])
            seconds[slot] += share
            if on_epoch is not None:
                on_epoch(trial.trial_id, epoch, float(loss[slot] / n_train), float(val[slot]), share)
            if diverged[slot]:
                ended.append((slot, "diverged"))
            elif stop[slot]:
                ended.append((slot, "done"))
        # A trial that diverged after a finite validation keeps its best epoch's parameters and metrics, as early
        # stopping would (its validation never improves again): DESIGN §3's test metric of the best epoch.
        scored = [slot for slot, _ in ended if np.isfinite(best_val[slot])]
        test = group.evaluate("test", group.best, np.isin(np.arange(k), scored)) if scored else None
        for slot, status in ended:
            trial = group.slots[slot]
            n_params = nets.count_params(trial.variant, spec.kind, group.n_in, trial.hidden_size, spec.n_out)
            val, test_metric = ((float(best_val[slot]), float(test[slot])) if np.isfinite(best_val[slot])
                                else (math.nan, math.nan))
            res = TrialResult(trial.trial_id, status, int(group.epoch[slot]), int(best_epoch[slot]), val,
                              test_metric, n_params, float(seconds[slot]))
            group.slots[slot] = None
            yield res
        for slot, _ in ended:
            # The group's next pending trial takes the slot; with none left, the slot is emptied (trains nothing).
            if pending:
                trial = pending.pop(0)
                group.assign(slot, trial, saved.get(trial.trial_id))
                best_val[slot], best_epoch[slot], seconds[slot] = np.inf, 0, 0.0
                resume(slot, trial)
            else:
                group.assign(slot, None)
        if ended and not pending:
            perm = group.pack()
            if perm is not None:
                best_val, best_epoch, seconds = best_val[perm], best_epoch[perm], seconds[perm]
                logging.info("%s %s N<=%d: %d live trials packed into %d of %d chunks", spec.name, group.variant,
                             group.n_max, sum(t is not None for t in group.slots),
                             math.ceil(sum(t is not None for t in group.slots) / group.chunk),
                             group.k // group.chunk)
        just_saved = None
        # The saved states of trials still waiting for a slot go into the group's file with the live ones.
        waiting = [saved[t.trial_id] for t in pending if t.trial_id in saved]
        if saver is not None and any(t is not None for t in group.slots):
            just_saved = saver.maybe_save(group, best_val, best_epoch, seconds, waiting)
        if on_group_epoch is not None:
            on_group_epoch()
        if stop_requested is not None and any(t is not None for t in group.slots) and stop_requested():
            n_saved = just_saved if just_saved is not None else 0 if saver is None else saver.save(
                group, best_val, best_epoch, seconds, waiting)
            logging.info("%s %s N<=%d: stopped on request at the end of an epoch, %d live trials saved", spec.name,
                         group.variant, group.n_max, n_saved)
            raise Stopped(n_saved, (group.variant, group.n_max))
    if saver is not None:
        saver.done()
