"""params.json: loading, validation and the Params object; what each key means and defaults to is core/keys.py.

A params.json only needs the keys it changes. Unknown keys, wrong types and out-of-range values are UserErrors
naming the file and the key, raised before anything is written.
"""

import copy
import difflib
import functools
import json
import math

from core import tasks  # no torch there: search planning and tables stay fast
from core.keys import ANY, AUG, FLAG, INT_LIST, KEYS, LR, NESTED, OPT_FLAG, OPT_INT, OPT_STR, RETIRED, WEIGHTS
from core.stages import check_freeze, check_plan, stage_flat
from utils import UserError, read_json, short


class Params:
    """params.json as attributes (`params.batch_size`, `params.early_stopping.patience`)."""

    def __init__(self, d):
        for k, v in d.items():
            setattr(self, k, Params(v) if k in NESTED and isinstance(v, dict) else v)

    def to_dict(self):
        return {k: v.to_dict() if isinstance(v, Params) else v for k, v in vars(self).items()}


def defaults():
    """All defaults as a nested dict (a fresh one each call: resolve fills it in)."""
    out = {}
    for (*parents, last), value in default_paths():
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[last] = copy.deepcopy(value) if isinstance(value, (list, dict)) else value
    return out


@functools.cache
def default_paths():
    """[(dotted key split, default)]: split once, since tables resolve the params of thousands of folders."""
    return [(tuple(key.split(".")), entry.default) for key, entry in KEYS.items()]


def set_dotted(d, key, value):
    *parents, last = key.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


def flatten(d, prefix=""):
    """{'early_stopping': {'patience': 3}} -> {'early_stopping.patience': 3}: the one flattening of params dicts.
    Only the blocks of KEYS are opened; other dict values (an albumentations dict) stay whole."""
    out = {}
    for key, value in d.items():
        if prefix + key in NESTED and isinstance(value, dict):
            out.update(flatten(value, prefix + key + "."))
        else:
            out[prefix + key] = value
    return out


def flatten_user(d, where):
    """flatten(d), rejecting unknown keys and blocks that are not objects."""
    flat = flatten(d)
    for key, value in flat.items():
        if key in NESTED:
            raise UserError(f"{where}: key '{key}' expects an object, got {type_name(value)}")
        if key not in KEYS:
            raise UserError(f"{where}: unknown key '{key}'{suggest(key)}")
    return flat


def hyperparams(d):
    """The flattened keys of a params dict that are hyperparameters (not search settings); a plan's stages as
    stages.<i>.<key>."""
    flat = {k: v for k, v in flatten(d).items() if k != "stages" and (k not in KEYS or KEYS[k].hyperparam)}
    return flat | stage_flat(d, flatten)


def fixed_overrides(use):
    """KEY=VALUE overrides that `use` ("evaluate" or "smoke", a field of Key) applies to a run's params."""
    return [f"{k}={json.dumps(getattr(e, use))}" for k, e in KEYS.items() if getattr(e, use) is not None]


def suggest(key):
    """' (did you mean 'KEY'?)' for the closest other known key, or ''. Never `key` itself: a known key refused
    where it stands (a search setting inside hyper_search) needs its caller to say where it belongs instead."""
    names = [k for k in [*KEYS, *NESTED] if k != key]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def type_name(v):
    return "null" if v is None else {bool: "bool", int: "int", float: "float", str: "string",
                                     list: "list", dict: "object"}.get(type(v), type(v).__name__)


def type_ok(value, expected):
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is ANY:
        return True
    if expected is float:
        return is_num
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if expected is FLAG:
        return isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))
    if expected is OPT_INT:
        return value is None or type_ok(value, int)
    if expected is OPT_FLAG:
        return value is None or type_ok(value, FLAG)
    if expected is OPT_STR:
        return value is None or isinstance(value, str)
    if expected is LR:
        return is_num or (isinstance(value, list) and len(value) > 0 and all(type_ok(x, float) for x in value))
    if expected is AUG:
        return isinstance(value, (str, dict))
    if expected is WEIGHTS:
        return value is None or isinstance(value, str) or (isinstance(value, list) and all(type_ok(x, float)
                                                                                              for x in value))
    if expected is INT_LIST:
        return isinstance(value, list) and all(type_ok(x, int) for x in value)
    raise AssertionError(expected)


def check_value(key, value, where):
    entry = KEYS.get(key)
    if entry is None:  # a stage's loss term no task declares
        raise UserError(f"{where}: unknown key '{key}'{suggest(key)}")
    if not type_ok(value, entry.type):
        want = entry.type if isinstance(entry.type, str) else type_name(entry.type())
        raise UserError(f"{where}: key '{key}' expects {want}, got {type_name(value)} {short(value)}")
    if any(isinstance(x, float) and not math.isfinite(x) for x in (value if isinstance(value, list) else [value])):
        raise UserError(f"{where}: key '{key}' must be a finite number, got {short(value)}")
    if entry.choices and value is not None and value not in entry.choices:
        raise UserError(f"{where}: key '{key}' must be one of {', '.join(entry.choices)}, got {short(value)}")
    if entry.check and not entry.check[0](value):
        raise UserError(f"{where}: key '{key}' must be {entry.check[1]}, got {short(value)}")


def parse_override(text):
    """'early_stopping.patience=3' -> ('early_stopping.patience', 3); values are JSON, else plain strings."""
    if "=" not in text:
        raise UserError(f"override '{text}': expected KEY=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def upgrade(flat):
    """A params file of an earlier version keeps working: its retired keys (RETIRED) become today's."""
    for key in RETIRED.keys() & flat.keys():
        new, value = RETIRED[key](flat.pop(key))
        flat.setdefault(new, value)  # where both are given, today's key wins
    return flat


def validate(user, where):
    """Check a (possibly partial) nested params dict; return it flattened to dotted keys."""
    if not isinstance(user, dict):
        raise UserError(f"{where}: expected a JSON object at the top level, got {type_name(user)}")
    flat = flatten_user(upgrade(dict(user)), where)
    for key, value in flat.items():
        check_value(key, value, where)
    return flat


def resolve(user, where, overrides=()):
    """Defaults <- params.json <- command-line overrides, all validated. Returns a nested dict."""
    flat = validate(user, where)
    for text in overrides:
        key, value = parse_override(text)
        source = f"override '{text}'"
        if key in RETIRED:
            key, value = RETIRED[key](value)
        if key in NESTED:  # a whole block: early_stopping={"patience": 3} sets only the keys it names
            items = flatten_user({key: value}, source)
        elif key in KEYS:
            items = {key: value}
        else:
            raise UserError(f"{source}: unknown key '{key}'{suggest(key)}")
        for k, v in items.items():
            check_value(k, v, source)
        flat.update(items)
    out = defaults()
    for key, value in flat.items():
        set_dotted(out, key, value)
    task = tasks.load(out["task"])
    out["arch"] = out["arch"] or task.arch
    for key, default in task.loss_keys().items():  # the task's own defaults, where a term name is shared
        out["loss"][key] = flat.get(f"loss.{key}", default)
    es = out["early_stopping"]
    es["monitor_metric"] = es["monitor_metric"] or task.monitor
    es["minimize"] = monitor_direction(es, out["task"], where)
    if out["checkpoint_every_s"] is not None and out["checkpoint_every_batches"] is not None:
        raise UserError(f"{where}: keys 'checkpoint_every_s' and 'checkpoint_every_batches' both set; set one (a "
                        f"checkpoint every S seconds, or every N batches)")
    check_plan(out, flat.get("num_epochs"), where, check_value, flatten)
    check_freeze(out, where)
    for i, stage in enumerate(out["stages"] or [{}]):  # a stage too may turn on only its task's terms
        task.check_loss({**out["loss"], **stage.get("loss", {})}, f"{where}: stages.{i}" if stage else where,
                        tasks.loss_defaults())
    return out


def monitor_direction(es, task, where):
    """early_stopping.minimize as 0/1: the monitored metric's own direction, unless the params contradict it."""
    metrics = tasks.metrics_of(task)
    if es["monitor_metric"] not in metrics:
        raise UserError(f"{where}: key 'early_stopping.monitor_metric' is {es['monitor_metric']}, not a metric of "
                        f"task {task} (one of {', '.join(metrics)})")
    natural = int(metrics[es["monitor_metric"]].minimize)
    if es["minimize"] is not None and int(es["minimize"]) != natural:
        better = "smaller" if natural else "larger"
        raise UserError(f"{where}: key 'early_stopping.minimize' is {json.dumps(es['minimize'])} but a "
                        f"{better} {es['monitor_metric']} is better; set it to {natural} or leave it out")
    return natural


def load_params(path, overrides=()):
    """Read and validate params.json (plus overrides) into a Params object."""
    return Params(resolve(read_json(path), path, overrides))
