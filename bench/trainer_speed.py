"""Benchmark: sequence-updates per second of the multi-trial trainer beside a single-trial PyTorch LSTM.

Run (from the repository root, with `pip install -e '.[bench]'` for PyTorch):

    python bench/trainer_speed.py --quick --out=/tmp/trainer_speed.json     # CPU: a few minutes
    python bench/trainer_speed.py --device=gpu --out=trainer_speed_gpu.json  # the full grid on a GPU

What is timed is the trainer's own compiled epoch (`odyssey.train`'s group of K slots, one sequence per
update, Nesterov SGD, full BPTT, input noise) on synthetic sequences of one length, after a compile-and-
warm-up epoch; every measurement runs whole epochs for at least --min_time seconds, and the table shows the
median of --repeats such measurements. All programs of one (shape, hidden size) row group, the PyTorch one
included, are measured in turn inside each repeat, so a change in the machine's load hits them alike.

Shapes (DESIGN §2): "jsb" is a unidirectional net, M = 88 inputs, 88 sigmoid outputs, ~60 steps; "timit" is
a bidirectional net, M = 39, 61 softmax outputs, ~300 steps (--quick: 100 steps and fewer trial counts).

The PyTorch baseline is one trial of `torch.nn.LSTM` (+ a linear readout) doing the same online updates:
one sequence per `torch.optim.SGD(nesterov=True)` step, input noise, the task's summed loss, on the
same device (eager). On CPU there is one baseline per thread count of --threads (default: 1 and the
cores): on a loaded 2-core machine one thread is often the faster, and the ratio is taken against the
fastest baseline of the same shape and hidden size. On a GPU the same update is also captured once as a
CUDA graph and replayed per update (--torch_graph), the fastest single-trial PyTorch there is.

The helpers `synthetic_splits`, `TrainerTimer`, `measure`, `machine_info` and `print_machine` also serve
`bench/study_time.py`; `paired_median_seconds` serves `ctc_speed.py` and `fast_lstm_speed.py`.
"""

import datetime
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import time
import warnings

from absl import app
from absl import flags
import jax
import numpy as np
from jax.sharding import Mesh

from odyssey import cells, fast_lstm, nets, programs, store, tasks, train

FLAGS = flags.FLAGS

# Inputs per step of each task's network (DESIGN §2): piano-roll keys, MFCC features, pen features.
N_INPUTS = {"jsb": 88, "timit": 39, "iam_online": 4}
_FULL = {"steps": {"jsb": 60, "timit": 300}, "trials": (1, 8, 32, 128)}
_QUICK = {"steps": {"jsb": 60, "timit": 100}, "trials": (1, 8, 32)}
_QUICK_TIMIT_TRIALS = (1, 8)
_TORCH_PROGRAMS = ("torch", "torch_graph")  # row names of the PyTorch baselines
XLA_DEFAULTS = "/xla-defaults"  # suffix of the rows of programs compiled with XLA's default options
# Memory bandwidth (bytes/s) by JAX device kind, for the streamed-weight bound (`weight_stream_bound`): the
# vendors' figures for the SXM cards.
BANDWIDTH = {"NVIDIA H100 80GB HBM3": 3.35e12, "NVIDIA H200": 4.8e12}


def weight_stream_bound(task: str, steps: int, hidden: int, variant: str, itemsize: int, bandwidth: float) -> float:
    """Sequence-updates/s summed over trials if every step streamed its trial's recurrent weights from memory.

    With one sequence per update, each time step of the forward and of the backward loop reads the layer's
    recurrent weights (R, N x GN, and FGR's Rg, 3N x 3N) once per trial; a bidirectional net has two layers.
    Inputs, states and the other weights are left out, so this is an upper bound for code that keeps no
    weights on chip: bandwidth / (2 passes x steps x layers x recurrent weight bytes).
    """
    cell = "V" if variant == train.MIXED else variant.split("/")[0]
    shapes = cells.shapes(cell, 1, hidden)
    weights = sum(math.prod(shapes[name]) for name in ("R", "Rg") if name in shapes)
    layers = nets.LAYERS[tasks.get_task(task).kind]
    return bandwidth / (2 * steps * layers * weights * itemsize)


def _define_flags():
    flags.DEFINE_enum("device", "cpu", ["cpu", "gpu", "tpu"], "Where JAX (and PyTorch: cpu or cuda) run.")
    flags.DEFINE_bool("quick", False, "CPU-sized: 100-step TIMIT sequences, K up to 32 (JSB) and 8 (TIMIT).")
    flags.DEFINE_list("shapes", ["jsb", "timit"], "Task shapes to measure: jsb, timit.")
    flags.DEFINE_list("hidden", ["100", "200"], "Blocks per hidden layer N.")
    flags.DEFINE_list("trials", None, "Trial counts K (default: 1,8,32,128; --quick: 1,8,32 and 1,8 for TIMIT).")
    flags.DEFINE_list("variants", ["V"], "LSTM variants of the trainer (V is the plain peephole LSTM).")
    flags.DEFINE_integer("jsb_steps", None, "Steps per JSB-shape sequence (default 60).")
    flags.DEFINE_integer("timit_steps", None, "Steps per TIMIT-shape sequence (default 300; --quick: 100).")
    flags.DEFINE_integer("sequences", 16, "Synthetic training sequences per epoch.")
    flags.DEFINE_integer("repeats", 5, "Timed measurements per program; the median is reported.")
    flags.DEFINE_float("min_time", 0.5, "Seconds of whole epochs each measurement runs at least.")
    flags.DEFINE_bool("torch", True, "Measure the single-trial PyTorch baseline.")
    flags.DEFINE_bool("torch_graph", True, "On a GPU, also the PyTorch baseline captured as a CUDA graph (one "
                      "replay per update); ignored on CPU.")
    flags.DEFINE_list("threads", None, "PyTorch CPU thread counts, one baseline each (default: 1 and the cores "
                      "this process may use); the ratio is against the fastest.")
    flags.DEFINE_string("out", None, "Where to write the results as JSON (rewritten after each shape and hidden "
                        "size, with complete: false until the run ends).")
    flags.DEFINE_integer("seed", 0, "Seed of the synthetic data and of the trials.")
    flags.DEFINE_integer("trials_per_chunk", 0, "Trials per vmapped step of the trainer (0: its default, "
                         "odyssey.train.default_trials_per_chunk: ~2 MiB of weights per layer on CPU, ~512 MiB "
                         "on GPU).")
    flags.DEFINE_integer("cpu_devices", 0, "With --device=cpu: JAX CPU devices (odyssey.train.use_cpu_cores; 0: one "
                         "per core). K > 1 trials are sharded over them as the trainer does; K = 1 runs on one.")
    flags.DEFINE_bool("xla_defaults", False, "Also measure each trainer program compiled with XLA's default "
                      "options instead of odyssey.programs.COMPILER_OPTIONS (rows '<variant>/xla-defaults'; "
                      "only where the device's platform has such options).")
    flags.DEFINE_list("recurrent_dtypes", ["float32"], "Operand dtypes of the LSTM loops' recurrent products to "
                      "measure, each its own trainer rows (float32: the paper's numerics; bfloat16: rows "
                      "'<variant>/bfloat16', see odyssey.train.train_trials).")
    flags.DEFINE_list("matmul_precisions", ["float32"], "Precisions of the trainer's float32 matrix products to "
                      "measure, each its own trainer rows: float32 (train_trials' default, true float32 products), "
                      "tensorfloat32 (rows '<variant>/tensorfloat32'), default (JAX's own setting, TF32 on recent "
                      "NVIDIA GPUs; rows '<variant>/default').")
    flags.DEFINE_bool("torch_tf32", False, "Let the PyTorch baselines use TF32 (torch.backends.cudnn.allow_tf32 and "
                      "cuda.matmul.allow_tf32; PyTorch's own default lets cuDNN use it). Default: both off, the same "
                      "float32 arithmetic as the trainer's default rows.")
    flags.DEFINE_list("lstm_loops", ["xla"], "How the LSTM loops run, each its own trainer rows: xla (the "
                      "default) and/or pallas (rows '<variant>/pallas': odyssey.pallas_loops' kernels; on a CPU "
                      "interpreted, slow). A pallas row's first epoch is also run beside its xla twin from the same "
                      "start, and the largest difference of their weights reported.")
    flags.DEFINE_integer("unroll", 0, "Time steps per iteration of the LSTM loops (0: "
                         "odyssey.fast_lstm.DEFAULT_UNROLL for the device's platform).")


def synthetic_splits(task: str, steps: int, sizes: dict, labels: int = 0, seed: int = 0) -> dict:
    """Random sequences of one length in the data loaders' format (what `odyssey.tasks.to_arrays` takes).

    Args:
      task: "jsb", "timit" or "iam_online".
      steps: T, time steps per sequence (network inputs; a JSB roll gets T + 1 rows, as it predicts ahead).
      sizes: split name -> number of sequences, e.g. {"train": 16, "valid": 32, "test": 32}.
      labels: characters per IAM-OnDB line (CTC targets); ignored for the other tasks.
      seed: of the numpy generator.

    Returns:
      dict split -> list of float32[T + 1, 88] rolls (jsb), (float32[T, 39], int[T]) pairs (timit) or
      (float32[T, 4], int[labels]) pairs with labels in 1..81 (iam_online; 0 is CTC's blank).
    """
    spec = tasks.get_task(task)
    if steps < 1:
        raise ValueError(f"{task}: steps per sequence must be >= 1, got {steps}")
    if task == "iam_online" and not 1 <= labels <= steps:
        raise ValueError(f"iam_online: need 1 <= labels <= steps for a feasible CTC alignment, "
                         f"got labels={labels}, steps={steps}")
    rng = np.random.default_rng(seed)

    def one():
        if task == "jsb":
            return (rng.random((steps + 1, spec.n_out)) < 0.05).astype(np.float32)  # ~4 of 88 keys sound
        x = rng.standard_normal((steps, N_INPUTS[task])).astype(np.float32)
        if task == "timit":
            return x, rng.integers(0, spec.n_out, steps)
        return x, rng.integers(1, spec.n_out, labels)

    return {name: [one() for _ in range(n)] for name, n in sizes.items()}


class TrainerTimer:
    """K trials of one variant (or of `train.MIXED`: the eight mixable variants in turn) at one hidden size in the
    trainer's own group program, timed per epoch.

    Uses `odyssey.train`'s internal group (the program `train_trials` runs), so what is timed is exactly
    the trainer's epoch: K slots, all live, all at hidden size N (no padding).
    """

    def __init__(self, task, variant, hidden, k, splits, device, eval_chunk=16, seed=0, chunk=None,
                 xla_defaults=False, recurrent_dtype="float32", matmul_precision="float32", order_seed=None,
                 lstm_loops="xla", options=None, order_stratum=None):
        """device: a JAX device, or a list of them to shard the K trials over; recurrent_dtype: the operand dtype
        of the LSTM loops' recurrent products; matmul_precision: of the float32 matrix products; order_seed:
        the data order (None: each trial's own); order_stratum: its strata (None: none); lstm_loops: how the
        LSTM loops run; all five as train_trials' arguments. options: XLA compiler options for the group's
        programs on top of the trainer's (or of XLA's defaults with xla_defaults)."""
        spec = tasks.get_task(task)
        arrays = {name: tasks.to_arrays(spec, splits[name]) for name in ("train", "valid", "test")}
        # Several devices: the trials are sharded over them, as train_trials shards a group over all devices.
        mesh = Mesh(np.asarray(device if isinstance(device, (list, tuple)) else [device]), ("trials",))
        # xla_defaults: the group's programs compiled without the trainer's `programs.COMPILER_OPTIONS`; options:
        # with these on top (the options are bound when the group builds its programs).
        saved = programs.COMPILER_OPTIONS
        programs.COMPILER_OPTIONS = {} if xla_defaults else saved
        if options:
            platform = mesh.devices.flat[0].platform
            programs.COMPILER_OPTIONS = {**programs.COMPILER_OPTIONS,
                                         platform: {**programs.COMPILER_OPTIONS.get(platform, {}), **options}}
        try:
            self.group = train.Group(spec, variant, hidden, k, arrays, N_INPUTS[task], mesh, eval_chunk,
                                      np.dtype(np.float32), chunk=chunk, recurrent_dtype=recurrent_dtype,
                                      order_seed=order_seed, matmul_precision=matmul_precision,
                                      lstm_loops=lstm_loops, order_stratum=order_stratum)
        finally:
            programs.COMPILER_OPTIONS = saved
        self.chunk = self.group.chunk
        # The mixed program's slots hold its variants in turn.
        kinds = cells.MIXABLE if variant == train.MIXED else (variant,)
        # A small learning rate keeps every trial finite (a chunk of frozen trials would be skipped).
        self.group.fill([train.Trial(trial_id=slot, variant=kinds[slot % len(kinds)], hidden_size=hidden,
                                     learning_rate=1e-5, momentum=0.9, input_noise=0.1, seed=seed * 100_003 + slot)
                         for slot in range(self.group.k)])
        self.k = self.group.k
        self.updates_per_epoch = self.k * arrays["train"].size
        self.valid_size = arrays["valid"].size

    def train_epoch(self) -> float:
        """Seconds of one epoch of the K trials, to the host's copy of its losses (as the trainer waits)."""
        start = time.perf_counter()
        self.group.train_epoch()
        return time.perf_counter() - start

    def evaluate(self) -> float:
        """Seconds of one validation pass of the K trials, host-side metric included (as after every epoch)."""
        start = time.perf_counter()
        self.group.evaluate("valid", self.group.state["params"])
        return time.perf_counter() - start


class TorchRunner:
    """One trial of `torch.nn.LSTM` + linear readout doing the trainer's online updates, timed per epoch."""

    def __init__(self, task, hidden, splits, device, threads=1, lr=1e-5, momentum=0.9, noise=0.1, seed=0,
                 graph=False):
        import torch  # the `bench` extra; only this baseline needs it

        self.torch = torch
        self.cuda = device == "cuda"
        self.threads = threads
        torch.manual_seed(seed)
        spec = tasks.get_task(task)
        if spec.loss == "ctc":
            raise ValueError("the PyTorch baseline covers the jsb and timit shapes only")
        arrays = tasks.to_arrays(spec, splits["train"])
        self.xs = torch.as_tensor(arrays.xs, device=device)
        target_dtype = torch.float32 if spec.loss == "bernoulli" else torch.int64
        self.targets = torch.as_tensor(arrays.targets, device=device, dtype=target_dtype)
        bi = spec.kind == "bi"
        self.lstm = torch.nn.LSTM(N_INPUTS[task], hidden, bidirectional=bi).to(device)
        self.readout = torch.nn.Linear(hidden * (2 if bi else 1), spec.n_out).to(device)
        params = list(self.lstm.parameters()) + list(self.readout.parameters())
        # The paper's ε = η (1 − μ); torch's Nesterov form differs from Sutskever's only in what it stores.
        self.opt = torch.optim.SGD(params, lr=lr * (1 - momentum), momentum=momentum, nesterov=True)
        self.loss = (torch.nn.BCEWithLogitsLoss(reduction="sum") if spec.loss == "bernoulli"
                     else torch.nn.CrossEntropyLoss(reduction="sum"))
        self.noise = noise
        self.updates_per_epoch = arrays.size
        self.graph = None
        if graph:
            self._capture()

    def _update(self, x, target):
        """One online update: input noise, forward, the summed loss, backward, a Nesterov SGD step."""
        x = x + self.noise * self.torch.randn_like(x)
        hidden, _ = self.lstm(x.unsqueeze(1))
        loss = self.loss(self.readout(hidden.squeeze(1)), target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def _capture(self):
        """Records one update as a CUDA graph on static input buffers (PyTorch's whole-network capture).

        Warm-up updates on the capture stream first create the momentum buffers and the cuDNN and cuBLAS
        handles, which must not be created during capture; replaying the graph then launches the update's
        kernels without Python or launch overhead (its noise is redrawn at every replay).
        """
        torch = self.torch
        if not self.cuda:
            raise ValueError("a CUDA-graph baseline needs PyTorch on CUDA (--device=gpu)")
        self.x_static = self.xs[0].clone()
        self.target_static = self.targets[0].clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._update(self.x_static, self.target_static)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph, stream=stream):
            self._update(self.x_static, self.target_static)
        torch.cuda.synchronize()

    def train_epoch(self) -> float:
        torch = self.torch
        torch.set_num_threads(self.threads)  # process-wide, so set for each epoch of each baseline
        start = time.perf_counter()
        for idx in torch.randperm(self.xs.shape[0]).tolist():
            if self.graph is None:
                self._update(self.xs[idx], self.targets[idx])
            else:
                self.x_static.copy_(self.xs[idx])
                self.target_static.copy_(self.targets[idx])
                self.graph.replay()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def measure(fns, repeats, min_time):
    """Median seconds per call of each function, measured in turn inside every repeat.

    Each function is called once first (compile and warm-up; its time is returned as `first`), once more to
    size a measurement to at least `min_time` seconds, then `repeats` times that many calls per measurement.

    Args:
      fns: dict name -> zero-argument function that does the work and returns its own seconds.
      repeats: measurements per function.
      min_time: seconds each measurement lasts at least.

    Returns:
      dict name -> {"first": s, "calls": n, "median": s per call, "all": [s per call of each measurement]}.
    """
    out = {}
    for name, fn in fns.items():
        first = fn()
        calls = max(1, math.ceil(min_time / max(fn(), 1e-9)))
        out[name] = {"first": first, "calls": calls, "all": []}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name]["all"].append(sum(fn() for _ in range(out[name]["calls"])) / out[name]["calls"])
    for record in out.values():
        record["median"] = statistics.median(record["all"])
    return out


def paired_median_seconds(fn_a, fn_b, args, repeats):
    """Median wall times of fn_a(*args) and fn_b(*args), called alternately so that a change in
    the machine's load hits both alike; one call of each first compiles and warms up."""
    times = ([], [])
    for fn in (fn_a, fn_b):
        jax.block_until_ready(fn(*args))
    for _ in range(repeats):
        for fn, record in zip((fn_a, fn_b), times):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            record.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def print_machine(info):
    """The footer of a benchmark table: the device and host, and the load before and after."""
    print(f"machine: {info['jax_device']}, {info.get('cpu', info['host'])}, {info['cores']} cores")
    print(f"before: {info['load_before']}")
    print(f"after:  {info.get('load_after', 'not recorded: the run stopped before its end')}")


def write_json(path, data):
    """Writes `data` to `path` as JSON through a temporary file and a rename: a reader, or a run cut at its
    limit, finds the previous whole file or the new one, never a part of one."""
    store.write_whole(path, json.dumps(data, indent=1))


def load_average() -> str:
    """The machine's load averages (1, 5, 15 min) as `uptime` states them."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: %.2f, %.2f, %.2f" % os.getloadavg()


def machine_info(device) -> dict:
    """What the figures were measured on: the JAX device, the host, the versions and the date."""
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "jax_device": f"{device.platform}: {device.device_kind}",
            "host": platform.processor() or platform.machine(),
            "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(), "jax": jax.__version__,
            "unroll": fast_lstm.DEFAULT_UNROLL.get(device.platform, 1),
            "devices": len(jax.devices(device.platform)),
            "compiler_options": train.compiler_options(device)}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    return info


def jax_device(kind: str):
    """The first JAX device of a platform ("cpu", "gpu", "tpu"); a clear error when there is none."""
    try:
        return jax.devices(kind)[0]
    except RuntimeError as err:
        raise app.UsageError(f"--device={kind}: JAX sees no such device ({err})") from None


def _settings():
    mode = _QUICK if FLAGS.quick else _FULL
    steps = {"jsb": FLAGS.jsb_steps or mode["steps"]["jsb"], "timit": FLAGS.timit_steps or mode["steps"]["timit"]}
    for shape in FLAGS.shapes:
        if shape not in steps:
            raise app.UsageError(f"--shapes: unknown shape {shape!r}; known: jsb, timit")
    if FLAGS.trials:
        trials = {shape: tuple(int(k) for k in FLAGS.trials) for shape in steps}
    else:
        trials = {"jsb": mode["trials"], "timit": _QUICK_TIMIT_TRIALS if FLAGS.quick else mode["trials"]}
    return steps, trials, [int(n) for n in FLAGS.hidden]


def _torch_threads(torch_device):
    """The PyTorch baselines' thread counts: one baseline on CUDA, else each count of --threads."""
    if torch_device != "cpu":
        return [1]
    cores = len(os.sched_getaffinity(0))
    return sorted({int(t) for t in FLAGS.threads} if FLAGS.threads else {1, cores})


def set_unroll(device, unroll):
    """Makes `unroll` (when > 0) the LSTM loops' steps per iteration on the device's platform, for this process.

    The trainer reads the default when it compiles, so set it before the first program is built.
    """
    if unroll < 0:
        raise app.UsageError(f"--unroll={unroll}: give a positive number of steps, or 0 for the default")
    if unroll:
        fast_lstm.DEFAULT_UNROLL[device.platform] = unroll


def main(argv):
    del argv
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    if FLAGS.cpu_devices < 0:
        raise app.UsageError(f"--cpu_devices={FLAGS.cpu_devices}: give a positive count, or 0 for one per core")
    if FLAGS.device == "cpu":
        train.use_cpu_cores(FLAGS.cpu_devices or None)
    device = jax_device(FLAGS.device)
    # K > 1 trials are sharded over all devices of the platform, as train_trials does.
    devices = jax.devices(FLAGS.device)
    set_unroll(device, FLAGS.unroll)
    torch_device = {"cpu": "cpu", "gpu": "cuda"}.get(FLAGS.device) if FLAGS.torch else None
    thread_counts = _torch_threads(torch_device) if torch_device else []
    steps, trials, hiddens = _settings()
    xla_defaults = FLAGS.xla_defaults and bool(train.compiler_options(device))
    unknown = sorted(set(FLAGS.recurrent_dtypes) - {"float32", "bfloat16"})
    if unknown or not FLAGS.recurrent_dtypes:
        raise app.UsageError(f"--recurrent_dtypes={','.join(FLAGS.recurrent_dtypes)}: give float32 and/or bfloat16")
    unknown = sorted(set(FLAGS.lstm_loops) - {"xla", "pallas"})
    if unknown or not FLAGS.lstm_loops:
        raise app.UsageError(f"--lstm_loops={','.join(FLAGS.lstm_loops)}: give xla and/or pallas")
    unknown = sorted(set(FLAGS.matmul_precisions) - {"float32", "tensorfloat32", "default"})
    if unknown or not FLAGS.matmul_precisions:
        raise app.UsageError(f"--matmul_precisions={','.join(FLAGS.matmul_precisions)}: give float32, "
                             f"tensorfloat32 and/or default")
    info = machine_info(device)
    info["load_before"] = load_average()
    bandwidth = BANDWIDTH.get(device.device_kind) if device.platform == "gpu" else None
    info["bandwidth"] = bandwidth
    if torch_device:
        try:
            import torch
        except ImportError:
            raise app.UsageError("PyTorch is missing: pip install -e '.[bench]' (torch==2.13.0), or pass "
                                 "--notorch") from None
        # TF32 in the baselines: PyTorch lets cuDNN take it by default; the trainer's default rows do not.
        try:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = FLAGS.torch_tf32
            tf32 = "on" if FLAGS.torch_tf32 else "off"
        except (AttributeError, RuntimeError) as err:  # a PyTorch without these flags: measured as it comes
            tf32 = f"left at PyTorch's default ({err})"
        info["torch"] = f"{torch.__version__} on {torch_device}, TF32 {tf32}"
    print(f"device {info['jax_device']}; host {info.get('cpu', info['host'])}, {info['cores']} cores; "
          f"jax {info['jax']}; PyTorch {info.get('torch', 'not measured')}; LSTM loops unrolled {info['unroll']}; "
          f"XLA options {info['compiler_options'] or 'default'}; {info['devices']} {device.platform} device(s), "
          f"K > 1 sharded over them")
    print(f"before: {info['load_before']}")

    config = {"quick": FLAGS.quick, "steps": steps, "trials": trials, "hidden": hiddens,
              "variants": FLAGS.variants, "sequences": FLAGS.sequences, "repeats": FLAGS.repeats,
              "min_time": FLAGS.min_time, "torch_threads": thread_counts,
              "recurrent_dtypes": FLAGS.recurrent_dtypes, "matmul_precisions": FLAGS.matmul_precisions,
              "lstm_loops": FLAGS.lstm_loops}
    rows = []
    # XLA's loops and PyTorch first, for every shape, then the Pallas loops (beside their XLA twins' weights and
    # PyTorch again, for the paired ratios): the first run of a Pallas kernel on a device (a fault, a hang, a
    # slow compile) then costs none of the other rows, and a run cut at its limit has written them.
    phases = [p for p in ([l for l in FLAGS.lstm_loops if l != "pallas"], [l for l in FLAGS.lstm_loops if l == "pallas"])
              if p]
    for phase, loops_now in enumerate(phases):
        for shape in FLAGS.shapes:
            splits = synthetic_splits(shape, steps[shape], {"train": FLAGS.sequences, "valid": 1, "test": 1},
                                      seed=FLAGS.seed)
            for hidden in hiddens:
                twins = phase > 0 and "xla" in FLAGS.lstm_loops  # measured in the first phase; here for the weights
                built = loops_now + (["xla"] if twins else [])
                runners = _trainer_runners(shape, hidden, splits, trials[shape], built, xla_defaults, devices)
                diffs = _pallas_differences(runners)
                if twins:
                    runners = {key: r for key, r in runners.items() if "/pallas" in key[0]}
                if not runners:  # every Pallas runner failed
                    continue
                for threads in thread_counts:
                    runners[("torch", threads)] = TorchRunner(shape, hidden, splits, torch_device, threads=threads,
                                                              seed=FLAGS.seed)
                if torch_device == "cuda" and FLAGS.torch_graph:
                    try:
                        runners[("torch_graph", 1)] = TorchRunner(shape, hidden, splits, torch_device,
                                                                  seed=FLAGS.seed, graph=True)
                    except RuntimeError as err:  # a failed capture must not cost the rest of a GPU run
                        print(f"torch LSTM graph ({shape}, N={hidden}): capture failed, left out: {err}", flush=True)
                times = measure({key: r.train_epoch for key, r in runners.items()}, FLAGS.repeats, FLAGS.min_time)
                rates = {key: r.updates_per_epoch / times[key]["median"] for key, r in runners.items()}
                # Ratios are paired: in each repeat, against the fastest PyTorch baseline of that same repeat
                # (measured moments apart), then the median over repeats; load drifts cancel.
                per_repeat = {key: [r.updates_per_epoch / t for t in times[key]["all"]] for key, r in runners.items()}
                torch_keys = [key for key in runners if key[0] in _TORCH_PROGRAMS]
                best = ([max(per_repeat[key][i] for key in torch_keys) for i in range(FLAGS.repeats)]
                        if torch_keys else None)
                block = []
                for (name, k), r in runners.items():
                    t = times[(name, k)]
                    baseline = name in _TORCH_PROGRAMS
                    if baseline and phase > 0:  # PyTorch's rows are the first phase's; here its times pair the ratios
                        continue
                    row = {"shape": shape, "steps": steps[shape], "hidden": hidden, "program": name,
                           "K": 1 if baseline else k, "torch_threads": k if baseline else None,
                           "chunk": None if baseline else r.chunk,
                           "updates_per_epoch": r.updates_per_epoch, "seconds_per_epoch": t["median"],
                           "seconds_all": t["all"], "first_epoch_seconds": t["first"],
                           "updates_per_s": rates[(name, k)],
                           "ratio_vs_best_torch": (statistics.median(a / b for a, b in zip(per_repeat[(name, k)], best))
                                                   if best else None)}
                    if (name, k) in diffs:
                        row["max_rel_diff_vs_xla"] = diffs[(name, k)]
                    if bandwidth and not baseline:
                        itemsize = 2 if "/bfloat16" in name else 4
                        row["weight_stream_bound"] = weight_stream_bound(shape, steps[shape], hidden, name, itemsize,
                                                                         bandwidth)
                    block.append(row)
                rows += block
                if FLAGS.out:  # what is measured so far, before it is printed: a run cut at its limit keeps it
                    write_json(FLAGS.out, {"machine": info, "config": config, "rows": rows, "complete": False})
                for row in block:
                    print(_row_text(row), flush=True)
                del runners

    info["load_after"] = load_average()
    _print_table(rows, info)
    if FLAGS.out:
        write_json(FLAGS.out, {"machine": info, "config": config, "rows": rows, "complete": True})
        print(f"wrote {FLAGS.out}")


def _trainer_runners(shape, hidden, splits, counts, loops, xla_defaults, devices):
    """The trainer's runners of one shape and hidden size: {(program name, K): TrainerTimer} for each variant,
    K, (XLA's default options,) recurrent dtype, matmul precision and loops of `loops`."""
    runners = {}
    for variant in FLAGS.variants:
        for k in counts:
            for plain in (False, True) if xla_defaults else (False,):
                for rd, precision, lp in itertools.product(FLAGS.recurrent_dtypes, FLAGS.matmul_precisions, loops):
                    name = (variant + ("" if rd == "float32" else "/" + rd)
                            + ("" if precision == "float32" else "/" + precision)
                            + ("" if lp == "xla" else "/" + lp) + XLA_DEFAULTS * plain)
                    runners[(name, k)] = TrainerTimer(
                        shape, variant, hidden, k, splits, devices[:k], seed=FLAGS.seed,
                        chunk=FLAGS.trials_per_chunk or None, xla_defaults=plain, recurrent_dtype=rd,
                        matmul_precision=None if precision == "default" else precision, lstm_loops=lp)
    return runners


def _pallas_differences(runners):
    """For each '/pallas' trainer runner with an XLA twin (the same name without it): one epoch of both from
    their identical starts, and the largest difference of their weights after it, relative to each weight
    array's largest magnitude. That epoch is then also the runners' compile and warm-up. A runner whose epoch
    fails (e.g. a kernel that does not build on this device) is reported and removed from `runners`, so the
    other rows are still measured."""
    out = {}
    for (name, k), runner in list(runners.items()):
        twin = runners.get((name.replace("/pallas", ""), k))
        if "/pallas" not in name or twin is None:
            continue
        try:
            runner.train_epoch()
        except Exception as err:  # noqa: BLE001 - any failure of the kernels must leave the other rows
            print(f"{name} K={k}: failed, left out: {type(err).__name__}: {err}", flush=True)
            del runners[(name, k)]
            continue
        start = [np.array(x, np.float64) for x in jax.tree_util.tree_leaves(twin.group.state["params"])]
        twin.train_epoch()
        worst = moved = 0.0
        for a, b, s in zip(jax.tree_util.tree_leaves(runner.group.state["params"]),
                           jax.tree_util.tree_leaves(twin.group.state["params"]), start):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            scale = max(float(np.abs(b).max()), 1e-30)
            worst = max(worst, float(np.abs(a - b).max()) / scale)
            moved = max(moved, float(np.abs(b - s).max()) / scale)
        out[(name, k)] = worst
        # how far the epoch moved the weights: the scale that the difference is small beside
        print(f"{name} K={k}: weights after one epoch differ from XLA's loops' by at most {worst:.1e} (relative); "
              f"the epoch moved them by up to {moved:.1e}", flush=True)
    return out


def _row_text(r):
    if r["program"] == "torch":
        name = f"torch nn.LSTM/{r['torch_threads']}t"
    elif r["program"] == "torch_graph":
        name = "torch LSTM graph"
    else:
        name = f"odyssey {r['program']}"
    ratio = f"{r['ratio_vs_best_torch']:.2f}" if r["ratio_vs_best_torch"] is not None else "-"
    chunk = "-" if r.get("chunk") is None else str(r["chunk"])
    bound = f"{100 * r['updates_per_s'] / r['weight_stream_bound']:>7.0f} %" if r.get("weight_stream_bound") else ""
    return (f"{r['shape']:<6} {r['steps']:>4} {r['hidden']:>4} {name:<36} {r['K']:>4} {chunk:>5} "
            f"{r['updates_per_s']:>11.1f} {ratio:>12}{bound}")


def _print_table(rows, info):
    print()
    bounded = any(r.get("weight_stream_bound") for r in rows)
    header = (f"{'shape':<6} {'T':>4} {'N':>4} {'program':<36} {'K':>4} {'chunk':>5} {'updates/s':>11} "
              f"{'x best torch':>12}" + (f" {'of bound':>9}" if bounded else ""))
    print(header)
    print("-" * len(header))
    for r in rows:
        print(_row_text(r))
    print("-" * len(header))
    print("updates/s: sequence-updates per second summed over the K trials (median of the repeats); each update is")
    print("one sequence: forward, full BPTT, a Nesterov SGD step; all sequences of length T (no padding).")
    if any(r["program"] in _TORCH_PROGRAMS for r in rows):
        print("PyTorch: one trial of torch.nn.LSTM (NO peepholes; odyssey's V has three per block) + a linear")
        print("readout; '/2t' = torch.set_num_threads(2); 'graph': the same update captured as a CUDA graph and")
        print("replayed per update. 'x best torch': in each repeat, updates/s over the fastest PyTorch")
        print("baseline of the same shape, hidden size and repeat; the median over repeats. PyTorch's TF32")
        print(f"(cuDNN and matmul; --torch_tf32): {info['torch'].split('TF32 ', 1)[1]}.")
    if bounded:
        print("of bound: updates/s over the rate at which streaming each trial's recurrent weights at every step of")
        print(f"the forward and backward loops would saturate {info['bandwidth'] / 1e12:.2f} TB/s (trainer_speed."
              f"weight_stream_bound; bfloat16 rows: 2-byte weights).")
    print("chunk: trials per vmapped step (a K-trial program runs K/chunk chunks one after another, on each")
    print(f"device: K > 1 trials are sharded over the {info['devices']} device(s) as the trainer shards them).")
    if any(r["program"].split("/")[-1] in ("tensorfloat32", "default") for r in rows):
        print("'/tensorfloat32': the trainer's float32 products at TF32 precision (train_trials' matmul_precision);")
        print("'/default': at JAX's own setting (TF32 on recent NVIDIA GPUs). Other rows: true float32 products.")
    if any("/bfloat16" in r["program"] for r in rows):
        print("'/bfloat16': the LSTM loops' recurrent products take bfloat16 operands (weights and each step's")
        print("vector rounded), summed in float32; everything else float32 (odyssey.train.train_trials).")
    if any(r["program"].endswith(XLA_DEFAULTS) for r in rows):
        print(f"'{XLA_DEFAULTS}': the same program compiled with XLA's default options instead of "
              f"odyssey.programs.COMPILER_OPTIONS.")
    print_machine(info)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
