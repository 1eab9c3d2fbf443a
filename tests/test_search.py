"""Tests of the search space, config checks, trial drawing and scheduling."""

import collections
import zlib
import importlib.util
import pathlib

import numpy as np
import pytest
from scipy import stats

from odyssey import search

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALL_VARIANTS = ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")
# Deterministic given the seed; a correct sampler passes with probability 1 - 0.001 per check.
ALPHA = 1e-3


def load_config(name, arg=None):
    spec = importlib.util.spec_from_file_location(f"_config_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def many_timit():
    config = load_config("timit")
    config.search.variants = ("CIFG",)
    config.search.num_trials = 4000
    search.validate_config(config)
    trials = search.draw_trials(config)
    return {k: np.array([t[k] for t in trials]) for k in trials[0]}


def test_learning_rate_is_log_uniform_in_paper_range(many_timit):
    lr = many_timit["learning_rate"]
    assert lr.min() >= 1e-6 and lr.max() <= 1e-2
    assert stats.kstest(np.log10(lr), stats.uniform(loc=-6, scale=4).cdf).pvalue > ALPHA
    # The same test rejects a plain uniform law, so it has the power to catch a wrong sampler.
    assert stats.kstest(lr, stats.uniform(loc=1e-6, scale=1e-2 - 1e-6).cdf).pvalue < 1e-10


def test_momentum_is_one_minus_log_uniform(many_timit):
    m = many_timit["momentum"]
    assert m.min() >= 0.0 and m.max() <= 0.99
    assert stats.kstest(np.log10(1.0 - m), stats.uniform(loc=-2, scale=2).cdf).pvalue > ALPHA
    assert stats.kstest(np.log10(m + 1e-300), stats.uniform(loc=-2, scale=2).cdf).pvalue < 1e-10


def test_input_noise_is_uniform(many_timit):
    noise = many_timit["input_noise"]
    assert stats.kstest(noise, stats.uniform(loc=0, scale=1).cdf).pvalue > ALPHA


def test_hidden_size_is_log_uniform_integer(many_timit):
    n = many_timit["hidden_size"]
    values = np.arange(20, 201)
    # P(n) = log((n + 1) / n) / log(201 / 20): the log-uniform mass of [n, n + 1) in [20, 201).
    pmf = np.log((values + 1) / values) / np.log(201 / 20)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    counts = np.array([(n == v).sum() for v in values])
    assert counts.sum() == len(n), "a hidden size outside [20, 200]"
    assert (counts > 0).all(), "every size of [20, 200] is reachable"
    assert stats.chisquare(counts, pmf * len(n)).pvalue > ALPHA
    flat = np.full(len(values), len(n) / len(values))
    assert stats.chisquare(counts, flat).pvalue < 1e-10


def test_timit_draws_nesterov_and_clipping_as_fair_coins(many_timit):
    for key in ("nesterov", "clip"):
        k = int(many_timit[key].sum())
        assert stats.binomtest(k, len(many_timit[key]), 0.5).pvalue > ALPHA


def test_hyperparameters_are_drawn_independently(many_timit):
    keys = ("hidden_size", "learning_rate", "momentum", "input_noise", "nesterov", "clip")
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert stats.spearmanr(many_timit[a], many_timit[b]).pvalue > ALPHA / 15, (a, b)


@pytest.mark.parametrize("name", ["jsb", "iam_online"])
def test_other_tasks_fix_nesterov_on_and_clipping_off(name):
    config = load_config(name)
    config.search.num_trials = 50
    trials = search.draw_trials(config)
    assert len(trials) == 50 * 9
    assert all(t["nesterov"] is True and t["clip"] is False for t in trials)


def test_same_seed_same_trials_other_seed_other_trials():
    config = load_config("jsb")
    config.search.num_trials = 20
    a, b = search.draw_trials(config), search.draw_trials(config)
    assert a == b
    assert [t["trial_id"] for t in a] == list(range(180))
    assert [t["variant"] for t in a] == [v for v in ALL_VARIANTS for _ in range(20)]
    config.search.seed = 1
    c = search.draw_trials(config)
    assert all(x["learning_rate"] != y["learning_rate"] and x["seed"] != y["seed"] for x, y in zip(a, c))


def test_a_trial_does_not_depend_on_num_trials_or_other_variants():
    config = load_config("jsb")
    config.search.variants, config.search.num_trials = ("V", "FGR"), 7
    big = [t for t in search.draw_trials(config) if t["variant"] == "FGR"]
    config.search.variants, config.search.num_trials = ("FGR",), 3
    small = search.draw_trials(config)
    strip = lambda t: {k: v for k, v in t.items() if k != "trial_id"}  # noqa: E731
    assert [strip(t) for t in small] == [strip(t) for t in big[:3]]


def test_seeds_of_trials_are_distinct():
    config = load_config("jsb")
    seeds = [t["seed"] for t in search.draw_trials(config)]
    assert len(set(seeds)) == len(seeds) == 1800


def test_a_hyperparameter_left_out_of_the_space_takes_the_configs_value():
    config = load_config("jsb")
    config.search.num_trials = 5
    del config.search.space["hidden_size"]
    config.model.hidden_size = 33
    search.validate_config(config)
    assert {t["hidden_size"] for t in search.draw_trials(config)} == {33}


@pytest.mark.parametrize("name,arg", [("jsb", None), ("jsb", "quick"), ("timit", None), ("timit", "quick"),
                                      ("iam_online", None), ("iam_online", "quick"), ("test", None)])
def test_shipped_configs_are_valid(name, arg):
    config = load_config(name, arg)
    search.validate_config(config)
    assert config.search.space.learning_rate[1:] == ((1e-6, 1e-2) if name != "test" else (1e-3, 1e-1))
    if name != "test":
        assert tuple(config.search.variants) == ALL_VARIANTS
        # the paper's protocol, or the quick study's few short trials
        assert config.search.num_trials == (200 if arg is None else 4)
        assert (config.train.max_epochs, config.train.patience) == ((150, 15) if arg is None else (6, 3))
        assert config.search.space.hidden_size == ("log_uniform_int", 20, 200)
        assert config.search.space.momentum == ("one_minus_log_uniform", 0.01, 1.0)
        assert config.search.space.input_noise == ("uniform", 0.0, 1.0)
        assert ("nesterov" in config.search.space) == (name == "timit")


@pytest.mark.parametrize("name", ["jsb", "timit", "iam_online"])
def test_every_group_of_a_full_study_fits_its_slots(name):
    """The shipped configs' trials_per_batch holds each group (program x bucket) of the task's draws, so no group
    runs in waves: the mixed program's smallest bucket, the largest group, gets 490-526 of its 1600 trials."""
    from odyssey import layout
    config = load_config(name)
    trials = [_T(t["trial_id"], t["variant"], t["hidden_size"]) for t in search.draw_trials(config)]
    sizes = [len(m) for m in layout.group_trials(trials, config.search.hidden_buckets).values()]
    assert max(sizes) <= config.search.trials_per_batch and max(sizes) > 450, sizes


def test_unknown_config_argument_is_refused():
    with pytest.raises(ValueError, match="unknown config argument 'fast'"):
        load_config("jsb", "fast")


def _set(config, dotted, value):
    node = config
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[p]
    node[last] = value


@pytest.mark.parametrize("field,value,message", [
    ("search.variants", ("V", "LSTM2"), "unknown variant 'LSTM2'; known: V, NIG"),
    ("search.variants", ("V", "V"), "listed twice"),
    ("search.variants", ("V,NP",), "unknown variant 'V,NP'; known: V, NIG, NFG, NOG, NIAF, NOAF, NP, CIFG, FGR "
                                   "(to name several on the command line: "
                                   "--config.search.variants='(\"V\",\"NP\")')"),
    ("search.variants", (), "non-empty tuple"),
    ("task", "mnist", "config.task = 'mnist': unknown task; known: jsb"),
    ("search.space.learning_rate", ("log_uniform", -1e-6, 1e-2), "needs 0 < low < high, got low=-1e-06"),
    ("search.space.learning_rate", ("log_uniform", 1e-2, 1e-6), "needs low < high, got low=0.01, high=1e-06"),
    ("search.space.learning_rate", ("uniform", -1.0, 1e-2), "learning rates must be positive"),
    ("search.space.learning_rate", ("lognormal", 1e-6, 1e-2), "a distribution among"),
    ("search.space.learning_rate", ("log_uniform", 1e-6), "takes 2 parameter"),
    ("search.space.momentum", ("one_minus_log_uniform", 0.01, 2.0), "0 < low < high <= 1"),
    ("search.space.momentum", ("uniform", 0.5, 1.5), "momentum must lie in [0, 1)"),
    ("search.space.input_noise", ("uniform", -0.5, 1.0), "input-noise std must be >= 0"),
    ("search.space.hidden_size", ("log_uniform_int", 20, 400), "hidden sizes must lie in [1, 200]"),
    ("search.space.hidden_size", ("log_uniform_int", 20.5, 200), "integer bounds"),
    ("search.space.hidden_size", ("log_uniform", 20, 200), "log_uniform cannot draw int values"),
    ("search.space.nesterov", ("uniform", 0, 1), "uniform cannot draw bool values"),
    ("search.space.clip", ("bernoulli", 1.5), "probability in [0, 1]"),
    ("search.num_trials", 0, "config.search.num_trials = 0: expected an integer >= 1"),
    ("search.trials_per_batch", 0, "trials_per_batch = 0"),
    ("search.trials_per_chunk", 0, "trials_per_chunk = 0"),
    ("search.seed", -3, "config.search.seed = -3"),
    ("train.max_epochs", 0, "max_epochs = 0"),
    ("search.hidden_buckets", (80, 40), "increasing positive integers"),
    ("optim.learning_rate", -1.0, "learning rates must be positive"),
    ("train.recurrent_dtype", "float16", "config.train.recurrent_dtype = 'float16': expected one of float32, bfloat16"),
    ("train.data_order", "sorted", "config.train.data_order = 'sorted': expected one of per_trial, shared, strata"),
    ("train.order_stratum", 0, "config.train.order_stratum = 0: expected an integer >= 1"),
    ("train.order_stratum", -1, "config.train.order_stratum = -1: expected an integer >= 1"),
    ("train.matmul_precision", "highest",
     "config.train.matmul_precision = 'highest': expected one of float32, tensorfloat32"),
    ("train.lstm_loops", "cuda", "config.train.lstm_loops = 'cuda': expected one of xla, pallas"),
])
def test_bad_configs_are_refused_with_the_field_named(field, value, message):
    config = load_config("timit")
    if field == "optim.learning_rate":
        del config.search.space["learning_rate"]
    _set(config, field, value)
    with pytest.raises(search.ConfigError) as info:
        search.validate_config(config)
    assert message in str(info.value)


def test_unknown_hyperparameter_is_refused():
    config = load_config("jsb")
    config.search.space.dropout = ("uniform", 0.0, 0.5)
    with pytest.raises(search.ConfigError, match="dropout: unknown hyperparameter; known: hidden_size"):
        search.validate_config(config)


def test_missing_data_path_is_a_clear_error(tmp_path):
    config = load_config("jsb")
    config.data.path = str(tmp_path / "nowhere.pickle")
    with pytest.raises(FileNotFoundError, match="nowhere.pickle'?: nothing there; it should be the standard JSB"):
        search.validate_config(config)


def test_fingerprint_covers_what_changes_trials_and_nothing_else():
    base = load_config("jsb")
    fp = search.fingerprint(base)
    assert fp == search.fingerprint(load_config("jsb"))
    for field, value in [("search.trials_per_batch", 3), ("search.trials_per_chunk", 2),
                         ("search.hidden_buckets", (100, 200)), ("search.mix_variants", False),
                         ("train.lstm_loops", "pallas"), ("data.cache_dir", "/tmp/elsewhere")]:
        config = load_config("jsb")
        _set(config, field, value)
        assert search.fingerprint(config) == fp, field
    for field, value in [("search.num_trials", 10), ("search.seed", 1), ("search.variants", ("V",)),
                         ("train.max_epochs", 10), ("train.patience", 3), ("data.path", "/tmp/jsb.pickle"),
                         ("search.space.learning_rate", ("log_uniform", 1e-5, 1e-2)), ("data.seed", 2),
                         ("data.max_sequences.train", 5), ("train.recurrent_dtype", "bfloat16"),
                         ("train.data_order", "shared"), ("train.data_order", "strata"), ("train.order_stratum", 4),
                         ("train.matmul_precision", "tensorfloat32"),
                         ("search.draw_by_task", False)]:
        config = load_config("jsb")
        _set(config, field, value)
        assert search.fingerprint(config) != fp, field
        diff = search.identity_diff(search.study_identity(base), search.study_identity(config))
        # a data path means the standard corpus, not the stand-in of a recipe
        also = ["config.data.standin_recipe: 2 (the version of the recipe that builds the stand-in data: a study "
                "is not resumed on data another recipe built) -> absent (stand-in data of recipe 1, or no "
                "stand-in)"] if field == "data.path" else []
        assert len(diff) == 1 + len(also) and diff[0].startswith(f"config.{field}: ") and diff[1:] == also, diff


@pytest.mark.parametrize("field,value", [("recurrent_dtype", "float32"), ("data_order", "per_trial"),
                                         ("matmul_precision", "float32"), ("order_stratum", 8)])
def test_a_field_added_later_keeps_the_fingerprint_of_studies_that_predate_it(field, value):
    """A config without a later field (a study's config.json from before it) and a config with it at the value
    those studies had draw and train the same trials: one fingerprint, so such a study resumes."""
    for task in ("jsb", "timit"):
        config = load_config(task)
        assert config.train[field] == value
        before = load_config(task)
        del before.train[field]
        search.validate_config(before)
        assert search.fingerprint(before) == search.fingerprint(config)
        assert search.order_seed(before) is None
        assert field not in search.study_identity(config)["train"]


def test_the_shared_order_seed_comes_from_the_search_seed_and_the_task_alone():
    config = load_config("jsb")
    assert search.order_seed(config) is None
    config.train.data_order = "shared"
    seed = search.order_seed(config)
    assert isinstance(seed, int) and 0 <= seed < 2**31 - 1
    same = load_config("jsb", "quick")
    same.train.data_order = "shared"
    assert search.order_seed(same) == seed  # the rest of the config does not enter
    other = load_config("timit")
    other.train.data_order = "shared"
    assert search.order_seed(other) != seed
    config.search.draw_by_task = other.search.draw_by_task = False  # as studies before draw_by_task
    assert search.order_seed(other) == search.order_seed(config) != seed
    other.search.seed = 1
    assert search.order_seed(other) != search.order_seed(config)
    # and it is no trial's training seed
    assert seed not in {t["seed"] for t in search.draw_trials(load_config("jsb"))}
    # strata draw the same shared seed, with ORDER_STRATUM sequences to a stratum; the other orders have none
    assert search.order_stratum(config) is None and search.order_stratum(load_config("jsb")) is None
    strata = load_config("jsb")
    strata.train.data_order = "strata"
    assert search.order_seed(strata) == seed and search.order_stratum(strata) == search.ORDER_STRATUM == 8
    strata.train.order_stratum = 3
    assert search.order_stratum(strata) == 3
    del strata.train.order_stratum  # a config.json from before the field
    assert search.order_stratum(strata) == 8


def test_each_task_draws_its_own_search_unless_told_otherwise():
    """Trial k of a variant draws from a generator keyed by (seed, crc32(task), crc32(variant), k): the tasks'
    searches are independent, as the paper ran one per dataset. With draw_by_task False the task is left out
    of the key (studies made before the field), and trial k draws alike in every task."""
    shared = ("hidden_size", "learning_rate", "momentum", "input_noise", "seed")
    draws = {}
    for by_task in (True, False):
        for task in ("jsb", "timit", "iam_online"):
            config = load_config(task)
            config.search.num_trials, config.search.draw_by_task = 30, by_task
            draws[by_task, task] = [{k: t[k] for k in shared} for t in search.draw_trials(config)]
    for a, b in (("jsb", "timit"), ("jsb", "iam_online"), ("timit", "iam_online")):
        assert all(x["learning_rate"] != y["learning_rate"] and x["seed"] != y["seed"]
                   for x, y in zip(draws[True, a], draws[True, b])), (a, b)
        assert draws[False, a] == draws[False, b], (a, b)
    # the keys, stepped by hand: the training seed is each generator's first draw
    for by_task, task in ((True, "timit"), (False, "timit")):
        for index, (variant, k) in ((0, ("V", 0)), (30 + 7, ("NIG", 7))):
            key = ((zlib.crc32(task.encode()),) if by_task else ()) + (zlib.crc32(variant.encode()), k)
            rng = np.random.default_rng(np.random.SeedSequence(0, spawn_key=key))
            assert draws[by_task, task][index]["seed"] == int(rng.integers(0, 2**31 - 1))


def test_draw_by_task_must_be_a_bool():
    config = load_config("jsb")
    del config.search.draw_by_task
    config.search.draw_by_task = 1  # a new field takes any type; the ConfigDict's own refuses an int
    with pytest.raises(search.ConfigError, match="config.search.draw_by_task = 1: expected True or False"):
        search.validate_config(config)


def test_a_study_from_before_draw_by_task_keeps_its_fingerprint_and_trials():
    """A config.json without search.draw_by_task (a study made before it) is the study of draw_by_task False:
    the same fingerprint and trials, so it resumes; the default, True, is another study."""
    for task in ("jsb", "timit"):
        before = load_config(task)
        del before.search.draw_by_task
        search.validate_config(before)
        old = load_config(task)
        old.search.draw_by_task = False
        assert search.fingerprint(before) == search.fingerprint(old) != search.fingerprint(load_config(task))
        assert search.draw_trials(before) == search.draw_trials(old) != search.draw_trials(load_config(task))
        assert "draw_by_task" not in search.study_identity(old)["search"]
        assert search.identity_diff(search.study_identity(old), search.study_identity(load_config(task))) == [
            "config.search.draw_by_task: False (absent: the field is newer than the study) -> True"]
        assert search.study_identity(load_config(task))["search"]["draw_by_task"] is True


def test_a_stand_in_studys_identity_holds_the_recipe_version_of_its_data(monkeypatch, tmp_path):
    """A study on stand-in data records the version of the recipe that built them, absent at 1 (the version of
    every study before the field, whose identities and fingerprints are thus unchanged), so that a study is not
    resumed on data another recipe built; a study on the standard corpus records none."""
    from odyssey.data import handwriting_standin, jsb_music21, speech_standin
    assert search.study_identity(load_config("jsb"))["data"]["standin_recipe"] == jsb_music21.RECIPE_VERSION == 2
    for task, module in (("jsb", jsb_music21), ("timit", speech_standin), ("iam_online", handwriting_standin)):
        config = load_config(task)
        assert config.data.get("source") in (None, "standin") and not config.data.get("path")
        monkeypatch.setattr(module, "RECIPE_VERSION", 1)
        old, old_fp = search.study_identity(config), search.fingerprint(config)
        assert "standin_recipe" not in old["data"]
        monkeypatch.setattr(module, "RECIPE_VERSION", 3)
        new = search.study_identity(config)
        assert new["data"]["standin_recipe"] == 3 and search.fingerprint(config) != old_fp
        assert search.identity_diff(old, new) == [
            "config.data.standin_recipe: absent (stand-in data of recipe 1, or no stand-in) -> 3 (the version of the "
            "recipe that builds the stand-in data: a study is not resumed on data another recipe built)"]
        del new["data"]["standin_recipe"]
        assert new == old
        standard = load_config(task)
        standard.data.source, standard.data.path = "standard", str(tmp_path)
        assert "standin_recipe" not in search.study_identity(standard)["data"]


_T = collections.namedtuple("_T", "trial_id variant hidden_size")


def test_bucket_of_is_the_smallest_bucket_that_holds_the_size():
    buckets = (40, 80, 120, 160, 200)
    for h in range(1, 201):
        assert search.bucket_of(h, buckets) == min(b for b in buckets if b >= h)
    with pytest.raises(ValueError, match="exceeds the largest hidden bucket 200"):
        search.bucket_of(201, buckets)
    shuffled = (160, 40, 200, 120, 80)  # a config may list its buckets in any order
    assert [search.bucket_of(h, shuffled) for h in (1, 40, 41, 121, 200)] == [40, 40, 80, 160, 200]
    with pytest.raises(ValueError, match="exceeds the largest hidden bucket 200"):
        search.bucket_of(201, shuffled)


def test_schedule_groups_every_trial_once_by_variant_and_bucket():
    rng = np.random.default_rng(0)
    buckets = (40, 80, 120, 160, 200)
    trials = [_T(i, ALL_VARIANTS[rng.integers(9)], int(rng.integers(20, 201))) for i in range(300)]
    rng.shuffle(trials)
    groups = search.schedule(trials, buckets)
    assert sorted(t.trial_id for g in groups for t in g) == list(range(300))
    keys = [(g[0].variant, search.bucket_of(g[0].hidden_size, buckets)) for g in groups]
    assert len(set(keys)) == len(keys), "one group per (variant, bucket)"
    for g, key in zip(groups, keys):
        assert all((t.variant, search.bucket_of(t.hidden_size, buckets)) == key for t in g)
        assert [t.trial_id for t in g] == sorted(t.trial_id for t in g)
    # Turns over the variants: the first nine groups are nine variants' smallest buckets.
    first = keys[:9]
    assert sorted(v for v, _ in first) == sorted(ALL_VARIANTS)
    assert all(b == min(k[1] for k in keys if k[0] == v) for v, b in first)
    assert search.schedule([], buckets) == []
