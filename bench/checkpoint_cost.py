"""Benchmark: what a checkpoint of a group's trials costs beside an epoch of the group.

Run (from the repository root):

    python bench/checkpoint_cost.py --quick --out=/tmp/checkpoint_cost.json     # CPU: about a minute
    python bench/checkpoint_cost.py --device=gpu --out=checkpoint_cost_gpu.json  # study-sized groups on a GPU

For each task shape, hidden size and trial count, a group of K live trials of the mixed program (the
trainer's own, `bench/trainer_speed.TrainerTimer`) trains one epoch, then the table gives the median over
--repeats of: an epoch (training and validation), a checkpoint's two parts (`snapshot`: the group's weights,
velocities and best weights to the host, each trial cut to its own layout; `save`: the file written, flushed
to disk and renamed, `odyssey.checkpoints`), the file's size, and the share of the time a study spends
checkpointing at the study command's default of one checkpoint per `--checkpoint_seconds` (300 s), that
is (snapshot + save) / 300 s. The file goes to --dir (default: a temporary directory on the disk the
study would use, here the repository's), and is removed at the end.
"""

import os
import pathlib
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_speed import (TrainerTimer, jax_device, load_average, machine_info, print_machine,  # noqa: E402
                           synthetic_splits, write_json)

from odyssey import checkpoints, train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Small groups that run on 2 CPU cores in about a minute.")
flags.DEFINE_string("device", "cpu", "cpu or gpu.")
flags.DEFINE_string("out", None, "Write the rows as JSON here.")
flags.DEFINE_string("dir", None, "Where the checkpoint files go (default: a temporary directory in the repository).")
flags.DEFINE_integer("repeats", 3, "Measurements per row; the table shows their medians.")
flags.DEFINE_float("interval", checkpoints.DEFAULT_SECONDS, "Seconds between checkpoints for the overhead column.")

# (task, steps per sequence, training sequences, hidden sizes, trial counts)
_QUICK = [("jsb", 60, 8, (40, 200), (8, 32)), ("timit", 100, 4, (40, 200), (8, 32))]
_FULL = [("jsb", 60, 32, (40, 200), (64, 512)), ("timit", 300, 8, (40, 200), (64, 512))]


def measure_row(task, steps, n_train, hidden, k, device, directory, repeats):
    splits = synthetic_splits(task, steps, {"train": n_train, "valid": 8, "test": 8})
    timer = TrainerTimer(task, train.MIXED, hidden, k, splits, device)
    timer.train_epoch()  # compiles; every slot now holds a trial with an epoch to save
    timer.evaluate()
    ck = checkpoints.Checkpoints(directory)
    group = timer.group
    zeros = np.zeros(group.k)
    epoch_s, snapshot_s, save_s = [], [], []
    size = 0
    for _ in range(repeats):
        epoch_s.append(timer.train_epoch() + timer.evaluate())
        start = time.perf_counter()
        entries = group.snapshot(zeros + 1.0, zeros.astype(int) + 1, zeros)
        snapshot_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        ck.save("bench", {"task": task}, entries)
        save_s.append(time.perf_counter() - start)
        size = (pathlib.Path(directory) / "bench.npz").stat().st_size
    ck.clear()
    med = statistics.median
    return {"task": task, "steps": steps, "hidden": hidden, "trials": group.k, "train_sequences": n_train,
            "epoch_s": med(epoch_s), "snapshot_s": med(snapshot_s), "save_s": med(save_s), "file_mb": size / 1e6}


def main(argv):
    del argv
    device = jax_device(FLAGS.device)
    info = machine_info(device)
    info["load_before"] = load_average()
    grid = _QUICK if FLAGS.quick else _FULL
    rows = []
    base = FLAGS.dir or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory(prefix=".checkpoint_cost_", dir=base) as tmp:
        for task, steps, n_train, hiddens, counts in grid:
            for hidden in hiddens:
                for k in counts:
                    row = measure_row(task, steps, n_train, hidden, k, device, tmp, FLAGS.repeats)
                    row["overhead"] = (row["snapshot_s"] + row["save_s"]) / FLAGS.interval
                    rows.append(row)
                    if FLAGS.out:  # a run cut at its limit keeps the rows it printed
                        write_json(FLAGS.out, {"machine": info, "interval_s": FLAGS.interval, "rows": rows,
                                               "complete": False})
                    print(f"{task} N={hidden} K={row['trials']}: epoch {row['epoch_s']:.3f}s, snapshot "
                          f"{row['snapshot_s']:.3f}s, save {row['save_s']:.3f}s, {row['file_mb']:.1f} MB", flush=True)
    info["load_after"] = load_average()
    print()
    print_machine(info)
    print(f"| task, T | N | K | epoch s (training sequences) | snapshot s | save s | file MB | MB/s written | "
          f"share at one per {FLAGS.interval:g} s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['task']}, T={r['steps']} | {r['hidden']} | {r['trials']} | {r['epoch_s']:.3f} "
              f"({r['train_sequences']}) | {r['snapshot_s']:.3f} | {r['save_s']:.3f} | {r['file_mb']:.1f} | "
              f"{r['file_mb'] / max(r['save_s'], 1e-9):.0f} | {100 * r['overhead']:.2f} % |")
    if FLAGS.out:
        write_json(FLAGS.out, {"machine": info, "interval_s": FLAGS.interval, "rows": rows, "complete": True})


if __name__ == "__main__":
    app.run(main)
