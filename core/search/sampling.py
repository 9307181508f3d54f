"""Sampled hyper_search blocks: distributions, seeded draws (random or Sobol), values rounded for readable names.

    "hyper_search": {"method": "random", "n_samples": 20, "sample_seed": 0,
                     "learning_rate": {"loguniform": [1e-4, 1e-1]}, "ps": {"uniform": [0, 0.5]},
                     "batch_size": {"int": [16, 128]}, "optimizer": {"choice": ["adam", "sgd"]},
                     "wd": [0, 1e-4]}                       # a plain list is a choice too

Sample i of a block depends only on (sample_seed, i), so rerunning with a larger n_samples keeps every existing
cell and adds new ones. Sampled floats are rounded to 4 significant digits: the folder name is then the exact value,
and a duplicate draw (likely with choices and ints) is skipped rather than trained twice.
"""

import json
import math

from utils import UserError

METHODS = ("grid", "random", "sobol", "tpe")
SAMPLED = ("random", "sobol", "tpe")
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
DIGITS = 4
MAX_DRAWS = 100  # draws per wanted cell before concluding that the space has fewer distinct cells


def round_sig(x):
    return float(f"{x:.{DIGITS}g}")


def is_distribution(value):
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS


def check_distribution(key, spec, where):
    """Validate {"loguniform": [lo, hi]} & co.; returns (kind, args)."""
    (kind, args), = spec.items()
    bad = f"{where}: key '{key}': {json.dumps(spec)}"
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise UserError(f"{bad}: 'choice' needs a non-empty list of values")
        return kind, args
    if not (isinstance(args, list) and len(args) == 2 and all(is_number(a) for a in args)):
        raise UserError(f"{bad}: '{kind}' needs [low, high], two numbers")
    low, high = args
    if kind == "int" and not all(isinstance(a, int) for a in args):
        raise UserError(f"{bad}: 'int' bounds must be integers")
    if (high < low) if kind == "int" else (high <= low):
        raise UserError(f"{bad}: high must be {'>=' if kind == 'int' else '>'} low")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{bad}: 'loguniform' bounds must be > 0")
    return kind, args


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def from_unit(kind, args, u):
    """Map u in [0, 1) to a value of the distribution (inverse CDF), so any uniform sequence samples it."""
    if kind == "choice":
        return args[min(int(u * len(args)), len(args) - 1)]
    low, high = args
    if kind == "int":
        return min(low + int(u * (high - low + 1)), high)
    if kind == "loguniform":
        return round_sig(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))
    return round_sig(low + u * (high - low))


def unit_points(method, n_dims, seed):
    """An endless stream of points in [0, 1)^n_dims; its prefix never depends on how many are taken."""
    if method == "random":
        import numpy as np

        i = 0
        while True:
            yield np.random.default_rng([seed, i]).random(n_dims)
            i += 1
    from scipy.stats import qmc  # Sobol: low-discrepancy, covers the space more evenly than random draws

    engine, block = qmc.Sobol(n_dims, scramble=True, seed=seed), 64
    while True:
        yield from engine.random(block)  # the scrambled sequence continues where the last block ended
        block *= 2


def space_size(dims):
    """How many distinct cells a space of choices and ints holds; None when a dimension is continuous."""
    size = 1
    for _, kind, args in dims:
        if kind in ("uniform", "loguniform"):
            return None
        size *= len(args) if kind == "choice" else args[1] - args[0] + 1
    return size


def sample(dims, method, n_samples, seed, where):
    """n_samples distinct cells {key: value}, the first k always the same whatever n_samples is."""
    size = space_size(dims)
    if size is not None and n_samples > size:
        raise UserError(f"{where}: n_samples {n_samples} but the space holds only {size} distinct cells (use fewer "
                        f"samples, or method 'grid')")
    cells, seen = [], set()
    points = unit_points(method, len(dims), seed)
    for _ in range(n_samples * MAX_DRAWS):
        cell = {}
        for (key, kind, args), u in zip(dims, next(points)):
            value = from_unit(kind, args, float(u))
            cell.update(value if key == "zip" else {key: value})  # a zip axis chooses a whole row
        sig = json.dumps(cell, sort_keys=True)
        if sig not in seen:
            seen.add(sig)
            cells.append(cell)
            if len(cells) == n_samples:
                return cells
    raise UserError(f"{where}: only {len(cells)} distinct cells found for n_samples {n_samples}; the space is "
                    f"smaller than that (use fewer samples, wider ranges, or method 'grid')")
