"""Unit tests of core/config.py: defaults, validation of params.json, KEY=VALUE overrides and Params."""

import copy
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import config  # noqa: E402
from core.config import KEYS, NESTED, Params, defaults, load_params, parse_override, resolve, validate  # noqa: E402
from utils import UserError  # noqa: E402

# the seed template's params.json, verbatim: 1/0 flags, an int for a float key, a learning_rate list and a
# hyper_search block that only search_hyperparams.py reads
SEED_TEMPLATE = {
    "arch": "resnet18", "pretrain": 1, "n_clas": 9, "im_sz": 224, "batch_size": 128, "bs_test": 16,
    "learning_rate": [0.002, 0.002, 0.002], "wd": 0.0001, "ps": 0.5, "num_epochs": 10, "num_workers": 4,
    "cuda": 1, "scheduler": "one_cycle", "div_factor": 25, "pct_start": 0.3, "save_summary_steps": 1,
    "early_stopping": {"patience": 10, "monitor_metric": "loss", "min_delta": 0.01, "minimize": 1},
    "hyper_search": {"ps": [0.5, 0.75]},
}

WHERE = "exp/params.json"


def error_of(user, overrides=()):
    """The UserError message resolve() raises for this input (fails the test when it raises none)."""
    with pytest.raises(UserError) as e:
        resolve(user, WHERE, overrides)
    return str(e.value)


# ---------------------------------------------------------------- defaults


def test_empty_params_give_every_default():
    out = resolve({}, WHERE)
    # arch and monitor_metric default to the task's (null in KEYS): the classifier's small_cnn and accuracy
    assert out == {**defaults(), "arch": "small_cnn",
                   "early_stopping": {**defaults()["early_stopping"], "monitor_metric": "accuracy", "minimize": 0}}
    assert out["arch"] == "small_cnn"
    assert out["batch_size"] == 64
    assert out["learning_rate"] == 2e-3
    assert out["n_clas"] is None
    assert out["early_stopping"] == {"patience": 10, "monitor_metric": "accuracy", "min_delta": 0.0, "minimize": 0}


def test_defaults_cover_every_spec_key_and_are_valid():
    out = defaults()
    for key, entry in KEYS.items():
        node = out
        for part in key.split("."):
            node = node[part]
        assert node == entry.default, key
        assert entry.doc, f"{key} has no one-line meaning"
    # the defaults themselves pass validation (a default out of range would break every run)
    validate(out, "defaults")


def test_missing_keys_take_defaults_and_given_keys_win():
    out = resolve({"batch_size": 8, "early_stopping": {"patience": 3}}, WHERE)
    assert out["batch_size"] == 8
    assert out["early_stopping"]["patience"] == 3
    # siblings of a partially given nested block keep their defaults
    assert out["early_stopping"]["monitor_metric"] == "accuracy"
    assert out["early_stopping"]["minimize"] == 0
    assert out["bs_test"] == 256 and out["optimizer"] == "adamw"


def test_resolve_does_not_mutate_defaults_or_input():
    user = {"early_stopping": {"patience": 3}}
    before = copy.deepcopy(user)
    resolve(user, WHERE, ["early_stopping.min_delta=0.5"])
    assert user == before
    assert resolve({}, WHERE)["early_stopping"]["patience"] == 10
    assert resolve({}, WHERE)["early_stopping"]["min_delta"] == 0.0


# ---------------------------------------------------------------- the seed template


def test_seed_template_validates_verbatim(tmp_path):
    path = tmp_path / "params.json"
    path.write_text(json.dumps(SEED_TEMPLATE, indent=2))
    p = load_params(str(path))
    assert p.arch == "resnet18"
    assert p.pretrain == 1 and p.cuda == 1
    assert p.n_clas == 9
    assert p.learning_rate == [0.002, 0.002, 0.002]
    assert p.div_factor == 25
    assert p.early_stopping.monitor_metric == "loss"
    assert p.early_stopping.minimize == 1
    assert p.early_stopping.min_delta == 0.01
    assert p.hyper_search == {"ps": [0.5, 0.75]}  # carried through untouched, never validated as params
    # keys the template leaves out still get their defaults
    assert p.optimizer == "adamw" and p.seed == 230 and p.augmentation == "light"


def test_every_experiment_params_json_in_the_repo_validates():
    paths = sorted((ROOT / "experiments").glob("*/params.json"))
    assert paths, "no experiments/*/params.json found"
    for path in paths:
        load_params(str(path))


@pytest.mark.parametrize("flag", ["pretrain", "cuda", "cache_images", "early_stopping.minimize"])
@pytest.mark.parametrize("value", [0, 1, True, False])
def test_flags_accept_0_1_and_bools(flag, value):
    metric = "loss" if value else "accuracy"  # a minimize flag that agrees with the metric's direction
    out = resolve({"early_stopping": {"monitor_metric": metric}}, WHERE, [f"{flag}={json.dumps(value)}"])
    node = out
    for part in flag.split("."):
        node = node[part]
    assert node == value


@pytest.mark.parametrize("value", [2, -1, 0.5, "1"])
def test_flags_reject_other_values(value):
    msg = error_of({"cuda": value})
    assert "'cuda'" in msg and "0/1" in msg


# ---------------------------------------------------------------- overrides


def test_parse_override_values_are_json_else_strings():
    assert parse_override("early_stopping.patience=3") == ("early_stopping.patience", 3)
    assert parse_override("learning_rate=[0.001,0.01]") == ("learning_rate", [0.001, 0.01])
    assert parse_override("arch=resnet18") == ("arch", "resnet18")
    assert parse_override("n_clas=null") == ("n_clas", None)
    assert parse_override("ps=0.5") == ("ps", 0.5)
    assert parse_override("augmentation=none") == ("augmentation", "none")
    # only the first '=' splits: a value may contain '='
    assert parse_override("pretrained_path=/w/a=b.pth") == ("pretrained_path", "/w/a=b.pth")


def test_dotted_override_sets_nested_key_only():
    out = resolve({"early_stopping": {"patience": 7, "min_delta": 0.5}}, WHERE, ["early_stopping.patience=3"])
    assert out["early_stopping"]["patience"] == 3
    assert out["early_stopping"]["min_delta"] == 0.5  # from params.json, untouched by the override


def test_list_override_for_learning_rate():
    out = resolve({"learning_rate": 0.1}, WHERE, ["learning_rate=[0.001,0.01]"])
    assert out["learning_rate"] == [0.001, 0.01]


def test_bare_word_override_is_a_string():
    out = resolve({}, WHERE, ["arch=resnet18", "optimizer=sgd", "scheduler=none"])
    assert out["arch"] == "resnet18"
    assert out["optimizer"] == "sgd"
    assert out["scheduler"] == "none"


def test_later_override_wins_over_earlier_and_params_json():
    out = resolve({"num_epochs": 5}, WHERE, ["num_epochs=2", "num_epochs=3"])
    assert out["num_epochs"] == 3


def test_override_without_equals_sign():
    msg = error_of({}, ["num_epochs"])
    assert "override 'num_epochs'" in msg and "KEY=VALUE" in msg


def test_override_with_unknown_key_suggests():
    msg = error_of({}, ["learning_rat=0.1"])
    assert "override 'learning_rat=0.1'" in msg
    assert "unknown key 'learning_rat'" in msg
    assert "did you mean 'learning_rate'" in msg


def test_override_with_unknown_nested_key_suggests():
    msg = error_of({}, ["early_stopping.patiense=3"])
    assert "unknown key 'early_stopping.patiense'" in msg
    assert "did you mean 'early_stopping.patience'" in msg


def test_override_with_wrong_type_names_override_key_and_types():
    msg = error_of({}, ["batch_size=abc"])
    assert "override 'batch_size=abc'" in msg
    assert "'batch_size'" in msg and "int" in msg and 'string "abc"' in msg


def test_override_out_of_range_is_rejected():
    msg = error_of({}, ["batch_size=0"])
    assert "override 'batch_size=0'" in msg and ">= 1" in msg


def test_override_of_whole_nested_block_sets_only_the_keys_it_names():
    es = resolve({"early_stopping": {"min_delta": 0.5}}, WHERE, ['early_stopping={"patience": 3}'])["early_stopping"]
    assert es["patience"] == 3 and es["min_delta"] == 0.5 and es["monitor_metric"] == "accuracy"
    msg = error_of({}, ['early_stopping={"patiense": 3}'])
    assert "did you mean 'early_stopping.patience'?" in msg


# ---------------------------------------------------------------- unknown keys


def test_unknown_key_suggests_closest():
    msg = error_of({"learning_rat": 0.1})
    assert msg.startswith(WHERE)
    assert "unknown key 'learning_rat'" in msg
    assert "(did you mean 'learning_rate'?)" in msg


def test_unknown_nested_key_suggests_closest_dotted_key():
    msg = error_of({"early_stopping": {"patiense": 3}})
    assert "unknown key 'early_stopping.patiense'" in msg
    assert "(did you mean 'early_stopping.patience'?)" in msg


def test_unknown_key_far_from_everything_has_no_suggestion():
    msg = error_of({"zzzzqqq": 1})
    assert "unknown key 'zzzzqqq'" in msg
    assert "did you mean" not in msg


def test_nested_block_that_is_not_an_object():
    msg = error_of({"early_stopping": 3})
    assert "'early_stopping'" in msg and "object" in msg and "int" in msg


@pytest.mark.parametrize("top", [[1, 2], "text", 3, None])
def test_top_level_must_be_an_object(top):
    msg = error_of(top)
    assert msg.startswith(WHERE) and "object" in msg


# ---------------------------------------------------------------- types


@pytest.mark.parametrize(
    "key, value, expected, got",
    [
        ("batch_size", "64", "int", 'string "64"'),
        ("batch_size", 2.5, "int", "float 2.5"),
        ("batch_size", True, "int", "bool true"),
        ("num_epochs", False, "int", "bool false"),
        ("early_stopping.patience", 2.5, "int", "float 2.5"),
        ("n_clas", 9.5, "int or null", "float 9.5"),
        ("ps", "0.5", "float", 'string "0.5"'),
        ("wd", None, "float", "null"),
        ("wd", True, "float", "bool true"),
        ("arch", 18, "string or null", "int 18"),
        ("learning_rate", "0.1", "float or list of floats", 'string "0.1"'),
        ("learning_rate", [], "float or list of floats", "list []"),
        ("learning_rate", [0.1, "a"], "float or list of floats", 'list [0.1, "a"]'),
        ("augmentation", 3, "preset name or dict", "int 3"),
    ],
)
def test_wrong_type_names_key_expected_and_got(key, value, expected, got):
    user = {}
    config.set_dotted(user, key, value)
    msg = error_of(user)
    assert msg.startswith(WHERE + ":")
    assert f"key '{key}' expects {expected}, got {got}" in msg


def test_float_key_accepts_an_int():
    out = resolve({"wd": 0, "div_factor": 25, "ps": 0}, WHERE)
    assert out["wd"] == 0 and out["div_factor"] == 25


def test_int_or_null_accepts_both():
    assert resolve({"n_clas": None}, WHERE)["n_clas"] is None
    assert resolve({"n_clas": 9}, WHERE)["n_clas"] == 9


def test_hyper_search_accepts_anything():
    for block in ({"ps": [0.5, 0.75]}, {"zip": {"batch_size": [32, 64]}}, None, [1], "x"):
        assert resolve({"hyper_search": block}, WHERE)["hyper_search"] == block


# ---------------------------------------------------------------- ranges and choices


@pytest.mark.parametrize(
    "key, value, what",
    [
        ("batch_size", 0, ">= 1"),
        ("bs_test", 0, ">= 1"),
        ("num_epochs", 0, ">= 1"),
        ("num_epochs", -3, ">= 1"),
        ("learning_rate", -0.1, "> 0"),
        ("learning_rate", 0, "> 0"),
        ("learning_rate", [0.01, -0.1], "> 0"),
        ("ps", 1.0, "in [0, 1)"),
        ("ps", -0.1, "in [0, 1)"),
        ("momentum", 1, "in [0, 1)"),
        ("pct_start", 0, "in (0, 1)"),
        ("pct_start", 1, "in (0, 1)"),
        ("wd", -1e-4, ">= 0"),
        ("im_sz", 4, ">= 8"),
        ("num_workers", -1, ">= 0"),
        ("train_subset", -1, ">= 0"),
        ("n_clas", 1, ">= 2"),
        ("div_factor", 0, "> 0"),
        ("gamma", 0, "> 0"),
        ("step_size", 0, ">= 1"),
        ("save_summary_steps", 0, ">= 1"),
        ("n_repetitions", 0, ">= 1"),
        ("early_stopping.patience", -1, ">= 0"),
        ("early_stopping.min_delta", -0.01, ">= 0"),
    ],
)
def test_out_of_range_is_rejected(key, value, what):
    user = {}
    config.set_dotted(user, key, value)
    msg = error_of(user)
    assert msg.startswith(WHERE + ":")
    assert f"key '{key}' must be {what}, got {json.dumps(value)}" in msg


@pytest.mark.parametrize(
    "key, value",
    [("batch_size", 1), ("learning_rate", 1e-9), ("ps", 0.0), ("ps", 0.999), ("num_epochs", 1), ("im_sz", 8),
     ("num_workers", 0), ("n_clas", 2), ("early_stopping.patience", 0), ("momentum", 0)],
)
def test_range_edges_are_accepted(key, value):
    user = {}
    config.set_dotted(user, key, value)
    resolve(user, WHERE)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "[0.001, -Infinity]"])
def test_non_finite_numbers_are_rejected(value):
    msg = error_of({}, [f"learning_rate={value}"])
    assert "must be a finite number" in msg


def test_infinite_learning_rate_is_rejected():
    error_of({}, ["learning_rate=Infinity"])


@pytest.mark.parametrize(
    "key, value, choices",
    [
        ("optimizer", "rmsprop", "sgd, adam, adamw"),
        ("optimizer", "SGD", "sgd, adam, adamw"),
        ("scheduler", "linear", "one_cycle, cosine, step, plateau, none"),
    ],
)
def test_bad_choice_lists_the_choices(key, value, choices):
    user = {}
    config.set_dotted(user, key, value)
    msg = error_of(user)
    assert f"key '{key}' must be one of {choices}, got \"{value}\"" in msg


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_choice_is_accepted(optimizer):
    assert resolve({"optimizer": optimizer}, WHERE)["optimizer"] == optimizer


# ---------------------------------------------------------------- load_params and files


def test_load_params_reports_missing_file(tmp_path):
    path = tmp_path / "params.json"
    with pytest.raises(UserError, match="file not found") as e:
        load_params(str(path))
    assert str(path) in str(e.value)


def test_load_params_reports_json_line_and_column(tmp_path):
    path = tmp_path / "params.json"
    path.write_text('{\n  "batch_size": 8,\n  "num_epochs": 1,,\n}\n')
    with pytest.raises(UserError) as e:
        load_params(str(path))
    msg = str(e.value)
    assert str(path) in msg
    assert "invalid JSON at line 3, column 19" in msg


def test_load_params_applies_overrides_after_the_file(tmp_path):
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"num_epochs": 5, "early_stopping": {"patience": 4}}))
    p = load_params(str(path), ["num_epochs=2", "early_stopping.patience=1"])
    assert p.num_epochs == 2 and p.early_stopping.patience == 1


def test_load_params_error_names_the_file(tmp_path):
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"batch_size": 0}))
    with pytest.raises(UserError) as e:
        load_params(str(path))
    assert str(e.value).startswith(f"{path}: key 'batch_size'")


# ---------------------------------------------------------------- Params


def test_params_attribute_access():
    p = Params(resolve(SEED_TEMPLATE, WHERE))
    assert p.batch_size == 128
    assert p.learning_rate == [0.002, 0.002, 0.002]
    assert isinstance(p.early_stopping, Params)
    assert p.early_stopping.patience == 10
    assert p.early_stopping.monitor_metric == "loss"
    # hyper_search is not a params block: it stays a plain dict
    assert isinstance(p.hyper_search, dict) and p.hyper_search["ps"] == [0.5, 0.75]
    with pytest.raises(AttributeError):
        p.no_such_key  # noqa: B018


def test_params_to_dict_round_trip():
    resolved = resolve(SEED_TEMPLATE, WHERE, ["early_stopping.patience=3"])
    d = Params(resolved).to_dict()
    assert d == resolved
    assert isinstance(d["early_stopping"], dict)
    # the dict is JSON-serialisable and validates again to the same params (params_effective.json re-read)
    again = json.loads(json.dumps(d))
    assert resolve(again, "params_effective.json") == resolved
    assert Params(again).to_dict() == d


def test_every_spec_key_is_an_attribute():
    p = Params(defaults())
    for key in KEYS:
        node = p
        for part in key.split("."):
            node = getattr(node, part)
    assert NESTED == {"early_stopping", "loss"}

