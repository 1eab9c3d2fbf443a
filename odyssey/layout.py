"""How the trainer groups trials and lays a group out on devices: programs, hidden buckets, slots and chunks.

Trials are grouped by (program, hidden-size bucket): each group is one compiled program (`odyssey.train`) that
trains K slots at once, the bucket fixing the padded hidden size, the program the cell (FGR's own, or
`MIXED`, V's cell with per-trial switches for the other eight variants). A device runs its share of a
group's slots in vmapped chunks, one after another; how many trials a chunk holds is chosen here by the
device's kind and the trials' weight bytes.
"""

import math
from typing import Sequence

import numpy as np

from odyssey import cells, nets, tasks
from odyssey.search import bucket_of  # noqa: F401  (one definition, used here and re-exported)


DEFAULT_BUCKETS = (40, 80, 120, 160, 200)
# The program that trains trials of the eight variants other than FGR together (`odyssey.cells`' mixed cell).
MIXED = "mixed"


def program_of(variant: str, mix_variants: bool = True) -> str:
    """The program a trial of `variant` runs in: `MIXED` for the variants the mixed cell holds (with
    `mix_variants`), else the variant's own."""
    cells.spec(variant)
    return MIXED if mix_variants and variant in cells.MIXABLE else variant


def cell_of(program: str) -> str:
    """The variant whose cell a program runs: V's for `MIXED` (with per-trial switches), else the program's own."""
    return "V" if program == MIXED else program


def group_trials(trials, hidden_buckets: Sequence[int] = DEFAULT_BUCKETS, mix_variants: bool = True) -> dict:
    """The trainer's groups: (program, bucket) -> the trials it trains in one program, in the order given.

    The groups come in the order of their first trials (`odyssey.train.train_trials` runs them in that order).
    """
    groups = {}
    for t in trials:
        groups.setdefault((program_of(t.variant, mix_variants), bucket_of(t.hidden_size, hidden_buckets)),
                          []).append(t)
    return groups


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
    2026-11-27, the trainer's programs as compiled with `odyssey.programs.compiler_options`),
    sequence-updates/s summed over the trials over one trial's, both in one process, measured in turn
    (median of 7):
      JSB shape, N = 40 (0.10 MB a trial), 96 trials in chunks of 12 / 16 / 24 / 32: 1.64 / 1.77 / 1.65 /
        1.60; 128 trials in chunks of 43 / 64 / 128: 1.29 / 1.17 / 1.21.
      JSB shape, N = 100 (0.34 MB), 32 trials in chunks of 6 / 8 / 11: 1.13 / 1.18 / 1.12; of 2: 0.87.
      JSB shape, N = 160 (0.65 MB), 16 trials in chunks of 1 / 2 / 3: 0.99 / 1.01 / 0.98.
      JSB shape, N = 200 (1.0 MB), 8 trials in chunks of 1 / 2 / 3 / 4: 0.99-1.03 / 1.04-1.10 / 0.86 /
        0.91; 32 trials in chunks of 1 / 2 / 4: 0.99 / 0.92 / 0.82.
      TIMIT shape (bidirectional, T = 100), N = 100 (0.25 MB a layer), 8 trials in chunks of 2 / 4 / 8:
        0.85 / 1.13 / 1.19; N = 200 (0.82 MB a layer) in chunks of 1 / 2 / 4: 0.99-1.01 / 1.06-1.07 / 0.90.
    (The rule gives 21, 6, 3, 2, 8 and 2 for these rows.) The CPU devices of one mesh (`odyssey.train.use_cpu_cores`)
    each get their share of the budget, as on these 2 cores they behaved as sharing the caches: with 2
    devices, 8 trials at N = 200 ran 1.61x one trial's rate in chunks of 1 and 1.15x in chunks of 2; 32 at
    N = 100 1.74x / 1.76x / 1.44x in chunks of 2 / 4 / 8; 96 at N = 40 2.84x / 2.75x / 2.68x in chunks of
    8 / 16 / 24 (the rule: 1, 3 and 10).
    On an accelerator a step of a few dozen small trials is bound by launch overhead, not by the work, so
    the more trials one step holds the better. Measured on an H100 (bench/results/, 2026-11-27, the mixed
    program, LSTM loops unrolled by 8), sequence-updates/s summed over trials, JSB shape: N = 40, 64 trials
    90,395, 512 trials 353,037; N = 200, 64 trials 22,931, 512 trials in 4 chunks of 128 26,104, in one
    vmap 30,372 (1.16x the chunks). Chunks would let a group skip its ended trials once packed
    (`odyssey.group.Group.pack`), but on the standard JSB data 66 % of 549 trials (N <= 40) ran to the 150-epoch bound
    (mean 126 epochs), so packing could save at most ~16 %, what chunks cost with every slot live. So an
    accelerator's chunk holds `ACCELERATOR_CHUNK_BYTES` (512 MiB) of weights: a group of the full study
    (<= 526 trials, TIMIT's N <= 40 group; at N = 200 <= 171 trials of 1 MB) runs in one vmap; bigger groups
    run in chunks, packed once nothing is pending.

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
    """(slots, trials per chunk) of a group of `k` trials of `program` padded to `n_max`, as
    `odyssey.train.train_trials` lays it out on `devices` (the trial mesh's): each device takes its share of
    the slots in equal chunks of at most `trials_per_chunk` (None: `default_trials_per_chunk`), so the slots
    are k rounded up to whole chunks on every device. A device runs its chunks one after another, skipping
    those whose trials are all frozen.

    Args:
      task: a task name or `tasks.Task`. program: `MIXED` or a variant. n_in: the network's inputs.
      devices: a sequence of JAX devices (or their platform names), the trial mesh's.
    """
    spec = tasks.get_task(task) if isinstance(task, str) else task
    cell = cell_of(program)
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
