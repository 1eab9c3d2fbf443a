"""Benchmark: compile time and epoch time of the trainer's CPU programs under XLA's two fused-kernel code
generators and two LLVM optimisation levels.

Run (from the repository root; ~8 minutes on 2 cores):

    python bench/cpu_codegen.py --out=/tmp/cpu_codegen.json

Why: the test suite is bound by compiling (tests/conftest.py), the library by running. Each row is one of the
trainer's group programs (`odyssey.train`'s K-slot group, as bench/trainer_speed.py times it) built four ways,
by jax.jit compiler options on top of the trainer's own (`programs.COMPILER_OPTIONS`):
  default   XLA's defaults (what the library runs);
  older     `xla_cpu_use_fusion_emitters=false`, XLA's older code generator for fused kernels;
  default/0, older/0   the same at `xla_backend_optimization_level=0` (what the suite compiles with).
"compile s" is the build of the group plus its first epoch and validation pass, after clearing JAX's and the
trainer's caches (the median of --repeats, the four ways in turn inside each repeat); "epoch s" the median of
--epochs later epochs after one untimed one (clearing the caches for the next build drops the earlier
builds' compiled programs), the four ways in turn. Ratios are against `default`.
"""

import json
import statistics
import time

from absl import app
from absl import flags
import jax

from odyssey import programs, train

import trainer_speed  # bench/ is the script's folder, so on sys.path

_REPEATS = flags.DEFINE_integer("repeats", 3, "Compiles of each program and way; the median is reported.")
_EPOCHS = flags.DEFINE_integer("epochs", 7, "Timed epochs of each program and way; the median is reported.")
_OUT = flags.DEFINE_string("out", None, "Also write the rows as JSON here.")

WAYS = {
    "default": {},
    "older": {"xla_cpu_use_fusion_emitters": False},
    "default/0": {"xla_backend_optimization_level": 0},
    "older/0": {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0},
}
# (task shape, variant, hidden size, trials): the JSB shape's 60 steps, the TIMIT shape's 100 (--quick sizes).
ROWS = (("jsb", "V", 100, 1), ("jsb", "V", 200, 1), ("jsb", train.MIXED, 100, 8), ("timit", "V", 100, 1),
        ("timit", "V", 200, 8))
STEPS = {"jsb": 60, "timit": 100}


def _build(task, variant, hidden, k, splits, device, options):
    """A TrainerTimer whose programs compile with the trainer's options plus `options`, and the seconds of its
    build, first epoch and first validation pass."""
    start = time.perf_counter()
    timer = trainer_speed.TrainerTimer(task, variant, hidden, k, splits, device, options=options)
    timer.train_epoch()
    timer.evaluate()
    return timer, time.perf_counter() - start


def main(argv):
    del argv
    device = jax.devices("cpu")[0]
    info = trainer_speed.machine_info(device)
    info["load_before"] = trainer_speed.load_average()
    rows = []
    for task, variant, hidden, k in ROWS:
        splits = trainer_speed.synthetic_splits(task, STEPS[task], {"train": 16, "valid": 16, "test": 16})
        compiles = {way: [] for way in WAYS}
        for _ in range(_REPEATS.value):
            timers = {}
            for way, options in WAYS.items():
                programs.group_programs.cache_clear()
                jax.clear_caches()
                timers[way], seconds = _build(task, variant, hidden, k, splits, device, options)
                compiles[way].append(seconds)
        for timer in timers.values():
            timer.train_epoch()  # the caches cleared after a group's build dropped its compiled programs
        epochs = {way: [] for way in WAYS}
        for _ in range(_EPOCHS.value):
            for way, timer in timers.items():
                epochs[way].append(timer.train_epoch())
        name = f"{task} {variant} N={hidden} K={k}"
        for way in WAYS:
            rows.append(dict(program=name, way=way, compile_s=statistics.median(compiles[way]),
                             epoch_s=statistics.median(epochs[way]), compiles=compiles[way], epochs=epochs[way]))
        print(f"done: {name}", flush=True)
    print(f"\n{'program':<24} {'way':<10} {'compile s':>9} {'x default':>9} {'epoch s':>8} {'x default':>9}")
    base = {r["program"]: r for r in rows if r["way"] == "default"}
    for r in rows:
        b = base[r["program"]]
        print(f"{r['program']:<24} {r['way']:<10} {r['compile_s']:>9.2f} {r['compile_s'] / b['compile_s']:>9.2f} "
              f"{r['epoch_s']:>8.4f} {r['epoch_s'] / b['epoch_s']:>9.2f}")
    info["load_after"] = trainer_speed.load_average()
    trainer_speed.print_machine(info)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(dict(machine=info, rows=rows), f, indent=2)


if __name__ == "__main__":
    app.run(main)
