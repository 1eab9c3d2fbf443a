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
chosen by the caller: with `order_seed` every trial takes its data order from that seed instead of its own.
The programs' float32 matrix products are true float32 on every device (`matmul_precision`), not the TF32
that JAX's default setting allows on recent NVIDIA GPUs.

Choices, by measurement (bench/trainer_speed.py, 2 shared CPU cores; sequence-updates/s summed over trials):
* One program for eight variants, FGR apart. On a GPU a step of a few dozen small trials is bound by
  launches, not work (H200, 64 trials of V, JSB shape: N = 40 ran 3× the sequence-updates/s of N = 200 with
  1/25 of the work), and one program per variant split a study into 45 groups per task of ≤ 61 trials each,
  run one after another. The mixed program makes them 5 groups of ~150-500 trials (plus FGR's 5): on an
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
  live trials are packed into the first chunks (`_Group.pack`), so ended trials stop costing time where a
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
  trials at the same epoch (bench/data_order_check.py).
* The update: loss and gradient are checked for finiteness before the step, so the step writes θ' and v'
  (frozen where the trial is not kept) in one pass per array; checking the new weights instead needed
  them materialized, a reduction over them and two more selecting passes, and for one trial the loop's
  expand/squeeze of the batch axis copied the weights at every update. Weights that overflow to ±inf from
  finite values are caught once per epoch. Together 1.11× for one trial (JSB shape, N = 200, paired A/B).
* Compiling: on an accelerator, a group's programs are compiled (`_Group.compile_ahead`) in a background
  thread while the group before it trains, so only the first group waits for the compiler. On an H200 a
  JSB group's first epoch took 10-12 s against 0.7-0.8 s for the next (LSTM loops unrolled by 8). On an
  H100, in the JSB study of 9 × 200 trials, the next group's program (12-22 s to compile) was ready before
  the group before it ended, and the first epoch of a group took what the others took. Not on CPUs: the
  README's quick study (then 9 groups, 2 cores) took 101.7 s without and 110.2 s with it, the compiler and
  the training sharing the two cores. Within a process, groups of one setting (task, program, slots per
  chunk, loops, precision, options) share their jitted functions (`_programs`, the 32 last settings), which
  keep one compiled program per shape: a second `train_trials` call of the same trials compiles nothing
  (2 CPU cores: a test that stops and resumes the trainer's 8 trials took 21.2 s with its own programs,
  0.7 s with those of an earlier run).
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
import functools
import math
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from odyssey import cells, checkpoints as ckpt, fast_lstm, nets, optim, pallas_loops, tasks

DEFAULT_BUCKETS = (40, 80, 120, 160, 200)
# The program that trains trials of the eight variants other than FGR together (`odyssey.cells`' mixed cell).
MIXED = "mixed"
# Updates per draw of input noise. jax.random on CPU runs each draw as a loop of its own; drawing the noise
# of 8 updates in one batched call (the same numbers) made the epoch 1.11x faster for one trial and 1.05x
# for 8 (JSB shape, N = 200, paired A/B; blocks of 4 and 16 measured the same as 8).
NOISE_BLOCK = 8


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
    """How a trial ended. Metrics are NaN for a diverged trial; epochs are counted from 1."""

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


def program_of(variant: str, mix_variants: bool = True) -> str:
    """The program a trial of `variant` runs in: `MIXED` for the variants the mixed cell holds (with
    `mix_variants`), else the variant's own."""
    cells.spec(variant)
    return MIXED if mix_variants and variant in cells.MIXABLE else variant


def group_trials(trials, hidden_buckets: Sequence[int] = DEFAULT_BUCKETS, mix_variants: bool = True) -> dict:
    """The trainer's groups: (program, bucket) -> the trials it trains in one program, in the order given.

    The groups come in the order of their first trials (`train_trials` runs them in that order).
    """
    groups = {}
    for t in trials:
        groups.setdefault((program_of(t.variant, mix_variants), bucket_of(t.hidden_size, hidden_buckets)),
                          []).append(t)
    return groups


def bucket_of(hidden_size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `hidden_size`."""
    for b in sorted(buckets):
        if hidden_size <= b:
            return b
    raise ValueError(f"hidden size {hidden_size} exceeds the largest bucket {max(buckets)}")


# On a CPU, a chunk of trials whose weights fill about this many bytes per layer runs fastest (see below).
CPU_CHUNK_BYTES = 2 << 20
# On an accelerator, a chunk holds about this many bytes of weights (see below; 512 trials of 1 MB).
ACCELERATOR_CHUNK_BYTES = 512 << 20


def default_trials_per_chunk(device, weight_bytes: int, layers: int = 1, devices: int = 1) -> int | None:
    """How many trials a device trains in one vmapped step by default.

    On a CPU, K vmapped trials stream K sets of a layer's weights through the caches at every time step
    (the layers' loops run one after another); once those outgrow the cache (here 2 MiB of L2 per core), a
    trial runs slower inside the batch than in a smaller chunk. So a CPU chunk holds about
    `CPU_CHUNK_BYTES` (2 MiB) of weights per layer. Measured on 2 CPU cores (Intel Xeon, AVX-512,
    2026-11-27, the trainer's programs as compiled with `compiler_options`), sequence-updates/s summed over
    the trials over one trial's, both in one process, measured in turn (median of 7):
      JSB shape, N = 40 (0.10 MB a trial), 96 trials in chunks of 12 / 16 / 24 / 32: 1.64 / 1.77 / 1.65 /
        1.60; 128 trials in chunks of 43 / 64 / 128: 1.29 / 1.17 / 1.21.
      JSB shape, N = 100 (0.34 MB), 32 trials in chunks of 6 / 8 / 11: 1.13 / 1.18 / 1.12; of 2: 0.87.
      JSB shape, N = 160 (0.65 MB), 16 trials in chunks of 1 / 2 / 3: 0.99 / 1.01 / 0.98.
      JSB shape, N = 200 (1.0 MB), 8 trials in chunks of 1 / 2 / 3 / 4: 0.99-1.03 / 1.04-1.10 / 0.86 /
        0.91; 32 trials in chunks of 1 / 2 / 4: 0.99 / 0.92 / 0.82.
      TIMIT shape (bidirectional, T = 100), N = 100 (0.25 MB a layer), 8 trials in chunks of 2 / 4 / 8:
        0.85 / 1.13 / 1.19; N = 200 (0.82 MB a layer) in chunks of 1 / 2 / 4: 0.99-1.01 / 1.06-1.07 / 0.90.
    (The rule gives 21, 6, 3, 2, 8 and 2 for these rows.) The CPU devices of one mesh (`use_cpu_cores`)
    each get their share of the budget, as on these 2 cores they behaved as sharing the caches: with 2
    devices, 8 trials at N = 200 ran 1.61x one trial's rate in chunks of 1 and 1.15x in chunks of 2; 32 at
    N = 100 1.74x / 1.76x / 1.44x in chunks of 2 / 4 / 8; 96 at N = 40 2.84x / 2.75x / 2.68x in chunks of
    8 / 16 / 24 (the rule: 1, 3 and 10).
    On an accelerator a step of a few dozen small trials is bound by launch overhead, not by the work, so
    the more trials one step holds the better. Measured on an H100 (bench/results/, 2026-11-27, the mixed
    program, LSTM loops unrolled by 8), sequence-updates/s summed over trials, JSB shape: N = 40, 64 trials
    90,395, 512 trials 353,037; N = 200, 64 trials 22,931, 512 trials in 4 chunks of 128 26,104, in one
    vmap 30,372 (1.16x the chunks). Chunks would let a group skip its ended trials once packed
    (`_Group.pack`), but on the standard JSB data 66 % of 549 trials (N <= 40) ran to the 150-epoch bound
    (mean 126 epochs), so packing could save at most ~16 %, what chunks cost with every slot live. So an
    accelerator's chunk holds `ACCELERATOR_CHUNK_BYTES` (512 MiB) of weights: a group of the full study
    (<= 512 trials; 1 MB each at N = 200, JSB) runs in one vmap; bigger groups run in chunks, packed once
    nothing is pending.

    Args:
      device: a JAX device of the trial mesh, or its platform name ("cpu", "gpu", ...).
      weight_bytes: the bytes of one trial's (padded) parameters.
      layers: the LSTM layers of the trial's network (2 for a bidirectional one): on a CPU the budget is
        per layer.
      devices: the CPU devices training at once (the trial mesh's), which share the budget.
    """
    if getattr(device, "platform", device) == "cpu":
        per_layer = max(1, weight_bytes // max(1, layers))
        return max(1, CPU_CHUNK_BYTES // max(1, devices) // per_layer)
    return max(1, ACCELERATOR_CHUNK_BYTES // max(1, weight_bytes))


def chunk_layout(slots: int, chunk: int | None) -> tuple[int, int]:
    """(trials per chunk, chunks): equal chunks of at most `chunk` trials (None: one) holding `slots` slots;
    the last may gain empty slots."""
    n_chunks = int(math.ceil(slots / min(chunk or slots, slots)))
    return int(math.ceil(slots / n_chunks)), n_chunks


def group_layout(task, program: str, n_max: int, k: int, n_in: int, devices, trials_per_chunk: int | None = None,
                 dtype=np.float32) -> tuple[int, int]:
    """(slots, trials per chunk) of a group of `k` trials of `program` padded to `n_max`, as `train_trials` lays
    it out on `devices` (the trial mesh's): each device takes its share of the slots in equal chunks of at most
    `trials_per_chunk` (None: `default_trials_per_chunk`), so the slots are k rounded up to whole chunks on
    every device. A device runs its chunks one after another, skipping those whose trials are all frozen.

    Args:
      task: a task name or `tasks.Task`. program: `MIXED` or a variant. n_in: the network's inputs.
      devices: a sequence of JAX devices (or their platform names), the trial mesh's.
    """
    spec = tasks.get_task(task) if isinstance(task, str) else task
    cell = "V" if program == MIXED else program
    n_dev = len(devices)
    local = int(math.ceil(k / n_dev))
    if trials_per_chunk is None:
        weight_bytes = nets.count_params(cell, spec.kind, n_in, n_max, spec.n_out) * np.dtype(dtype).itemsize
        trials_per_chunk = default_trials_per_chunk(devices[0], weight_bytes, nets.LAYERS[spec.kind], n_dev)
    chunk, n_chunks = chunk_layout(local, trials_per_chunk)
    return chunk * n_chunks * n_dev, chunk


# The most bytes one evaluation step's per-step arrays may take (see `eval_sequences_per_step`).
EVAL_BYTES = 16 << 30


def eval_sequences_per_step(requested: int, k: int, steps: int, n_max: int, layers: int, itemsize: int) -> int:
    """Sequences per evaluation step: `requested`, halved until the step's arrays fit `EVAL_BYTES`.

    An evaluation step runs all k trials of a group on its sequences at once. XLA's memory analysis of that
    program (CPU, bidirectional, K = 4, 16 sequences of 1000 steps, N = 40) put its temporaries at 14 arrays
    of [steps, N] per trial and sequence, 7 per LSTM layer (inputs per gate, outputs, readout). A group of the
    full study (say 155 trials at N = 200, on lines of ~1900 steps) would need ~53 GB at 16 sequences, more
    than an H100 holds beside its training; so fewer sequences per step, never fewer than 1. The split into
    steps changes no number (each sequence's statistics are its own).
    """
    per_sequence = k * steps * n_max * itemsize * 7 * layers
    b = max(1, int(requested))
    while b > 1 and b * per_sequence > EVAL_BYTES:
        b //= 2
    return b


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


def default_compile_ahead(device) -> bool:
    """Whether `train_trials` compiles each group while the one before it trains, by default: on accelerators,
    whose host is otherwise idle, not on CPUs, where the compiler and the training share the cores."""
    return device.platform != "cpu"


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


def _recurrent_setting(recurrent_dtype, dtype):
    """The recurrent products' operand dtype as the programs take it: None for the parameters' own dtype (the
    default program), else the dtype; a ValueError for one `fast_lstm` refuses."""
    rdt = fast_lstm.recurrent_operand_dtype(recurrent_dtype, dtype)
    return None if rdt == np.dtype(dtype) else rdt


def _group_loops(lstm_loops, cell, platform):
    """The LSTM loops a group's programs run: `lstm_loops`, except "xla" for a cell the Pallas kernels lack
    (`odyssey.pallas_loops.supports`); a ValueError for an unknown setting or a platform without them."""
    if lstm_loops not in pallas_loops.LOOPS:
        raise ValueError(f"lstm_loops must be one of {pallas_loops.LOOPS}, got {lstm_loops!r}")
    if lstm_loops == "pallas" and not pallas_loops.supports(cell):
        return "xla"
    pallas_loops.check(lstm_loops, cell, platform)
    return lstm_loops


# The float32 matrix-product precisions the trainer's programs can be traced under (`train_trials`).
MATMUL_PRECISIONS = ("float32", "tensorfloat32")


def _check_precision(matmul_precision):
    if matmul_precision is not None and matmul_precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be None or one of {', '.join(MATMUL_PRECISIONS)}, got "
                         f"{matmul_precision!r}")


def _traced_under(fn, matmul_precision):
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


def _trial_key(seed):
    return jax.random.PRNGKey(seed)


def _where(cond, a, b):
    """Per-trial select: cond bool[K] broadcast against leading-K pytrees."""
    def pick(x, y):
        c = cond.reshape(cond.shape + (1,) * (x.ndim - 1))
        return jnp.where(c, x, y)
    return jax.tree_util.tree_map(pick, a, b)


def _train_epoch(task, variant, state, hp, train, epoch, trim=False, recurrent_dtype=None, branch_past_end=True,
                 loops="xla"):
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
        `_Group`). The same numbers either way.
      loops: static; "xla" or "pallas", how the LSTM layers' time loops run (`odyssey.fast_lstm.lstm_layer`).

    Returns:
      (new state, summed train loss float[K], diverged bool[K]).
    """
    n_seq = train.xs.shape[0]
    sequence_loss = functools.partial(tasks.sequence_loss, recurrent_dtype=recurrent_dtype, loops=loops)

    def order(key, ep):
        return jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 1), ep), n_seq)

    perms = jax.vmap(order)(hp["order_key"], epoch)
    noise_keys = jax.vmap(lambda k, e: jax.random.fold_in(jax.random.fold_in(k, 2), e))(hp["key"], epoch)

    lengths = jnp.sum(train.mask > 0, axis=1).astype(jnp.int32)

    def one(params, velocity, alive, mask, lr, mu, nesterov, clip, std, switches, eps, idx, steps):
        x = train.xs[idx] + std * eps
        lp = None if train.label_paddings is None else train.label_paddings[idx]
        point = optim.gradient_point(params, velocity, mu, nesterov)
        loss, grads = jax.value_and_grad(sequence_loss, argnums=2)(
            task, variant, point, x, train.mask[idx], train.targets[idx], lp, steps, exact, switches)
        # Loss and gradient are checked before the update, so that the update and the freeze are one pass
        # over each array (weights that overflow from finite gradients are caught after the epoch).
        finite = _all_finite(grads) & jnp.isfinite(loss)
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
    overflow = alive & ~jax.vmap(_all_finite)(params)
    return {"params": params, "velocity": velocity, "alive": alive & ~overflow}, loss_sum, diverged | overflow


def _all_finite(tree):
    """True when every element of every leaf is finite (a bool scalar).

    As the finiteness of Σ 0·x: each term is 0 for a finite x and NaN for ±inf or NaN (a float sum is
    cheaper on CPU than reducing a boolean array; 0·x is not simplified away without fast math).
    """
    total = sum(jnp.sum(x * jnp.zeros((), x.dtype)) for x in jax.tree_util.tree_leaves(tree))
    return jnp.isfinite(total)


def _local_epoch(task, variant, chunk, trim, recurrent_dtype, branch_past_end, loops, state, hp, train, epoch):
    """One epoch of the trials on one device, `chunk` trials at a time.

    The device's K trials are split into K / chunk chunks that run one after another (`lax.map`), each a
    vmapped epoch of `chunk` trials (`chunk` = K: all at once). A chunk whose trials are all frozen
    (empty slots, diverged trials) is skipped. Trials never interact, so the split changes no number.
    """
    k = epoch.shape[0]
    if chunk >= k:
        return _train_epoch(task, variant, state, hp, train, epoch, trim, recurrent_dtype, branch_past_end, loops)

    def run(args):
        st, h, ep = args
        def idle(st, h, ep):
            return st, jnp.zeros(ep.shape, train.xs.dtype), jnp.zeros(ep.shape, bool)
        def live(st, h, ep):
            return _train_epoch(task, variant, st, h, train, ep, trim, recurrent_dtype, branch_past_end, loops)
        return jax.lax.cond(jnp.any(st["alive"]), live, idle, st, h, ep)

    def split(x):
        return x.reshape((k // chunk, chunk) + x.shape[1:])

    def merge(x):
        return x.reshape((k,) + x.shape[2:])

    out = jax.lax.map(run, jax.tree_util.tree_map(split, (state, hp, epoch)))
    return jax.tree_util.tree_map(merge, out)


def _eval_chunk(task, variant, recurrent_dtype, loops, params, switches, chunk, steps):
    """Metric statistics of K trials on a chunk of sequences: vmapped over trials and sequences.

    switches: the mixed cell's float[K, 6], or None. steps: int32 scalar, the chunk's longest sequence; the
    LSTM loops stop there. recurrent_dtype, loops: static, as in `_train_epoch`.
    """
    def per_trial(p, sw):
        return jax.vmap(lambda x, m, t: tasks.eval_statistics(task, variant, p, x, m, t, steps, sw,
                                                              recurrent_dtype, loops))(
            chunk.xs, chunk.mask, chunk.targets)
    return jax.vmap(per_trial)(params, switches)


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
    out = {}
    for name in ("valid", "test"):
        a = arrays[name]
        order = np.argsort(a.mask.sum(1), kind="stable")
        a = tasks.Arrays(*(None if x is None else x[order] for x in a))
        widen = steps - a.xs.shape[1]
        xs = np.pad(a.xs, ((0, 0), (0, widen), (0, 0)))
        mask = np.pad(a.mask, ((0, 0), (0, widen)))
        targets = a.targets
        if a.label_paddings is None:  # frame targets grow with the steps
            targets = np.pad(targets, [(0, 0), (0, widen)] + [(0, 0)] * (targets.ndim - 2))
        padded = _pad_split(tasks.Arrays(xs, mask, targets, a.label_paddings), chunk)
        lengths = padded.mask.sum(1).astype(np.int32)
        chunk_steps = [np.int32(max(1, lengths[i:i + chunk].max())) for i in range(0, padded.size, chunk)]
        out[name] = (padded, order, chunk_steps)
    return out


@functools.lru_cache(maxsize=32)
def _programs(task, cell, chunk, trim, recurrent_dtype, branch_past_end, loops, mesh, matmul_precision, options):
    """A group's jitted training-epoch and evaluation functions, one pair per setting in a process: groups and
    `train_trials` calls of the same setting share them, and with them JAX's compiled programs for each shape
    (a second call of the same trials compiles nothing). `options`: the compiler options as sorted items."""
    trials, whole = PartitionSpec("trials"), PartitionSpec()
    epoch_fn = jax.shard_map(functools.partial(_local_epoch, task, cell, chunk, trim, recurrent_dtype,
                                               branch_past_end, loops), mesh=mesh,
                             in_specs=(trials, trials, whole, trials), out_specs=trials, check_vma=False)
    epoch_jit = jax.jit(_traced_under(epoch_fn, matmul_precision), donate_argnums=(0,),
                        compiler_options=dict(options))
    eval_fn = functools.partial(_eval_chunk, task, cell, recurrent_dtype, loops)
    eval_jit = jax.jit(_traced_under(eval_fn, matmul_precision), compiler_options=dict(options))
    return epoch_jit, eval_jit


class _Group:
    """K slots of one program (a variant, or `MIXED`) and one padded hidden size, trained in lock-step epochs."""

    def __init__(self, task, variant, n_max, k, arrays, n_in, mesh, eval_chunk, dtype, chunk=None,
                 recurrent_dtype=None, order_seed=None, matmul_precision=None, lstm_loops="xla"):
        _check_precision(matmul_precision)
        self.task, self.variant, self.n_max, self.n_in, self.dtype = task, variant, n_max, n_in, dtype
        # Every slot's order key: its trial's own (None here), or the one all trials share.
        self._order_key = None if order_seed is None else np.asarray(_trial_key(order_seed))
        recurrent_dtype = _recurrent_setting(recurrent_dtype, dtype)
        self.mixed = variant == MIXED
        if not self.mixed:
            cells.spec(variant)
        # The variant whose cell the program runs: the mixed cell is V's with per-trial switches.
        self.cell = "V" if self.mixed else variant
        # The Pallas loops implement V's cell, the mixed cell and FGR's; other variants' own programs keep XLA's.
        self.loops = _group_loops(lstm_loops, self.cell, mesh.devices.flat[0].platform)
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
        self._epoch_fn, self._eval_fn = _programs(task, self.cell, self.chunk, trim, recurrent_dtype,
                                                  branch_past_end, self.loops, mesh, matmul_precision, options)
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
        key = _trial_key(0 if trial is None else trial.seed)
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

    def evaluate(self, split, params):
        arrays, order, chunk_steps = self.eval_splits[split]
        outs = []
        for start, steps in zip(range(0, arrays.size, self.eval_chunk), chunk_steps):
            chunk = arrays.take(slice(start, start + self.eval_chunk))
            chunk = tasks.Arrays(chunk.xs, chunk.mask, chunk.targets, None)
            outs.append(jax.tree_util.tree_map(np.asarray, self._eval_fn(params, self.hp["switches"], chunk, steps)))
        stats = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=1), *outs)
        # Back from length order to the split's order.
        unsort = np.empty_like(order)
        unsort[order] = np.arange(order.size)
        stats = jax.tree_util.tree_map(lambda s: s[:, :order.size][:, unsort], stats)
        return tasks.finish_metric(self.task, stats, self.arrays[split])

    def pack(self):
        """Moves each device's live trials into its first slots when that empties chunks, so the chunks of
        ended trials are skipped (`_local_epoch`) instead of trained frozen. Trials keep everything of theirs
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
            out["eval"] = self._eval_fn.lower(self.best, self.hp["switches"],
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
    return _where(cond, a, b)


def train_trials(task: str, splits: dict, trials: Sequence[Trial], *, max_epochs: int = 150, patience: int = 15,
                 trials_per_batch: int = 64, hidden_buckets: Sequence[int] = DEFAULT_BUCKETS,
                 eval_chunk: int = 16, trials_per_chunk: int | None = None, on_epoch: Callable | None = None,
                 on_result: Callable | None = None, on_group_epoch: Callable | None = None, devices=None,
                 dtype=np.float32, compile_ahead: bool | None = None, mix_variants: bool = True,
                 recurrent_dtype=None, order_seed: int | None = None,
                 matmul_precision: str | None = "float32",
                 checkpoints: ckpt.Checkpoints | None = None, lstm_loops: str = "xla") -> list[TrialResult]:
    """Trains trials to the end of the paper's protocol, many at once.

    Args:
      task: "jsb", "timit" or "iam_online".
      splits: dict train/valid/test, as the data loaders return them.
      trials: the trials to train, in the order they should start.
      max_epochs: the epoch bound (paper: 150).
      patience: stop after this many epochs without improvement of the validation metric (paper: 15).
      trials_per_batch: the most trials one compiled program trains at once; results never depend on it.
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

    Returns:
      The results, in the order of `trials`.

    Raises:
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
    rdt = _recurrent_setting(recurrent_dtype, dtype)
    _check_precision(matmul_precision)
    bad_seed = isinstance(order_seed, (bool, np.bool_)) or not isinstance(order_seed, (int, np.integer, type(None)))
    if bad_seed or (order_seed is not None and not 0 <= order_seed < 2**31):
        raise ValueError(f"order_seed must be None or an int in [0, 2**31), got {order_seed!r}")
    missing = [name for name in ("train", "valid", "test") if name not in splits]
    if missing:
        raise ValueError(f"splits lack {missing}; the loaders return train, valid and test")
    arrays = {name: tasks.to_arrays(spec, splits[name], dtype) for name in ("train", "valid", "test")}
    n_in = arrays["train"].xs.shape[-1]
    mesh = Mesh(np.asarray(devices if devices is not None else jax.devices()), ("trials",))
    _group_loops(lstm_loops, "V", mesh.devices.flat[0].platform)  # a bad setting fails before any group
    if lstm_loops == "pallas":
        logging.info("LSTM loops: Pallas kernels for the programs of the mixed cell, V and FGR; XLA's for others")
    identity = {"task": spec.name, "dtype": np.dtype(dtype).name,
                "recurrent_dtype": None if rdt is None else np.dtype(rdt).name,
                "order_seed": None if order_seed is None else int(order_seed), "matmul_precision": matmul_precision}
    saved = _saved_states(checkpoints, trials, identity)
    # Trials with saved states were running: they take their groups' first slots.
    groups = {key: sorted(members, key=lambda t: t.trial_id not in saved)
              for key, members in group_trials(trials, hidden_buckets, mix_variants).items()}
    keys = list(groups)
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
            group = _Group(spec, variant, n_max, min(trials_per_batch, len(groups[key])), arrays, n_in, mesh,
                           eval_chunk, np.dtype(dtype), chunk=trials_per_chunk, recurrent_dtype=rdt,
                           order_seed=None if order_seed is None else int(order_seed),
                           matmul_precision=matmul_precision, lstm_loops=lstm_loops)
            if compile_ahead:
                group.compile_ahead()
                logging.info("%s %s N<=%d: compiled ahead in %.1fs", task, variant, n_max,
                             time.perf_counter() - start)
        return group

    results = {}
    for key, group in _built_in_turn(keys, build, compile_ahead):
        logging.info("%s: %d trials of %s padded to N=%d", task, len(groups[key]), *key)
        saver = None if checkpoints is None else _Saver(checkpoints, f"{key[0]}_N{key[1]}", identity)
        for res in _run_group(group, groups[key], max_epochs, patience, on_epoch, saved, saver, on_group_epoch):
            results[res.trial_id] = res
            if on_result is not None:
                on_result(res)
    if checkpoints is not None:
        checkpoints.discard([t.trial_id for t in trials])
    return [results[t.trial_id] for t in trials]


def _saved_states(checkpoints, trials, identity):
    """trial_id -> `ckpt.SavedTrial` for the trials of `trials` that `checkpoints` holds (checked)."""
    if checkpoints is None:
        return {}
    found, saved = checkpoints.load()
    if not saved:
        return {}
    if found != identity:
        diff = {k: (found.get(k), v) for k, v in identity.items() if found.get(k) != v}
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
    """Saves one group's live trials to its checkpoint file, at most every `every_seconds`."""

    def __init__(self, checkpoints, name, identity):
        self.checkpoints, self.name, self.identity = checkpoints, name, identity
        self.last = time.monotonic()

    def maybe_save(self, group, best_val, best_epoch, seconds):
        if time.monotonic() - self.last < self.checkpoints.every_seconds:
            return
        start = time.perf_counter()
        entries = group.snapshot(best_val, best_epoch, seconds)
        self.last = time.monotonic()
        if not entries:  # every live trial is at its start: nothing to resume from
            self.checkpoints.remove(self.name)
            return
        self.checkpoints.save(self.name, self.identity, entries)
        logging.info("%s %s N<=%d: checkpoint of %d live trials (%.1f MB) in %.2fs", group.task.name, group.variant,
                     group.n_max, len(entries), sum(e.state.nbytes for e in entries) / 1e6,
                     time.perf_counter() - start)

    def done(self):
        self.checkpoints.remove(self.name)


def _built_in_turn(keys, build, ahead):
    """Yields (key, build(key)) for each key in turn. With `ahead`, the next key's build runs in a background
    thread while the caller works with the current one (the compiler runs on the host, the training on the
    device), so only the first build is waited for."""
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
    finally:
        pool.shutdown(cancel_futures=True)


def _run_group(group, members, max_epochs, patience, on_epoch, saved=None, saver=None, on_group_epoch=None):
    """Runs a group's trials through their epochs, refilling slots as trials end; yields results.

    saved: trial_id -> `ckpt.SavedTrial`, the states those trials resume from. saver: a `_Saver` or None.
    on_group_epoch: called at the end of each epoch's bookkeeping (a generator: after the consumer has taken
    that epoch's results).
    """
    saved = saved or {}
    pending = list(members)
    k = group.k
    best_val = np.full(k, np.inf)
    best_epoch = np.zeros(k, int)
    seconds = np.zeros(k)
    test_cache = {}
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
        improved &= live & ~diverged
        best_val[live], best_epoch[live] = new_best[live], new_epoch[live]
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
        if any(status == "done" for _, status in ended):
            test = group.evaluate("test", group.best)
            for slot, status in ended:
                test_cache[slot] = test[slot]
        for slot, status in ended:
            trial = group.slots[slot]
            n_params = nets.count_params(trial.variant, spec.kind, group.n_in, trial.hidden_size, spec.n_out)
            if status == "diverged":
                res = TrialResult(trial.trial_id, "diverged", int(group.epoch[slot]), int(best_epoch[slot]),
                                  math.nan, math.nan, n_params, float(seconds[slot]))
            else:
                res = TrialResult(trial.trial_id, "done", int(group.epoch[slot]), int(best_epoch[slot]),
                                  float(best_val[slot]), float(test_cache[slot]), n_params, float(seconds[slot]))
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
        if saver is not None and any(t is not None for t in group.slots):
            saver.maybe_save(group, best_val, best_epoch, seconds)
        if on_group_epoch is not None:
            on_group_epoch()
    if saver is not None:
        saver.done()
