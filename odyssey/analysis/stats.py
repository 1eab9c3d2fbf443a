"""Reading a run's trial store; top-k selection; Welch's t-tests against vanilla with Bonferroni correction."""

import dataclasses
import json
import math
import os
import pathlib
import sqlite3

import numpy as np
from scipy import stats as sps

__all__ = [
    "VARIANTS", "TASKS", "METRIC_NAMES", "HYPERPARAMETERS", "Trials", "Comparison",
    "read_config", "load_trials", "top_count", "top_trials", "welch_bonferroni",
    "compare_variants", "status_counts", "scored", "encode_hyperparameters", "space_bounds",
]

# The paper's order: vanilla first, then the eight variants.
VARIANTS = ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")
TASKS = ("timit", "iam_online", "jsb")
METRIC_NAMES = {
    "jsb": "NLL per time step (nats)",
    "timit": "frame classification error (%)",
    "iam_online": "character error rate (%)",
}
# Encoded columns for fANOVA: name -> (label, unit/encoding note). Timit may add nesterov, clip.
HYPERPARAMETERS = {
    "learning_rate": "log10 learning rate",
    "momentum": "log10(1 - momentum)",
    "hidden_size": "log10 hidden size",
    "input_noise": "input noise std",
    "nesterov": "Nesterov momentum (0/1)",
    "clip": "gradient clipping (0/1)",
}

_COLUMNS = ("trial_id", "task", "variant", "hidden_size", "learning_rate", "momentum",
            "input_noise", "nesterov", "clip", "seed", "status", "epochs", "best_epoch",
            "val_metric", "test_metric", "n_params", "train_seconds")
_TEXT = ("task", "variant", "status")


def read_config(workdir):
    """The run's config.json as a dict.

    Raises:
        FileNotFoundError: when DIR/config.json is missing.
        ValueError: when it is not a JSON object, or lacks "task" or "data".
    """
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {workdir} the directory of a run?")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e})") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a {type(config).__name__}, not a run's config")
    for key in ("task", "data"):
        if key not in config:
            raise ValueError(f"{path} has no {key!r} entry; keys present: {sorted(config)}")
    return config


@dataclasses.dataclass(frozen=True)
class Trials:
    """The `trials` table as columns: one numpy array per column, one entry per trial.

    Text columns are object arrays; numeric columns float64 with NaN for NULL.
    """

    columns: dict

    def __getitem__(self, name):
        return self.columns[name]

    def __len__(self):
        return len(self.columns["trial_id"])

    def where(self, mask):
        """The trials where the boolean `mask` (bool[n]) is true."""
        return Trials({k: v[mask] for k, v in self.columns.items()})


def load_trials(path):
    """Reads the `trials` table of a store.

    It only reads, through a plain connection as `odyssey.store.read_meta` does: a read-only one (`mode=ro`)
    leaves a WAL store's -wal and -shm side files behind, which a finished study's directory would then keep.

    Args:
        path: the SQLite file (DIR/trials.sqlite).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the file is not SQLite, or the table or one of its contract's columns is missing.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trial store {path} not found")
    try:
        con = sqlite3.connect(os.fspath(path))
        try:
            have = [r[1] for r in con.execute("PRAGMA table_info(trials)")]
            if not have:
                raise ValueError(f"{path} has no `trials` table")
            missing = [c for c in _COLUMNS if c not in have]
            if missing:
                raise ValueError(f"`trials` table of {path} lacks columns {missing}; it has {have}")
            rows = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM trials ORDER BY trial_id").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{path} is not a readable SQLite trial store ({e})") from e
    cols = {}
    for n, name in enumerate(_COLUMNS):
        raw = [r[n] for r in rows]
        if name in _TEXT:
            cols[name] = np.array(raw, dtype=object)
        else:
            cols[name] = np.array([np.nan if v is None else v for v in raw], dtype=np.float64)
    unknown = sorted(set(cols["variant"]) - set(VARIANTS))
    if unknown:
        raise ValueError(f"{path}: unknown variants {unknown}; known: {list(VARIANTS)}")
    return Trials(cols)


def status_counts(trials):
    """Per variant, how many trials have each status.

    Returns:
        dict variant -> dict status -> count, variants in the paper's order.
    """
    out = {}
    for v in VARIANTS:
        sel = trials["status"][trials["variant"] == v]
        if sel.size:
            out[v] = {s: int((sel == s).sum()) for s in ("done", "diverged", "running", "pending")}
    return out


def top_count(n):
    """How many trials make the top 10 %: ceil(n / 10), at least 2, at most n (20 of 200)."""
    return min(n, max(2, -(-n // 10)))


def top_trials(trials):
    """Per variant, the top 10 % of its finished trials by validation metric (lower is better).

    The 10 % counts every finished trial, diverged ones included (20 of 200 in the paper). A trial that diverged
    after a finite validation metric has its best epoch's metrics and competes like any other; one that diverged
    before has none, so it is never among the best, but it does not shrink the top either. The selected trials
    are the best of those with a metric (all of them, if fewer).

    Returns:
        `Trials` holding only the selected trials of every variant.
    """
    keep = np.zeros(len(trials), bool)
    done = scored(trials)
    finished = np.isin(trials["status"], ("done", "diverged"))
    for v in VARIANTS:
        mine = trials["variant"] == v
        idx = np.flatnonzero(done & mine)
        if idx.size:
            order = idx[np.argsort(trials["val_metric"][idx], kind="stable")]
            keep[order[:top_count(int((finished & mine).sum()))]] = True
    return trials.where(keep)


def scored(trials):
    """Which trials are analysed: finished ('done' or 'diverged') with finite validation and test metrics, bool[n].
    (A diverged trial has them when it diverged after its first finite validation: its best epoch's.)"""
    return (np.isin(trials["status"], ("done", "diverged")) & np.isfinite(trials["val_metric"])
            & np.isfinite(trials["test_metric"]))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One variant's test metric against vanilla's.

    Attributes:
        variant: the variant's name.
        n: its sample size; n_ref: vanilla's.
        mean, std: its mean and sample std (ddof=1); ref_mean, ref_std: vanilla's.
        diff: mean - ref_mean (positive: the variant is worse, metrics being lower-is-better).
        cohen_d: diff over sqrt((std**2 + ref_std**2) / 2); NaN when both stds are 0.
        t, p: Welch's t statistic and two-sided p-value (NaN when not testable).
        p_corrected: min(1, p * n_comparisons).
        significant: p_corrected < alpha.
        mean_params: the mean parameter count of the sample (NaN when unknown).
        note: why there is no test, or "".
    """

    variant: str
    n: int
    mean: float
    std: float
    n_ref: int
    ref_mean: float
    ref_std: float
    diff: float
    cohen_d: float
    t: float
    p: float
    p_corrected: float
    significant: bool
    mean_params: float
    note: str

    @property
    def verdict(self):
        """"worse", "better", "n.s." or "no test"."""
        if self.note:
            return "no test"
        if not self.significant:
            return "n.s."
        return "worse" if self.diff > 0 else "better"


def _std(x):
    return float(np.std(x, ddof=1)) if x.size > 1 else math.nan


def welch_bonferroni(samples, reference="V", alpha=0.05, n_comparisons=None, params=None):
    """Welch's t-test of each sample against the reference's, Bonferroni-corrected.

    Args:
        samples: dict name -> float[n] test metrics; must hold `reference`.
        reference: the name compared against (vanilla).
        alpha: the family-wise significance level.
        n_comparisons: the Bonferroni factor; default the number of tests made: other samples with at least
            2 values, the reference too, and not both constant (8 in the paper).
        params: optional dict name -> float[n] parameter counts, averaged into `mean_params`.

    Returns:
        list of `Comparison`, one per name other than the reference, in the order of `samples`.
    """
    if reference not in samples:
        raise ValueError(f"no {reference!r} sample to compare against; have {sorted(samples)}")
    ref = np.asarray(samples[reference], np.float64)
    others = [k for k in samples if k != reference]
    rows = []
    for k in others:
        x = np.asarray(samples[k], np.float64)
        mean = float(x.mean()) if x.size else math.nan
        sd, ref_sd = _std(x), _std(ref)
        diff = mean - float(ref.mean()) if ref.size else math.nan
        pooled = math.sqrt((sd**2 + ref_sd**2) / 2) if x.size > 1 and ref.size > 1 else math.nan
        d = diff / pooled if pooled > 0 else math.nan
        note = ""
        if ref.size < 2:
            note = f"{reference} has {ref.size} trial(s) with a metric; a test needs 2"
        elif x.size < 2:
            note = f"{x.size} trial(s) with a metric; a test needs 2"
        t = p = math.nan
        if not note and sd == 0 and ref_sd == 0 and mean == float(ref.mean()):
            note = "both samples constant; the t-test is undefined"
        if not note:
            res = sps.ttest_ind(x, ref, equal_var=False)
            t, p = float(res.statistic), float(res.pvalue)
            if math.isnan(p):
                note = "both samples constant; the t-test is undefined"
        mp = math.nan
        if params is not None and np.asarray(params[k]).size:
            mp = float(np.nanmean(np.asarray(params[k], np.float64)))
        rows.append((k, x, mean, sd, ref_sd, diff, d, t, p, mp, note))
    m = sum(1 for row in rows if not row[-1]) if n_comparisons is None else n_comparisons
    out = []
    for k, x, mean, sd, ref_sd, diff, d, t, p, mp, note in rows:
        p_corr = math.nan if note else min(1.0, p * m)
        out.append(Comparison(k, int(x.size), mean, sd, int(ref.size), float(ref.mean()) if ref.size else math.nan,
                              ref_sd, diff, d, t, p, p_corr, bool(p_corr < alpha), mp, note))
    return out


def compare_variants(trials, subset="top", alpha=0.05):
    """The paper's significance analysis for one task's trials.

    Args:
        trials: `Trials` of a single task.
        subset: "top" for the top 10 % by validation metric (Fig. 2), "all" for every
            finished trial (Fig. 7).
        alpha: family-wise level, Bonferroni-corrected over the variants tested.

    Returns:
        (vanilla's `Comparison` of itself, list of `Comparison` per other variant present).
    """
    if subset not in ("top", "all"):
        raise ValueError(f"subset must be 'top' or 'all', got {subset!r}")
    sel = top_trials(trials) if subset == "top" else trials.where(scored(trials))
    present = [v for v in VARIANTS if (trials["variant"] == v).any()]
    samples = {v: sel["test_metric"][sel["variant"] == v] for v in present}
    params = {v: sel["n_params"][sel["variant"] == v] for v in present}
    samples.setdefault("V", np.zeros(0))
    params.setdefault("V", np.zeros(0))
    ref = np.asarray(samples["V"])
    ref_cmp = Comparison("V", ref.size, float(ref.mean()) if ref.size else math.nan, _std(ref), ref.size,
                         float(ref.mean()) if ref.size else math.nan, _std(ref), 0.0, 0.0, math.nan, math.nan,
                         math.nan, False, float(np.nanmean(params["V"])) if params["V"].size else math.nan,
                         "reference")
    return ref_cmp, welch_bonferroni(samples, "V", alpha, params=params)


def space_bounds(space, names):
    """The search space's box in `encode_hyperparameters`' units, for the fANOVA's marginals (the paper's
    fANOVA integrates over the whole configuration space, not over the range the trials happened to reach).

    Args:
        space: config.search.space as config.json holds it: hyperparameter -> [distribution, *parameters]
            (`odyssey.search`'s distributions).
        names: the encoded columns (`encode_hyperparameters`' names).

    Returns:
        float64[D, 2] (lower, upper), NaN where the space does not bound a column in its units (a hyperparameter
        it does not draw, or a bound the encoding cannot take, such as a learning rate drawn from 0).
    """
    out = np.full((len(names), 2), np.nan)
    for row, name in enumerate(names):
        entry = (space or {}).get(name)
        if not entry:
            continue
        dist, params = entry[0], [float(p) for p in entry[1:]]
        if dist == "bernoulli":
            out[row] = (0.0, 1.0)
            continue
        if len(params) != 2:
            continue
        low, high = params
        with np.errstate(divide="ignore", invalid="ignore"):
            if name == "momentum":  # encoded log10(1 - momentum)
                box = (np.log10(low), np.log10(high)) if dist == "one_minus_log_uniform" else (
                    np.log10(1.0 - high), np.log10(1.0 - low))
            elif name in ("learning_rate", "hidden_size"):  # encoded log10
                box = (np.log10(low), np.log10(high))
            else:
                box = (low, high)
        if np.isfinite(box).all() and box[0] <= box[1]:
            out[row] = box
    return out


def encode_hyperparameters(trials):
    """The fANOVA inputs as the paper encodes them.

    Columns: log10 learning rate, log10(1 - momentum), log10 hidden size, input noise;
    nesterov and clip (0/1) are added only when present and varying.

    Args:
        trials: `Trials` (finished ones).

    Returns:
        (X float64[n, D], names list[str] of length D, keys of `HYPERPARAMETERS`).

    Raises:
        ValueError: when a hyperparameter is outside its domain (say which trial).
    """
    lr, mom, hid = trials["learning_rate"], trials["momentum"], trials["hidden_size"]
    for name, bad in (("learning_rate", ~(lr > 0)), ("momentum", ~(mom < 1)), ("hidden_size", ~(hid > 0)),
                      ("input_noise", ~np.isfinite(trials["input_noise"]))):
        if bad.any():
            ids = trials["trial_id"][bad][:5].astype(int).tolist()
            raise ValueError(f"{name} out of its domain in trials {ids} ({int(bad.sum())} in all)")
    cols = [np.log10(lr), np.log10(1.0 - mom), np.log10(hid), trials["input_noise"]]
    names = ["learning_rate", "momentum", "hidden_size", "input_noise"]
    for flag in ("nesterov", "clip"):
        v = trials[flag]
        if np.isfinite(v).all() and np.unique(v).size > 1:
            cols.append(v.astype(np.float64))
            names.append(flag)
    return np.column_stack(cols).astype(np.float64), names
