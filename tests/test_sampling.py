"""Sampled hyper_search blocks (random, Sobol): seeded, readable names, extension, and bad blocks. No training."""

import json
import math
import re

import pytest

from conftest import FAST_PARAMS
from core.search.grid import expand, plan
from core.search.sampling import from_unit
from utils import UserError

SPACE = {"learning_rate": {"loguniform": [1e-4, 1e-1]}, "ps": {"uniform": [0.0, 0.5]},
         "batch_size": {"int": [16, 128]}, "optimizer": {"choice": ["adam", "sgd"]}, "wd": [0.0, 1e-4]}


def block(method="random", n=8, **extra):
    return {"method": method, "n_samples": n, **SPACE, **extra}


@pytest.mark.parametrize("method", ["random", "sobol"])
def test_sampling_is_seeded_in_range_and_extends_without_changing_existing_cells(method):
    cells = expand(block(method), "p")
    assert cells == expand(block(method), "p")  # same seed, same cells
    assert cells != expand(block(method, sample_seed=1), "p")
    assert expand(block(method, n=13), "p")[:8] == cells  # a larger n_samples only adds cells
    assert len({json.dumps(c, sort_keys=True) for c in cells}) == 8
    for c in cells:
        assert 1e-4 <= c["learning_rate"] <= 1e-1 and 0 <= c["ps"] <= 0.5 and 16 <= c["batch_size"] <= 128
        assert isinstance(c["batch_size"], int) and c["optimizer"] in ("adam", "sgd") and c["wd"] in (0.0, 1e-4)
        assert float(f"{c['learning_rate']:.4g}") == c["learning_rate"]  # 4 significant digits


def test_loguniform_spreads_over_decades():
    values = [c["learning_rate"] for c in expand(block("sobol", n=64), "p")]
    decades = {math.floor(math.log10(v)) for v in values}
    assert decades == {-4, -3, -2}  # [1e-4, 1e-1): every decade, as a log scale should
    assert from_unit("int", [1, 3], 0.999) == 3 and from_unit("int", [1, 3], 0.0) == 1


def test_sampled_names_are_readable_distinct_and_stay_with_their_values():
    out = plan({**FAST_PARAMS, "hyper_search": {"method": "random", "n_samples": 6,
                                                "learning_rate": {"loguniform": [1e-4, 1e-1]},
                                                "ps": {"uniform": [0, 0.5]}}}, "p")
    names = [n for n, _, _ in out]
    assert len(set(names)) == 6
    for name, params, _ in out:
        assert re.fullmatch(r"learning_rate_[0-9.e-]+__ps_[0-9.e-]+", name), name
        assert name == f"learning_rate_{params['learning_rate']!r}__ps_{params['ps']!r}"


def test_duplicate_draws_are_skipped_and_a_too_small_space_is_an_error():
    cells = expand({"method": "random", "n_samples": 2, "ps": {"choice": [0.1, 0.2]}}, "p")
    assert sorted(c["ps"] for c in cells) == [0.1, 0.2]
    with pytest.raises(UserError, match="only 2 distinct cells"):
        expand({"method": "random", "n_samples": 3, "ps": [0.1, 0.2]}, "p")


def test_sampling_combines_with_zip_union_and_repetitions():
    zipped = {"method": "random", "n_samples": 5, "zip": {"batch_size": [32, 64], "learning_rate": [1e-3, 2e-3]},
              "ps": {"uniform": [0, 0.5]}}
    for c in expand(zipped, "p"):
        assert (c["batch_size"], c["learning_rate"]) in ((32, 1e-3), (64, 2e-3))  # a zip row stays whole
    out = plan({**FAST_PARAMS, "n_repetitions": 2,
                "hyper_search": [{"method": "sobol", "n_samples": 3, "ps": {"uniform": [0, 0.5]}},
                                 {"ps": [0.7]}]}, "p")
    assert len(out) == 8 and sum(n.startswith("ps_0.7") for n, _, _ in out) == 2
    assert {p["seed"] for n, p, _ in out if n.endswith("rep1")} == {FAST_PARAMS.get("seed", 230) + 1000}
    assert expand({"ps": {"choice": [0.1, 0.2]}, "wd": [0, 1e-4]}, "p")[1] == {"ps": 0.1, "wd": 1e-4}  # grid


@pytest.mark.parametrize("bad, message", [
    ({"method": "bayes", "ps": [0.1]}, "unknown method \"bayes\""),
    ({"method": "random", "ps": {"uniform": [0, 0.5]}}, "needs \"n_samples\""),
    ({"n_samples": 4, "ps": [0.1, 0.2]}, "'n_samples' needs a sampling method"),
    ({"method": "random", "n_samples": 0, "ps": [0.1]}, "'n_samples' must be an integer >= 1"),
    ({"method": "random", "n_samples": 2, "learning_rate": {"loguniform": [0, 0.1]}}, "bounds must be > 0"),
    ({"method": "random", "n_samples": 2, "ps": {"uniform": [0.5, 0.1]}}, "high must be > low"),
    ({"method": "random", "n_samples": 2, "batch_size": {"int": [8.5, 64]}}, "bounds must be integers"),
    ({"method": "random", "n_samples": 2, "ps": {"uniform": [0.1]}}, "needs [low, high]"),
    ({"learning_rate": {"loguniform": [1e-4, 1e-1]}}, "a grid cannot enumerate"),
    ({"method": "random", "n_samples": 2, "zip": {"ps": {"uniform": [0, 1]}}}, "'zip' walks lists in lock-step"),
    ({"method": "random", "n_samples": 2}, "no key to vary"),
])
def test_bad_sampled_blocks_are_one_line_errors(bad, message):
    with pytest.raises(UserError, match=re.escape(message)) as e:
        expand(bad, "params.json")
    assert "\n" not in str(e.value) and str(e.value).startswith("params.json")


def test_a_sampled_value_out_of_the_keys_range_is_caught_before_anything_runs():
    with pytest.raises(UserError, match="'ps' must be in \\[0, 1\\)"):
        plan({**FAST_PARAMS, "hyper_search": {"method": "random", "n_samples": 3, "ps": {"uniform": [0.5, 1.5]}}}, "p")


@pytest.mark.parametrize("bad, message", [
    ({"sample_seed": 3, "ps": [0.1]}, "'sample_seed' needs a sampling method"),
    ({"method": "random", "n_samples": 2, "sample_seed": 2**32, "ps": [0.1, 0.2]}, "and < 2**32"),
    ({"method": "random", "n_samples": 2, "ps": {"normal": [0, 1]}}, "is not a distribution"),
    ({"method": "random", "n_samples": 10**9, "ps": [0.1, 0.2], "batch_size": {"int": [8, 9]}},
     "the space holds only 4 distinct cells"),
])
def test_more_bad_sampled_blocks(bad, message):
    with pytest.raises(UserError, match=re.escape(message)):
        expand(bad, "params.json")
