"""How each searched key is drawn: the axis scale its search space implies, and a value's place on that axis.

    {"loguniform": [1e-4, 1e-1]}   -> log axis            [1e-4, 1e-3, 1e-2]  -> log (positive, spans >= 100x)
    {"uniform": [0, 0.6]}, {"int": [16, 128]} -> linear   [32, 64, 128]       -> linear
    {"choice": [...]}, ["adam", "sgd"]        -> categories, evenly spaced in their listed order

A key that varies between folders without being in the parent's hyper_search (folders gathered by hand) gets the
same rule from the values it takes.
"""

import json
import math
from dataclasses import dataclass

from core.search.grid import block_settings, dimensions
from utils import UserError

LOG_SPAN = 100  # a hand-written numeric grid is drawn on a log axis when max / min reaches this
MAX_MARKS = 8  # a grid of more values than this gets the axis' own ticks


@dataclass(frozen=True)
class Scale:
    kind: str  # "log", "linear" or "category"
    low: float = 0.0  # the axis' ends (numbers) ...
    high: float = 1.0
    categories: tuple = ()  # ... or its categories, as JSON text, in their listed order
    marks: tuple = ()  # a hand-written grid's values: the ticks a reader looks for

    def position(self, value):
        """Where `value` sits between the axis' ends, 0 to 1 (None when it is not on this axis)."""
        if self.kind == "category":
            text = json.dumps(value, sort_keys=True)
            if text not in self.categories:
                return None
            return self.categories.index(text) / max(1, len(self.categories) - 1)
        if not is_number(value) or (self.kind == "log" and value <= 0):
            return None
        f = math.log if self.kind == "log" else float
        span = f(self.high) - f(self.low)
        return (f(value) - f(self.low)) / span if span else 0.5

    def spaced_marks(self, min_gap=0.1):
        """The grid values whose ticks are at least `min_gap` of the axis apart (0, 5e-4 and 0.05 on a linear axis
        would print 0 and 5e-4 over each other)."""
        out = []
        for v in self.marks:
            if not out or self.position(v) - self.position(out[-1]) >= min_gap:
                out.append(v)
        return out

    def log_subs(self):
        """The mantissas a log axis is ticked at: decades alone over two decades or more, else 1, 2 and 5 per
        decade (fewer would leave a narrow axis with one tick)."""
        return (1.0,) if math.log10(self.high / self.low) >= 2 else (1.0, 2.0, 5.0)

    def label(self, value):
        return value if isinstance(value, str) else json.dumps(value)


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def scale_of_values(values):
    """The scale of a hand-written list (or of the values seen in folders)."""
    if values and all(is_number(v) for v in values):
        low, high = min(values), max(values)
        kind = "log" if low > 0 and high / low >= LOG_SPAN else "linear"
        distinct = sorted(set(values))
        return Scale(kind, low, high, marks=tuple(distinct) if len(distinct) <= MAX_MARKS else ())
    return Scale("category", categories=tuple(dict.fromkeys(json.dumps(v, sort_keys=True) for v in values)))


def scale_of_dimension(kind, args):
    if kind in ("loguniform", "uniform", "int"):
        return Scale("log" if kind == "loguniform" else "linear", *args)
    return None  # a choice: decided with the other lists of the key


def space_specs(hyper_search):
    """{key: [(kind, values or bounds), ...]} over every block of a hyper_search (zip rows split by key)."""
    specs = {}
    blocks = hyper_search if isinstance(hyper_search, list) else [hyper_search]
    for i, block in enumerate(blocks):
        method, _, _, space = block_settings(block, f"hyper_search[{i}]")
        for key, kind, args in dimensions(space, method, f"hyper_search[{i}]"):
            if key == "zip":
                for row_key in args[0]:
                    specs.setdefault(row_key, []).append(("list", [row[row_key] for row in args]))
            else:
                explicit = isinstance(space.get(key), dict)  # {"choice": [...]} rather than a plain list
                specs.setdefault(key, []).append((kind if explicit or kind != "choice" else "list", args))
    return specs


def scale_of_key(specs, seen):
    """One key's scale from its specs in the space (a union may give several) and the values its folders hold."""
    kinds = {kind for kind, _ in specs}
    if kinds and kinds <= {"loguniform", "uniform", "int"} and len(kinds) == 1:
        bounds = [b for _, args in specs for b in args] + [v for v in seen if is_number(v)]
        return scale_of_dimension(kinds.pop(), [min(bounds), max(bounds)])
    listed = [v for kind, args in specs if kind in ("choice", "list") for v in args]
    if "choice" in kinds:
        return Scale("category", categories=tuple(dict.fromkeys(json.dumps(v, sort_keys=True)
                                                                for v in [*listed, *seen])))
    if kinds and kinds <= {"list"}:
        return scale_of_values([*listed, *seen])
    return scale_of_values(seen)  # not in the space, or drawn from distributions of different kinds


def axis_scales(parent_params, keys, runs):
    """{key: Scale} for the keys the folders vary, in the search space's order; the parent's hyper_search decides
    the scale where it can."""
    specs = {}
    search = parent_params.get("hyper_search") if isinstance(parent_params, dict) else None
    if search is not None:
        try:
            specs = space_specs(search)
        except UserError:  # a broken block: draw from the values the folders hold
            specs = {}
    ordered = [k for k in specs if k in keys] + [k for k in keys if k not in specs]
    return {key: scale_of_key(specs.get(key, []), [r["params"].get(key) for r in runs if key in r["params"]])
            for key in ordered}

