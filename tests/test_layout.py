"""odyssey.layout: how many trials a chunk and a group hold on each kind of device, against hand arithmetic."""

import jax
import numpy as np

from odyssey import layout, nets, tasks
from odyssey.group import Group


def test_default_trials_per_chunk_by_hand():
    # CPU: 2 MiB of weights per layer and device. JSB net at N = 200: 249,488 float32 parameters.
    jsb_200 = nets.count_params("V", "uni", 88, 200, 88) * 4
    assert jsb_200 == 997_952
    assert layout.default_trials_per_chunk("cpu", jsb_200) == 2_097_152 // 997_952 == 2
    assert layout.default_trials_per_chunk("cpu", jsb_200, devices=2) == 1_048_576 // 997_952 == 1
    # bidirectional: the budget is per layer (1,638,644 bytes in two layers)
    timit_200 = nets.count_params("V", "bi", 39, 200, 61) * 4
    assert layout.default_trials_per_chunk("cpu", timit_200, layers=2) == 2_097_152 // 819_322 == 2
    assert layout.default_trials_per_chunk("cpu", 10 << 20) == 1  # never fewer than one
    # accelerators: 512 MiB of all weights, whatever the layers and devices
    assert layout.default_trials_per_chunk("gpu", timit_200, layers=2, devices=8) == (512 << 20) // 1_638_644
    device = jax.devices("cpu")[0]
    assert layout.default_trials_per_chunk(device, jsb_200) == 2


def test_group_layout_by_hand():
    # The JSB study's first group: 487 trials of the mixed program (V's cell) at N = 40, 24,368 parameters each
    # (W 4 x 40 x 88, R 4 x 40 x 40, p 3 x 40, b 4 x 40, readout 88 x 40 + 88): 97,472 bytes in float32.
    assert nets.count_params("V", "uni", 88, 40, 88) * 4 == 97_472
    # An accelerator: one vmapped chunk of every slot.
    assert layout.group_layout("jsb", layout.MIXED, 40, 487, 88, ["gpu"]) == (487, 487)
    # Two CPU devices: 244 slots each, chunks of 1 MiB // 97,472 = 10 trials, so 25 chunks of 10 a device.
    assert layout.group_layout("jsb", layout.MIXED, 40, 487, 88, ["cpu", "cpu"]) == (500, 10)
    # A chunk size asked for: 244 slots a device in ceil(244 / 100) = 3 equal chunks of 82.
    assert layout.group_layout("jsb", "FGR", 40, 487, 88, ["cpu", "cpu"], trials_per_chunk=100) == (492, 82)
    # What a group of the trainer takes: its slots and chunk. One CPU device: 30 slots, chunks of at most
    # 2 MiB // 97,472 = 21 trials, so 2 chunks of 15.
    spec = tasks.get_task("jsb")
    rng = np.random.default_rng(0)
    arrays = {name: tasks.to_arrays(spec, [(rng.random((5, 88)) < 0.1).astype(np.float32) for _ in range(3)])
              for name in ("train", "valid", "test")}
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("trials",))
    group = Group(spec, layout.MIXED, 40, 30, arrays, 88, mesh, 4, np.dtype(np.float32))
    assert (group.k, group.chunk) == (30, 15) == layout.group_layout("jsb", layout.MIXED, 40, 30, 88, ["cpu"])
