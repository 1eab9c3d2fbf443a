"""Benchmark without a GPU: the kernels per loop iteration of the trainer's epoch program compiled for an H100.

On a GPU, a time step of a few hundred small trials costs about the same whatever they compute: the
kernels of the LSTM loops run one after another, each a few microseconds of launch and latency (the JSB
study's small groups sat near 19-23 us per loop step on an H100, bench/README.md). How many kernels a loop
iteration launches is therefore the figure to lower there, and XLA can say it without the device: this
script compiles a group's training epoch for a described H100 (JAX's deviceless compilation,
`jax.experimental.topologies`) and counts, in the optimized program, the instructions of each while loop's
body that launch work (fusions, copies, library calls).

It needs JAX's CUDA plugin, which runs nothing here but compiles; in a separate environment:

    python3 -m venv /tmp/cuda && . /tmp/cuda/bin/activate
    pip install "jax==$(python -c 'import jax; print(jax.__version__)')" \
        "jax-cuda13-plugin[with-cuda]==<the same version>" && pip install -e .
    JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 python bench/gpu_kernels.py --shape=jsb --program=mixed --hidden=40 --trials=487

(about 5 GB of CUDA libraries; the version check is skipped because there is no driver). The H100's
description below holds what XLA's GPU compiler reads of a device (its facts: 132 SMs, 228 KiB of shared
memory per SM, 50 MiB of L2, 80 GB at 3.35 TB/s, compute capability 9.0). The LSTM loops are unrolled as the
trainer does on a GPU (`odyssey.fast_lstm.DEFAULT_UNROLL`), and the training split has sequences of two
lengths, so each update's loops stop at its longest sequence as on real data.
"""

import collections
import os
import re
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Without a device XLA cannot tune Triton's tiles for some products (FGR's weight gradients failed with
# "Couldn't find output tile sizes"), so products compile for cuBLAS here; they run after the loops, whose
# kernels this counts.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_gpu_enable_triton_gemm=false"]))

FLAGS = flags.FLAGS
flags.DEFINE_enum("shape", "jsb", ["jsb", "timit", "iam_online"], "The task's network.")
flags.DEFINE_string("program", "mixed", "The group's program: 'mixed' (the eight variants other than FGR) or a "
                    "variant.")
flags.DEFINE_integer("hidden", 40, "Hidden size of the group (its bucket).")
flags.DEFINE_integer("trials", 487, "Trials in the group (slots).")
flags.DEFINE_integer("unroll", 0, "Time steps per loop iteration (0: the trainer's on a GPU).")
flags.DEFINE_enum("recurrent_dtype", "float32", ["float32", "bfloat16"], "Operand dtype of the recurrent products.")
flags.DEFINE_enum("lstm_loops", "xla", ["xla", "pallas"], "How the LSTM loops run (odyssey.train.train_trials).")
flags.DEFINE_string("hlo", None, "Also write the optimized program's text here.")
flags.DEFINE_bool("eval", False, "Also compile the group's evaluation program and count its loops' launches.")

_H100 = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  shared_memory_per_block_optin: 232448
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84942979072
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  cuda_compute_capability { major: 9 minor: 0 }
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
_STEPS = {"jsb": 60, "timit": 304, "iam_online": 334}
# Instructions of a computation that launch nothing of their own.
_FREE = ("parameter(", "get-tuple-element(", "tuple(", "constant(", "bitcast(", "after-all(")


def computations(text):
    """name -> its instruction lines, for each computation of an HLO module's text."""
    out, current = {}, None
    for line in text.splitlines():
        if (line.startswith("%") or line.startswith("ENTRY")) and line.endswith("{"):
            current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            out[current] = []
        elif line.startswith("}"):
            current = None
        elif current is not None and " = " in line:
            out[current].append(line.strip())
    return out


def launches(lines):
    """Counter of the launching instructions among `lines`, by kind (fusion kind, op, custom-call target)."""
    kinds = collections.Counter()
    for line in lines:
        rhs = line.split(" = ", 1)[1]
        if any(free in rhs for free in _FREE):
            continue
        op = re.search(r"\s([\w\-]+)\(", rhs)
        name = op.group(1) if op else "?"
        if name == "fusion":
            kind = re.search(r"kind=(\w+)", rhs)
            name = "fusion:" + (kind.group(1) if kind else "?")
        elif name == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', rhs)
            name = "custom-call:" + (target.group(1) if target else "?")
        kinds[name] += 1
    return kinds


def while_loops(text):
    """(body name, its parent, its launches Counter) for every while loop of the module."""
    comps = computations(text)
    out = []
    for parent, lines in comps.items():
        for line in lines:
            if " while(" in line:
                body = re.search(r"body=%?([\w.\-]+)", line).group(1)
                out.append((body, parent, launches(comps.get(body, []))))
    return out


def h100_topology():
    """The described H100 as a JAX topology (its devices compile, they hold no data); a UsageError where
    JAX's CUDA plugin is missing."""
    from jax.experimental import topologies
    try:
        return topologies.get_topology_desc(platform="cuda", topology_name="h100", target_config=_H100,
                                            topology="1x1x1")
    except (NotImplementedError, RuntimeError) as err:
        raise app.UsageError(f"JAX cannot compile for CUDA here ({err}): install JAX's CUDA plugin as "
                             "bench/gpu_kernels.py's docstring says, and set JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1") from None


def abstract_gpu_mesh(topology, mesh=None):
    """A context in which programs traced here lower for the described GPU: jax >= 0.11 asks the abstract
    mesh which GPU Pallas' Triton lowering targets (the default device here is the CPU). Programs under
    their own mesh (the trainer's shard_map) need none and must not have it; jax 0.10 asks nothing.
    `mesh`: the concrete mesh (of the topology's devices) the program's arrays live on, whose abstract form
    is then the context's (it must match theirs)."""
    import jax
    if mesh is not None:
        return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)
    target = topology.devices[0]
    mesh = jax.sharding.AbstractMesh((1,), ("trials",), abstract_device=jax.sharding.AbstractDevice(
        device_kind=target.device_kind, num_cores=getattr(target, "core_count", None), platform="cuda"))
    return jax.sharding.use_abstract_mesh(mesh)


def compile_epoch(task, program, hidden, k, unroll, recurrent_dtype, lstm_loops="xla", programs=("epoch",)):
    """The optimized HLO text of a group's training epoch (and of the other `programs` of
    `odyssey.group.Group.lowered`: "eval"), compiled for the H100 described above; one text, or a dict by program
    where `programs` has more."""
    import jax
    from jax.sharding import Mesh

    import trainer_speed
    from odyssey import fast_lstm, pallas_loops, tasks, train

    topology = h100_topology()
    pallas_loops.INTERPRET = False  # Triton kernels for the GPU, though the host's backend is a CPU
    # Traced here on a CPU host: the loops take the GPU's unroll.
    fast_lstm.DEFAULT_UNROLL[jax.default_backend()] = unroll or fast_lstm.DEFAULT_UNROLL["gpu"]
    spec = tasks.get_task(task)
    steps = _STEPS[task]
    splits = trainer_speed.synthetic_splits(task, steps, {"train": 8, "valid": 16, "test": 1}, labels=40)
    arrays = {name: tasks.to_arrays(spec, splits[name]) for name in ("train", "valid", "test")}
    arrays["train"].mask[0, steps // 2:] = 0  # one shorter sequence: the loops stop at each update's longest

    def abstract(tree, sharding=None, **_):
        # The group puts its arrays on its devices; here they stay shapes (a topology's devices hold nothing).
        return jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype, sharding=sharding), tree)

    put = train.jax.device_put
    train.jax.device_put = abstract
    try:
        mesh = Mesh(np.asarray(topology.devices), ("trials",))
        group = train.Group(spec, program, hidden, k, arrays, trainer_speed.N_INPUTS[task], mesh, 16,
                             np.dtype(np.float32), recurrent_dtype=None if recurrent_dtype == "float32" else
                             recurrent_dtype, order_seed=1, matmul_precision="float32",
                             lstm_loops=lstm_loops)
        from odyssey import cells
        kinds = cells.MIXABLE if program == train.MIXED else (program,)
        group.fill([train.Trial(i, kinds[i % len(kinds)], hidden, 1e-3, 0.9, 0.1, seed=i) for i in range(group.k)])
        texts = {}
        for name in programs:
            if name == "epoch":  # under the trainer's own mesh (shard_map)
                lowered = group.lowered(("epoch",))["epoch"]
            else:
                with abstract_gpu_mesh(topology, mesh):
                    lowered = group.lowered((name,))[name]
            texts[name] = lowered.compile().as_text()
        return texts["epoch"] if tuple(programs) == ("epoch",) else texts
    finally:
        train.jax.device_put = put


def main(argv):
    del argv
    programs = ("epoch", "eval") if FLAGS.eval else ("epoch",)
    texts = compile_epoch(FLAGS.shape, FLAGS.program, FLAGS.hidden, FLAGS.trials, FLAGS.unroll, FLAGS.recurrent_dtype,
                          FLAGS.lstm_loops, programs)
    texts = texts if isinstance(texts, dict) else {"epoch": texts}
    if FLAGS.hlo:
        with open(FLAGS.hlo, "w") as f:
            f.write(texts["epoch"])
    for name, text in texts.items():
        print(f"{FLAGS.shape} {FLAGS.program} N={FLAGS.hidden} K={FLAGS.trials}, {FLAGS.lstm_loops} loops, {name} "
              "program, compiled for an H100 (deviceless):")
        for body, parent, kinds in while_loops(text):
            print(f"  while body {body} (in {parent}): {sum(kinds.values())} launches {dict(kinds)}")
        triton = text.count('custom_call_target="__gpu$xla.gpu.triton"')
        print(f"  Pallas (Triton) kernels in the program: {triton}")


if __name__ == "__main__":
    app.run(main)
