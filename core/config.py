"""params.json: the one home for defaults, and its validation.

Every key train.py understands is listed in SPEC with its default, its type and a one-line meaning. A params.json
only needs the keys it changes. Unknown keys, wrong types and out-of-range values are UserErrors naming the file
and the key, raised before anything is written.
"""

import difflib
import json
import math

from utils import UserError, read_json

FLAG, LR, OPT_INT, AUG, ANY = "0/1", "float or list of floats", "int or null", "preset name or dict", "any"
INT_LIST = "list of ints"

SPEC = {
    # model
    "arch": ("small_cnn", str, "small_cnn (model/net.py) or a torchvision classifier name: resnet18, resnet50, ..."),
    "pretrain": (0, FLAG, "1: start from torchvision's ImageNet weights (torch cache or pretrained_path)"),
    "pretrained_path": ("", str, "torchvision weights file, for pretrain=1 on a machine without network"),
    "init_weights_path": ("", str, "start from another run's checkpoint (model weights whose shapes match)"),
    "n_clas": (None, OPT_INT, "number of classes; null: the number of class folders in the data"),
    "ps": (0.25, float, "dropout before the classifier head"),
    # data
    "im_sz": (32, int, "images are resized to im_sz x im_sz"),
    "augmentation": ("light", AUG, "train augmentation: a preset of model/data_loader.py or an albumentations dict"),
    "cache_images": (0, FLAG, "1: decode each split once into DATA_DIR/.cache, memory-mapped and shared by all runs"),
    "batch_size": (64, int, "training batch size"),
    "bs_test": (256, int, "evaluation batch size"),
    "num_workers": (0, int, "DataLoader worker processes (0: load in the main process)"),
    "train_subset": (0, int, "use only N training images, a fixed seeded choice (0: all); for quick debugging"),
    "valid_subset": (0, int, "use only N validation images (0: all)"),
    # optimisation
    "optimizer": ("adamw", str, "sgd, adam or adamw"),
    "learning_rate": (2e-3, LR, "one rate, or one per layer group with the head last"),
    "momentum": (0.9, float, "sgd momentum (beta1 for adam/adamw)"),
    "wd": (1e-4, float, "weight decay"),
    "scheduler": ("one_cycle", str, "one_cycle, cosine, step, plateau or none"),
    "div_factor": (25.0, float, "one_cycle: initial lr = learning_rate / div_factor"),
    "pct_start": (0.3, float, "one_cycle: fraction of steps spent warming up"),
    "step_size": (5, int, "step: epochs between decays"),
    "gamma": (0.1, float, "step and plateau: factor applied to the lr at each decay"),
    "plateau_patience": (2, int, "plateau: epochs without improvement before the lr decays"),
    "num_epochs": (10, int, "number of epochs"),
    "early_stopping": {
        "patience": (10, int, "stop after this many epochs without improvement (0: never)"),
        "monitor_metric": ("accuracy", str, "validation metric that picks best.pth.tar and drives stopping"),
        "min_delta": (0.0, float, "smallest change that counts as an improvement"),
        "minimize": (0, FLAG, "1 when a smaller monitor_metric is better (e.g. loss)"),
    },
    # run
    "seed": (230, int, "seed for torch, numpy, random, data order and augmentation"),
    "cuda": (1, FLAG, "use a GPU when one is available"),
    "save_summary_steps": (10, int, "refresh the progress bar every N batches (each refresh waits for the GPU)"),
    # insight and debugging
    "monitor_gradients": (1, FLAG, "per-layer gradient norms and update/weight ratios in history and gradients.png"),
    "tensorboard": (0, FLAG, "1: also write TensorBoard scalars to MODEL_DIR/tensorboard (pip install tensorboard)"),
    "gallery_indices": ([], INT_LIST, "valid examples shown in predictions.png ([]: a seeded choice)"),
    "gallery_size": (16, int, "how many valid examples predictions.png shows when gallery_indices is empty"),
    "plot_every_s": (30.0, float, "redraw the figures at most every N s, in a helper process (0: after each epoch)"),
    "overfit_batches": (0, int, "debug: train on N fixed batches without augmentation and validate on them"),
    "n_repetitions": (1, int, "search_hyperparams.py: train every cell this many times with distinct seeds"),
    "hyper_search": (None, ANY, "read by search_hyperparams.py; ignored by train.py"),
}

CHOICES = {
    "optimizer": ("sgd", "adam", "adamw"),
    "scheduler": ("one_cycle", "cosine", "step", "plateau", "none"),
    "early_stopping.monitor_metric": ("loss", "accuracy", "top5", "f1"),
}

# (key, test, what the value must be)
RANGES = [
    ("batch_size", lambda v: v >= 1, ">= 1"),
    ("bs_test", lambda v: v >= 1, ">= 1"),
    ("num_epochs", lambda v: v >= 1, ">= 1"),
    ("im_sz", lambda v: v >= 8, ">= 8"),
    ("num_workers", lambda v: v >= 0, ">= 0"),
    ("train_subset", lambda v: v >= 0, ">= 0"),
    ("valid_subset", lambda v: v >= 0, ">= 0"),
    ("learning_rate", lambda v: all(x > 0 for x in (v if isinstance(v, list) else [v])), "> 0"),
    ("wd", lambda v: v >= 0, ">= 0"),
    ("ps", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("div_factor", lambda v: v > 0, "> 0"),
    ("pct_start", lambda v: 0 < v < 1, "in (0, 1)"),
    ("step_size", lambda v: v >= 1, ">= 1"),
    ("gamma", lambda v: v > 0, "> 0"),
    ("plateau_patience", lambda v: v >= 0, ">= 0"),
    ("n_clas", lambda v: v is None or v >= 2, ">= 2"),
    ("save_summary_steps", lambda v: v >= 1, ">= 1"),
    ("n_repetitions", lambda v: v >= 1, ">= 1"),
    ("gallery_size", lambda v: v >= 0, ">= 0"),
    ("plot_every_s", lambda v: v >= 0, ">= 0"),
    ("gallery_indices", lambda v: all(i >= 0 for i in v), "a list of indices >= 0"),
    ("overfit_batches", lambda v: v >= 0, ">= 0"),
    ("early_stopping.patience", lambda v: v >= 0, ">= 0"),
    ("early_stopping.min_delta", lambda v: v >= 0, ">= 0"),
]


def _flatten(spec, prefix=""):
    flat = {}
    for key, entry in spec.items():
        if isinstance(entry, dict):
            flat.update(_flatten(entry, prefix + key + "."))
        else:
            flat[prefix + key] = entry
    return flat


FLAT_SPEC = _flatten(SPEC)
NESTED = {key for key, entry in SPEC.items() if isinstance(entry, dict)}


class Params:
    """params.json as attributes (`params.batch_size`, `params.early_stopping.patience`)."""

    def __init__(self, d):
        for k, v in d.items():
            setattr(self, k, Params(v) if k in NESTED and isinstance(v, dict) else v)

    def to_dict(self):
        return {k: v.to_dict() if isinstance(v, Params) else v for k, v in vars(self).items()}


def defaults():
    """All defaults as a nested dict."""
    out = {}
    for key, (default, _, _) in FLAT_SPEC.items():
        set_dotted(out, key, default)
    return out


def set_dotted(d, key, value):
    *parents, last = key.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


def flatten_user(d, where, prefix=""):
    """{'early_stopping': {'patience': 3}} -> {'early_stopping.patience': 3}, rejecting unknown keys."""
    flat = {}
    for key, value in d.items():
        full = prefix + key
        if full in NESTED:
            if not isinstance(value, dict):
                raise UserError(f"{where}: key '{full}' expects an object, got {type_name(value)}")
            flat.update(flatten_user(value, where, full + "."))
        elif full in FLAT_SPEC:
            flat[full] = value
        else:
            raise UserError(f"{where}: unknown key '{full}'{suggest(full)}")
    return flat


def suggest(key):
    close = difflib.get_close_matches(key, list(FLAT_SPEC) + list(NESTED), n=1, cutoff=0.5)
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
    if expected is LR:
        return is_num or (isinstance(value, list) and len(value) > 0 and all(type_ok(x, float) for x in value))
    if expected is AUG:
        return isinstance(value, (str, dict))
    if expected is INT_LIST:
        return isinstance(value, list) and all(type_ok(x, int) for x in value)
    raise AssertionError(expected)


def check_value(key, value, where):
    expected = FLAT_SPEC[key][1]
    if not type_ok(value, expected):
        want = expected if isinstance(expected, str) else type_name(expected())
        raise UserError(f"{where}: key '{key}' expects {want}, got {type_name(value)} {json.dumps(value)}")
    if any(isinstance(x, float) and not math.isfinite(x) for x in (value if isinstance(value, list) else [value])):
        raise UserError(f"{where}: key '{key}' must be a finite number, got {json.dumps(value)}")
    if key in CHOICES and value not in CHOICES[key]:
        raise UserError(f"{where}: key '{key}' must be one of {', '.join(CHOICES[key])}, got {json.dumps(value)}")
    for rkey, test, what in RANGES:
        if rkey == key and not test(value):
            raise UserError(f"{where}: key '{key}' must be {what}, got {json.dumps(value)}")


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


def validate(user, where):
    """Check a (possibly partial) nested params dict; return it flattened to dotted keys."""
    if not isinstance(user, dict):
        raise UserError(f"{where}: expected a JSON object at the top level, got {type_name(user)}")
    flat = flatten_user(user, where)
    for key, value in flat.items():
        check_value(key, value, where)
    return flat


def resolve(user, where, overrides=()):
    """Defaults <- params.json <- command-line overrides, all validated. Returns a nested dict."""
    flat = validate(user, where)
    for text in overrides:
        key, value = parse_override(text)
        where = f"override '{text}'"
        if key in NESTED:  # a whole block: early_stopping={"patience": 3} sets only the keys it names
            items = flatten_user({key: value}, where)
        elif key in FLAT_SPEC:
            items = {key: value}
        else:
            raise UserError(f"{where}: unknown key '{key}'{suggest(key)}")
        for k, v in items.items():
            check_value(k, v, where)
        flat.update(items)
    out = defaults()
    for key, value in flat.items():
        set_dotted(out, key, value)
    return out


def load_params(path, overrides=()):
    """Read and validate params.json (plus overrides) into a Params object."""
    return Params(resolve(read_json(path), path, overrides))
