"""The vanilla LSTM and its eight variants (Greff et al. 2017, Section 2) as pure step functions.

Internal layout (any layout is allowed inside; the paper's names are the interchange format):

  W   float[M, G, N]   input weights of the G gates the variant has, in the order z, i, f, o
  R   float[N, G, N]   recurrent weights, same order (R[j, g, k]: unit j at t-1 into gate g of unit k)
  b   float[G, N]      biases
  p   float[P, N]      peepholes of the gates among i, f, o that have one (absent for NP)
  Rg  float[3, N, 3, N] FGR only: Rg[a, j, b, k] carries gate a of unit j at t-1 into gate b of unit k

Keeping the hidden size as the last axis of every tensor makes zero-padding a trial to a larger
hidden size one `jnp.pad` per leaf (see `odyssey.nets.pad_hidden`).

The mixed cell. The eight variants other than FGR are V with parts taken away or replaced, so each of them is
V's cell on V's layout (`to_mixed`: its own parameters in place, zeros where it has none) with six 0/1
switches (`switches`, in the order of `SWITCHES`): a removed gate is held at 1, an activation replaced by the
identity, CIFG's forget gate computed as 1 − i. `step("V", ..., switches=...)` computes exactly the
variant's values from the embedded parameters, so trials of different variants can share one compiled
program, with the switches as per-trial data (`odyssey.train` does). Parameters the variant lacks stay zero
in training as their gradients are masked (`odyssey.nets.hidden_mask(..., mixed=True)`).
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

VARIANTS = ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")

_ALL_GATES = ("z", "i", "f", "o")
# The variants the mixed cell can run (all but FGR, whose gate recurrence is extra structure) and its switches.
MIXABLE = ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG")
SWITCHES = ("no_i", "no_f", "no_o", "linear_g", "linear_h", "cifg")
_FGR_GATES = ("i", "f", "o")


def _identity(x):
    return x


def sigmoid(x: jax.Array) -> jax.Array:
    """The logistic function σ(x) = 1 / (1 + e^−x), written as (1 + tanh(x / 2)) / 2.

    The same function (the identity is exact; the two forms differ by float round-off, at most a few ulp
    of 1 in absolute terms). Measured on CPU in a scan step of gate activations (T = 600, N = 200): 4.7 µs
    per step against 5.1 µs for `jax.nn.sigmoid` gate by gate; in the whole trainer the difference was
    within noise.
    """
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a variant has: its gates, peepholes, activations and extras."""

    name: str
    gates: tuple[str, ...]
    peepholes: tuple[str, ...]
    g: Callable = jnp.tanh
    h: Callable = jnp.tanh
    cifg: bool = False
    fgr: bool = False

    def gate_index(self, gate: str) -> int:
        return self.gates.index(gate)


_SPECS = {
    # Vanilla: all gates, peepholes from c' into i and f, from the new c into o.
    "V": Spec("V", _ALL_GATES, ("i", "f", "o")),
    # No input gate: i = 1.
    "NIG": Spec("NIG", ("z", "f", "o"), ("f", "o")),
    # No forget gate: f = 1.
    "NFG": Spec("NFG", ("z", "i", "o"), ("i", "o")),
    # No output gate: o = 1.
    "NOG": Spec("NOG", ("z", "i", "f"), ("i", "f")),
    # No input activation function: g(x) = x.
    "NIAF": Spec("NIAF", _ALL_GATES, ("i", "f", "o"), g=_identity),
    # No output activation function: h(x) = x.
    "NOAF": Spec("NOAF", _ALL_GATES, ("i", "f", "o"), h=_identity),
    # No peepholes.
    "NP": Spec("NP", _ALL_GATES, ()),
    # Coupled input and forget gate: f = 1 - i.
    "CIFG": Spec("CIFG", ("z", "i", "o"), ("i", "o"), cifg=True),
    # Full gate recurrence: every gate also sees all gates of the previous step.
    "FGR": Spec("FGR", _ALL_GATES, ("i", "f", "o"), fgr=True),
}


def spec(variant: str) -> Spec:
    """The `Spec` of a variant; a `ValueError` lists the known ones for an unknown name."""
    try:
        return _SPECS[variant]
    except (KeyError, TypeError):
        raise ValueError(f"unknown variant {variant!r}; known variants: {', '.join(VARIANTS)}") from None


def _host_rng(key) -> np.random.Generator:
    """A numpy generator seeded by a JAX key's bits: draws on the host, with no compilation per shape."""
    try:
        bits = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
    except jax.errors.TracerArrayConversionError:
        raise ValueError("odyssey initialisers run on the host; call them outside jit/vmap") from None
    return np.random.default_rng(bits.astype(np.uint64).tolist())


def init(key: jax.Array, variant: str, n_in: int, n_hidden: int, std: float = 0.1, dtype=np.float32) -> dict:
    """Draws a variant's parameters from N(0, std²), as in the paper.

    The draws are made on the host by a numpy generator seeded by the key, so a trial of any hidden size
    starts without compiling anything (a study meets hundreds of distinct sizes).

    Args:
      key: a PRNG key (its bits seed the draws: the same key gives the same parameters).
      variant: one of `VARIANTS`.
      n_in: M, inputs per time step.
      n_hidden: N, the number of blocks.
      std: the standard deviation of every weight, bias and peephole.
      dtype: the parameters' dtype.

    Returns:
      The parameters in the internal layout (see the module docstring), as numpy arrays.
    """
    rng = _host_rng(key)
    return {name: (std * rng.standard_normal(shape)).astype(dtype)
            for name, shape in shapes(variant, n_in, n_hidden).items()}


def shapes(variant: str, n_in: int, n_hidden: int) -> dict[str, tuple[int, ...]]:
    """The shapes of a variant's parameters in the internal layout."""
    s = spec(variant)
    if n_in < 1 or n_hidden < 1:
        raise ValueError(f"n_in and n_hidden must be >= 1, got n_in={n_in}, n_hidden={n_hidden}")
    out = {"W": (n_in, len(s.gates), n_hidden), "R": (n_hidden, len(s.gates), n_hidden),
           "b": (len(s.gates), n_hidden)}
    if s.peepholes:
        out["p"] = (len(s.peepholes), n_hidden)
    if s.fgr:
        out["Rg"] = (3, n_hidden, 3, n_hidden)
    return out


def init_carry(variant: str, n_hidden: int, dtype=np.float32) -> tuple:
    """The zero initial state: (y, c), and for FGR also the previous gates (i, f, o) as float[3, N]."""
    s = spec(variant)
    zeros = jnp.zeros((n_hidden,), dtype)
    if s.fgr:
        return (zeros, zeros, jnp.zeros((3, n_hidden), dtype))
    return (zeros, zeros)


def input_projection(params: dict, xs: jax.Array) -> jax.Array:
    """The input part of every gate for all time steps, one matrix product outside the scan.

    Args:
      params: a variant's parameters.
      xs: float[T, M] inputs.

    Returns:
      float[T, G, N]: W x_t + b for each gate.
    """
    m, g, n = params["W"].shape
    return (xs @ params["W"].reshape(m, g * n)).reshape(-1, g, n) + params["b"]


def step(variant: str, params: dict, carry: tuple, xw: jax.Array, switches: jax.Array | None = None
         ) -> tuple[tuple, jax.Array]:
    """One time step of a variant on one unbatched example.

    Args:
      variant: one of `VARIANTS` (a static Python value).
      params: the variant's parameters.
      carry: the previous state, as from `init_carry`.
      xw: float[G, N], this step's slice of `input_projection`.
      switches: optional float[6] (may be traced), the mixed cell's switches (`switches`); only with "V",
        whose layout then holds a mixed-cell trial's parameters (`to_mixed`).

    Returns:
      (new carry, y float[N]).
    """
    if switches is not None:
        _check_switches(variant, switches)
        return _mixed_step(params, carry, xw, switches)
    s = spec(variant)
    y_prev, c_prev = carry[0], carry[1]
    n = y_prev.shape[-1]
    pre = xw + (y_prev @ params["R"].reshape(n, -1)).reshape(xw.shape)
    if s.fgr:
        # sum over the previous gate a and unit j of Rg[a, j, b, k] * gate_a'[j]
        pre_fgr = (carry[2].reshape(-1) @ params["Rg"].reshape(3 * n, 3 * n)).reshape(3, n)
    one = jnp.ones_like(y_prev)

    def gate_pre(gate):
        out = pre[s.gate_index(gate)]
        if s.fgr:
            out = out + pre_fgr[_FGR_GATES.index(gate)]
        return out

    def peep(gate, cell):
        return params["p"][s.peepholes.index(gate)] * cell if gate in s.peepholes else 0.0

    z = s.g(pre[s.gate_index("z")])
    i = sigmoid(gate_pre("i") + peep("i", c_prev)) if "i" in s.gates else one
    if "f" in s.gates:
        f = sigmoid(gate_pre("f") + peep("f", c_prev))
    elif s.cifg:
        f = 1.0 - i
    else:
        f = one
    c = z * i + c_prev * f
    o = sigmoid(gate_pre("o") + peep("o", c)) if "o" in s.gates else one
    y = s.h(c) * o
    if s.fgr:
        return (y, c, jnp.stack([i, f, o])), y
    return (y, c), y


def _check_switches(variant, switches):
    if variant != "V":
        raise ValueError(f"switches select a variant inside V's layout; the variant must be 'V', got {variant!r}")
    if jnp.shape(switches) != (len(SWITCHES),):
        raise ValueError(f"switches must be float[{len(SWITCHES)}] ({', '.join(SWITCHES)}), "
                         f"got shape {jnp.shape(switches)}")


def switch_flags(switches) -> dict:
    """The mixed cell's switches as booleans by name (`SWITCHES`); works on traced arrays."""
    return {name: switches[k] > 0 for k, name in enumerate(SWITCHES)}


def _mixed_step(params, carry, xw, switches):
    """`step` of the mixed cell: V's step with the switched parts held at 1, replaced by identities or
    coupled (see the module docstring)."""
    on = switch_flags(switches)
    y_prev, c_prev = carry
    n = y_prev.shape[-1]
    pre = xw + (y_prev @ params["R"].reshape(n, -1)).reshape(xw.shape)
    p = params["p"]
    one = jnp.ones_like(y_prev)
    z = jnp.where(on["linear_g"], pre[0], jnp.tanh(pre[0]))
    i = jnp.where(on["no_i"], one, sigmoid(pre[1] + p[0] * c_prev))
    f = jnp.where(on["no_f"], one, jnp.where(on["cifg"], 1.0 - i, sigmoid(pre[2] + p[1] * c_prev)))
    c = z * i + c_prev * f
    o = jnp.where(on["no_o"], one, sigmoid(pre[3] + p[2] * c))
    y = jnp.where(on["linear_h"], c, jnp.tanh(c)) * o
    return (y, c), y


def switches(variant: str, dtype=np.float32) -> np.ndarray:
    """The mixed cell's switches (0/1, in the order of `SWITCHES`) that make V's cell compute `variant`."""
    s = spec(variant)
    if variant not in MIXABLE:
        raise ValueError(f"{variant} has no mixed-cell form (mixable: {', '.join(MIXABLE)})")
    on = {"no_i": "i" not in s.gates, "no_f": "f" not in s.gates and not s.cifg, "no_o": "o" not in s.gates,
          "linear_g": s.g is _identity, "linear_h": s.h is _identity, "cifg": s.cifg}
    return np.array([on[name] for name in SWITCHES], dtype)


def to_mixed(variant: str, params: dict) -> dict:
    """A variant's parameters in V's layout for the mixed cell: its own entries in place, zeros elsewhere.

    Works on numpy and JAX arrays (leading axes, e.g. of trials, are kept); `from_mixed` inverts it.
    """
    s = spec(variant)
    if variant not in MIXABLE:
        raise ValueError(f"{variant} has no mixed-cell form (mixable: {', '.join(MIXABLE)})")
    v = spec("V")

    def place(value, names, all_names):
        # every tensor of the layout has its gate (or peephole) axis second to last
        xp = np if isinstance(value, np.ndarray) else jnp
        zero = xp.zeros_like(value[..., :1, :])
        rows = [value[..., names.index(g):names.index(g) + 1, :] if g in names else zero for g in all_names]
        return xp.concatenate(rows, axis=-2)

    out = {name: place(params[name], s.gates, v.gates) for name in ("W", "R", "b")}
    # NP has no peepholes: V's are all zero rows, shaped after a row of its biases
    out["p"] = place(params["p"] if s.peepholes else params["b"][..., :1, :], s.peepholes, v.peepholes)
    return out


def from_mixed(variant: str, params: dict) -> dict:
    """The inverse of `to_mixed`: a variant's own parameters out of V's layout."""
    s = spec(variant)
    v = spec("V")

    def pick(value, names, all_names):
        return value[..., np.array([all_names.index(g) for g in names], int), :]

    out = {name: pick(params[name], s.gates, v.gates) for name in ("W", "R", "b")}
    if s.peepholes:
        out["p"] = pick(params["p"], s.peepholes, v.peepholes)
    return out


def _paper_shapes(variant: str, n_in: int, n_hidden: int) -> dict[str, tuple[int, ...]]:
    s = spec(variant)
    shapes = {}
    for prefix, shape in (("W", (n_hidden, n_in)), ("R", (n_hidden, n_hidden))):
        shapes.update({f"{prefix}_{g}": shape for g in s.gates})
    shapes.update({f"p_{g}": (n_hidden,) for g in s.peepholes})
    shapes.update({f"b_{g}": (n_hidden,) for g in s.gates})
    if s.fgr:
        shapes.update({f"R_{a}{b}": (n_hidden, n_hidden) for b in _FGR_GATES for a in _FGR_GATES})
    return shapes


def paper_names(variant: str) -> tuple[str, ...]:
    """The paper's names of the parameters a variant has (DESIGN §1)."""
    return tuple(_paper_shapes(variant, 1, 1))


def to_paper(variant: str, params: dict) -> dict[str, np.ndarray]:
    """The parameters under the paper's names and shapes (W_z float[N, M], R_z float[N, N], p_i float[N], ...).

    FGR's R_ab (N×N) carries gate a at t−1 into gate b at t: b̄ gains R_ab a'.
    """
    s = spec(variant)
    expected = {"W", "R", "b"} | ({"p"} if s.peepholes else set()) | ({"Rg"} if s.fgr else set())
    if not isinstance(params, dict) or set(params) != expected:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"{variant} parameters need the keys {sorted(expected)}, got {got}")
    p = {k: np.asarray(v) for k, v in params.items()}
    out = {}
    for gi, g in enumerate(s.gates):
        out[f"W_{g}"] = p["W"][:, gi, :].T
        out[f"R_{g}"] = p["R"][:, gi, :].T
        out[f"b_{g}"] = p["b"][gi]
    for pi, g in enumerate(s.peepholes):
        out[f"p_{g}"] = p["p"][pi]
    if s.fgr:
        for ai, a in enumerate(_FGR_GATES):
            for bi, b in enumerate(_FGR_GATES):
                out[f"R_{a}{b}"] = p["Rg"][ai, :, bi, :].T
    return {k: out[k] for k in paper_names(variant)}


def from_paper(variant: str, named: dict) -> dict:
    """The inverse of `to_paper`: paper names → internal parameters.

    Raises:
      ValueError: for an unknown variant, a missing or extra name, or a wrong shape (named in the message).
    """
    s = spec(variant)
    names = set(paper_names(variant))
    missing, extra = sorted(names - set(named)), sorted(set(named) - names)
    if missing or extra:
        raise ValueError(f"{variant} parameters: missing {missing}, unexpected {extra}")
    w_z = np.asarray(named["W_z"])
    if w_z.ndim != 2:
        raise ValueError(f"W_z must be a matrix [N, M], got shape {w_z.shape}")
    n_hidden, n_in = w_z.shape
    for name, shape in _paper_shapes(variant, n_in, n_hidden).items():
        if np.shape(named[name]) != shape:
            raise ValueError(f"{variant}: {name} has shape {np.shape(named[name])}, expected {shape} "
                             f"(N={n_hidden}, M={n_in})")
    arr = {k: np.asarray(v) for k, v in named.items()}
    params = {
        "W": np.stack([arr[f"W_{g}"].T for g in s.gates], axis=1),
        "R": np.stack([arr[f"R_{g}"].T for g in s.gates], axis=1),
        "b": np.stack([arr[f"b_{g}"] for g in s.gates]),
    }
    if s.peepholes:
        params["p"] = np.stack([arr[f"p_{g}"] for g in s.peepholes])
    if s.fgr:
        params["Rg"] = np.stack([np.stack([arr[f"R_{a}{b}"].T for b in _FGR_GATES], axis=1)
                                 for a in _FGR_GATES])
    return params


def count_params(variant: str, n_in: int, n_hidden: int) -> int:
    """Number of parameters of one layer of the variant."""
    return int(sum(np.prod(shape) for shape in _paper_shapes(variant, n_in, n_hidden).values()))
