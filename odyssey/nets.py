"""Layers over time (`lax.scan` with padding masks) and the study's uni- and bidirectional networks.

The networks of DESIGN §2:
  * "uni" (JSB): one forward LSTM layer of N blocks → a linear readout (sigmoid outputs, applied by the loss).
  * "bi" (TIMIT, IAM-OnDB): a forward and a backward layer of N blocks each, both feeding one linear readout
    (softmax outputs, applied by the loss).

Network parameters: {"fwd": cell params, ["bwd": cell params,] "out": {"w": float[D, K], "b": float[K]}} with
D = N (uni) or 2N (bi; forward units first). The readout starts from N(0, std²) like the cells.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from odyssey import cells, fast_lstm

NET_KINDS = ("uni", "bi")
# LSTM layers of each kind of network: a bidirectional one has a forward and a backward layer.
LAYERS = {"uni": 1, "bi": 2}

# The axes of size N in each tensor of the layout of odyssey.cells.
_HIDDEN_AXES = {"W": (2,), "R": (0, 2), "b": (1,), "p": (1,), "Rg": (1, 3)}


def lstm_layer(variant: str, params: dict, xs: jax.Array, mask: jax.Array | None = None, reverse: bool = False,
               carry0: tuple | None = None, switches: jax.Array | None = None) -> jax.Array:
    """Runs one LSTM layer over a sequence.

    Args:
      variant: one of `odyssey.cells.VARIANTS` (static).
      params: the layer's parameters (`odyssey.cells.init`).
      xs: float[T, M] inputs.
      mask: float[T], 1 for valid steps and 0 for padding; a padded step keeps the state and outputs 0.
        With padding at the end, the backward direction starts at the last valid step, so a padded
        sequence gives exactly the outputs of the unpadded one in both directions.
      reverse: run from the last step to the first.
      carry0: the initial state (default zero), as from `odyssey.cells.init_carry`.
      switches: optional float[6], the mixed cell's switches (with variant "V"; see `odyssey.cells.step`).

    Returns:
      float[T, N], the block outputs y_t (0 at padded steps).
    """
    n = params["R"].shape[0]
    if carry0 is None:
        carry0 = cells.init_carry(variant, n, jnp.result_type(xs.dtype, params["R"].dtype))
    xw = cells.input_projection(params, xs)
    if mask is None:
        def body(carry, xw_t):
            return cells.step(variant, params, carry, xw_t, switches)
        _, ys = jax.lax.scan(body, carry0, xw, reverse=reverse)
        return ys

    def masked_body(carry, inputs):
        xw_t, m = inputs
        new, y = cells.step(variant, params, carry, xw_t, switches)
        keep = m > 0
        carry = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, carry)
        return carry, jnp.where(keep, y, 0.0)

    _, ys = jax.lax.scan(masked_body, carry0, (xw, mask.astype(xs.dtype)), reverse=reverse)
    return ys


def _check_kind(kind: str):
    if kind not in NET_KINDS:
        raise ValueError(f"unknown net kind {kind!r}; known kinds: {', '.join(NET_KINDS)}")


def init_net(key: jax.Array, variant: str, kind: str, n_in: int, n_hidden: int, n_out: int, std: float = 0.1,
             dtype=np.float32) -> dict:
    """Draws a network's parameters from N(0, std²), on the host (numpy arrays), like `odyssey.cells.init`.

    Args:
      key: a PRNG key.
      variant: the LSTM variant of the hidden layer(s).
      kind: "uni" or "bi".
      n_in: M, inputs per step.
      n_hidden: N, blocks per hidden layer.
      n_out: K, outputs per step.
      std: the standard deviation of every parameter.
      dtype: the parameters' dtype.
    """
    _check_kind(kind)
    params = {"fwd": cells.init(jax.random.fold_in(key, 0), variant, n_in, n_hidden, std, dtype)}
    if kind == "bi":
        params["bwd"] = cells.init(jax.random.fold_in(key, 1), variant, n_in, n_hidden, std, dtype)
    d = n_hidden * LAYERS[kind]
    rng = cells._host_rng(jax.random.fold_in(key, 2))
    params["out"] = {"w": (std * rng.standard_normal((d, n_out))).astype(dtype),
                     "b": (std * rng.standard_normal(n_out)).astype(dtype)}
    return params


def apply_net(variant: str, kind: str, params: dict, xs: jax.Array, mask: jax.Array | None = None, *,
              autodiff: bool = False, steps: jax.Array | int | None = None,
              switches: jax.Array | None = None, recurrent_dtype=None, loops: str | None = None) -> jax.Array:
    """The network's output activations before the sigmoid/softmax.

    The LSTM layers are `odyssey.fast_lstm.lstm_layer`: the same values as `lstm_layer` with a hand-written
    backward pass (the trainer's gradients are 1.3-2× faster); `autodiff=True` differentiates through
    `lstm_layer`'s scan instead (an independent path, e.g. as a reference in tests).

    Args:
      variant: the LSTM variant (static).
      kind: "uni" or "bi" (static).
      params: as from `init_net`.
      xs: float[T, M] inputs.
      mask: float[T] padding mask (1 = valid), padding at the end.
      autodiff: static; use `lstm_layer` (autodiff through the scan) instead of the hand-written backward pass.
      steps: optional int scalar, unbatched under vmap: xs is padding from this step on, and the layers run
        only the steps before it (see `odyssey.fast_lstm.lstm_layer`). The values do not change.
      switches: optional float[6]: with variant "V", the parameters are a mixed-cell trial's (`to_mixed`) and
        these its switches (`odyssey.cells.switches`), e.g. one row per trial under vmap.
      recurrent_dtype: static; the operand dtype of the LSTM loops' recurrent products, e.g. jnp.bfloat16
        (see `odyssey.fast_lstm.lstm_layer`; None: the parameters' dtype, no rounding). Not with autodiff.
      loops: static; "xla" (None, the default) or "pallas": how the LSTM layers' time loops run (see
        `odyssey.fast_lstm.lstm_layer`). Not with autodiff.

    Returns:
      float[T, K] logits (rows at padded steps are the readout's bias only; losses mask them).

    Raises:
      ValueError: an unknown kind, params without the layers the kind needs, or a setting autodiff lacks.
    """
    _check_kind(kind)
    layers = {"fwd", "out", "bwd"} if kind == "bi" else {"fwd", "out"}
    if not isinstance(params, dict) or set(params) != layers:
        held = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"apply_net: a {kind!r} net's params hold {sorted(layers)}, got {held}")
    if autodiff:
        if recurrent_dtype is not None:
            raise ValueError("apply_net: recurrent_dtype is a setting of odyssey.fast_lstm; autodiff=True runs "
                             "the reference layer in the parameters' dtype")
        if loops not in (None, "xla"):
            raise ValueError(f"apply_net: loops={loops!r} is a setting of odyssey.fast_lstm; autodiff=True runs "
                             "the reference layer's scan")
        layer = functools.partial(lstm_layer, switches=switches)
        if steps is not None:  # the same padding from `steps` on, as a mask for the reference scan
            valid = (jnp.arange(xs.shape[0]) < steps).astype(xs.dtype)
            mask = valid if mask is None else jnp.asarray(mask).astype(xs.dtype) * valid
    else:
        layer = functools.partial(fast_lstm.lstm_layer, steps=steps, switches=switches,
                                  recurrent_dtype=recurrent_dtype, loops=loops)
    hidden = layer(variant, params["fwd"], xs, mask)
    if kind == "bi":
        hidden = jnp.concatenate([hidden, layer(variant, params["bwd"], xs, mask, reverse=True)], axis=-1)
    return hidden @ params["out"]["w"] + params["out"]["b"]


def count_params(variant: str, kind: str, n_in: int, n_hidden: int, n_out: int) -> int:
    """Number of parameters of a network: its LSTM layer(s) and the readout."""
    _check_kind(kind)
    layers = LAYERS[kind]
    return layers * cells.count_params(variant, n_in, n_hidden) + (layers * n_hidden + 1) * n_out


def pad_hidden(params: dict, n_hidden: int, n_max: int, kind: str) -> dict:
    """Zero-pads a network of N = n_hidden blocks per layer to n_max blocks.

    The padded units' weights are zero in every direction (in, out, recurrent, readout), so the padded
    network computes the same outputs; `hidden_mask` keeps their gradients at zero during training.
    """
    if n_max < n_hidden:
        raise ValueError(f"cannot pad hidden size {n_hidden} down to {n_max}")
    extra = n_max - n_hidden

    def pad(value, axes):
        xp = np if isinstance(value, np.ndarray) else jnp  # numpy stays on the host: no compile per shape
        return xp.pad(value, [(0, extra) if axis in axes else (0, 0) for axis in range(value.ndim)])

    padded = {k: {name: pad(v, _HIDDEN_AXES[name]) for name, v in cell.items()}
              for k, cell in params.items() if k != "out"}
    w = params["out"]["w"]
    if kind == "bi":
        xp = np if isinstance(w, np.ndarray) else jnp
        w = xp.concatenate([pad(w[:n_hidden], (0,)), pad(w[n_hidden:], (0,))])
    else:
        w = pad(w, (0,))
    padded["out"] = {"w": w, "b": params["out"]["b"]}
    return padded


def hidden_mask(variant: str, kind: str, n_in: int, n_hidden: int, n_max: int, n_out: int, dtype=np.float32,
                mixed: bool = False):
    """A 0/1 pytree shaped like a network of n_max blocks: 1 where a parameter belongs to the first n_hidden.

    Multiplying gradients by it keeps a padded trial exactly equal to the unpadded one, also for FGR, whose
    padded units' gates sit at σ(0) = 0.5 and would otherwise teach the gate-recurrent weights (DESIGN §6).
    With `mixed`, shaped like the mixed cell's network (`to_mixed`), 0 also where the variant has no parameter.
    """
    _check_kind(kind)
    cell = {name: np.ones(shape, dtype) for name, shape in cells.shapes(variant, n_in, n_hidden).items()}
    d = n_hidden * LAYERS[kind]
    ones = {"fwd": cell, **({"bwd": cell} if kind == "bi" else {}),
            "out": {"w": np.ones((d, n_out), dtype), "b": np.ones(n_out, dtype)}}
    padded = pad_hidden(ones, n_hidden, n_max, kind)
    return to_mixed(variant, padded) if mixed else padded


def to_mixed(variant: str, params: dict) -> dict:
    """A network's parameters with its LSTM layers in the mixed cell's layout (`odyssey.cells.to_mixed`)."""
    return {k: (v if k == "out" else cells.to_mixed(variant, v)) for k, v in params.items()}


def from_mixed(variant: str, params: dict) -> dict:
    """The inverse of `to_mixed`."""
    return {k: (v if k == "out" else cells.from_mixed(variant, v)) for k, v in params.items()}


def unpad_hidden(params: dict, n_hidden: int, n_max: int, kind: str) -> dict:
    """The inverse of `pad_hidden`: the first n_hidden blocks of a padded network."""
    def cut_cell(name, value):
        return value[tuple(slice(0, n_hidden) if axis in _HIDDEN_AXES[name] else slice(None)
                           for axis in range(value.ndim))]

    out = {k: {name: cut_cell(name, v) for name, v in cell.items()} for k, cell in params.items() if k != "out"}
    w = params["out"]["w"]
    if kind == "bi":
        xp = np if isinstance(w, np.ndarray) else jnp  # numpy stays on the host, as in pad_hidden
        w = xp.concatenate([w[:n_hidden], w[n_max:n_max + n_hidden]])
    else:
        w = w[:n_hidden]
    out["out"] = {"w": w, "b": params["out"]["b"]}
    return out


def param_count_tree(params) -> int:
    """Number of scalars in a pytree of arrays."""
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))
