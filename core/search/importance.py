"""Which searched keys mattered: the table results.md ends with.

For each key the cells are grouped by the key's value (a numeric key with more than MAX_GROUPS distinct values,
as sampled keys have, into MAX_GROUPS bins of about equal count, in order of value), and each group's median is
taken. The spread is the best group's median minus the worst group's: how much choosing the key well bought. A
median, not the best cell, because the best cell is in some group of every key and would make all keys look alike.
For a numeric key, Spearman's rank correlation between value and metric says whether larger values tend to help.
Keys are ranked by spread. docs/search.md says what this cannot tell.

Every cell is compared at the same budget: its best valid metric, or with successive halving its value at the
first rung, the one budget every cell trained. Later rungs hold only the promoted cells, so comparing there would
hide the very keys the promotions selected on. A cell whose searched values are unknown (its params.json
unreadable) has no place in any group: it is left out, and the section names it.
"""

import json
import math
import os
import statistics

from core.search.results import minimized

MAX_GROUPS = 4


def at_rung(cell, rung, metric):
    values = [next((row["val"].get(metric) for row in h if row.get("epoch") == rung), None) for h in cell.histories]
    return statistics.fmean(values) if values and all(isinstance(v, (int, float)) for v in values) else None


def comparable(cells, metric, schedule, split="val"):
    """(what the values are, [(cell, value)]): every cell measured at one budget."""
    if not schedule or split != "val":
        pairs = [(c, c.value) for c in cells if c.value is not None and math.isfinite(c.value)]
        return f"best {'valid' if split == 'val' else split}", pairs
    rung = schedule.rungs[0]
    pairs = [(c, v) for c in cells if c.outcome != "failed" and (v := at_rung(c, rung, metric)) is not None]
    return f"valid (at epoch {rung}, the first rung)", pairs


def unplaced(cell, scales):
    """The searched keys whose value `cell` lacks (a repetition's params unreadable) or that lie off the key's axis."""
    return [key for key, scale in scales.items()
            if any(key not in r["params"] for r in cell.runs) or scale.position(cell.values.get(key)) is None]


def placed(cells, scales, metric, schedule=None, split="val"):
    """(what the values are, [(cell, value)] of the cells with a place in every key's groups, [the cells that have a
    value to compare but no place: the section names them])."""
    what, pairs = comparable(cells, metric, schedule, split)
    out = {id(c) for c, _ in pairs if unplaced(c, scales)}
    return what, [(c, v) for c, v in pairs if id(c) not in out], [c for c, _ in pairs if id(c) in out]


def groups_of(pairs, key, scale):
    """[(label, [metric values])] in the key's order: one group per value, or MAX_GROUPS bins of a numeric key."""
    by_value = {}
    for cell, value in pairs:
        by_value.setdefault(json.dumps(cell.values.get(key), sort_keys=True), []).append(value)
    if scale.kind == "category" or len(by_value) <= MAX_GROUPS:
        order = sorted(by_value, key=lambda text: scale.position(json.loads(text)) or 0)
        return [(scale.label(json.loads(text)), by_value[text]) for text in order]
    ranked = sorted(pairs, key=lambda p: p[0].values[key])
    size = len(ranked) / MAX_GROUPS
    out = []
    for i in range(MAX_GROUPS):
        part = ranked[round(i * size):round((i + 1) * size)]
        if part:
            lo, hi = part[0][0].values[key], part[-1][0].values[key]
            out.append((f"{lo:.3g}–{hi:.3g}", [v for _, v in part]))
    return out


def ranks(values):
    """Average ranks from 1, ties sharing the mean of their positions (as scipy.stats.rankdata does)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out, i = [0.0] * len(values), 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs, ys):
    """Spearman's rank correlation: Pearson's on the ranks. Hand-written because importing scipy.stats for it
    costs about a second of every synthesize_results.py run; tests check it against scipy's."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return statistics.correlation(ranks(xs), ranks(ys))


def importance(cells, scales, metric, schedule=None, split="val"):
    """(what the values are, n cells, rows best-ranked first): {key, groups, best, worst, spread, rho} per key."""
    what, pairs, _ = placed(cells, scales, metric, schedule, split)
    return what, len(pairs), key_rows(pairs, scales, metric)


def key_rows(pairs, scales, metric):
    """A row per key with two groups or more, best-ranked first."""
    rows = []
    for key, scale in scales.items():
        groups = [(name, statistics.median(values)) for name, values in groups_of(pairs, key, scale)]
        if len(groups) < 2:
            continue
        ranked = sorted(groups, key=lambda g: g[1], reverse=not minimized(metric))  # stable: ties keep the key's order
        best, worst = ranked[0], ranked[-1]
        numeric = [(c.values[key], v) for c, v in pairs if scale.kind != "category"]
        rho = spearman([x for x, _ in numeric], [v for _, v in numeric]) if numeric else None
        rows.append({"key": key, "groups": len(groups), "best": best, "worst": worst,
                     "spread": abs(best[1] - worst[1]), "rho": rho})
    rows.sort(key=lambda r: -r["spread"])
    return rows


def importance_markdown(cells, scales, metric, schedule=None, split="val", parent_dir=os.curdir):
    """The '## Which keys mattered' section, or '' when fewer than 3 cells or no key with two groups."""
    from tabulate import tabulate

    what, pairs, unplaced_cells = placed(cells, scales, metric, schedule, split)
    rows, n = key_rows(pairs, scales, metric), len(pairs)
    if n < 3 or not rows:
        return ""
    left_out = [os.path.relpath(c.runs[0]["folder"], parent_dir) for c in unplaced_cells]
    table = [[r["key"], r["groups"], f"{r['best'][0]} ({r['best'][1]:.4f})", f"{r['worst'][0]} ({r['worst'][1]:.4f})",
              f"{r['spread']:.4f}", "" if r["rho"] is None else f"{r['rho']:+.2f}"] for r in rows]
    headers = ["key", "groups", "best group (median)", "worst group (median)", "spread", "Spearman ρ"]
    note = (f"{what} {metric} of {n} cells, grouped by each key's value. Spread: the best group's median minus the "
            f"worst group's. Each key is looked at on its own: keys that interact, and searches of few cells, can "
            f"mislead (docs/search.md).")
    if left_out:
        note += f" Left out, their searched values unknown (see their rows' notes): {', '.join(left_out)}."
    return "## Which keys mattered\n\n" + note + "\n\n" + tabulate(table, headers=headers, tablefmt="github",
                                                                    disable_numparse=True)
