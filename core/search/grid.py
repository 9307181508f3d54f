"""The hyper_search block -> a list of cells -> one child folder and params.json per cell.

    "hyper_search": {"learning_rate": [1e-4, 1e-3], "ps": [0.5, 0.75]}          # product: 4 cells
    "hyper_search": {"zip": {"batch_size": [32, 64], "learning_rate": [1e-3, 2e-3]}, "ps": [0.5, 0.75]}
    "hyper_search": [{"arch": ["small_cnn"], "learning_rate": [1e-3]}, {"arch": ["resnet18"], ...}]  # union
    "hyper_search": {"method": "random", "n_samples": 20, "learning_rate": {"loguniform": [1e-4, 1e-1]}}
                                                                      # sampled: core/search/sampling.py

Everything is validated before anything is written: keys against core/config.py, every cell's full params.
"""

import collections
import copy
import hashlib
import itertools
import json
import re

from core.config import KEYS, resolve, set_dotted, suggest, type_name
from core.search.identity import canonical, short_id
from core.search.sampling import DISTRIBUTIONS, METHODS, SAMPLED, check_distribution, is_distribution, sample
from core.stages import is_stage_key
from utils import UserError

MAX_NAME = 100
SAFE = re.compile(r"[^A-Za-z0-9._=+-]")  # no comma: tools that take lists of paths (apptainer --bind) split on it
REP_SEED_STRIDE = 1000  # repetition r trains with seed + 1000 r: distinct even when the grid itself varies seed


# keys of a block that say how to search rather than what to vary
SETTINGS = ("method", "n_samples", "sample_seed", "schedule")


def expand_block(block, where):
    """One block -> list of cells, each an ordered {dotted_key: value} (none yet for "tpe": asked as it goes)."""
    method, n_samples, seed, space = block_settings(block, where)
    dims = dimensions(space, method, where)
    if method == "grid":  # each axis: list of partial cells; the block is their product
        axes = [args if key == "zip" else [{key: v} for v in args] for key, _, args in dims]
        return [dict(kv for part in combo for kv in part.items()) for combo in itertools.product(*axes)]
    if method == "tpe":  # core/search/tpe.py asks Optuna for each cell as results come in
        if "zip" in space:
            raise UserError(f"{where}: method 'tpe' samples each key on its own; 'zip' needs method grid, random "
                            f"or sobol")
        return []
    return sample(dims, method, n_samples, seed, where)


def tpe_block(hyper_search, where):
    """(dims, n_samples, sample_seed) of a search whose method is "tpe", else None."""
    blocks = hyper_search if isinstance(hyper_search, list) else [hyper_search]
    if not any(isinstance(b, dict) and b.get("method") == "tpe" for b in blocks):
        return None
    if len(blocks) > 1:
        raise UserError(f"{where}: method 'tpe' models one search space: use a single hyper_search block")
    method, n_samples, seed, space = block_settings(blocks[0], where)
    return dimensions(space, method, where), n_samples, seed


def corners(dims):
    """Cells that take every choice and both bounds of every range once: what validating a space needs."""
    first = {key: args[0] for key, _, args in dims}
    return [{**first, key: value} for key, _, args in dims for value in args]


def block_settings(block, where):
    """(method, n_samples, sample_seed, the block without its settings), validated."""
    if not isinstance(block, dict) or not block:
        raise UserError(f"{where}: expected a non-empty object of KEY: [values], got {type_name(block)}")
    method = block.get("method", "grid")
    if method not in METHODS:
        raise UserError(f"{where}: unknown method {json.dumps(method)} (one of {', '.join(METHODS)})")
    n_samples, seed = block.get("n_samples"), block.get("sample_seed", 0)
    if method in SAMPLED and n_samples is None:
        raise UserError(f"{where}: method '{method}' needs \"n_samples\": N, how many cells to draw")
    for name in ("n_samples", "sample_seed"):
        if method == "grid" and name in block:
            raise UserError(f"{where}: '{name}' needs a sampling method (\"method\": \"random\", \"sobol\" or "
                            f"\"tpe\"); a grid trains every combination")
    for name, value, low, high in (("n_samples", n_samples, 1, None), ("sample_seed", seed, 0, 2**32)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low
                                  or (high and value >= high)):
            bounds = f">= {low}" + (" and < 2**32" if high else "")
            raise UserError(f"{where}: '{name}' must be an integer {bounds}, got {json.dumps(value)}")
    space = {k: v for k, v in block.items() if k not in SETTINGS}
    if not space:
        raise UserError(f"{where}: no key to vary besides {', '.join(k for k in block if k in SETTINGS)}")
    return method, n_samples, seed, space


def dimensions(space, method, where):
    """[(key, kind, values or bounds)]: a list is a choice; a 'zip' axis is one choice among its rows."""
    dims = []
    for key, value in space.items():
        if key == "zip":
            dims.append(("zip", "choice", zip_axis(value, where)))
            continue
        check_key(key, where)
        if isinstance(value, dict) and not is_distribution(value):
            raise UserError(f"{where}: key '{key}': {json.dumps(value)} is not a distribution (one key among "
                            f"{', '.join(DISTRIBUTIONS)}, e.g. {{\"loguniform\": [1e-4, 1e-1]}})")
        if is_distribution(value):
            kind, args = check_distribution(key, value, where)
            if method == "grid" and kind != "choice":
                raise UserError(f"{where}: key '{key}' is a '{kind}' distribution, which a grid cannot enumerate "
                                f"(sample it with \"method\": \"random\", \"sobol\" or \"tpe\", and \"n_samples\")")
            dims.append((key, kind, args))
        else:
            check_values(key, value, where)
            dims.append((key, "choice", value))
    return dims


def zip_axis(group, where):
    if not isinstance(group, dict) or not group:
        raise UserError(f"{where}: 'zip' expects an object of KEY: [values] walked in lock-step")
    lengths = {}
    for key, values in group.items():
        if key in (*SETTINGS, "zip"):
            raise UserError(f"{where}: '{key}' belongs in the hyper_search block, beside 'zip', not in it")
        check_key(key, where)
        if is_distribution(values):
            raise UserError(f"{where}: 'zip' walks lists in lock-step; key '{key}' is a distribution (move it out "
                            f"of the zip)")
        check_values(key, values, where)
        lengths[key] = len(values)
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise UserError(f"{where}: 'zip' lists must have equal lengths ({sizes})")
    n = next(iter(lengths.values()))
    return [{key: group[key][i] for key in group} for i in range(n)]


def check_key(key, where):
    parts = key.split(".", 2)
    if parts[0] == "stages" and len(parts) == 3 and parts[1].isdigit() and is_stage_key(parts[2]):
        return  # a key of one stage of the plan: set_stage_key checks the stage exists
    if key in KEYS and not KEYS[key].hyperparam:  # n_repetitions: how the whole search runs, not a value to vary
        raise UserError(f"{where}: key '{key}' belongs in the parent's params, beside hyper_search, not in it")
    if key not in KEYS:
        raise UserError(f"{where}: unknown key '{key}'{suggest(key)}")


def check_values(key, values, where):
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}: key '{key}' needs a non-empty list of values, got {json.dumps(values)}")


def expand(hyper_search, where):
    """The whole hyper_search value (a block or a list of blocks) -> list of distinct cells."""
    blocks = hyper_search if isinstance(hyper_search, list) else [hyper_search]
    if not blocks:
        raise UserError(f"{where}: 'hyper_search' is an empty list")
    cells = []
    for i, block in enumerate(blocks):
        cells += expand_block(block, f"{where}: hyper_search" + (f"[{i}]" if len(blocks) > 1 else ""))
    seen = {}
    for cell in cells:
        sig = json.dumps(cell, sort_keys=True)
        if sig in seen:
            raise UserError(f"{where}: duplicate cell {sig} in hyper_search")
        seen[sig] = True
    return cells


def format_value(v):
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "+".join(format_value(x) for x in v)
    if isinstance(v, dict):
        return short_hash(v)
    return str(v)


def short_hash(obj):
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def folder_name(cell, rep=0):
    """Deterministic, filesystem-safe folder name, keys in sorted order: 'learning_rate_0.001',
    'learning_rate_0.001__ps_0.5'; repetitions after the first end in '__rep1', '__rep2', ...

    Unsafe characters become '_', runs of dots collapse, and long or altered names get a hash of the cell, so
    no name can leave its parent.
    """
    raw = "__".join(f"{k}_{format_value(cell[k])}" for k in sorted(cell))
    name = re.sub(r"\.{2,}", ".", SAFE.sub("_", raw)).strip(".") or "cell"
    if name != raw or len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 9]}_{short_hash(cell)}"
    return name + (f"__rep{rep}" if rep else "")


def named_keys(cells):
    """The keys a folder name shows: those whose value is not the same in every cell (a key every cell sets alike
    says nothing about one of them)."""
    first = cells[0] if cells else {}
    same = {k for k in first if all(k in c and c[k] == first[k] for c in cells)}
    return lambda cell: {k: v for k, v in cell.items() if k not in same} or cell


def base_params(parent_params):
    """What every cell shares: the parent's params without the search-only keys."""
    return {k: v for k, v in parent_params.items() if k not in KEYS or KEYS[k].hyperparam}


def set_stage_key(d, key, value, where):
    """hyper_search's "stages.1.learning_rate": set that key of the params dict's stage 1."""
    _, index, rest = key.split(".", 2)
    stages = d.get("stages")
    if not isinstance(stages, list) or not index.isdigit() or int(index) >= len(stages):
        raise UserError(f"{where}: key '{key}': params.json has no stage {index} (its 'stages' list has "
                        f"{len(stages) if isinstance(stages, list) else 0})")
    set_dotted(stages[int(index)], rest, value)


def child_params(base, cell):
    child = copy.deepcopy(base)
    for key, value in cell.items():
        if key.startswith("stages."):
            set_stage_key(child, key, copy.deepcopy(value), "hyper_search")
        else:
            set_dotted(child, key, copy.deepcopy(value))
    return child


def plan(parent_params, where):
    """[(folder name, child params dict, identity)] for every cell and repetition, each validated as train.py would;
    the names are the canonical ones, before core/search/cells.py's place() finds the cells' existing folders."""
    misplaced = [k for k in SETTINGS if k in parent_params]
    if misplaced:  # a search setting beside hyper_search: "unknown key", or a near key's name, would mislead
        raise UserError(f"{where}: key '{misplaced[0]}' belongs in the hyper_search block, not beside it")
    base = base_params(parent_params)
    reps = parent_params.get("n_repetitions", 1)
    resolve(dict(base, n_repetitions=reps), where)  # the parent's own keys first: clearer errors
    cells = expand(parent_params["hyper_search"], where)
    tpe = tpe_block(parent_params["hyper_search"], where)
    if tpe and reps > 1:
        raise UserError(f"{where}: method 'tpe' learns from each cell's own result; n_repetitions needs method "
                        f"grid, random or sobol")
    for cell in corners(tpe[0]) if tpe else []:  # the cells Optuna will propose lie between these
        resolve(child_params(base, cell), f"{where}: hyper_search value {json.dumps(cell)}")
    out, shown, seen = [], named_keys(cells), {}
    for cell in cells:
        for rep in range(reps):
            child = child_params(base, cell)
            if reps > 1:
                child["seed"] = child.get("seed", KEYS["seed"].default) + REP_SEED_STRIDE * rep
            ident = canonical(resolve(child, f"{where}: cell {json.dumps(cell)}"))
            if ident in seen:
                raise UserError(f"{where}: cells {json.dumps(seen[ident])} and {json.dumps(cell)} train the same "
                                f"params (a value equal to the default, or one number spelled twice); keep one")
            seen[ident] = cell
            out.append((folder_name(shown(cell), rep), child, ident))
    return unique_names(out)


def unique_names(planned):
    """Where two cells' readable names clash (names cut short, or altered), each gets its identity's hash too."""
    count = collections.Counter(name for name, _, _ in planned)
    return [(name if count[name] == 1 else f"{name}__{short_id(ident)}", child, ident)
            for name, child, ident in planned]
