"""The benchmarks that time the Pallas LSTM loops on a GPU run, and report agreeing values, on this CPU.

A device session runs them once, with no time to debug: here both run at tiny shapes with the kernels in
Pallas' interpret mode. bench/pallas_lstm_speed.py compares each program's outputs with XLA's loops' and
prints the largest relative difference per row; bench/trainer_speed.py --lstm_loops=xla,pallas trains one
epoch of each Pallas program beside its XLA twin from the same start and prints how far their weights
differ. Both differences are bounded here (the kernels' values themselves are tested against independent
oracles in test_pallas_loops.py).
"""

import os
import pathlib
import re
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"


def _run(args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable] + args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_layer_benchmark_times_both_loops_and_they_agree():
    out = _run([str(BENCH / "pallas_lstm_speed.py"), "--shapes=jsb:20:3,jsb:70:2", "--repeats=1", "--min_time=0",
                "--passes=grad"])
    rows = re.findall(r"^\| jsb \| (\d+) \| (\d+) \| float32 \| (equal|uneven) \| grad \| (pallas|xla) \| \S+ \| \S+ \| "
                      r"\S+ \| (\S+) \|$", out, re.M)
    # Both sizes (R held at P = 32, read in chunks at P = 128), both length modes, both loops.
    assert {(n, mode, loops) for n, _, mode, loops, _ in rows} == {
        (n, mode, loops) for n in ("20", "70") for mode in ("equal", "uneven") for loops in ("pallas", "xla")}, out
    for n, k, mode, loops, diff in rows:
        assert float(diff) < 1e-5, (n, k, mode, loops, diff)  # float32: measured 2-3e-7


def test_the_trainer_benchmark_runs_the_pallas_program_beside_its_xla_twin():
    out = _run([str(BENCH / "trainer_speed.py"), "--device=cpu", "--shapes=jsb", "--hidden=8", "--trials=1,3",
                "--variants=mixed", "--lstm_loops=xla,pallas", "--notorch", "--repeats=1", "--min_time=0",
                "--sequences=4", "--cpu_devices=1"])
    found = re.findall(r"^mixed/pallas K=(\d+): weights after one epoch differ from XLA's loops' by at most "
                       r"(\S+) \(relative\); the epoch moved them by up to (\S+)$", out, re.M)
    diffs = {k: (float(d), float(m)) for k, d, m in found}
    assert set(diffs) == {"1", "3"}, out
    # float32 on CPU: measured 5e-12 and 6e-10, beside an epoch that moved the weights (not two frozen runs)
    assert all(d < 1e-8 and m > 1e-4 for d, m in diffs.values()), diffs
    for k in ("1", "3"):
        assert re.search(rf"^jsb +60 +8 odyssey mixed/pallas +{k} ", out, re.M), out
        assert re.search(rf"^jsb +60 +8 odyssey mixed +{k} ", out, re.M), out
    # XLA's rows are measured and printed (and written) before the Pallas loops first run
    printed = re.findall(r"^jsb +60 +8 odyssey (mixed\S*) +(\d+) ", out, re.M)
    assert printed[:4] == [("mixed", "1"), ("mixed", "3"), ("mixed/pallas", "1"), ("mixed/pallas", "3")], printed
    first_xla_row = re.search(r"^jsb +60 +8 odyssey mixed +1 ", out, re.M).start()
    assert out.index("mixed/pallas K=1: weights after one epoch") > first_xla_row
