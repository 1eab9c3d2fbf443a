"""The Pallas layer prototype of bench/pallas_lstm_speed.py stays correct as the package it imports changes.

Its CPU mode runs both kernels in Pallas' interpret mode and compares them with independent references:
the outputs with a hand-stepped float64 loop, the gradients with autodiff of `odyssey.nets.lstm_layer`
(float64, masked past each trial's length), and with bfloat16 recurrent operands with `odyssey.fast_lstm`
at the same `recurrent_dtype`; it exits non-zero past 1e-10 (float64) or 1e-5 (bfloat16). Here that check
runs as a program, and each case's reported errors are read back and bounded again.
"""

import os
import pathlib
import re
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "pallas_lstm_speed.py"


def test_both_kernels_match_the_references_in_interpret_mode():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    cases = re.findall(r"N = (\d+) \(P = (\d+), (R held|R read every step in chunks of \d+ rows)\), K = \d+, "
                       r"(T steps|lengths [\d, ]+), against (.+?): max \|y error\| (\S+), "
                       r"max relative gradient error (\S+)", done.stdout)
    # Both kernel forms, N = P and N < P, all trials at T steps and each at its own length, float64 and
    # bfloat16 operands.
    assert len(cases) == 8, done.stdout
    assert {form.startswith("R held") for _, _, form, *_ in cases} == {True, False}
    assert any(n != p for n, p, *_ in cases) and any(n == p for n, p, *_ in cases)
    assert {lengths == "T steps" for *_, lengths, _, _, _ in cases} == {True, False}
    for n, p, form, lengths, oracle, err_y, err_g in cases:
        bound = 1e-10 if "float64" in oracle else 1e-5
        assert float(err_y) < bound and float(err_g) < bound, (n, p, form, lengths, oracle, err_y, err_g)
